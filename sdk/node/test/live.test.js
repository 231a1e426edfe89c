'use strict';
// The Node SDK against a REAL gateway: events published here arrive on an SSE stream.
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');

const { Publisher, PublishError } = require('..');
const { Gateway, makeCerts, tmpDir } = require('./gateway');

let gw;
let otherCa;
const open = [];
const silent = { warn() {} };

before(async () => {
  gw = await new Gateway(makeCerts(tmpDir('sdk-node-gw-'))).start();
  otherCa = makeCerts(tmpDir('sdk-node-other-'), ['l5-etl-service']);
});

after(async () => {
  for (const x of open) await x.close();
  if (gw) await gw.stop();
});

function publisher(service, extra = {}) {
  const p = new Publisher({ ...gw.cert(service), logger: silent, ...extra });
  open.push(p);
  return p;
}

async function sse(channels, token) {
  const s = await gw.sse(channels, token);
  open.push(s);
  return s;
}

const wsId = () => `ws-${crypto.randomBytes(5).toString('hex')}`;

function assertEnvelope(env, channel, event, result, payload) {
  assert.equal(env.channel, channel);
  assert.equal(env.event, event);
  assert.equal(env.id, result.id);
  assert.equal(env.frameId, result.id);
  assert.ok(Number.isInteger(env.ts) && env.ts > 1.6e12, `ts ${env.ts}`);
  assert.deepEqual(env.payload, payload);
}

test('publish arrives on the SSE stream with the envelope', async () => {
  const ws = wsId();
  const channel = `workflow:${ws}:wf1`;
  const s = await sse([channel]);
  assert.match(s.contentType, /^text\/event-stream/);
  assert.ok(s.ready.channels.includes(channel));
  const payload = { status: 'running', step: 2, of: 5, note: 'multi\nline\r\nü' };
  const res = await publisher('faas-service').publish(channel, payload, { event: 'status' });
  assert.equal(res.ok, true, JSON.stringify(res));
  assert.equal(res.code, 'OK');
  assert.ok(res.id && res.delivered >= 1 && res.duplicate === false);
  assertEnvelope(await s.nextEvent(channel), channel, 'status', res, payload);
});

test('scalars and the default event name', async () => {
  const ws = wsId();
  const channel = `metrics:${ws}`;
  const s = await sse([channel]);
  const pub = publisher('analytics-service');
  const r1 = await pub.publish(channel, 42);
  const r2 = await pub.publish(channel, 'text');
  const r3 = await pub.publish(channel, null);
  assertEnvelope(await s.nextEvent(channel), channel, 'message', r1, 42);
  assertEnvelope(await s.nextEvent(channel), channel, 'message', r2, 'text');
  assertEnvelope(await s.nextEvent(channel), channel, 'message', r3, null);
});

test('publishBatch arrives in order', async () => {
  const ws = wsId();
  const [logs, metrics] = [`logs:${ws}:wf1`, `metrics:${ws}`];
  const s = await sse([logs, metrics]);
  const b = await publisher('l5-etl-service').publishBatch([
    { channel: logs, data: { n: 1 }, event: 'log' },
    { channel: metrics, data: { n: 2 }, event: 'metric' },
    { channel: logs, data: { n: 3 } },
  ]);
  assert.equal(b.ok, true, JSON.stringify(b));
  assert.equal(b.results.length, 3);
  assert.deepEqual(b.results.map((r) => r.channel), [logs, metrics, logs]);
  const got = [await s.nextEvent(), await s.nextEvent(), await s.nextEvent()];
  assert.deepEqual(got.map((e) => e.payload.n), [1, 2, 3]);
  assert.deepEqual(got.map((e) => e.id), b.results.map((r) => r.id));
  assert.deepEqual(got.map((e) => e.event), ['log', 'metric', 'message']);
});

test('publishLog and publishMetric name channel and event', async () => {
  const ws = wsId();
  const s = await sse([`logs:${ws}:wf7`, `logs:${ws}`, `metrics:${ws}`]);
  const pub = publisher('l5-etl-service');
  const r1 = await pub.publishLog(ws, 'wf7', { line: 'extract done' });
  const r2 = await pub.publishLog(ws, null, 'workspace-wide');
  const r3 = await pub.publishMetric(ws, { cpu: 0.5 });
  assertEnvelope(await s.nextEvent(), `logs:${ws}:wf7`, 'log', r1, { line: 'extract done' });
  assertEnvelope(await s.nextEvent(), `logs:${ws}`, 'log', r2, 'workspace-wide');
  assertEnvelope(await s.nextEvent(), `metrics:${ws}`, 'metric', r3, { cpu: 0.5 });
});

test('idempotency key and audience', async () => {
  const ws = wsId();
  const channel = `dashboards:${ws}`;
  const alice = await sse([channel], gw.token('alice'));
  const bob = await sse([channel], gw.token('bob'));
  const pub = publisher('analytics-service');
  const first = await pub.publish(channel, { v: 1 }, { idempotencyKey: 'k-1', audience: { userIds: ['bob'] } });
  const again = await pub.publish(channel, { v: 1 }, { idempotencyKey: 'k-1', audience: { userIds: ['bob'] } });
  assert.equal(first.duplicate, false);
  assert.equal(again.duplicate, true);
  assert.equal(again.id, first.id);
  const marker = await pub.publish(channel, 'marker');
  assert.equal((await bob.nextEvent(channel)).id, first.id);
  assert.equal((await bob.nextEvent(channel)).id, marker.id);
  assert.equal((await alice.nextEvent(channel)).id, marker.id);
});

test('a not-permitted channel is a result (non-strict) or a PublishError (strict)', async () => {
  const ws = wsId();
  const warnings = [];
  const pub = publisher('l5-etl-service', { logger: { warn: (m) => warnings.push(m) } });
  const res = await pub.publish(`dashboards:${ws}`, { x: 1 });
  assert.equal(res.ok, false);
  assert.equal(res.code, 'PERMISSION_DENIED');
  assert.ok(res.message.length > 0);
  assert.equal(res.channel, `dashboards:${ws}`);
  assert.ok(warnings.some((w) => w.includes('PERMISSION_DENIED')), warnings.join('\n'));
  await assert.rejects(pub.publish(`dashboards:${ws}`, 1, { strict: true }), (e) => {
    assert.ok(e instanceof PublishError);
    assert.equal(e.code, 'PERMISSION_DENIED');
    assert.equal(e.grpcCode, 7);
    return true;
  });
  const strict = publisher('l5-etl-service', { strict: true });
  await assert.rejects(strict.publishBatch([{ channel: `workflow:${ws}:a`, data: 1 }]), { code: 'PERMISSION_DENIED' });
  assert.equal((await strict.publish(`workflow:${ws}:a`, 1, { strict: false })).code, 'PERMISSION_DENIED');
  const stranger = publisher('stranger-service');
  assert.equal((await stranger.publish(`logs:${ws}`, 1)).code, 'PERMISSION_DENIED');
});

test('invalid channel, event and batch are INVALID_ARGUMENT', async () => {
  const ws = wsId();
  const pub = publisher('l5-etl-service');
  assert.equal((await pub.publish('nosuchtype:x', 1)).code, 'INVALID_ARGUMENT');
  assert.equal((await pub.publish(`logs:${ws}`, 1, { event: 'bad event!' })).code, 'INVALID_ARGUMENT');
  const s = await sse([`logs:${ws}`]);
  const b = await pub.publishBatch([{ channel: `logs:${ws}`, data: 1 }, { channel: 'nosuchtype:x', data: 2 }]);
  assert.equal(b.ok, false);
  assert.equal(b.code, 'INVALID_ARGUMENT');
  const marker = await pub.publish(`logs:${ws}`, 'marker');
  assert.equal((await s.nextEvent()).id, marker.id);
});

test('a client certificate from another CA fails clearly', async () => {
  const pub = publisher('l5-etl-service', {
    cert: path.join(otherCa, 'l5-etl-service.pem'),
    key: path.join(otherCa, 'l5-etl-service-key.pem'),
  });
  const t0 = Date.now();
  const res = await pub.publish('logs:ws1:wf1', 1);
  assert.ok(Date.now() - t0 < 6000);
  assert.equal(res.ok, false);
  assert.equal(res.code, 'UNAVAILABLE', JSON.stringify(res));
  assert.match(res.message, /TLS handshake/);
  await assert.rejects(pub.publish('logs:ws1:wf1', 1, { strict: true }), { name: 'PublishError', code: 'UNAVAILABLE' });
});

test('a server certificate from another CA is refused', async () => {
  const pub = publisher('l5-etl-service', { ca: path.join(otherCa, 'ca.pem') });
  const res = await pub.publish('logs:ws1:wf1', 1);
  assert.equal(res.code, 'UNAVAILABLE', JSON.stringify(res));
  assert.match(res.message, /TLS handshake/);
});

test('constructible from env; PEM contents work too', async () => {
  const ws = wsId();
  const c = gw.cert('analytics-service');
  const saved = { ...process.env };
  Object.assign(process.env, { SSE_GATEWAY_ADDR: c.addr, SSE_GATEWAY_CA: c.ca, SSE_GATEWAY_CERT: c.cert, SSE_GATEWAY_KEY: c.key });
  let fromEnv;
  try {
    fromEnv = new Publisher({ logger: silent });
    open.push(fromEnv);
  } finally {
    for (const k of ['SSE_GATEWAY_ADDR', 'SSE_GATEWAY_CA', 'SSE_GATEWAY_CERT', 'SSE_GATEWAY_KEY']) {
      if (k in saved) process.env[k] = saved[k];
      else delete process.env[k];
    }
  }
  const s = await sse([`dashboards:${ws}`]);
  const res = await fromEnv.publish(`dashboards:${ws}`, { total: 3 }, { event: 'update' });
  assert.equal(res.ok, true, JSON.stringify(res));
  assert.equal((await s.nextEvent()).id, res.id);
  const pem = publisher('analytics-service', {
    ca: fs.readFileSync(c.ca),
    cert: fs.readFileSync(c.cert, 'utf8'),
    key: fs.readFileSync(c.key),
  });
  assert.equal((await pem.publish(`dashboards:${ws}`, 2)).ok, true);
});

test('one channel serves concurrent calls', async () => {
  const ws = wsId();
  const pub = publisher('l5-etl-service');
  const client = pub.client;
  const results = await Promise.all(Array.from({ length: 40 }, (_, i) => pub.publish(`metrics:${ws}`, i)));
  assert.ok(results.every((r) => r.ok));
  assert.equal(new Set(results.map((r) => r.id)).size, 40);
  assert.equal(pub.client, client);
});

test('gateway down: error results within the deadline, no throw', async () => {
  const dir = makeCerts(tmpDir('sdk-node-down-'));
  const g = await new Gateway(dir).start();
  const pub = new Publisher({ ...g.cert('l5-etl-service'), timeoutMs: 2000, logger: silent });
  try {
    assert.equal((await pub.publish('logs:ws1:wf1', 1)).ok, true);
  } finally {
    await g.stop();
  }
  const t0 = Date.now();
  const res = await pub.publish('logs:ws1:wf1', 2);
  assert.ok(Date.now() - t0 < 3000, `took ${Date.now() - t0} ms`);
  assert.equal(res.ok, false);
  assert.ok(['UNAVAILABLE', 'DEADLINE_EXCEEDED'].includes(res.code), JSON.stringify(res));
  await pub.close();
  assert.equal((await pub.publish('logs:ws1:wf1', 3)).code, 'FAILED_PRECONDITION');
});

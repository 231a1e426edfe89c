'use strict';
// What the wrapper does without a gateway: configuration, local validation, deadlines.
const { test } = require('node:test');
const assert = require('node:assert/strict');
const net = require('node:net');

const { Publisher, PublishError, ConfigError, loadGrpcPackage, DEFAULT_ADDR } = require('..');

const fs = require('node:fs');
const path = require('node:path');

// A self-signed certificate trusted nowhere: it parses, no handshake with it succeeds.
const CERT = fs.readFileSync(path.join(__dirname, 'fixtures', 'dummy.pem'), 'utf8');
const KEY = fs.readFileSync(path.join(__dirname, 'fixtures', 'dummy-key.pem'), 'utf8');
const silent = { warn() {} };

function withEnv(vars, fn) {
  const saved = {};
  for (const k of Object.keys(vars)) {
    saved[k] = process.env[k];
    if (vars[k] === undefined) delete process.env[k];
    else process.env[k] = vars[k];
  }
  try {
    return fn();
  } finally {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
}

test('the generated package loads with its service definition', () => {
  const { Publisher: Client } = loadGrpcPackage().ssegateway.v1;
  assert.deepEqual(Object.keys(Client.service).sort(), ['Publish', 'PublishBatch', 'PublishStream']);
  assert.equal(Client.service.Publish.path, '/ssegateway.v1.Publisher/Publish');
});

test('a missing client certificate is a ConfigError naming the env vars', () => {
  withEnv({ SSE_GATEWAY_CERT: undefined, SSE_GATEWAY_KEY: undefined }, () => {
    assert.throws(() => new Publisher(), (e) => e instanceof ConfigError && /SSE_GATEWAY_CERT/.test(e.message));
  });
  assert.throws(() => new Publisher({ cert: '/nope/cert.pem', key: KEY }), /\/nope\/cert\.pem/);
  assert.throws(() => new Publisher({ cert: '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n', key: KEY }), ConfigError);
  assert.throws(() => new Publisher({ cert: CERT, key: KEY, addr: 'https://x:1' }), ConfigError);
});

test('env defaults', async () => {
  const p = withEnv({ SSE_GATEWAY_ADDR: undefined, SSE_GATEWAY_CA: undefined, SSE_GATEWAY_CERT: CERT, SSE_GATEWAY_KEY: KEY }, () => new Publisher());
  assert.equal(p.addr, DEFAULT_ADDR);
  assert.equal(p.timeoutMs, 5000);
  assert.equal(p.strict, false);
  await p.close();
  const q = withEnv({ SSE_GATEWAY_ADDR: 'gw.internal:7000', SSE_GATEWAY_CERT: CERT, SSE_GATEWAY_KEY: KEY }, () => new Publisher());
  assert.equal(q.addr, 'gw.internal:7000');
  await q.close();
});

test('local validation: results, not exceptions (non-strict)', async () => {
  const warnings = [];
  const p = new Publisher({ addr: 'localhost:9', cert: CERT, key: KEY, logger: { warn: (m) => warnings.push(m) } });
  const circular = {};
  circular.self = circular;
  const r1 = await p.publish('logs:ws1:wf1', circular);
  assert.equal(r1.ok, false);
  assert.equal(r1.code, 'INVALID_ARGUMENT');
  assert.match(r1.message, /JSON/);
  assert.equal((await p.publish('logs:ws1:wf1', undefined)).code, 'INVALID_ARGUMENT');
  assert.equal((await p.publish('logs:ws1:wf1', 10n)).code, 'INVALID_ARGUMENT');
  assert.equal((await p.publish(42, 1)).code, 'INVALID_ARGUMENT');
  assert.equal((await p.publishLog('ws1:other', 'wf1', 'x')).code, 'INVALID_ARGUMENT');
  assert.equal((await p.publishLog('ws1', '', 'x')).code, 'INVALID_ARGUMENT');
  assert.equal((await p.publishMetric('a b', 1)).code, 'INVALID_ARGUMENT');
  assert.equal((await p.publish('a:b', 1, { audience: { userIds: 'bob' } })).code, 'INVALID_ARGUMENT');
  const b = await p.publishBatch([{ channel: 'a:b', data: 1 }, { channel: 'a:b', data: circular }]);
  assert.equal(b.ok, false);
  assert.match(b.message, /batch event 1/);
  assert.ok(warnings.length >= 8);
  await assert.rejects(p.publish('a:b', circular, { strict: true }), (e) => e instanceof PublishError && e.code === 'INVALID_ARGUMENT');
  await p.close();
  assert.equal((await p.publish('a:b', 1)).code, 'FAILED_PRECONDITION');
});

test('request encoding', () => {
  const p = new Publisher({ addr: 'localhost:9', cert: CERT, key: KEY });
  assert.deepEqual(p._request('c:d', { x: [1, 'é'] }, { event: 'e', idempotencyKey: 'k', audience: { userIds: ['u'], roles: ['r'] } }), {
    channel: 'c:d',
    data: '{"x":[1,"é"]}',
    event: 'e',
    idempotencyKey: 'k',
    audience: { userIds: ['u'], roles: ['r'] },
  });
  p.close();
});

test('nothing listening: UNAVAILABLE within the deadline', async () => {
  const port = await new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const { port: p } = s.address();
      s.close(() => resolve(p));
    });
  });
  const p = new Publisher({ addr: `localhost:${port}`, cert: CERT, key: KEY, timeoutMs: 3000, logger: silent });
  const t0 = Date.now();
  const res = await p.publish('logs:ws1:wf1', 1);
  assert.ok(Date.now() - t0 < 3500);
  assert.equal(res.ok, false);
  assert.ok(['UNAVAILABLE', 'DEADLINE_EXCEEDED'].includes(res.code), JSON.stringify(res));
  await p.close();
});

test('an unresponsive gateway hits the deadline', async () => {
  // Accepts TCP connections but never speaks TLS.
  const sockets = [];
  const hole = net.createServer((s) => sockets.push(s));
  await new Promise((r) => hole.listen(0, '127.0.0.1', r));
  const p = new Publisher({ addr: `localhost:${hole.address().port}`, cert: CERT, key: KEY, timeoutMs: 1000, logger: silent });
  try {
    const t0 = Date.now();
    const res = await p.publish('logs:ws1:wf1', 1);
    const took = Date.now() - t0;
    assert.equal(res.code, 'DEADLINE_EXCEEDED', JSON.stringify(res));
    assert.ok(took >= 900 && took < 2500, `took ${took} ms`);
    await assert.rejects(p.publish('logs:ws1:wf1', 1, { strict: true, timeoutMs: 300 }), { code: 'DEADLINE_EXCEEDED' });
  } finally {
    await p.close();
    for (const s of sockets) s.destroy();
    await new Promise((r) => hole.close(r));
  }
});

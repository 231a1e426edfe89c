'use strict';
// Control against a REAL gateway: disconnect a user, remove channels from their streams.
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');

const { Control, ControlError, PublishError, DISABLED } = require('..');
const { Gateway, makeCerts, tmpDir } = require('./gateway');

let gw;
const open = [];
const silent = { warn() {} };

before(async () => {
  gw = await new Gateway(makeCerts(tmpDir('sdk-node-control-'))).start();
});

after(async () => {
  for (const x of open) await x.close();
  if (gw) await gw.stop();
});

// analytics-service has `control = true` in the test gateway's [[publishers]].
function control(service = 'analytics-service', extra = {}) {
  const c = new Control({ ...gw.cert(service), logger: silent, ...extra });
  open.push(c);
  return c;
}

async function sse(channels, token) {
  const s = await gw.sse(channels, token);
  open.push(s);
  return s;
}

const id = (p) => `${p}-${crypto.randomBytes(5).toString('hex')}`;

async function ended(s, timeoutMs = 10000) {
  await assert.rejects(s.next(() => true, timeoutMs), /SSE stream ended/);
}

test('disconnect closes the user\'s streams with event: revoked', async () => {
  const user = id('user');
  const ws = id('ws');
  const token = gw.token(user);
  const a = await sse([`logs:${ws}`], token);
  const b = await sse([`metrics:${ws}`], token);
  const res = await control().disconnect(user, { reason: 'signed out' });
  assert.deepEqual(res, { ok: true, streams: 2, code: 'OK', message: '' });
  for (const s of [a, b]) {
    const f = await s.next((fr) => fr.event === 'revoked');
    assert.deepEqual(JSON.parse(f.data), { reason: 'signed out' });
    await ended(s);
  }
});

test('revokeTokens refuses the old token', async () => {
  const user = id('user');
  const token = gw.token(user);
  const res = await control().disconnect(user, { reason: 'locked', revokeTokens: true });
  assert.equal(res.ok, true);
  assert.equal(res.streams, 0);
  await assert.rejects(gw.sse([`logs:${id('ws')}`], token), /401/);
});

test('unsubscribe removes the matching channels with event: subscriptions', async () => {
  const user = id('user');
  const ws = id('ws');
  const s = await sse([`logs:${ws}:wf1`, `metrics:${ws}`], gw.token(user));
  const res = await control().unsubscribe(user, `logs:${ws}:**`, { reason: 'removed from workspace' });
  assert.equal(res.ok, true, JSON.stringify(res));
  assert.equal(res.streams, 1);
  const f = await s.next((fr) => fr.event === 'subscriptions');
  assert.deepEqual(JSON.parse(f.data), {
    channels: [`metrics:${ws}`],
    denied: [{ channel: `logs:${ws}:wf1`, reason: 'removed from workspace' }],
  });
});

test('an unknown user affects no stream', async () => {
  assert.equal((await control().disconnect(id('nobody'))).streams, 0);
  assert.equal((await control().unsubscribe(id('nobody'), 'logs:**')).streams, 0);
});

test('a certificate without control is refused', async () => {
  const warned = [];
  const c = control('l5-etl-service', { logger: { warn: (m) => warned.push(m) } });
  const res = await c.disconnect('alice', { reason: 'x' });
  assert.equal(res.ok, false);
  assert.equal(res.code, 'PERMISSION_DENIED');
  assert.match(res.message, /control/);
  assert.ok(warned.some((m) => m.includes('PERMISSION_DENIED')), warned.join('\n'));
  await assert.rejects(c.unsubscribe('alice', 'logs:**', { strict: true }), (e) => {
    assert.ok(e instanceof ControlError && e instanceof PublishError);
    assert.equal(e.code, 'PERMISSION_DENIED');
    return true;
  });
});

test('bad input is INVALID_ARGUMENT', async () => {
  const c = control();
  const empty = await c.disconnect('');
  assert.equal(empty.code, 'INVALID_ARGUMENT');
  assert.match(empty.message, /user_id/);
  const bad = await c.unsubscribe('alice', 'logs:**:x');
  assert.equal(bad.code, 'INVALID_ARGUMENT');
  assert.match(bad.message, /pattern/);
});

test('a disabled Control is a no-op', async () => {
  const c = new Control({ enabled: false, addr: 'localhost:1', logger: silent });
  const res = await c.disconnect('alice', { revokeTokens: true, strict: true });
  assert.equal(res.ok, false);
  assert.equal(res.code, DISABLED);
  assert.equal((await c.unsubscribe('alice', 'logs:**')).code, DISABLED);
  assert.throws(() => c.client, /disabled/);
});

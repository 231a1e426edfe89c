'use strict';
// The on/off switch: SSE_GATEWAY_ENABLED=false (or `enabled: false`) makes a Publisher a no-op.
const { test } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const net = require('node:net');
const path = require('node:path');

const { Publisher, ConfigError, DISABLED } = require('..');

// A self-signed certificate trusted nowhere: it parses, no handshake with it succeeds.
const CERT = fs.readFileSync(path.join(__dirname, 'fixtures', 'dummy.pem'), 'utf8');
const KEY = fs.readFileSync(path.join(__dirname, 'fixtures', 'dummy-key.pem'), 'utf8');
const ENV = ['SSE_GATEWAY_ADDR', 'SSE_GATEWAY_CA', 'SSE_GATEWAY_CERT', 'SSE_GATEWAY_KEY', 'SSE_GATEWAY_ENABLED'];

function withEnv(vars, fn) {
  const saved = Object.fromEntries(ENV.map((k) => [k, process.env[k]]));
  for (const k of ENV) delete process.env[k];
  Object.assign(process.env, vars);
  try {
    return fn();
  } finally {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
}

/** A TCP listener that never answers and records every connection: any dial shows up here
 * (and an enabled publisher would wait for its deadline). */
async function listener() {
  const sockets = [];
  const server = net.createServer((s) => sockets.push(s));
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return {
    addr: `localhost:${server.address().port}`,
    sockets,
    close: () => {
      for (const s of sockets) s.destroy();
      return new Promise((r) => server.close(r));
    },
  };
}

for (const how of ['env', 'option']) {
  test(`disabled by ${how}: dials nothing, every call resolves to DISABLED, logged once`, async () => {
    const hole = await listener();
    const warnings = [];
    const logger = { warn: (m) => warnings.push(m) };
    try {
      // No certificate at all: a disabled publisher needs none.
      const pub =
        how === 'env'
          ? withEnv({ SSE_GATEWAY_ENABLED: 'false' }, () => new Publisher({ addr: hole.addr, timeoutMs: 2000, logger }))
          : withEnv({}, () => new Publisher({ addr: hole.addr, timeoutMs: 2000, logger, enabled: false }));
      assert.equal(pub.enabled, false);
      const circular = {};
      circular.self = circular;
      const results = [
        await pub.publish('dashboards:sales', { total: 1 }, { event: 'update' }),
        await pub.publishLog('ws1', 'wf1', 'line'),
        await pub.publishLog('ws1', null, 'line'),
        await pub.publishMetric('ws1', { cpu: 0.5 }),
        await pub.publish('dashboards:sales', 2, { strict: true }), // never rejected, even when strict
        await pub.publish('dashboards:sales', circular), // not even validated
      ];
      const batch = await pub.publishBatch([{ channel: 'metrics:ws1', data: 1 }, { channel: 'logs:ws1:wf1', data: 'x' }]);
      assert.throws(() => pub.client, (e) => e instanceof ConfigError && /disabled/.test(e.message));
      await pub.close();
      results.push(await pub.publish('dashboards:sales', 3));
      for (const r of results) {
        assert.equal(r.ok, false, JSON.stringify(r));
        assert.equal(r.code, DISABLED);
        assert.equal(r.code, 'DISABLED');
        assert.match(r.message, /disabled/);
        assert.equal(r.id, '');
      }
      assert.deepEqual(results.slice(0, 4).map((r) => r.channel), ['dashboards:sales', 'logs:ws1:wf1', 'logs:ws1', 'metrics:ws1']);
      assert.deepEqual(batch, { ok: false, results: [], code: 'DISABLED', message: batch.message });
      assert.match(batch.message, /disabled/);
      assert.equal(hole.sockets.length, 0, 'a disabled publisher dialled the gateway');
      assert.equal(warnings.length, 1, JSON.stringify(warnings));
      assert.match(warnings[0], /^sse-gateway publishing is disabled.*DISABLED/);
    } finally {
      await hole.close();
    }
  });
}

test('a disabled publisher reads no certificate', async () => {
  const pub = withEnv({}, () => new Publisher({ addr: 'localhost:1', ca: '/nope/ca.pem', cert: '/nope/c.pem', key: '/nope/k.pem', enabled: 'off', logger: null }));
  assert.equal((await pub.publish('a:b', 1)).code, 'DISABLED');
  await pub.close();
});

test('false spellings disable (case-insensitive)', () => {
  for (const v of ['false', 'FALSE', 'False', ' off ', 'Off', '0', 'no', 'NO']) {
    assert.equal(withEnv({ SSE_GATEWAY_ENABLED: v }, () => new Publisher()).enabled, false, v);
    assert.equal(withEnv({}, () => new Publisher({ enabled: v })).enabled, false, v);
  }
});

test('true spellings and empty enable (and need a certificate again)', async () => {
  for (const v of ['true', 'TRUE', '1', 'yes', 'On', '']) {
    withEnv({ SSE_GATEWAY_ENABLED: v }, () => {
      assert.throws(() => new Publisher(), (e) => e instanceof ConfigError && /SSE_GATEWAY_CERT/.test(e.message), v);
    });
  }
  const pub = withEnv({ SSE_GATEWAY_ENABLED: 'yes' }, () => new Publisher({ addr: 'localhost:9', cert: CERT, key: KEY }));
  assert.equal(pub.enabled, true);
  assert.ok(pub.client);
  await pub.close();
});

test('an unknown value is a ConfigError naming the variable', () => {
  withEnv({ SSE_GATEWAY_ENABLED: 'flase' }, () => {
    assert.throws(() => new Publisher(), (e) => e instanceof ConfigError && /\$SSE_GATEWAY_ENABLED='flase'.*true or false/.test(e.message));
  });
  withEnv({}, () => {
    assert.throws(() => new Publisher({ enabled: 'disable' }), /enabled='disable'/);
    assert.throws(() => new Publisher({ enabled: 0 }), /enabled must be a boolean/);
  });
});

test('the option overrides the environment', () => {
  withEnv({ SSE_GATEWAY_ENABLED: 'false' }, () => {
    assert.throws(() => new Publisher({ enabled: true }), /SSE_GATEWAY_CERT/);
  });
  withEnv({ SSE_GATEWAY_ENABLED: 'true' }, () => {
    assert.equal(new Publisher({ enabled: false }).enabled, false);
  });
});

'use strict';
// examples/node_workflow runs against a real gateway and its status events arrive on SSE.
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { execFile } = require('node:child_process');
const path = require('node:path');
const { Gateway, makeCerts, tmpDir, REPO } = require('./gateway');

let gw;
before(async () => {
  gw = await new Gateway(makeCerts(tmpDir('sdk-node-ex-'))).start();
});
after(async () => {
  if (gw) await gw.stop();
});

test('node_workflow publishes workflow status', async () => {
  const ws = `ws-${process.pid}`;
  const channel = `workflow:${ws}:wf1`;
  const s = await gw.sse([channel]);
  try {
    const c = gw.cert('faas-service');
    const env = { ...process.env, SSE_GATEWAY_ADDR: c.addr, SSE_GATEWAY_CA: c.ca, SSE_GATEWAY_CERT: c.cert, SSE_GATEWAY_KEY: c.key, DELAY_MS: '0' };
    const out = await new Promise((resolve, reject) => {
      execFile(process.execPath, [path.join(REPO, 'examples', 'node_workflow', 'index.js'), '--run', ws, 'wf1'], { env, timeout: 30000 }, (err, stdout, stderr) =>
        err ? reject(new Error(`${err.message}\n${stdout}${stderr}`)) : resolve(stdout),
      );
    });
    assert.match(out, /published/);
    const states = [];
    for (let i = 0; i < 6; i += 1) {
      const e = await s.nextEvent(channel);
      assert.equal(e.event, 'status');
      states.push(e.payload.state);
    }
    assert.deepEqual(states, ['queued', 'running', 'running', 'running', 'running', 'succeeded']);
  } finally {
    s.close();
  }
});

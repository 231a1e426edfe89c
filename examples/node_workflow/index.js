'use strict';
// A Node workflow service (the FaaS runner) that publishes workflow status through sse-gateway.
//
// Each run moves a workflow through queued -> running (step i/n) -> succeeded | failed and
// publishes every transition on `workflow:{workspaceId}:{workflowId}` (event "status"), so a
// browser showing the workflow updates live. A failed publish never fails the workflow: the SDK
// logs it and resolves to { ok: false }.
//
//   node examples/node_workflow/index.js                   # HTTP service on 127.0.0.1:3000
//     POST /workspaces/:ws/workflows/:wf/run?steps=4&delayMs=500
//   node examples/node_workflow/index.js --run ws1 wf1     # one run, then exit
//
// Without $SSE_GATEWAY_CERT it uses the dev setup of `cargo run --release`: localhost:50051 and
// <repo>/certs/faas-service{,-key}.pem.

const http = require('node:http');
const path = require('node:path');

let sdk;
try {
  sdk = require('@sse-gateway/publisher');
} catch (e) {
  if (e.code !== 'MODULE_NOT_FOUND') throw e;
  sdk = require('../../sdk/node'); // running from the repository without `npm install` here
}
const { Publisher } = sdk;

const SERVICE = 'faas-service';
const CERTS = path.resolve(__dirname, '..', '..', 'certs');

function makePublisher() {
  if (process.env.SSE_GATEWAY_CERT) return new Publisher();
  return new Publisher({
    addr: process.env.SSE_GATEWAY_ADDR || 'localhost:50051',
    ca: path.join(CERTS, 'ca.pem'),
    cert: path.join(CERTS, `${SERVICE}.pem`),
    key: path.join(CERTS, `${SERVICE}-key.pem`),
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Runs one (simulated) workflow, publishing each status; returns the publish results. */
async function runWorkflow(pub, workspaceId, workflowId, { steps = 4, delayMs = 500, failAt = 0 } = {}) {
  const channel = `workflow:${workspaceId}:${workflowId}`;
  const status = (state, extra = {}) =>
    pub.publish(channel, { workflowId, state, at: new Date().toISOString(), ...extra }, { event: 'status' });
  const results = [await status('queued')];
  for (let step = 1; step <= steps; step += 1) {
    results.push(await status('running', { step, steps, progress: (step - 1) / steps }));
    await sleep(delayMs);
    if (step === failAt) {
      results.push(await status('failed', { step, steps, error: `step ${step} raised TimeoutError` }));
      return results;
    }
  }
  results.push(await status('succeeded', { steps, progress: 1 }));
  return results;
}

function serve(pub, port) {
  const server = http.createServer(async (req, res) => {
    const url = new URL(req.url, 'http://localhost');
    const m = /^\/workspaces\/([^/]+)\/workflows\/([^/]+)\/run$/.exec(url.pathname);
    if (req.method === 'POST' && m) {
      const opts = {
        steps: Number(url.searchParams.get('steps') || 4),
        delayMs: Number(url.searchParams.get('delayMs') || 500),
        failAt: Number(url.searchParams.get('failAt') || 0),
      };
      const results = await runWorkflow(pub, decodeURIComponent(m[1]), decodeURIComponent(m[2]), opts);
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify({ published: results.map(({ ok, id, code }) => ({ ok, id, code })) }));
    } else if (req.method === 'GET' && url.pathname === '/health') {
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.end('{"status":"ok"}');
    } else {
      res.writeHead(404, { 'Content-Type': 'application/json' });
      res.end('{"error":"not found"}');
    }
  });
  server.listen(port, '127.0.0.1', () => console.log(`node_workflow listening on http://127.0.0.1:${port}`));
  const stop = () => server.close(() => pub.close());
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
}

async function main(argv) {
  const pub = makePublisher();
  const i = argv.indexOf('--run');
  if (i >= 0) {
    const [ws = 'ws1', wf = 'wf1'] = argv.slice(i + 1);
    const delayMs = Number(process.env.DELAY_MS || 300);
    const results = await runWorkflow(pub, ws, wf, { delayMs });
    await pub.close();
    for (const r of results) console.log(r.ok ? `published ${r.id}` : `not published: ${r.code} ${r.message}`);
    process.exitCode = results.every((r) => r.ok) ? 0 : 1;
    return;
  }
  serve(pub, Number(process.env.PORT || 3000));
}

if (require.main === module) {
  main(process.argv.slice(2)).catch((e) => {
    console.error(e);
    process.exitCode = 1;
  });
}

module.exports = { runWorkflow, makePublisher };

// Helpers for the end-to-end tests: a real gateway process, tokens, a gRPC publisher, Chromium.
import { spawn, spawnSync } from 'node:child_process';
import { createConnection } from 'node:net';
import { createHmac } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
export const WEB = resolve(here, '..');
export const REPO = resolve(WEB, '..');
export const DEMO_DIST = join(WEB, 'demo-dist');
export const BIN = process.env.SSE_GATEWAY_BIN || join(REPO, 'target', 'debug', 'sse-gateway');
export const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
export const SECRET = 'e2e-secret-e2e-secret-e2e-secret-0123';
export const DEMO_CHANNELS = ['logs:demo:**', 'workflow:demo:*', 'metrics:demo', 'dashboards:*'];
export const REDIS_URL = process.env.SSE_E2E_REDIS_URL || 'redis://127.0.0.1:6379';

/** Polls `fn` until it returns a truthy value; fails with `what` after `timeout` ms. */
export async function waitFor(fn, what, timeout = 15000, every = 50) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout}ms waiting for ${what} (last: ${fmt(last)})`);
    await new Promise((r) => setTimeout(r, every));
  }
}

function fmt(v) {
  if (v instanceof Error) return v.message;
  try {
    return JSON.stringify(v)?.slice(0, 300);
  } catch {
    return String(v);
  }
}

// ---- tokens ---------------------------------------------------------------------------------

const b64 = (v) => Buffer.from(typeof v === 'string' ? v : JSON.stringify(v)).toString('base64url');

/** An HS256 JWT signed with the test config's secret. */
export function mintToken({ sub = 'e2e-user', channels = DEMO_CHANNELS, roles = [], ttl = 600 } = {}) {
  const now = Math.floor(Date.now() / 1000);
  const head = b64({ alg: 'HS256', typ: 'JWT' });
  const body = b64({ sub, channels, roles, iat: now, exp: now + ttl });
  const sig = createHmac('sha256', SECRET).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${sig}`;
}

export const adminToken = () => mintToken({ sub: 'e2e-admin', channels: [], roles: ['admin'] });

// ---- the gateway ----------------------------------------------------------------------------

let pkiDir = null;
/** A dev PKI made once per run by `sse-gateway certs`. */
export function pki() {
  if (pkiDir) return pkiDir;
  if (!existsSync(BIN)) throw new Error(`gateway binary not found at ${BIN} (build it, or set SSE_GATEWAY_BIN)`);
  pkiDir = mkdtempSync(join(tmpdir(), 'sse-e2e-pki-'));
  const r = spawnSync(BIN, ['certs', '--out', pkiDir], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`sse-gateway certs failed: ${r.stderr}`);
  return pkiDir;
}

export function cleanupPki() {
  if (pkiDir) rmSync(pkiDir, { recursive: true, force: true });
  pkiDir = null;
}

/** `[broker]` table: in-memory by default; `{ kind: 'redis', url, keyPrefix }` for Redis Streams. */
function brokerToml(broker) {
  if (!broker || broker.kind === 'memory') return 'kind = "memory"';
  return `kind = "redis"\nurl = "${broker.url || REDIS_URL}"\nkey_prefix = "${broker.keyPrefix}"`;
}

function writeConfig(dir, { httpAddr = '127.0.0.1:0', grpcAddr = '127.0.0.1:0', broker } = {}) {
  const certs = pki();
  const file = join(dir, 'gateway.toml');
  writeFileSync(
    file,
    `[http]
addr = "${httpAddr}"
cors_origins = []
[grpc]
addr = "${grpcAddr}"
tls_cert = "${join(certs, 'server.pem')}"
tls_key = "${join(certs, 'server-key.pem')}"
client_ca = "${join(certs, 'ca.pem')}"
[jwt]
secret = "${SECRET}"
[broker]
${brokerToml(broker)}
[[publishers]]
name = "l5-etl-service"
channels = ["**"]
[[publishers]]
name = "faas-service"
channels = ["workflow:**"]
[[publishers]]
name = "analytics-service"
channels = ["metrics:**", "dashboards:**"]
control = true
`,
  );
  return file;
}

const running = new Set();
/** Kills every gateway this run started (safety net for failed tests). */
export function killAllGateways() {
  for (const p of running) p.kill('SIGKILL');
  running.clear();
}
process.on('exit', killAllGateways);
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => {
    killAllGateways();
    process.exit(1);
  });
}

async function spawnGateway(mode, config) {
  const proc = spawn(BIN, [mode, '--config', config], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'warn' },
  });
  running.add(proc);
  const st = { proc, out: '', err: '', exited: null };
  proc.stdout.on('data', (d) => (st.out += d));
  proc.stderr.on('data', (d) => (st.err += d));
  proc.on('exit', (code, sig) => {
    st.exited = { code, sig };
    running.delete(proc);
  });
  const m = await waitFor(
    () => {
      if (st.exited) throw new Error(`gateway exited (${JSON.stringify(st.exited)}): ${st.err.slice(-2000)}`);
      return /listening: http=(\S+) grpc=(\S+)/.exec(st.out);
    },
    'gateway to listen',
    20000,
    25,
  );
  st.http = m[1];
  st.grpc = m[2];
  return st;
}

async function stopProc(st, signal) {
  if (!st || st.exited) return;
  st.proc.kill(signal);
  await waitFor(() => st.exited, 'gateway to exit', 10000, 20).catch(() => st.proc.kill('SIGKILL'));
}

/**
 * Starts `sse-gateway serve|demo --config …` (ephemeral ports unless `httpAddr` is given; the
 * in-memory broker unless `broker` is given) and waits for its `listening:` line.
 * Returns { base, http, grpcPort, stop(), halt(), resume(), restart(), logs() }.
 */
export async function startGateway({ mode = 'serve', broker, httpAddr } = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'sse-e2e-gw-'));
  let st = await spawnGateway(mode, writeConfig(dir, { broker, httpAddr }));
  const gw = {
    mode,
    http: st.http,
    base: `http://${st.http}`,
    grpcPort: Number(st.grpc.split(':').pop()),
    logs: () => st.err,
    running: () => !st.exited,
    async stop(signal = 'SIGTERM') {
      await stopProc(st, signal);
      rmSync(dir, { recursive: true, force: true });
    },
    /** Stops the process (SIGTERM: graceful) and waits for its exit; `resume()` starts it again. */
    async halt(signal = 'SIGTERM') {
      await stopProc(st, signal);
      return st.exited;
    },
    /** Starts a stopped gateway again on the same HTTP and gRPC ports (the same config otherwise). */
    async resume() {
      const config = writeConfig(dir, { httpAddr: st.http, grpcAddr: st.grpc, broker });
      const deadline = Date.now() + 10000;
      for (;;) {
        try {
          st = await spawnGateway(mode, config);
          return gw;
        } catch (e) {
          if (Date.now() > deadline) throw e;
          await new Promise((r) => setTimeout(r, 200)); // the port may still be held for a moment
        }
      }
    },
    /** Kills the process and starts a new one on the same ports (with the in-memory broker, its log is lost). */
    async restart() {
      await gw.halt('SIGKILL');
      return gw.resume();
    },
  };
  return gw;
}

export async function adminConnections(gw) {
  const res = await fetch(`${gw.base}/admin/connections`, { headers: { Authorization: `Bearer ${adminToken()}` } });
  if (!res.ok) throw new Error(`/admin/connections: ${res.status} ${await res.text()}`);
  return res.json();
}

// ---- Redis (a minimal RESP client, for the Redis-broker test's set-up and clean-up) -----------

/** Sends one command to the Redis at REDIS_URL; resolves to the raw reply line(s). */
export function redisCommand(...args) {
  const u = new URL(REDIS_URL);
  const req = `*${args.length}\r\n${args.map((a) => `$${Buffer.byteLength(String(a))}\r\n${a}\r\n`).join('')}`;
  return new Promise((resolve, reject) => {
    const sock = createConnection({ host: u.hostname, port: Number(u.port || 6379) });
    let buf = '';
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error(`redis ${args[0]}: no answer from ${REDIS_URL}`));
    }, 3000);
    sock.on('connect', () => sock.write(req));
    sock.on('data', (d) => {
      buf += d;
      if (buf.endsWith('\r\n')) {
        clearTimeout(timer);
        sock.end();
        if (buf.startsWith('-')) reject(new Error(`redis ${args[0]}: ${buf.trim()}`));
        else resolve(buf.trim());
      }
    });
    sock.on('error', (e) => {
      clearTimeout(timer);
      reject(new Error(`redis at ${REDIS_URL}: ${e.message}`));
    });
  });
}

// ---- publishing over mTLS gRPC --------------------------------------------------------------

let grpcPackage = null;
function serviceCtor(name) {
  if (!grpcPackage) {
    const def = protoLoader.loadSync(join(REPO, 'proto', 'ssegateway', 'v1', 'gateway.proto'), {
      keepCase: true,
      longs: String,
      defaults: true,
      includeDirs: [join(REPO, 'proto')],
    });
    grpcPackage = grpc.loadPackageDefinition(def).ssegateway.v1;
  }
  return grpcPackage[name];
}

function serviceCredentials(service) {
  const certs = pki();
  return grpc.credentials.createSsl(
    readFileSync(join(certs, 'ca.pem')),
    readFileSync(join(certs, `${service}-key.pem`)),
    readFileSync(join(certs, `${service}.pem`)),
  );
}

/** A `Control` client (analytics-service has `control = true` in the test config). */
export function control(gw, service = 'analytics-service') {
  const Ctor = serviceCtor('Control');
  const client = new Ctor(`localhost:${gw.grpcPort}`, serviceCredentials(service));
  const call = (method, req) =>
    new Promise((resolve, reject) => {
      client[method](req, { deadline: Date.now() + 5000 }, (err, res) => (err ? reject(err) : resolve(res.streams)));
    });
  return {
    /** Resolves to the streams affected on the gateway. */
    disconnect: (user_id, reason = '', revoke_tokens = false) => call('Disconnect', { user_id, reason, revoke_tokens }),
    unsubscribe: (user_id, pattern, reason = '') => call('Unsubscribe', { user_id, pattern, reason }),
    close: () => client.close(),
  };
}

export function publisher(gw, service = 'l5-etl-service') {
  const creds = serviceCredentials(service);
  const Ctor = serviceCtor('Publisher');
  const client = new Ctor(`localhost:${gw.grpcPort}`, creds);
  return {
    /** Publishes one event; resolves to its cursor. */
    publish(channel, data, event = '') {
      return new Promise((resolve, reject) => {
        client.Publish({ channel, data: JSON.stringify(data), event }, { deadline: Date.now() + 5000 }, (err, res) =>
          err ? reject(err) : resolve(res.id),
        );
      });
    },
    close() {
      client.close();
    },
  };
}

// ---- the browser ----------------------------------------------------------------------------

export async function launchBrowser() {
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} not found (apt-get install -y chromium)`);
  // playwright-core gives each launch a new, empty --user-data-dir of its own (and removes it).
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  return {
    browser,
    async close() {
      await browser.close().catch(() => {});
    },
  };
}

/**
 * A browser context (its own cookies, Web Locks and BroadcastChannels: "one browser") whose pages
 * load the demo page from the gateway's origin. Unless `real` is set, /demo/* is answered from
 * web/demo-dist on disk (the freshly built page) and /demo/token by `token()`, so the tests control
 * the token; the page still talks to the real gateway for everything under /api/sse.
 */
export async function demoContext(browser, gw, { token = () => mintToken(), real = false } = {}) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const stats = { tokenCalls: 0, sseRequests: [] };
  context.on('request', (req) => {
    const u = new URL(req.url());
    if (u.pathname === '/api/sse') stats.sseRequests.push(req.url());
  });
  if (!real) {
    const files = { '/demo/': ['index.html', 'text/html'], '/demo/demo.js': ['demo.js', 'text/javascript'], '/demo/demo.css': ['demo.css', 'text/css'] };
    await context.route((url) => url.origin === gw.base && url.pathname.startsWith('/demo/'), (route) => {
      const path = new URL(route.request().url()).pathname;
      if (path === '/demo/token') {
        stats.tokenCalls++;
        return route.fulfill({ status: 200, contentType: 'application/json', body: JSON.stringify({ token: token(stats.tokenCalls) }) });
      }
      const f = files[path];
      if (!f) return route.fulfill({ status: 404, body: 'not found' });
      return route.fulfill({ status: 200, contentType: `${f[1]}; charset=utf-8`, body: readFileSync(join(DEMO_DIST, f[0])) });
    });
  }
  return { context, stats };
}

/**
 * Holds every `POST /api/sse/session` of `context` (a connection attempt's first request, made
 * after the old stream is closed) until `release()`: the browser stays disconnected meanwhile.
 */
export async function holdSessionExchanges(context) {
  let open;
  const gate = new Promise((r) => (open = r));
  let held = 0;
  const match = (url) => url.pathname === '/api/sse/session';
  const handler = async (route) => {
    held++;
    await gate;
    await route.continue().catch(() => {});
  };
  await context.route(match, handler);
  return {
    held: () => held,
    async release() {
      open();
      await context.unroute(match, handler);
    },
  };
}

/** Opens the demo page and waits for its connection to be open. */
export async function openDemo(context, gw, { panels } = {}) {
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  const q = panels ? `?panels=${panels.join(',')}` : '';
  await page.goto(`${gw.base}/demo/${q}`);
  await waitFor(() => page.evaluate(() => document.querySelector('[data-testid=status]')?.dataset.status === 'open'), 'demo page connection to open', 15000);
  page.errors = errors;
  return page;
}

/** The demo page's test hooks: client state, received events, gaps, denials, expiries. */
export function demoState(page) {
  return page.evaluate(() => {
    const d = window.__sseDemo;
    return {
      state: d.client.getState(),
      lastEventId: d.client.getLastEventId(),
      received: d.received.map((m) => ({ channel: m.channel, id: m.id })),
      gaps: d.gaps,
      denied: d.denied,
      expired: d.expired,
      revoked: d.revoked,
      tokenFetches: d.tokenFetches,
      tokensReceived: d.tokensReceived,
    };
  });
}

/**
 * Serves a second page of the demo's origin at `path` (its own HTML, the same bundle): a
 * full-page navigation to it is a navigation to "another micro-frontend" of the same origin.
 */
export async function secondPage(context, gw, path = '/second/') {
  const html = readFileSync(join(DEMO_DIST, 'index.html'), 'utf8')
    .replace('./demo.css', '/demo/demo.css')
    .replace('./demo.js', '/demo/demo.js')
    .replace(/<title>[^<]*<\/title>/, '<title>second page</title>');
  await context.route((url) => url.origin === gw.base && url.pathname === path, (route) =>
    route.fulfill({ status: 200, contentType: 'text/html; charset=utf-8', body: html }),
  );
  return `${gw.base}${path}`;
}

/** Waits for the demo page (after a load, reload or navigation) to have its connection open. */
export async function demoOpen(page) {
  await waitFor(() => page.evaluate(() => document.querySelector('[data-testid=status]')?.dataset.status === 'open'), 'demo page connection to open', 15000);
}

/** The numbers of the `burst N` lines the logs panel shows, oldest first. */
export async function burstShown(page) {
  const texts = await page.$$eval('[data-testid=panel-logs] li', (lis) => lis.map((li) => li.textContent ?? ''));
  return texts
    .map((t) => /burst (\d+)$/.exec(t.trim()))
    .filter(Boolean)
    .map((m) => Number(m[1]))
    .reverse();
}

export const panelCount = (page, id) =>
  page.evaluate((id) => Number(document.querySelector(`[data-testid=panel-${id}]`)?.dataset.count ?? -1), id);

export function artifactsDir() {
  const dir = join(REPO, 'artifacts');
  mkdirSync(dir, { recursive: true });
  return dir;
}

'use strict';
// Test harness: a REAL sse-gateway process with freshly generated certificates, and an SSE reader.
// The binary is $SSE_GATEWAY_BIN, default <repo>/target/debug/sse-gateway. Every wait has a deadline.

const { spawn, execFileSync } = require('node:child_process');
const fs = require('node:fs');
const http = require('node:http');
const os = require('node:os');
const path = require('node:path');
const readline = require('node:readline');

const REPO = path.resolve(__dirname, '..', '..', '..');
const BIN = process.env.SSE_GATEWAY_BIN || path.join(REPO, 'target', 'debug', 'sse-gateway');
const JWT_SECRET = 'test-secret-test-secret-test-secret';
const SERVICES = ['l5-etl-service', 'faas-service', 'analytics-service', 'stranger-service'];

const CONFIG = `[http]
addr = "127.0.0.1:0"

[grpc]
addr = "127.0.0.1:0"
tls_cert = "server.pem"
tls_key = "server-key.pem"
client_ca = "ca.pem"

[jwt]
secret = "${JWT_SECRET}"

[[publishers]]
name = "l5-etl-service"
channels = ["logs:**", "metrics:*"]

[[publishers]]
name = "analytics-service"
channels = ["metrics:*", "dashboards:*"]
control = true

[[publishers]]
name = "faas-service"
channels = ["workflow:**"]
`;

function requireBinary() {
  try {
    fs.accessSync(BIN, fs.constants.X_OK);
  } catch {
    throw new Error(`sse-gateway binary not found at ${BIN}: run \`cargo build\`, or set $SSE_GATEWAY_BIN`);
  }
  return BIN;
}

function run(args) {
  try {
    return execFileSync(requireBinary(), args, { encoding: 'utf8', timeout: 30000, stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (e) {
    throw new Error(`sse-gateway ${args.join(' ')} failed: ${e.stderr || e.message}`);
  }
}

const tmpDirs = [];
process.on('exit', () => {
  if (process.env.SDK_TEST_KEEP_TMP) return;
  for (const d of tmpDirs) fs.rmSync(d, { recursive: true, force: true });
});

/** A temporary folder, removed when the test process exits (unless $SDK_TEST_KEEP_TMP). */
function tmpDir(prefix) {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  tmpDirs.push(d);
  return d;
}

function makeCerts(dir, services = SERVICES) {
  run(['certs', '--out', dir, ...services.flatMap((s) => ['--service', s])]);
  for (const f of ['ca.pem', 'server.pem', 'server-key.pem', ...services.flatMap((s) => [`${s}.pem`, `${s}-key.pem`])]) {
    if (!fs.existsSync(path.join(dir, f))) throw new Error(`sse-gateway certs did not write ${f}`);
  }
  return dir;
}

class Gateway {
  constructor(dir, config = CONFIG) {
    this.dir = dir;
    this.config = path.join(dir, 'config.toml');
    fs.writeFileSync(this.config, config);
    this.logPath = path.join(dir, 'gateway.log');
  }

  get grpcAddr() {
    // Dial the name in the server certificate, not the IP.
    return `localhost:${this.grpcPort}`;
  }

  start(timeoutMs = 20000) {
    const log = fs.openSync(this.logPath, 'w');
    this.proc = spawn(requireBinary(), ['serve', '--config', this.config], {
      cwd: this.dir,
      stdio: ['ignore', 'pipe', log],
      env: { RUST_LOG: 'info', ...process.env },
    });
    fs.closeSync(log);
    return new Promise((resolve, reject) => {
      const seen = [];
      const timer = setTimeout(() => {
        this.stop();
        reject(new Error(`gateway printed no 'listening:' line within ${timeoutMs} ms; stdout=${JSON.stringify(seen)}\n${this.log()}`));
      }, timeoutMs);
      const rl = readline.createInterface({ input: this.proc.stdout });
      rl.on('line', (line) => {
        seen.push(line);
        const m = /listening: http=(\S+) grpc=(\S+)/.exec(line);
        if (m) {
          clearTimeout(timer);
          this.httpAddr = m[1];
          this.grpcPort = Number(m[2].split(':').pop());
          resolve(this);
        }
      });
      this.proc.on('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`gateway exited (${code}) before listening; stdout=${JSON.stringify(seen)}\n${this.log()}`));
      });
    });
  }

  log() {
    try {
      return fs.readFileSync(this.logPath, 'utf8').slice(-4000);
    } catch {
      return '';
    }
  }

  async stop() {
    if (!this.proc || this.proc.exitCode !== null || this.proc.signalCode !== null) return;
    const exited = new Promise((r) => this.proc.once('exit', r));
    this.proc.kill('SIGTERM');
    const t = setTimeout(() => this.proc.kill('SIGKILL'), 5000);
    await exited;
    clearTimeout(t);
  }

  /** Publisher options for a service's certificate. */
  cert(service) {
    return {
      addr: this.grpcAddr,
      ca: path.join(this.dir, 'ca.pem'),
      cert: path.join(this.dir, `${service}.pem`),
      key: path.join(this.dir, `${service}-key.pem`),
    };
  }

  token(sub = 'alice', channels = 'logs:**,metrics:*,dashboards:*,workflow:**', roles) {
    const args = ['token', '--config', this.config, '--sub', sub, '--channels', channels];
    if (roles) args.push('--roles', roles);
    return run(args).trim();
  }

  sse(channels, token) {
    return SSEStream.open(this.httpAddr, token || this.token(), channels);
  }
}

class SSEStream {
  static open(httpAddr, token, channels, timeoutMs = 10000) {
    const [host, port] = [httpAddr.slice(0, httpAddr.lastIndexOf(':')), Number(httpAddr.split(':').pop())];
    const query = channels.map((c) => `channels=${encodeURIComponent(c)}`).join('&');
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('SSE connect timed out')), timeoutMs);
      const req = http.get({ host, port, path: `/api/sse?${query}`, headers: { Authorization: `Bearer ${token}`, Accept: 'text/event-stream' } }, (res) => {
        if (res.statusCode !== 200) {
          let body = '';
          res.on('data', (c) => (body += c));
          res.on('end', () => {
            clearTimeout(timer);
            reject(new Error(`GET /api/sse -> ${res.statusCode}: ${body}`));
          });
          return;
        }
        const s = new SSEStream(req, res);
        s.next((f) => f.event === 'ready', timeoutMs).then(
          (ready) => {
            clearTimeout(timer);
            s.ready = JSON.parse(ready.data);
            resolve(s);
          },
          (e) => {
            clearTimeout(timer);
            reject(e);
          },
        );
      });
      req.on('error', (e) => {
        clearTimeout(timer);
        reject(e);
      });
    });
  }

  constructor(req, res) {
    this.req = req;
    this.res = res;
    this.contentType = res.headers['content-type'] || '';
    this.frames = [];
    this.waiters = [];
    this.ended = false;
    let buf = '';
    let frame = {};
    let data = [];
    res.setEncoding('utf8');
    res.on('data', (chunk) => {
      buf += chunk;
      let i;
      while ((i = buf.search(/\r\n|\n|\r/)) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(buf[i] === '\r' && buf[i + 1] === '\n' ? i + 2 : i + 1);
        if (line === '') {
          if (data.length) frame.data = data.join('\n');
          if (Object.keys(frame).length) this._push(frame);
          frame = {};
          data = [];
        } else if (!line.startsWith(':')) {
          const c = line.indexOf(':');
          const name = c < 0 ? line : line.slice(0, c);
          let value = c < 0 ? '' : line.slice(c + 1);
          if (value.startsWith(' ')) value = value.slice(1);
          if (name === 'data') data.push(value);
          else if (name === 'retry') this.retry = Number(value);
          else frame[name] = value;
        }
      }
    });
    const end = () => {
      this.ended = true;
      this._wake();
    };
    res.on('end', end);
    res.on('error', end);
    res.on('close', end);
  }

  _push(frame) {
    this.frames.push(frame);
    this._wake();
  }

  _wake() {
    for (const w of this.waiters.splice(0)) w();
  }

  /** The next frame matching `pred` (earlier non-matching frames are dropped). */
  next(pred, timeoutMs = 10000) {
    const skipped = [];
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no matching SSE frame within ${timeoutMs} ms; skipped ${JSON.stringify(skipped)}`)), timeoutMs);
      const check = () => {
        while (this.frames.length) {
          const f = this.frames.shift();
          if (pred(f)) {
            clearTimeout(timer);
            return resolve(f);
          }
          skipped.push(f);
        }
        if (this.ended) {
          clearTimeout(timer);
          return reject(new Error(`SSE stream ended; skipped ${JSON.stringify(skipped)}`));
        }
        this.waiters.push(check);
      };
      check();
    });
  }

  /** The next published event (a frame without `event:`), parsed, with the frame's id as `frameId`. */
  async nextEvent(channel, timeoutMs = 10000) {
    const f = await this.next((fr) => {
      if (fr.event !== undefined || fr.data === undefined) return false;
      return channel === undefined || JSON.parse(fr.data).channel === channel;
    }, timeoutMs);
    return { ...JSON.parse(f.data), frameId: f.id };
  }

  close() {
    this.req.destroy();
  }
}

module.exports = { Gateway, SSEStream, makeCerts, tmpDir, run, REPO, BIN, SERVICES };

'use strict';
// The npm packages install into a FRESH app (`npm init -y`) and work from there:
// - @sse-gateway/publisher as the README says (from a clean copy of sdk/node: the files a fresh
//   clone has, so no sdk/node/node_modules can make it pass), also after the app reinstalls from
//   its lockfile, and from the `npm pack` tarball; each then publishes to a real gateway;
// - examples/node_workflow after `npm install` in it (its package.json points at ../../sdk/node);
// - @sse-gateway/client (web/) from its tarball: both entry points load.
// The tarballs are those in $SDK_ARTIFACTS (sdk/test.sh builds them with sdk/pack.sh); without it
// they are built here. The installs run side by side: each is mostly waiting on npm.
const { test, suite, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { execFile, execFileSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');
const { Gateway, makeCerts, tmpDir, REPO } = require('./gateway');

const README = path.join(REPO, 'sdk', 'README.md');
const PLACEHOLDER = '/path/to/sse-gateway';
// The README's commands, run verbatim in the app (PLACEHOLDER replaced by a clean copy of the repository).
const README_COMMANDS = ['echo install-links=true >> .npmrc', `npm install ${PLACEHOLDER}/sdk/node`];
const TIMEOUT_MS = 300000;

// npm as a user runs it, but from the local cache when it can and without audit/fund requests.
const NPM_ENV = { npm_config_prefer_offline: 'true', npm_config_audit: 'false', npm_config_fund: 'false', npm_config_update_notifier: 'false' };

function sh(cmd, cwd, env = {}) {
  return new Promise((resolve, reject) => {
    execFile('bash', ['-c', cmd], { cwd, env: { ...process.env, ...NPM_ENV, ...env }, timeout: TIMEOUT_MS, maxBuffer: 16 << 20 }, (err, stdout, stderr) =>
      err ? reject(new Error(`\`${cmd}\` (in ${cwd}) failed: ${err.message}\n${stdout}${stderr}`)) : resolve(stdout),
    );
  });
}

/** The files of `folder` a fresh clone has (tracked, plus new ones not ignored), copied under dest. */
function cleanCopy(folder, dest) {
  const files = execFileSync('git', ['ls-files', '-z', '--cached', '--others', '--exclude-standard', '--', folder], { cwd: REPO })
    .toString()
    .split('\0')
    .filter(Boolean);
  for (const f of files) {
    const src = path.join(REPO, f);
    if (!fs.statSync(src, { throwIfNoEntry: false })?.isFile()) continue;
    fs.mkdirSync(path.dirname(path.join(dest, f)), { recursive: true });
    fs.copyFileSync(src, path.join(dest, f));
  }
  return dest;
}

async function freshApp(root) {
  const app = path.join(root, 'my-service');
  fs.mkdirSync(app, { recursive: true });
  await sh('npm init -y', app);
  return app;
}

function artifacts() {
  if (process.env.SDK_ARTIFACTS) return process.env.SDK_ARTIFACTS;
  const out = tmpDir('sdk-packages-');
  execFileSync('bash', [path.join(REPO, 'sdk', 'pack.sh'), out, 'node', 'web'], { stdio: ['ignore', 'ignore', 'inherit'], timeout: TIMEOUT_MS });
  return out;
}

function one(dir, re) {
  const found = fs.readdirSync(dir).filter((f) => re.test(f));
  assert.equal(found.length, 1, `expected one ${re} in ${dir}, found ${JSON.stringify(found)}`);
  return path.join(dir, found[0]);
}

// Run by node in the app: publish with the environment's settings only.
const SMOKE = `
const { Publisher } = require('@sse-gateway/publisher');
const pub = new Publisher();
pub.publishLog(process.argv[1], 'wf1', { installedFrom: process.argv[2] }).then(async (res) => {
  await pub.close();
  console.log(JSON.stringify({ ...res, file: require.resolve('@sse-gateway/publisher') }));
});
`;

let gw;
let packages;
before(async () => {
  packages = artifacts();
  gw = await new Gateway(makeCerts(tmpDir('sdk-node-install-'))).start();
});
after(async () => {
  if (gw) await gw.stop();
});

async function publishFrom(app, how) {
  const ws = `ws-${how}-${process.pid}`;
  const channel = `logs:${ws}:wf1`;
  const c = gw.cert('l5-etl-service');
  const s = await gw.sse([channel]);
  try {
    const env = { SSE_GATEWAY_ADDR: c.addr, SSE_GATEWAY_CA: c.ca, SSE_GATEWAY_CERT: c.cert, SSE_GATEWAY_KEY: c.key, SSE_GATEWAY_ENABLED: '', NODE_PATH: '' };
    const out = await sh(`node -e ${shellQuote(SMOKE)} ${ws} ${how}`, app, env);
    const res = JSON.parse(out);
    assert.equal(res.ok, true, out);
    // Loaded from the app's own node_modules: a copy, not a link back into the repository.
    assert.ok(res.file.startsWith(path.join(fs.realpathSync(app), 'node_modules') + path.sep), res.file);
    const e = await s.nextEvent(channel);
    assert.deepEqual(e.payload, { installedFrom: how });
    assert.equal(e.id, res.id);
  } finally {
    s.close();
  }
}

function shellQuote(s) {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

test('the README states the commands this test runs', () => {
  const text = fs.readFileSync(README, 'utf8');
  for (const cmd of README_COMMANDS) assert.ok(text.includes(cmd), `sdk/README.md lacks: ${cmd}`);
});

suite('fresh npm apps', { concurrency: true, timeout: TIMEOUT_MS }, () => {
  test("@sse-gateway/publisher installed as the README says publishes, also after `npm ci`", async () => {
    const root = tmpDir('sdk-node-readme-');
    const checkout = cleanCopy('sdk/node', path.join(root, 'sse-gateway'));
    const app = await freshApp(root);
    for (const cmd of README_COMMANDS) await sh(cmd.replace(PLACEHOLDER, checkout), app);
    await publishFrom(app, 'readme');
    // What the app's CI or Docker build does next: a clean install from its lockfile.
    fs.rmSync(path.join(app, 'node_modules'), { recursive: true });
    await sh('npm ci', app);
    await publishFrom(app, 'readme-ci');
  });

  test('@sse-gateway/publisher installed from its npm pack tarball publishes', async () => {
    const app = await freshApp(tmpDir('sdk-node-tgz-'));
    await sh(`npm install ${shellQuote(one(packages, /^sse-gateway-publisher-.*\.tgz$/))}`, app);
    await publishFrom(app, 'tarball');
  });

  test('examples/node_workflow: `npm install` there, then a run publishes', async () => {
    const root = tmpDir('sdk-node-example-');
    cleanCopy('sdk/node', root);
    const example = path.join(cleanCopy('examples/node_workflow', root), 'examples', 'node_workflow');
    await sh('npm install', example);
    const ws = `ws-example-${process.pid}`;
    const channel = `workflow:${ws}:wf1`;
    const c = gw.cert('faas-service');
    const s = await gw.sse([channel]);
    try {
      const env = { SSE_GATEWAY_ADDR: c.addr, SSE_GATEWAY_CA: c.ca, SSE_GATEWAY_CERT: c.cert, SSE_GATEWAY_KEY: c.key, DELAY_MS: '0' };
      await sh(`node index.js --run ${ws} wf1`, example, env);
      const e = await s.nextEvent(channel);
      assert.equal(e.event, 'status');
      assert.equal(e.payload.state, 'queued');
    } finally {
      s.close();
    }
  });

  suite('@sse-gateway/client installed from its npm pack tarball', () => {
    let app;
    before(async () => {
      app = await freshApp(tmpDir('sdk-web-tgz-'));
      // The React entry point needs react (a peer dependency); the version web/ is tested with.
      const lock = JSON.parse(fs.readFileSync(path.join(REPO, 'web', 'package-lock.json'), 'utf8'));
      const react = lock.packages['node_modules/react'].version;
      await sh(`npm install ${shellQuote(one(packages, /^sse-gateway-client-.*\.tgz$/))} react@${react}`, app);
    });

    const CHECK = `
      const missing = [];
      for (const n of ['SSEClient', 'getSharedClient', 'createSSEClient']) if (typeof core[n] !== 'function') missing.push('core.' + n);
      for (const n of ['SSEProvider', 'useSSE', 'useSSESubscription', 'withSSE']) if (typeof react[n] !== 'function') missing.push('react.' + n);
      if (core.SSEClient !== react.SSEClient) missing.push('one SSEClient for both entry points');
      console.log(JSON.stringify(missing));
    `;

    test('import of both entry points (ESM), with their type declarations', async () => {
      const out = await sh(
        `node --input-type=module -e ${shellQuote(`const core = await import('@sse-gateway/client'); const react = await import('@sse-gateway/client/react'); ${CHECK}`)}`,
        app,
      );
      assert.deepEqual(JSON.parse(out), []);
      const pkg = path.join(app, 'node_modules', '@sse-gateway', 'client');
      for (const f of ['dist/index.d.ts', 'dist/react/index.d.ts']) assert.ok(fs.existsSync(path.join(pkg, f)), f);
    });

    // Node 20.19+ loads the ESM build through require() (no top-level await in it).
    test('require() of both entry points (CommonJS)', async () => {
      const out = await sh(`node -e ${shellQuote(`const core = require('@sse-gateway/client'); const react = require('@sse-gateway/client/react'); ${CHECK}`)}`, app);
      assert.deepEqual(JSON.parse(out), []);
    });
  });
});

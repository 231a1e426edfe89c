// End-to-end: the admin dashboard (charts over /admin/history, connection table, disconnect
// buttons) in headless Chromium against a real sse-gateway process.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import {
  adminToken,
  artifactsDir,
  cleanupPki,
  killAllGateways,
  launchBrowser,
  mintToken,
  publisher,
  startGateway,
  waitFor,
} from './lib.mjs';

let chrome;
let gw;
let pub;

before(async () => {
  [chrome, gw] = await Promise.all([launchBrowser(), startGateway()]);
  pub = publisher(gw, 'analytics-service');
});

after(async () => {
  pub?.close();
  await chrome?.close();
  await gw?.stop();
  killAllGateways();
  cleanupPki();
});

/** An SSE stream opened from Node; resolves once `ready` arrived. `close()` ends it. */
async function openStream(sub, channels) {
  const abort = new AbortController();
  const res = await fetch(`${gw.base}/api/sse?channels=${channels.join(',')}`, {
    headers: { Authorization: `Bearer ${mintToken({ sub, channels })}` },
    signal: abort.signal,
  });
  assert.equal(res.status, 200);
  const reader = res.body.getReader();
  const state = { text: '', ended: false };
  (async () => {
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        state.text += Buffer.from(value).toString('utf8');
      }
    } catch {
      // aborted
    }
    state.ended = true;
  })();
  await waitFor(() => state.text.includes('event: ready'), `${sub}'s ready event`, 10000);
  return { state, close: () => abort.abort() };
}

/** Signs the page's context in with an admin cookie and opens /admin. */
async function openAdmin(context) {
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  await page.goto(`${gw.base}/admin`);
  const status = await page.evaluate(async (token) => {
    const r = await fetch('/admin/session', { method: 'POST', headers: { Authorization: `Bearer ${token}` } });
    return r.status;
  }, adminToken());
  assert.equal(status, 204);
  const res = await page.goto(`${gw.base}/admin`);
  assert.equal(res.status(), 200);
  return { page, errors };
}

describe('admin dashboard charts', () => {
  it('charts the sampled history with data points and lists the open stream — screenshot to artifacts/admin.png', { timeout: 90000 }, async (t) => {
    const sub = 'admin-chart-user';
    const stream = await openStream(sub, ['metrics:demo']);
    const context = await chrome.browser.newContext({ viewport: { width: 1280, height: 1000 } });
    // Traffic for the whole test: a few events per second.
    let n = 0;
    const traffic = setInterval(() => pub.publish('metrics:demo', { n: n++ }).catch(() => {}), 200);
    try {
      const { page, errors } = await openAdmin(context);
      const table = () => page.locator('#ctab').innerText();
      await waitFor(async () => (await table()).includes(sub), 'the connections table to list the stream', 10000);
      await waitFor(async () => (await page.locator('#htab').innerText()).includes('metrics:demo'), 'the channels table to list its channel', 5000);

      // The sampler takes a point every 5 s and the page reloads the history as often: wait for
      // two points with traffic in them.
      const chartState = (id) =>
        page.evaluate((id) => {
          const s = document.getElementById(`chart-${id}`);
          const lines = [...s.querySelectorAll('polyline')];
          return {
            points: Number(s.dataset.points),
            drawn: Number(s.dataset.drawn || 0),
            coords: lines.reduce((k, l) => k + l.getAttribute('points').trim().split(/\s+/).length, 0),
            now: document.getElementById(`now-${id}`).textContent,
          };
        }, id);
      const published = await waitFor(
        async () => {
          const c = await chartState('published');
          return c.points >= 2 && c.coords >= 2 && Number(c.now) > 0 ? c : null;
        },
        'the published/s chart to draw two points with traffic',
        30000,
      );
      assert.ok(published.drawn >= 2, JSON.stringify(published));
      const streams = await chartState('streams');
      assert.ok(streams.coords >= 2 && Number(streams.now) >= 1, JSON.stringify(streams));
      const delivered = await chartState('delivered');
      assert.ok(delivered.coords >= 2 && Number(delivered.now) > 0, JSON.stringify(delivered));
      const p99 = await chartState('p99');
      assert.ok(p99.coords >= 1 && Number(p99.now) > 0, JSON.stringify(p99));
      // No authorizer: its chart has points but draws no latency line.
      const authz = await chartState('authz');
      assert.ok(authz.points >= 2, JSON.stringify(authz));
      assert.match(await page.locator('#hinfo').innerText(), /\d+ of 180 points, every 5 s/);

      const file = join(artifactsDir(), 'admin.png');
      await page.screenshot({ path: file, fullPage: true });
      t.diagnostic(`screenshot: ${file}`);
      assert.equal(await page.locator('#err').innerText(), '');
      assert.deepEqual(errors, []);
    } finally {
      clearInterval(traffic);
      stream.close();
      await context.close();
    }
  });

  it('disconnect buttons POST /admin/disconnect with the connection or user and show the answer or the error', { timeout: 60000 }, async () => {
    const sub = 'admin-kick-user';
    const stream = await openStream(sub, ['metrics:demo']);
    const context = await chrome.browser.newContext({ viewport: { width: 1280, height: 900 } });
    // The endpoint's answers are played here, so the page's side of the contract is checked on
    // its own: the request it sends, and what it shows for success and for failure.
    const sent = [];
    let answer = { status: 200, body: { streams: 1 } };
    await context.route(`${gw.base}/admin/disconnect`, (route) => {
      const req = route.request();
      sent.push({ method: req.method(), type: req.headers()['content-type'], body: JSON.parse(req.postData() || 'null') });
      return route.fulfill({ status: answer.status, contentType: 'application/json', body: JSON.stringify(answer.body) });
    });
    try {
      const { page, errors } = await openAdmin(context);
      const rowOf = () => page.locator('#ctab tr', { hasText: sub });
      await waitFor(async () => (await rowOf().count()) === 1, 'the stream in the connections table', 10000);
      const [conn] = (await (await fetch(`${gw.base}/admin/connections`, { headers: { Authorization: `Bearer ${adminToken()}` } })).json()).filter((c) => c.sub === sub);

      await page.fill('#reason', 'maintenance');
      await rowOf().getByRole('button', { name: 'disconnect', exact: true }).click();
      await waitFor(async () => (await page.locator('#actmsg').innerText()).includes('1 stream(s) closed'), 'the success message', 5000);
      assert.equal(await page.locator('#actmsg').getAttribute('class'), 'good');
      assert.deepEqual(sent.at(-1), { method: 'POST', type: 'application/json', body: { connection_id: conn.connection_id, reason: 'maintenance' } });

      answer = { status: 404, body: { error: 'no such user' } };
      await rowOf().getByRole('button', { name: 'disconnect user' }).click();
      const msg = await waitFor(async () => {
        const m = await page.locator('#actmsg').innerText();
        return m.includes('failed') ? m : null;
      }, 'the error message', 5000);
      assert.match(msg, /disconnect user admin-kick-user failed: 404 no such user/);
      assert.equal(await page.locator('#actmsg').getAttribute('class'), 'bad');
      assert.deepEqual(sent.at(-1).body, { user_id: sub, reason: 'maintenance' });
      assert.deepEqual(errors, []);
    } finally {
      stream.close();
      await context.close();
    }
  });
});

// End-to-end: the demo page in headless Chromium against a real sse-gateway process.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import {
  adminConnections,
  burstShown,
  demoOpen,
  adminToken,
  artifactsDir,
  cleanupPki,
  control,
  DEMO_DIST,
  demoContext,
  demoState,
  holdSessionExchanges,
  killAllGateways,
  launchBrowser,
  mintToken,
  openDemo,
  panelCount,
  publisher,
  redisCommand,
  secondPage,
  startGateway,
  waitFor,
} from './lib.mjs';

let chrome;
let gw;
let pub;

before(async () => {
  [chrome, gw] = await Promise.all([launchBrowser(), startGateway()]);
  pub = publisher(gw);
});

after(async () => {
  pub?.close();
  await chrome?.close();
  await gw?.stop();
  killAllGateways();
  cleanupPki();
});

const connectionsOf = async (sub) => (await adminConnections(gw)).filter((c) => c.sub === sub);
const logIds = (s, channel = 'logs:demo:etl-1') => s.received.filter((m) => m.channel === channel).map((m) => m.id);

describe('one page, micro-frontends on one connection', () => {
  let ctx;
  let page;
  const sub = 'mfe-user';

  before(async () => {
    ctx = await demoContext(chrome.browser, gw, { token: () => mintToken({ sub }) });
    page = await openDemo(ctx.context, gw, { panels: ['logs', 'workflow', 'metrics'] });
  });
  after(async () => {
    await ctx?.context.close();
  });

  it('three components receive their own channels over exactly one network connection', { timeout: 60000 }, async () => {
    const sent = { logs: [], workflow: [], metrics: [] };
    for (let i = 1; i <= 3; i++) {
      sent.logs.push(await pub.publish('logs:demo:etl-1', { level: 'info', message: `e2e line ${i}` }, 'log'));
      sent.workflow.push(await pub.publish('workflow:demo:wf-1', { workflow: 'wf-1', state: i === 3 ? 'succeeded' : 'running', progress: i * 33 }, 'status'));
      sent.metrics.push(await pub.publish('metrics:demo', { cpu: 40 + i, rps: 100 * i }, 'metric'));
    }
    for (const id of ['logs', 'workflow', 'metrics']) {
      await waitFor(async () => (await panelCount(page, id)) === 3, `${id} panel to show 3 events`, 10000);
    }
    const text = (sel) => page.locator(sel).innerText();
    assert.match(await text('[data-testid=panel-logs]'), /e2e line 3/);
    assert.doesNotMatch(await text('[data-testid=panel-logs]'), /succeeded|cpu/);
    assert.equal(await page.getByTestId('wf-state').textContent(), 'succeeded');
    assert.match(await text('[data-testid=panel-metrics]'), /43/);

    const s = await demoState(page);
    assert.deepEqual(logIds(s), sent.logs);
    assert.deepEqual(logIds(s, 'workflow:demo:wf-1'), sent.workflow);
    assert.deepEqual(logIds(s, 'metrics:demo'), sent.metrics);
    // exactly one network connection: one /api/sse request from the browser, one on the gateway
    assert.equal(ctx.stats.sseRequests.length, 1, `SSE requests: ${ctx.stats.sseRequests.join(' ')}`);
    assert.equal(s.state.connects, 1);
    const conns = await connectionsOf(sub);
    assert.equal(conns.length, 1, JSON.stringify(conns));
    assert.deepEqual([...conns[0].channels].sort(), ['logs:demo:etl-1', 'metrics:demo', 'workflow:demo:wf-1']);
    assert.equal(conns[0].connection_id, s.state.connectionId);
    assert.ok(!ctx.stats.sseRequests[0].includes('token'), 'no token in the SSE URL');
  });

  it('a component mounted later gets its channel added live, without a reconnect', { timeout: 60000 }, async () => {
    const before = await demoState(page);
    await page.getByTestId('toggle-dashboard').check();
    await waitFor(async () => (await connectionsOf(sub))[0]?.channels.includes('dashboards:main'), 'dashboards:main on the connection', 10000);
    await pub.publish('dashboards:main', { widget: 'throughput', value: 4242 }, 'update');
    await waitFor(async () => (await page.getByTestId('dashboard-value').innerText().catch(() => '')) === '4242', 'dashboard panel to show 4242', 10000);
    const s = await demoState(page);
    assert.equal(s.state.connectionId, before.state.connectionId, 'same connection');
    assert.equal(s.state.connects, 1, 'no new EventSource');
    assert.equal(ctx.stats.sseRequests.length, 1, 'no new SSE request');
    const conns = await connectionsOf(sub);
    assert.equal(conns.length, 1);
    assert.equal(conns[0].connection_id, before.state.connectionId);
  });

  it('unmounting a component releases its channel', { timeout: 60000 }, async () => {
    await page.getByTestId('toggle-dashboard').uncheck();
    await waitFor(async () => !(await connectionsOf(sub))[0]?.channels.includes('dashboards:main'), 'dashboards:main removed', 10000);
    assert.equal((await demoState(page)).state.connects, 1);
  });

  it('a denied channel is reported to the app and the component', { timeout: 60000 }, async () => {
    await page.getByTestId('toggle-restricted').check();
    const denied = page.getByTestId('denied-restricted');
    await denied.waitFor({ timeout: 10000 });
    assert.match(await denied.innerText(), /denied/i);
    const notice = page.locator('[data-kind=denied]');
    await notice.first().waitFor({ timeout: 5000 });
    assert.match(await notice.first().innerText(), /metrics:private/);
    const s = await demoState(page);
    assert.ok(s.denied.some((d) => d.channel === 'metrics:private'), JSON.stringify(s.denied));
    assert.equal(s.state.status, 'open');
    assert.equal(s.state.connects, 1, 'a denial does not cost the connection');
    assert.deepEqual(page.errors, []);
  });
});

describe('many tabs, one connection', () => {
  it('three tabs share one SSE connection; closing the leader moves it to another tab with nothing missing', { timeout: 60000 }, async () => {
    const sub = 'tabs-user';
    const { context, stats } = await demoContext(chrome.browser, gw, { token: () => mintToken({ sub }) });
    try {
      const pages = [];
      pages.push(await openDemo(context, gw, { panels: ['logs'] }));
      pages.push(await openDemo(context, gw, { panels: ['logs', 'metrics'] }));
      pages.push(await openDemo(context, gw, { panels: ['logs', 'workflow'] }));
      await waitFor(async () => {
        const c = await connectionsOf(sub);
        return c.length === 1 && c[0].channels.length === 3;
      }, 'one connection carrying all three tabs\' channels', 10000);
      assert.equal(stats.sseRequests.length, 1, 'one SSE request for three tabs');
      const states = await Promise.all(pages.map(demoState));
      assert.deepEqual(states.map((s) => s.state.role).sort(), ['follower', 'follower', 'leader']);
      for (const s of states) assert.equal(s.state.tabs, 3);

      const first = [];
      for (let i = 0; i < 5; i++) first.push(await pub.publish('logs:demo:etl-1', { level: 'info', message: `before ${i}` }, 'log'));
      for (const p of pages) await waitFor(async () => logIds(await demoState(p)).length === 5, 'every tab to get 5 events', 10000);

      const leaderIdx = states.findIndex((s) => s.state.role === 'leader');
      const oldConn = states[leaderIdx].state.connectionId;
      const rest = pages.filter((_, i) => i !== leaderIdx);
      await pages[leaderIdx].close();
      // published while the stream moves from one tab to another
      const second = [];
      for (let i = 0; i < 5; i++) second.push(await pub.publish('logs:demo:etl-1', { level: 'info', message: `during ${i}` }, 'log'));

      await waitFor(async () => {
        const c = await connectionsOf(sub);
        return c.length === 1 && c[0].connection_id !== oldConn;
      }, 'the new leader\'s connection to replace the old one', 15000);
      const third = [await pub.publish('logs:demo:etl-1', { level: 'info', message: 'after' }, 'log')];
      const all = [...first, ...second, ...third];
      for (const p of rest) {
        await waitFor(async () => logIds(await demoState(p)).length >= all.length, 'the remaining tabs to catch up', 10000);
        const s = await demoState(p);
        assert.deepEqual(logIds(s), all, 'every event once, in order');
        assert.deepEqual(s.gaps, []);
      }
      const roles = (await Promise.all(rest.map(demoState))).map((s) => s.state.role).sort();
      assert.deepEqual(roles, ['follower', 'leader']);
      assert.equal(stats.sseRequests.length, 2, 'exactly one new SSE request after the takeover');
      // the new leader carries the remaining tabs' channels
      const c = (await connectionsOf(sub))[0];
      const wanted = new Set(['logs:demo:etl-1']);
      for (const p of rest) for (const ch of (await demoState(p)).state.channels) wanted.add(ch);
      assert.ok(c.channels.includes('logs:demo:etl-1'));
      const metricsTab = rest.find((p) => p === pages[1]);
      if (metricsTab) {
        const id = await pub.publish('metrics:demo', { cpu: 1, rps: 2 }, 'metric');
        await waitFor(async () => (await demoState(metricsTab)).received.some((m) => m.id === id), 'metrics to reach its tab', 10000);
      }
    } finally {
      await context.close();
    }
  });
});

describe('many tabs, one connection (more)', () => {
  it('ten tabs still hold one SSE connection (past the HTTP/1.1 six-per-host limit)', { timeout: 60000 }, async () => {
    const sub = 'ten-tabs-user';
    const { context, stats } = await demoContext(chrome.browser, gw, { token: () => mintToken({ sub }) });
    try {
      const pages = [];
      for (let i = 0; i < 10; i++) pages.push(await openDemo(context, gw, { panels: ['logs'] }));
      assert.equal((await connectionsOf(sub)).length, 1);
      assert.equal(stats.sseRequests.length, 1);
      const id = await pub.publish('logs:demo:etl-1', { level: 'info', message: 'to all tabs' }, 'log');
      for (const p of pages) await waitFor(async () => logIds(await demoState(p)).includes(id), 'every tab to get the event', 10000);
    } finally {
      await context.close();
    }
  });

  it('a crashed follower tab\'s channels are released by the leader', { timeout: 60000 }, async () => {
    const sub = 'crash-user';
    const { context } = await demoContext(chrome.browser, gw, { token: () => mintToken({ sub }) });
    try {
      const leader = await openDemo(context, gw, { panels: ['logs'] });
      const follower = await openDemo(context, gw, { panels: ['dashboard'] });
      assert.equal((await demoState(leader)).state.role, 'leader');
      await waitFor(async () => (await connectionsOf(sub))[0]?.channels.includes('dashboards:main'), 'the follower\'s channel on the connection', 10000);
      const cdp = await context.newCDPSession(follower);
      cdp.send('Page.crash').catch(() => {}); // the renderer dies: no unload, no bye (never answers)
      await waitFor(async () => {
        const c = await connectionsOf(sub);
        return c.length === 1 && !c[0].channels.includes('dashboards:main');
      }, 'the crashed tab\'s channel to be released', 10000);
      assert.equal((await demoState(leader)).state.tabs, 1);
    } finally {
      await context.close();
    }
  });
});

describe('resume from ready.cursor before any event', () => {
  const lastEventIdOf = (url) => new URL(url).searchParams.get('last_event_id');

  it('a reconnect before the first event misses nothing published while disconnected', { timeout: 60000 }, async () => {
    const sub = 'ready-cursor-user';
    const { context, stats } = await demoContext(chrome.browser, gw, { token: () => mintToken({ sub }) });
    try {
      const page = await openDemo(context, gw, { panels: ['logs'] });
      const before = await demoState(page);
      assert.deepEqual(before.received, []);
      assert.equal(typeof before.lastEventId, 'string', 'ready.cursor adopted as the resume point');
      assert.equal(lastEventIdOf(stats.sseRequests[0]), null, 'the first stream had no cursor to send');

      const hold = await holdSessionExchanges(context);
      await page.evaluate(() => window.__sseDemo.client.reconnect());
      await waitFor(() => hold.held() === 1, 'the reconnect to start (old stream closed)', 10000);
      const id = await pub.publish('logs:demo:etl-1', { level: 'info', message: 'while disconnected' }, 'log');
      await hold.release();

      await waitFor(async () => logIds(await demoState(page)).includes(id), 'the event published during the reconnect', 10000);
      const s = await demoState(page);
      assert.deepEqual(logIds(s), [id], 'received once');
      assert.deepEqual(s.gaps, []);
      assert.equal(s.state.connects, 2);
      assert.equal(stats.sseRequests.length, 2);
      assert.equal(lastEventIdOf(stats.sseRequests[1]), before.lastEventId, 'the new stream resumed from ready.cursor');
      assert.equal(s.lastEventId, id);
    } finally {
      await context.close();
    }
  });

  it('a leader change before the first event misses nothing published during the takeover', { timeout: 60000 }, async () => {
    const sub = 'ready-cursor-tabs-user';
    const { context, stats } = await demoContext(chrome.browser, gw, { token: () => mintToken({ sub }) });
    try {
      const leader = await openDemo(context, gw, { panels: ['logs'] });
      const follower = await openDemo(context, gw, { panels: ['logs'] });
      const cursor = (await demoState(leader)).lastEventId;
      assert.equal(typeof cursor, 'string');
      assert.equal((await demoState(leader)).state.role, 'leader');
      await waitFor(async () => (await demoState(follower)).lastEventId === cursor, 'the follower to learn the leader\'s cursor', 10000);

      const hold = await holdSessionExchanges(context);
      await leader.close();
      await waitFor(() => hold.held() === 1, 'the follower to take over', 10000);
      const id = await pub.publish('logs:demo:etl-1', { level: 'info', message: 'during the takeover' }, 'log');
      await hold.release();

      await waitFor(async () => logIds(await demoState(follower)).includes(id), 'the event published during the takeover', 10000);
      const s = await demoState(follower);
      assert.equal(s.state.role, 'leader');
      assert.deepEqual(logIds(s), [id], 'received once');
      assert.deepEqual(s.gaps, []);
      assert.equal(stats.sseRequests.length, 2);
      assert.equal(lastEventIdOf(stats.sseRequests[1]), cursor, 'the new leader resumed from ready.cursor');
    } finally {
      await context.close();
    }
  });
});

describe('state that survives navigation (sessionStorage)', () => {
  const N = 30;
  const MID = 12;
  const expected = Array.from({ length: N }, (_, i) => i + 1);
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const lastEventIdOf = (url) => new URL(url).searchParams.get('last_event_id');

  /**
   * Publishes `burst 1..N` on the logs channel, one after the other. Before event MID, once the
   * page shows the first MID-1, `midway()` starts a reload or navigation (not awaited: the burst
   * goes on while the page is away). Returns the cursors, and the pending navigation.
   */
  async function burst(page, midway) {
    const ids = [];
    let nav = null;
    for (let i = 1; i <= N; i++) {
      if (i === MID) {
        await waitFor(async () => (await burstShown(page)).length === MID - 1, `the first ${MID - 1} events on the page`, 10000);
        nav = midway();
      }
      ids.push(await pub.publish('logs:demo:etl-1', { level: 'info', message: `burst ${i}` }, 'log'));
      await sleep(25);
    }
    return { ids, nav };
  }

  async function allShown(page) {
    await waitFor(async () => (await burstShown(page)).length >= N, `the panel to show ${N} events`, 15000);
    await sleep(300); // a duplicate would show up as an extra line
    return burstShown(page);
  }

  it('a reload mid-burst resumes where the page stopped: the panel shows exactly 1..N, in order', { timeout: 60000 }, async () => {
    const { context, stats } = await demoContext(chrome.browser, gw, { token: () => mintToken({ sub: 'reload-user' }) });
    try {
      const page = await openDemo(context, gw, { panels: ['logs'] });
      const { ids, nav } = await burst(page, () => page.reload());
      await nav;
      await demoOpen(page);
      assert.deepEqual(await allShown(page), expected);
      assert.equal(await panelCount(page, 'logs'), N);
      const s = await demoState(page);
      assert.deepEqual(s.gaps, []);
      assert.equal(s.lastEventId, ids.at(-1));
      // the reloaded page resumed from a cursor of the burst (the one stored with the items it showed)
      assert.equal(stats.sseRequests.length, 2, stats.sseRequests.join(' '));
      assert.ok(ids.slice(MID - 2).includes(lastEventIdOf(stats.sseRequests[1])), `resumed from ${stats.sseRequests[1]}`);
      assert.deepEqual(page.errors, []);
    } finally {
      await context.close();
    }
  });

  it('a navigation mid-burst to another page of the origin with the same subscription: exactly 1..N there', { timeout: 60000 }, async () => {
    const { context, stats } = await demoContext(chrome.browser, gw, { token: () => mintToken({ sub: 'navigate-user' }) });
    try {
      const other = await secondPage(context, gw);
      const page = await openDemo(context, gw, { panels: ['logs', 'metrics'] });
      const { ids, nav } = await burst(page, () => page.goto(`${other}?panels=logs`));
      await nav;
      assert.equal(await page.title(), 'second page');
      await demoOpen(page);
      assert.deepEqual(await allShown(page), expected);
      const s = await demoState(page);
      assert.deepEqual(s.gaps, []);
      assert.equal(s.lastEventId, ids.at(-1));
      assert.ok(ids.slice(MID - 2).includes(lastEventIdOf(stats.sseRequests[1])), `resumed from ${stats.sseRequests[1]}`);
      // the previous page's other channel was carried over for a while, then released
      await waitFor(async () => {
        const c = await connectionsOf('navigate-user');
        return c.length === 1 && c[0].channels.join() === 'logs:demo:etl-1';
      }, 'the metrics channel nobody took over to be released', 20000);
    } finally {
      await context.close();
    }
  });

  it('two tabs: the follower reloaded, then the leader, both mid-burst: each shows exactly 1..N', { timeout: 90000 }, async () => {
    const sub = 'reload-tabs-user';
    const { context } = await demoContext(chrome.browser, gw, { token: () => mintToken({ sub }) });
    try {
      const a = await openDemo(context, gw, { panels: ['logs'] });
      const b = await openDemo(context, gw, { panels: ['logs'] });
      assert.equal((await demoState(a)).state.role, 'leader');
      await waitFor(async () => (await demoState(b)).state.status === 'open', 'the follower to follow', 10000);

      // the follower reloads mid-burst: the leader sends it what it missed
      let r = await burst(b, () => b.reload());
      await r.nav;
      await demoOpen(b);
      assert.deepEqual(await allShown(b), expected, 'the reloaded follower');
      assert.deepEqual(await allShown(a), expected, 'the leader');
      assert.equal((await demoState(b)).state.role, 'follower');
      assert.equal((await connectionsOf(sub)).length, 1);

      // a second burst; the leader reloads mid-way: the other tab takes over, the reloaded one catches up
      const second = Array.from({ length: N }, (_, i) => N + i + 1);
      const run2 = async (i) => pub.publish('logs:demo:etl-1', { level: 'info', message: `burst ${i}` }, 'log');
      const idsB = [];
      let nav = null;
      for (let i = 1; i <= N; i++) {
        if (i === MID) nav = a.reload();
        idsB.push(await run2(N + i));
        await sleep(25);
      }
      await nav;
      await demoOpen(a);
      const last = async (p) => (await burstShown(p)).slice(-N);
      for (const [p, name] of [[a, 'the reloaded leader'], [b, 'the new leader']]) {
        await waitFor(async () => (await burstShown(p)).at(-1) === 2 * N, `${name} to show the second burst`, 15000);
        await sleep(300);
        const shown = await burstShown(p);
        assert.deepEqual(await last(p), second, name);
        assert.equal(new Set(shown).size, shown.length, `${name}: no duplicate`);
        assert.deepEqual((await demoState(p)).gaps, [], `${name}: no gap`);
      }
      assert.equal((await demoState(b)).state.role, 'leader');
      assert.equal((await demoState(a)).state.role, 'follower');
      assert.equal((await demoState(a)).lastEventId, idsB.at(-1));
      assert.equal((await connectionsOf(sub)).length, 1);
    } finally {
      await context.close();
    }
  });
});

describe('token expiry', () => {
  it('refreshes the token through the provider and resumes without losing events', { timeout: 60000 }, async () => {
    const sub = 'expiry-user';
    // first token lives 6 s; the provider's next ones are long-lived
    const { context, stats } = await demoContext(chrome.browser, gw, {
      token: (n) => mintToken({ sub, ttl: n === 1 ? 6 : 600 }),
    });
    try {
      const page = await openDemo(context, gw, { panels: ['logs'] });
      const first = await demoState(page);
      const sent = [];
      let stop = false;
      const loop = (async () => {
        while (!stop) {
          sent.push(await pub.publish('logs:demo:etl-1', { level: 'info', message: `tick ${sent.length}` }, 'log'));
          await new Promise((r) => setTimeout(r, 150));
        }
      })();
      try {
        await waitFor(async () => (await demoState(page)).expired.length >= 1, 'the expired event', 15000);
        await waitFor(async () => {
          const s = await demoState(page);
          return s.state.status === 'open' && s.state.connectionId !== first.state.connectionId;
        }, 'the stream to reopen with a fresh token', 10000);
        const n = sent.length;
        await waitFor(() => sent.length >= n + 5, 'five more events after the refresh', 5000);
      } finally {
        stop = true;
        await loop;
      }
      await waitFor(async () => logIds(await demoState(page)).length >= sent.length, 'all events', 10000);
      const s = await demoState(page);
      assert.deepEqual(logIds(s), sent, 'nothing lost or repeated across the refresh');
      assert.ok(stats.tokenCalls >= 2, `token provider called ${stats.tokenCalls}x`);
      assert.ok(s.tokenFetches >= 2);
      assert.deepEqual(s.gaps, []);
      assert.equal(s.state.connects, 2);
      await page.locator('[data-kind=expired]').first().waitFor({ timeout: 2000 });
    } finally {
      await context.close();
    }
  });
});

describe('live revocation (Control service)', () => {
  it('Unsubscribe over gRPC: the page shows the channel denied with the reason, on the same connection', { timeout: 60000 }, async () => {
    const sub = `control-user-${randomBytes(4).toString('hex')}`;
    const { context } = await demoContext(chrome.browser, gw, { token: () => mintToken({ sub }) });
    const ctl = control(gw);
    try {
      const page = await openDemo(context, gw, { panels: ['logs', 'metrics'] });
      const before = await demoState(page);
      const reason = 'removed from workspace demo';
      assert.equal(await ctl.unsubscribe(sub, 'logs:demo:**', reason), 1);
      const denied = page.getByTestId('denied-logs');
      await denied.waitFor({ timeout: 10000 });
      assert.match(await denied.innerText(), new RegExp(reason));
      const s = await demoState(page);
      assert.ok(s.denied.some((d) => d.channel === 'logs:demo:etl-1' && d.reason === reason), JSON.stringify(s.denied));
      assert.ok(!s.state.channels.includes('logs:demo:etl-1'), JSON.stringify(s.state.channels));
      assert.ok(s.state.channels.includes('metrics:demo'));
      assert.equal(s.state.connectionId, before.state.connectionId, 'the same stream');
      assert.equal(s.state.connects, 1);
      const conns = await connectionsOf(sub);
      assert.deepEqual(conns.map((c) => c.channels), [['metrics:demo']]);
      assert.deepEqual(page.errors, []);
    } finally {
      ctl.close();
      await context.close();
    }
  });

  it('Disconnect over gRPC: the page shows revoked with the reason and does not reconnect with the same token', { timeout: 60000 }, async () => {
    const sub = `revoked-user-${randomBytes(4).toString('hex')}`;
    const token = mintToken({ sub });
    const { context, stats } = await demoContext(chrome.browser, gw, { token: () => token });
    const ctl = control(gw);
    try {
      const page = await openDemo(context, gw, { panels: ['logs'] });
      assert.equal(await ctl.disconnect(sub, 'signed out by an administrator'), 1);
      await waitFor(() => page.evaluate(() => document.querySelector('[data-testid=status]')?.dataset.status === 'revoked'), 'status revoked', 10000);
      await page.locator('[data-kind=revoked]').first().waitFor({ timeout: 5000 });
      assert.match(await page.locator('[data-kind=revoked]').first().innerText(), /signed out by an administrator/);
      const s = await demoState(page);
      assert.deepEqual(s.revoked, ['signed out by an administrator']);
      assert.equal(s.state.revoked.reason, 'signed out by an administrator');
      // The provider was asked again and gave the same token. The client decides in the same
      // task that receives the token, so a later look sees the decision: no new stream.
      await waitFor(async () => (await demoState(page)).tokensReceived >= 2, 'the token provider asked after revoked', 5000);
      const after = await demoState(page);
      assert.equal(after.state.status, 'revoked');
      assert.equal(stats.sseRequests.length, 1, `SSE requests: ${stats.sseRequests.join(' ')}`);
      assert.deepEqual(await connectionsOf(sub), []);
      assert.deepEqual(page.errors, []);
    } finally {
      ctl.close();
      await context.close();
    }
  });
});

describe('gateway restart (in-memory broker)', () => {
  it('the page receives gap and the app is told; a later reconnect reports no second gap', { timeout: 60000 }, async () => {
    const gw2 = await startGateway();
    let pub2 = publisher(gw2);
    const { context } = await demoContext(chrome.browser, gw2);
    try {
      const page = await openDemo(context, gw2, { panels: ['logs', 'metrics'] });
      const ids = [];
      for (let i = 0; i < 3; i++) ids.push(await pub2.publish('logs:demo:etl-1', { level: 'info', message: `pre ${i}` }, 'log'));
      await waitFor(async () => logIds(await demoState(page)).length === 3, 'events before the restart', 10000);
      pub2.close();
      await gw2.restart();
      pub2 = publisher(gw2);
      await waitFor(async () => (await demoState(page)).gaps.length >= 1, 'a gap after the restart', 20000);
      const s = await demoState(page);
      assert.ok(s.gaps[0].channels.includes('logs:demo:etl-1'), JSON.stringify(s.gaps));
      await page.locator('[data-kind=gap]').first().waitFor({ timeout: 5000 });
      assert.match(await page.locator('[data-testid=panel-logs]').innerText(), /gap at/);
      await waitFor(async () => (await demoState(page)).state.status === 'open', 'open again', 10000);
      // the client adopted the new log's head from ready.cursor (not its foreign pre-restart cursor) …
      const after = await demoState(page);
      const epoch = (c) => String(c).split('-')[0];
      assert.ok(after.lastEventId && epoch(after.lastEventId) !== epoch(ids[2]), `${after.lastEventId} vs ${ids[2]}`);
      // … so a reconnect before any new event resumes from it and reports no second gap
      await page.evaluate(() => window.__sseDemo.client.reconnect());
      await waitFor(async () => {
        const st = (await demoState(page)).state;
        return st.connects > after.state.connects && st.status === 'open';
      }, 'reconnected', 10000);
      await new Promise((r) => setTimeout(r, 500));
      assert.equal((await demoState(page)).gaps.length, after.gaps.length, 'no second gap after a reconnect');
      const id = await pub2.publish('logs:demo:etl-1', { level: 'info', message: 'post restart' }, 'log');
      await waitFor(async () => logIds(await demoState(page)).includes(id), 'live events after the restart', 10000);
    } finally {
      pub2.close();
      await context.close();
      await gw2.stop();
    }
  });
});

describe('gateway restart (Redis broker)', () => {
  it('gateway restarted on the Redis broker: the page resumes with nothing missing (cursor replay)', { timeout: 60000 }, async () => {
    assert.match(await redisCommand('PING'), /PONG/, 'Redis must answer at 127.0.0.1:6379 (web/test.sh starts it)');
    // node A serves the page; node B (same Redis log, PKI and JWT secret) takes the publishes while A is down
    const broker = { kind: 'redis', keyPrefix: `e2e-${randomBytes(6).toString('hex')}` };
    const [gwA, gwB] = await Promise.all([startGateway({ broker }), startGateway({ broker })]);
    const pubB = publisher(gwB);
    let pubA = null;
    const sub = 'redis-restart-user';
    const { context, stats } = await demoContext(chrome.browser, gwA, { token: () => mintToken({ sub }) });
    try {
      const page = await openDemo(context, gwA, { panels: ['logs'] });
      const pre = [];
      for (let i = 0; i < 3; i++) pre.push(await pubB.publish('logs:demo:etl-1', { level: 'info', message: `pre ${i}` }, 'log'));
      await waitFor(async () => logIds(await demoState(page)).length === pre.length, 'events published on node B to reach the page on node A', 10000);
      const before = await demoState(page);
      assert.deepEqual(logIds(before), pre);
      assert.equal(before.lastEventId, pre.at(-1));

      const http = gwA.http;
      const exit = await gwA.halt('SIGTERM');
      assert.equal(exit?.code, 0, `graceful exit on SIGTERM (${JSON.stringify(exit)}): ${gwA.logs().slice(-1000)}`);
      await waitFor(async () => (await demoState(page)).state.status !== 'open', 'the page to see its stream end', 10000);
      const down = [];
      for (let i = 0; i < 20; i++) down.push(await pubB.publish('logs:demo:etl-1', { level: 'info', message: `while down ${i}` }, 'log'));
      assert.equal(logIds(await demoState(page)).length, pre.length, 'nothing can arrive while node A is down');

      await gwA.resume(); // same HTTP port: the page's EventSource URL stays valid
      assert.equal(gwA.http, http);
      await waitFor(async () => {
        const s = await demoState(page);
        return s.state.status === 'open' && logIds(s).length >= pre.length + down.length;
      }, 'the page to reconnect to the restarted node and replay the missed events', 20000);
      const s = await demoState(page);
      assert.deepEqual(logIds(s), [...pre, ...down], 'every event published while down, once each, in order');
      assert.deepEqual(s.gaps, [], 'no gap: the cursor belongs to the shared Redis log');
      assert.equal(s.lastEventId, down.at(-1));
      const resumed = stats.sseRequests.slice(1);
      assert.ok(resumed.length >= 1, 'a new SSE request after the restart');
      for (const url of resumed) assert.equal(new URL(url).searchParams.get('last_event_id'), pre.at(-1), `resumed from the last cursor: ${url}`);
      await page.locator('[data-kind=gap]').waitFor({ state: 'detached', timeout: 1000 });

      // and live again on the restarted node, whichever node publishes
      pubA = publisher(gwA);
      const live = [await pubA.publish('logs:demo:etl-1', { level: 'info', message: 'live via A' }, 'log')];
      live.push(await pubB.publish('logs:demo:etl-1', { level: 'info', message: 'live via B' }, 'log'));
      await waitFor(async () => logIds(await demoState(page)).length === pre.length + down.length + live.length, 'live events after the restart', 10000);
      assert.deepEqual(logIds(await demoState(page)), [...pre, ...down, ...live]);
      assert.deepEqual(page.errors, []);
    } finally {
      pubA?.close();
      pubB.close();
      await context.close();
      await Promise.all([gwA.stop(), gwB.stop()]);
      await redisCommand('DEL', `${broker.keyPrefix}:log`).catch(() => {});
    }
  });
});

describe('admin dashboard', () => {
  it('admin dashboard: an admin token signs in; it shows the live connection count and the open stream\'s channel', { timeout: 60000 }, async () => {
    const sub = 'admin-dash-user';
    const sub2 = 'admin-dash-user-2';
    const demo = await demoContext(chrome.browser, gw, { token: () => mintToken({ sub }) });
    const demo2 = await demoContext(chrome.browser, gw, { token: () => mintToken({ sub: sub2 }) });
    const adminCtx = await chrome.browser.newContext({ viewport: { width: 1280, height: 900 } });
    try {
      await openDemo(demo.context, gw, { panels: ['workflow'] });
      const admin = await adminCtx.newPage();
      const errors = [];
      admin.on('pageerror', (e) => errors.push(e.message));

      // without the cookie: the sign-in form
      const first = await admin.goto(`${gw.base}/admin`);
      assert.equal(first.status(), 401);
      // sign in from the page: POST /admin/session with the admin token sets the HttpOnly cookie
      const status = await admin.evaluate(async (token) => {
        const r = await fetch('/admin/session', { method: 'POST', headers: { Authorization: `Bearer ${token}` } });
        return r.status;
      }, adminToken());
      assert.equal(status, 204);
      const cookies = await adminCtx.cookies(gw.base + '/admin');
      assert.ok(cookies.some((c) => c.name === 'sse_admin_token' && c.httpOnly), JSON.stringify(cookies.map((c) => c.name)));
      const res = await admin.goto(`${gw.base}/admin`);
      assert.equal(res.status(), 200);

      const text = (id) => admin.locator(`#${id}`).innerText();
      const shows = async (expectSubs) => {
        const conns = (await adminConnections(gw)).length;
        const table = await text('ctab');
        return (await text('conns')) === String(conns) && expectSubs.every((u) => table.includes(u)) ? { conns, table } : null;
      };
      const one = await waitFor(() => shows([sub]), 'the dashboard to show the live count and the open stream', 10000);
      assert.match(one.table, new RegExp(`${sub}\\s+workflow:demo:wf-1`), one.table);
      await waitFor(async () => (await text('htab')).includes('workflow:demo:wf-1'), 'the channels table to list the stream\'s channel', 5000);

      // live: a second stream (another user, another connection) shows up without reloading
      await openDemo(demo2.context, gw, { panels: ['logs', 'metrics'] });
      const two = await waitFor(() => shows([sub, sub2]), 'the dashboard to show the second connection', 10000);
      assert.equal(two.conns, one.conns + 1);
      const row2 = two.table.split('\n').find((l) => l.includes(sub2));
      assert.ok(row2.includes('logs:demo:etl-1') && row2.includes('metrics:demo'), row2);
      // and drops it when that browser goes away
      await demo2.context.close();
      await waitFor(async () => !(await text('ctab')).includes(sub2) && (await text('conns')) === String(one.conns), 'the closed connection to leave the dashboard', 10000);
      assert.equal(await text('err'), '');
      assert.deepEqual(errors, []);
    } finally {
      await adminCtx.close();
      await demo2.context.close().catch(() => {});
      await demo.context.close();
    }
  });
});

describe('demo mode', () => {
  it('serves the demo page live (simulated services) — screenshot to artifacts/demo.png', { timeout: 60000 }, async (t) => {
    const gw3 = await startGateway({ mode: 'demo' });
    try {
      const served = await fetch(`${gw3.base}/demo/demo.js`).then((r) => (r.ok ? r.text() : ''));
      const real = served === readFileSync(join(DEMO_DIST, 'demo.js'), 'utf8');
      if (!real) t.diagnostic('the gateway binary embeds an older web/demo-dist (rebuild it); testing the files on disk instead');
      if (real) {
        const tok = await fetch(`${gw3.base}/demo/token`).then((r) => r.json());
        assert.equal(typeof tok.token, 'string');
      }
      const { context } = await demoContext(chrome.browser, gw3, { real });
      try {
        const page = await openDemo(context, gw3);
        for (const id of ['logs', 'workflow', 'metrics', 'dashboard']) {
          await waitFor(async () => (await panelCount(page, id)) >= 1, `${id} panel to get live data`, 15000);
        }
        await page.getByTestId('toggle-restricted').check();
        await page.getByTestId('denied-restricted').waitFor({ timeout: 10000 });
        await waitFor(async () => (await panelCount(page, 'metrics')) >= 8, 'a few metric samples', 15000);
        const s = await demoState(page);
        assert.equal(s.state.connects, 1);
        assert.equal((await adminConnections(gw3)).length, 1);
        const file = join(artifactsDir(), 'demo.png');
        await page.screenshot({ path: file, fullPage: true });
        t.diagnostic(`screenshot: ${file}`);
        assert.deepEqual(page.errors, []);
      } finally {
        await context.close();
      }
    } finally {
      await gw3.stop();
    }
  });
});

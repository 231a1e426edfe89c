import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { SSEClient } from '../src/client.js';
import { latest } from '../src/latest.js';
import type { GapInfo, SSEClientOptions, SSEMessage } from '../src/types.js';
import { baseOptions, FakeBroadcastChannel, FakeEventSource, FakeGateway, FakeLocks, MemoryStorage } from './fakes.js';

let gw: FakeGateway;
const clients: SSEClient[] = [];

/** One page load in a tab: `storage` is the tab's sessionStorage (it outlives the page). */
class Page {
  readonly events = new EventTarget();
  readonly client: SSEClient;
  constructor(
    readonly storage: MemoryStorage,
    extra: Partial<SSEClientOptions> = {},
  ) {
    this.client = new SSEClient(baseOptions(gw, { storage, pageEvents: this.events, ...extra }));
    clients.push(this.client);
  }
  /** A reload or a navigation away: `pagehide`, then the page is gone. */
  leave(): void {
    this.events.dispatchEvent(new Event('pagehide'));
    this.client.close();
  }
}

async function until(cond: () => boolean, what = 'condition', maxMs = 60000): Promise<void> {
  for (let t = 0; t <= maxMs; t += 10) {
    if (cond()) return;
    await vi.advanceTimersByTimeAsync(10);
  }
  throw new Error(`timed out waiting for ${what}`);
}

async function nextStream(n: number): Promise<FakeEventSource> {
  await until(() => FakeEventSource.instances.length === n && !FakeEventSource.latest().closed, `EventSource #${n}`);
  return FakeEventSource.latest();
}

const ids = (ms: SSEMessage[]) => ms.map((m) => m.id);
const LOGS = 'logs:demo:etl-1';
const METRICS = 'metrics:demo';

beforeEach(() => {
  vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'setInterval', 'clearInterval', 'Date'] });
  FakeEventSource.reset();
  gw = new FakeGateway();
});
afterEach(() => {
  for (const c of clients.splice(0)) c.close();
  vi.useRealTimers();
});

describe('persist: one tab, reload / navigation', () => {
  it('a reload mid-burst resumes from the stored cursor: the items are exactly 1..N, once each', async () => {
    const storage = new MemoryStorage();
    const p1 = new Page(storage);
    const got1: string[] = [];
    p1.client.subscribe(LOGS, (m) => got1.push(m.id), { keep: 100 });
    const es = await nextStream(1);
    gw.accept(es, 'conn-1', 'c-0');
    for (let i = 1; i <= 5; i++) es.message(LOGS, `c-${i}`, { seq: i });
    p1.leave(); // reload: c-6.. are published while no page is there

    const p2 = new Page(storage);
    // the previous page's items are there before anything connects
    expect(ids(p2.client.history(LOGS))).toEqual(['c-1', 'c-2', 'c-3', 'c-4', 'c-5']);
    const got2: string[] = [];
    p2.client.subscribe(LOGS, (m) => got2.push(m.id), { keep: 100 });
    const es2 = await nextStream(2);
    expect(es2.lastEventIdParam).toBe('c-5');
    expect(es2.channels).toEqual([LOGS]);
    expect(p2.client.getState().status).toBe('connecting'); // a new page's first connection
    gw.accept(es2, 'conn-2', 'c-5');
    es2.message(LOGS, 'c-5', { seq: 5 }); // a replay of something the page already has: dropped
    for (let i = 6; i <= 8; i++) es2.message(LOGS, `c-${i}`, { seq: i });
    expect(got2).toEqual(['c-6', 'c-7', 'c-8']);
    expect(ids(p2.client.history(LOGS))).toEqual(['c-1', 'c-2', 'c-3', 'c-4', 'c-5', 'c-6', 'c-7', 'c-8']);
    expect(p2.client.getLastEventId()).toBe('c-8');
  });

  it('every stored value is consistent: its items end exactly at its cursor (writes throttled, a page killed without pagehide loses nothing)', async () => {
    const storage = new MemoryStorage();
    const written: { cursor: string | null; last: string | undefined }[] = [];
    const set = storage.setItem.bind(storage);
    storage.setItem = (k, v) => {
      const s = JSON.parse(v);
      const items = (s.items[LOGS] ?? []) as [number, SSEMessage][];
      written.push({ cursor: s.cursor, last: items.at(-1)?.[1].id });
      set(k, v);
    };
    const p1 = new Page(storage);
    p1.client.subscribe(LOGS, () => {}, { keep: 100 });
    const es = await nextStream(1);
    gw.accept(es, 'conn-1', 'c-0');
    for (let i = 1; i <= 30; i++) {
      es.message(LOGS, `c-${i}`);
      if (i % 7 === 0) await vi.advanceTimersByTimeAsync(250);
    }
    // throttled: a burst costs a few writes, not one per event
    expect(written.length).toBeGreaterThan(0);
    expect(written.length).toBeLessThan(10);
    for (const w of written.filter((x) => x.last !== undefined)) expect(w.last).toBe(w.cursor);
    const lastWritten = written.at(-1)!;
    expect(lastWritten.cursor).not.toBe('c-30'); // the last ones are not stored yet…

    // …and the page is killed without pagehide: the next page resumes from the older stored cursor
    es.close();
    const p2 = new Page(storage);
    const got: string[] = [];
    p2.client.subscribe(LOGS, (m) => got.push(m.id), { keep: 100 });
    const es2 = await nextStream(2);
    expect(es2.lastEventIdParam).toBe(lastWritten.cursor);
    gw.accept(es2, 'conn-2', lastWritten.cursor);
    const from = Number(lastWritten.cursor!.slice(2));
    for (let i = from + 1; i <= 32; i++) es2.message(LOGS, `c-${i}`);
    expect(ids(p2.client.history(LOGS))).toEqual(Array.from({ length: 32 }, (_, i) => `c-${i + 1}`));
    expect(got[0]).toBe(`c-${from + 1}`);
  });

  it('items are bounded by keep and by the byte budget (oldest first); persist "none" stores nothing', async () => {
    const storage = new MemoryStorage();
    const p1 = new Page(storage, { persistMaxBytes: 2000 });
    p1.client.subscribe(LOGS, () => {}, { keep: 50 });
    const es = await nextStream(1);
    gw.accept(es, 'conn-1', 'c-0');
    for (let i = 1; i <= 80; i++) es.message(LOGS, `c-${i}`, { text: 'x'.repeat(40) });
    expect(p1.client.history(LOGS)).toHaveLength(50);
    p1.leave();
    const raw = [...storage.data.values()][0]!;
    expect(raw.length).toBeLessThanOrEqual(2300);
    const p2 = new Page(storage);
    const kept = ids(p2.client.history(LOGS));
    expect(kept.length).toBeGreaterThan(5);
    expect(kept.length).toBeLessThan(50);
    expect(kept.at(-1)).toBe('c-80'); // a suffix: the newest, up to the cursor
    expect(kept).toEqual(Array.from({ length: kept.length }, (_, i) => `c-${80 - kept.length + 1 + i}`));

    const none = new MemoryStorage();
    const p3 = new Page(none, { persist: 'none' });
    p3.client.subscribe(METRICS, () => {}, { keep: 5 });
    const es3 = await nextStream(2);
    gw.accept(es3, 'conn-3', 'c-80');
    es3.message(METRICS, 'c-81');
    p3.leave();
    expect(none.data.size).toBe(0);
  });

  it('a navigation to another page keeps the previous page\'s channels on the connection for a while, so a late component loses nothing', async () => {
    const storage = new MemoryStorage();
    const p1 = new Page(storage, { lingerMs: 4000 });
    p1.client.subscribe(LOGS, () => {}, { keep: 10 });
    p1.client.subscribe(METRICS, () => {}, { keep: 10 });
    const es = await nextStream(1);
    gw.accept(es, 'conn-1', 'c-0');
    es.message(LOGS, 'c-1');
    es.message(METRICS, 'c-2');
    p1.leave();

    // the next page mounts the logs panel at once and the metrics panel later
    const p2 = new Page(storage, { lingerMs: 4000 });
    p2.client.subscribe(LOGS, () => {}, { keep: 10 });
    const es2 = await nextStream(2);
    expect(es2.channels).toEqual([LOGS, METRICS]); // metrics still resumes from the cursor
    gw.accept(es2, 'conn-2', 'c-2');
    es2.message(METRICS, 'c-3');
    await vi.advanceTimersByTimeAsync(1000);
    const late: string[] = [];
    p2.client.subscribe(METRICS, (m) => late.push(m.id), { keep: 10 });
    expect(ids(p2.client.history(METRICS))).toEqual(['c-2', 'c-3']);
    es2.message(METRICS, 'c-4');
    expect(late).toEqual(['c-4']);
    expect(ids(p2.client.history(METRICS))).toEqual(['c-2', 'c-3', 'c-4']);

    // a channel nobody takes over is released after lingerMs, and its items are dropped
    const p3Storage = new MemoryStorage();
    const p3 = new Page(p3Storage, { lingerMs: 4000 });
    p3.client.subscribe('dashboards:main', () => {}, { keep: 3 });
    const es3 = await nextStream(3);
    gw.accept(es3, 'conn-3', 'c-4');
    es3.message('dashboards:main', 'c-5');
    p3.leave();
    const p4 = new Page(p3Storage, { lingerMs: 4000 });
    p4.client.subscribe(LOGS, () => {}, { keep: 3 });
    const es4 = await nextStream(4);
    expect(es4.channels).toEqual(['dashboards:main', LOGS]);
    gw.accept(es4, 'conn-4', 'c-5');
    await until(() => gw.callsTo('/api/sse/subscriptions').length === 1, 'the lingering channel released');
    expect(gw.callsTo('/api/sse/subscriptions')[0]!.body).toMatchObject({ add: [], remove: ['dashboards:main'] });
    expect(p4.client.history('dashboards:main')).toEqual([]);
  });

  it('what the page stored at pagehide is what the next page gets (an app unmounting on unload changes nothing)', async () => {
    const storage = new MemoryStorage();
    const p1 = new Page(storage);
    const off = p1.client.subscribe(LOGS, () => {}, { keep: 10 });
    const es = await nextStream(1);
    gw.accept(es, 'conn-1', 'c-0');
    es.message(LOGS, 'c-1');
    p1.events.dispatchEvent(new Event('pagehide'));
    off(); // the app tears its components down while the page unloads
    await vi.advanceTimersByTimeAsync(500);
    p1.client.close();
    const p2 = new Page(storage);
    expect(ids(p2.client.history(LOGS))).toEqual(['c-1']);
  });

  it('a stored state of another user is dropped once the token says who this is', async () => {
    const storage = new MemoryStorage();
    const token = (sub: string) => `h.${Buffer.from(JSON.stringify({ sub, exp: 4102444800 })).toString('base64url')}.s`;
    const p1 = new Page(storage, { getToken: () => token('alice') });
    p1.client.subscribe(LOGS, () => {}, { keep: 10 });
    const es = await nextStream(1);
    gw.accept(es, 'conn-1', 'c-0');
    es.message(LOGS, 'c-1', { secret: 'alice' });
    p1.leave();

    const p2 = new Page(storage, { getToken: () => token('bob') });
    const resets: number[] = [];
    p2.client.on('reset', (r) => resets.push(r.at));
    p2.client.subscribe(LOGS, () => {}, { keep: 10 });
    const es2 = await nextStream(2);
    expect(es2.lastEventIdParam).toBeNull();
    expect(p2.client.history(LOGS)).toEqual([]);
    expect(resets).toHaveLength(1);
    // and the same user again keeps it
    gw.accept(es2, 'conn-2', 'c-1');
    es2.message(LOGS, 'c-2');
    p2.leave();
    const p3 = new Page(storage, { getToken: () => token('bob') });
    p3.client.subscribe(LOGS, () => {}, { keep: 10 });
    const es3 = await nextStream(3);
    expect(es3.lastEventIdParam).toBe('c-2');
    expect(ids(p3.client.history(LOGS))).toEqual(['c-2']);
  });
});

describe('persist: several tabs (the leader sends a tab that comes back what it missed)', () => {
  const tabOptions = (locks: FakeLocks, extra: Partial<SSEClientOptions> = {}): Partial<SSEClientOptions> => ({
    BroadcastChannel: FakeBroadcastChannel,
    locks,
    shareKey: 'k',
    tabHeartbeatMs: 1000,
    lingerMs: 5000,
    ...extra,
  });

  it('a follower reloaded mid-burst gets exactly the events it missed, in order, without the leader dropping its channel', async () => {
    const locks = new FakeLocks();
    const leader = new Page(new MemoryStorage(), tabOptions(locks));
    leader.client.subscribe(LOGS, () => {}, { keep: 10 });
    const es = await nextStream(1);
    gw.accept(es, 'conn-1', 'c-0');
    const s2 = new MemoryStorage();
    const f1 = new Page(s2, tabOptions(locks));
    f1.client.subscribe(METRICS, () => {}, { keep: 100 });
    await until(() => leader.client.getState().channels.includes(METRICS), 'the follower\'s channel on the connection');
    await until(() => f1.client.getState().status === 'open', 'follower synced');
    for (let i = 1; i <= 3; i++) es.message(METRICS, `c-${i}`);
    await until(() => f1.client.history(METRICS).length === 3, 'follower got 3');

    f1.leave();
    await vi.advanceTimersByTimeAsync(0);
    es.message(METRICS, 'c-4'); // while the tab reloads
    es.message(LOGS, 'c-5');
    es.message(METRICS, 'c-6');

    const f2 = new Page(s2, tabOptions(locks));
    expect(ids(f2.client.history(METRICS))).toEqual(['c-1', 'c-2', 'c-3']);
    const got: string[] = [];
    const gaps: GapInfo[] = [];
    f2.client.on('gap', (g) => gaps.push(g));
    f2.client.subscribe(METRICS, (m) => got.push(m.id), { keep: 100 });
    es.message(METRICS, 'c-7'); // relayed while the new page is starting
    await until(() => got.length >= 3, 'the missed events and the one relayed meanwhile');
    es.message(METRICS, 'c-8');
    await until(() => got.length >= 4, 'live');
    expect(got).toEqual(['c-4', 'c-6', 'c-7', 'c-8']);
    expect(ids(f2.client.history(METRICS))).toEqual(['c-1', 'c-2', 'c-3', 'c-4', 'c-6', 'c-7', 'c-8']);
    expect(f2.client.getLastEventId()).toBe('c-8');
    expect(gaps).toEqual([]);
    expect(FakeEventSource.instances).toHaveLength(1);
    // the leader never let go of the channel
    expect(gw.callsTo('/api/sse/subscriptions').filter((c) => (c.body as { remove: string[] }).remove.includes(METRICS))).toEqual([]);
    expect(leader.client.getState().tabs).toBe(2);
  });

  it('the leader reloaded: another tab takes over with its channels, and the reloaded page catches up from it', async () => {
    const locks = new FakeLocks();
    const s1 = new MemoryStorage();
    const l1 = new Page(s1, tabOptions(locks));
    l1.client.subscribe(LOGS, () => {}, { keep: 100 });
    const es = await nextStream(1);
    gw.accept(es, 'conn-1', 'c-0');
    const other = new Page(new MemoryStorage(), tabOptions(locks));
    other.client.subscribe(METRICS, () => {}, { keep: 100 });
    await until(() => other.client.getState().status === 'open', 'follower synced');
    es.message(LOGS, 'c-1');
    es.message(METRICS, 'c-2');
    es.message(LOGS, 'c-3');
    await vi.advanceTimersByTimeAsync(0);

    l1.leave();
    const es2 = await nextStream(2);
    expect(other.client.getState().role).toBe('leader');
    expect(es2.lastEventIdParam).toBe('c-3');
    expect(es2.channels).toEqual([LOGS, METRICS]); // the reloading page's channel lingers
    gw.accept(es2, 'conn-2', 'c-3');
    es2.message(LOGS, 'c-4'); // published during the takeover: replayed

    const l2 = new Page(s1, tabOptions(locks));
    const got: string[] = [];
    const gaps: GapInfo[] = [];
    l2.client.on('gap', (g) => gaps.push(g));
    l2.client.subscribe(LOGS, (m) => got.push(m.id), { keep: 100 });
    await until(() => got.length >= 1, 'caught up');
    es2.message(LOGS, 'c-5');
    await until(() => got.length >= 2, 'live');
    expect(got).toEqual(['c-4', 'c-5']);
    expect(ids(l2.client.history(LOGS))).toEqual(['c-1', 'c-3', 'c-4', 'c-5']);
    expect(l2.client.getState().role).toBe('follower');
    expect(gaps).toEqual([]);
  });

  it('the leader reloaded and back before the new leader\'s stream is open: it waits for it, no gap', async () => {
    const locks = new FakeLocks();
    const s1 = new MemoryStorage();
    const l1 = new Page(s1, tabOptions(locks));
    l1.client.subscribe(LOGS, () => {}, { keep: 100 });
    const es = await nextStream(1);
    gw.accept(es, 'conn-1', 'c-0');
    const other = new Page(new MemoryStorage(), tabOptions(locks));
    other.client.subscribe(LOGS, () => {}, { keep: 100 });
    await until(() => other.client.getState().status === 'open', 'follower synced');
    es.message(LOGS, 'c-1');
    es.message(LOGS, 'c-2');
    await vi.advanceTimersByTimeAsync(0);

    l1.leave();
    const l2 = new Page(s1, tabOptions(locks));
    const got: string[] = [];
    const gaps: GapInfo[] = [];
    l2.client.on('gap', (g) => gaps.push(g));
    l2.client.subscribe(LOGS, (m) => got.push(m.id), { keep: 100 });
    const es2 = await nextStream(2); // the new leader's stream: not open yet when the reloaded page asks
    await vi.advanceTimersByTimeAsync(500);
    gw.accept(es2, 'conn-2', 'c-2');
    es2.message(LOGS, 'c-3');
    await until(() => got.length >= 1, 'caught up');
    expect(got).toEqual(['c-3']);
    expect(ids(l2.client.history(LOGS))).toEqual(['c-1', 'c-2', 'c-3']);
    expect(gaps).toEqual([]);
  });

  it('the reloaded page is ahead of the new leader (relays lost in the takeover): the leader waits for its replay', async () => {
    const locks = new FakeLocks();
    const s1 = new MemoryStorage();
    const l1 = new Page(s1, tabOptions(locks));
    l1.client.subscribe(LOGS, () => {}, { keep: 100 });
    const es = await nextStream(1);
    gw.accept(es, 'conn-1', 'c-0');
    const other = new Page(new MemoryStorage(), tabOptions(locks));
    other.client.subscribe(LOGS, () => {}, { keep: 100 });
    await until(() => other.client.getState().status === 'open', 'follower synced');
    es.message(LOGS, 'c-1');
    await vi.advanceTimersByTimeAsync(0);
    // c-2 reaches the leader, but its relay never reaches the other tab
    const tabs = (l1.client as unknown as { tabs: { relay: (r: unknown) => void } }).tabs;
    const relay = tabs.relay;
    tabs.relay = () => {};
    es.message(LOGS, 'c-2');
    tabs.relay = relay;

    l1.leave();
    const es2 = await nextStream(2);
    expect(es2.lastEventIdParam).toBe('c-1');
    const l2 = new Page(s1, tabOptions(locks));
    const got: string[] = [];
    const gaps: GapInfo[] = [];
    l2.client.on('gap', (g) => gaps.push(g));
    l2.client.subscribe(LOGS, (m) => got.push(m.id), { keep: 100 });
    gw.accept(es2, 'conn-2', 'c-1');
    await vi.advanceTimersByTimeAsync(300);
    es2.message(LOGS, 'c-2'); // the replay after c-1
    es2.message(LOGS, 'c-3');
    await until(() => got.length >= 1, 'caught up');
    expect(got).toEqual(['c-3']);
    expect(ids(l2.client.history(LOGS))).toEqual(['c-1', 'c-2', 'c-3']);
    expect(ids(other.client.history(LOGS))).toEqual(['c-1', 'c-2', 'c-3']);
    expect(gaps).toEqual([]);
  });

  it('a tab that comes back after its channel was released is told about the gap (never a silent one)', async () => {
    const locks = new FakeLocks();
    const leader = new Page(new MemoryStorage(), tabOptions(locks, { lingerMs: 2000 }));
    leader.client.subscribe(LOGS, () => {}, { keep: 10 });
    const es = await nextStream(1);
    gw.accept(es, 'conn-1', 'c-0');
    const s2 = new MemoryStorage();
    const f1 = new Page(s2, tabOptions(locks, { lingerMs: 2000 }));
    f1.client.subscribe(METRICS, () => {}, { keep: 10 });
    await until(() => leader.client.getState().channels.includes(METRICS), 'added');
    es.message(METRICS, 'c-1');
    await until(() => f1.client.history(METRICS).length === 1, 'follower got it');
    f1.leave();
    await until(() => !leader.client.getState().channels.includes(METRICS), 'released after lingerMs');
    // c-2 on metrics is published now: nobody receives it

    const f2 = new Page(s2, tabOptions(locks, { lingerMs: 2000 }));
    const gaps: GapInfo[] = [];
    f2.client.subscribe(METRICS, () => {}, { keep: 10, onGap: (g) => gaps.push(g) });
    await until(() => gaps.length === 1, 'a gap for the channel');
    expect(gaps[0]!.channels).toEqual([METRICS]);
    await until(() => leader.client.getState().channels.includes(METRICS), 're-added');
    es.message(METRICS, 'c-3');
    await until(() => f2.client.history(METRICS).length === 2, 'live again');
    expect(ids(f2.client.history(METRICS))).toEqual(['c-1', 'c-3']);
  });

  it('a duplicated tab (a copy of a live tab\'s stored state) does not take the live tab\'s place', async () => {
    const locks = new FakeLocks();
    const leader = new Page(new MemoryStorage(), tabOptions(locks));
    leader.client.subscribe(LOGS, () => {}, { keep: 10 });
    const es = await nextStream(1);
    gw.accept(es, 'conn-1', 'c-0');
    const s2 = new MemoryStorage();
    const original = new Page(s2, tabOptions(locks));
    const got: string[] = [];
    original.client.subscribe(METRICS, (m) => got.push(m.id), { keep: 10 });
    await until(() => leader.client.getState().channels.includes(METRICS), 'added');
    es.message(METRICS, 'c-1');
    await until(() => got.length === 1, 'delivered');
    await vi.advanceTimersByTimeAsync(300); // stored

    const copy = new MemoryStorage();
    for (const [k, v] of s2.data) copy.data.set(k, v);
    const dup = new Page(copy, tabOptions(locks));
    dup.client.subscribe(LOGS, () => {}, { keep: 10 });
    await until(() => dup.client.getState().status === 'open', 'the duplicate follows');
    await vi.advanceTimersByTimeAsync(6000); // past its lingering
    // the original's channel was never let go (not even until its next heartbeat)
    const removed = gw.callsTo('/api/sse/subscriptions').filter((c) => (c.body as { remove: string[] }).remove.includes(METRICS));
    expect(removed).toEqual([]);
    expect(leader.client.getState().channels).toContain(METRICS);
    es.message(METRICS, 'c-2');
    await until(() => got.length === 2, 'the original tab still gets its channel');
    expect(leader.client.getState().tabs).toBe(3);
  });

  it('a follower whose leader never answers the catch-up reports a gap and goes on', async () => {
    const locks = new FakeLocks();
    const s2 = new MemoryStorage();
    s2.setItem(
      'k#state',
      JSON.stringify({ v: 1, cursor: 'c-1', sub: null, tab: 'old', channels: [METRICS], items: { [METRICS]: [[1, { channel: METRICS, event: 'message', id: 'c-1', ts: 1, payload: {} }]] } }),
    );
    // a leader of an older client version: it holds the lock and relays, but knows nothing of catch-up
    let release!: () => void;
    void locks.request('k', {}, () => new Promise<void>((r) => (release = r)));
    const bc = new FakeBroadcastChannel('k');
    const f = new Page(s2, tabOptions(locks));
    const gaps: GapInfo[] = [];
    const got: string[] = [];
    f.client.subscribe(METRICS, (m) => got.push(m.id), { keep: 10, onGap: (g) => gaps.push(g) });
    await vi.advanceTimersByTimeAsync(100);
    bc.postMessage({ t: 'relay', from: 'old-leader', r: { k: 'msg', m: { channel: METRICS, event: 'message', id: 'c-9', ts: 1, payload: {} } } });
    await vi.advanceTimersByTimeAsync(100);
    expect(got).toEqual([]); // held until the catch-up is settled
    await until(() => gaps.length === 1, 'a gap after the timeout', 10000);
    expect(gaps[0]!.channels).toEqual([METRICS]);
    expect(got).toEqual(['c-9']);
    bc.close();
    release();
  });
});

describe('snapshot messages (the channel\'s latest event, no cursor)', () => {
  function snapshot(es: FakeEventSource, channel: string, payload: unknown, id = ''): void {
    // no `id:` line: the EventSource's lastEventId stays the previous event's
    const prev = es.params.get('last_event_id') ?? '';
    es.emit('message', { channel, event: 'message', ...(id ? { id } : {}), ts: 1, payload, snapshot: true }, prev);
  }

  it('never moves the cursor, is delivered flagged, and comes first', async () => {
    const c = new SSEClient(baseOptions(gw));
    clients.push(c);
    const got: SSEMessage[] = [];
    c.subscribe(METRICS, (m) => got.push(m));
    const es = await nextStream(1);
    gw.accept(es, 'conn-1', 'h-5');
    snapshot(es, METRICS, { cpu: 7 }, 'h-3');
    expect(got).toHaveLength(1);
    expect(got[0]).toMatchObject({ channel: METRICS, snapshot: true, payload: { cpu: 7 } });
    expect(c.getLastEventId()).toBe('h-5');
    // after an event, a snapshot (e.g. for a channel added live) still does not move it
    es.message(METRICS, 'h-6', { cpu: 8 });
    expect(c.getLastEventId()).toBe('h-6');
    es.emit('message', { channel: 'dashboards:main', event: 'update', ts: 1, payload: { v: 1 }, snapshot: true }, 'h-6');
    expect(c.getLastEventId()).toBe('h-6');
    es.fail();
    const es2 = await nextStream(2);
    expect(es2.lastEventIdParam).toBe('h-6');
    expect(got.map((m) => [m.id, !!m.snapshot])).toEqual([
      ['h-3', true],
      ['h-6', false],
    ]);
  });

  it('latest(): the snapshot, then newer events; and the value shown before a reload', async () => {
    const storage = new MemoryStorage();
    const p1 = new Page(storage);
    const l = latest<{ cpu: number }>(p1.client, METRICS);
    const seen: (number | undefined)[] = [];
    l.onChange((m) => seen.push(m?.payload.cpu));
    expect(l.get()).toBeUndefined();
    const es = await nextStream(1);
    gw.accept(es, 'conn-1', 'h-5');
    snapshot(es, METRICS, { cpu: 7 });
    expect(l.get()?.snapshot).toBe(true);
    expect(l.value()).toEqual({ cpu: 7 });
    es.message(METRICS, 'h-6', { cpu: 9 });
    expect(l.value()).toEqual({ cpu: 9 });
    expect(l.get()?.snapshot).toBeUndefined();
    expect(seen).toEqual([7, 9]);
    p1.leave();

    const p2 = new Page(storage);
    const l2 = latest<{ cpu: number }>(p2.client, METRICS);
    expect(l2.value()).toEqual({ cpu: 9 }); // before the stream is even open
    const es2 = await nextStream(2);
    expect(es2.lastEventIdParam).toBe('h-6'); // a resume: no snapshot needed, the replay covers it
    l2.close();
  });
});

import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { SSEClient } from '../src/client.js';
import { getSharedClient, retainSharedClient } from '../src/shared.js';
import type { DeniedChannel, GapInfo, SSEMessage } from '../src/types.js';
import { baseOptions, FakeBroadcastChannel, FakeEventSource, FakeGateway, FakeLocks } from './fakes.js';

let gw: FakeGateway;
const clients: SSEClient[] = [];
function client(extra = {}): SSEClient {
  const c = new SSEClient(baseOptions(gw, extra));
  clients.push(c);
  return c;
}

/** Run timers/microtasks until `cond` holds (fake clock), or fail. */
async function until(cond: () => boolean, what = 'condition', maxMs = 60000): Promise<void> {
  for (let t = 0; t <= maxMs; t += 10) {
    if (cond()) return;
    await vi.advanceTimersByTimeAsync(10);
  }
  throw new Error(`timed out waiting for ${what}`);
}

beforeEach(() => {
  vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'setInterval', 'clearInterval', 'Date'] });
  FakeEventSource.reset();
  gw = new FakeGateway();
});
afterEach(() => {
  for (const c of clients.splice(0)) c.close();
  vi.useRealTimers();
});

async function connected(c: SSEClient, id = 'conn-1'): Promise<FakeEventSource> {
  await until(() => FakeEventSource.instances.length > 0 && !FakeEventSource.latest().closed, 'EventSource');
  const es = FakeEventSource.latest();
  gw.accept(es, id);
  await until(() => c.getState().status === 'open', 'open');
  return es;
}

describe('SSEClient: one connection, routing', () => {
  it('exchanges the token for the cookie, then opens ONE EventSource for all subscribers', async () => {
    const c = client();
    const got: Record<string, string[]> = { a: [], b: [], c: [] };
    c.subscribe('logs:demo:etl-1', (m) => got.a.push(m.id));
    c.subscribe(['workflow:demo:wf-1'], (m) => got.b.push(m.id));
    c.subscribe('metrics:demo', (m) => got.c.push(m.id));
    const es = await connected(c);

    expect(FakeEventSource.instances).toHaveLength(1);
    expect(es.channels).toEqual(['logs:demo:etl-1', 'metrics:demo', 'workflow:demo:wf-1']);
    expect(es.withCredentials).toBe(true);
    expect(es.url).not.toMatch(/token/);
    const session = gw.callsTo('/api/sse/session');
    expect(session).toHaveLength(1);
    expect(session[0]!.headers.authorization).toBe('Bearer tok-1');
    expect(session[0]!.credentials).toBe('include');

    es.message('logs:demo:etl-1', '1');
    es.message('metrics:demo', '2');
    es.message('workflow:demo:wf-1', '3');
    es.message('logs:demo:etl-1', '4');
    expect(got).toEqual({ a: ['1', '4'], b: ['3'], c: ['2'] });
    expect(c.getLastEventId()).toBe('4');
    expect(c.getState()).toMatchObject({ status: 'open', role: 'standalone', connectionId: 'conn-1', connects: 1 });
  });

  it('does not connect before anything is subscribed', async () => {
    client();
    await vi.advanceTimersByTimeAsync(100);
    expect(FakeEventSource.instances).toHaveLength(0);
    expect(gw.calls).toHaveLength(0);
  });

  it('passes the payload through and emits a client-wide message event', async () => {
    const c = client();
    const all: SSEMessage[] = [];
    c.on('message', (m) => all.push(m));
    let got: SSEMessage | null = null;
    c.subscribe<{ msg: string }>('logs:demo:etl-1', (m) => (got = m));
    const es = await connected(c);
    es.message('logs:demo:etl-1', '7', { msg: 'hi' }, 'log');
    expect(got).toMatchObject({ channel: 'logs:demo:etl-1', id: '7', event: 'log', payload: { msg: 'hi' } });
    expect(all).toHaveLength(1);
    es.emit('message', 'not json', '8');
    expect(all).toHaveLength(1);
  });
});

describe('SSEClient: live subscription changes (no reconnect)', () => {
  it('adds a channel via POST /api/sse/subscriptions with the connection id and Bearer token', async () => {
    const c = client();
    c.subscribe('logs:demo:etl-1', () => {});
    const es = await connected(c);
    const got: string[] = [];
    c.subscribe('dashboards:main', (m) => got.push(m.id));
    await until(() => gw.callsTo('/api/sse/subscriptions').length === 1, 'subscriptions POST');
    const call = gw.callsTo('/api/sse/subscriptions')[0]!;
    expect(call.body).toEqual({ connection_id: 'conn-1', add: ['dashboards:main'], remove: [] });
    expect(call.headers.authorization).toBe('Bearer tok-1');
    await until(() => c.getState().channels.includes('dashboards:main'), 'granted');
    es.message('dashboards:main', '1');
    expect(got).toEqual(['1']);
    expect(FakeEventSource.instances).toHaveLength(1);
    expect(es.closed).toBe(false);
  });

  it('removes a channel when its last subscriber leaves (ref-counted), and never leaks', async () => {
    const c = client();
    const off1 = c.subscribe('metrics:demo', () => {});
    const off2 = c.subscribe('metrics:demo', () => {});
    const offLogs = c.subscribe('logs:demo:etl-1', () => {});
    await connected(c);
    off1();
    await vi.advanceTimersByTimeAsync(50);
    expect(gw.callsTo('/api/sse/subscriptions')).toHaveLength(0);
    off2();
    await until(() => gw.callsTo('/api/sse/subscriptions').length === 1, 'remove POST');
    expect(gw.callsTo('/api/sse/subscriptions')[0]!.body).toMatchObject({ add: [], remove: ['metrics:demo'] });
    offLogs();
    await until(() => gw.callsTo('/api/sse/subscriptions').length === 2, 'second remove');
    await until(() => c.getState().channels.length === 0, 'no channels');
    expect(c.channels()).toEqual([]);
    expect(gw.connections.get('conn-1')!.size).toBe(0);
    expect(FakeEventSource.instances).toHaveLength(1);
  });

  it('subscribe + unsubscribe + subscribe in one tick (StrictMode) costs nothing', async () => {
    const c = client();
    c.subscribe('logs:demo:etl-1', () => {});
    await connected(c);
    const off = c.subscribe('metrics:demo', () => {});
    off();
    const off2 = c.subscribe('metrics:demo', () => {});
    off2();
    await vi.advanceTimersByTimeAsync(100);
    expect(gw.callsTo('/api/sse/subscriptions')).toHaveLength(0);
  });

  it('batches many changes into one request, and queues changes made while one is in flight', async () => {
    const c = client();
    c.subscribe('logs:demo:etl-1', () => {});
    await connected(c);
    c.subscribe('metrics:demo', () => {});
    c.subscribe('dashboards:main', () => {});
    await vi.advanceTimersByTimeAsync(0);
    c.subscribe('workflow:demo:wf-1', () => {});
    await until(() => c.getState().channels.length === 4, 'all four');
    const posts = gw.callsTo('/api/sse/subscriptions');
    expect(posts).toHaveLength(2);
    expect(posts[0]!.body).toMatchObject({ add: ['dashboards:main', 'metrics:demo'] });
    expect(posts[1]!.body).toMatchObject({ add: ['workflow:demo:wf-1'] });
  });

  it('channels subscribed while connecting are sent once ready arrives', async () => {
    const c = client();
    c.subscribe('logs:demo:etl-1', () => {});
    await until(() => FakeEventSource.instances.length === 1, 'es');
    c.subscribe('metrics:demo', () => {});
    const es = FakeEventSource.latest();
    gw.accept(es, 'conn-1'); // ready lists only logs
    await until(() => c.getState().channels.includes('metrics:demo'), 'metrics added');
    expect(gw.callsTo('/api/sse/subscriptions')[0]!.body).toMatchObject({ add: ['metrics:demo'] });
  });

  it('reconnects when the gateway forgot the connection (404), carrying the full list', async () => {
    const c = client();
    c.subscribe('logs:demo:etl-1', () => {});
    await connected(c);
    gw.connections.clear();
    c.subscribe('metrics:demo', () => {});
    await until(() => FakeEventSource.instances.length === 2, 'new EventSource');
    expect(FakeEventSource.latest().channels).toEqual(['logs:demo:etl-1', 'metrics:demo']);
  });
});

describe('SSEClient: reconnect with backoff, resume by cursor', () => {
  it('recreates the EventSource with last_event_id and the current channels, after a backoff delay', async () => {
    const c = client();
    c.subscribe('logs:demo:etl-1', () => {});
    const es = await connected(c);
    c.subscribe('metrics:demo', () => {});
    await until(() => c.getState().channels.length === 2, 'added');
    es.message('logs:demo:etl-1', 'c-41');
    es.message('metrics:demo', 'c-42');
    es.fail();
    expect(es.closed).toBe(true);
    expect(c.getState().status).toBe('reconnecting');
    // attempt 0: base 1000, jitter 0.5, random 0.5 -> 750ms
    await vi.advanceTimersByTimeAsync(700);
    expect(FakeEventSource.instances).toHaveLength(1);
    await until(() => FakeEventSource.instances.length === 2, 'second EventSource');
    const es2 = FakeEventSource.latest();
    expect(es2.lastEventIdParam).toBe('c-42');
    expect(es2.channels).toEqual(['logs:demo:etl-1', 'metrics:demo']);
    gw.accept(es2, 'conn-2');
    await until(() => c.getState().status === 'open', 'open again');
    expect(c.getState()).toMatchObject({ connectionId: 'conn-2', attempt: 0, connects: 2 });
  });

  it('before any event, resumes from ready.cursor (events published during the first reconnect are not missed)', async () => {
    const c = client();
    const readies: (string | null)[] = [];
    c.on('ready', (r) => readies.push(r.cursor));
    const got: string[] = [];
    c.subscribe('logs:demo:etl-1', (m) => got.push(m.id));
    await until(() => FakeEventSource.instances.length === 1, 'EventSource');
    const es = FakeEventSource.latest();
    expect(es.lastEventIdParam).toBeNull();
    gw.accept(es, 'conn-1', 'h-7');
    await until(() => c.getState().status === 'open', 'open');
    expect(readies).toEqual(['h-7']);
    expect(c.getLastEventId()).toBe('h-7');

    // no event yet; the stream drops, and the reconnect asks for everything after the head it saw
    es.fail();
    await until(() => FakeEventSource.instances.length === 2, 'second EventSource');
    const es2 = FakeEventSource.latest();
    expect(es2.lastEventIdParam).toBe('h-7');
    gw.accept(es2, 'conn-2', 'h-7');
    es2.message('logs:demo:etl-1', 'h-8'); // published while disconnected: replayed
    expect(got).toEqual(['h-8']);

    // an explicit reconnect carries the event's cursor, not the older ready.cursor
    c.reconnect();
    await until(() => FakeEventSource.instances.length === 3, 'third EventSource');
    expect(FakeEventSource.latest().lastEventIdParam).toBe('h-8');
  });

  it('always adopts ready.cursor, even when it differs from the cursor the client already has', async () => {
    const c = client();
    c.subscribe('logs:demo:etl-1', () => {});
    await until(() => FakeEventSource.instances.length === 1, 'EventSource');
    const es = FakeEventSource.latest();
    gw.accept(es, 'conn-1', 'h-3');
    es.message('logs:demo:etl-1', 'h-4');
    es.message('logs:demo:etl-1', 'h-5');
    es.fail();
    await until(() => FakeEventSource.instances.length === 2, 'second EventSource');
    const es2 = FakeEventSource.latest();
    expect(es2.lastEventIdParam).toBe('h-5');
    // the gateway knows our cursor: ready.cursor is exactly it (nothing moves)
    gw.accept(es2, 'conn-2', 'h-5');
    await until(() => c.getState().connectionId === 'conn-2', 'open again');
    expect(c.getLastEventId()).toBe('h-5');
    es2.fail();
    await until(() => FakeEventSource.instances.length === 3, 'third EventSource');
    const es3 = FakeEventSource.latest();
    expect(es3.lastEventIdParam).toBe('h-5');
    // the gateway answers with another cursor (it did not know ours: its log's head): adopted
    gw.accept(es3, 'conn-3', 'x-0');
    await until(() => c.getState().connectionId === 'conn-3', 'open a third time');
    expect(c.getLastEventId()).toBe('x-0');
    es3.fail();
    await until(() => FakeEventSource.instances.length === 4, 'fourth EventSource');
    expect(FakeEventSource.latest().lastEventIdParam).toBe('x-0');
  });

  it('after a gateway restart (foreign cursor): one gap, then resumes from the new head without another gap', async () => {
    const c = client();
    const gaps: GapInfo[] = [];
    c.on('gap', (g) => gaps.push(g));
    const got: string[] = [];
    c.subscribe('logs:demo:etl-1', (m) => got.push(m.id));
    await until(() => FakeEventSource.instances.length === 1, 'EventSource');
    const es = FakeEventSource.latest();
    gw.accept(es, 'conn-1', 'mold-000000000002');
    es.message('logs:demo:etl-1', 'mold-000000000003');
    expect(c.getLastEventId()).toBe('mold-000000000003');

    // the gateway restarts (in-memory broker: a new log); the client resumes with its old cursor
    es.fail();
    await until(() => FakeEventSource.instances.length === 2, 'second EventSource');
    const es2 = FakeEventSource.latest();
    expect(es2.lastEventIdParam).toBe('mold-000000000003');
    // foreign cursor: ready carries the new log's head, then a gap
    gw.accept(es2, 'conn-2', 'mnew-000000000000');
    es2.emit('gap', { channels: ['logs:demo:etl-1'] });
    await until(() => c.getState().connectionId === 'conn-2', 'open again');
    expect(gaps).toHaveLength(1);
    expect(c.getLastEventId()).toBe('mnew-000000000000');

    // no event yet; the next reconnect sends the new head, which the gateway knows: no second gap
    es2.fail();
    await until(() => FakeEventSource.instances.length === 3, 'third EventSource');
    const es3 = FakeEventSource.latest();
    expect(es3.lastEventIdParam).toBe('mnew-000000000000');
    gw.accept(es3, 'conn-3', 'mnew-000000000000');
    es3.message('logs:demo:etl-1', 'mnew-000000000001'); // published while disconnected: replayed
    await until(() => c.getState().connectionId === 'conn-3', 'open a third time');
    expect(gaps).toHaveLength(1);
    expect(got).toEqual(['mold-000000000003', 'mnew-000000000001']);
    expect(c.getLastEventId()).toBe('mnew-000000000001');
  });

  it('a ready without a cursor (null: broker unreachable, or an older gateway) changes nothing', async () => {
    const c = client();
    const readies: (string | null)[] = [];
    c.on('ready', (r) => readies.push(r.cursor));
    c.subscribe('logs:demo:etl-1', () => {});
    await until(() => FakeEventSource.instances.length === 1, 'EventSource');
    gw.accept(FakeEventSource.latest(), 'conn-1', null);
    await until(() => c.getState().status === 'open', 'open');
    expect(c.getLastEventId()).toBeNull();
    FakeEventSource.latest().fail();
    await until(() => FakeEventSource.instances.length === 2, 'second EventSource');
    expect(FakeEventSource.latest().lastEventIdParam).toBeNull();
    gw.accept(FakeEventSource.latest(), 'conn-2'); // no cursor field at all
    await until(() => c.getState().connectionId === 'conn-2', 'open again');
    expect(c.getLastEventId()).toBeNull();
    expect(readies).toEqual([null, null]);
    // a later ready with a cursor is still adopted
    FakeEventSource.latest().fail();
    await until(() => FakeEventSource.instances.length === 3, 'third EventSource');
    gw.accept(FakeEventSource.latest(), 'conn-3', 'h-1');
    await until(() => c.getState().connectionId === 'conn-3', 'open a third time');
    expect(c.getLastEventId()).toBe('h-1');
    // and a later null / empty one keeps the cursor the client has
    for (const [i, cursor] of [[4, null], [5, '']] as const) {
      FakeEventSource.latest().fail();
      await until(() => FakeEventSource.instances.length === i, `EventSource ${i}`);
      expect(FakeEventSource.latest().lastEventIdParam).toBe('h-1');
      gw.accept(FakeEventSource.latest(), `conn-${i}`, cursor);
      await until(() => c.getState().connectionId === `conn-${i}`, `open ${i}`);
      expect(c.getLastEventId()).toBe('h-1');
    }
  });

  it('backs off exponentially while the gateway is down, then resets', async () => {
    const c = client();
    c.subscribe('logs:demo:etl-1', () => {});
    await connected(c);
    const times: number[] = [];
    const start = Date.now();
    for (let i = 0; i < 4; i++) {
      const n = FakeEventSource.instances.length;
      FakeEventSource.latest().fail();
      await until(() => FakeEventSource.instances.length === n + 1, `attempt ${i}`);
      times.push(Date.now() - start);
    }
    const gaps = times.map((t, i) => t - (times[i - 1] ?? 0));
    // 750, 1500, 3000, 6000 (random fixed at 0.5), measured on a 10ms grid
    expect(gaps[0]).toBeGreaterThanOrEqual(750);
    expect(gaps[1]).toBeGreaterThanOrEqual(1500);
    expect(gaps[2]).toBeGreaterThanOrEqual(3000);
    expect(gaps[3]).toBeGreaterThanOrEqual(6000);
    expect(gaps[3]).toBeLessThan(6100);
    gw.accept(FakeEventSource.latest(), 'c9');
    await until(() => c.getState().attempt === 0, 'reset');
  });

  it('a failed session exchange (gateway down) is retried with backoff', async () => {
    let down = true;
    const real = gw.fetch;
    const c = client({
      fetch: (u: string, i?: RequestInit) => (down ? Promise.reject(new TypeError('network')) : real(u, i)),
    });
    c.subscribe('logs:demo:etl-1', () => {});
    await vi.advanceTimersByTimeAsync(3000);
    expect(FakeEventSource.instances).toHaveLength(0);
    expect(c.getState().status).toBe('reconnecting');
    down = false;
    await until(() => FakeEventSource.instances.length === 1, 'es after recovery');
  });
});

describe('SSEClient: the connection\'s states', () => {
  it('moves through one state at a time, each change reported once as { newState, oldState }', async () => {
    const c = client();
    const statuses: string[] = [];
    c.onState(() => {
      if (statuses.at(-1) !== c.getState().status) statuses.push(c.getState().status);
    });
    const path: string[] = [];
    c.on('connection', (t) => {
      expect(t.oldState).toBe(path.at(-1) ?? 'idle');
      path.push(t.newState);
    });
    c.subscribe('logs:demo:etl-1', () => {});
    const es = await connected(c);
    es.fail(); // dropped: back off, then again
    await until(() => FakeEventSource.instances.length === 2 && !FakeEventSource.latest().closed, 'second EventSource');
    // refused outright (403 to the probe): the status is asked for, then a new attempt without the channel
    gw.probeStatus = 403;
    FakeEventSource.latest().fail(true);
    await until(() => FakeEventSource.instances.length === 3, 'third EventSource');
    gw.accept(FakeEventSource.latest(), 'conn-3');
    await until(() => c.getState().status === 'open', 'open');
    c.close();
    expect(path).toEqual([
      'authorizing', 'connecting', 'open',
      'waiting', 'authorizing', 'connecting',
      'diagnosing', 'waiting', 'authorizing', 'connecting', 'open',
      'stopped',
    ]);
    // the public status: connecting the first time, reconnecting from the first loss on
    expect(statuses).toEqual(['connecting', 'open', 'reconnecting', 'open', 'closed']);
  });
});

describe('SSEClient: gap, expiry, denial', () => {
  it('surfaces gap to the app and to the subscriptions concerned', async () => {
    const c = client();
    const gaps: GapInfo[] = [];
    const mine: string[][] = [];
    c.on('gap', (g) => gaps.push(g));
    c.subscribe('logs:demo:etl-1', () => {}, { onGap: (g) => mine.push(g.channels) });
    c.subscribe('metrics:demo', () => {});
    const es = await connected(c);
    es.emit('gap', { channels: ['logs:demo:etl-1', 'metrics:demo'] });
    expect(gaps).toHaveLength(1);
    expect(gaps[0]!.channels).toEqual(['logs:demo:etl-1', 'metrics:demo']);
    expect(mine).toEqual([['logs:demo:etl-1']]);
  });

  it('on expired: asks the token provider, renews the cookie, reconnects from the cursor', async () => {
    let n = 1;
    const reasons: string[] = [];
    const c = client({
      getToken: ({ reason }: { reason: string }) => {
        reasons.push(reason);
        return `tok-${n++}`;
      },
    });
    const expired: number[] = [];
    c.on('expired', (e) => expired.push(e.at));
    c.subscribe('logs:demo:etl-1', () => {});
    const es = await connected(c);
    await vi.advanceTimersByTimeAsync(5000);
    es.message('logs:demo:etl-1', 'c-9');
    es.emit('expired', '{}');
    expect(es.closed).toBe(true);
    await until(() => FakeEventSource.instances.length === 2, 'reconnect');
    expect(reasons).toEqual(['initial', 'expired']);
    expect(expired).toHaveLength(1);
    const sessions = gw.callsTo('/api/sse/session');
    expect(sessions.map((s) => s.headers.authorization)).toEqual(['Bearer tok-1', 'Bearer tok-2']);
    expect(FakeEventSource.latest().lastEventIdParam).toBe('c-9');
    gw.accept(FakeEventSource.latest(), 'conn-2');
    c.subscribe('metrics:demo', () => {});
    await until(() => gw.callsTo('/api/sse/subscriptions').length === 1, 'post');
    expect(gw.callsTo('/api/sse/subscriptions')[0]!.headers.authorization).toBe('Bearer tok-2');
  });

  it('on revoked: surfaces the reason and does not reconnect with the same token', async () => {
    const reasons: string[] = [];
    const c = client({
      getToken: ({ reason }: { reason: string }) => {
        reasons.push(reason);
        return 'tok-1';
      },
    });
    const revoked: { reason: string; at: number }[] = [];
    c.on('revoked', (r) => revoked.push(r));
    c.subscribe('logs:demo:etl-1', () => {});
    const es = await connected(c);
    es.emit('revoked', { reason: 'signed out elsewhere' });
    expect(es.closed).toBe(true);
    expect(revoked.map((r) => r.reason)).toEqual(['signed out elsewhere']);
    expect(c.getState().status).toBe('revoked');
    expect(c.getState().revoked?.reason).toBe('signed out elsewhere');
    expect(c.getState().error).toBe('revoked: signed out elsewhere');
    await until(() => reasons.length === 2, 'the provider is asked once');
    expect(reasons).toEqual(['initial', 'revoked']);
    // Same token: no new stream, however long we wait.
    await vi.advanceTimersByTimeAsync(60_000);
    expect(FakeEventSource.instances).toHaveLength(1);
    expect(c.getState().status).toBe('revoked');
    // The app decides: an explicit reconnect opens a stream again, and `revoked` clears once open.
    c.reconnect();
    await until(() => FakeEventSource.instances.length === 2, 'explicit reconnect');
    gw.accept(FakeEventSource.latest(), 'conn-2');
    await until(() => c.getState().status === 'open', 'open again');
    expect(c.getState().revoked).toBeNull();
    expect(c.getState().error).toBeNull();
  });

  it('on revoked: a different token from the provider opens a new stream with it', async () => {
    let n = 1;
    const c = client({ getToken: () => `tok-${n}` });
    c.subscribe('logs:demo:etl-1', () => {});
    const es = await connected(c);
    es.message('logs:demo:etl-1', 'c-3');
    n = 2;
    es.emit('revoked', '{}');
    expect(c.getState().revoked?.reason).toBe('revoked');
    await until(() => FakeEventSource.instances.length === 2, 'reconnect with the new token');
    expect(gw.callsTo('/api/sse/session').map((s) => s.headers.authorization)).toEqual(['Bearer tok-1', 'Bearer tok-2']);
    expect(FakeEventSource.latest().lastEventIdParam).toBe('c-3');
  });

  it('a channel the gateway removed (subscriptions event) shows as denied with its reason and is not asked for again', async () => {
    const c = client();
    const denied: DeniedChannel[][] = [];
    const mine: DeniedChannel[][] = [];
    c.on('denied', (d) => denied.push(d));
    c.subscribe('logs:demo:etl-1', () => {}, { onDenied: (d) => mine.push(d) });
    c.subscribe('metrics:demo', () => {});
    const es = await connected(c);
    es.emit('subscriptions', {
      channels: ['metrics:demo'],
      denied: [{ channel: 'logs:demo:etl-1', reason: 'removed from workspace demo' }],
    });
    const removal = [{ channel: 'logs:demo:etl-1', reason: 'removed from workspace demo', source: 'server' }];
    expect(denied).toEqual([removal]);
    expect(mine).toEqual([removal]);
    expect(c.getState().channels).toEqual(['metrics:demo']);
    expect(c.getState().denied).toEqual(removal);
    await vi.advanceTimersByTimeAsync(5000);
    expect(gw.callsTo('/api/sse/subscriptions')).toHaveLength(0);
  });

  it('refreshes a token the session endpoint rejects (401) through the provider', async () => {
    gw.validTokens = new Set(['good']);
    const reasons: string[] = [];
    const c = client({
      getToken: ({ reason }: { reason: string }) => {
        reasons.push(reason);
        return reason === 'initial' ? 'stale' : 'good';
      },
    });
    c.subscribe('logs:demo:etl-1', () => {});
    await until(() => FakeEventSource.instances.length === 1, 'es');
    expect(reasons).toEqual(['initial', 'unauthorized']);
  });

  it('reports channels denied at connect time and by a live add', async () => {
    gw.allow = (ch) => !ch.startsWith('metrics:private');
    const c = client();
    const denied: DeniedChannel[][] = [];
    const mine: DeniedChannel[][] = [];
    c.on('denied', (d) => denied.push(d));
    c.subscribe('logs:demo:etl-1', () => {});
    c.subscribe('metrics:private', () => {}, { onDenied: (d) => mine.push(d) });
    await connected(c);
    expect(denied).toEqual([[{ channel: 'metrics:private', reason: 'not allowed', source: 'server' }]]);
    expect(mine).toEqual(denied);
    expect(c.getState().denied).toEqual([{ channel: 'metrics:private', reason: 'not allowed', source: 'server' }]);
    c.subscribe('metrics:private:x', () => {});
    await until(() => denied.length === 2, 'second denial');
    expect(denied[1]).toEqual([{ channel: 'metrics:private:x', reason: 'not allowed', source: 'server' }]);
    // A denied channel is not requested again and again
    await vi.advanceTimersByTimeAsync(5000);
    expect(gw.callsTo('/api/sse/subscriptions')).toHaveLength(1);
  });

  it('a channel the gateway refused is asked for again with a new token, whatever its reason says', async () => {
    // The reason is display text (here one that starts with "invalid", like a local refusal's):
    // what happens next depends on who refused, not on the wording.
    gw.denyReason = () => 'invalid workspace for this token';
    let n = 1;
    gw.allow = (ch) => ch !== 'metrics:private' || n > 1;
    const c = client({ getToken: () => `tok-${n}` });
    const denied: DeniedChannel[][] = [];
    c.on('denied', (d) => denied.push(d));
    c.subscribe(['logs:demo:etl-1', 'metrics:private'], () => {});
    const es = await connected(c);
    expect(denied).toEqual([[{ channel: 'metrics:private', reason: 'invalid workspace for this token', source: 'server' }]]);
    // the token expires; the provider's next token grants the channel
    await vi.advanceTimersByTimeAsync(5000);
    n = 2;
    es.emit('expired', '{}');
    await until(() => FakeEventSource.instances.length === 2, 'reconnect with the new token');
    const es2 = FakeEventSource.latest();
    expect(es2.channels).toEqual(['logs:demo:etl-1', 'metrics:private']);
    gw.accept(es2, 'conn-2');
    await until(() => c.getState().connectionId === 'conn-2', 'open again');
    expect(c.getState().channels).toEqual(['logs:demo:etl-1', 'metrics:private']);
    expect(c.getState().denied).toEqual([]);
  });

  it('a malformed channel stays refused locally, even with a new token', async () => {
    let n = 1;
    const c = client({ getToken: () => `tok-${n}` });
    c.subscribe(['logs:demo:etl-1', 'Bad Name'], () => {});
    const es = await connected(c);
    await vi.advanceTimersByTimeAsync(5000);
    n = 2;
    es.emit('expired', '{}');
    await until(() => FakeEventSource.instances.length === 2, 'reconnect with the new token');
    expect(FakeEventSource.latest().channels).toEqual(['logs:demo:etl-1']);
    expect(c.getState().denied).toEqual([{ channel: 'Bad Name', reason: expect.stringMatching(/^invalid channel/), source: 'client' }]);
  });

  it('when every requested channel is refused (403), reports them and connects without them', async () => {
    gw.allow = () => false;
    gw.probeStatus = 403;
    gw.probeBody = JSON.stringify({ error: 'no channel allowed' });
    const c = client();
    const denied: DeniedChannel[][] = [];
    c.on('denied', (d) => denied.push(d));
    c.subscribe('metrics:private', () => {});
    await until(() => FakeEventSource.instances.length === 1, 'es');
    FakeEventSource.latest().fail(true);
    await until(() => FakeEventSource.instances.length === 2, 'reconnect');
    expect(denied).toEqual([[{ channel: 'metrics:private', reason: 'no channel allowed', source: 'server' }]]);
    expect(FakeEventSource.latest().channels).toEqual([]);
    const probe = gw.callsTo('/api/sse', 'GET');
    expect(probe).toHaveLength(1);
  });

  it('marks a malformed channel as denied locally and never sends it', async () => {
    const c = client();
    const denied: DeniedChannel[][] = [];
    c.on('denied', (d) => denied.push(d));
    c.subscribe(['logs:demo:etl-1', 'Bad Name'], () => {});
    const es = await connected(c);
    expect(es.channels).toEqual(['logs:demo:etl-1']);
    expect(denied[0]![0]!.channel).toBe('Bad Name');
    expect(denied[0]![0]!.reason).toMatch(/invalid/);
    expect(denied[0]![0]!.source).toBe('client');
  });

  it('a stream refused with 401 (cookie gone stale) gets a fresh token from the provider', async () => {
    const reasons: string[] = [];
    const c = client({
      getToken: ({ reason }: { reason: string }) => {
        reasons.push(reason);
        return `tok-${reasons.length}`;
      },
    });
    c.subscribe('logs:demo:etl-1', () => {});
    await until(() => FakeEventSource.instances.length === 1, 'es');
    gw.probeStatus = 401;
    FakeEventSource.latest().fail(true);
    await until(() => FakeEventSource.instances.length === 2, 'reconnect');
    expect(reasons).toEqual(['initial', 'unauthorized']);
    expect(gw.callsTo('/api/sse/session').map((x) => x.headers.authorization)).toEqual(['Bearer tok-1', 'Bearer tok-2']);
  });

  it('waits Retry-After on 429', async () => {
    gw.probeStatus = 429;
    gw.probeHeaders = { 'Retry-After': '20' };
    const c = client();
    c.subscribe('logs:demo:etl-1', () => {});
    await until(() => FakeEventSource.instances.length === 1, 'es');
    FakeEventSource.latest().fail(true);
    await vi.advanceTimersByTimeAsync(19000);
    expect(FakeEventSource.instances).toHaveLength(1);
    await until(() => FakeEventSource.instances.length === 2, 'after retry-after');
  });

  it('close() stops everything', async () => {
    const c = client();
    c.subscribe('logs:demo:etl-1', () => {});
    const es = await connected(c);
    c.close();
    expect(es.closed).toBe(true);
    expect(c.getState().status).toBe('closed');
    await vi.advanceTimersByTimeAsync(60000);
    expect(FakeEventSource.instances).toHaveLength(1);
  });
});

describe('SSEClient: one connection per browser (tabs)', () => {
  function tab(locks: FakeLocks, extra = {}): SSEClient {
    return client({ BroadcastChannel: FakeBroadcastChannel, locks, shareKey: 'k', tabHeartbeatMs: 1000, ...extra });
  }

  it('tabs elect one leader; followers get their channels over the BroadcastChannel', async () => {
    const locks = new FakeLocks();
    const t1 = tab(locks);
    const t2 = tab(locks);
    const t3 = tab(locks);
    const got: Record<string, string[]> = { t1: [], t2: [], t3: [] };
    t1.subscribe('logs:demo:etl-1', (m) => got.t1.push(m.id));
    await until(() => FakeEventSource.instances.length === 1, 'leader es');
    const es = FakeEventSource.latest();
    gw.accept(es, 'conn-1');
    t2.subscribe('metrics:demo', (m) => got.t2.push(m.id));
    t3.subscribe(['metrics:demo', 'dashboards:main'], (m) => got.t3.push(m.id));
    await until(() => t1.getState().channels.length === 3, 'leader holds all channels');
    await until(() => t3.getState().status === 'open' && t2.getState().status === 'open', 'followers open');
    expect(t1.getState()).toMatchObject({ role: 'leader', tabs: 3 });
    expect(t2.getState()).toMatchObject({ role: 'follower', connectionId: 'conn-1', tabs: 3 });
    es.message('logs:demo:etl-1', '1');
    es.message('metrics:demo', '2');
    es.message('dashboards:main', '3');
    await vi.advanceTimersByTimeAsync(0);
    expect(got).toEqual({ t1: ['1'], t2: ['2'], t3: ['2', '3'] });
    expect(FakeEventSource.instances).toHaveLength(1);
  });

  it('a follower unsubscribing releases its channel on the leader connection', async () => {
    const locks = new FakeLocks();
    const t1 = tab(locks);
    const t2 = tab(locks);
    t1.subscribe('logs:demo:etl-1', () => {});
    await until(() => FakeEventSource.instances.length === 1, 'es');
    gw.accept(FakeEventSource.latest(), 'conn-1');
    const off = t2.subscribe('metrics:demo', () => {});
    await until(() => t1.getState().channels.includes('metrics:demo'), 'added');
    off();
    await until(() => !t1.getState().channels.includes('metrics:demo'), 'removed');
  });

  it('a follower that vanishes without saying bye is dropped when its liveness lock frees up', async () => {
    const locks = new FakeLocks();
    const t1 = tab(locks);
    const t2 = tab(locks);
    t1.subscribe('logs:demo:etl-1', () => {});
    await until(() => FakeEventSource.instances.length === 1, 'es');
    gw.accept(FakeEventSource.latest(), 'conn-1');
    t2.subscribe('metrics:demo', () => {});
    await until(() => t1.getState().channels.includes('metrics:demo'), 'added');
    // simulate a crash: no bye, the tab's BroadcastChannel goes silent, the browser frees its locks
    const crashed = (t2 as unknown as { tabs: unknown }).tabs as {
      bc: FakeBroadcastChannel | null;
      releaseTabLock: () => void;
      abort: AbortController;
      heartbeat: ReturnType<typeof setInterval>;
    };
    crashed.bc!.close();
    crashed.bc = null;
    clearInterval(crashed.heartbeat);
    await vi.advanceTimersByTimeAsync(60000);
    expect(t1.getState().channels).toContain('metrics:demo'); // silence alone drops nobody (hidden tabs are throttled)
    crashed.releaseTabLock();
    crashed.abort.abort();
    await until(() => !t1.getState().channels.includes('metrics:demo'), 'dropped', 1000);
    expect(t1.getState().tabs).toBe(1);
  });

  it('when the leader closes, another tab takes over and resumes from the cursor with every tab\'s channels', async () => {
    const locks = new FakeLocks();
    const t1 = tab(locks);
    const t2 = tab(locks);
    const t3 = tab(locks);
    const got2: string[] = [];
    const got3: string[] = [];
    t1.subscribe('logs:demo:etl-1', () => {});
    await until(() => FakeEventSource.instances.length === 1, 'es');
    const es = FakeEventSource.latest();
    gw.accept(es, 'conn-1');
    t2.subscribe('metrics:demo', (m) => got2.push(m.id));
    t3.subscribe('dashboards:main', (m) => got3.push(m.id));
    await until(() => t1.getState().channels.length === 3, 'all channels');
    await until(() => t3.getState().status === 'open', 't3 synced');
    es.message('metrics:demo', 'c-1');
    es.message('dashboards:main', 'c-2');
    es.message('logs:demo:etl-1', 'c-3');
    await vi.advanceTimersByTimeAsync(0);

    t1.close();
    await until(() => FakeEventSource.instances.length === 2, 'new leader connects');
    expect(es.closed).toBe(true);
    const es2 = FakeEventSource.latest();
    const leader = t2.getState().role === 'leader' ? t2 : t3;
    const follower = leader === t2 ? t3 : t2;
    expect(leader.getState().role).toBe('leader');
    expect(follower.getState().role).toBe('follower');
    expect(es2.lastEventIdParam).toBe('c-3');
    expect(es2.channels).toEqual(['dashboards:main', 'metrics:demo']);
    gw.accept(es2, 'conn-2');
    // replay after c-3, then live
    es2.message('metrics:demo', 'c-4');
    es2.message('dashboards:main', 'c-5');
    await until(() => follower.getState().connectionId === 'conn-2', 'follower follows');
    await vi.advanceTimersByTimeAsync(0);
    expect(got2).toEqual(['c-1', 'c-4']);
    expect(got3).toEqual(['c-2', 'c-5']);
    expect(FakeEventSource.open).toHaveLength(1);
  });

  it('a leader change before any event resumes from ready.cursor, which followers learn from the leader', async () => {
    const locks = new FakeLocks();
    const t1 = tab(locks);
    const t2 = tab(locks);
    const got2: string[] = [];
    t1.subscribe('logs:demo:etl-1', () => {});
    await until(() => FakeEventSource.instances.length === 1, 'es');
    const es = FakeEventSource.latest();
    gw.accept(es, 'conn-1', 'h-10');
    t2.subscribe('metrics:demo', (m) => got2.push(m.id));
    await until(() => t1.getState().channels.includes('metrics:demo'), 'follower channel on the leader');
    await until(() => t2.getState().status === 'open', 't2 synced');
    expect(t1.getLastEventId()).toBe('h-10');
    expect(t2.getLastEventId()).toBe('h-10');

    t1.close(); // no event was delivered before the leader went away
    await until(() => FakeEventSource.instances.length === 2, 'new leader connects');
    expect(t2.getState().role).toBe('leader');
    const es2 = FakeEventSource.latest();
    expect(es2.lastEventIdParam).toBe('h-10');
    gw.accept(es2, 'conn-2', 'h-10');
    es2.message('metrics:demo', 'h-11'); // published during the takeover: replayed
    expect(got2).toEqual(['h-11']);
    expect(t2.getLastEventId()).toBe('h-11');
  });

  it('falls back to one connection per tab without Web Locks', async () => {
    const a = client({ BroadcastChannel: FakeBroadcastChannel, locks: null });
    const b = client({ BroadcastChannel: FakeBroadcastChannel, locks: null });
    a.subscribe('logs:demo:etl-1', () => {});
    b.subscribe('logs:demo:etl-1', () => {});
    await until(() => FakeEventSource.instances.length === 2, 'two');
    expect(a.getState().role).toBe('standalone');
  });
});

describe('shared client', () => {
  it('one client per page and gateway, closed when the last user lets go (not on a StrictMode bounce)', async () => {
    const opts = baseOptions(gw, { shareKey: 'shared-test' });
    const a = getSharedClient(opts);
    const b = getSharedClient({ ...opts, getToken: () => 'other' });
    expect(a).toBe(b);
    const r1 = retainSharedClient(a);
    const r2 = retainSharedClient(a);
    r1();
    r2();
    const r3 = retainSharedClient(a); // re-mount before the tick
    await vi.advanceTimersByTimeAsync(10);
    expect(a.isClosed).toBe(false);
    r3();
    await vi.advanceTimersByTimeAsync(10);
    expect(a.isClosed).toBe(true);
    expect(getSharedClient(opts)).not.toBe(a);
  });
});

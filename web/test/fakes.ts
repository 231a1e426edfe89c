/* Test doubles: an EventSource, a gateway behind fetch, Web Locks, and BroadcastChannel. */
import type { GatewayDenial, SSEClientOptions, SSEMessage, StorageLike } from '../src/types.js';

type Listener = (ev: MessageEvent) => void;

export class FakeEventSource {
  static instances: FakeEventSource[] = [];
  static reset(): void {
    FakeEventSource.instances = [];
  }
  static get open(): FakeEventSource[] {
    return FakeEventSource.instances.filter((e) => !e.closed);
  }
  static latest(): FakeEventSource {
    const es = FakeEventSource.instances[FakeEventSource.instances.length - 1];
    if (!es) throw new Error('no EventSource was created');
    return es;
  }

  readyState = 0;
  closed = false;
  onmessage: ((ev: MessageEvent) => unknown) | null = null;
  onerror: ((ev: Event) => unknown) | null = null;
  onopen: ((ev: Event) => unknown) | null = null;
  readonly withCredentials: boolean;
  private listeners = new Map<string, Set<Listener>>();

  constructor(
    readonly url: string,
    init?: { withCredentials?: boolean },
  ) {
    this.withCredentials = !!init?.withCredentials;
    FakeEventSource.instances.push(this);
  }

  addEventListener(type: string, fn: Listener): void {
    let s = this.listeners.get(type);
    if (!s) this.listeners.set(type, (s = new Set()));
    s.add(fn);
  }

  close(): void {
    this.readyState = 2;
    this.closed = true;
  }

  get params(): URLSearchParams {
    return new URL(this.url, 'http://gw.test').searchParams;
  }
  get channels(): string[] {
    return this.params.getAll('channels');
  }
  get lastEventIdParam(): string | null {
    return this.params.get('last_event_id');
  }

  emit(type: string, data: unknown, lastEventId = ''): void {
    if (this.closed) return;
    const ev = { type, data: typeof data === 'string' ? data : JSON.stringify(data), lastEventId } as MessageEvent;
    if (type === 'message') this.onmessage?.(ev);
    for (const fn of this.listeners.get(type) ?? []) fn(ev);
  }

  /** `cursor`: the gateway's `ready.cursor` (left out of the event when undefined, like an older gateway). */
  ready(connection_id: string, channels = this.channels, denied: GatewayDenial[] = [], cursor?: string | null): void {
    this.readyState = 1;
    this.onopen?.({ type: 'open' } as Event);
    this.emit('ready', { connection_id, cursor, channels, denied });
  }

  message(channel: string, id: string, payload: unknown = {}, event = 'message'): void {
    const m: SSEMessage = { channel, event, id, ts: Date.now(), payload };
    this.emit('message', m, id);
  }

  /** A dropped stream (browser would retry) or, with fatal, a non-200 answer. */
  fail(fatal = false): void {
    if (this.closed) return;
    this.readyState = fatal ? 2 : 0;
    this.onerror?.({ type: 'error' } as Event);
  }
}

export interface FetchCall {
  url: string;
  method: string;
  headers: Record<string, string>;
  body: unknown;
  credentials?: RequestCredentials;
}

/** A gateway emulation behind `fetch`: session, subscriptions (with a deny rule), and stream probes. */
export class FakeGateway {
  calls: FetchCall[] = [];
  /** Tokens accepted by the session endpoint; null = accept anything. */
  validTokens: Set<string> | null = null;
  /** Channels the user may read. */
  allow: (channel: string) => boolean = () => true;
  /** The reason given for a refused channel. */
  denyReason: (channel: string) => string = () => 'not allowed';
  /** Status to answer GET /api/sse probes with. */
  probeStatus = 200;
  probeBody = '';
  probeHeaders: Record<string, string> = {};
  /** Live channel sets by connection id (updated by the subscriptions endpoint). */
  connections = new Map<string, Set<string>>();
  subscriptionsStatus: number | null = null;
  /** The stream of each connection (its `subscriptions` event follows a change, as the gateway's does). */
  streams = new Map<string, FakeEventSource>();

  fetch = async (input: string, init: RequestInit = {}): Promise<Response> => {
    const headers: Record<string, string> = {};
    for (const [k, v] of Object.entries((init.headers as Record<string, string>) ?? {})) headers[k.toLowerCase()] = v;
    const method = (init.method ?? 'GET').toUpperCase();
    const body = typeof init.body === 'string' ? JSON.parse(init.body) : undefined;
    this.calls.push({ url: input, method, headers, body, credentials: init.credentials });
    const path = new URL(input, 'http://gw.test').pathname;
    const token = (headers['authorization'] ?? '').replace(/^Bearer /, '');
    if (path === '/api/sse/session' && method === 'POST') {
      if (this.validTokens && !this.validTokens.has(token)) return json(401, { error: 'invalid token' });
      return new Response(null, { status: 204 });
    }
    if (path === '/api/sse/subscriptions' && method === 'POST') {
      if (this.subscriptionsStatus) return json(this.subscriptionsStatus, { error: 'nope' });
      const set = this.connections.get(body.connection_id);
      if (!set) return json(404, { error: 'unknown connection' });
      const denied: GatewayDenial[] = [];
      for (const c of body.add ?? []) {
        if (this.allow(c)) set.add(c);
        else denied.push({ channel: c, reason: this.denyReason(c) });
      }
      for (const c of body.remove ?? []) set.delete(c);
      const channels = Array.from(set).sort();
      this.streams.get(body.connection_id)?.emit('subscriptions', { channels, denied });
      return json(200, { channels, denied });
    }
    if (path === '/api/sse' && method === 'GET') {
      return new Response(this.probeBody || null, { status: this.probeStatus, headers: this.probeHeaders });
    }
    return json(404, { error: 'not found' });
  };

  /** The stream answers `ready` the way the gateway would for the URL's channels (with `cursor`, if given). */
  accept(es: FakeEventSource, connectionId: string, cursor?: string | null): void {
    const granted = es.channels.filter((c) => this.allow(c));
    const denied = es.channels.filter((c) => !this.allow(c)).map((channel) => ({ channel, reason: this.denyReason(channel) }));
    this.connections.set(connectionId, new Set(granted));
    this.streams.set(connectionId, es);
    es.ready(connectionId, granted, denied, cursor);
  }

  callsTo(path: string, method = 'POST'): FetchCall[] {
    return this.calls.filter((c) => new URL(c.url, 'http://gw.test').pathname === path && c.method === method);
  }
}

function json(status: number, body: unknown): Response {
  return new Response(JSON.stringify(body), { status, headers: { 'Content-Type': 'application/json' } });
}

/** Exclusive Web Locks, granted in request order. */
export class FakeLocks {
  private held = new Set<string>();
  private queues = new Map<string, Array<() => void>>();

  request(
    name: string,
    options: { signal?: AbortSignal },
    callback: (lock: unknown) => Promise<unknown> | unknown,
  ): Promise<unknown> {
    return new Promise((resolve, reject) => {
      const run = () => {
        this.held.add(name);
        Promise.resolve()
          .then(() => callback({ name }))
          .then(resolve, reject)
          .finally(() => {
            this.held.delete(name);
            const next = this.queues.get(name)?.shift();
            if (next) next();
          });
      };
      if (!this.held.has(name)) {
        run();
        return;
      }
      let q = this.queues.get(name);
      if (!q) this.queues.set(name, (q = []));
      q.push(run);
      options.signal?.addEventListener('abort', () => {
        const i = q!.indexOf(run);
        if (i >= 0) {
          q!.splice(i, 1);
          reject(new Error('AbortError'));
        }
      });
    });
  }
}

/** In-memory BroadcastChannel: delivers to every other instance of the same name, asynchronously. */
export class FakeBroadcastChannel {
  static all = new Set<FakeBroadcastChannel>();
  onmessage: ((ev: MessageEvent) => unknown) | null = null;
  private closed = false;
  constructor(readonly name: string) {
    FakeBroadcastChannel.all.add(this);
  }
  postMessage(message: unknown): void {
    if (this.closed) throw new Error('closed');
    const copy = structuredClone(message);
    for (const other of FakeBroadcastChannel.all) {
      if (other === this || other.name !== this.name || other.closed) continue;
      queueMicrotask(() => {
        if (!other.closed) other.onmessage?.({ data: copy } as MessageEvent);
      });
    }
  }
  close(): void {
    this.closed = true;
    FakeBroadcastChannel.all.delete(this);
  }
}

export function baseOptions(gw: FakeGateway, extra: Partial<SSEClientOptions> = {}): SSEClientOptions {
  return {
    url: 'http://gw.test',
    getToken: () => 'tok-1',
    fetch: gw.fetch,
    EventSource: FakeEventSource,
    BroadcastChannel: null,
    locks: null,
    random: () => 0.5,
    storage: null,
    backoff: { initialMs: 1000, maxMs: 8000, factor: 2, jitter: 0.5 },
    ...extra,
  };
}

/** Lets pending promises and microtasks settle (works with fake timers). */
export async function settle(rounds = 10): Promise<void> {
  for (let i = 0; i < rounds; i++) await Promise.resolve();
}

/** `sessionStorage` of one tab: survives the page (client) that wrote it, like the real one. */
export class MemoryStorage implements StorageLike {
  data = new Map<string, string>();
  writes = 0;
  getItem(key: string): string | null {
    return this.data.get(key) ?? null;
  }
  setItem(key: string, value: string): void {
    this.writes++;
    this.data.set(key, value);
  }
  removeItem(key: string): void {
    this.data.delete(key);
  }
}

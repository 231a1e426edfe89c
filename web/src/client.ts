import { normalizeChannels } from './channels.js';
import { Connection } from './connection.js';
import { Emitter } from './emitter.js';
import { Registry } from './registry.js';
import type {
  BroadcastChannelCtor,
  BroadcastChannelLike,
  ClientEvents,
  DeniedChannel,
  GapInfo,
  LockManagerLike,
  MessageHandler,
  SSEClientOptions,
  SSEMessage,
  SSEState,
  SubscribeOptions,
} from './types.js';

/** Messages between tabs on the BroadcastChannel. */
type TabMessage =
  | { t: 'hello' | 'subs'; from: string; channels: string[] }
  | { t: 'bye'; from: string }
  | { t: 'leader'; from: string }
  | { t: 'msg'; from: string; m: SSEMessage }
  | { t: 'gap'; from: string; gap: GapInfo }
  | { t: 'denied'; from: string; denied: DeniedChannel[] }
  | { t: 'expired'; from: string; at: number }
  | { t: 'ready'; from: string; info: ClientEvents['ready'] }
  | { t: 'subscriptions'; from: string; info: ClientEvents['subscriptions'] }
  | { t: 'state'; from: string; state: Partial<SSEState>; tabs: Record<string, string[]>; cursor: string | null };

const INITIAL_STATE: SSEState = {
  status: 'idle',
  role: 'pending',
  connectionId: null,
  channels: [],
  denied: [],
  error: null,
  attempt: 0,
  connects: 0,
  tabs: 1,
};

/**
 * The framework-free client. One instance per page (see `getSharedClient`); with Web Locks and
 * BroadcastChannel available, one instance per browser holds the gateway connection and the
 * others follow it.
 */
export class SSEClient {
  readonly tabId: string;
  private readonly registry = new Registry();
  private readonly emitter = new Emitter<ClientEvents>();
  private state: SSEState = INITIAL_STATE;
  private conn: Connection | null = null;
  private started = false;
  private closed = false;
  private flushQueued = false;
  private stateQueued = false;
  private lastEventId: string | null = null;
  private bc: BroadcastChannelLike | null = null;
  private lockAbort: AbortController | null = null;
  private releaseLock: (() => void) | null = null;
  private leaderId: string | null = null;
  /** Other tabs' wanted channels. Authoritative on the leader; a mirror on followers, for takeover. */
  private tabs = new Map<string, { channels: string[]; seen: number }>();
  private heartbeat: ReturnType<typeof setInterval> | null = null;
  /** Releases this tab's own liveness lock (held for the tab's lifetime). */
  private releaseTabLock: (() => void) | null = null;
  /** Leader: one queued lock request per other tab; it is granted when that tab is gone. */
  private watchers = new Map<string, AbortController>();
  private readonly shareKey: string;
  private readonly BC: BroadcastChannelCtor | null;
  private readonly locks: LockManagerLike | null;
  private readonly heartbeatMs: number;
  private readonly log: (...args: unknown[]) => void;
  private readonly onPageHide = () => this.post({ t: 'bye', from: this.tabId });
  private readonly onPageShow = (e: Event) => {
    // Back from the back/forward cache: tell the leader again what this tab wants.
    if ((e as PageTransitionEvent).persisted) this.post({ t: 'hello', from: this.tabId, channels: this.registry.channels() });
  };

  constructor(readonly options: SSEClientOptions) {
    if (!options || typeof options.getToken !== 'function') throw new Error('SSEClient: options.getToken is required');
    this.tabId = randomId();
    this.log = options.log ?? (() => {});
    this.heartbeatMs = options.tabHeartbeatMs ?? 5000;
    const origin = typeof location !== 'undefined' ? location.origin : '';
    this.shareKey = options.shareKey ?? `sse-gateway:${absoluteUrl(options.url ?? '', origin)}`;
    const g = globalThis as unknown as {
      BroadcastChannel?: BroadcastChannelCtor;
      navigator?: { locks?: LockManagerLike };
    };
    this.BC = options.BroadcastChannel !== undefined ? options.BroadcastChannel : (g.BroadcastChannel ?? null);
    this.locks = options.locks !== undefined ? options.locks : (g.navigator?.locks ?? null);
  }

  // ---- public API --------------------------------------------------------------------------

  /**
   * Receive the events of `channels`. Returns the function that undoes it; call it when the
   * component goes away (the channel is released once nobody on the page, or in any tab, wants it).
   */
  subscribe<T = unknown>(channels: string | readonly string[], handler: MessageHandler<T>, options: SubscribeOptions = {}): () => void {
    const list = normalizeChannels(channels);
    if (this.closed) return () => {};
    const remove = this.registry.add(list, handler as MessageHandler, options);
    this.scheduleFlush();
    if (options.onDenied) {
      const known = this.state.denied.filter((d) => list.includes(d.channel));
      if (known.length) queueMicrotask(() => options.onDenied!(known));
    }
    return () => {
      remove();
      this.scheduleFlush();
    };
  }

  /** Client-wide events: `message`, `gap`, `denied`, `expired`, `ready`, `subscriptions`, `state`. */
  on<K extends keyof ClientEvents>(event: K, listener: (value: ClientEvents[K]) => void): () => void {
    return this.emitter.on(event, listener);
  }

  /** Status changes (for `useSyncExternalStore`). */
  onState = (listener: () => void): (() => void) => this.emitter.on('state', () => listener());

  getState = (): SSEState => this.state;

  /**
   * The resume cursor: the id of the last event this tab saw, or the gateway's latest
   * `ready.cursor` if it came after (null until the first `ready` or event).
   */
  getLastEventId(): string | null {
    return this.lastEventId;
  }

  /** Channels subscribed in this tab. */
  channels(): string[] {
    return this.registry.channels();
  }

  /** Connects now, even before anything is subscribed (otherwise the first `subscribe` does). */
  connect(): void {
    if (this.closed) return;
    if (!this.started) this.start();
  }

  /** Drops the stream and reconnects from the last cursor (leader/standalone tab only). */
  reconnect(): void {
    this.conn?.reconnectNow();
  }

  /** Stops everything; another tab takes over the connection if this one held it. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.conn?.stop();
    this.conn = null;
    this.post({ t: 'bye', from: this.tabId });
    this.releaseLock?.();
    this.releaseLock = null;
    this.releaseTabLock?.();
    this.releaseTabLock = null;
    this.lockAbort?.abort();
    this.lockAbort = null;
    for (const w of this.watchers.values()) w.abort();
    this.watchers.clear();
    this.bc?.close();
    this.bc = null;
    if (this.heartbeat) clearInterval(this.heartbeat);
    this.heartbeat = null;
    if (typeof removeEventListener === 'function') {
      removeEventListener('pagehide', this.onPageHide);
      removeEventListener('pageshow', this.onPageShow);
    }
    this.setState({ status: 'closed', connectionId: null });
  }

  get isClosed(): boolean {
    return this.closed;
  }

  // ---- start-up and roles ------------------------------------------------------------------

  private start(): void {
    this.started = true;
    const share = this.options.shareAcrossTabs !== false && this.BC !== null && this.locks !== null;
    if (!share) {
      this.setState({ role: 'standalone', status: 'connecting' });
      this.startConnection(null);
      return;
    }
    try {
      this.bc = new this.BC!(this.shareKey);
    } catch {
      this.setState({ role: 'standalone', status: 'connecting' });
      this.startConnection(null);
      return;
    }
    this.bc.onmessage = (e: MessageEvent) => this.onTabMessage(e.data as TabMessage);
    this.setState({ role: 'follower', status: 'connecting' });
    this.lockAbort = typeof AbortController !== 'undefined' ? new AbortController() : null;
    const signal = this.lockAbort?.signal;
    // 1. A lock only this tab holds, for as long as it lives: the leader learns that a tab is gone
    //    (closed, crashed, or frozen for good) when it is granted that lock — no timers, which
    //    browsers throttle hard in hidden tabs.
    this.locks!.request(this.tabLockName(this.tabId), { mode: 'exclusive', signal }, () => {
      if (this.closed) return undefined;
      return new Promise<void>((resolve) => {
        this.releaseTabLock = resolve;
        // 2. Only now announce this tab, and queue for leadership.
        this.post({ t: 'hello', from: this.tabId, channels: this.registry.channels() });
        this.locks!.request(this.shareKey, { mode: 'exclusive', signal }, () => {
          if (this.closed) return undefined;
          return new Promise<void>((release) => {
            this.releaseLock = release;
            this.becomeLeader();
          });
        }).catch(() => {
          /* aborted by close() */
        });
      });
    }).catch(() => {
      /* aborted by close() */
    });
    this.heartbeat = setInterval(() => this.onHeartbeat(), this.heartbeatMs);
    if (typeof addEventListener === 'function') {
      addEventListener('pagehide', this.onPageHide);
      addEventListener('pageshow', this.onPageShow);
    }
  }

  private tabLockName(tabId: string): string {
    return `${this.shareKey}#tab:${tabId}`;
  }

  /** Leader: drop a tab's channels as soon as its liveness lock is free (it is gone). */
  private watchTab(tabId: string): void {
    if (!this.locks || this.watchers.has(tabId) || tabId === this.tabId) return;
    const ac = new AbortController();
    this.watchers.set(tabId, ac);
    this.locks
      .request(this.tabLockName(tabId), { mode: 'exclusive', signal: ac.signal }, () => {
        if (this.watchers.get(tabId) === ac) this.watchers.delete(tabId);
        if (this.closed || this.state.role !== 'leader') return;
        this.log('sse: tab gone', tabId);
        if (this.tabs.delete(tabId)) this.tabsChanged();
      })
      .catch(() => {
        /* aborted */
      });
  }

  private becomeLeader(): void {
    if (this.closed) return;
    this.log('sse: this tab leads', this.tabId);
    const previous = this.leaderId;
    if (previous && previous !== this.tabId) this.tabs.delete(previous);
    this.leaderId = this.tabId;
    const now = Date.now();
    for (const [id, t] of this.tabs) {
      t.seen = now;
      this.watchTab(id);
    }
    this.setState({ role: 'leader', tabs: this.tabs.size + 1 });
    this.post({ t: 'leader', from: this.tabId });
    this.startConnection(this.lastEventId);
    this.broadcastState();
  }

  private startConnection(resumeFrom: string | null): void {
    const o = this.options;
    const EventSourceCtor = o.EventSource ?? (globalThis as { EventSource?: SSEClientOptions['EventSource'] }).EventSource;
    const fetchFn = o.fetch ?? (globalThis.fetch ? globalThis.fetch.bind(globalThis) : undefined);
    if (!EventSourceCtor || !fetchFn) {
      this.setState({ status: 'closed', error: 'EventSource/fetch are not available here' });
      return;
    }
    this.conn = new Connection(
      {
        baseUrl: o.url ?? '',
        paths: {
          sse: o.paths?.sse ?? '/api/sse',
          session: o.paths?.session ?? '/api/sse/session',
          subscriptions: o.paths?.subscriptions ?? '/api/sse/subscriptions',
        },
        getToken: o.getToken,
        backoff: o.backoff ?? {},
        withCredentials: o.withCredentials ?? true,
        fetch: fetchFn,
        EventSource: EventSourceCtor,
        random: o.random ?? Math.random,
        log: this.log,
      },
      {
        desired: () => this.desired(),
        onMessage: (m) => {
          this.deliverMessage(m);
          this.post({ t: 'msg', from: this.tabId, m });
        },
        onReady: (info) => {
          this.adoptCursor(info.cursor);
          this.emitter.emit('ready', info);
          this.post({ t: 'ready', from: this.tabId, info });
          this.broadcastState();
        },
        onGap: (channels) => {
          const gap = { channels, at: Date.now() };
          this.deliverGap(gap);
          this.post({ t: 'gap', from: this.tabId, gap });
        },
        onDenied: (denied) => {
          this.deliverDenied(denied);
          this.post({ t: 'denied', from: this.tabId, denied });
        },
        onExpired: () => {
          const at = Date.now();
          this.emitter.emit('expired', { at });
          this.post({ t: 'expired', from: this.tabId, at });
        },
        onSubscriptions: (info) => {
          this.emitter.emit('subscriptions', info);
          this.post({ t: 'subscriptions', from: this.tabId, info });
        },
        onState: (patch) => {
          this.setState(patch);
          this.broadcastState();
        },
      },
    );
    this.conn.start(resumeFrom);
  }

  /** Union of this tab's channels and (on the leader) the other tabs'. */
  private desired(): string[] {
    const set = new Set(this.registry.channels());
    for (const t of this.tabs.values()) for (const c of t.channels) set.add(c);
    return Array.from(set).sort();
  }

  private scheduleFlush(): void {
    if (this.flushQueued) return;
    this.flushQueued = true;
    queueMicrotask(() => {
      this.flushQueued = false;
      this.flush();
    });
  }

  private flush(): void {
    if (this.closed) return;
    if (!this.started) {
      if (this.registry.channels().length === 0) return;
      this.start();
    }
    if (this.conn) {
      this.conn.channelsChanged();
      this.broadcastState();
    } else if (this.bc && this.releaseTabLock) {
      // (before the tab lock is held, the coming `hello` carries the list)
      this.post({ t: 'subs', from: this.tabId, channels: this.registry.channels() });
    }
  }

  /** Followers repeat what they want now and then, in case a message was lost in a leader change. */
  private onHeartbeat(): void {
    if (this.closed || this.state.role !== 'follower' || !this.releaseTabLock) return;
    this.post({ t: 'subs', from: this.tabId, channels: this.registry.channels() });
  }

  private tabsChanged(): void {
    this.setState({ tabs: this.tabs.size + 1 });
    this.conn?.channelsChanged();
    this.broadcastState();
  }

  // ---- tab messages ------------------------------------------------------------------------

  private post(msg: TabMessage): void {
    if (!this.bc) return;
    try {
      this.bc.postMessage(msg);
    } catch (err) {
      this.log('sse: broadcast failed', err);
    }
  }

  private broadcastState(): void {
    if (this.state.role !== 'leader' || !this.bc || this.stateQueued) return;
    this.stateQueued = true;
    queueMicrotask(() => {
      this.stateQueued = false;
      if (this.state.role !== 'leader' || this.closed) return;
      const tabs: Record<string, string[]> = { [this.tabId]: this.registry.channels() };
      for (const [id, t] of this.tabs) tabs[id] = t.channels;
      const { status, connectionId, channels, denied, error, attempt } = this.state;
      this.post({
        t: 'state',
        from: this.tabId,
        state: { status, connectionId, channels, denied, error, attempt, tabs: this.tabs.size + 1 },
        tabs,
        cursor: this.lastEventId,
      });
    });
  }

  private onTabMessage(msg: TabMessage): void {
    if (this.closed || !msg || typeof msg !== 'object' || msg.from === this.tabId) return;
    const leader = this.state.role === 'leader';
    switch (msg.t) {
      case 'hello':
      case 'subs': {
        const channels = normalizeChannels(msg.channels);
        if (leader) {
          const prev = this.tabs.get(msg.from);
          this.tabs.set(msg.from, { channels, seen: Date.now() });
          this.watchTab(msg.from);
          if (!prev || prev.channels.join('\n') !== channels.join('\n')) this.tabsChanged();
          else if (msg.t === 'hello') this.broadcastState();
        } else {
          this.tabs.set(msg.from, { channels, seen: Date.now() });
        }
        break;
      }
      case 'bye':
        if (this.tabs.delete(msg.from) && leader) this.tabsChanged();
        this.watchers.get(msg.from)?.abort();
        this.watchers.delete(msg.from);
        if (!leader && msg.from === this.leaderId) {
          this.leaderId = null;
          this.setState({ status: 'reconnecting', connectionId: null });
        }
        break;
      case 'leader':
        if (leader) break; // cannot happen with Web Locks; ignore
        this.leaderId = msg.from;
        this.tabs.delete(msg.from);
        this.post({ t: 'subs', from: this.tabId, channels: this.registry.channels() });
        break;
      case 'state': {
        if (leader) break;
        this.leaderId = msg.from;
        this.tabs.clear();
        const now = Date.now();
        for (const [id, channels] of Object.entries(msg.tabs ?? {})) {
          if (id !== this.tabId) this.tabs.set(id, { channels, seen: now });
        }
        if (msg.cursor) this.lastEventId = msg.cursor;
        this.setState({ ...msg.state, role: 'follower' });
        const mine = this.registry.channels().join('\n');
        if (this.releaseTabLock && (msg.tabs?.[this.tabId] ?? []).join('\n') !== mine) {
          this.post({ t: 'subs', from: this.tabId, channels: this.registry.channels() });
        }
        break;
      }
      case 'msg':
        if (leader) break;
        this.deliverMessage(msg.m);
        break;
      case 'gap':
        if (!leader) this.deliverGap(msg.gap);
        break;
      case 'denied':
        if (!leader) this.deliverDenied(msg.denied);
        break;
      case 'expired':
        if (!leader) this.emitter.emit('expired', { at: msg.at });
        break;
      case 'ready':
        if (leader) break;
        this.adoptCursor(msg.info?.cursor);
        this.emitter.emit('ready', msg.info);
        break;
      case 'subscriptions':
        if (!leader) this.emitter.emit('subscriptions', msg.info);
        break;
    }
  }

  // ---- local delivery ----------------------------------------------------------------------

  /**
   * `ready.cursor` (when a non-empty string) always becomes the resume point: the gateway sets it
   * to the cursor the client sent when that cursor belongs to its log (so it never moves a valid
   * cursor backwards), else to the log's head (no cursor, or a foreign one after a gateway
   * restart: a `gap` is sent, and the foreign cursor must not be sent again).
   */
  private adoptCursor(cursor: string | null | undefined): void {
    if (typeof cursor === 'string' && cursor !== '') this.lastEventId = cursor;
  }

  private deliverMessage(m: SSEMessage): void {
    if (!m || typeof m.channel !== 'string') return;
    if (m.id) this.lastEventId = m.id;
    if (this.registry.dispatch(m)) this.emitter.emit('message', m);
  }

  private deliverGap(gap: GapInfo): void {
    this.registry.dispatchGap(gap);
    this.emitter.emit('gap', gap);
  }

  private deliverDenied(denied: DeniedChannel[]): void {
    this.registry.dispatchDenied(denied);
    this.emitter.emit('denied', denied);
  }

  private setState(patch: Partial<SSEState>): void {
    let changed = false;
    for (const k of Object.keys(patch) as (keyof SSEState)[]) {
      if (!shallowEqual(this.state[k], patch[k])) {
        changed = true;
        break;
      }
    }
    if (!changed) return;
    this.state = { ...this.state, ...patch };
    this.emitter.emit('state', this.state);
  }
}

export function createSSEClient(options: SSEClientOptions): SSEClient {
  return new SSEClient(options);
}

function shallowEqual(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (Array.isArray(a) && Array.isArray(b)) {
    return a.length === b.length && a.every((x, i) => shallowEqual(x, b[i]));
  }
  if (a && b && typeof a === 'object' && typeof b === 'object') {
    const ka = Object.keys(a);
    const kb = Object.keys(b);
    return ka.length === kb.length && ka.every((k) => (a as Record<string, unknown>)[k] === (b as Record<string, unknown>)[k]);
  }
  return false;
}

function randomId(): string {
  const c = (globalThis as { crypto?: { randomUUID?: () => string } }).crypto;
  if (c?.randomUUID) return c.randomUUID();
  return Math.random().toString(36).slice(2) + Date.now().toString(36);
}

function absoluteUrl(url: string, origin: string): string {
  try {
    return new URL(url || '/', origin || undefined).origin;
  } catch {
    return url || origin;
  }
}

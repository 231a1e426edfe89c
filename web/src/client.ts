/**
 * The framework-free client: subscriptions of this page (`Registry`), their kept items
 * (`History`), the state that survives a reload (`Persistence`), and — in the tab that leads —
 * the gateway connection (`Connection`) and the recent stream for tabs that come back
 * (`Journal`). Which tab leads is `TabGroup`'s business.
 */
import { isValidChannel, normalizeChannels } from './channels.js';
import { Connection } from './connection.js';
import { Emitter } from './emitter.js';
import { History } from './history.js';
import { Journal } from './journal.js';
import { jwtSubject } from './jwt.js';
import { globalPageEvents, Persistence, sessionStore, type StoredState } from './persist.js';
import { Registry } from './registry.js';
import { TabGroup, type CatchUpReply, type LeaderState, type Relay } from './tabs.js';
import type {
  BroadcastChannelCtor,
  ClientEvents,
  ConnectionTransition,
  DeniedChannel,
  GapInfo,
  LockManagerLike,
  MessageHandler,
  PageEventsLike,
  SSEClientOptions,
  SSEMessage,
  SSEState,
  StorageLike,
  SubscribeOptions,
} from './types.js';

const INITIAL_STATE: SSEState = {
  status: 'idle',
  role: 'pending',
  connectionId: null,
  channels: [],
  denied: [],
  error: null,
  revoked: null,
  attempt: 0,
  connects: 0,
  tabs: 1,
};

const DEFAULT_PERSIST_BYTES = 1 << 20;
/** How long a leader waits for a catch-up cursor it has not seen (yet) to show up in its stream. */
const CATCH_UP_WAIT_MS = 2000;
const DEFAULT_LINGER_MS = 10000;

/** A follower tab back from a reload, until the leader has sent it what it missed. */
interface CatchingUp {
  since: string;
  /** The channels the previous page had (the ones that must continue without a gap). */
  channels: string[];
  /** What the leader relayed meanwhile: delivered after the catch-up, in order. */
  held: Relay[];
  timer: ReturnType<typeof setTimeout> | null;
}

/**
 * The framework-free client. One instance per page (see `getSharedClient`); with Web Locks and
 * BroadcastChannel available, one instance per browser holds the gateway connection and the
 * others follow it.
 */
export class SSEClient {
  readonly tabId: string;
  private readonly registry = new Registry();
  private readonly emitter = new Emitter<ClientEvents>();
  /** Kept messages (`subscribe(…, { keep })`); `history()` reads them. */
  private readonly kept = new History();
  private readonly journal = new Journal();
  private state: SSEState = INITIAL_STATE;
  private conn: Connection | null = null;
  private tabs: TabGroup | null = null;
  private persistence: Persistence | null = null;
  private started = false;
  private closed = false;
  private flushQueued = false;
  private stateQueued = false;
  private lastEventId: string | null = null;
  /** The token's `sub` as far as this tab knows (its own token, or the leader's word). */
  private sub: string | null = null;
  /** What this page started from (null: nothing stored, or `persist: 'none'`). */
  private restored: StoredState | null = null;
  /** The previous page's channels, wanted for `lingerMs` after start so a late subscriber loses nothing. */
  private lingering = new Set<string>();
  private lingerTimer: ReturnType<typeof setTimeout> | null = null;
  private catchingUp: CatchingUp | null = null;
  /** Leader: catch-up requests it cannot answer yet, by tab. */
  private pendingCatchUps = new Map<string, { since: string; channels: string[]; until: number }>();
  private catchUpTimer: ReturnType<typeof setTimeout> | null = null;
  /** Leader: its stream has been open (the journal knows what it carries) since it took the lead. */
  private journalLive = false;
  private readonly shareKey: string;
  private readonly BC: BroadcastChannelCtor | null;
  private readonly locks: LockManagerLike | null;
  private readonly log: (...args: unknown[]) => void;
  private readonly page: PageEventsLike | null;

  constructor(readonly options: SSEClientOptions) {
    if (!options || typeof options.getToken !== 'function') throw new Error('SSEClient: options.getToken is required');
    this.tabId = randomId();
    this.log = options.log ?? (() => {});
    const origin = typeof location !== 'undefined' ? location.origin : '';
    this.shareKey = options.shareKey ?? `sse-gateway:${absoluteUrl(options.url ?? '', origin)}`;
    const g = globalThis as unknown as {
      BroadcastChannel?: BroadcastChannelCtor;
      navigator?: { locks?: LockManagerLike };
    };
    this.BC = options.BroadcastChannel !== undefined ? options.BroadcastChannel : (g.BroadcastChannel ?? null);
    this.locks = options.locks !== undefined ? options.locks : (g.navigator?.locks ?? null);
    this.page = options.pageEvents !== undefined ? options.pageEvents : globalPageEvents();
    const storage: StorageLike | null = options.storage !== undefined ? options.storage : sessionStore();
    if ((options.persist ?? 'session') === 'session' && storage) {
      this.persistence = new Persistence(
        storage,
        `${this.shareKey}#state`,
        options.persistMaxBytes ?? DEFAULT_PERSIST_BYTES,
        () => ({
          cursor: this.lastEventId,
          sub: this.sub ?? this.restored?.sub ?? null,
          channels: this.pageChannels(),
          tab: this.tabId,
          keep: this.kept.limits(),
          items: (budget) => this.kept.toJSON(budget),
        }),
        this.log,
        this.page,
      );
      this.restore(this.persistence.load());
    }
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
    const release = options.keep ? this.kept.retain(list, options.keep) : null;
    this.scheduleFlush();
    if (options.onDenied) {
      const known = this.state.denied.filter((d) => list.includes(d.channel));
      if (known.length) queueMicrotask(() => options.onDenied!(known));
    }
    return () => {
      remove();
      release?.();
      this.scheduleFlush();
    };
  }

  /**
   * The kept messages of `channels` (see `subscribe`'s `keep`), oldest first, at most `max`:
   * after a reload, those of the previous page (with `persist`).
   */
  history<T = unknown>(channels: string | readonly string[], max?: number): SSEMessage<T>[] {
    return this.kept.get(normalizeChannels(channels), max) as SSEMessage<T>[];
  }

  /** Forgets the kept messages of `channels` (here and in the stored state). */
  clearHistory(channels: string | readonly string[]): void {
    this.kept.clear(normalizeChannels(channels));
    this.persistence?.changed();
  }

  /** Client-wide events: `message`, `gap`, `denied`, `expired`, `revoked`, `ready`, `subscriptions`, `state`, `reset`, `connection`. */
  on<K extends keyof ClientEvents>(event: K, listener: (value: ClientEvents[K]) => void): () => void {
    return this.emitter.on(event, listener);
  }

  /** Status changes (for `useSyncExternalStore`). */
  onState = (listener: () => void): (() => void) => this.emitter.on('state', () => listener());

  getState = (): SSEState => this.state;

  /**
   * The resume cursor: the id of the last event this tab saw, or the gateway's latest
   * `ready.cursor` if it came after (null until the first `ready` or event, unless restored).
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
    this.persistence?.close();
    this.closed = true;
    this.conn?.stop();
    this.conn = null;
    this.tabs?.close();
    this.tabs = null;
    if (this.lingerTimer) clearTimeout(this.lingerTimer);
    this.lingerTimer = null;
    if (this.catchUpTimer) clearTimeout(this.catchUpTimer);
    this.catchUpTimer = null;
    this.pendingCatchUps.clear();
    this.endCatchUp();
    this.setState({ status: 'closed', connectionId: null });
  }

  get isClosed(): boolean {
    return this.closed;
  }

  // ---- start-up, restore, roles ------------------------------------------------------------

  private restore(s: StoredState | null): void {
    if (!s) return;
    this.restored = s;
    this.lastEventId = s.cursor;
    this.kept.restore(s.items, s.keep);
    this.registry.remember(...this.kept.ids());
    this.lingering = new Set([...s.channels, ...Object.keys(s.items)].filter(isValidChannel));
    this.log('sse: restored', s.cursor, Array.from(this.lingering));
  }

  private start(): void {
    this.started = true;
    if (this.lingering.size) {
      this.lingerTimer = setTimeout(() => this.endLinger(), this.options.lingerMs ?? DEFAULT_LINGER_MS);
    }
    const share = this.options.shareAcrossTabs !== false && this.BC !== null && this.locks !== null;
    if (share) {
      const tabs = new TabGroup(
        this.tabId,
        {
          shareKey: this.shareKey,
          BroadcastChannel: this.BC!,
          locks: this.locks!,
          heartbeatMs: this.options.tabHeartbeatMs ?? 5000,
          lingerMs: this.options.lingerMs ?? DEFAULT_LINGER_MS,
          page: this.page,
          log: this.log,
        },
        {
          channels: () => this.pageChannels(),
          catchUpSince: () => this.catchingUp?.since ?? null,
          replaces: () => this.restored?.tab || null,
          lingerOnHide: () => (this.persistence ? this.pageChannels() : []),
          becomeLeader: () => this.becomeLeader(),
          othersChanged: () => this.othersChanged(),
          catchUpRequested: (tab, since, channels) => this.catchUpFor(tab, since, channels),
          relayed: (r) => this.relayed(r),
          leaderState: (s, tabs) => this.followLeader(s, tabs),
          caughtUp: (reply) => this.caughtUp(reply),
          leaderLeft: () => this.setState({ status: 'reconnecting', connectionId: null }),
        },
      );
      if (tabs.start()) {
        this.tabs = tabs;
        this.setState({ role: 'follower', status: 'connecting' });
        this.beginCatchUp();
        return;
      }
    }
    this.setState({ role: 'standalone', status: 'connecting' });
    this.startConnection(false);
  }

  /** The channels this page wants: its subscriptions, and its previous page's while they linger. */
  private pageChannels(): string[] {
    if (this.lingering.size === 0) return this.registry.channels();
    return normalizeChannels([...this.registry.channels(), ...this.lingering]);
  }

  private endLinger(): void {
    this.lingerTimer = null;
    if (this.closed) return;
    this.lingering.clear();
    this.kept.endRestored();
    this.scheduleFlush();
  }

  private becomeLeader(): void {
    if (this.closed) return;
    // The gateway resumes from this tab's own cursor: whatever the old leader relayed meanwhile is replayed.
    this.endCatchUp();
    this.journal.reset();
    this.journalLive = false;
    this.pendingCatchUps.clear();
    this.setState({ role: 'leader', tabs: this.tabs?.count() ?? 1 });
    this.startConnection(true);
    this.broadcastState();
  }

  private othersChanged(): void {
    this.setState({ tabs: this.tabs?.count() ?? 1 });
    this.conn?.channelsChanged();
    this.broadcastState();
  }

  private startConnection(takeover: boolean): void {
    const o = this.options;
    const EventSourceCtor = o.EventSource ?? (globalThis as { EventSource?: SSEClientOptions['EventSource'] }).EventSource;
    const fetchFn = o.fetch ?? (globalThis.fetch ? globalThis.fetch.bind(globalThis) : undefined);
    if (!EventSourceCtor || !fetchFn) {
      this.setState({ status: 'closed', error: 'EventSource/fetch are not available here' });
      return;
    }
    if (this.lastEventId) this.journal.mark(this.lastEventId);
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
        onMessage: (m, size) => {
          if (this.deliverMessage(m, true, size)) this.tabs?.relay({ k: 'msg', m });
        },
        onReady: (info, sent) => {
          this.trackReady(info.cursor, sent, info.channels);
          this.adoptCursor(info.cursor);
          this.emitter.emit('ready', info);
          this.tabs?.relay({ k: 'ready', info });
          this.broadcastState();
        },
        onGap: (channels) => {
          const gap = { channels, at: Date.now() };
          this.journal.gap(channels);
          this.deliverGap(gap);
          this.tabs?.relay({ k: 'gap', gap });
        },
        onDenied: (denied) => {
          this.deliverDenied(denied);
          this.tabs?.relay({ k: 'denied', denied });
        },
        onExpired: () => {
          const at = Date.now();
          this.emitter.emit('expired', { at });
          this.tabs?.relay({ k: 'expired', at });
        },
        onRevoked: (reason) => {
          const info = { reason, at: Date.now() };
          this.emitter.emit('revoked', info);
          this.tabs?.relay({ k: 'revoked', info });
        },
        onSubscriptions: (info) => {
          // In stream order: what follows this event is complete for the channels it lists.
          this.journal.coverOnly(info.channels);
          this.journal.cover(info.channels, this.journal.position());
          this.emitter.emit('subscriptions', info);
          this.tabs?.relay({ k: 'subscriptions', info });
        },
        onRemoving: (channels) => this.journal.uncover(channels),
        onToken: (token) => this.learnSubject(jwtSubject(token)),
        onState: (patch) => {
          this.setState(patch);
          this.broadcastState();
        },
        onTransition: (t: ConnectionTransition) => {
          this.log('sse: connection', t.oldState, '->', t.newState);
          this.emitter.emit('connection', t);
        },
      },
    );
    this.conn.start(this.lastEventId, takeover);
  }

  /** Union of this page's channels and (on the leader) the other tabs'. */
  private desired(): string[] {
    const set = new Set(this.pageChannels());
    for (const c of this.tabs?.othersChannels() ?? []) set.add(c);
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
    this.kept.gc();
    this.persistence?.changed();
    if (!this.started) {
      if (this.registry.channels().length === 0) return;
      this.start();
    }
    if (this.conn) {
      this.conn.channelsChanged();
      this.broadcastState();
    } else {
      // (before the tab lock is held, the coming `hello` carries the list)
      this.tabs?.announce('subs');
    }
  }

  private broadcastState(): void {
    if (this.state.role !== 'leader' || !this.tabs || this.stateQueued) return;
    this.stateQueued = true;
    queueMicrotask(() => {
      this.stateQueued = false;
      if (this.state.role !== 'leader' || this.closed) return;
      const { status, connectionId, channels, denied, error, attempt, tabs } = this.state;
      this.tabs?.sendState({ state: { status, connectionId, channels, denied, error, attempt, tabs }, cursor: this.lastEventId, sub: this.sub });
    });
  }

  // ---- coming back: the previous page's state ------------------------------------------------

  /** A follower with a stored cursor asks the leader what it missed (a standalone/leader tab asks the gateway). */
  private beginCatchUp(): void {
    const since = this.restored?.cursor;
    const channels = Array.from(this.lingering).sort();
    if (!since || channels.length === 0) return;
    const timeout = Math.max(3000, 2 * (this.options.tabHeartbeatMs ?? 5000) + 1000);
    const c: CatchingUp = { since, channels, held: [], timer: null };
    // A leader that never answers (e.g. an older version of this client in another tab): report a gap.
    c.timer = setTimeout(() => {
      if (this.catchingUp === c && !this.tabs?.isLeader) this.caughtUp({ items: [], uncovered: c.channels, cursor: null });
    }, timeout);
    this.catchingUp = c;
  }

  private endCatchUp(): void {
    if (this.catchingUp?.timer) clearTimeout(this.catchingUp.timer);
    this.catchingUp = null;
  }

  /** Leader: a tab came back with cursor `since`; it is sent what it missed on its previous page's channels. */
  private catchUpFor(tab: string, since: string, channels: string[]): void {
    this.pendingCatchUps.set(tab, { since, channels, until: Date.now() + CATCH_UP_WAIT_MS });
    this.answerCatchUps();
  }

  /**
   * Leader: answers the requests it can. Not before its stream is open (until then it does not
   * know what the stream carries); and a cursor it has not seen may be one its stream is about to
   * replay (the tab saw events whose relay was lost while the lead changed hands), so such a
   * request waits a little for it before the answer says `gap`.
   */
  private answerCatchUps(): void {
    if (this.catchUpTimer) clearTimeout(this.catchUpTimer);
    this.catchUpTimer = null;
    if (this.pendingCatchUps.size === 0 || !this.journalLive || !this.tabs) return;
    const now = Date.now();
    let next = Infinity;
    for (const [tab, p] of Array.from(this.pendingCatchUps)) {
      if (this.journal.positionOf(p.since) === undefined && now < p.until) {
        next = Math.min(next, p.until);
        continue;
      }
      this.pendingCatchUps.delete(tab);
      const { items, uncovered } = this.journal.catchUp(p.since, p.channels);
      this.tabs.sendCatchUp(tab, { items, uncovered, cursor: this.lastEventId });
    }
    if (next !== Infinity) this.catchUpTimer = setTimeout(() => this.answerCatchUps(), next - now);
  }

  /** Follower: the leader's answer; then what it relayed meanwhile. */
  private caughtUp(reply: CatchUpReply): void {
    const c = this.catchingUp;
    if (!c) return;
    this.endCatchUp();
    const at = Date.now();
    for (const item of reply.items ?? []) {
      if ('m' in item) this.deliverMessage(item.m);
      else this.deliverGap({ channels: item.gap, at });
    }
    const uncovered = (reply.uncovered ?? []).filter((ch) => c.channels.includes(ch));
    if (uncovered.length) this.deliverGap({ channels: uncovered, at });
    // Everything relayed before the answer is no newer than its cursor.
    const cursor = reply.cursor;
    for (const r of c.held) this.relayed(r, false);
    this.adoptCursor(cursor);
  }

  // ---- relayed by the leader ---------------------------------------------------------------

  private relayed(r: Relay, advance = true): void {
    if (this.catchingUp && (r.k === 'msg' || r.k === 'gap')) {
      this.catchingUp.held.push(r);
      return;
    }
    switch (r.k) {
      case 'msg':
        this.deliverMessage(r.m, advance);
        break;
      case 'gap':
        this.deliverGap(r.gap);
        break;
      case 'denied':
        this.deliverDenied(r.denied);
        break;
      case 'expired':
        this.emitter.emit('expired', { at: r.at });
        break;
      case 'revoked':
        this.emitter.emit('revoked', r.info);
        break;
      case 'ready':
        if (!this.catchingUp) this.adoptCursor(r.info?.cursor);
        this.emitter.emit('ready', r.info);
        break;
      case 'subscriptions':
        this.emitter.emit('subscriptions', r.info);
        break;
    }
  }

  private followLeader(s: LeaderState, tabs: number): void {
    if (s.sub) this.learnSubject(s.sub);
    if (!this.catchingUp) this.adoptCursor(s.cursor);
    this.setState({ ...s.state, role: 'follower', tabs });
  }

  /**
   * The user is known: stored items of another user are dropped (a shared computer, a new login
   * in the same tab), and so is the stored cursor.
   */
  private learnSubject(sub: string | null): void {
    if (!sub || sub === this.sub) return;
    this.sub = sub;
    const stored = this.restored?.sub;
    if (stored && stored !== sub) {
      this.log('sse: stored state belongs to another user: dropped');
      this.restored = null;
      this.kept.clearAll();
      this.lingering.clear();
      this.endCatchUp();
      this.lastEventId = null;
      this.conn?.resetCursor();
      this.emitter.emit('reset', { at: Date.now() });
    }
    this.persistence?.changed();
  }

  /**
   * Leader: which channels the new stream carries from which journal position. A stream that
   * resumed from the cursor we sent continues the old one; any other start is a new beginning.
   */
  private trackReady(cursor: string | null, sent: string | null, channels: string[]): void {
    const continued = cursor !== null && cursor === sent;
    if (!continued) this.journal.coverOnly([]);
    const from = cursor ? this.journal.mark(cursor) : this.journal.position();
    this.journal.coverOnly(channels);
    this.journal.cover(channels, from);
    this.journalLive = true;
    this.answerCatchUps();
  }

  // ---- local delivery ----------------------------------------------------------------------

  /**
   * `ready.cursor` (when a non-empty string) always becomes the resume point: the gateway sets it
   * to the cursor the client sent when that cursor belongs to its log (so it never moves a valid
   * cursor backwards), else to the log's head (no cursor, or a foreign one after a gateway
   * restart: a `gap` is sent, and the foreign cursor must not be sent again).
   */
  private adoptCursor(cursor: string | null | undefined): void {
    if (typeof cursor === 'string' && cursor !== '' && cursor !== this.lastEventId) {
      this.lastEventId = cursor;
      this.persistence?.changed();
    }
  }

  /**
   * Delivers one message: dropped if seen before; else it moves the cursor (never a snapshot,
   * never when `advance` is false), is kept, journaled (leader), and handed to the subscribers.
   * Cursor and kept items change together, so the stored state always matches itself.
   */
  private deliverMessage(m: SSEMessage, advance = true, size = 0): boolean {
    if (!m || typeof m.channel !== 'string') return false;
    if (!this.registry.accept(m)) return false;
    if (advance && m.id && !m.snapshot) this.lastEventId = m.id;
    this.kept.record(m);
    if (this.state.role === 'leader') this.journal.message(m, size || JSON.stringify(m).length);
    this.persistence?.changed();
    this.registry.route(m);
    this.emitter.emit('message', m);
    if (this.pendingCatchUps.size) this.answerCatchUps();
    return true;
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

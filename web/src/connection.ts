import { backoffDelay } from './backoff.js';
import { channelError } from './channels.js';
import { jwtExpiry } from './jwt.js';
import type {
  BackoffOptions,
  ConnectionStatus,
  DeniedChannel,
  EventSourceCtor,
  EventSourceLike,
  FetchLike,
  ReadyInfo,
  SSEMessage,
  SSEState,
  SubscriptionsInfo,
  TokenProvider,
  TokenReason,
} from './types.js';

export interface ConnectionConfig {
  baseUrl: string;
  paths: { sse: string; session: string; subscriptions: string };
  getToken: TokenProvider;
  backoff: Partial<BackoffOptions>;
  withCredentials: boolean;
  fetch: FetchLike;
  EventSource: EventSourceCtor;
  random: () => number;
  log: (...args: unknown[]) => void;
}

export interface ConnectionHooks {
  /** Every channel some subscriber (in any tab) wants. */
  desired(): string[];
  onMessage(message: SSEMessage): void;
  onReady(info: ReadyInfo): void;
  onGap(channels: string[]): void;
  /** Newly refused channels (gateway denial, or malformed names). */
  onDenied(denied: DeniedChannel[]): void;
  onExpired(): void;
  onSubscriptions(info: SubscriptionsInfo): void;
  onState(patch: Partial<SSEState>): void;
}

class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

const CLOSED = 2;
/** An expiry within this many ms after `ready` counts as a failed attempt (guards against refresh loops). */
const EXPIRY_LOOP_MS = 2000;
/** Tokens this close to `exp` are refreshed before use. */
const TOKEN_MARGIN_MS = 5000;

/**
 * One gateway connection: session-cookie exchange, the EventSource, live subscription changes
 * through `POST /api/sse/subscriptions`, and reconnect with backoff + jitter from the last cursor.
 * In a multi-tab setup only the leader tab runs one of these.
 */
export class Connection {
  private es: EventSourceLike | null = null;
  private gen = 0;
  private stopped = true;
  private status: ConnectionStatus = 'idle';
  private token: string | null = null;
  private tokenStale = false;
  private tokenReason: TokenReason = 'initial';
  private tokenPromise: Promise<string> | null = null;
  private connectionId: string | null = null;
  private granted = new Set<string>();
  private denied = new Map<string, string>();
  private lastEventId: string | null = null;
  private attempt = 0;
  private connects = 0;
  private openedAt = 0;
  private reconnectTimer: ReturnType<typeof setTimeout> | null = null;
  private reconcileTimer: ReturnType<typeof setTimeout> | null = null;
  private reconcileQueued = false;
  private reconcileInflight = false;
  private reconcileDirty = false;
  private reconcileFailures = 0;

  constructor(
    private readonly cfg: ConnectionConfig,
    private readonly hooks: ConnectionHooks,
  ) {}

  get cursor(): string | null {
    return this.lastEventId;
  }

  get id(): string | null {
    return this.connectionId;
  }

  get running(): boolean {
    return !this.stopped;
  }

  /** Opens the stream; `resumeFrom` is a cursor to resume after (e.g. when taking over from another tab). */
  start(resumeFrom: string | null = null): void {
    if (!this.stopped) return;
    this.stopped = false;
    if (resumeFrom) this.lastEventId = resumeFrom;
    this.setStatus(resumeFrom ? 'reconnecting' : 'connecting');
    this.markInvalid();
    void this.open();
  }

  stop(): void {
    this.stopped = true;
    this.gen++;
    this.closeEventSource();
    this.clearTimers();
    this.connectionId = null;
    this.granted.clear();
    this.setStatus('closed', { connectionId: null, channels: [] });
  }

  /** Drops the current stream and opens a new one at once (same cursor). */
  reconnectNow(): void {
    if (this.stopped) return;
    this.clearTimers();
    this.setStatus('reconnecting');
    void this.open();
  }

  /** The set of wanted channels changed: sync it with the gateway (batched in a microtask). */
  channelsChanged(): void {
    if (this.stopped) return;
    const desired = new Set(this.hooks.desired());
    let changed = false;
    for (const ch of Array.from(this.denied.keys())) {
      if (!desired.has(ch)) {
        this.denied.delete(ch);
        changed = true;
      }
    }
    if (this.markInvalid() || changed) this.emitDeniedState();
    if (this.reconcileQueued) return;
    this.reconcileQueued = true;
    queueMicrotask(() => {
      this.reconcileQueued = false;
      void this.reconcile();
    });
  }

  // ---- internals -------------------------------------------------------------------------

  private url(path: string): string {
    return this.cfg.baseUrl.replace(/\/+$/, '') + path;
  }

  private setStatus(status: ConnectionStatus, extra: Partial<SSEState> = {}): void {
    this.status = status;
    this.hooks.onState({ status, ...extra });
  }

  private emitDeniedState(): void {
    this.hooks.onState({ denied: this.deniedList() });
  }

  private deniedList(): DeniedChannel[] {
    return Array.from(this.denied, ([channel, reason]) => ({ channel, reason })).sort((a, b) =>
      a.channel < b.channel ? -1 : a.channel > b.channel ? 1 : 0,
    );
  }

  /** Marks malformed wanted channels as denied locally; returns true if any was new. */
  private markInvalid(): boolean {
    const fresh: DeniedChannel[] = [];
    for (const ch of this.hooks.desired()) {
      if (this.denied.has(ch)) continue;
      const err = channelError(ch);
      if (err) {
        const reason = `invalid channel: ${err}`;
        this.denied.set(ch, reason);
        fresh.push({ channel: ch, reason });
      }
    }
    if (fresh.length) {
      this.emitDeniedState();
      this.hooks.onDenied(fresh);
    }
    return fresh.length > 0;
  }

  private wanted(): string[] {
    return this.hooks
      .desired()
      .filter((c) => !this.denied.has(c))
      .sort();
  }

  private closeEventSource(): void {
    if (this.es) {
      this.es.onmessage = null;
      this.es.onerror = null;
      this.es.onopen = null;
      this.es.close();
      this.es = null;
    }
  }

  private clearTimers(): void {
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    if (this.reconcileTimer) clearTimeout(this.reconcileTimer);
    this.reconnectTimer = null;
    this.reconcileTimer = null;
  }

  private async ensureToken(): Promise<string> {
    if (this.token && !this.tokenStale) {
      const exp = jwtExpiry(this.token);
      if (exp === null || exp * 1000 - Date.now() > TOKEN_MARGIN_MS) return this.token;
      this.tokenReason = 'expired';
    }
    if (!this.tokenPromise) {
      const reason = this.tokenReason;
      this.tokenPromise = (async () => {
        try {
          const t = await this.cfg.getToken({ reason });
          if (typeof t !== 'string' || t.length === 0) throw new Error('token provider returned no token');
          if (t !== this.token && this.token !== null) {
            // A new token may grant channels the old one did not: ask again.
            for (const [ch, why] of Array.from(this.denied)) if (!why.startsWith('invalid')) this.denied.delete(ch);
          }
          this.token = t;
          this.tokenStale = false;
          this.tokenReason = 'expired';
          return t;
        } finally {
          this.tokenPromise = null;
        }
      })();
    }
    return this.tokenPromise;
  }

  private async exchangeSession(gen: number): Promise<void> {
    for (let round = 0; round < 2; round++) {
      const token = await this.ensureToken();
      if (gen !== this.gen) return;
      const res = await this.cfg.fetch(this.url(this.cfg.paths.session), {
        method: 'POST',
        headers: { Authorization: `Bearer ${token}` },
        credentials: 'include',
      });
      if (res.ok) return;
      const msg = await errorText(res);
      if (res.status === 401 && round === 0) {
        this.tokenStale = true;
        this.tokenReason = 'unauthorized';
        continue;
      }
      if (res.status === 401) {
        this.tokenStale = true;
        this.tokenReason = 'unauthorized';
      }
      throw new HttpError(res.status, `session: ${res.status} ${msg}`);
    }
  }

  private async open(): Promise<void> {
    const gen = ++this.gen;
    this.closeEventSource();
    this.connectionId = null;
    try {
      await this.exchangeSession(gen);
    } catch (err) {
      if (gen !== this.gen) return;
      this.scheduleReconnect(errMessage(err));
      return;
    }
    if (gen !== this.gen || this.stopped) return;

    const requested = this.wanted();
    const params = new URLSearchParams();
    for (const ch of requested) params.append('channels', ch);
    if (this.lastEventId) params.set('last_event_id', this.lastEventId);
    const qs = params.toString();
    const url = this.url(this.cfg.paths.sse) + (qs ? `?${qs}` : '');
    this.cfg.log('sse: open', url);

    let es: EventSourceLike;
    try {
      es = new this.cfg.EventSource(url, { withCredentials: this.cfg.withCredentials });
    } catch (err) {
      this.scheduleReconnect(errMessage(err));
      return;
    }
    this.es = es;
    this.connects++;
    this.hooks.onState({ connects: this.connects });
    let gotReady = false;

    es.addEventListener('ready', (e) => {
      if (gen !== this.gen) return;
      const info = parse<ReadyInfo>(e.data);
      if (!info) return;
      gotReady = true;
      const cursor = typeof info.cursor === 'string' && info.cursor !== '' ? info.cursor : null;
      // The stream is complete after `cursor`: it becomes the resume point. It is the cursor we
      // sent when the gateway knows it (so it never moves ours backwards), else the log's head
      // (we had none, or a foreign one, e.g. the gateway restarted: `gap` follows). Adopting it
      // always means a reconnect before the first event misses nothing and a foreign cursor is
      // not sent again (which would report another gap). A null cursor changes nothing.
      if (cursor) this.lastEventId = cursor;
      this.connectionId = info.connection_id;
      this.granted = new Set(info.channels ?? []);
      const fresh = this.absorbDenied(info.denied ?? []);
      this.attempt = 0;
      this.reconcileFailures = 0;
      this.openedAt = Date.now();
      this.setStatus('open', {
        connectionId: this.connectionId,
        channels: Array.from(this.granted).sort(),
        denied: this.deniedList(),
        attempt: 0,
        error: null,
      });
      this.hooks.onReady({ connection_id: info.connection_id, cursor, channels: info.channels ?? [], denied: info.denied ?? [] });
      if (fresh.length) this.hooks.onDenied(fresh);
      // Subscribers that came or went while connecting.
      void this.reconcile();
    });

    es.addEventListener('gap', (e) => {
      if (gen !== this.gen) return;
      const info = parse<{ channels?: string[] }>(e.data) ?? {};
      this.hooks.onGap(info.channels ?? Array.from(this.granted));
    });

    es.addEventListener('subscriptions', (e) => {
      if (gen !== this.gen) return;
      const info = parse<SubscriptionsInfo>(e.data);
      if (!info) return;
      this.granted = new Set(info.channels ?? []);
      const fresh = this.absorbDenied(info.denied ?? []);
      this.hooks.onState({ channels: Array.from(this.granted).sort(), denied: this.deniedList() });
      this.hooks.onSubscriptions({ channels: info.channels ?? [], denied: info.denied ?? [] });
      if (fresh.length) this.hooks.onDenied(fresh);
    });

    es.addEventListener('expired', () => {
      if (gen !== this.gen) return;
      this.closeEventSource();
      this.tokenStale = true;
      this.tokenReason = 'expired';
      this.hooks.onExpired();
      const quick = gotReady && Date.now() - this.openedAt > EXPIRY_LOOP_MS;
      if (quick) {
        this.setStatus('reconnecting', { connectionId: null });
        void this.open();
      } else {
        this.scheduleReconnect('token expired');
      }
    });

    es.onmessage = (e: MessageEvent) => {
      if (gen !== this.gen) return;
      const msg = parse<SSEMessage>(e.data);
      if (!msg || typeof msg.channel !== 'string') return;
      const id = (e.lastEventId as string | undefined) || msg.id;
      if (!msg.id && id) msg.id = id;
      if (id) this.lastEventId = id;
      this.hooks.onMessage(msg);
    };

    es.onerror = () => {
      if (gen !== this.gen) return;
      const fatal = es.readyState === CLOSED;
      this.closeEventSource();
      this.connectionId = null;
      if (fatal && !gotReady) {
        void this.diagnose(url, requested, gen);
      } else {
        this.scheduleReconnect('connection lost');
      }
    };
  }

  /** Records refusals; returns the ones not known before. */
  private absorbDenied(list: DeniedChannel[]): DeniedChannel[] {
    const fresh: DeniedChannel[] = [];
    for (const d of list) {
      if (!d || typeof d.channel !== 'string') continue;
      const reason = d.reason || 'denied';
      if (this.denied.get(d.channel) !== reason) fresh.push({ channel: d.channel, reason });
      this.denied.set(d.channel, reason);
    }
    return fresh;
  }

  /**
   * The EventSource failed before `ready` and will not retry by itself (a non-200 answer).
   * EventSource hides the status, so ask once with fetch to decide what to do.
   */
  private async diagnose(url: string, requested: string[], gen: number): Promise<void> {
    let status = 0;
    let msg = '';
    let retryAfter = 0;
    const ctrl = typeof AbortController !== 'undefined' ? new AbortController() : null;
    try {
      const token = await this.ensureToken();
      const res = await this.cfg.fetch(url, {
        headers: { Accept: 'text/event-stream', Authorization: `Bearer ${token}` },
        credentials: 'include',
        signal: ctrl?.signal,
      });
      status = res.status;
      if (res.ok) ctrl?.abort();
      else {
        msg = await errorText(res);
        retryAfter = Number(res.headers.get('Retry-After')) || 0;
      }
    } catch {
      status = 0;
    }
    if (gen !== this.gen || this.stopped) return;
    this.cfg.log('sse: connect failed', status, msg);
    if (status === 401) {
      this.tokenStale = true;
      this.tokenReason = 'unauthorized';
      this.scheduleReconnect(`unauthorized: ${msg}`);
    } else if ((status === 403 || status === 400) && requested.length > 0) {
      const reason = status === 403 ? msg || 'forbidden' : `rejected: ${msg || 'bad request'}`;
      const fresh = this.absorbDenied(requested.map((channel) => ({ channel, reason })));
      this.emitDeniedState();
      if (fresh.length) this.hooks.onDenied(fresh);
      // Reconnect without the refused channels (the connection still serves later subscriptions).
      this.scheduleReconnect(`${status}: ${msg}`, 0, false);
    } else if (status === 429) {
      this.scheduleReconnect(`too many connections: ${msg}`, retryAfter * 1000);
    } else {
      this.scheduleReconnect(status ? `${status}: ${msg}` : 'connection failed');
    }
  }

  private scheduleReconnect(error: string, minDelay = 0, countAttempt = true): void {
    if (this.stopped) return;
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    const delay = countAttempt ? Math.max(minDelay, backoffDelay(this.attempt, this.cfg.backoff, this.cfg.random)) : minDelay;
    if (countAttempt) this.attempt++;
    this.cfg.log('sse: reconnect in', delay, 'ms:', error);
    this.setStatus('reconnecting', { connectionId: null, attempt: this.attempt, error });
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      void this.open();
    }, delay);
  }

  private async reconcile(): Promise<void> {
    if (this.stopped || this.status !== 'open' || !this.connectionId) return;
    if (this.reconcileInflight) {
      this.reconcileDirty = true;
      return;
    }
    const desired = new Set(this.wanted());
    const add = Array.from(desired).filter((c) => !this.granted.has(c));
    const remove = Array.from(this.granted).filter((c) => !desired.has(c));
    if (add.length === 0 && remove.length === 0) return;

    const gen = this.gen;
    const connectionId = this.connectionId;
    this.reconcileInflight = true;
    let retry = false;
    try {
      const token = await this.ensureToken();
      if (gen !== this.gen) return;
      const res = await this.cfg.fetch(this.url(this.cfg.paths.subscriptions), {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${token}` },
        body: JSON.stringify({ connection_id: connectionId, add, remove }),
        credentials: 'include',
      });
      if (gen !== this.gen) return;
      if (res.ok) {
        const info = (await res.json()) as SubscriptionsInfo;
        if (gen !== this.gen) return;
        this.reconcileFailures = 0;
        this.granted = new Set(info.channels ?? []);
        const fresh = this.absorbDenied(info.denied ?? []);
        this.hooks.onState({ channels: Array.from(this.granted).sort(), denied: this.deniedList() });
        if (fresh.length) this.hooks.onDenied(fresh);
      } else if (res.status === 404 || res.status === 403) {
        // The connection is gone (or is not ours any more): a new one carries the full list.
        this.reconnectNow();
      } else if (res.status === 401) {
        this.tokenStale = true;
        this.tokenReason = 'unauthorized';
        retry = true;
      } else if (res.status === 400) {
        const msg = await errorText(res);
        const fresh = this.absorbDenied(add.map((channel) => ({ channel, reason: `rejected: ${msg}` })));
        this.emitDeniedState();
        if (fresh.length) this.hooks.onDenied(fresh);
        if (remove.length) retry = true;
      } else {
        retry = true;
      }
    } catch (err) {
      this.cfg.log('sse: subscriptions failed', err);
      retry = true;
    } finally {
      this.reconcileInflight = false;
    }
    if (gen !== this.gen || this.stopped) return;
    if (retry) {
      const delay = backoffDelay(this.reconcileFailures++, this.cfg.backoff, this.cfg.random);
      if (this.reconcileTimer) clearTimeout(this.reconcileTimer);
      this.reconcileTimer = setTimeout(() => {
        this.reconcileTimer = null;
        void this.reconcile();
      }, delay);
    } else if (this.reconcileDirty) {
      this.reconcileDirty = false;
      void this.reconcile();
    }
  }
}

function parse<T>(data: unknown): T | null {
  if (typeof data !== 'string') return null;
  try {
    return JSON.parse(data) as T;
  } catch {
    return null;
  }
}

function errMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

async function errorText(res: Response): Promise<string> {
  try {
    const text = await res.text();
    try {
      const j = JSON.parse(text);
      if (j && typeof j.error === 'string') return j.error;
    } catch {
      /* not JSON */
    }
    return text.slice(0, 200);
  } catch {
    return '';
  }
}

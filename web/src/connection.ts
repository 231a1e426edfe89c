/**
 * One gateway connection: session-cookie exchange, the EventSource, live subscription changes
 * (`SubscriptionSync`), and reconnect with backoff + jitter from the last cursor. Its life is one
 * `ConnectionState` at a time, changed only by `transition()`. In a multi-tab setup only the
 * leader tab runs one of these.
 */
import { backoffDelay } from './backoff.js';
import { DENIAL_POLICY, Denials, fromGatewayList } from './denials.js';
import { jwtExpiry } from './jwt.js';
import { SubscriptionSync, type SyncOutcome, type SyncTarget } from './subsync.js';
import type {
  BackoffOptions,
  ConnectionState,
  ConnectionStatus,
  ConnectionTransition,
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
  /** `size`: the message's length on the wire (for bounded buffers). */
  onMessage(message: SSEMessage, size: number): void;
  /** `sent`: the cursor this stream was opened with (null: none). */
  onReady(info: ReadyInfo, sent: string | null): void;
  onGap(channels: string[]): void;
  /** Newly refused channels (gateway denial, or malformed names). */
  onDenied(denied: DeniedChannel[]): void;
  onExpired(): void;
  /** The gateway closed the stream with `event: revoked`. */
  onRevoked(reason: string): void;
  /** The stream's `subscriptions` event (its channel set changed, in stream order). */
  onSubscriptions(info: SubscriptionsInfo): void;
  /** These channels are about to leave the stream. */
  onRemoving(channels: string[]): void;
  /** A token from the provider was accepted for use (called for each new one). */
  onToken(token: string): void;
  onState(patch: Partial<SSEState>): void;
  onTransition(t: ConnectionTransition): void;
}

const CLOSED = 2;
/** An expiry within this many ms after `ready` counts as a failed attempt (guards against refresh loops). */
const EXPIRY_LOOP_MS = 2000;
/** Tokens this close to `exp` are refreshed before use. */
const TOKEN_MARGIN_MS = 5000;

/** One state and what it owns: leaving it aborts `signal`, so work started in it stops. */
interface Phase {
  readonly state: ConnectionState;
  readonly abort: AbortController;
}

class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

export class Connection {
  private phase: Phase = { state: 'idle', abort: new AbortController() };
  private es: EventSourceLike | null = null;
  private timer: ReturnType<typeof setTimeout> | null = null;
  /** True once the stream was opened before (or started from a cursor): status says `reconnecting`. */
  private resumed = false;
  private token: string | null = null;
  private tokenStale = false;
  private tokenReason: TokenReason = 'initial';
  private tokenPromise: Promise<string> | null = null;
  private connectionId: string | null = null;
  private granted = new Set<string>();
  private readonly denials = new Denials();
  private lastEventId: string | null = null;
  private attempt = 0;
  private connects = 0;
  private openedAt = 0;
  private readonly sync: SubscriptionSync;

  constructor(
    private readonly cfg: ConnectionConfig,
    private readonly hooks: ConnectionHooks,
  ) {
    this.sync = new SubscriptionSync(
      { target: () => this.syncTarget(), send: (t, add, remove, signal) => this.sendChanges(t, add, remove, signal) },
      cfg.backoff,
      cfg.random,
    );
  }

  get state(): ConnectionState {
    return this.phase.state;
  }

  get cursor(): string | null {
    return this.lastEventId;
  }

  get id(): string | null {
    return this.connectionId;
  }

  get running(): boolean {
    return this.phase.state !== 'idle' && this.phase.state !== 'stopped';
  }

  /**
   * Opens the stream; `resumeFrom` is a cursor to resume after (taking over from another tab, or
   * restored from the previous page). `takeover`: this tab takes over a connection another tab
   * held (the status says `reconnecting`, not `connecting`).
   */
  start(resumeFrom: string | null = null, takeover = resumeFrom !== null): void {
    if (this.phase.state !== 'idle') return;
    if (resumeFrom) this.lastEventId = resumeFrom;
    if (takeover) this.resumed = true;
    this.refuseMalformed();
    void this.connect();
  }

  /** Forgets the resume cursor (the next stream starts at the log's head). */
  resetCursor(): void {
    this.lastEventId = null;
  }

  stop(): void {
    if (this.phase.state === 'stopped') return;
    this.transition('stopped', { connectionId: null, channels: [] });
  }

  /** Drops the current stream and opens a new one at once (same cursor). */
  reconnectNow(): void {
    if (!this.running) return;
    this.resumed = true;
    void this.connect();
  }

  /** The set of wanted channels changed: sync it with the gateway (batched in a microtask). */
  channelsChanged(): void {
    if (!this.running) return;
    const forgot = this.denials.keepOnly(new Set(this.hooks.desired()));
    if (!this.refuseMalformed() && forgot) this.emitDenied();
    this.sync.request();
  }

  // ---- the state machine -------------------------------------------------------------------

  /**
   * The only place the state changes. Leaving a state undoes what it owned: its async work
   * (aborted), the EventSource (leaving `connecting`/`open`), the stream's subscription sync
   * (leaving `open`), the backoff timer (leaving `waiting`).
   */
  private transition(next: ConnectionState, patch: Partial<SSEState> = {}): Phase {
    const old = this.phase;
    old.abort.abort();
    const streaming = (s: ConnectionState) => s === 'connecting' || s === 'open';
    if (streaming(old.state) && !(old.state === 'connecting' && next === 'open')) this.closeEventSource();
    if (old.state === 'open') this.sync.reset();
    if (old.state === 'waiting' && this.timer) {
      clearTimeout(this.timer);
      this.timer = null;
    }
    if (next !== 'open') this.connectionId = null;
    if (next === 'stopped') this.granted.clear();
    this.phase = { state: next, abort: new AbortController() };
    this.hooks.onState({ status: this.statusOf(next), ...(next === 'open' ? {} : { connectionId: null }), ...patch });
    this.hooks.onTransition({ newState: next, oldState: old.state });
    if (next === 'open' || next === 'waiting') this.resumed = true;
    return this.phase;
  }

  private statusOf(state: ConnectionState): ConnectionStatus {
    switch (state) {
      case 'idle':
        return 'idle';
      case 'open':
        return 'open';
      case 'waiting':
        return 'reconnecting';
      case 'stopped':
        return 'closed';
      case 'revoked':
        return 'revoked';
      default:
        return this.resumed ? 'reconnecting' : 'connecting';
    }
  }

  // ---- one attempt: authorizing -> connecting -> open ----------------------------------------

  private async connect(): Promise<void> {
    const phase = this.transition('authorizing');
    try {
      await this.exchangeSession(phase.abort.signal);
    } catch (err) {
      if (!phase.abort.signal.aborted) this.waitAndRetry(errMessage(err));
      return;
    }
    if (phase.abort.signal.aborted) return;

    const requested = this.wanted(true);
    const params = new URLSearchParams();
    for (const ch of requested) params.append('channels', ch);
    const sent = this.lastEventId;
    if (sent) params.set('last_event_id', sent);
    const qs = params.toString();
    const url = this.url(this.cfg.paths.sse) + (qs ? `?${qs}` : '');
    this.cfg.log('sse: open', url);

    let es: EventSourceLike;
    try {
      es = new this.cfg.EventSource(url, { withCredentials: this.cfg.withCredentials });
    } catch (err) {
      this.waitAndRetry(errMessage(err));
      return;
    }
    this.transition('connecting');
    this.es = es;
    this.connects++;
    this.hooks.onState({ connects: this.connects });
    this.listen(es, url, requested, sent);
  }

  /**
   * Wires the EventSource. Every handler goes through `ours`: events of a stream this connection
   * has since closed are ignored.
   */
  private listen(es: EventSourceLike, url: string, requested: string[], sent: string | null): void {
    const ours =
      <E>(fn: (e: E) => void) =>
      (e: E) => {
        if (this.es === es) fn(e);
      };

    es.addEventListener('ready', ours((e) => this.onReady(e, sent)));
    es.addEventListener(
      'gap',
      ours((e) => {
        const info = parse<{ channels?: string[] }>(e.data) ?? {};
        this.hooks.onGap(info.channels ?? Array.from(this.granted));
      }),
    );
    es.addEventListener(
      'subscriptions',
      ours((e) => {
        const info = parse<{ channels?: string[]; denied?: unknown[] }>(e.data);
        if (!info) return;
        const channels = info.channels ?? [];
        const denied = fromGatewayList(info.denied);
        this.setGranted(channels);
        const fresh = this.denials.add(denied);
        this.hooks.onState({ channels: this.grantedList(), denied: this.denials.list() });
        this.hooks.onSubscriptions({ channels, denied });
        if (fresh.length) this.hooks.onDenied(fresh);
      }),
    );
    es.addEventListener(
      'expired',
      ours(() => {
        this.tokenStale = true;
        this.tokenReason = 'expired';
        const established = this.phase.state === 'open' && Date.now() - this.openedAt > EXPIRY_LOOP_MS;
        this.closeEventSource();
        this.hooks.onExpired();
        if (established) void this.connect();
        else this.waitAndRetry('token expired');
      }),
    );
    es.addEventListener(
      'revoked',
      ours((e) => {
        const info = parse<{ reason?: unknown }>(e.data) ?? {};
        const reason = typeof info.reason === 'string' && info.reason ? info.reason : 'revoked';
        // Closed before the stream's end reaches the EventSource, which would reconnect by itself.
        this.closeEventSource();
        const revokedToken = this.token;
        this.tokenStale = true;
        this.tokenReason = 'revoked';
        const phase = this.transition('revoked', { error: `revoked: ${reason}`, revoked: { reason, at: Date.now() } });
        this.hooks.onRevoked(reason);
        void this.afterRevoked(phase, revokedToken);
      }),
    );
    es.onmessage = ours((e: MessageEvent) => {
      const msg = parse<SSEMessage>(e.data);
      if (!msg || typeof msg.channel !== 'string') return;
      if (msg.snapshot === true) {
        // The channel's latest event, sent ahead of the live ones: no cursor to resume from (the
        // EventSource's lastEventId is still the previous event's).
        if (typeof msg.id !== 'string') msg.id = '';
      } else {
        delete msg.snapshot;
        const id = (e.lastEventId as string | undefined) || msg.id;
        if (!msg.id && id) msg.id = id;
        if (id) this.lastEventId = id;
      }
      this.hooks.onMessage(msg, (e.data as string).length);
    });
    es.onerror = ours(() => {
      const refused = es.readyState === CLOSED && this.phase.state === 'connecting';
      this.closeEventSource();
      if (refused) void this.diagnose(url, requested);
      else this.waitAndRetry('connection lost');
    });
  }

  private onReady(e: MessageEvent, sent: string | null): void {
    const info = parse<{ connection_id?: string; cursor?: string | null; channels?: string[]; denied?: unknown[] }>(e.data);
    if (!info || typeof info.connection_id !== 'string') return;
    const cursor = typeof info.cursor === 'string' && info.cursor !== '' ? info.cursor : null;
    // The stream is complete after `cursor`: it becomes the resume point. It is the cursor we
    // sent when the gateway knows it (so it never moves ours backwards), else the log's head
    // (we had none, or a foreign one, e.g. the gateway restarted: `gap` follows). Adopting it
    // always means a reconnect before the first event misses nothing and a foreign cursor is
    // not sent again (which would report another gap). A null cursor changes nothing.
    if (cursor) this.lastEventId = cursor;
    const channels = info.channels ?? [];
    const denied = fromGatewayList(info.denied);
    this.setGranted(channels);
    const fresh = this.denials.add(denied);
    this.attempt = 0;
    this.openedAt = Date.now();
    this.connectionId = info.connection_id;
    this.transition('open', {
      connectionId: info.connection_id,
      channels: this.grantedList(),
      denied: this.denials.list(),
      attempt: 0,
      error: null,
      revoked: null,
    });
    this.hooks.onReady({ connection_id: info.connection_id, cursor, channels, denied }, sent);
    if (fresh.length) this.hooks.onDenied(fresh);
    // Subscribers that came or went while connecting.
    this.sync.request();
  }

  /**
   * The EventSource failed before `ready` and will not retry by itself (a non-200 answer).
   * EventSource hides the status, so ask once with fetch to decide what to do.
   */
  private async diagnose(url: string, requested: string[]): Promise<void> {
    const phase = this.transition('diagnosing');
    const signal = phase.abort.signal;
    let status = 0;
    let msg = '';
    let retryAfter = 0;
    const probe = new AbortController();
    signal.addEventListener('abort', () => probe.abort());
    try {
      const token = await this.ensureToken();
      const res = await this.cfg.fetch(url, {
        headers: { Accept: 'text/event-stream', Authorization: `Bearer ${token}` },
        credentials: 'include',
        signal: probe.signal,
      });
      status = res.status;
      if (res.ok) probe.abort();
      else {
        msg = await errorText(res);
        retryAfter = Number(res.headers.get('Retry-After')) || 0;
      }
    } catch {
      status = 0;
    }
    if (signal.aborted) return;
    this.cfg.log('sse: connect failed', status, msg);
    if (status === 401) {
      this.tokenStale = true;
      this.tokenReason = 'unauthorized';
      this.waitAndRetry(`unauthorized: ${msg}`);
    } else if ((status === 403 || status === 400) && requested.length > 0) {
      const reason = status === 403 ? msg || 'forbidden' : `rejected: ${msg || 'bad request'}`;
      const fresh = this.denials.add(requested.map((channel) => ({ channel, reason, source: 'server' as const })));
      this.emitDenied();
      if (fresh.length) this.hooks.onDenied(fresh);
      // Reconnect without the refused channels (the connection still serves later subscriptions).
      this.waitAndRetry(`${status}: ${msg}`, 0, false);
    } else if (status === 429) {
      this.waitAndRetry(`too many connections: ${msg}`, retryAfter * 1000);
    } else {
      this.waitAndRetry(status ? `${status}: ${msg}` : 'connection failed');
    }
  }

  /**
   * After `revoked`: asks the token provider once (reason `revoked`). Only a different token
   * opens a new stream; the same one (or none) leaves the connection revoked until `reconnect()`.
   */
  private async afterRevoked(phase: Phase, revokedToken: string | null): Promise<void> {
    let token: string;
    try {
      token = await this.ensureToken();
    } catch (err) {
      this.cfg.log('sse: revoked; no new token:', errMessage(err));
      return;
    }
    if (this.phase !== phase) return;
    if (token === revokedToken) {
      this.cfg.log('sse: revoked; the token provider returned the same token: not reconnecting');
      return;
    }
    void this.connect();
  }

  private waitAndRetry(error: string, minDelay = 0, countAttempt = true): void {
    if (!this.running) return;
    const delay = countAttempt ? Math.max(minDelay, backoffDelay(this.attempt, this.cfg.backoff, this.cfg.random)) : minDelay;
    if (countAttempt) this.attempt++;
    this.cfg.log('sse: reconnect in', delay, 'ms:', error);
    const phase = this.transition('waiting', { attempt: this.attempt, error });
    this.timer = setTimeout(() => {
      this.timer = null;
      if (this.phase === phase) void this.connect();
    }, delay);
  }

  // ---- tokens and the session cookie ---------------------------------------------------------

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
            if (this.denials.forgetWhere((p) => p.retryWithNewToken)) this.emitDenied();
          }
          if (t !== this.token) this.hooks.onToken(t);
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

  private async exchangeSession(signal: AbortSignal): Promise<void> {
    for (let round = 0; round < 2; round++) {
      const token = await this.ensureToken();
      if (signal.aborted) return;
      const res = await this.cfg.fetch(this.url(this.cfg.paths.session), {
        method: 'POST',
        headers: { Authorization: `Bearer ${token}` },
        credentials: 'include',
        signal,
      });
      if (res.ok) return;
      const msg = await errorText(res);
      if (res.status === 401) {
        this.tokenStale = true;
        this.tokenReason = 'unauthorized';
        if (round === 0) continue;
      }
      throw new HttpError(res.status, `session: ${res.status} ${msg}`);
    }
  }

  // ---- live subscription changes ---------------------------------------------------------------

  private syncTarget(): SyncTarget | null {
    if (this.phase.state !== 'open' || !this.connectionId) return null;
    return { connectionId: this.connectionId, granted: this.granted, wanted: this.wanted(false) };
  }

  private async sendChanges(target: SyncTarget, add: string[], remove: string[], signal: AbortSignal): Promise<SyncOutcome> {
    if (remove.length) this.hooks.onRemoving(remove);
    const token = await this.ensureToken();
    if (signal.aborted) return 'abandon';
    const res = await this.cfg.fetch(this.url(this.cfg.paths.subscriptions), {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${token}` },
      body: JSON.stringify({ connection_id: target.connectionId, add, remove }),
      credentials: 'include',
      signal,
    });
    if (signal.aborted) return 'abandon';
    if (res.ok) {
      const info = (await res.json()) as { channels?: string[]; denied?: unknown[] };
      if (signal.aborted) return 'abandon';
      this.setGranted(info.channels ?? []);
      const fresh = this.denials.add(fromGatewayList(info.denied));
      this.hooks.onState({ channels: this.grantedList(), denied: this.denials.list() });
      if (fresh.length) this.hooks.onDenied(fresh);
      return 'done';
    }
    if (res.status === 404 || res.status === 403) {
      // The connection is gone (or is not ours any more): a new one carries the full list.
      this.reconnectNow();
      return 'abandon';
    }
    if (res.status === 401) {
      this.tokenStale = true;
      this.tokenReason = 'unauthorized';
      return 'retry';
    }
    if (res.status === 400) {
      const msg = await errorText(res);
      const fresh = this.denials.add(add.map((channel) => ({ channel, reason: `rejected: ${msg}`, source: 'server' as const })));
      this.emitDenied();
      if (fresh.length) this.hooks.onDenied(fresh);
      return remove.length ? 'retry' : 'done';
    }
    return 'retry';
  }

  // ---- bookkeeping -----------------------------------------------------------------------------

  private url(path: string): string {
    return this.cfg.baseUrl.replace(/\/+$/, '') + path;
  }

  /** The channels to ask for: wanted minus refused (a new stream asks again where the policy says so). */
  private wanted(newStream: boolean): string[] {
    return this.hooks
      .desired()
      .filter((c) => {
        const d = this.denials.get(c);
        return !d || (newStream && DENIAL_POLICY[d.source].retryOnNewStream);
      })
      .sort();
  }

  private setGranted(channels: readonly string[]): void {
    this.granted = new Set(channels);
    // A channel granted now is no longer refused (e.g. asked again with a new token).
    this.denials.forget(channels);
  }

  private grantedList(): string[] {
    return Array.from(this.granted).sort();
  }

  private emitDenied(): void {
    this.hooks.onState({ denied: this.denials.list() });
  }

  /** Refuses malformed wanted channels locally; returns true if any was new. */
  private refuseMalformed(): boolean {
    const fresh = this.denials.refuseMalformed(this.hooks.desired());
    if (fresh.length) {
      this.emitDenied();
      this.hooks.onDenied(fresh);
    }
    return fresh.length > 0;
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

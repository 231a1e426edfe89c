/** One event published into a channel, as delivered on the SSE stream (SPEC section 5). */
export interface SSEMessage<T = unknown> {
  /** Concrete channel name, e.g. `logs:demo:etl-1`. */
  channel: string;
  /** Event type given by the publisher (`message` when it gave none). */
  event: string;
  /** Opaque cursor; strictly increasing in the order this connection receives events. */
  id: string;
  /** Gateway accept time, ms since the epoch. */
  ts: number;
  /** The published JSON value. */
  payload: T;
  /**
   * True for a channel's latest event sent ahead of the live ones (a fresh stream, a channel added
   * live, or after `gap`, on channel types configured with `snapshot`). It carries no cursor: the
   * client never resumes from it. `id` is then the original event's id when the gateway sent one, else ''.
   */
  snapshot?: boolean;
}

/**
 * - `idle`: nothing subscribed yet, no connection attempted.
 * - `connecting`: first connection in progress.
 * - `open`: the stream is up (the gateway sent `ready`).
 * - `reconnecting`: the stream dropped (or the token expired); a new one is being opened.
 * - `revoked`: the gateway closed the stream on purpose (`event: revoked`, e.g. the user signed out
 *   or was removed): `SSEState.revoked` says why. The client does not reconnect with the same
 *   token: it asks the token provider once (reason `revoked`) and reconnects only with a
 *   different token, or when the app calls `reconnect()`.
 * - `closed`: `close()` was called.
 */
export type ConnectionStatus = 'idle' | 'connecting' | 'open' | 'reconnecting' | 'revoked' | 'closed';

/** Why the gateway closed the stream (`event: revoked`). */
export interface RevokedInfo {
  /** The reason the app gave the gateway, for display. */
  reason: string;
  /** Local time (ms) it arrived. */
  at: number;
}

/**
 * How this tab takes part in the one-connection-per-browser scheme.
 * - `standalone`: this tab holds its own connection (no Web Locks / BroadcastChannel, or sharing disabled).
 * - `leader`: this tab holds the browser's connection and fans events out to the other tabs.
 * - `follower`: another tab holds the connection; events arrive over a BroadcastChannel.
 * - `pending`: not started yet.
 */
export type TabRole = 'pending' | 'standalone' | 'leader' | 'follower';

/**
 * Who refused a channel. Decides what the client does next (see `DENIAL_POLICY`), so nothing
 * depends on the wording of `reason`:
 * - `client`: refused here, before asking the gateway (a malformed name); never retried.
 * - `token`: the gateway says the token does not grant it; retried with the next new token.
 * - `authorizer`: the app's permission service refused it (or could not be asked); retried with a
 *   new token and on every new stream.
 * - `server`: any other refusal by the gateway (e.g. a limit); retried with the next new token.
 * The gateway's `denied` entries may carry a `source`; one without (or with an unknown one) is `server`.
 */
export type DenialSource = 'client' | 'token' | 'authorizer' | 'server';

export interface DeniedChannel {
  channel: string;
  /** Human-readable, for display. */
  reason: string;
  source: DenialSource;
}

export interface GapInfo {
  /** Channels for which events may have been missed: re-fetch their state. */
  channels: string[];
  /** Local time (ms) the gap was reported. */
  at: number;
}

/** A refusal as the gateway sends it (`ready.denied`, the subscriptions answer). */
export interface GatewayDenial {
  channel: string;
  reason: string;
  source?: string;
}

export interface ReadyInfo {
  connection_id: string;
  /**
   * The stream carries every event after this cursor: the resume cursor the client sent (when it
   * belongs to the gateway's current log, even if older than retention: then a `gap` follows),
   * else the log's head when the stream was registered (no cursor sent, or a foreign one, e.g.
   * the gateway restarted: a `gap` follows too). Null when the gateway did not send one (broker
   * unreachable, or an older gateway). The client always adopts a non-null one as its resume
   * cursor (it never moves a valid cursor backwards).
   */
  cursor: string | null;
  channels: string[];
  /** Refused channels (normalised: each with its `source`). */
  denied: DeniedChannel[];
}

export interface SubscriptionsInfo {
  channels: string[];
  /** Refused channels (normalised: each with its `source`). */
  denied: DeniedChannel[];
}

/** A snapshot of the client's connection, as seen from this tab. */
export interface SSEState {
  status: ConnectionStatus;
  role: TabRole;
  /** Gateway connection id (from `ready`) of the browser's one connection. */
  connectionId: string | null;
  /** Channels the gateway granted on the connection (all tabs together). */
  channels: string[];
  /** Channels that were refused (by the gateway, or locally as malformed). */
  denied: DeniedChannel[];
  /** Last error worth showing, or null. */
  error: string | null;
  /** Set when the gateway revoked the stream (status `revoked`); null again once a stream opens. */
  revoked: RevokedInfo | null;
  /** Consecutive failed attempts since the last successful `ready`. */
  attempt: number;
  /** How many EventSource objects this tab has opened (for diagnostics and tests). */
  connects: number;
  /** How many tabs share the connection (1 when standalone). */
  tabs: number;
}

/**
 * The life of the gateway connection, one state at a time (`Connection`'s only transition point
 * reports each change as `{ newState, oldState }`):
 * - `idle`: not started. - `authorizing`: getting a token and exchanging it for the session cookie.
 * - `connecting`: the EventSource is open, waiting for `ready`. - `open`: `ready` arrived.
 * - `diagnosing`: the EventSource failed before `ready`; asking the gateway why (status code).
 * - `waiting`: backing off before the next attempt. - `stopped`: `stop()` was called.
 * - `revoked`: the gateway revoked the stream; no attempt until a different token or `reconnect()`.
 */
export type ConnectionState = 'idle' | 'authorizing' | 'connecting' | 'open' | 'diagnosing' | 'waiting' | 'revoked' | 'stopped';

export interface ConnectionTransition {
  newState: ConnectionState;
  oldState: ConnectionState;
}

/** Where the client keeps its cursor and kept items between page loads. */
export type PersistMode = 'session' | 'none';

/** The part of the Web Storage API the client uses (`sessionStorage`, or a test double). */
export interface StorageLike {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

/** The part of `EventTarget` used for page lifecycle events. */
export interface PageEventsLike {
  addEventListener(type: string, listener: (e: Event) => void): void;
  removeEventListener(type: string, listener: (e: Event) => void): void;
}

/** Why the token provider is asked: `revoked` after the gateway revoked the stream (a provider
 * that returns the same token keeps the client from reconnecting). */
export type TokenReason = 'initial' | 'expired' | 'unauthorized' | 'revoked';

/** Returns the app's current JWT. Called again with `expired` / `unauthorized` when a fresh one is needed. */
export type TokenProvider = (ctx: { reason: TokenReason }) => string | Promise<string>;

export interface BackoffOptions {
  /** First retry delay, ms (default 1000). */
  initialMs: number;
  /** Ceiling, ms (default 30000). */
  maxMs: number;
  /** Growth per attempt (default 2). */
  factor: number;
  /** 0..1: share of the delay that is randomised (default 0.5). */
  jitter: number;
}

export interface EventSourceLike {
  readonly readyState: number;
  onmessage: ((ev: MessageEvent) => unknown) | null;
  onerror: ((ev: Event) => unknown) | null;
  onopen: ((ev: Event) => unknown) | null;
  addEventListener(type: string, listener: (ev: MessageEvent) => void): void;
  close(): void;
}

export type EventSourceCtor = new (url: string, init?: { withCredentials?: boolean }) => EventSourceLike;

export interface BroadcastChannelLike {
  postMessage(message: unknown): void;
  close(): void;
  onmessage: ((ev: MessageEvent) => unknown) | null;
}

export type BroadcastChannelCtor = new (name: string) => BroadcastChannelLike;

export interface LockManagerLike {
  request(
    name: string,
    options: { mode?: 'exclusive' | 'shared'; signal?: AbortSignal },
    callback: (lock: unknown) => Promise<unknown> | unknown,
  ): Promise<unknown>;
}

export type FetchLike = (input: string, init?: RequestInit) => Promise<Response>;

export interface SSEClientOptions {
  /** Gateway base URL, e.g. `https://rt.example.com`. Default: this page's origin. */
  url?: string;
  /** The app's token provider (JWT). */
  getToken: TokenProvider;
  /** Endpoint paths (defaults: `/api/sse`, `/api/sse/session`, `/api/sse/subscriptions`). */
  paths?: { sse?: string; session?: string; subscriptions?: string };
  /** Reconnect backoff. */
  backoff?: Partial<BackoffOptions>;
  /** Share one connection between all tabs of this origin (default true, when the browser can). */
  shareAcrossTabs?: boolean;
  /** Name of the Web Lock / BroadcastChannel used for sharing (default derived from the gateway URL). */
  shareKey?: string;
  /** Send cookies with the EventSource (default true: the session cookie authenticates it). */
  withCredentials?: boolean;
  /** How often a follower tab repeats its channel list to the leader, ms (default 5000). */
  tabHeartbeatMs?: number;
  /**
   * Keep the cursor and the kept items (`subscribe(…, { keep })`, `useSSESubscription`) in
   * `sessionStorage`, so a reload or a navigation to another page of this origin resumes where
   * this page stopped: no gap, no duplicate (default `session`; `none` keeps nothing).
   */
  persist?: PersistMode;
  /** Upper bound of the stored state, in characters of JSON (default 1 MiB): the oldest items go first. */
  persistMaxBytes?: number;
  /**
   * How long the channels of a page that went away (this tab's previous page, or another tab
   * being reloaded) stay on the connection so the next page can take over without a gap, ms
   * (default 10000).
   */
  lingerMs?: number;
  /** Storage to use instead of `sessionStorage` (tests, non-browser hosts). */
  storage?: StorageLike | null;
  /** Where page lifecycle events (`pagehide`, `pageshow`, `visibilitychange`, `freeze`) arrive (default: the global object). */
  pageEvents?: PageEventsLike | null;
  /** Injection points (tests, non-browser hosts). */
  fetch?: FetchLike;
  EventSource?: EventSourceCtor;
  BroadcastChannel?: BroadcastChannelCtor | null;
  locks?: LockManagerLike | null;
  random?: () => number;
  /** Debug logging. */
  log?: (...args: unknown[]) => void;
}

export type MessageHandler<T = unknown> = (message: SSEMessage<T>) => void;

export interface SubscribeOptions {
  /**
   * Keep the last `keep` messages of these channels (kept per channel; the largest `keep` of a
   * channel's subscriptions wins). They are what `history()` returns, and with `persist` they
   * survive a reload or a navigation together with the cursor.
   */
  keep?: number;
  /** Called when the gateway reports a gap on one of these channels (re-fetch state). */
  onGap?: (gap: GapInfo) => void;
  /** Called when one of these channels is denied. */
  onDenied?: (denied: DeniedChannel[]) => void;
}

export interface ClientEvents {
  message: SSEMessage;
  gap: GapInfo;
  denied: DeniedChannel[];
  expired: { at: number };
  /** The gateway closed the stream with `event: revoked`. */
  revoked: RevokedInfo;
  ready: ReadyInfo;
  subscriptions: SubscriptionsInfo;
  state: SSEState;
  /** The kept items were dropped (the stored ones belonged to another user): re-read `history()`. */
  reset: { at: number };
  /** Each step of the gateway connection's life (in the tab that holds it). */
  connection: ConnectionTransition;
}

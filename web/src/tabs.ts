/**
 * One connection per browser: the tabs of an origin elect a leader with Web Locks and talk over a
 * BroadcastChannel. The leader holds the gateway connection and relays what it receives; the
 * others tell it which channels they want. This module is the protocol only — who leads, who is
 * there, what each tab wants — and knows nothing of the gateway.
 *
 * Liveness without timers (browsers throttle them in hidden tabs): each tab holds a lock named
 * after itself for its whole life; the leader queues for every other tab's lock and learns that a
 * tab is gone (closed, crashed, discarded) when it is granted that lock.
 *
 * A page that goes away (`pagehide`) may leave its channels "lingering" for `lingerMs`: a reload
 * or a navigation in that tab then finds them still on the connection, and its next page asks the
 * leader for what it missed since its stored cursor (catch-up).
 */
import { normalizeChannels } from './channels.js';
import type { JournalItem } from './journal.js';
import type {
  BroadcastChannelCtor,
  BroadcastChannelLike,
  ClientEvents,
  DeniedChannel,
  GapInfo,
  LockManagerLike,
  PageEventsLike,
  SSEMessage,
  SSEState,
} from './types.js';

/** What the leader relays to the other tabs as it happens. */
export type Relay =
  | { k: 'msg'; m: SSEMessage }
  | { k: 'gap'; gap: GapInfo }
  | { k: 'denied'; denied: DeniedChannel[] }
  | { k: 'expired'; at: number }
  | { k: 'revoked'; info: ClientEvents['revoked'] }
  | { k: 'ready'; info: ClientEvents['ready'] }
  | { k: 'subscriptions'; info: ClientEvents['subscriptions'] };

/** The leader's view, sent to every tab after changes. */
export interface LeaderState {
  state: Partial<SSEState>;
  cursor: string | null;
  /** The token's `sub`, so a tab can tell whether its stored state is this user's. */
  sub: string | null;
}

/** The leader's answer to a tab that came back with a stored cursor. */
export interface CatchUpReply {
  items: JournalItem[];
  uncovered: string[];
  /** The leader's cursor when it answered: the tab is complete up to it. */
  cursor: string | null;
}

type Message =
  | { t: 'hello' | 'subs'; from: string; channels: string[]; since?: string | null; replaces?: string }
  | { t: 'bye'; from: string; linger?: string[] }
  | { t: 'leader'; from: string }
  | { t: 'relay'; from: string; r: Relay }
  | { t: 'state'; from: string; s: LeaderState; tabs: Record<string, string[]>; lingering: Record<string, number> }
  | { t: 'catchup'; from: string; to: string; reply: CatchUpReply };

export interface TabHost {
  /** The channels this tab wants (its subscriptions and its previous page's lingering ones). */
  channels(): string[];
  /** While this tab still needs what it missed: its stored cursor, sent along with its channels. */
  catchUpSince(): string | null;
  /** The tab that stored this page's state (the previous page of this tab), if any. */
  replaces(): string | null;
  /** Channels to leave lingering when this page goes away. */
  lingerOnHide(): string[];
  becomeLeader(): void;
  /** Leader: another tab's wishes changed. */
  othersChanged(): void;
  /** Leader: a tab asks what it missed since `since` on `channels` (answer with `sendCatchUp`). */
  catchUpRequested(tab: string, since: string, channels: string[]): void;
  /** Follower: the leader relayed something. */
  relayed(r: Relay): void;
  /** Follower: the leader's state. */
  leaderState(s: LeaderState, tabs: number): void;
  /** Follower: the answer to this tab's catch-up request. */
  caughtUp(reply: CatchUpReply): void;
  /** Follower: the leader said goodbye (another tab takes over). */
  leaderLeft(): void;
}

export interface TabGroupOptions {
  shareKey: string;
  BroadcastChannel: BroadcastChannelCtor;
  locks: LockManagerLike;
  heartbeatMs: number;
  lingerMs: number;
  page: PageEventsLike | null;
  log: (...args: unknown[]) => void;
}

interface OtherTab {
  channels: string[];
  /** Set when the tab went away but its channels stay for a while (ms since the epoch). */
  lingerUntil?: number;
}

export class TabGroup {
  readonly id: string;
  private role: 'pending' | 'leader' | 'follower' = 'pending';
  private bc: BroadcastChannelLike | null = null;
  private leaderId: string | null = null;
  /** Other tabs' wanted channels. Authoritative on the leader; a mirror on followers, for takeover. */
  private tabs = new Map<string, OtherTab>();
  /** Leader: one queued lock request per other tab; it is granted when that tab is gone. */
  private watchers = new Map<string, AbortController>();
  private abort = new AbortController();
  private releaseLeaderLock: (() => void) | null = null;
  /** Releases this tab's own liveness lock (held for the tab's lifetime). */
  private releaseTabLock: (() => void) | null = null;
  private heartbeat: ReturnType<typeof setInterval> | null = null;
  private lingerTimer: ReturnType<typeof setTimeout> | null = null;
  private closed = false;
  /** Between `pagehide` and `pageshow`: this page is going away (a later `close()` must not undo the lingering). */
  private leaving = false;
  private readonly onPageHide = () => {
    this.leaving = true;
    const linger = this.host.lingerOnHide();
    this.post({ t: 'bye', from: this.id, ...(linger.length ? { linger } : {}) });
  };
  private readonly onPageShow = (e: Event) => {
    this.leaving = false;
    // Back from the back/forward cache: tell the leader again what this tab wants.
    if ((e as PageTransitionEvent).persisted) this.announce('hello');
  };

  constructor(
    id: string,
    private readonly o: TabGroupOptions,
    private readonly host: TabHost,
  ) {
    this.id = id;
  }

  get isLeader(): boolean {
    return this.role === 'leader';
  }

  /** Whether this tab's liveness lock is held (before that, `hello` has not been sent). */
  get announced(): boolean {
    return this.releaseTabLock !== null;
  }

  /** Joins the group; false when a BroadcastChannel cannot be opened (the caller goes standalone). */
  start(): boolean {
    try {
      this.bc = new this.o.BroadcastChannel(this.o.shareKey);
    } catch {
      return false;
    }
    this.bc.onmessage = (e: MessageEvent) => this.receive(e.data as Message);
    this.role = 'follower';
    const signal = this.abort.signal;
    // 1. A lock only this tab holds, for as long as it lives.
    this.o.locks
      .request(this.lockName(this.id), { mode: 'exclusive', signal }, () => {
        if (this.closed) return undefined;
        return new Promise<void>((resolve) => {
          this.releaseTabLock = resolve;
          // 2. Only now announce this tab, and queue for leadership.
          this.announce('hello');
          this.o.locks
            .request(this.o.shareKey, { mode: 'exclusive', signal }, () => {
              if (this.closed) return undefined;
              return new Promise<void>((release) => {
                this.releaseLeaderLock = release;
                this.lead();
              });
            })
            .catch(() => {
              /* aborted by close() */
            });
        });
      })
      .catch(() => {
        /* aborted by close() */
      });
    this.heartbeat = setInterval(() => {
      // Followers repeat what they want now and then, in case a message was lost in a leader change.
      if (!this.closed && this.role === 'follower' && this.announced) this.announce('subs');
    }, this.o.heartbeatMs);
    this.o.page?.addEventListener('pagehide', this.onPageHide);
    this.o.page?.addEventListener('pageshow', this.onPageShow);
    return true;
  }

  /** Leaves the group (no lingering, unless the page is going away): another tab takes over if this one led. */
  close(): void {
    if (this.closed) return;
    if (!this.leaving) this.post({ t: 'bye', from: this.id });
    this.closed = true;
    this.releaseLeaderLock?.();
    this.releaseLeaderLock = null;
    this.releaseTabLock?.();
    this.releaseTabLock = null;
    this.abort.abort();
    for (const w of this.watchers.values()) w.abort();
    this.watchers.clear();
    this.bc?.close();
    this.bc = null;
    if (this.heartbeat) clearInterval(this.heartbeat);
    this.heartbeat = null;
    if (this.lingerTimer) clearTimeout(this.lingerTimer);
    this.lingerTimer = null;
    this.o.page?.removeEventListener('pagehide', this.onPageHide);
    this.o.page?.removeEventListener('pageshow', this.onPageShow);
  }

  /** Follower: tells the leader what this tab wants now (and, while catching up, since when). */
  announce(kind: 'hello' | 'subs' = 'subs'): void {
    if (!this.bc || !this.announced) return;
    const since = this.host.catchUpSince();
    const replaces = this.host.replaces();
    this.post({
      t: kind,
      from: this.id,
      channels: this.host.channels(),
      ...(since ? { since } : {}),
      ...(replaces ? { replaces } : {}),
    });
  }

  /** Leader: every other tab's channels, lingering ones included. */
  othersChannels(): string[] {
    const set = new Set<string>();
    for (const t of this.tabs.values()) for (const c of t.channels) set.add(c);
    return Array.from(set);
  }

  /** Tabs sharing the connection, this one included (lingering ones are not counted). */
  count(): number {
    let n = 1;
    for (const t of this.tabs.values()) if (t.lingerUntil === undefined) n++;
    return n;
  }

  /** Leader: relays an event to the other tabs. */
  relay(r: Relay): void {
    if (this.role === 'leader') this.post({ t: 'relay', from: this.id, r });
  }

  /** Leader: answers a tab's catch-up request. */
  sendCatchUp(to: string, reply: CatchUpReply): void {
    if (this.role === 'leader') this.post({ t: 'catchup', from: this.id, to, reply });
  }

  /** Leader: sends its state (batched by the caller). */
  sendState(s: LeaderState): void {
    if (this.role !== 'leader' || this.closed) return;
    const tabs: Record<string, string[]> = { [this.id]: this.host.channels() };
    const lingering: Record<string, number> = {};
    const now = Date.now();
    for (const [id, t] of this.tabs) {
      tabs[id] = t.channels;
      if (t.lingerUntil !== undefined) lingering[id] = Math.max(0, t.lingerUntil - now);
    }
    this.post({ t: 'state', from: this.id, s, tabs, lingering });
  }

  // ---- internals ---------------------------------------------------------------------------

  private lockName(tabId: string): string {
    return `${this.o.shareKey}#tab:${tabId}`;
  }

  private post(msg: Message): void {
    if (!this.bc) return;
    try {
      this.bc.postMessage(msg);
    } catch (err) {
      this.o.log('sse: broadcast failed', err);
    }
  }

  private lead(): void {
    if (this.closed) return;
    this.o.log('sse: this tab leads', this.id);
    const previous = this.leaderId;
    if (previous && previous !== this.id && this.tabs.get(previous)?.lingerUntil === undefined) this.tabs.delete(previous);
    this.leaderId = this.id;
    this.role = 'leader';
    for (const id of this.tabs.keys()) this.watch(id);
    this.scheduleLingerEnd();
    this.post({ t: 'leader', from: this.id });
    this.host.becomeLeader();
  }

  /** Leader: drop a tab's channels as soon as its liveness lock is free (it is gone). */
  private watch(tabId: string): void {
    if (this.watchers.has(tabId) || tabId === this.id) return;
    const ac = new AbortController();
    this.watchers.set(tabId, ac);
    this.o.locks
      .request(this.lockName(tabId), { mode: 'exclusive', signal: ac.signal }, () => {
        if (this.watchers.get(tabId) === ac) this.watchers.delete(tabId);
        if (this.closed || this.role !== 'leader') return;
        const t = this.tabs.get(tabId);
        if (!t || t.lingerUntil !== undefined) return; // a lingering tab stays until its time is up
        this.o.log('sse: tab gone', tabId);
        this.tabs.delete(tabId);
        this.host.othersChanged();
      })
      .catch(() => {
        /* aborted */
      });
  }

  private unwatch(tabId: string): void {
    this.watchers.get(tabId)?.abort();
    this.watchers.delete(tabId);
  }

  /** Leader: ends lingering entries whose time is up, and sets a timer for the next one. */
  private scheduleLingerEnd(): void {
    if (this.lingerTimer) clearTimeout(this.lingerTimer);
    this.lingerTimer = null;
    if (this.role !== 'leader' || this.closed) return;
    const now = Date.now();
    let next = Infinity;
    let changed = false;
    for (const [id, t] of Array.from(this.tabs)) {
      if (t.lingerUntil === undefined) continue;
      if (t.lingerUntil <= now) {
        this.tabs.delete(id);
        this.unwatch(id);
        changed = true;
      } else next = Math.min(next, t.lingerUntil);
    }
    if (next !== Infinity) this.lingerTimer = setTimeout(() => this.scheduleLingerEnd(), next - now);
    if (changed) this.host.othersChanged();
  }

  private receive(msg: Message): void {
    if (this.closed || !msg || typeof msg !== 'object' || msg.from === this.id) return;
    const leader = this.role === 'leader';
    switch (msg.t) {
      case 'hello':
      case 'subs': {
        const channels = normalizeChannels(msg.channels);
        let changed = false;
        // The page this one replaces (the tab's previous page) — only once that one has gone: a
        // duplicated tab starts from a copy of the state of a tab that is still there.
        if (msg.replaces && msg.replaces !== msg.from && this.tabs.get(msg.replaces)?.lingerUntil !== undefined) {
          this.tabs.delete(msg.replaces);
          changed = true;
          if (leader) this.unwatch(msg.replaces);
        }
        const prev = this.tabs.get(msg.from);
        this.tabs.set(msg.from, { channels });
        if (!prev || prev.lingerUntil !== undefined || prev.channels.join('\n') !== channels.join('\n')) changed = true;
        if (!leader) break;
        this.watch(msg.from);
        if (changed) this.host.othersChanged();
        if (typeof msg.since === 'string' && msg.since) this.host.catchUpRequested(msg.from, msg.since, channels);
        break;
      }
      case 'bye': {
        const t = this.tabs.get(msg.from);
        const linger = normalizeChannels(msg.linger ?? []);
        if (linger.length) {
          this.tabs.set(msg.from, { channels: linger, lingerUntil: Date.now() + this.o.lingerMs });
          if (leader) {
            this.scheduleLingerEnd();
            if (!t || t.channels.join('\n') !== linger.join('\n')) this.host.othersChanged();
          }
        } else {
          if (this.tabs.delete(msg.from) && leader) this.host.othersChanged();
          this.unwatch(msg.from);
        }
        if (!leader && msg.from === this.leaderId) {
          this.leaderId = null;
          this.host.leaderLeft();
        }
        break;
      }
      case 'leader':
        if (leader) break; // cannot happen with Web Locks; ignore
        this.leaderId = msg.from;
        this.tabs.delete(msg.from);
        this.announce('subs');
        break;
      case 'state': {
        if (leader) break;
        this.leaderId = msg.from;
        this.tabs.clear();
        const now = Date.now();
        for (const [id, channels] of Object.entries(msg.tabs ?? {})) {
          if (id === this.id) continue;
          const left = msg.lingering?.[id];
          this.tabs.set(id, typeof left === 'number' ? { channels, lingerUntil: now + left } : { channels });
        }
        this.host.leaderState(msg.s, this.count());
        const mine = this.host.channels().join('\n');
        if (this.announced && (msg.tabs?.[this.id] ?? []).join('\n') !== mine) this.announce('subs');
        break;
      }
      case 'relay':
        if (!leader) this.host.relayed(msg.r);
        break;
      case 'catchup':
        if (!leader && msg.to === this.id) this.host.caughtUp(msg.reply);
        break;
    }
  }
}

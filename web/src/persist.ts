/**
 * The client's state between page loads of one tab (`sessionStorage`): the cursor and the kept
 * items, written together as ONE value so that they always match — the stored items are exactly
 * the kept messages up to the stored cursor. A reload resumes from that cursor: the gateway (or
 * the leader tab) sends what came after it, so nothing is missed and nothing is shown twice.
 *
 * Writes are throttled (a burst costs a few writes, not one per event) and flushed when the page
 * is hidden or goes away (`visibilitychange`, `pagehide`, `freeze`). A page killed without those
 * leaves an older, still consistent value behind: more is replayed, nothing is lost.
 */
import type { PageEventsLike, StorageLike } from './types.js';
import type { KeptItems } from './history.js';

const VERSION = 1;

export interface StoredState {
  cursor: string | null;
  /** The token's `sub` when it was written (a page of another user must not see these items). */
  sub: string | null;
  /** The page's channels: they stay on the connection for a while, for the next page to take over. */
  channels: string[];
  /** The tab (page) that wrote it: the next page tells the leader tab it takes that one's place. */
  tab: string;
  items: KeptItems;
  /** How many items each channel keeps. */
  keep: Record<string, number>;
}

/** What a write stores, with the items already serialised within the budget. */
export interface StateToWrite {
  cursor: string | null;
  sub: string | null;
  channels: string[];
  tab: string;
  keep: Record<string, number>;
  /** `budget` → the items as JSON, oldest dropped to fit. */
  items: (budget: number) => string;
}

export class Persistence {
  private dirty = false;
  private timer: ReturnType<typeof setTimeout> | null = null;
  private closed = false;
  /**
   * After `pagehide`: the value written then is what the next page starts from; nothing later
   * (e.g. the app unmounting its components on unload) may replace it. `pageshow` ends it.
   */
  private leaving = false;
  private readonly onHide = (e: Event) => {
    this.flush();
    if (e.type === 'pagehide') this.leaving = true;
  };
  private readonly onShow = () => {
    this.leaving = false;
  };
  private readonly onVisibility = () => {
    if ((globalThis as { document?: { visibilityState?: string } }).document?.visibilityState === 'hidden') this.flush();
  };

  constructor(
    private readonly storage: StorageLike,
    private readonly key: string,
    private readonly budget: number,
    private readonly collect: () => StateToWrite,
    private readonly log: (...args: unknown[]) => void,
    private readonly page: PageEventsLike | null,
    private readonly throttleMs = 200,
  ) {
    page?.addEventListener('pagehide', this.onHide);
    page?.addEventListener('pageshow', this.onShow);
    page?.addEventListener('freeze', this.onHide);
    page?.addEventListener('visibilitychange', this.onVisibility);
  }

  /** The stored state, or null (none, unreadable, or another version). */
  load(): StoredState | null {
    let raw: string | null = null;
    try {
      raw = this.storage.getItem(this.key);
    } catch {
      return null;
    }
    if (!raw) return null;
    try {
      const s = JSON.parse(raw) as Partial<StoredState> & { v?: number };
      if (s.v !== VERSION) return null;
      return {
        cursor: typeof s.cursor === 'string' && s.cursor ? s.cursor : null,
        sub: typeof s.sub === 'string' ? s.sub : null,
        channels: Array.isArray(s.channels) ? s.channels.filter((c): c is string => typeof c === 'string') : [],
        tab: typeof s.tab === 'string' ? s.tab : '',
        items: s.items && typeof s.items === 'object' ? (s.items as KeptItems) : {},
        keep: s.keep && typeof s.keep === 'object' ? (s.keep as Record<string, number>) : {},
      };
    } catch {
      return null;
    }
  }

  /** Something to store changed: write soon. */
  changed(): void {
    if (this.closed) return;
    this.dirty = true;
    if (this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      this.flush();
    }, this.throttleMs);
  }

  /** Writes now if anything changed since the last write. */
  flush(): void {
    if (this.timer) {
      clearTimeout(this.timer);
      this.timer = null;
    }
    if (!this.dirty || this.closed || this.leaving) return;
    this.dirty = false;
    const s = this.collect();
    // A full storage: try again with less, then store nothing rather than something stale.
    for (const budget of [this.budget, Math.floor(this.budget / 8), 0]) {
      try {
        const items = s.items(budget);
        this.storage.setItem(
          this.key,
          `{"v":${VERSION},"cursor":${JSON.stringify(s.cursor)},"sub":${JSON.stringify(s.sub)},"tab":${JSON.stringify(s.tab)},"channels":${JSON.stringify(s.channels)},"keep":${JSON.stringify(s.keep)},"items":${items}}`,
        );
        return;
      } catch (err) {
        this.log('sse: storing the state failed', budget, err);
      }
    }
    this.clear();
  }

  clear(): void {
    try {
      this.storage.removeItem(this.key);
    } catch {
      /* nothing stored */
    }
  }

  /** Writes what is pending and stops. */
  close(): void {
    this.flush();
    this.closed = true;
    this.page?.removeEventListener('pagehide', this.onHide);
    this.page?.removeEventListener('pageshow', this.onShow);
    this.page?.removeEventListener('freeze', this.onHide);
    this.page?.removeEventListener('visibilitychange', this.onVisibility);
  }
}

/** `sessionStorage` when this host has a usable one. */
export function sessionStore(): StorageLike | null {
  try {
    const s = (globalThis as { sessionStorage?: StorageLike }).sessionStorage;
    if (!s) return null;
    const probe = '__sse_gateway_probe__';
    s.setItem(probe, '1');
    s.removeItem(probe);
    return s;
  } catch {
    return null;
  }
}


/** The global object when it receives page lifecycle events (a browser window). */
export function globalPageEvents(): PageEventsLike | null {
  const g = globalThis as { addEventListener?: unknown; removeEventListener?: unknown };
  return typeof g.addEventListener === 'function' && typeof g.removeEventListener === 'function' ? (globalThis as unknown as PageEventsLike) : null;
}

/**
 * Kept messages: the last N messages of each channel some subscription asked to keep
 * (`subscribe(…, { keep })`), in arrival order. This is what a component shows again after a
 * reload (with `persist`), and what a hook starts from when it mounts.
 */
import type { SSEMessage } from './types.js';

interface Kept {
  /** Arrival order across all channels (merging several channels' lists keeps it). */
  n: number;
  m: SSEMessage;
  /** The message as JSON (its length counts against the storage budget). */
  json: string;
}

/** Stored form: channel → [arrival number, message] pairs, oldest first. */
export type KeptItems = Record<string, [number, SSEMessage][]>;

export class History {
  private kept = new Map<string, Kept[]>();
  /** channel → (keeper → how many it keeps). */
  private keepers = new Map<string, Map<number, number>>();
  /** Restored channels nobody has claimed yet: how many items they came with. */
  private restored = new Map<string, number>();
  private n = 0;
  private nextKeeper = 1;

  /** Keeps the last `keep` messages of `channels` until the returned function is called. */
  retain(channels: readonly string[], keep: number): () => void {
    const id = this.nextKeeper++;
    const k = Math.max(1, Math.floor(keep));
    for (const ch of channels) {
      let m = this.keepers.get(ch);
      if (!m) this.keepers.set(ch, (m = new Map()));
      m.set(id, k);
    }
    return () => {
      for (const ch of channels) {
        const m = this.keepers.get(ch);
        if (!m) continue;
        m.delete(id);
        if (m.size === 0) this.keepers.delete(ch);
      }
    };
  }

  /** How many messages of `channel` are kept (0: none). */
  limit(channel: string): number {
    let max = this.restored.get(channel) ?? 0;
    for (const k of this.keepers.get(channel)?.values() ?? []) max = Math.max(max, k);
    return max;
  }

  /** Records a delivered message if its channel is kept. */
  record(m: SSEMessage): void {
    const limit = this.limit(m.channel);
    if (limit === 0) return;
    let list = this.kept.get(m.channel);
    if (!list) this.kept.set(m.channel, (list = []));
    list.push({ n: ++this.n, m, json: JSON.stringify(m) });
    if (list.length > limit) list.splice(0, list.length - limit);
  }

  /** The last `max` kept messages of `channels`, merged in arrival order (oldest first). */
  get(channels: readonly string[], max = Infinity): SSEMessage[] {
    const all: Kept[] = [];
    for (const ch of new Set(channels)) all.push(...(this.kept.get(ch) ?? []));
    all.sort((a, b) => a.n - b.n);
    return (all.length > max ? all.slice(all.length - max) : all).map((k) => k.m);
  }

  /** All kept message ids (to recognise a replay of them). */
  ids(): string[] {
    const out: string[] = [];
    for (const list of this.kept.values()) for (const k of list) if (k.m.id && !k.m.snapshot) out.push(k.m.id);
    return out;
  }

  clear(channels: readonly string[]): void {
    for (const ch of channels) this.kept.delete(ch);
  }

  clearAll(): void {
    this.kept.clear();
    this.restored.clear();
  }

  /** Restored channels stop being kept for their own sake (the next `gc` drops the unclaimed ones). */
  endRestored(): void {
    this.restored.clear();
  }

  /** Drops the messages of channels nobody keeps any more. */
  gc(): void {
    for (const ch of Array.from(this.kept.keys())) {
      const limit = this.limit(ch);
      if (limit === 0) this.kept.delete(ch);
      else {
        const list = this.kept.get(ch)!;
        if (list.length > limit) list.splice(0, list.length - limit);
      }
    }
  }

  /** How many messages each kept channel keeps (stored with the items). */
  limits(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const ch of this.kept.keys()) out[ch] = this.limit(ch);
    return out;
  }

  /**
   * Loads stored items, kept for their own sake (as many as `limits` says, else as many as
   * there are) until claimed, or until `endRestored`.
   */
  restore(items: KeptItems, limits: Record<string, number> = {}): void {
    for (const [ch, pairs] of Object.entries(items)) {
      if (!Array.isArray(pairs) || pairs.length === 0) continue;
      const list: Kept[] = [];
      for (const p of pairs) {
        if (!Array.isArray(p) || typeof p[0] !== 'number' || !p[1] || typeof p[1] !== 'object' || p[1].channel !== ch) continue;
        list.push({ n: p[0], m: p[1], json: JSON.stringify(p[1]) });
        this.n = Math.max(this.n, p[0]);
      }
      if (list.length === 0) continue;
      this.kept.set(ch, list);
      const limit = limits[ch];
      this.restored.set(ch, typeof limit === 'number' && limit >= list.length ? Math.floor(limit) : list.length);
    }
  }

  /**
   * The kept items as stored JSON (`{"channel":[[n,message],…],…}`), the oldest dropped first
   * until they fit in `budget` characters.
   */
  toJSON(budget: number): string {
    const all: { ch: string; k: Kept }[] = [];
    for (const [ch, list] of this.kept) for (const k of list) all.push({ ch, k });
    all.sort((a, b) => a.k.n - b.k.n);
    let size = 2;
    const sizes = all.map(({ ch, k }) => k.json.length + String(k.n).length + 4 + ch.length * 2);
    for (const s of sizes) size += s;
    let start = 0;
    while (size > budget && start < all.length) size -= sizes[start++]!;
    const byChannel = new Map<string, string[]>();
    for (const { ch, k } of all.slice(start)) {
      let parts = byChannel.get(ch);
      if (!parts) byChannel.set(ch, (parts = []));
      parts.push(`[${k.n},${k.json}]`);
    }
    return `{${Array.from(byChannel, ([ch, parts]) => `${JSON.stringify(ch)}:[${parts.join(',')}]`).join(',')}}`;
  }
}

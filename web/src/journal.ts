/**
 * The leader's recent stream, so a tab that comes back (a reload, a navigation within the tab)
 * can be sent what it missed from its stored cursor: "catch-up". Alongside the entries it tracks,
 * per channel, from which point the stream has carried that channel without interruption; a
 * channel not carried all the way since the tab's cursor is reported as a gap, never skipped.
 */
import type { SSEMessage } from './types.js';

export type JournalItem = { m: SSEMessage } | { gap: string[] };

type Entry =
  | { n: number; m: SSEMessage; size: number }
  | { n: number; gap: string[]; size: number }
  | { n: number; cursor: string; size: number };

export interface CatchUp {
  /** Messages and gaps of the asked-for channels after the cursor, in stream order. */
  items: JournalItem[];
  /** Asked-for channels the stream did not carry all the way since the cursor. */
  uncovered: string[];
}

export class Journal {
  private entries: Entry[] = [];
  private size = 0;
  private n = 0;
  /** Cursor → entry number (event ids and `ready` cursors). */
  private at = new Map<string, number>();
  /** Channel → entry number after which every event of it is in the journal. */
  private coverage = new Map<string, number>();

  constructor(
    private readonly maxEntries = 5000,
    private readonly maxChars = 4_000_000,
  ) {}

  /** Forgets everything (a new leader starts its own). */
  reset(): void {
    this.entries = [];
    this.size = 0;
    this.at.clear();
    this.coverage.clear();
  }

  /** Records a cursor the stream resumed from or started at; returns its position. */
  mark(cursor: string): number {
    const known = this.at.get(cursor);
    if (known !== undefined) return known;
    this.push({ n: ++this.n, cursor, size: cursor.length });
    this.at.set(cursor, this.n);
    return this.n;
  }

  message(m: SSEMessage, size: number): void {
    this.push({ n: ++this.n, m, size });
    if (m.id && !m.snapshot) this.at.set(m.id, this.n);
  }

  gap(channels: string[]): void {
    this.push({ n: ++this.n, gap: channels, size: 16 });
  }

  /** The position now: a channel covered from here misses nothing that comes later. */
  position(): number {
    return this.n;
  }

  positionOf(cursor: string): number | undefined {
    return this.at.get(cursor);
  }

  /** `channels` are carried from position `from` on (those already carried keep their start). */
  cover(channels: readonly string[], from: number): void {
    for (const ch of channels) if (!this.coverage.has(ch)) this.coverage.set(ch, from);
  }

  /** `channels` are (about to be) no longer carried. */
  uncover(channels: readonly string[]): void {
    for (const ch of channels) this.coverage.delete(ch);
  }

  /** Keeps coverage only for `channels` (the stream's current set). */
  coverOnly(channels: readonly string[]): void {
    const keep = new Set(channels);
    for (const ch of Array.from(this.coverage.keys())) if (!keep.has(ch)) this.coverage.delete(ch);
  }

  /** What a tab whose last cursor is `since` missed on `channels`. */
  catchUp(since: string, channels: readonly string[]): CatchUp {
    const from = this.at.get(since);
    if (from === undefined) return { items: [], uncovered: [...channels] };
    const wanted = new Set(channels);
    const uncovered = channels.filter((ch) => {
      const start = this.coverage.get(ch);
      return start === undefined || start > from;
    });
    const items: JournalItem[] = [];
    for (const e of this.entries) {
      if (e.n <= from) continue;
      if ('m' in e) {
        if (wanted.has(e.m.channel)) items.push({ m: e.m });
      } else if ('gap' in e) {
        const mine = e.gap.filter((c) => wanted.has(c));
        if (mine.length) items.push({ gap: mine });
      }
    }
    return { items, uncovered };
  }

  private push(e: Entry): void {
    this.entries.push(e);
    this.size += e.size;
    let drop = 0;
    while (this.entries.length - drop > 1 && (this.entries.length - drop > this.maxEntries || this.size > this.maxChars)) {
      const old = this.entries[drop++]!;
      this.size -= old.size;
      if ('cursor' in old) this.at.delete(old.cursor);
      else if ('m' in old && old.m.id && this.at.get(old.m.id) === old.n) this.at.delete(old.m.id);
    }
    if (drop) this.entries.splice(0, drop);
  }
}

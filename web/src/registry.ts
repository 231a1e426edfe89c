import { reportError } from './emitter.js';
import type { DeniedChannel, GapInfo, MessageHandler, SSEMessage, SubscribeOptions } from './types.js';

interface Entry {
  channels: string[];
  handler: MessageHandler;
  options: SubscribeOptions;
}

/**
 * Subscription bookkeeping for one tab: which handlers want which channels, and routing of
 * envelopes to them by `channel`. Every `add` returns a remover; the set of wanted channels is
 * exactly the union of live entries, so an unmounted component can never keep a channel open.
 */
export class Registry {
  private byChannel = new Map<string, Set<Entry>>();
  private recentIds = new Set<string>();
  private recentOrder: string[] = [];

  constructor(private readonly dedupeWindow = 2048) {}

  add(channels: string[], handler: MessageHandler, options: SubscribeOptions = {}): () => void {
    const entry: Entry = { channels, handler, options };
    for (const ch of channels) {
      let set = this.byChannel.get(ch);
      if (!set) {
        set = new Set();
        this.byChannel.set(ch, set);
      }
      set.add(entry);
    }
    let removed = false;
    return () => {
      if (removed) return;
      removed = true;
      for (const ch of channels) {
        const set = this.byChannel.get(ch);
        if (!set) continue;
        set.delete(entry);
        if (set.size === 0) this.byChannel.delete(ch);
      }
    };
  }

  /** The channels at least one handler wants, sorted. */
  channels(): string[] {
    return Array.from(this.byChannel.keys()).sort();
  }

  has(channel: string): boolean {
    return this.byChannel.has(channel);
  }

  /** Number of handlers on a channel. */
  count(channel: string): number {
    return this.byChannel.get(channel)?.size ?? 0;
  }

  /**
   * Hands a message to the handlers of its channel. Returns false when the message was a
   * duplicate (same cursor seen recently) and was dropped.
   */
  dispatch(message: SSEMessage): boolean {
    if (!this.accept(message)) return false;
    this.route(message);
    return true;
  }

  /** Remembers the message's id; false when it was seen recently (a duplicate, to be dropped). */
  accept(message: SSEMessage): boolean {
    if (!message.id) return true;
    if (this.recentIds.has(message.id)) return false;
    this.remember(message.id);
    return true;
  }

  /** Ids already delivered (e.g. restored from storage), so a replay of them is dropped. */
  remember(...ids: string[]): void {
    for (const id of ids) {
      if (!id || this.recentIds.has(id)) continue;
      this.recentIds.add(id);
      this.recentOrder.push(id);
    }
    if (this.recentOrder.length > this.dedupeWindow) {
      const old = this.recentOrder.splice(0, this.recentOrder.length - this.dedupeWindow);
      for (const id of old) this.recentIds.delete(id);
    }
  }

  /** Hands a message to the handlers of its channel (no duplicate check). */
  route(message: SSEMessage): void {
    const set = this.byChannel.get(message.channel);
    if (!set) return;
    for (const entry of Array.from(set)) {
      try {
        entry.handler(message);
      } catch (err) {
        reportError(err);
      }
    }
  }

  dispatchGap(gap: GapInfo): void {
    const seen = new Set<Entry>();
    for (const ch of gap.channels) {
      for (const entry of this.byChannel.get(ch) ?? []) {
        if (seen.has(entry)) continue;
        seen.add(entry);
        const mine = gap.channels.filter((c) => entry.channels.includes(c));
        try {
          entry.options.onGap?.({ channels: mine, at: gap.at });
        } catch (err) {
          reportError(err);
        }
      }
    }
  }

  dispatchDenied(denied: DeniedChannel[]): void {
    const seen = new Set<Entry>();
    for (const d of denied) {
      for (const entry of this.byChannel.get(d.channel) ?? []) {
        if (seen.has(entry)) continue;
        seen.add(entry);
        const mine = denied.filter((x) => entry.channels.includes(x.channel));
        try {
          entry.options.onDenied?.(mine);
        } catch (err) {
          reportError(err);
        }
      }
    }
  }
}

/**
 * Refused channels as data: each refusal keeps its `source`, and what the client does about it
 * is read from one table instead of from the wording of the reason.
 */
import { channelError } from './channels.js';
import type { DeniedChannel, DenialSource, GatewayDenial } from './types.js';

export interface DenialPolicy {
  /** Ask again once the token provider hands out a different token (it may grant more). */
  retryWithNewToken: boolean;
  /** Ask again on every new stream (the refusal may have been momentary). */
  retryOnNewStream: boolean;
}

/** What happens to a refused channel, by who refused it. */
export const DENIAL_POLICY: Readonly<Record<DenialSource, DenialPolicy>> = {
  // A malformed name stays malformed: never sent (it would make the gateway reject the whole request).
  client: { retryWithNewToken: false, retryOnNewStream: false },
  token: { retryWithNewToken: true, retryOnNewStream: false },
  // The permission service's answers are cached for a short time, and "unavailable" passes.
  authorizer: { retryWithNewToken: true, retryOnNewStream: true },
  server: { retryWithNewToken: true, retryOnNewStream: false },
};

const SOURCES: ReadonlySet<string> = new Set<DenialSource>(['client', 'token', 'authorizer', 'server']);

/** A gateway denial entry as a `DeniedChannel` (its `source` when it names a known one, else `server`). */
export function fromGateway(d: GatewayDenial): DeniedChannel {
  const source = typeof d.source === 'string' && SOURCES.has(d.source) && d.source !== 'client' ? (d.source as DenialSource) : 'server';
  return { channel: d.channel, reason: typeof d.reason === 'string' && d.reason ? d.reason : 'denied', source };
}

/** The gateway's `denied` list as `DeniedChannel`s (malformed entries skipped). */
export function fromGatewayList(list: unknown): DeniedChannel[] {
  if (!Array.isArray(list)) return [];
  const out: DeniedChannel[] = [];
  for (const d of list) {
    if (d && typeof d === 'object' && typeof (d as GatewayDenial).channel === 'string') out.push(fromGateway(d as GatewayDenial));
  }
  return out;
}

/** The connection's refused channels: one entry per channel, the latest refusal wins. */
export class Denials {
  private byChannel = new Map<string, DeniedChannel>();

  has(channel: string): boolean {
    return this.byChannel.has(channel);
  }

  /** Sorted by channel. */
  list(): DeniedChannel[] {
    return Array.from(this.byChannel.values()).sort((a, b) => (a.channel < b.channel ? -1 : a.channel > b.channel ? 1 : 0));
  }

  /** Records refusals; returns those that are new or changed. */
  add(list: readonly DeniedChannel[]): DeniedChannel[] {
    const fresh: DeniedChannel[] = [];
    for (const d of list) {
      const old = this.byChannel.get(d.channel);
      if (!old || old.reason !== d.reason || old.source !== d.source) fresh.push(d);
      this.byChannel.set(d.channel, d);
    }
    return fresh;
  }

  /** The refusal of `channel`, if any. */
  get(channel: string): DeniedChannel | undefined {
    return this.byChannel.get(channel);
  }

  /** Forgets the refusals of `channels` (e.g. granted after all); returns whether any was forgotten. */
  forget(channels: Iterable<string>): boolean {
    let changed = false;
    for (const c of channels) changed = this.byChannel.delete(c) || changed;
    return changed;
  }

  /** Refuses, locally, the malformed names among `channels`; returns the new refusals. */
  refuseMalformed(channels: readonly string[]): DeniedChannel[] {
    const fresh: DeniedChannel[] = [];
    for (const channel of channels) {
      if (this.byChannel.has(channel)) continue;
      const err = channelError(channel);
      if (err) fresh.push({ channel, reason: `invalid channel: ${err}`, source: 'client' });
    }
    return this.add(fresh);
  }

  /** Forgets refusals that the policy says to ask again about; returns whether any was forgotten. */
  forgetWhere(pick: (policy: DenialPolicy) => boolean): boolean {
    let changed = false;
    for (const [channel, d] of Array.from(this.byChannel)) {
      if (pick(DENIAL_POLICY[d.source])) {
        this.byChannel.delete(channel);
        changed = true;
      }
    }
    return changed;
  }

  /** Forgets refusals of channels nobody wants any more; returns whether any was forgotten. */
  keepOnly(wanted: ReadonlySet<string>): boolean {
    let changed = false;
    for (const channel of Array.from(this.byChannel.keys())) {
      if (!wanted.has(channel)) {
        this.byChannel.delete(channel);
        changed = true;
      }
    }
    return changed;
  }
}

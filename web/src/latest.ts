/**
 * `latest(client, channel)`: the current value of one channel, for "current value" displays —
 * the channel's snapshot right after subscribing, then every newer event, and after a reload
 * (with `persist`) the value the previous page showed.
 */
import type { SSEClient } from './client.js';
import type { DeniedChannel, GapInfo, SSEMessage } from './types.js';

export interface Latest<T> {
  /** The latest message, or undefined until one arrives. `snapshot` is set while it is the gateway's snapshot. */
  get(): SSEMessage<T> | undefined;
  /** Its payload. */
  value(): T | undefined;
  /** Called with each new latest message (also after `reset`, with undefined). Returns the remover. */
  onChange(listener: (message: SSEMessage<T> | undefined) => void): () => void;
  /** Stops following the channel. */
  close(): void;
}

export interface LatestOptions {
  onGap?: (gap: GapInfo) => void;
  onDenied?: (denied: DeniedChannel[]) => void;
}

export function latest<T = unknown>(client: SSEClient, channel: string, options: LatestOptions = {}): Latest<T> {
  const listeners = new Set<(message: SSEMessage<T> | undefined) => void>();
  let current = client.history<T>(channel, 1)[0];
  const changed = () => {
    for (const l of Array.from(listeners)) l(current);
  };
  const off = client.subscribe<T>(
    channel,
    (m) => {
      current = m;
      changed();
    },
    { ...options, keep: 1 },
  );
  const offReset = client.on('reset', () => {
    current = client.history<T>(channel, 1)[0];
    changed();
  });
  return {
    get: () => current,
    value: () => current?.payload,
    onChange(listener) {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
    close() {
      off();
      offReset();
      listeners.clear();
    },
  };
}

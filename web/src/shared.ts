import { SSEClient } from './client.js';
import type { SSEClientOptions } from './types.js';

interface Slot {
  client: SSEClient;
  refs: number;
  closeTimer: ReturnType<typeof setTimeout> | null;
}

const KEY = Symbol.for('@sse-gateway/client.shared');

/**
 * Page-wide registry, kept on `globalThis` so that micro-frontends bundled separately (each with its
 * own copy of this package) still find one another's client and share its connection.
 */
function slots(): Map<string, Slot> {
  const g = globalThis as unknown as Record<symbol, Map<string, Slot> | undefined>;
  let map = g[KEY];
  if (!map) {
    map = new Map();
    g[KEY] = map;
  }
  return map;
}

function keyOf(options: Pick<SSEClientOptions, 'url' | 'shareKey'>): string {
  if (options.shareKey) return options.shareKey;
  const origin = typeof location !== 'undefined' ? location.origin : '';
  try {
    return new URL(options.url || '/', origin || undefined).origin;
  } catch {
    return options.url || origin;
  }
}

/**
 * The page's client for this gateway: created on first call, returned as-is afterwards (later
 * calls' options are ignored, except to find the gateway). Use `retainSharedClient` to have it
 * closed when the last user lets go.
 */
export function getSharedClient(options: SSEClientOptions): SSEClient {
  const map = slots();
  const key = keyOf(options);
  const slot = map.get(key);
  if (slot && !slot.client.isClosed) return slot.client;
  const client = new SSEClient(options);
  map.set(key, { client, refs: 0, closeTimer: null });
  return client;
}

/**
 * Counts a user of a shared client; the returned function releases it. When the count drops to
 * zero the client is closed on the next tick, unless someone retains it again first (so React
 * StrictMode's unmount/remount does not reconnect).
 */
export function retainSharedClient(client: SSEClient): () => void {
  const map = slots();
  let slot: Slot | undefined;
  for (const s of map.values()) if (s.client === client) slot = s;
  if (!slot) return () => {};
  const s = slot;
  s.refs++;
  if (s.closeTimer) {
    clearTimeout(s.closeTimer);
    s.closeTimer = null;
  }
  let released = false;
  return () => {
    if (released) return;
    released = true;
    s.refs--;
    if (s.refs > 0) return;
    s.closeTimer = setTimeout(() => {
      s.closeTimer = null;
      if (s.refs > 0) return;
      for (const [k, v] of map) if (v === s) map.delete(k);
      s.client.close();
    }, 0);
  };
}

import {
  createContext,
  createElement,
  useCallback,
  useContext,
  useEffect,
  useMemo,
  useRef,
  useState,
  useSyncExternalStore,
  type ComponentType,
  type ReactNode,
} from 'react';
import { SSEClient } from '../client.js';
import { normalizeChannels } from '../channels.js';
import { latest } from '../latest.js';
import { getSharedClient, retainSharedClient } from '../shared.js';
import type { DeniedChannel, GapInfo, SSEClientOptions, SSEMessage, SSEState } from '../types.js';

const SSEContext = createContext<SSEClient | null>(null);

export interface SSEProviderProps {
  /** A client you manage yourself (never closed by the provider). */
  client?: SSEClient;
  /**
   * Or options for the page's shared client (`getSharedClient`): every provider on the page with
   * the same gateway URL — in any React root or bundle — uses one client and one connection.
   */
  config?: SSEClientOptions;
  children?: ReactNode;
}

/** Makes a client available to `useSSE`, `useSSESubscription` and `withSSE` below it. */
export function SSEProvider({ client, config, children }: SSEProviderProps) {
  const [own] = useState<SSEClient | null>(() => {
    if (client) return null;
    if (!config) throw new Error('SSEProvider needs a `client` or a `config`');
    return getSharedClient(config);
  });
  const value = client ?? own!;
  useEffect(() => {
    if (client || !own) return undefined;
    return retainSharedClient(own);
  }, [client, own]);
  return createElement(SSEContext.Provider, { value }, children);
}

/** The client from the nearest `SSEProvider` (throws when there is none). */
export function useSSEClient(): SSEClient {
  const client = useContext(SSEContext);
  if (!client) throw new Error('useSSE/useSSESubscription must be used inside <SSEProvider> (or a component wrapped by withSSE with client options)');
  return client;
}

export interface UseSSEResult extends SSEState {
  client: SSEClient;
  /** Imperative subscription (remember to call the returned function). */
  subscribe: SSEClient['subscribe'];
}

/** Connection status and the client; re-renders when the status changes (not on every event). */
export function useSSE(): UseSSEResult {
  const client = useSSEClient();
  const state = useSyncExternalStore(client.onState, client.getState, client.getState);
  const subscribe = useCallback<SSEClient['subscribe']>((channels, handler, options) => client.subscribe(channels, handler, options), [client]);
  return useMemo(() => ({ ...state, client, subscribe }), [state, client, subscribe]);
}

export interface UseSSESubscriptionOptions<T> {
  /** Keep a list of items (newest last) instead of only the latest one. */
  accumulate?: boolean;
  /** With `accumulate`: how many items to keep (default 100). */
  maxItems?: number;
  /**
   * Maps each message to what the component stores; returning `undefined` skips the message.
   * Kept items are stored as messages and mapped again after a reload.
   */
  transform?: (message: SSEMessage) => T | undefined;
  /** Set false to pause the subscription without unmounting. */
  enabled?: boolean;
  /** Called for every live message (after transform), e.g. to feed a store. */
  onMessage?: (item: T, message: SSEMessage) => void;
  /** Called when the gateway reports a gap on these channels: re-fetch their state. */
  onGap?: (gap: GapInfo) => void;
}

export interface UseSSESubscriptionResult<D, T> {
  /** Latest item, or the list of items with `accumulate` (a channel's snapshot comes first). */
  data: D;
  /** The last raw message received (`lastMessage.snapshot`: it is the channel's snapshot). */
  lastMessage: SSEMessage | null;
  /** Connection status of the shared connection. */
  status: SSEState['status'];
  /** Those of these channels that were refused. */
  denied: DeniedChannel[];
  /** The last gap reported for these channels, or null. */
  gap: GapInfo | null;
  /** How many messages were received (after `transform`) since mount, kept ones from before a reload included. */
  count: number;
  /** Empties `data` (and the kept items of these channels). */
  clear: () => void;
  /** Type helper: one item. */
  readonly _item?: T;
}

interface Store<T> {
  data: T[] | T | undefined;
  last: SSEMessage | null;
  gap: GapInfo | null;
  count: number;
  /** The kept messages `data` was built from (to skip a rebuild that changes nothing). */
  from: readonly SSEMessage[];
}

/** The hook's state as built from the client's kept messages. */
function fromKept<T>(
  client: SSEClient,
  channels: string[],
  accumulate: boolean,
  maxItems: number,
  transform: ((m: SSEMessage) => T | undefined) | undefined,
  gap: GapInfo | null,
): Store<T> {
  const kept = channels.length ? client.history(channels, accumulate ? maxItems : 1) : [];
  const items: T[] = [];
  for (const m of kept) {
    const item = transform ? transform(m) : (m as unknown as T);
    if (item !== undefined) items.push(item);
  }
  return {
    data: accumulate ? items : items[items.length - 1],
    last: kept[kept.length - 1] ?? null,
    gap,
    count: items.length,
    from: kept,
  };
}

const sameList = (a: readonly unknown[], b: readonly unknown[]) => a.length === b.length && a.every((x, i) => x === b[i]);

export function useSSESubscription<T = SSEMessage>(
  channels: string | readonly string[],
  options: UseSSESubscriptionOptions<T> & { accumulate: true },
): UseSSESubscriptionResult<T[], T>;
export function useSSESubscription<T = SSEMessage>(
  channels: string | readonly string[],
  options?: UseSSESubscriptionOptions<T>,
): UseSSESubscriptionResult<T | undefined, T>;
/**
 * Subscribes the component to `channels` for as long as it is mounted (safe under StrictMode's
 * double mount: subscriptions are batched per tick, so mount/unmount/mount costs no request).
 * The client keeps the items (the latest one without `accumulate`), so with `persist` a reload
 * shows them again and continues after them.
 */
export function useSSESubscription<T = SSEMessage>(
  channels: string | readonly string[],
  options: UseSSESubscriptionOptions<T> = {},
): UseSSESubscriptionResult<T[] | T | undefined, T> {
  const client = useSSEClient();
  const state = useSyncExternalStore(client.onState, client.getState, client.getState);
  const key = normalizeChannels(channels).join('\n');
  const accumulate = !!options.accumulate;
  const maxItems = Math.max(1, options.maxItems ?? 100);
  const enabled = options.enabled !== false;
  const opts = useRef(options);
  opts.current = options;

  const [store, setStore] = useState<Store<T>>(() =>
    fromKept(client, enabled && key ? key.split('\n') : [], accumulate, maxItems, options.transform, null),
  );

  useEffect(() => {
    const list = key ? key.split('\n') : [];
    if (!enabled || list.length === 0) return undefined;
    // Start from what the client kept (messages may have come between render and now).
    const rebuild = () =>
      setStore((prev) => {
        const next = fromKept(client, list, accumulate, maxItems, opts.current.transform, prev.gap);
        return sameList(next.from, prev.from) ? prev : next;
      });
    const offReset = client.on('reset', rebuild);
    const off = client.subscribe(
      list,
      (message) => {
        const o = opts.current;
        const item = o.transform ? o.transform(message) : (message as unknown as T);
        if (item === undefined) return;
        o.onMessage?.(item, message);
        setStore((prev) => {
          if (!accumulate) return { ...prev, data: item, last: message, count: prev.count + 1 };
          const arr = Array.isArray(prev.data) ? prev.data : [];
          const next = arr.length >= maxItems ? arr.slice(arr.length - maxItems + 1) : arr.slice();
          next.push(item);
          return { ...prev, data: next, last: message, count: prev.count + 1 };
        });
      },
      {
        keep: accumulate ? maxItems : 1,
        onGap: (gap) => {
          setStore((prev) => ({ ...prev, gap }));
          opts.current.onGap?.(gap);
        },
      },
    );
    rebuild();
    return () => {
      off();
      offReset();
    };
  }, [client, key, enabled, accumulate, maxItems]);

  const clear = useCallback(() => {
    if (key) client.clearHistory(key.split('\n'));
    setStore((prev) => ({ ...prev, data: accumulate ? [] : undefined, last: null, from: [] }));
  }, [client, key, accumulate]);

  const deniedAll = state.denied;
  const denied = useMemo(() => {
    const mine = key ? key.split('\n') : [];
    return deniedAll.filter((d) => mine.includes(d.channel));
  }, [deniedAll, key]);

  return { data: store.data, lastMessage: store.last, status: state.status, denied, gap: store.gap, count: store.count, clear };
}

export interface UseSSELatestOptions<T> {
  /** Maps the message to the value (default: its payload); `undefined` skips the message. */
  transform?: (message: SSEMessage) => T | undefined;
  /** Set false to pause the subscription without unmounting. */
  enabled?: boolean;
  /** Called when the gateway reports a gap on the channel. */
  onGap?: (gap: GapInfo) => void;
}

export interface UseSSELatestResult<T> {
  /** The channel's current value: its snapshot, then each newer event (undefined until one arrives). */
  value: T | undefined;
  /** The message it came from. */
  message: SSEMessage | null;
  /** True while the value is the gateway's snapshot (sent on subscribe), not a live event. */
  snapshot: boolean;
  status: SSEState['status'];
  denied: DeniedChannel[];
  gap: GapInfo | null;
}

/**
 * The current value of one channel, for "current value" panels (a gauge, a status badge): the
 * channel's snapshot right after subscribing (on channel types with `snapshot`), then every newer
 * event, and after a reload the value shown before it.
 */
export function useSSELatest<T = unknown>(channel: string, options: UseSSELatestOptions<T> = {}): UseSSELatestResult<T> {
  const transform = options.transform;
  const r = useSSESubscription<T>(channel, {
    enabled: options.enabled,
    onGap: options.onGap,
    transform: transform ?? ((m: SSEMessage) => m.payload as T),
  });
  return { value: r.data, message: r.lastMessage, snapshot: r.lastMessage?.snapshot === true, status: r.status, denied: r.denied, gap: r.gap };
}

export interface WithSSEConfig<P, T> extends UseSSESubscriptionOptions<T> {
  /** Channels, fixed or computed from the props. */
  channels: string | readonly string[] | ((props: P) => string | readonly string[]);
  /** Prop name the result is passed in (default `sse`). */
  propName?: string;
  /** When there is no SSEProvider above: use this client... */
  client?: SSEClient;
  /** ...or the page's shared client for these options (typical for an independently mounted micro-frontend). */
  clientOptions?: SSEClientOptions;
}

export type WithSSEProps = { sse: UseSSESubscriptionResult<unknown, unknown> };

/**
 * Wraps a component so it receives its channels' data as a prop (`sse` by default):
 * `withSSE(LogPanel, { channels: (p) => `logs:${p.ws}:${p.wf}`, accumulate: true, maxItems: 200 })`.
 * With `client`/`clientOptions` the wrapped component also works without an SSEProvider —
 * several such micro-frontends on one page still share one connection.
 */
export function withSSE<P extends object, T = SSEMessage>(
  Component: ComponentType<P>,
  config: WithSSEConfig<Omit<P, 'sse'>, T>,
): ComponentType<Omit<P, 'sse'>> {
  const propName = config.propName ?? 'sse';
  function Inner(props: Omit<P, 'sse'>) {
    const channels = typeof config.channels === 'function' ? config.channels(props) : config.channels;
    const { channels: _c, propName: _p, client: _cl, clientOptions: _co, ...hookOptions } = config;
    const result = useSSESubscription<T>(channels, hookOptions as UseSSESubscriptionOptions<T>);
    return createElement(Component, { ...(props as P), [propName]: result } as P);
  }
  function WithSSE(props: Omit<P, 'sse'>) {
    const existing = useContext(SSEContext);
    if (existing || (!config.client && !config.clientOptions)) return createElement(Inner, props);
    return createElement(SSEProvider, { client: config.client, config: config.clientOptions }, createElement(Inner, props));
  }
  const name = Component.displayName || Component.name || 'Component';
  WithSSE.displayName = `withSSE(${name})`;
  return WithSSE;
}

export { SSEClient, getSharedClient, latest };
export type { DeniedChannel, GapInfo, SSEClientOptions, SSEMessage, SSEState };

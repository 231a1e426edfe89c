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
  /** Maps each message to what the component stores; returning `undefined` skips the message. */
  transform?: (message: SSEMessage) => T | undefined;
  /** Set false to pause the subscription without unmounting. */
  enabled?: boolean;
  /** Called for every message (after transform), e.g. to feed a store. */
  onMessage?: (item: T, message: SSEMessage) => void;
  /** Called when the gateway reports a gap on these channels: re-fetch their state. */
  onGap?: (gap: GapInfo) => void;
}

export interface UseSSESubscriptionResult<D, T> {
  /** Latest item, or the list of items with `accumulate`. */
  data: D;
  /** The last raw message received. */
  lastMessage: SSEMessage | null;
  /** Connection status of the shared connection. */
  status: SSEState['status'];
  /** Those of these channels that were refused. */
  denied: DeniedChannel[];
  /** The last gap reported for these channels, or null. */
  gap: GapInfo | null;
  /** How many messages were received (after `transform`) since mount. */
  count: number;
  /** Empties `data`. */
  clear: () => void;
  /** Type helper: one item. */
  readonly _item?: T;
}

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

  const [store, setStore] = useState<{ data: T[] | T | undefined; last: SSEMessage | null; gap: GapInfo | null; count: number }>(() => ({
    data: accumulate ? [] : undefined,
    last: null,
    gap: null,
    count: 0,
  }));

  useEffect(() => {
    const list = key ? key.split('\n') : [];
    if (!enabled || list.length === 0) return undefined;
    return client.subscribe(
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
        onGap: (gap) => {
          setStore((prev) => ({ ...prev, gap }));
          opts.current.onGap?.(gap);
        },
      },
    );
  }, [client, key, enabled, accumulate, maxItems]);

  const clear = useCallback(() => setStore((prev) => ({ ...prev, data: accumulate ? [] : undefined, last: null })), [accumulate]);

  const deniedAll = state.denied;
  const denied = useMemo(() => {
    const mine = key ? key.split('\n') : [];
    return deniedAll.filter((d) => mine.includes(d.channel));
  }, [deniedAll, key]);

  return { data: store.data, lastMessage: store.last, status: state.status, denied, gap: store.gap, count: store.count, clear };
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

export { SSEClient, getSharedClient };
export type { DeniedChannel, GapInfo, SSEClientOptions, SSEMessage, SSEState };

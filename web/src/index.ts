export { SSEClient, createSSEClient } from './client.js';
export { getSharedClient, retainSharedClient } from './shared.js';
export { backoffDelay, DEFAULT_BACKOFF } from './backoff.js';
export { channelError, isValidChannel, normalizeChannels } from './channels.js';
export { jwtExpiry } from './jwt.js';
export { Registry } from './registry.js';
export type {
  BackoffOptions,
  ClientEvents,
  ConnectionStatus,
  DeniedChannel,
  GapInfo,
  MessageHandler,
  ReadyInfo,
  SSEClientOptions,
  SSEMessage,
  SSEState,
  SubscribeOptions,
  SubscriptionsInfo,
  TabRole,
  TokenProvider,
  TokenReason,
  EventSourceLike,
  EventSourceCtor,
  BroadcastChannelLike,
  BroadcastChannelCtor,
  LockManagerLike,
  FetchLike,
} from './types.js';

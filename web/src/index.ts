export { SSEClient, createSSEClient } from './client.js';
export { getSharedClient, retainSharedClient } from './shared.js';
export { backoffDelay, DEFAULT_BACKOFF } from './backoff.js';
export { channelError, isValidChannel, normalizeChannels } from './channels.js';
export { jwtExpiry } from './jwt.js';
export { Registry } from './registry.js';
export { latest, type Latest, type LatestOptions } from './latest.js';
export { DENIAL_POLICY, type DenialPolicy } from './denials.js';
export type {
  BackoffOptions,
  ClientEvents,
  ConnectionStatus,
  DeniedChannel,
  DenialSource,
  GatewayDenial,
  ConnectionState,
  ConnectionTransition,
  PersistMode,
  StorageLike,
  PageEventsLike,
  GapInfo,
  MessageHandler,
  ReadyInfo,
  RevokedInfo,
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

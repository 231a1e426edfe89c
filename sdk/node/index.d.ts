// Type declarations of @sse-gateway/publisher (hand-written wrapper; the message and client
// types under ./generated are produced by sdk-gen/generate).
import type * as grpc from '@grpc/grpc-js';
import type { ProtoGrpcType } from './generated/gateway';
import type { PublisherClient } from './generated/ssegateway/v1/Publisher';
import type { ControlClient } from './generated/ssegateway/v1/Control';

export type { ProtoGrpcType } from './generated/gateway';
export type { PublisherClient, PublisherDefinition, PublisherHandlers } from './generated/ssegateway/v1/Publisher';
export type { PublishRequest, PublishRequest__Output } from './generated/ssegateway/v1/PublishRequest';
export type { PublishResponse, PublishResponse__Output } from './generated/ssegateway/v1/PublishResponse';
export type { PublishBatchRequest, PublishBatchRequest__Output } from './generated/ssegateway/v1/PublishBatchRequest';
export type { PublishBatchResponse, PublishBatchResponse__Output } from './generated/ssegateway/v1/PublishBatchResponse';
export type { Audience as AudienceMessage, Audience__Output } from './generated/ssegateway/v1/Audience';
export type { ControlClient, ControlDefinition, ControlHandlers } from './generated/ssegateway/v1/Control';
export type { DisconnectRequest, DisconnectRequest__Output } from './generated/ssegateway/v1/DisconnectRequest';
export type { UnsubscribeRequest, UnsubscribeRequest__Output } from './generated/ssegateway/v1/UnsubscribeRequest';
export type { ControlResponse, ControlResponse__Output } from './generated/ssegateway/v1/ControlResponse';

/** A gRPC status name: 'OK', 'INVALID_ARGUMENT', 'PERMISSION_DENIED', 'UNAVAILABLE', ... */
export type StatusName = keyof typeof grpc.status;

/** A result's code: a gRPC status name, or 'DISABLED' for every call of a disabled publisher. */
export type ResultCode = StatusName | 'DISABLED';

/** A file path, or PEM contents (a Buffer, or a string starting with `-----BEGIN`). */
export type PemSource = string | Buffer | Uint8Array;

export interface Logger {
  warn(message: string): void;
}

export interface PublisherOptions {
  /** host:port of the gateway's gRPC listener. Default $SSE_GATEWAY_ADDR, else 'localhost:50051'.
   * Use the name in the gateway's certificate (`localhost` in the dev setup), not an IP. */
  addr?: string;
  /** CA of the gateway's certificate. Default $SSE_GATEWAY_CA, else the system roots. */
  ca?: PemSource;
  /** This service's client certificate. Default $SSE_GATEWAY_CERT; required. */
  cert?: PemSource;
  /** This service's client key. Default $SSE_GATEWAY_KEY; required. */
  key?: PemSource;
  /** Reject with a PublishError instead of resolving to `{ ok: false }`. Default false. */
  strict?: boolean;
  /** Deadline of each call. Default 5000. */
  timeoutMs?: number;
  /** Name checked against the gateway's certificate. Default $SSE_GATEWAY_SERVER_NAME, else the addr host. */
  serverName?: string;
  /** Where failed publishes are logged (non-strict). Default console; null silences. */
  logger?: Logger | null;
  /** Serialiser of `data`. Default JSON.stringify. */
  jsonStringify?: (value: unknown) => string;
  /** Extra grpc-js channel options. */
  channelOptions?: grpc.ChannelOptions;
  /** The on/off switch. Default $SSE_GATEWAY_ENABLED (false/0/no/off, true/1/yes/on), else on.
   * Off: a no-op that needs no certificate, dials nothing, and resolves every call to
   * `{ ok: false, code: 'DISABLED' }` (logged once, never rejected, even when strict). */
  enabled?: boolean | string;
}

/** Per-event targeting: only these users, or holders of these roles (an empty list does not restrict). */
export interface Audience {
  userIds?: string[];
  roles?: string[];
}

export interface CallOptions {
  /** Deadline of this call; default the publisher's timeoutMs. */
  timeoutMs?: number;
  /** Overrides the publisher's strict setting for this call. */
  strict?: boolean;
}

export interface PublishOptions extends CallOptions {
  /** Event type, [A-Za-z0-9_.-]{1,64}; the gateway's default is "message". */
  event?: string;
  /** A repeat within the gateway's dedupe window is not delivered again (<= 128 bytes). */
  idempotencyKey?: string;
  audience?: Audience;
}

export interface BatchEvent {
  channel: string;
  /** Any JSON-serialisable value. */
  data: unknown;
  event?: string;
  idempotencyKey?: string;
  audience?: Audience;
}

export interface PublishResult {
  /** True when the gateway accepted the event. */
  ok: boolean;
  channel: string;
  /** The event's cursor (the SSE `id:`); '' when not ok. */
  id: string;
  /** Subscribers on the accepting node it was handed to. */
  delivered: number;
  /** True when the idempotency key was seen before (`id` is then the original event's). */
  duplicate: boolean;
  /** 'OK', the gRPC status name of the failure, or 'DISABLED'. */
  code: ResultCode;
  message: string;
}

export interface BatchResult {
  /** All events accepted (true) or none (false). */
  ok: boolean;
  /** One per event, in order; empty when not ok. */
  results: PublishResult[];
  code: ResultCode;
  message: string;
}

export declare class Publisher {
  constructor(options?: PublisherOptions);
  readonly addr: string;
  readonly timeoutMs: number;
  readonly strict: boolean;
  /** False when the publisher is switched off (`enabled: false` or $SSE_GATEWAY_ENABLED=false). */
  readonly enabled: boolean;
  /** The generated client, e.g. for the PublishStream RPC. Throws a ConfigError when disabled. */
  readonly client: PublisherClient;
  /** Publishes `data` (any JSON-serialisable value) on `channel`. */
  publish(channel: string, data: unknown, options?: PublishOptions): Promise<PublishResult>;
  /** Publishes up to 1000 events in order, all or none. */
  publishBatch(events: Iterable<BatchEvent>, options?: CallOptions): Promise<BatchResult>;
  /** `logs:{workspaceId}:{workflowId}` (or `logs:{workspaceId}` when workflowId is null), event "log". */
  publishLog(
    workspaceId: string | number,
    workflowId: string | number | null | undefined,
    data: unknown,
    options?: PublishOptions,
  ): Promise<PublishResult>;
  /** `metrics:{workspaceId}`, event "metric". */
  publishMetric(workspaceId: string | number, data: unknown, options?: PublishOptions): Promise<PublishResult>;
  /** Closes the channel; later publishes fail with FAILED_PRECONDITION. */
  close(): Promise<void>;
}

export declare class PublishError extends Error {
  constructor(code: StatusName, message: string, channel?: string);
  readonly name: 'PublishError';
  /** gRPC status name, e.g. 'PERMISSION_DENIED'. */
  code: StatusName;
  /** What is wrong, as the gateway (or the SDK) said it. */
  details: string;
  channel: string;
  /** Numeric gRPC status code. */
  grpcCode: grpc.status;
}

export interface ControlResult {
  /** True when the gateway applied the call. */
  ok: boolean;
  /** Streams affected on the gateway node that answered (other nodes act on theirs). */
  streams: number;
  /** 'OK', the gRPC status name of the failure, or 'DISABLED'. */
  code: ResultCode;
  message: string;
}

export interface DisconnectOptions extends CallOptions {
  /** Sent to the client in `event: revoked`. */
  reason?: string;
  /** Also refuse the user's tokens issued before this call (by `iat`) until they expire. */
  revokeTokens?: boolean;
}

export interface UnsubscribeOptions extends CallOptions {
  /** The removed channels' denial reason in `event: subscriptions`. */
  reason?: string;
}

/**
 * Disconnects users and removes channels from their open streams, on every gateway node. The
 * same options and environment variables as Publisher (enabled included); the gateway allows
 * it only for a certificate whose [[publishers]] entry has `control = true`.
 */
export declare class Control {
  constructor(options?: PublisherOptions);
  readonly addr: string;
  readonly timeoutMs: number;
  readonly strict: boolean;
  readonly enabled: boolean;
  /** The generated client. Throws a ConfigError when disabled. */
  readonly client: ControlClient;
  /** Closes each of the user's (JWT `sub`) streams with `event: revoked`. */
  disconnect(userId: string, options?: DisconnectOptions): Promise<ControlResult>;
  /** Removes the channels matching `pattern` (e.g. 'logs:ws1:**') from the user's streams. */
  unsubscribe(userId: string, pattern: string, options?: UnsubscribeOptions): Promise<ControlResult>;
  /** Closes the channel; later calls fail with FAILED_PRECONDITION. */
  close(): Promise<void>;
}

/** A failed control call (strict mode); an instance of PublishError at run time. */
export declare class ControlError extends Error {
  constructor(code: StatusName, message: string);
  readonly name: 'ControlError';
  code: StatusName;
  details: string;
  grpcCode: grpc.status;
}

export declare class ConfigError extends Error {
  readonly name: 'ConfigError';
}

/** Loads the proto with LOADER_OPTIONS; the typed package object for custom clients/servers. */
export declare function loadGrpcPackage(): ProtoGrpcType;

export declare const DEFAULT_ADDR: string;
export declare const DEFAULT_TIMEOUT_MS: number;
/** The `code` of every result of a disabled publisher. */
export declare const DISABLED: 'DISABLED';
export declare const LOADER_OPTIONS: Readonly<import('@grpc/proto-loader').Options>;
export declare const PROTO_ROOT: string;
export declare const PROTO_FILE: string;
export declare const VERSION: string;

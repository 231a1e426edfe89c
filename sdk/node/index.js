'use strict';
// Publisher SDK for sse-gateway: thin promise-based wrappers around the generated
// `ssegateway.v1.Publisher` and `ssegateway.v1.Control` clients (@grpc/grpc-js +
// @grpc/proto-loader, types in generated/).
//
// One mTLS channel per Publisher, reused by every call; a deadline on every call (default 5 s).
// A failed publish resolves to a result with `ok: false` (and is logged), so publishing never
// breaks the caller's own work - unless `strict: true`, then the promise rejects with a PublishError.
// SSE_GATEWAY_ENABLED=false (or `enabled: false`) makes a Publisher a no-op: no certificate needed,
// nothing dialled, each call resolves to `ok: false` with code DISABLED (logged once).

const fs = require('node:fs');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const VERSION = require('./package.json').version;
const DEFAULT_ADDR = 'localhost:50051';
const DEFAULT_TIMEOUT_MS = 5000;
/** The `code` of every result of a disabled publisher. */
const DISABLED = 'DISABLED';
const FALSE_WORDS = new Set(['false', '0', 'no', 'off']);
const TRUE_WORDS = new Set(['true', '1', 'yes', 'on']);

const PROTO_ROOT = path.join(__dirname, 'proto');
const PROTO_FILE = 'ssegateway/v1/gateway.proto';
// Must match the options sdk-gen/generate passes to proto-loader-gen-types, or the generated
// TypeScript types would not describe the loaded messages.
const LOADER_OPTIONS = Object.freeze({
  keepCase: false,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
  includeDirs: [PROTO_ROOT],
});

// A channel segment (SPEC section 3); the helpers check ids so that an id holding ':' can never
// address another channel than the one the helper names.
const SEGMENT = /^[A-Za-z0-9_.@-]{1,128}$/;

const STATUS_NAMES = Object.fromEntries(
  Object.entries(grpc.status).filter(([, v]) => typeof v === 'number').map(([k, v]) => [v, k]),
);

let loaded = null;
/** Loads the proto (once) and returns the `ssegateway` package object (typed as ProtoGrpcType). */
function loadGrpcPackage() {
  if (!loaded) {
    const def = protoLoader.loadSync(PROTO_FILE, LOADER_OPTIONS);
    loaded = grpc.loadPackageDefinition(def);
  }
  return loaded;
}

class ConfigError extends Error {
  constructor(message) {
    super(message);
    this.name = 'ConfigError';
  }
}

class PublishError extends Error {
  /**
   * @param {string} code gRPC status name, e.g. 'PERMISSION_DENIED'
   * @param {string} message what is wrong
   * @param {string} [channel]
   */
  constructor(code, message, channel) {
    super(`${code}: ${message}${channel ? ` (${channel})` : ''}`);
    this.name = 'PublishError';
    this.code = code;
    this.details = message;
    this.channel = channel || '';
    this.grpcCode = typeof grpc.status[code] === 'number' ? grpc.status[code] : grpc.status.UNKNOWN;
  }
}

function readPem(value, what, env) {
  if (value === undefined || value === null || value === '') return null;
  if (Buffer.isBuffer(value)) return value;
  if (value instanceof Uint8Array) return Buffer.from(value);
  const text = String(value);
  if (text.trimStart().startsWith('-----BEGIN')) return Buffer.from(text);
  try {
    return fs.readFileSync(text);
  } catch (e) {
    throw new ConfigError(`cannot read the ${what} file '${text}' (option or $${env}): ${e.code || e.message}`);
  }
}

/**
 * The on/off switch: the `enabled` option, else $SSE_GATEWAY_ENABLED, else on. Strings are read
 * case-insensitively (false/0/no/off, true/1/yes/on; empty means unset); anything else is a
 * ConfigError, so that a typo never silently flips the switch.
 */
function isEnabled(option, env) {
  if (typeof option === 'boolean') return option;
  let value = option;
  let where = 'enabled';
  if (value === undefined || value === null) {
    value = env.SSE_GATEWAY_ENABLED;
    where = '$SSE_GATEWAY_ENABLED';
    if (value === undefined) return true;
  }
  if (typeof value !== 'string') throw new ConfigError(`${where} must be a boolean, not ${typeof value}`);
  const text = value.trim().toLowerCase();
  if (text === '' || TRUE_WORDS.has(text)) return true;
  if (FALSE_WORDS.has(text)) return false;
  throw new ConfigError(`${where}='${value}': use true or false (also 1/0, yes/no, on/off)`);
}

function segment(value, what) {
  const text = String(value);
  if (!SEGMENT.test(text)) {
    throw new PublishError(
      'INVALID_ARGUMENT',
      `${what} '${text}' is not a valid channel segment ([A-Za-z0-9_.@-], 1 to 128 characters)`,
    );
  }
  return text;
}

function toAudience(a) {
  if (a === undefined || a === null) return null;
  if (typeof a !== 'object' || Array.isArray(a)) {
    throw new PublishError('INVALID_ARGUMENT', 'audience must be an object { userIds?: string[], roles?: string[] }');
  }
  const userIds = a.userIds ?? a.user_ids ?? [];
  const roles = a.roles ?? [];
  if (!Array.isArray(userIds) || !Array.isArray(roles)) {
    throw new PublishError('INVALID_ARGUMENT', 'audience userIds and roles must be arrays of strings');
  }
  return { userIds: userIds.map(String), roles: roles.map(String) };
}

// gRPC reports a refused certificate as UNAVAILABLE with a transport message; say what to check.
const TLS_FAILURE = /SSL|TLS|handshake|certificate|alert/i;
const TLS_HINT =
  "TLS handshake with the gateway failed: check that this service's certificate (cert/key) is " +
  'signed by the CA the gateway trusts ([grpc] client_ca), and that ca is the CA of the ' +
  "gateway's certificate";

function fromServiceError(err) {
  if (err && typeof err.code === 'number') {
    const code = STATUS_NAMES[err.code] || 'UNKNOWN';
    let details = String(err.details || err.message).replace(/\s*Resolution note:\s*$/, '').trim();
    if (code === 'UNAVAILABLE' && TLS_FAILURE.test(details)) details = `${TLS_HINT} (${details})`;
    return new PublishError(code, details);
  }
  return new PublishError('INTERNAL', err && err.message ? err.message : String(err));
}

const defaultLogger = { warn: (msg) => console.warn(msg) };

// The settings shared by Publisher and Control (options, else SSE_GATEWAY_* variables) and the
// generated client of `service`, unless disabled.
function configure(self, options, service) {
  const env = process.env;
  self.addr = options.addr || env.SSE_GATEWAY_ADDR || DEFAULT_ADDR;
  if (/^[a-z]+:\/\//i.test(self.addr)) {
    throw new ConfigError(`addr '${self.addr}': give host:port, without a scheme`);
  }
  const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  if (!(typeof timeoutMs === 'number' && timeoutMs > 0)) {
    throw new ConfigError('timeoutMs must be a positive number of milliseconds');
  }
  self.timeoutMs = timeoutMs;
  self.strict = Boolean(options.strict);
  self.logger = options.logger === undefined ? defaultLogger : options.logger;
  self.enabled = isEnabled(options.enabled, env);
  self._closed = false;
  self._client = null;
  self._disabledLogged = false;
  if (!self.enabled) return; // a no-op: no certificate is needed or read, no client is made
  const ca = options.ca ?? env.SSE_GATEWAY_CA;
  const cert = options.cert ?? env.SSE_GATEWAY_CERT;
  const key = options.key ?? env.SSE_GATEWAY_KEY;
  if (!cert || !key) {
    throw new ConfigError(
      'the gateway requires a client certificate: pass { cert, key } (PEM files or contents) ' +
        'or set $SSE_GATEWAY_CERT and $SSE_GATEWAY_KEY',
    );
  }
  let credentials;
  try {
    credentials = grpc.credentials.createSsl(
      readPem(ca, 'CA certificate', 'SSE_GATEWAY_CA'),
      readPem(key, 'client key', 'SSE_GATEWAY_KEY'),
      readPem(cert, 'client certificate', 'SSE_GATEWAY_CERT'),
    );
  } catch (e) {
    if (e instanceof ConfigError) throw e;
    throw new ConfigError(`invalid TLS material (CA, client certificate or key): ${e.message}`);
  }
  const channelOptions = { 'grpc.primary_user_agent': `sse-gateway-sdk-node/${VERSION}` };
  const serverName = options.serverName || env.SSE_GATEWAY_SERVER_NAME;
  if (serverName) {
    channelOptions['grpc.ssl_target_name_override'] = serverName;
    channelOptions['grpc.default_authority'] = serverName;
  }
  Object.assign(channelOptions, options.channelOptions || {});
  const Client = loadGrpcPackage().ssegateway.v1[service];
  self._client = new Client(self.addr, credentials, channelOptions);
}

class Publisher {
  /**
   * @param {import('./index').PublisherOptions} [options]
   */
  constructor(options = {}) {
    configure(this, options, 'Publisher');
    this._stringify = options.jsonStringify || JSON.stringify;
  }

  /** The generated client (typed PublisherClient), e.g. for PublishStream. A disabled publisher has none. */
  get client() {
    if (!this._client) throw new ConfigError(`${disabledMessage(this.addr)}: it has no gRPC client`);
    return this._client;
  }

  /**
   * Publishes `data` (any JSON-serialisable value) on `channel`.
   * @returns {Promise<import('./index').PublishResult>}
   */
  async publish(channel, data, options = {}) {
    if (!this.enabled) return this._disabled(typeof channel === 'string' ? channel : '');
    const strict = options.strict ?? this.strict;
    try {
      const req = this._request(channel, data, options);
      const res = await this._call('publish', req, options.timeoutMs);
      return okResult(channel, res);
    } catch (err) {
      return this._failed(err, channel, strict);
    }
  }

  /**
   * Publishes up to 1000 events in order, all or none.
   * @returns {Promise<import('./index').BatchResult>}
   */
  async publishBatch(events, options = {}) {
    if (!this.enabled) {
      this._logDisabledOnce();
      return { ok: false, results: [], code: DISABLED, message: disabledMessage(this.addr) };
    }
    const strict = options.strict ?? this.strict;
    let n;
    try {
      if (!events || typeof events[Symbol.iterator] !== 'function') {
        throw new PublishError('INVALID_ARGUMENT', 'events must be an array of { channel, data, event?, ... }');
      }
      const reqs = Array.from(events, (ev, i) => {
        if (!ev || typeof ev !== 'object') {
          throw new PublishError('INVALID_ARGUMENT', `batch event ${i}: expected an object { channel, data, ... }`);
        }
        try {
          return this._request(ev.channel, ev.data, ev);
        } catch (e) {
          if (e instanceof PublishError) throw new PublishError(e.code, `batch event ${i}: ${e.details}`, e.channel);
          throw e;
        }
      });
      n = reqs.length;
      const res = await this._call('publishBatch', { events: reqs }, options.timeoutMs);
      return {
        ok: true,
        results: res.results.map((r, i) => okResult(reqs[i].channel, r)),
        code: 'OK',
        message: '',
      };
    } catch (err) {
      const e = err instanceof PublishError ? err : this._unexpected(err);
      if (strict) throw e;
      this._warn(`publishBatch of ${n === undefined ? 'events' : `${n} events`} failed: ${e.code}: ${e.details}`);
      return { ok: false, results: [], code: e.code, message: e.details };
    }
  }

  /**
   * Publishes a workflow log line on `logs:{workspaceId}:{workflowId}` (event "log");
   * `workflowId` null/undefined publishes on `logs:{workspaceId}`.
   */
  async publishLog(workspaceId, workflowId, data, options = {}) {
    let channel;
    try {
      const ws = segment(workspaceId, 'workspaceId');
      channel = workflowId === undefined || workflowId === null ? `logs:${ws}` : `logs:${ws}:${segment(workflowId, 'workflowId')}`;
    } catch (err) {
      if (!this.enabled) return this._disabled('');
      return this._failed(err, '', options.strict ?? this.strict);
    }
    return this.publish(channel, data, { event: 'log', ...options });
  }

  /** Publishes a metric sample on `metrics:{workspaceId}` (event "metric"). */
  async publishMetric(workspaceId, data, options = {}) {
    let channel;
    try {
      channel = `metrics:${segment(workspaceId, 'workspaceId')}`;
    } catch (err) {
      if (!this.enabled) return this._disabled('');
      return this._failed(err, '', options.strict ?? this.strict);
    }
    return this.publish(channel, data, { event: 'metric', ...options });
  }

  /** Closes the gRPC channel; later publishes fail with FAILED_PRECONDITION. */
  async close() {
    if (!this._closed) {
      this._closed = true;
      if (this._client) this._client.close();
    }
  }

  // The result of every call of a disabled publisher (never rejected, even when strict).
  _disabled(channel) {
    this._logDisabledOnce();
    return { ok: false, channel, id: '', delivered: 0, duplicate: false, code: DISABLED, message: disabledMessage(this.addr) };
  }

  _logDisabledOnce() {
    if (this._disabledLogged) return;
    this._disabledLogged = true;
    this._warn(`${disabledMessage(this.addr)}; every publish resolves to ok: false with code ${DISABLED}`);
  }

  _request(channel, data, options) {
    if (typeof channel !== 'string' || channel === '') {
      throw new PublishError('INVALID_ARGUMENT', `channel must be a non-empty string, not ${JSON.stringify(channel)}`);
    }
    let text;
    try {
      text = this._stringify(data);
    } catch (e) {
      throw new PublishError('INVALID_ARGUMENT', `data is not JSON-serialisable: ${e.message}`, channel);
    }
    if (typeof text !== 'string') {
      throw new PublishError('INVALID_ARGUMENT', `data is not JSON-serialisable: ${typeof data}`, channel);
    }
    return {
      channel,
      data: text,
      event: options.event || '',
      idempotencyKey: options.idempotencyKey || '',
      audience: toAudience(options.audience),
    };
  }

  _call(method, req, timeoutMs) {
    if (this._closed) {
      return Promise.reject(new PublishError('FAILED_PRECONDITION', 'the publisher is closed'));
    }
    const deadline = new Date(Date.now() + (timeoutMs ?? this.timeoutMs));
    return new Promise((resolve, reject) => {
      this._client[method](req, { deadline }, (err, res) => (err ? reject(fromServiceError(err)) : resolve(res)));
    });
  }

  _unexpected(err) {
    if (this._closed) return new PublishError('FAILED_PRECONDITION', 'the publisher is closed');
    return new PublishError('INTERNAL', err && err.message ? err.message : String(err));
  }

  _failed(err, channel, strict) {
    const e = err instanceof PublishError ? err : this._unexpected(err);
    if (!e.channel && channel) e.channel = channel;
    if (strict) throw e;
    this._warn(`publish to '${e.channel}' failed: ${e.code}: ${e.details}`);
    return { ok: false, channel: e.channel, id: '', delivered: 0, duplicate: false, code: e.code, message: e.details };
  }

  _warn(msg) {
    if (this.logger && typeof this.logger.warn === 'function') this.logger.warn(`sse-gateway ${msg}`);
  }
}

class ControlError extends PublishError {
  constructor(code, message) {
    super(code, message);
    this.name = 'ControlError';
  }
}

/**
 * Disconnects users and removes channels from their open streams, on every gateway node. The
 * same options and environment variables as Publisher; the gateway allows it only for a
 * certificate whose [[publishers]] entry has `control = true`. A failed call resolves to
 * `{ ok: false, code, message }` (and is logged) unless `strict`, then it rejects with a
 * ControlError; a disabled Control resolves every call to `ok: false` with code DISABLED.
 */
class Control {
  /**
   * @param {import('./index').PublisherOptions} [options]
   */
  constructor(options = {}) {
    configure(this, options, 'Control');
  }

  /** The generated client (typed ControlClient). A disabled Control has none. */
  get client() {
    if (!this._client) throw new ConfigError(`${controlDisabledMessage(this.addr)}: it has no gRPC client`);
    return this._client;
  }

  /**
   * Closes each of the user's streams with `event: revoked` carrying `reason`; with
   * `revokeTokens`, the user's tokens issued before this call (by `iat`) are refused until
   * they expire.
   * @returns {Promise<import('./index').ControlResult>}
   */
  async disconnect(userId, options = {}) {
    const req = { userId: String(userId ?? ''), reason: options.reason || '', revokeTokens: Boolean(options.revokeTokens) };
    return this._run(`disconnect of '${req.userId}'`, 'disconnect', req, options);
  }

  /**
   * Removes the channels matching `pattern` (e.g. 'logs:ws1:**') from the user's open streams;
   * each gets `event: subscriptions` listing them as denied with `reason`.
   * @returns {Promise<import('./index').ControlResult>}
   */
  async unsubscribe(userId, pattern, options = {}) {
    const req = { userId: String(userId ?? ''), pattern: String(pattern ?? ''), reason: options.reason || '' };
    return this._run(`unsubscribe of '${req.userId}' from '${req.pattern}'`, 'unsubscribe', req, options);
  }

  /** Closes the gRPC channel; later calls fail with FAILED_PRECONDITION. */
  async close() {
    if (!this._closed) {
      this._closed = true;
      if (this._client) this._client.close();
    }
  }

  async _run(what, method, req, options) {
    if (!this.enabled) {
      if (!this._disabledLogged) {
        this._disabledLogged = true;
        this._warn(`${controlDisabledMessage(this.addr)}; every call resolves to ok: false with code ${DISABLED}`);
      }
      return { ok: false, streams: 0, code: DISABLED, message: controlDisabledMessage(this.addr) };
    }
    const strict = options.strict ?? this.strict;
    try {
      if (this._closed) throw new ControlError('FAILED_PRECONDITION', 'the control client is closed');
      const deadline = new Date(Date.now() + (options.timeoutMs ?? this.timeoutMs));
      const res = await new Promise((resolve, reject) => {
        this._client[method](req, { deadline }, (err, r) => (err ? reject(fromServiceError(err)) : resolve(r)));
      });
      return { ok: true, streams: res.streams, code: 'OK', message: '' };
    } catch (err) {
      const base = err instanceof PublishError ? err : new PublishError('INTERNAL', err && err.message ? err.message : String(err));
      const e = new ControlError(base.code, base.details);
      if (strict) throw e;
      this._warn(`${what} failed: ${e.code}: ${e.details}`);
      return { ok: false, streams: 0, code: e.code, message: e.details };
    }
  }

  _warn(msg) {
    if (this.logger && typeof this.logger.warn === 'function') this.logger.warn(`sse-gateway ${msg}`);
  }
}

function controlDisabledMessage(addr) {
  return `control is disabled (enabled: false or $SSE_GATEWAY_ENABLED=false): nothing is sent to ${addr}`;
}

function disabledMessage(addr) {
  return `publishing is disabled (enabled: false or $SSE_GATEWAY_ENABLED=false): nothing is sent to ${addr}`;
}

function okResult(channel, res) {
  return { ok: true, channel, id: res.id, delivered: res.delivered, duplicate: res.duplicate, code: 'OK', message: '' };
}

module.exports = {
  Publisher,
  PublishError,
  Control,
  ControlError,
  ConfigError,
  loadGrpcPackage,
  DEFAULT_ADDR,
  DEFAULT_TIMEOUT_MS,
  DISABLED,
  LOADER_OPTIONS,
  PROTO_ROOT,
  PROTO_FILE,
  VERSION,
};

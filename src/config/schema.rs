//! The configuration as written — TOML file sections, `SSE_GATEWAY__…` variables — as serde types
//! with their defaults. Closed sets are enums, optional files `Option<PathBuf>` (an empty string
//! also means unset). Nothing here is checked: `validate` turns a [`RawConfig`] into the runtime
//! [`Config`](super::Config).

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::channel::ChannelTypes;

/// A secret value (the HS256 key): never printed, never serialized.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for the code that signs or verifies with it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(REDACTED)
    }
}

/// How every secret is shown.
pub const REDACTED: &str = "<redacted>";

/// `jwt.algorithm`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum JwtAlgorithm {
    /// HMAC-SHA256 with a shared secret.
    #[default]
    #[serde(rename = "HS256")]
    Hs256,
    /// RSA PKCS#1 v1.5 with SHA-256, verified with a public key.
    #[serde(rename = "RS256")]
    Rs256,
    /// ECDSA P-256 with SHA-256, verified with a public key.
    #[serde(rename = "ES256")]
    Es256,
}

impl fmt::Display for JwtAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Hs256 => "HS256",
            Self::Rs256 => "RS256",
            Self::Es256 => "ES256",
        })
    }
}

/// `broker.kind`: where the event log lives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BrokerKind {
    /// In this process.
    #[default]
    Memory,
    /// Redis Streams, shared by several nodes.
    Redis,
}

/// `Option<PathBuf>` written as a string; `""` is unset (so `tls_cert = ""` keeps working).
mod opt_path {
    use super::*;

    pub fn serialize<S: Serializer>(v: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(
            &v.as_deref()
                .map(|p| p.to_string_lossy())
                .unwrap_or_default(),
        )
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
        Ok(Option::<String>::deserialize(d)?
            .filter(|s| !s.is_empty())
            .map(PathBuf::from))
    }
}

/// `Option<Secret>` written as a string; `""` is unset; shown as `"<redacted>"` when set.
mod opt_secret {
    use super::*;

    pub fn serialize<S: Serializer>(v: &Option<Secret>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if v.is_some() { REDACTED } else { "" })
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
        Ok(Option::<String>::deserialize(d)?
            .filter(|s| !s.is_empty())
            .map(Secret))
    }
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// `[http]`: the subscriber-facing listener.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Listen address.
    pub addr: SocketAddr,
    /// PEM certificate chain; with `tls_key`, serve HTTPS (h2 + http/1.1).
    #[serde(with = "opt_path")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key.
    #[serde(with = "opt_path")]
    pub tls_key: Option<PathBuf>,
    /// Origins allowed by CORS (credentials allowed).
    pub cors_origins: Vec<String>,
    /// Accept `?access_token=` on `/api/sse`.
    pub allow_query_token: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            addr: local(8080),
            tls_cert: None,
            tls_key: None,
            cors_origins: Vec::new(),
            allow_query_token: false,
        }
    }
}

/// `[grpc]`: the publisher-facing mTLS listener. The three files have no default: the dev
/// setup supplies its own, production must name them.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcConfig {
    /// Listen address.
    pub addr: SocketAddr,
    /// PEM server certificate chain.
    #[serde(with = "opt_path")]
    pub tls_cert: Option<PathBuf>,
    /// PEM server key.
    #[serde(with = "opt_path")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA that publisher certificates must chain to.
    #[serde(with = "opt_path")]
    pub client_ca: Option<PathBuf>,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        Self {
            addr: local(50051),
            tls_cert: None,
            tls_key: None,
            client_ca: None,
        }
    }
}

/// `[jwt]`: subscriber token verification.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    /// `HS256`, `RS256` or `ES256`.
    pub algorithm: JwtAlgorithm,
    /// HS256 secret.
    #[serde(with = "opt_secret")]
    pub secret: Option<Secret>,
    /// File holding the HS256 secret.
    #[serde(with = "opt_path")]
    pub secret_file: Option<PathBuf>,
    /// RS256/ES256 PEM public key.
    #[serde(with = "opt_path")]
    pub public_key_file: Option<PathBuf>,
    /// RS256/ES256 JWKS document.
    #[serde(with = "opt_path")]
    pub jwks_file: Option<PathBuf>,
    /// Required `iss` when not empty.
    pub issuer: String,
    /// Required `aud` when not empty.
    pub audience: String,
    /// Clock leeway for `exp`/`nbf`.
    pub leeway_secs: u64,
    /// The longest life of a token the issuer mints (`exp` − `iat`): a token revocation
    /// (`Control.Disconnect` with `revoke_tokens`) is kept this long.
    pub max_token_lifetime_secs: u64,
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            algorithm: JwtAlgorithm::Hs256,
            secret: None,
            secret_file: None,
            public_key_file: None,
            jwks_file: None,
            issuer: String::new(),
            audience: String::new(),
            leeway_secs: 30,
            max_token_lifetime_secs: 86_400,
        }
    }
}

/// `[sse]`: stream behaviour.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SseConfig {
    /// Seconds between `: ping` comments.
    pub heartbeat_secs: u64,
    /// The `retry:` hint sent to browsers.
    pub retry_ms: u64,
    /// Per-connection queue bound in events.
    pub queue_events: usize,
    /// Per-connection queue bound in bytes of rendered frames; 0 = `queue_events` full
    /// events of `limits.max_event_bytes` (so by default the event count is the bound).
    pub queue_bytes: usize,
}

impl Default for SseConfig {
    fn default() -> Self {
        Self {
            heartbeat_secs: 15,
            retry_ms: 3000,
            queue_events: 1024,
            queue_bytes: 0,
        }
    }
}

/// `[limits]` (used as is by the running gateway once validated).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest accepted `data`, in bytes.
    pub max_event_bytes: usize,
    /// Open streams per user (`sub`).
    pub max_connections_per_user: usize,
    /// Open streams on this node, all users together.
    pub max_connections: usize,
    /// Channels per stream.
    pub max_channels_per_connection: usize,
    /// Events per second per publisher (0 = unlimited).
    pub publisher_events_per_sec: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_event_bytes: 65536,
            max_connections_per_user: 16,
            max_connections: 100_000,
            max_channels_per_connection: 64,
            publisher_events_per_sec: 0,
        }
    }
}

/// `[history]`: retention of the event log (used as is once validated).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    /// Most events retained.
    pub max_events: usize,
    /// Oldest event retained, in seconds.
    pub max_age_secs: u64,
    /// Window in which an idempotency key is remembered.
    pub dedupe_window_secs: u64,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            max_events: 100_000,
            max_age_secs: 3600,
            dedupe_window_secs: 300,
        }
    }
}

/// `[broker]`: where the event log lives (used as is once validated).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// `memory` or `redis`.
    pub kind: BrokerKind,
    /// Redis URL.
    pub url: String,
    /// Prefix of every Redis key.
    pub key_prefix: String,
    /// Timeout of one Redis command, in milliseconds.
    pub timeout_ms: u64,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            kind: BrokerKind::Memory,
            url: "redis://127.0.0.1:6379".into(),
            key_prefix: "sse-gateway".into(),
            timeout_ms: 2000,
        }
    }
}

/// `authz.mode`: when the permission callback is asked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthzMode {
    /// Only for channels no token claim or subscribe rule grants.
    #[default]
    Fallback,
    /// For every channel the token grants: the callback must also allow it.
    Always,
}

/// `[authz]`: the app's own permission service, asked over HTTP (empty `url` = none).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthzConfig {
    /// `http://` or `https://` URL the gateway POSTs to; empty = no callback.
    pub url: String,
    /// `fallback` or `always`.
    pub mode: AuthzMode,
    /// Longest wait for one answer (a permit, connecting, the whole body), in milliseconds.
    pub timeout_ms: u64,
    /// How long an answer without `ttl_secs` is cached, in seconds (0 = not cached).
    pub cache_ttl_secs: u64,
    /// Callback requests in flight at once on this node; more wait (within `timeout_ms`).
    pub max_concurrent: usize,
    /// Cached (user, channel) answers kept at most; past it, new answers are not cached.
    pub cache_max_entries: usize,
}

impl Default for AuthzConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            mode: AuthzMode::Fallback,
            timeout_ms: 1000,
            cache_ttl_secs: 30,
            max_concurrent: 64,
            cache_max_entries: 100_000,
        }
    }
}

fn default_snapshot_ttl() -> u64 {
    86_400
}

/// `[channels.<type>]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelConfig {
    /// e.g. `logs:{workspace_id}:{workflow_id?}`.
    pub template: String,
    /// Patterns every authenticated user may read.
    #[serde(default)]
    pub subscribe: Vec<String>,
    /// Keep the latest event of each channel of this type, and send it first to a stream that
    /// starts without a cursor, adds the channel live, or gets `gap`.
    #[serde(default)]
    pub snapshot: bool,
    /// How long a latest event is kept (with `snapshot`), in seconds.
    #[serde(default = "default_snapshot_ttl")]
    pub snapshot_ttl_secs: u64,
}

/// `[[publishers]]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PublisherConfig {
    /// Certificate name (first DNS SAN, else CN).
    pub name: String,
    /// Channel patterns this publisher may publish to.
    #[serde(default)]
    pub channels: Vec<String>,
    /// May call the `Control` service (disconnect users, remove their channels).
    #[serde(default)]
    pub control: bool,
}

/// The default channel types, from the product's first users.
pub fn default_channels() -> BTreeMap<String, ChannelConfig> {
    ChannelTypes::defaults()
        .into_iter()
        .map(|(name, template, subscribe)| {
            let snapshot = ChannelTypes::DEFAULT_SNAPSHOT.contains(&name.as_str());
            (
                name,
                ChannelConfig {
                    template,
                    subscribe,
                    snapshot,
                    snapshot_ttl_secs: default_snapshot_ttl(),
                },
            )
        })
        .collect()
}

/// The whole configuration as written, before validation.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    /// `[http]`.
    pub http: HttpConfig,
    /// `[grpc]`.
    pub grpc: GrpcConfig,
    /// `[jwt]`.
    pub jwt: JwtConfig,
    /// `[sse]`.
    pub sse: SseConfig,
    /// `[limits]`.
    pub limits: LimitsConfig,
    /// `[history]`.
    pub history: HistoryConfig,
    /// `[broker]`.
    pub broker: BrokerConfig,
    /// `[channels.*]`; a source that sets any replaces the default set.
    pub channels: BTreeMap<String, ChannelConfig>,
    /// `[[publishers]]`.
    pub publishers: Vec<PublisherConfig>,
    /// `[authz]`.
    pub authz: AuthzConfig,
}

impl Default for RawConfig {
    fn default() -> Self {
        Self {
            http: HttpConfig::default(),
            grpc: GrpcConfig::default(),
            jwt: JwtConfig::default(),
            sse: SseConfig::default(),
            limits: LimitsConfig::default(),
            history: HistoryConfig::default(),
            broker: BrokerConfig::default(),
            channels: default_channels(),
            publishers: Vec::new(),
            authz: AuthzConfig::default(),
        }
    }
}

impl RawConfig {
    /// Every key that names a file, with its value (for path resolution).
    pub fn paths_mut(&mut self) -> [(&'static str, &mut Option<PathBuf>); 8] {
        [
            ("http.tls_cert", &mut self.http.tls_cert),
            ("http.tls_key", &mut self.http.tls_key),
            ("grpc.tls_cert", &mut self.grpc.tls_cert),
            ("grpc.tls_key", &mut self.grpc.tls_key),
            ("grpc.client_ca", &mut self.grpc.client_ca),
            ("jwt.secret_file", &mut self.jwt.secret_file),
            ("jwt.public_key_file", &mut self.jwt.public_key_file),
            ("jwt.jwks_file", &mut self.jwt.jwks_file),
        ]
    }

    /// The configuration as TOML, secrets shown as `"<redacted>"`.
    ///
    /// # Errors
    /// When TOML cannot represent a value (not expected for this shape).
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(self)
    }
}

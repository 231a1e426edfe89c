//! Configuration: defaults ⊕ TOML file ⊕ `SSE_GATEWAY__<SECTION>__<KEY>` environment ⊕ CLI flags,
//! parsed into typed values and validated before any port is bound.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::channel::{ChannelPattern, ChannelType, ChannelTypes};

/// The prefix of environment overrides.
pub const ENV_PREFIX: &str = "SSE_GATEWAY__";

/// A configuration that cannot be used; the message names the key or file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file or an override does not parse or has an unknown key.
    #[error("{origin}: {message}")]
    Parse {
        /// File name or environment variable.
        origin: String,
        /// The parser's message (names the key).
        message: String,
    },
    /// A value that parses but is not usable.
    #[error("invalid value for `{key}`: {message}")]
    Invalid {
        /// Dotted key, e.g. `http.addr`.
        key: String,
        /// What is wrong.
        message: String,
    },
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        message: message.into(),
    }
}

/// `[http]`: the subscriber-facing listener.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Listen address.
    pub addr: String,
    /// PEM certificate chain; with `tls_key`, serve HTTPS (h2 + http/1.1).
    pub tls_cert: String,
    /// PEM private key.
    pub tls_key: String,
    /// Origins allowed by CORS (credentials allowed).
    pub cors_origins: Vec<String>,
    /// Accept `?access_token=` on `/api/sse`.
    pub allow_query_token: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            addr: "127.0.0.1:8080".into(),
            tls_cert: String::new(),
            tls_key: String::new(),
            cors_origins: Vec::new(),
            allow_query_token: false,
        }
    }
}

/// `[grpc]`: the publisher-facing mTLS listener.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcConfig {
    /// Listen address.
    pub addr: String,
    /// PEM server certificate chain.
    pub tls_cert: String,
    /// PEM server key.
    pub tls_key: String,
    /// PEM CA that publisher certificates must chain to.
    pub client_ca: String,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        Self {
            addr: "127.0.0.1:50051".into(),
            tls_cert: "certs/server.pem".into(),
            tls_key: "certs/server-key.pem".into(),
            client_ca: "certs/ca.pem".into(),
        }
    }
}

/// `[jwt]`: subscriber token verification.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    /// `HS256`, `RS256` or `ES256`.
    pub algorithm: String,
    /// HS256 secret.
    pub secret: String,
    /// File holding the HS256 secret.
    pub secret_file: String,
    /// RS256/ES256 PEM public key.
    pub public_key_file: String,
    /// RS256/ES256 JWKS document.
    pub jwks_file: String,
    /// Required `iss` when set.
    pub issuer: String,
    /// Required `aud` when set.
    pub audience: String,
    /// Clock leeway for `exp`/`nbf`.
    pub leeway_secs: u64,
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            algorithm: "HS256".into(),
            secret: String::new(),
            secret_file: String::new(),
            public_key_file: String::new(),
            jwks_file: String::new(),
            issuer: String::new(),
            audience: String::new(),
            leeway_secs: 30,
        }
    }
}

impl fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtConfig")
            .field("algorithm", &self.algorithm)
            .field(
                "secret",
                &if self.secret.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .field("secret_file", &self.secret_file)
            .field("public_key_file", &self.public_key_file)
            .field("jwks_file", &self.jwks_file)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway_secs", &self.leeway_secs)
            .finish()
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

/// `[limits]`.
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

/// `[history]`: retention of the event log.
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

/// `[broker]`: where the event log lives.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// `memory` or `redis`.
    pub kind: String,
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
            kind: "memory".into(),
            url: "redis://127.0.0.1:6379".into(),
            key_prefix: "sse-gateway".into(),
            timeout_ms: 2000,
        }
    }
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
}

/// `[[publishers]]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PublisherConfig {
    /// Certificate name (first DNS SAN, else CN).
    pub name: String,
    /// Channel patterns this publisher may publish to.
    #[serde(default)]
    pub channels: Vec<String>,
}

/// The configuration file's shape.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
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
    /// `[channels.*]`; any table replaces the default set.
    pub channels: BTreeMap<String, ChannelConfig>,
    /// `[[publishers]]`.
    pub publishers: Vec<PublisherConfig>,
}

/// Flags given on the command line; they win over everything else.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--http-addr`.
    pub http_addr: Option<String>,
    /// `--grpc-addr`.
    pub grpc_addr: Option<String>,
}

/// Which broker backs the event log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BrokerKind {
    /// In this process.
    Memory,
    /// Redis Streams, shared by several nodes.
    Redis,
}

/// A publisher's permissions.
#[derive(Clone, Debug)]
pub struct Publisher {
    /// Certificate name.
    pub name: String,
    /// Allowed channel patterns.
    pub channels: Vec<ChannelPattern>,
}

/// The validated configuration the gateway runs with.
#[derive(Clone, Debug)]
pub struct Config {
    /// The sections as given (paths resolved).
    pub raw: RawConfig,
    /// HTTP listen address.
    pub http_addr: SocketAddr,
    /// gRPC listen address.
    pub grpc_addr: SocketAddr,
    /// Configured channel types.
    pub channel_types: ChannelTypes,
    /// Publisher permissions by name.
    pub publishers: BTreeMap<String, Publisher>,
    /// Broker kind.
    pub broker_kind: BrokerKind,
    /// True when running the zero-configuration dev setup.
    pub dev: bool,
}

impl Config {
    /// Loads from an optional file, environment pairs and flags.
    ///
    /// Environment is passed in (not read here) so tests never touch the process environment.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the file or key.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Self, ConfigError> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                toml::from_str::<toml::Table>(&text).map_err(|e| ConfigError::Parse {
                    origin: path.display().to_string(),
                    message: e.to_string(),
                })?
            }
            None => toml::Table::new(),
        };
        apply_env(&mut table, env)?;
        let origin = file.map_or_else(|| "configuration".to_owned(), |p| p.display().to_string());
        let mut raw: RawConfig =
            RawConfig::deserialize(toml::Value::Table(table)).map_err(|e| ConfigError::Parse {
                origin,
                message: e.to_string(),
            })?;
        if let Some(addr) = &overrides.http_addr {
            raw.http.addr.clone_from(addr);
        }
        if let Some(addr) = &overrides.grpc_addr {
            raw.grpc.addr.clone_from(addr);
        }
        let base = file
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default();
        Self::from_raw(raw, &base, file.is_none())
    }

    /// Validates a raw configuration; relative paths are resolved against `base`.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key.
    pub fn from_raw(mut raw: RawConfig, base: &Path, dev: bool) -> Result<Self, ConfigError> {
        let resolve = |p: &mut String| {
            if !p.is_empty() && Path::new(p.as_str()).is_relative() && !base.as_os_str().is_empty()
            {
                *p = base.join(&*p).display().to_string();
            }
        };
        for p in [
            &mut raw.http.tls_cert,
            &mut raw.http.tls_key,
            &mut raw.grpc.tls_cert,
            &mut raw.grpc.tls_key,
            &mut raw.grpc.client_ca,
            &mut raw.jwt.secret_file,
            &mut raw.jwt.public_key_file,
            &mut raw.jwt.jwks_file,
        ] {
            resolve(p);
        }
        let http_addr: SocketAddr = raw
            .http
            .addr
            .parse()
            .map_err(|e| invalid("http.addr", format!("{:?}: {e}", raw.http.addr)))?;
        let grpc_addr: SocketAddr = raw
            .grpc
            .addr
            .parse()
            .map_err(|e| invalid("grpc.addr", format!("{:?}: {e}", raw.grpc.addr)))?;
        if raw.http.tls_cert.is_empty() != raw.http.tls_key.is_empty() {
            return Err(invalid(
                "http.tls_cert",
                "http.tls_cert and http.tls_key must be set together",
            ));
        }
        for origin in &raw.http.cors_origins {
            if http::HeaderValue::from_str(origin).is_err() || !origin.contains("://") {
                return Err(invalid(
                    "http.cors_origins",
                    format!("{origin:?} is not an origin like https://app.example.com"),
                ));
            }
        }
        if !dev {
            for (key, path) in [
                ("grpc.tls_cert", &raw.grpc.tls_cert),
                ("grpc.tls_key", &raw.grpc.tls_key),
                ("grpc.client_ca", &raw.grpc.client_ca),
                ("http.tls_cert", &raw.http.tls_cert),
                ("http.tls_key", &raw.http.tls_key),
            ] {
                if key.starts_with("grpc") && path.is_empty() {
                    return Err(invalid(key, "required"));
                }
                if !path.is_empty() && !Path::new(path).is_file() {
                    return Err(invalid(key, format!("file {path:?} does not exist")));
                }
            }
        }
        match raw.jwt.algorithm.as_str() {
            "HS256" => {
                if !dev && raw.jwt.secret.is_empty() && raw.jwt.secret_file.is_empty() {
                    return Err(invalid(
                        "jwt.secret",
                        "HS256 needs jwt.secret or jwt.secret_file",
                    ));
                }
            }
            "RS256" | "ES256" => {
                if raw.jwt.public_key_file.is_empty() && raw.jwt.jwks_file.is_empty() {
                    return Err(invalid(
                        "jwt.public_key_file",
                        format!(
                            "{} needs jwt.public_key_file or jwt.jwks_file",
                            raw.jwt.algorithm
                        ),
                    ));
                }
            }
            other => {
                return Err(invalid(
                    "jwt.algorithm",
                    format!("{other:?} is not one of HS256, RS256, ES256"),
                ))
            }
        }
        for (key, path) in [
            ("jwt.secret_file", &raw.jwt.secret_file),
            ("jwt.public_key_file", &raw.jwt.public_key_file),
            ("jwt.jwks_file", &raw.jwt.jwks_file),
        ] {
            if !path.is_empty() && !Path::new(path).is_file() {
                return Err(invalid(key, format!("file {path:?} does not exist")));
            }
        }
        if raw.sse.heartbeat_secs == 0 {
            return Err(invalid("sse.heartbeat_secs", "must be at least 1"));
        }
        if raw.sse.queue_events == 0 {
            return Err(invalid("sse.queue_events", "must be at least 1"));
        }
        if raw.sse.queue_bytes != 0 && raw.sse.queue_bytes < 1024 {
            return Err(invalid(
                "sse.queue_bytes",
                "must be 0 (derived) or at least 1024",
            ));
        }
        for (key, value) in [
            ("limits.max_event_bytes", raw.limits.max_event_bytes),
            (
                "limits.max_connections_per_user",
                raw.limits.max_connections_per_user,
            ),
            ("limits.max_connections", raw.limits.max_connections),
            (
                "limits.max_channels_per_connection",
                raw.limits.max_channels_per_connection,
            ),
            ("history.max_events", raw.history.max_events),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        let broker_kind = match raw.broker.kind.as_str() {
            "memory" => BrokerKind::Memory,
            "redis" => BrokerKind::Redis,
            other => {
                return Err(invalid(
                    "broker.kind",
                    format!("{other:?} is not one of memory, redis"),
                ))
            }
        };
        if broker_kind == BrokerKind::Redis && !raw.broker.url.starts_with("redis") {
            return Err(invalid("broker.url", "must be a redis:// or rediss:// URL"));
        }
        let types = if raw.channels.is_empty() {
            ChannelTypes::defaults()
        } else {
            raw.channels
                .iter()
                .map(|(n, c)| (n.clone(), c.template.clone(), c.subscribe.clone()))
                .collect()
        };
        let channel_types = ChannelTypes::new(
            types
                .iter()
                .map(|(n, t, s)| {
                    ChannelType::from_template(n, t, s)
                        .map_err(|m| invalid(&format!("channels.{n}"), m))
                })
                .collect::<Result<Vec<_>, _>>()?,
        );
        if dev && raw.publishers.is_empty() {
            raw.publishers = dev_publishers();
        }
        let mut publishers = BTreeMap::new();
        for (i, p) in raw.publishers.iter().enumerate() {
            if p.name.is_empty() {
                return Err(invalid(
                    &format!("publishers[{i}].name"),
                    "must not be empty",
                ));
            }
            let channels = p
                .channels
                .iter()
                .map(|c| ChannelPattern::parse(c))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| invalid(&format!("publishers[{i}].channels"), e.to_string()))?;
            if publishers
                .insert(
                    p.name.clone(),
                    Publisher {
                        name: p.name.clone(),
                        channels,
                    },
                )
                .is_some()
            {
                return Err(invalid(
                    &format!("publishers[{i}].name"),
                    format!("{:?} is listed twice", p.name),
                ));
            }
        }
        if raw.sse.queue_bytes == 0 {
            // Frames carry ~1 KiB of envelope around the payload at most.
            raw.sse.queue_bytes = raw
                .sse
                .queue_events
                .saturating_mul(raw.limits.max_event_bytes.saturating_add(1024));
        }
        Ok(Self {
            raw,
            http_addr,
            grpc_addr,
            channel_types,
            publishers,
            broker_kind,
            dev,
        })
    }
}

/// The example services of the dev setup and what they may publish.
pub fn dev_publishers() -> Vec<PublisherConfig> {
    [
        ("l5-etl-service", vec!["logs:**", "metrics:*"]),
        ("faas-service", vec!["workflow:**"]),
        ("analytics-service", vec!["metrics:*", "dashboards:*"]),
        ("dev-cli", vec!["**"]),
    ]
    .into_iter()
    .map(|(name, channels)| PublisherConfig {
        name: name.to_owned(),
        channels: channels.into_iter().map(str::to_owned).collect(),
    })
    .collect()
}

/// Merges `SSE_GATEWAY__SECTION__KEY=value` pairs into the table. Values are TOML literals
/// (`true`, `42`, `["a"]`) where the default of that key is not a string, else taken verbatim.
fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let defaults = toml::Value::try_from(RawConfig::default()).map_err(|e| ConfigError::Parse {
        origin: "defaults".into(),
        message: e.to_string(),
    })?;
    for (name, value) in env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let parts: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        let [section, key] = parts.as_slice() else {
            return Err(ConfigError::Parse {
                origin: name.clone(),
                message: "expected SSE_GATEWAY__<SECTION>__<KEY>".into(),
            });
        };
        let default = defaults.get(section).and_then(|s| s.get(key));
        let Some(default) = default else {
            return Err(ConfigError::Parse {
                origin: name.clone(),
                message: format!("unknown key `{section}.{key}`"),
            });
        };
        let parsed = if default.is_str() {
            toml::Value::String(value)
        } else {
            toml::from_str::<toml::Table>(&format!("v = {value}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .ok_or_else(|| ConfigError::Parse {
                    origin: name.clone(),
                    message: format!("`{section}.{key}`: {value:?} is not a valid value"),
                })?
        };
        let entry = table
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let toml::Value::Table(section_table) = entry else {
            return Err(ConfigError::Parse {
                origin: name.clone(),
                message: format!("`{section}` is not a table"),
            });
        };
        section_table.insert(key.clone(), parsed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, text).unwrap();
        for f in ["server.pem", "server-key.pem", "ca.pem"] {
            std::fs::write(dir.path().join(f), "x").unwrap();
        }
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Config::load(Some(&path), env, &Overrides::default())
    }

    const BASE: &str = "[grpc]\ntls_cert='server.pem'\ntls_key='server-key.pem'\nclient_ca='ca.pem'\n[jwt]\nsecret='s'\n";

    #[test]
    fn unknown_key_is_named() {
        let err = load(&format!("{BASE}[sse]\nheartbeat = 3\n"), &[]).unwrap_err();
        assert!(err.to_string().contains("heartbeat"), "{err}");
    }

    #[test]
    fn env_overrides_file() {
        let cfg = load(
            &format!("{BASE}[http]\naddr='127.0.0.1:1'\n"),
            &[
                ("SSE_GATEWAY__HTTP__ADDR", "127.0.0.1:2"),
                ("SSE_GATEWAY__SSE__QUEUE_EVENTS", "7"),
            ],
        )
        .unwrap();
        assert_eq!(cfg.http_addr.port(), 2);
        assert_eq!(cfg.raw.sse.queue_events, 7);
    }

    #[test]
    fn bad_values_are_named() {
        let err = load(&format!("{BASE}[http]\naddr='nowhere'\n"), &[]).unwrap_err();
        assert!(err.to_string().contains("http.addr"), "{err}");
        let err = load(BASE, &[("SSE_GATEWAY__HTTP__NOPE", "1")]).unwrap_err();
        assert!(err.to_string().contains("http.nope"), "{err}");
        let err = load(&format!("{BASE}[broker]\nkind='etcd'\n"), &[]).unwrap_err();
        assert!(err.to_string().contains("broker.kind"), "{err}");
    }

    #[test]
    fn missing_file_is_named() {
        let err = Config::load(
            Some(Path::new("/nonexistent/gw.toml")),
            Vec::new(),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/gw.toml"), "{err}");
    }

    #[test]
    fn secret_is_redacted() {
        let cfg = load(BASE, &[]).unwrap();
        assert!(!format!("{:?}", cfg.raw.jwt).contains("secret: \"s\""));
    }
}

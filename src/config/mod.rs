//! Configuration: the file's shape ([`schema`]), where values come from ([`sources`]: defaults ⊕
//! TOML file ⊕ `SSE_GATEWAY__<SECTION>__<KEY>` environment ⊕ CLI flags), and the one place that
//! checks them ([`validate`]) and builds the runtime [`Config`] — before any port is bound.
//!
//! Nothing here decides whether the gateway runs the dev setup: the caller does (see `dev`).

pub mod schema;
pub mod sources;
pub mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use schema::{
    AuthzConfig, AuthzMode, BrokerConfig, BrokerKind, ChannelConfig, GrpcConfig, HistoryConfig,
    HttpConfig, JwtAlgorithm, JwtConfig, LimitsConfig, PublisherConfig, RawConfig, Secret,
    SseConfig,
};
pub use sources::{layer, Layered, Origins};

use crate::channel::{ChannelPattern, ChannelTypes};

/// The prefix of environment overrides.
pub const ENV_PREFIX: &str = "SSE_GATEWAY__";

/// The environment variable that sets a dotted key: `grpc.tls_cert` → `SSE_GATEWAY__GRPC__TLS_CERT`.
pub fn env_var(key: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        key.split('.')
            .map(str::to_ascii_uppercase)
            .collect::<Vec<_>>()
            .join("__")
    )
}

/// Where a value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The built-in default (or a value the program set).
    Default,
    /// The configuration file.
    File(PathBuf),
    /// An environment variable (its name).
    Env(String),
    /// A command-line flag.
    Flag(&'static str),
}

/// One thing wrong with the configuration; the message names the key and where it came from.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read or is not TOML.
    #[error("config file {}: {message}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// An `SSE_GATEWAY__…` variable that names no key.
    #[error("{var}: {message}")]
    Env {
        /// The variable.
        var: String,
        /// What is wrong.
        message: String,
    },
    /// A key with an unusable value, or an unknown key.
    #[error("{key} ({}): {message}", describe(key, origin))]
    Key {
        /// Dotted key, e.g. `http.addr` or `publishers[0].channels`.
        key: String,
        /// Where the value came from.
        origin: Origin,
        /// What is wrong.
        message: String,
    },
    /// A required key that no source sets.
    #[error("{key} ({}) is required: {message}", env_var(key))]
    Required {
        /// Dotted key.
        key: String,
        /// Why, and what else would do.
        message: String,
    },
    /// The layering itself failed (not expected).
    #[error("configuration sources: {0}")]
    Sources(String),
}

fn describe(key: &str, origin: &Origin) -> String {
    match origin {
        Origin::Env(var) => var.clone(),
        Origin::Flag(flag) => (*flag).to_owned(),
        Origin::File(path) => format!("in {}", path.display()),
        Origin::Default => env_var(key),
    }
}

impl ConfigError {
    /// The key this error is about, if it is about one.
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::Key { key, .. } | Self::Required { key, .. } => Some(key),
            _ => None,
        }
    }
}

/// Every error found in a configuration (at least one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_slice() {
            [one] => write!(f, "invalid configuration: {one}"),
            all => {
                write!(f, "invalid configuration ({} problems):", all.len())?;
                for e in all {
                    write!(f, "\n  - {e}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ConfigErrors {}

impl ConfigErrors {
    /// Whether any error names `needle` (for tests and callers that look for one key).
    pub fn mentions(&self, needle: &str) -> bool {
        self.0.iter().any(|e| e.to_string().contains(needle))
    }
}

/// Flags given on the command line; they win over everything else.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--http-addr`.
    pub http_addr: Option<String>,
    /// `--grpc-addr`.
    pub grpc_addr: Option<String>,
}

/// A certificate and its key (PEM files).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
}

/// `[http]`, validated.
#[derive(Clone, Debug)]
pub struct HttpSettings {
    /// Listen address.
    pub addr: SocketAddr,
    /// HTTPS when set.
    pub tls: Option<TlsFiles>,
    /// Origins allowed by CORS.
    pub cors_origins: Vec<http::HeaderValue>,
    /// Accept `?access_token=` on `/api/sse`.
    pub allow_query_token: bool,
}

/// `[grpc]`, validated: the three files are always named.
#[derive(Clone, Debug)]
pub struct GrpcSettings {
    /// Listen address.
    pub addr: SocketAddr,
    /// PEM server certificate chain.
    pub tls_cert: PathBuf,
    /// PEM server key.
    pub tls_key: PathBuf,
    /// PEM CA that publisher certificates must chain to.
    pub client_ca: PathBuf,
}

/// Where the token verification key comes from (files are read when the verifier is built, so
/// building it again picks up a new key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JwtKey {
    /// HS256: the secret itself.
    Secret(Secret),
    /// HS256: a file holding the secret (trailing whitespace ignored).
    SecretFile(PathBuf),
    /// RS256/ES256: a PEM public key.
    PublicKeyFile(PathBuf),
    /// RS256/ES256: a JWKS document.
    JwksFile(PathBuf),
}

/// `[jwt]`, validated: the key always fits the algorithm.
#[derive(Clone, Debug)]
pub struct JwtSettings {
    /// The only accepted algorithm.
    pub algorithm: JwtAlgorithm,
    /// The verification key.
    pub key: JwtKey,
    /// Required `iss`.
    pub issuer: Option<String>,
    /// Required `aud`.
    pub audience: Option<String>,
    /// Clock leeway for `exp`/`nbf`, in seconds.
    pub leeway_secs: u64,
    /// How long a token revocation is kept, in seconds (the longest token life).
    pub max_token_lifetime_secs: u64,
}

impl JwtSettings {
    /// HS256 with `secret`, no issuer or audience, the default leeway (for tests and tools; the
    /// gateway's settings come from [`validate::validate`]).
    pub fn hs256(secret: impl Into<Secret>) -> Self {
        Self {
            algorithm: JwtAlgorithm::Hs256,
            key: JwtKey::Secret(secret.into()),
            issuer: None,
            audience: None,
            leeway_secs: JwtConfig::default().leeway_secs,
            max_token_lifetime_secs: JwtConfig::default().max_token_lifetime_secs,
        }
    }
}

/// `[sse]`, validated (`queue_bytes` resolved).
#[derive(Clone, Debug)]
pub struct SseSettings {
    /// Seconds between `: ping` comments.
    pub heartbeat_secs: u64,
    /// The `retry:` hint sent to browsers.
    pub retry_ms: u64,
    /// Per-connection queue bound in events.
    pub queue_events: usize,
    /// Per-connection queue bound in bytes of rendered frames.
    pub queue_bytes: usize,
}

/// A publisher's permissions.
#[derive(Clone, Debug)]
pub struct Publisher {
    /// Certificate name.
    pub name: String,
    /// Allowed channel patterns.
    pub channels: Vec<ChannelPattern>,
    /// May call the `Control` service.
    pub control: bool,
}

/// `[authz]`, validated: present only with a URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthzSettings {
    /// Where the gateway POSTs (http or https).
    pub url: String,
    /// When the callback is asked.
    pub mode: AuthzMode,
    /// Longest wait for one answer.
    pub timeout: std::time::Duration,
    /// How long an answer without `ttl_secs` is cached (zero: not cached).
    pub cache_ttl: std::time::Duration,
    /// Callback requests in flight at once.
    pub max_concurrent: usize,
    /// Cached (user, channel) answers kept at most.
    pub cache_max_entries: usize,
}

/// The validated configuration the gateway runs with. Built only by [`validate::validate`].
#[derive(Clone, Debug)]
pub struct Config {
    /// `[http]`.
    pub http: HttpSettings,
    /// `[grpc]`.
    pub grpc: GrpcSettings,
    /// `[jwt]`.
    pub jwt: JwtSettings,
    /// `[sse]`.
    pub sse: SseSettings,
    /// `[limits]`.
    pub limits: LimitsConfig,
    /// `[history]`.
    pub history: HistoryConfig,
    /// `[broker]`.
    pub broker: BrokerConfig,
    /// Configured channel types.
    pub channel_types: ChannelTypes,
    /// Publisher permissions by name.
    pub publishers: BTreeMap<String, Publisher>,
    /// `[authz]`; `None` without a URL (no callback).
    pub authz: Option<AuthzSettings>,
}

impl Config {
    /// Loads and validates the production configuration: defaults ⊕ optional file ⊕ environment
    /// pairs ⊕ flags. The environment is passed in (not read here).
    ///
    /// # Errors
    /// Every [`ConfigError`] found.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Self, ConfigErrors> {
        load_effective(file, env, overrides).map(|(_, config)| config)
    }

    /// Validates a configuration built in code (tests, tools); relative paths resolve against
    /// `base`.
    ///
    /// # Errors
    /// Every [`ConfigError`] found.
    pub fn from_raw(raw: RawConfig, base: &Path) -> Result<Self, ConfigErrors> {
        validate::validate(&raw, base, &Origins::default()).map_err(ConfigErrors)
    }
}

/// Like [`Config::load`], also returning the layered configuration it was built from (paths
/// resolved), for `config check` to print.
///
/// # Errors
/// Every [`ConfigError`] found, in the sources and in the values.
pub fn load_effective(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    overrides: &Overrides,
) -> Result<(RawConfig, Config), ConfigErrors> {
    finish(layer(file, env, overrides))
}

/// Validates what [`layer`] produced, adding to the errors it found (a key that failed to read
/// is not reported again by validation).
///
/// # Errors
/// Every [`ConfigError`] found.
pub fn finish(layered: Layered) -> Result<(RawConfig, Config), ConfigErrors> {
    let Layered {
        raw,
        origins,
        mut errors,
    } = layered;
    let Some(raw) = raw else {
        return Err(ConfigErrors(errors));
    };
    match validate::validate(&raw, Path::new(""), &origins) {
        Ok(config) if errors.is_empty() => Ok((raw, config)),
        Ok(_) => Err(ConfigErrors(errors)),
        Err(more) => {
            let failed: Vec<String> = errors
                .iter()
                .filter_map(|e| e.key())
                .map(str::to_owned)
                .collect();
            errors.extend(more.into_iter().filter(|e| {
                e.key().is_none_or(|k| {
                    !failed
                        .iter()
                        .any(|f| k.starts_with(f.as_str()) || f.starts_with(k))
                })
            }));
            Err(ConfigErrors(errors))
        }
    }
}

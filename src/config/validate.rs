//! The one place that decides whether a configuration is usable: small `validate_x` checks over a
//! [`RawConfig`], each reporting every problem it sees, and the runtime [`Config`] built from it.
//! The same rules hold in every mode; the dev setup only fills in values before they run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::schema::{ChannelConfig, JwtAlgorithm, RawConfig};
use super::sources::Origins;
use super::{
    AuthzSettings, BrokerKind, Config, ConfigError, GrpcSettings, HttpSettings, JwtKey,
    JwtSettings, Publisher, SseSettings, TlsFiles,
};
use crate::channel::{ChannelPattern, ChannelType, ChannelTypes};

/// The shortest accepted HS256 secret, in bytes (RFC 7518 §3.2: at least the hash size).
pub const MIN_SECRET_BYTES: usize = 32;

/// Collects errors, naming where each bad value came from.
struct Report<'a> {
    origins: &'a Origins,
    errors: Vec<ConfigError>,
}

impl Report<'_> {
    fn invalid(&mut self, key: &str, message: impl Into<String>) {
        let origin = self.origins.of_key(key.split('[').next().unwrap_or(key));
        self.errors.push(ConfigError::Key {
            key: key.to_owned(),
            origin,
            message: message.into(),
        });
    }

    fn required(&mut self, key: &str, message: impl Into<String>) {
        self.errors.push(ConfigError::Required {
            key: key.to_owned(),
            message: message.into(),
        });
    }

    /// A file that must exist; `None` when unset or missing (missing is reported).
    fn file(&mut self, key: &str, path: Option<&Path>, base: &Path) -> Option<PathBuf> {
        let path = resolve(path?, base);
        if path.is_file() {
            Some(path)
        } else {
            self.invalid(key, format!("file {} does not exist", path.display()));
            None
        }
    }

    /// A file that must be named and exist.
    fn required_file(
        &mut self,
        key: &str,
        path: Option<&Path>,
        base: &Path,
        what: &str,
    ) -> Option<PathBuf> {
        if path.is_none() {
            self.required(key, what);
        }
        self.file(key, path, base)
    }
}

fn resolve(path: &Path, base: &Path) -> PathBuf {
    if path.is_relative() && !base.as_os_str().is_empty() {
        base.join(path)
    } else {
        path.to_owned()
    }
}

/// Checks `raw` and builds the runtime configuration. Relative paths resolve against `base`
/// (empty: the working directory).
///
/// # Errors
/// Every problem found, each naming its key.
pub fn validate(
    raw: &RawConfig,
    base: &Path,
    origins: &Origins,
) -> Result<Config, Vec<ConfigError>> {
    let mut r = Report {
        origins,
        errors: Vec::new(),
    };
    let http = validate_http(&mut r, raw, base);
    let grpc = validate_grpc(&mut r, raw, base);
    let jwt = validate_jwt(&mut r, raw, base);
    let sse = validate_sse(&mut r, raw);
    validate_limits(&mut r, raw);
    validate_broker(&mut r, raw);
    let channel_types = validate_channels(&mut r, &raw.channels);
    let publishers = validate_publishers(&mut r, raw, channel_types.as_ref());
    let authz = validate_authz(&mut r, raw);
    match (http, grpc, jwt, channel_types) {
        (Some(http), Some(grpc), Some(jwt), Some(channel_types)) if r.errors.is_empty() => {
            Ok(Config {
                http,
                grpc,
                jwt,
                sse,
                limits: raw.limits.clone(),
                history: raw.history.clone(),
                broker: raw.broker.clone(),
                channel_types,
                publishers,
                authz,
            })
        }
        _ => Err(r.errors),
    }
}

fn validate_http(r: &mut Report<'_>, raw: &RawConfig, base: &Path) -> Option<HttpSettings> {
    let h = &raw.http;
    let tls = match (&h.tls_cert, &h.tls_key) {
        (None, None) => None,
        (Some(_), None) | (None, Some(_)) => {
            r.invalid(
                "http.tls_cert",
                "http.tls_cert and http.tls_key must be set together",
            );
            None
        }
        (cert, key) => {
            let cert = r.file("http.tls_cert", cert.as_deref(), base);
            let key = r.file("http.tls_key", key.as_deref(), base);
            Some(TlsFiles {
                cert: cert?,
                key: key?,
            })
        }
    };
    let mut cors_origins = Vec::new();
    for origin in &h.cors_origins {
        match http::HeaderValue::from_str(origin) {
            Ok(value) if origin.contains("://") => cors_origins.push(value),
            _ => r.invalid(
                "http.cors_origins",
                format!("{origin:?} is not an origin like https://app.example.com"),
            ),
        }
    }
    Some(HttpSettings {
        addr: h.addr,
        tls,
        cors_origins,
        allow_query_token: h.allow_query_token,
    })
}

fn validate_grpc(r: &mut Report<'_>, raw: &RawConfig, base: &Path) -> Option<GrpcSettings> {
    let g = &raw.grpc;
    let tls_cert = r.required_file(
        "grpc.tls_cert",
        g.tls_cert.as_deref(),
        base,
        "the gRPC server's PEM certificate chain",
    );
    let tls_key = r.required_file(
        "grpc.tls_key",
        g.tls_key.as_deref(),
        base,
        "the gRPC server's PEM private key",
    );
    let client_ca = r.required_file(
        "grpc.client_ca",
        g.client_ca.as_deref(),
        base,
        "the PEM CA that publisher certificates must chain to",
    );
    Some(GrpcSettings {
        addr: g.addr,
        tls_cert: tls_cert?,
        tls_key: tls_key?,
        client_ca: client_ca?,
    })
}

fn secret_bytes_ok(r: &mut Report<'_>, key: &str, len: usize) {
    if len < MIN_SECRET_BYTES {
        r.invalid(
            key,
            format!(
                "an HS256 secret must be at least {MIN_SECRET_BYTES} bytes (this one is {len}); \
                 e.g. `openssl rand -hex 32`"
            ),
        );
    }
}

fn validate_jwt(r: &mut Report<'_>, raw: &RawConfig, base: &Path) -> Option<JwtSettings> {
    let j = &raw.jwt;
    let hs_keys = [
        ("jwt.secret", j.secret.is_some()),
        ("jwt.secret_file", j.secret_file.is_some()),
    ];
    let public_keys = [
        ("jwt.public_key_file", j.public_key_file.is_some()),
        ("jwt.jwks_file", j.jwks_file.is_some()),
    ];
    let key = match j.algorithm {
        JwtAlgorithm::Hs256 => {
            for (k, set) in public_keys {
                if set {
                    r.invalid(k, "only used with RS256/ES256 (jwt.algorithm is HS256)");
                }
            }
            match (&j.secret, &j.secret_file) {
                (Some(_), Some(_)) => {
                    r.invalid("jwt.secret", "set jwt.secret or jwt.secret_file, not both");
                    None
                }
                (Some(secret), None) => {
                    secret_bytes_ok(r, "jwt.secret", secret.expose().len());
                    Some(JwtKey::Secret(secret.clone()))
                }
                (None, Some(file)) => {
                    let path = r.file("jwt.secret_file", Some(file), base)?;
                    match std::fs::read(&path) {
                        Ok(bytes) => {
                            let len = bytes.trim_ascii_end().len();
                            secret_bytes_ok(r, "jwt.secret_file", len);
                        }
                        Err(e) => r.invalid(
                            "jwt.secret_file",
                            format!("cannot read {}: {e}", path.display()),
                        ),
                    }
                    Some(JwtKey::SecretFile(path))
                }
                (None, None) => {
                    r.required(
                        "jwt.secret",
                        "HS256 verifies tokens with a shared secret: set jwt.secret, or \
                         jwt.secret_file (SSE_GATEWAY__JWT__SECRET_FILE) to a file holding it",
                    );
                    None
                }
            }
        }
        JwtAlgorithm::Rs256 | JwtAlgorithm::Es256 => {
            for (k, set) in hs_keys {
                if set {
                    r.invalid(
                        k,
                        format!("only used with HS256 (jwt.algorithm is {})", j.algorithm),
                    );
                }
            }
            match (&j.public_key_file, &j.jwks_file) {
                (Some(_), Some(_)) => {
                    r.invalid(
                        "jwt.public_key_file",
                        "set jwt.public_key_file or jwt.jwks_file, not both",
                    );
                    None
                }
                (Some(file), None) => r
                    .file("jwt.public_key_file", Some(file), base)
                    .map(JwtKey::PublicKeyFile),
                (None, Some(file)) => r
                    .file("jwt.jwks_file", Some(file), base)
                    .map(JwtKey::JwksFile),
                (None, None) => {
                    r.required(
                        "jwt.public_key_file",
                        format!(
                            "{} verifies tokens with a public key: set jwt.public_key_file (PEM), \
                             or jwt.jwks_file (SSE_GATEWAY__JWT__JWKS_FILE) to a JWKS document",
                            j.algorithm
                        ),
                    );
                    None
                }
            }
        }
    };
    if j.max_token_lifetime_secs == 0 {
        r.invalid("jwt.max_token_lifetime_secs", "must be at least 1");
    }
    let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    Some(JwtSettings {
        algorithm: j.algorithm,
        key: key?,
        issuer: non_empty(&j.issuer),
        audience: non_empty(&j.audience),
        leeway_secs: j.leeway_secs,
        max_token_lifetime_secs: j.max_token_lifetime_secs,
    })
}

fn validate_sse(r: &mut Report<'_>, raw: &RawConfig) -> SseSettings {
    let s = &raw.sse;
    if s.heartbeat_secs == 0 {
        r.invalid("sse.heartbeat_secs", "must be at least 1");
    }
    if s.queue_events == 0 {
        r.invalid("sse.queue_events", "must be at least 1");
    }
    if s.queue_bytes != 0 && s.queue_bytes < 1024 {
        r.invalid("sse.queue_bytes", "must be 0 (derived) or at least 1024");
    }
    let queue_bytes = if s.queue_bytes == 0 {
        // Frames carry ~1 KiB of envelope around the payload at most.
        s.queue_events
            .saturating_mul(raw.limits.max_event_bytes.saturating_add(1024))
    } else {
        s.queue_bytes
    };
    SseSettings {
        heartbeat_secs: s.heartbeat_secs,
        retry_ms: s.retry_ms,
        queue_events: s.queue_events,
        queue_bytes,
    }
}

fn validate_limits(r: &mut Report<'_>, raw: &RawConfig) {
    let l = &raw.limits;
    for (key, value) in [
        ("limits.max_event_bytes", l.max_event_bytes),
        (
            "limits.max_connections_per_user",
            l.max_connections_per_user,
        ),
        ("limits.max_connections", l.max_connections),
        (
            "limits.max_channels_per_connection",
            l.max_channels_per_connection,
        ),
        ("history.max_events", raw.history.max_events),
    ] {
        if value == 0 {
            r.invalid(key, "must be at least 1");
        }
    }
}

fn validate_broker(r: &mut Report<'_>, raw: &RawConfig) {
    let b = &raw.broker;
    if b.kind == BrokerKind::Redis
        && !(b.url.starts_with("redis://") || b.url.starts_with("rediss://"))
    {
        r.invalid("broker.url", "must be a redis:// or rediss:// URL");
    }
}

fn validate_authz(r: &mut Report<'_>, raw: &RawConfig) -> Option<AuthzSettings> {
    let a = &raw.authz;
    for (key, value) in [
        ("authz.timeout_ms", a.timeout_ms),
        ("authz.max_concurrent", a.max_concurrent as u64),
        ("authz.cache_max_entries", a.cache_max_entries as u64),
    ] {
        if value == 0 {
            r.invalid(key, "must be at least 1");
        }
    }
    if a.url.is_empty() {
        return None;
    }
    match reqwest::Url::parse(&a.url) {
        Ok(url) if !matches!(url.scheme(), "http" | "https") => r.invalid(
            "authz.url",
            format!(
                "must be an http:// or https:// URL, not {}://",
                url.scheme()
            ),
        ),
        Ok(url) if !url.username().is_empty() || url.password().is_some() => r.invalid(
            "authz.url",
            "must not hold credentials: the request carries the subscriber's own token",
        ),
        Ok(url) if !url.has_host() => r.invalid("authz.url", "must name a host"),
        Ok(_) => {}
        Err(e) => r.invalid(
            "authz.url",
            format!("not a URL ({e}); e.g. http://127.0.0.1:5000/sse/authorize"),
        ),
    }
    Some(AuthzSettings {
        url: a.url.clone(),
        mode: a.mode,
        timeout: std::time::Duration::from_millis(a.timeout_ms),
        cache_ttl: std::time::Duration::from_secs(a.cache_ttl_secs),
        max_concurrent: a.max_concurrent,
        cache_max_entries: a.cache_max_entries,
    })
}

fn validate_channels(
    r: &mut Report<'_>,
    channels: &BTreeMap<String, ChannelConfig>,
) -> Option<ChannelTypes> {
    if channels.is_empty() {
        r.invalid(
            "channels",
            "no channel type is configured (leave [channels] out for the default set)",
        );
        return None;
    }
    let mut types = Vec::new();
    for (name, c) in channels {
        if c.snapshot && c.snapshot_ttl_secs == 0 {
            r.invalid(
                &format!("channels.{name}.snapshot_ttl_secs"),
                "must be at least 1 with snapshot = true",
            );
            continue;
        }
        let ttl = c
            .snapshot
            .then(|| std::time::Duration::from_secs(c.snapshot_ttl_secs));
        match ChannelType::from_template(name, &c.template, &c.subscribe) {
            Ok(t) => types.push(t.with_snapshot(ttl)),
            Err(m) => r.invalid(&format!("channels.{name}"), m),
        }
    }
    (types.len() == channels.len()).then(|| ChannelTypes::new(types))
}

fn validate_publishers(
    r: &mut Report<'_>,
    raw: &RawConfig,
    types: Option<&ChannelTypes>,
) -> BTreeMap<String, Publisher> {
    let mut publishers = BTreeMap::new();
    for (i, p) in raw.publishers.iter().enumerate() {
        if p.name.is_empty() {
            r.invalid(&format!("publishers[{i}].name"), "must not be empty");
        }
        let mut channels = Vec::new();
        for c in &p.channels {
            let key = format!("publishers[{i}].channels");
            let pattern = match ChannelPattern::parse(c) {
                Ok(pattern) => pattern,
                Err(e) => {
                    r.invalid(&key, e.to_string());
                    continue;
                }
            };
            // A pattern whose type part is `*` or `**` covers every configured type; a literal
            // type must be one of them, or the pattern is a typo that grants nothing.
            if let (Some(ty), Some(types)) = (pattern.literal_type(), types) {
                if !types.iter().any(|t| t.name == ty) {
                    let known: Vec<&str> = types.iter().map(|t| t.name.as_str()).collect();
                    r.invalid(
                        &key,
                        format!(
                            "pattern {c:?}: channel type {ty:?} is not configured (configured: {})",
                            known.join(", ")
                        ),
                    );
                    continue;
                }
            }
            channels.push(pattern);
        }
        let publisher = Publisher {
            name: p.name.clone(),
            channels,
            control: p.control,
        };
        if publishers.insert(p.name.clone(), publisher).is_some() {
            r.invalid(
                &format!("publishers[{i}].name"),
                format!("{:?} is listed twice", p.name),
            );
        }
    }
    publishers
}

//! Reload (SIGHUP, or [`super::Gateway::reload`]): read the same configuration sources as at
//! start, load every certificate and key they name, and only when all of it is good swap it in.
//! Open SSE streams and gRPC connections keep going; new TLS handshakes, new tokens and the next
//! publish use the new material. Anything bad keeps the running material, is logged and counted
//! (`sse_gateway_config_reloads_total{result="error"}`).
//!
//! Reloaded: TLS of both listeners, the JWT key, `[[publishers]]`, `[authz]`. Every other key
//! (addresses, limits, broker, channel types) needs a restart.

use std::sync::{Arc, Mutex, PoisonError};

use crate::auth::JwtVerifier;
use crate::authz::Authorizer;
use crate::config::Config;
use crate::ingest::pipeline::Publishers;
use crate::live::Live;
use crate::metrics::Metrics;

/// Reads the configuration from the sources the gateway started with (the same file, the
/// environment as it was at start, the same flags).
pub type ConfigSource = Arc<dyn Fn() -> anyhow::Result<Config> + Send + Sync>;

/// The key and certificate material a configuration names, loaded and checked. Built at start
/// (before any port is bound) and again on each reload.
pub struct Material {
    /// Subscriber token verifier.
    pub verifier: JwtVerifier,
    /// gRPC server identity and client CA.
    pub grpc_tls: rustls::ServerConfig,
    /// HTTPS, when configured.
    pub http_tls: Option<rustls::ServerConfig>,
    /// The `[authz]` callback client, when a URL is configured.
    pub(crate) authz: Option<crate::authz::Backend>,
}

/// Loads every key and certificate `config` names.
///
/// # Errors
/// Each file that cannot be read or parsed (all of them, not only the first).
pub fn load_material(config: &Config) -> Result<Material, Vec<anyhow::Error>> {
    super::install_crypto_provider();
    let verifier = JwtVerifier::from_config(&config.jwt).map_err(anyhow::Error::from);
    let grpc_tls = super::grpc::tls_config(&config.grpc);
    let http_tls = config
        .http
        .tls
        .as_ref()
        .map(super::http::tls_config)
        .transpose();
    let authz = crate::authz::Backend::build(config.authz.as_ref());
    match (verifier, grpc_tls, http_tls, authz) {
        (Ok(verifier), Ok(grpc_tls), Ok(http_tls), Ok(authz)) => Ok(Material {
            verifier,
            grpc_tls,
            http_tls,
            authz,
        }),
        (verifier, grpc_tls, http_tls, authz) => {
            Err(
                [verifier.err(), grpc_tls.err(), http_tls.err(), authz.err()]
                    .into_iter()
                    .flatten()
                    .collect(),
            )
        }
    }
}

/// Why a reload kept the running material. The message names keys and files, never a secret.
#[derive(Debug, thiserror::Error)]
#[error("reload failed, the running configuration is kept: {0}")]
pub struct ReloadError(String);

/// Every handle a reload replaces, and where the new values come from.
pub(crate) struct Reloader {
    /// `None`: re-read the files the start-up configuration names (publishers stay).
    pub(crate) source: Option<ConfigSource>,
    /// The configuration the gateway started with.
    pub(crate) started: Arc<Config>,
    pub(crate) verifier: Live<JwtVerifier>,
    pub(crate) publishers: Publishers,
    pub(crate) grpc_tls: Live<rustls::ServerConfig>,
    /// `None` when the HTTP listener is plain (a reload cannot add TLS to it).
    pub(crate) http_tls: Option<Live<rustls::ServerConfig>>,
    pub(crate) metrics: Arc<Metrics>,
    /// One reload at a time, so two cannot interleave their swaps.
    pub(crate) running: Mutex<()>,
    /// `[authz]`: a changed url, mode or timeout applies to the next request, and clears
    /// the cached answers.
    pub(crate) authz: Authorizer,
}

impl Reloader {
    /// Loads everything anew and swaps it in, or nothing.
    pub(crate) fn reload(&self) -> Result<(), ReloadError> {
        let _one = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        let result = self.try_reload();
        match &result {
            Ok(()) => {
                self.metrics.config_reload("ok");
                tracing::info!(
                    "configuration reloaded: TLS certificates, JWT key, publishers, authz"
                );
            }
            Err(e) => {
                self.metrics.config_reload("error");
                tracing::error!(error = %e, "configuration reload failed");
            }
        }
        result
    }

    fn try_reload(&self) -> Result<(), ReloadError> {
        let config = match &self.source {
            Some(load) => load().map_err(|e| ReloadError(format!("{e:#}")))?,
            None => {
                let mut config = (*self.started).clone();
                config.publishers = (*self.publishers.load()).clone();
                config
            }
        };
        let material = load_material(&config).map_err(|errors| {
            ReloadError(
                errors
                    .iter()
                    .map(|e| format!("{e:#}"))
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })?;
        let http_tls = match (&self.http_tls, material.http_tls) {
            (Some(live), Some(tls)) => Some((live, tls)),
            (None, None) => None,
            (Some(_), None) | (None, Some(_)) => {
                return Err(ReloadError(
                    "http.tls_cert/http.tls_key turn HTTPS on or off, which needs a restart".into(),
                ))
            }
        };
        self.verifier.store(material.verifier);
        self.grpc_tls.store(material.grpc_tls);
        if let Some((live, tls)) = http_tls {
            live.store(tls);
        }
        self.publishers.store(config.publishers);
        self.authz.install(material.authz);
        Ok(())
    }
}

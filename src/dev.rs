//! The dev setup (`sse-gateway`, `sse-gateway dev`, `sse-gateway demo`; never `serve`): fills
//! in what the sources leave unset — a dev PKI under `certs/`, a random HS256 secret beside it,
//! the example publishers — creating only missing files, then validates like production.

use std::path::{Path, PathBuf};

use crate::config::{
    self, Config, ConfigErrors, JwtAlgorithm, JwtKey, Layered, PublisherConfig, Secret,
};
use crate::pki::{self, PkiError};

/// Where the dev setup keeps its PKI and secret (relative to the working directory).
pub const CERTS_DIR: &str = "certs";

/// Why the dev setup could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    /// The configuration sources or values.
    #[error(transparent)]
    Config(#[from] ConfigErrors),
    /// `demo` cannot mint its page's tokens with the configured key.
    #[error("demo mints its page's tokens with HS256; jwt.algorithm is {0}")]
    DemoNeedsHs256(JwtAlgorithm),
    /// `demo` cannot read the configured secret file.
    #[error("demo reads jwt.secret_file {}: {source}", path.display())]
    SecretFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The dev PKI or secret.
    #[error(transparent)]
    Pki(#[from] PkiError),
}

/// The dev setup, ready to run.
#[derive(Debug)]
pub struct DevSetup {
    /// The validated configuration.
    pub config: Config,
    /// The folder of the dev PKI, when the dev setup supplied the gRPC certificates (the demo's
    /// simulated services use its client certificates).
    pub pki: Option<PathBuf>,
    /// The HS256 secret the demo page mints its tokens with: the dev secret when the dev setup
    /// supplied the JWT key; with `demo`, also a configured HS256 secret. `None` otherwise — a
    /// configured key is never used by `dev` for the demo page.
    pub demo_secret: Option<Secret>,
    /// Files created by this run.
    pub created: Vec<PathBuf>,
}

/// The example services of the dev setup, what they may publish, and whether they may call
/// `Control` (`l5-etl-service` is the flask_etl example, which owns workspace membership and
/// unsubscribes removed members; `dev-cli` is the `publish` subcommand's certificate).
pub fn dev_publishers() -> Vec<PublisherConfig> {
    [
        ("l5-etl-service", vec!["logs:**", "metrics:*"], true),
        ("faas-service", vec!["workflow:**"], false),
        (
            "analytics-service",
            vec!["metrics:*", "dashboards:*"],
            false,
        ),
        ("dev-cli", vec!["**"], false),
    ]
    .into_iter()
    .map(|(name, channels, control)| PublisherConfig {
        name: name.to_owned(),
        channels: channels.into_iter().map(str::to_owned).collect(),
        control,
    })
    .collect()
}

/// Completes the layered sources with dev material in `certs` and validates the result.
///
/// - gRPC: when none of `grpc.tls_cert`, `tls_key`, `client_ca` is set, the dev PKI in `certs`
///   (missing files created), and then — when no `[[publishers]]` are configured — the example
///   publishers, whose certificates it holds.
/// - JWT: HS256 with neither `secret` nor `secret_file` set uses `certs/dev-secret`.
///
/// With `demo` (the `demo` subcommand, asked for by name), the demo page also signs with a
/// configured HS256 secret; the default dev setup never does, so a production secret that
/// reaches it through the environment cannot mint tokens on `/demo/token`.
///
/// # Errors
/// [`DevError`]: every configuration error, or a PKI that cannot be completed without
/// overwriting a file.
pub fn setup(layered: Layered, certs: &Path, demo: bool) -> Result<DevSetup, DevError> {
    let Layered {
        raw,
        origins,
        errors,
    } = layered;
    let mut raw = match raw {
        Some(raw) if errors.is_empty() => raw,
        _ => return Err(ConfigErrors(errors).into()),
    };
    let mut created = Vec::new();
    let g = &mut raw.grpc;
    let pki = if g.tls_cert.is_none() && g.tls_key.is_none() && g.client_ca.is_none() {
        created.extend(pki::ensure_dev_pki(certs, &pki::DEV_SERVICES)?);
        g.tls_cert = Some(certs.join("server.pem"));
        g.tls_key = Some(certs.join("server-key.pem"));
        g.client_ca = Some(certs.join("ca.pem"));
        if raw.publishers.is_empty() {
            raw.publishers = dev_publishers();
        }
        Some(certs.to_owned())
    } else {
        None
    };
    let j = &mut raw.jwt;
    let demo_secret =
        if j.algorithm == JwtAlgorithm::Hs256 && j.secret.is_none() && j.secret_file.is_none() {
            let (secret, new) = pki::ensure_dev_secret(certs)?;
            let path = certs.join("dev-secret");
            if new {
                created.push(path.clone());
            }
            j.secret_file = Some(path);
            Some(Secret::from(secret))
        } else {
            None
        };
    let config = config::validate::validate(&raw, Path::new(""), &origins).map_err(ConfigErrors)?;
    let demo_secret = match (demo_secret, demo, &config.jwt.key) {
        (Some(dev), _, _) => Some(dev),
        (None, false, _) => None,
        (None, true, JwtKey::Secret(secret)) => Some(secret.clone()),
        (None, true, JwtKey::SecretFile(path)) => {
            let text = std::fs::read_to_string(path).map_err(|source| DevError::SecretFile {
                path: path.clone(),
                source,
            })?;
            Some(Secret::from(text.trim()))
        }
        (None, true, JwtKey::PublicKeyFile(_) | JwtKey::JwksFile(_)) => {
            return Err(DevError::DemoNeedsHs256(config.jwt.algorithm));
        }
    };
    Ok(DevSetup {
        config,
        pki,
        demo_secret,
        created,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::{layer, Overrides};

    fn sources(vars: &[(&str, &str)]) -> Layered {
        let vars = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned()));
        layer(None, vars, &Overrides::default())
    }

    #[test]
    fn fills_in_only_what_is_unset() {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        let first = setup(sources(&[]), &certs, false).unwrap();
        assert!(first.created.contains(&certs.join("ca-key.pem")));
        assert!(first.created.contains(&certs.join("dev-secret")));
        assert!(first.demo_secret.is_some());
        assert!(first.config.publishers.contains_key("dev-cli"));
        let again = setup(sources(&[]), &certs, false).unwrap();
        assert!(again.created.is_empty(), "{:?}", again.created);
        assert_eq!(
            again.demo_secret.map(|s| s.expose().to_owned()),
            first.demo_secret.map(|s| s.expose().to_owned())
        );

        // A configured key: the demo page never signs with it, and no dev secret is made.
        let other = tempfile::tempdir().unwrap();
        let secret = "a-configured-secret-of-32-bytes-or-more";
        let vars = [("SSE_GATEWAY__JWT__SECRET", secret)];
        let own = setup(sources(&vars), other.path(), false).unwrap();
        assert!(own.demo_secret.is_none());
        assert!(!other.path().join("dev-secret").exists());
        // Unless the demo is asked for by name.
        let demo = setup(sources(&vars), other.path(), true).unwrap();
        assert_eq!(demo.demo_secret.unwrap().expose(), secret);
    }

    #[test]
    fn configured_certificates_get_no_example_publishers() {
        let dir = tempfile::tempdir().unwrap();
        crate::pki::ensure_dev_pki(dir.path(), &[]).unwrap();
        let p = |f: &str| dir.path().join(f).display().to_string();
        let (cert, key, ca) = (p("server.pem"), p("server-key.pem"), p("ca.pem"));
        let vars = [
            ("SSE_GATEWAY__GRPC__TLS_CERT", cert.as_str()),
            ("SSE_GATEWAY__GRPC__TLS_KEY", key.as_str()),
            ("SSE_GATEWAY__GRPC__CLIENT_CA", ca.as_str()),
        ];
        let certs = dir.path().join("dev");
        let dev = setup(sources(&vars), &certs, false).unwrap();
        assert!(dev.pki.is_none());
        assert!(dev.config.publishers.is_empty());
        assert!(!certs.join("ca.pem").exists());
    }
}

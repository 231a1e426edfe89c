//! The dev PKI: a CA, a server certificate for `localhost`/`127.0.0.1`, client certificates for
//! named services, and a random HS256 secret — written to a folder (`certs/` by default).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// The example services of the dev setup, plus `dev-cli` for the `publish` subcommand.
pub const DEV_SERVICES: [&str; 4] = [
    "l5-etl-service",
    "faas-service",
    "analytics-service",
    "dev-cli",
];

/// A PKI operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Reading or writing a file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Certificate generation.
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
}

fn write(path: &Path, contents: &str, private: bool) -> Result<(), PkiError> {
    let io = |source| PkiError::Io {
        path: path.to_owned(),
        source,
    };
    std::fs::write(path, contents).map_err(io)?;
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    #[cfg(not(unix))]
    let _ = private;
    Ok(())
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Creates `dir` with a CA (unless one exists), a server certificate and client certificates
/// for `services` (existing files are kept). Returns whether anything was created.
///
/// # Errors
/// [`PkiError`] on I/O or generation failure.
pub fn ensure_dev_pki(dir: &Path, services: &[&str]) -> Result<bool, PkiError> {
    std::fs::create_dir_all(dir).map_err(|source| PkiError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let mut created = false;
    let ca_path = dir.join("ca.pem");
    let ca_key_path = dir.join("ca-key.pem");
    if !ca_path.exists() || !ca_key_path.exists() {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "sse-gateway dev CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        write(&ca_path, &cert.pem(), false)?;
        write(&ca_key_path, &key.serialize_pem(), true)?;
        created = true;
    }
    let ca_key = KeyPair::from_pem(&read(&ca_key_path)?)?;
    let issuer = Issuer::from_ca_cert_pem(&read(&ca_path)?, ca_key)?;
    let server = dir.join("server.pem");
    if created || !server.exists() {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        write(&server, &cert.pem(), false)?;
        write(&dir.join("server-key.pem"), &key.serialize_pem(), true)?;
        created = true;
    }
    for service in services {
        let path = dir.join(format!("{service}.pem"));
        if !created && path.exists() {
            continue;
        }
        let mut params = CertificateParams::new(vec![(*service).to_owned()])?;
        params.distinguished_name.push(DnType::CommonName, *service);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        write(&path, &cert.pem(), false)?;
        write(
            &dir.join(format!("{service}-key.pem")),
            &key.serialize_pem(),
            true,
        )?;
        created = true;
    }
    Ok(created)
}

/// Reads `dir/dev-secret`, creating it with 32 random bytes (hex) when absent.
///
/// # Errors
/// [`PkiError::Io`] on I/O failure.
pub fn ensure_dev_secret(dir: &Path) -> Result<String, PkiError> {
    let path = dir.join("dev-secret");
    if let Ok(existing) = std::fs::read_to_string(&path) {
        let s = existing.trim().to_owned();
        if !s.is_empty() {
            return Ok(s);
        }
    }
    let bytes: [u8; 32] = rand::random();
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::create_dir_all(dir).map_err(|source| PkiError::Io {
        path: dir.to_owned(),
        source,
    })?;
    write(&path, &secret, true)?;
    Ok(secret)
}

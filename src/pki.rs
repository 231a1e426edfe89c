//! The dev PKI: a CA, a server certificate for `localhost`/`127.0.0.1`, client certificates for
//! named services, and a random HS256 secret — written to a folder (`certs/` by default).
//! Only missing files are created; an existing file is never overwritten.

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
    /// A CA certificate without its key (or the reverse): nothing can be signed with it.
    #[error(
        "{} exists without {}: the dev setup cannot sign certificates with it; remove {}/ or \
         point --config at your production config",
        present.display(), missing.display(), dir.display()
    )]
    CaIncomplete {
        /// The file that is there.
        present: PathBuf,
        /// The file that is not.
        missing: PathBuf,
        /// The PKI folder.
        dir: PathBuf,
    },
    /// A certificate without its key (or the reverse); the dev setup never replaces a file.
    #[error(
        "{} exists without {}: the dev setup never replaces a file; remove {} (or restore {})",
        present.display(), missing.display(), present.display(), missing.display()
    )]
    PairIncomplete {
        /// The file that is there.
        present: PathBuf,
        /// The file that is not.
        missing: PathBuf,
    },
    /// Certificates whose CA is gone: a new CA would not have signed them.
    #[error(
        "{} exists but the CA that signed it ({}) does not: remove {}/ to start a new dev PKI",
        orphan.display(), ca.display(), dir.display()
    )]
    Orphan {
        /// A certificate or key of the old PKI.
        orphan: PathBuf,
        /// The missing CA certificate.
        ca: PathBuf,
        /// The PKI folder.
        dir: PathBuf,
    },
    /// A file that must hold something is empty.
    #[error("{} is empty: remove it and the dev setup creates a new one", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Creates `path` with `contents`; fails if it exists (a file is never overwritten). Private
/// files are created readable by the owner only.
fn write_new(path: &Path, contents: &str, private: bool) -> Result<(), PkiError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(path).map_err(io_error(path))?;
    file.write_all(contents.as_bytes()).map_err(io_error(path))
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(io_error(path))
}

/// A certificate and its key: both there, neither, or (an error) one of them.
#[derive(PartialEq)]
enum Pair {
    Present,
    Absent,
}

fn pair(cert: &Path, key: &Path, ca: bool, dir: &Path) -> Result<Pair, PkiError> {
    let incomplete = |present: &Path, missing: &Path| {
        let (present, missing) = (present.to_owned(), missing.to_owned());
        if ca {
            PkiError::CaIncomplete {
                present,
                missing,
                dir: dir.to_owned(),
            }
        } else {
            PkiError::PairIncomplete { present, missing }
        }
    };
    match (cert.exists(), key.exists()) {
        (true, true) => Ok(Pair::Present),
        (false, false) => Ok(Pair::Absent),
        (true, false) => Err(incomplete(cert, key)),
        (false, true) => Err(incomplete(key, cert)),
    }
}

/// Makes sure `dir` holds a dev PKI: a CA, a server certificate for `localhost`/`127.0.0.1`
/// and client certificates for `services`. Creates only the files that are missing and never
/// overwrites one; a half pair (a certificate without its key, or the reverse) or
/// certificates without their CA is an error, found before anything is written. Returns the
/// files created.
///
/// # Errors
/// [`PkiError`] on an incomplete PKI, I/O or generation failure.
pub fn ensure_dev_pki(dir: &Path, services: &[&str]) -> Result<Vec<PathBuf>, PkiError> {
    let ca_path = dir.join("ca.pem");
    let ca_key_path = dir.join("ca-key.pem");
    let leaf = |name: &str| {
        (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}-key.pem")),
        )
    };
    let leaves: Vec<(PathBuf, PathBuf)> = std::iter::once(leaf("server"))
        .chain(services.iter().map(|s| leaf(s)))
        .collect();
    // Check everything first: a refused PKI is left exactly as it was.
    let ca_state = pair(&ca_path, &ca_key_path, true, dir)?;
    let mut missing = Vec::new();
    for (cert, key) in &leaves {
        if pair(cert, key, false, dir)? == Pair::Absent {
            missing.push((cert, key));
        } else if ca_state == Pair::Absent {
            return Err(PkiError::Orphan {
                orphan: cert.clone(),
                ca: ca_path,
                dir: dir.to_owned(),
            });
        }
    }
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    let mut created = Vec::new();
    if ca_state == Pair::Absent {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "sse-gateway dev CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        write_new(&ca_key_path, &key.serialize_pem(), true)?;
        write_new(&ca_path, &cert.pem(), false)?;
        created.extend([ca_key_path.clone(), ca_path.clone()]);
    }
    if missing.is_empty() {
        return Ok(created);
    }
    let ca_key = KeyPair::from_pem(&read(&ca_key_path)?)?;
    let issuer = Issuer::from_ca_cert_pem(&read(&ca_path)?, ca_key)?;
    for (cert_path, key_path) in missing {
        let name = cert_path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let params = if name == "server" {
            let mut params =
                CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
            params
                .distinguished_name
                .push(DnType::CommonName, "localhost");
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            params
        } else {
            let mut params = CertificateParams::new(vec![name.clone()])?;
            params.distinguished_name.push(DnType::CommonName, &name);
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            params
        };
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        write_new(key_path, &key.serialize_pem(), true)?;
        write_new(cert_path, &cert.pem(), false)?;
        created.extend([key_path.clone(), cert_path.clone()]);
    }
    Ok(created)
}

/// Reads `dir/dev-secret`, creating it with 32 random bytes (hex) when absent; an existing
/// file is never rewritten. Returns the secret and whether the file was created.
///
/// # Errors
/// [`PkiError::Empty`] for an empty file, [`PkiError::Io`] on I/O failure.
pub fn ensure_dev_secret(dir: &Path) -> Result<(String, bool), PkiError> {
    let path = dir.join("dev-secret");
    if path.exists() {
        let secret = read(&path)?.trim().to_owned();
        if secret.is_empty() {
            return Err(PkiError::Empty { path });
        }
        return Ok((secret, false));
    }
    let bytes: [u8; 32] = rand::random();
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    write_new(&path, &secret, true)?;
    Ok((secret, true))
}

//! A tonic `Publisher` client over mTLS, for the `publish` subcommand, the demo's simulated
//! services and the load generator.

use std::path::Path;

use anyhow::Context;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::ingest::pb::publisher_client::PublisherClient;

/// Connects to `addr` (`host:port`) with the CA and the client certificate and key (PEM files).
///
/// # Errors
/// When a file cannot be read or the connection fails.
pub async fn connect(
    addr: &str,
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> anyhow::Result<PublisherClient<Channel>> {
    crate::server::install_crypto_provider();
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    // The name the server certificate must carry: the host dialled, an IP address included
    // (`[::1]:50051` → `::1`).
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let domain = host.trim_start_matches('[').trim_end_matches(']');
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(ca)?))
        .identity(Identity::from_pem(read(cert)?, read(key)?))
        .domain_name(domain);
    let channel = Channel::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .connect()
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    Ok(PublisherClient::new(channel))
}

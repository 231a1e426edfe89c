//! Reload: new certificates, JWT key and publishers take effect for new handshakes, tokens and
//! publishes; open streams and connections keep going; a bad file keeps the running material.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use common::{
    hs256, metric_value, now_secs, publish, publish_err, req, KillOnDrop, SseReader, WAIT,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::json;
use sse_gateway::app::{ConfigSource, Gateway};
use sse_gateway::config::{Config, Overrides};
use sse_gateway::ingest::pb::publisher_client::PublisherClient;
use tonic::transport::Channel;
use tonic::Code;

const BIN: &str = env!("CARGO_BIN_EXE_sse-gateway");

fn config_file(dir: &Path, publishers: &[(&str, &str)]) -> PathBuf {
    config_file_with(dir, "", publishers)
}

/// A configuration file in `dir`; `http` is extra `[http]` keys.
fn config_file_with(dir: &Path, http: &str, publishers: &[(&str, &str)]) -> PathBuf {
    let mut toml = format!(
        "[http]\naddr = \"127.0.0.1:0\"\n{http}[grpc]\naddr = \"127.0.0.1:0\"\ntls_cert = \"server.pem\"\n\
         tls_key = \"server-key.pem\"\nclient_ca = \"ca.pem\"\n[jwt]\nsecret_file = \"jwt-secret\"\n",
    );
    for (name, pattern) in publishers {
        toml.push_str(&format!(
            "[[publishers]]\nname = \"{name}\"\nchannels = [\"{pattern}\"]\n"
        ));
    }
    let path = dir.join("gw.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

fn token(secret: &str) -> String {
    hs256(
        secret.as_bytes(),
        &json!({"sub": "alice", "exp": now_secs() + 600, "channels": ["logs:**"]}),
    )
}

/// The status of `POST /api/sse/session` with `token`: 204 when the gateway accepts it.
async fn session_status(http: SocketAddr, token: &str) -> u16 {
    reqwest::Client::new()
        .post(format!("http://{http}/api/sse/session"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn publisher(grpc: SocketAddr, dir: &Path, service: &str) -> PublisherClient<Channel> {
    sse_gateway::client::connect(
        &format!("localhost:{}", grpc.port()),
        &dir.join("ca.pem"),
        &dir.join(format!("{service}.pem")),
        &dir.join(format!("{service}-key.pem")),
    )
    .await
    .unwrap()
}

/// The certificate a new TLS handshake with a listener presents (DER).
async fn served_certificate(addr: SocketAddr, dir: &Path) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(dir.join("ca.pem")).unwrap() {
        roots.add(ca.unwrap()).unwrap();
    }
    let chain = CertificateDer::pem_file_iter(dir.join("l5-etl-service.pem"))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(dir.join("l5-etl-service-key.pem")).unwrap();
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio::time::timeout(
        WAIT,
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").unwrap(), tcp),
    )
    .await
    .unwrap()
    .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn file_certificate(path: &Path) -> Vec<u8> {
    CertificateDer::from_pem_file(path).unwrap().to_vec()
}

async fn reloads(gw: &Gateway, result: &str) -> f64 {
    let text = reqwest::get(format!("http://{}/metrics", gw.http_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let name = format!("sse_gateway_config_reloads_total{{result=\"{result}\"}}");
    if text.contains(&name) {
        metric_value(&text, &name)
    } else {
        0.0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_certificates_secret_and_publishers_and_keeps_open_streams() {
    sse_gateway::app::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    sse_gateway::pki::ensure_dev_pki(d, &["l5-etl-service", "analytics-service"]).unwrap();
    let (old_secret, new_secret) = (
        "reload-test-old-secret-of-32-bytes-at-least",
        "reload-test-new-secret-of-32-bytes-at-least",
    );
    std::fs::write(d.join("jwt-secret"), old_secret).unwrap();
    let file = config_file(d, &[("l5-etl-service", "logs:**")]);
    let source: ConfigSource = Arc::new(move || {
        Ok(Config::load(
            Some(&file),
            Vec::<(String, String)>::new(),
            &Overrides::default(),
        )?)
    });
    let gw = Gateway::start_reloadable(source().unwrap(), None, source)
        .await
        .unwrap();
    let (http, grpc) = (gw.http_addr, gw.grpc_addr);

    let resp = reqwest::Client::new()
        .get(format!("http://{http}/api/sse?channels=logs:ws1"))
        .bearer_auth(token(old_secret))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut stream = SseReader::new(resp);
    stream.ready(WAIT).await;
    let mut open = publisher(grpc, d, "l5-etl-service").await;
    let id = publish(&mut open, req("logs:ws1", &json!("before")))
        .await
        .id;
    assert_eq!(stream.next_data(WAIT).await.id, id);
    let mut analytics = publisher(grpc, d, "analytics-service").await;
    let denied = publish_err(&mut analytics, req("logs:ws1", &json!("early"))).await;
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    let old_cert = served_certificate(grpc, d).await;
    assert!(old_cert == file_certificate(&d.join("server.pem")));

    // New files: a new server certificate from the same CA, a new secret, one more publisher.
    std::fs::remove_file(d.join("server.pem")).unwrap();
    std::fs::remove_file(d.join("server-key.pem")).unwrap();
    sse_gateway::pki::ensure_dev_pki(d, &[]).unwrap();
    let new_cert = file_certificate(&d.join("server.pem"));
    assert!(new_cert != old_cert);
    std::fs::write(d.join("jwt-secret"), new_secret).unwrap();
    config_file(
        d,
        &[
            ("l5-etl-service", "logs:**"),
            ("analytics-service", "logs:**"),
        ],
    );
    gw.reload().unwrap();
    assert_eq!(reloads(&gw, "ok").await, 1.0);

    // The open stream keeps receiving, through the open connection and new ones.
    let id = publish(&mut open, req("logs:ws1", &json!("open connection")))
        .await
        .id;
    assert_eq!(stream.next_data(WAIT).await.id, id);
    let mut fresh = publisher(grpc, d, "l5-etl-service").await;
    let id = publish(&mut fresh, req("logs:ws1", &json!("new connection")))
        .await
        .id;
    assert_eq!(stream.next_data(WAIT).await.id, id);
    let id = publish(&mut analytics, req("logs:ws1", &json!("added")))
        .await
        .id;
    assert_eq!(stream.next_data(WAIT).await.id, id);
    // New handshakes get the new certificate; new tokens the new secret.
    assert!(
        served_certificate(grpc, d).await == new_cert,
        "a new handshake still gets the old certificate"
    );
    assert_eq!(session_status(http, &token(new_secret)).await, 204);
    assert_eq!(session_status(http, &token(old_secret)).await, 401);

    // A broken key file: the reload fails as a whole and the running material stays.
    std::fs::write(d.join("server-key.pem"), "not a key").unwrap();
    std::fs::write(
        d.join("jwt-secret"),
        "a-third-secret-that-must-not-be-used-now",
    )
    .unwrap();
    let err = gw.reload().unwrap_err().to_string();
    assert!(err.contains("grpc.tls_key"), "{err}");
    assert!(
        !err.contains("a-third-secret"),
        "a secret in the error: {err}"
    );
    assert_eq!(reloads(&gw, "error").await, 1.0);
    assert_eq!(reloads(&gw, "ok").await, 1.0);
    assert!(
        served_certificate(grpc, d).await == new_cert,
        "a failed reload changed the served certificate"
    );
    assert_eq!(session_status(http, &token(new_secret)).await, 204);
    let mut after = publisher(grpc, d, "analytics-service").await;
    let id = publish(&mut after, req("logs:ws1", &json!("after the error")))
        .await
        .id;
    assert_eq!(stream.next_data(WAIT).await.id, id);

    gw.shutdown();
    tokio::time::timeout(WAIT * 2, gw.wait()).await.unwrap();
}

#[tokio::test]
async fn reload_swaps_the_https_certificate() {
    sse_gateway::app::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    sse_gateway::pki::ensure_dev_pki(d, &["l5-etl-service"]).unwrap();
    std::fs::write(
        d.join("jwt-secret"),
        "https-reload-secret-of-32-bytes-at-least",
    )
    .unwrap();
    let https = "tls_cert = \"server.pem\"\ntls_key = \"server-key.pem\"\n";
    let file = config_file_with(d, https, &[]);
    let source: ConfigSource = Arc::new(move || {
        Ok(Config::load(
            Some(&file),
            Vec::<(String, String)>::new(),
            &Overrides::default(),
        )?)
    });
    let gw = Gateway::start_reloadable(source().unwrap(), None, source)
        .await
        .unwrap();
    let old_cert = served_certificate(gw.http_addr, d).await;
    assert!(old_cert == file_certificate(&d.join("server.pem")));
    std::fs::remove_file(d.join("server.pem")).unwrap();
    std::fs::remove_file(d.join("server-key.pem")).unwrap();
    sse_gateway::pki::ensure_dev_pki(d, &[]).unwrap();
    gw.reload().unwrap();
    let new_cert = served_certificate(gw.http_addr, d).await;
    assert!(
        new_cert != old_cert,
        "HTTPS still serves the old certificate"
    );
    assert!(new_cert == file_certificate(&d.join("server.pem")));
    gw.shutdown();
    tokio::time::timeout(WAIT * 2, gw.wait()).await.unwrap();
}

#[tokio::test]
async fn sighup_reloads_the_jwt_secret_of_the_running_binary() {
    sse_gateway::app::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    sse_gateway::pki::ensure_dev_pki(d, &["l5-etl-service"]).unwrap();
    let (old_secret, new_secret) = (
        "sighup-test-old-secret-of-32-bytes-at-least",
        "sighup-test-new-secret-of-32-bytes-at-least",
    );
    std::fs::write(d.join("jwt-secret"), old_secret).unwrap();
    let file = config_file(d, &[("l5-etl-service", "logs:**")]);
    let mut child = KillOnDrop::new(
        Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&file)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = child.child().stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    });
    let line = tokio::time::timeout(WAIT, line)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let http: SocketAddr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http="))
        .unwrap_or_else(|| panic!("no http= in {line:?}"))
        .parse()
        .unwrap();
    assert_eq!(session_status(http, &token(old_secret)).await, 204);
    assert_eq!(session_status(http, &token(new_secret)).await, 401);

    std::fs::write(d.join("jwt-secret"), new_secret).unwrap();
    let hup = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    // The signal is handled asynchronously: wait, with a deadline, for the new secret to work.
    let deadline = tokio::time::Instant::now() + WAIT;
    while session_status(http, &token(new_secret)).await != 204 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new secret was not accepted after SIGHUP"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(session_status(http, &token(old_secret)).await, 401);

    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let mut child = child.into_inner();
    let exit = tokio::task::spawn_blocking(move || child.wait());
    let exit = tokio::time::timeout(WAIT * 2, exit)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(exit.success(), "exit status {exit:?}");
}

//! The binary on SIGTERM: open streams get what was published, end cleanly, and the process
//! exits 0 — clients then resume by cursor elsewhere.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{hs256, now_secs, KillOnDrop, SseReader, WAIT};
use serde_json::json;
use sse_gateway::ingest::pb::PublishRequest;

const BIN: &str = env!("CARGO_BIN_EXE_sse-gateway");

#[tokio::test]
async fn sigterm_flushes_and_closes_streams_cleanly() {
    sse_gateway::app::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    sse_gateway::pki::ensure_dev_pki(dir.path(), &["l5-etl-service"]).unwrap();
    let secret = "signal-test-secret-at-least-32-bytes";
    std::fs::write(
        dir.path().join("gw.toml"),
        format!(
            "[http]\naddr = \"127.0.0.1:0\"\n[grpc]\naddr = \"127.0.0.1:0\"\ntls_cert = \"server.pem\"\n\
             tls_key = \"server-key.pem\"\nclient_ca = \"ca.pem\"\n[jwt]\nsecret = \"{secret}\"\n\
             [[publishers]]\nname = \"l5-etl-service\"\nchannels = [\"logs:**\"]\n"
        ),
    )
    .unwrap();
    let mut child = KillOnDrop::new(
        Command::new(BIN)
            .args(["serve", "--config"])
            .arg(dir.path().join("gw.toml"))
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
    let addr = |key: &str| -> String {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in {line:?}"))
            .to_owned()
    };
    let (http, grpc) = (addr("http="), addr("grpc="));
    let token = hs256(
        secret.as_bytes(),
        &json!({"sub": "alice", "exp": now_secs() + 600, "channels": ["logs:**"]}),
    );
    let resp = reqwest::Client::new()
        .get(format!("http://{http}/api/sse?channels=logs:ws1"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut stream = SseReader::new(resp);
    stream.ready(WAIT).await;
    let port = grpc.rsplit(':').next().unwrap();
    let mut client = sse_gateway::client::connect(
        &format!("localhost:{port}"),
        &dir.path().join("ca.pem"),
        &dir.path().join("l5-etl-service.pem"),
        &dir.path().join("l5-etl-service-key.pem"),
    )
    .await
    .unwrap();
    let mut ids = Vec::new();
    for n in 0..20 {
        let r = client
            .publish(PublishRequest {
                channel: "logs:ws1".into(),
                data: json!({ "n": n }).to_string(),
                ..Default::default()
            })
            .await
            .unwrap();
        ids.push(r.into_inner().id);
    }

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // Every event published before the signal arrives, then the body ends without an error.
    for id in &ids {
        assert_eq!(&stream.next_data(WAIT).await.id, id);
    }
    stream.expect_end(WAIT).await;
    let mut child = child.into_inner();
    let exit = tokio::task::spawn_blocking(move || child.wait());
    let exit = tokio::time::timeout(Duration::from_secs(15), exit)
        .await
        .expect("the process exits after draining")
        .unwrap()
        .unwrap();
    assert!(exit.success(), "exit status {exit:?}");
}

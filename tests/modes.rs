//! The binary's modes, as real processes in temp dirs: `serve` (production: file and/or env,
//! never writes a file, no dev surface), `dev` / no subcommand (the dev setup, which creates
//! only missing files), and `config check`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use common::{hs256, now_secs, publish, publish_err, req, SseReader, WAIT};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

const BIN: &str = env!("CARGO_BIN_EXE_sse-gateway");

/// A production-strength HS256 secret (32+ bytes).
const SECRET: &str = "env-only-secret-0123456789abcdef-0123";

/// Every file under `dir`: contents and modification time, by relative path.
type Snapshot = BTreeMap<PathBuf, (Vec<u8>, SystemTime)>;

fn snapshot(dir: &Path) -> Snapshot {
    fn walk(root: &Path, dir: &Path, out: &mut Snapshot) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let meta = std::fs::metadata(&path).unwrap();
                out.insert(
                    path.strip_prefix(root).unwrap().to_owned(),
                    (std::fs::read(&path).unwrap(), meta.modified().unwrap()),
                );
            }
        }
    }
    let mut out = Snapshot::new();
    walk(dir, dir, &mut out);
    out
}

fn names(s: &Snapshot) -> Vec<String> {
    s.keys().map(|p| p.display().to_string()).collect()
}

/// A CA (its key is NOT written), a server certificate for the IP 127.0.0.1 only, and client
/// certificates for `clients`, all written to `dir`.
fn production_pki(dir: &Path, clients: &[&str]) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "test production CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().unwrap();
    let ca = params.self_signed(&ca_key).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&ca.pem(), ca_key).unwrap();

    let mut server = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().unwrap();
    let cert = server.signed_by(&key, &issuer).unwrap();
    std::fs::write(dir.join("server.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("server-key.pem"), key.serialize_pem()).unwrap();

    for name in clients {
        let mut client = CertificateParams::new(vec![(*name).to_owned()]).unwrap();
        client.distinguished_name.push(DnType::CommonName, *name);
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().unwrap();
        let cert = client.signed_by(&key, &issuer).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}-key.pem")), key.serialize_pem()).unwrap();
    }
}

/// The binary with a clean environment (only `vars`), in `cwd`.
fn command(args: &[&str], vars: &[(&str, &str)], cwd: &Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args)
        .current_dir(cwd)
        .env_clear()
        .envs(vars.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// Runs the binary to its end (it must end within the deadline).
async fn run(args: &[&str], vars: &[(&str, &str)], cwd: &Path) -> Output {
    let out = command(args, vars, cwd).output();
    tokio::time::timeout(Duration::from_secs(30), out)
        .await
        .unwrap_or_else(|_| panic!("{args:?} did not exit before the deadline"))
        .unwrap()
}

/// A gateway process that printed its bound addresses.
struct Running {
    child: tokio::process::Child,
    http: String,
    grpc: String,
}

impl Running {
    /// Starts the binary and waits for `listening: http=… grpc=…`; fails with its stderr
    /// when it exits first.
    async fn start(args: &[&str], vars: &[(&str, &str)], cwd: &Path) -> Self {
        let mut child = command(args, vars, cwd)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err_pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err_pipe.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(WAIT, async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if line.starts_with("listening:") {
                    return Some(line);
                }
            }
            None
        })
        .await
        .unwrap_or_else(|_| panic!("{args:?} printed no listening line before the deadline"));
        let Some(line) = line else {
            let status = child.wait().await.unwrap();
            // The stderr reader may still be copying the last bytes.
            tokio::time::sleep(Duration::from_millis(100)).await;
            panic!(
                "{args:?} exited ({status}) before listening: {}",
                stderr.lock().unwrap()
            );
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let addr = |key: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .unwrap_or_else(|| panic!("no {key} in {line:?}"))
                .to_owned()
        };
        let (http, grpc) = (addr("http="), addr("grpc="));
        Self { child, http, grpc }
    }

    fn grpc_port(&self) -> &str {
        self.grpc.rsplit(':').next().unwrap()
    }

    async fn stop(mut self) {
        self.child.start_kill().unwrap();
        tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("the gateway exits after kill")
            .unwrap();
    }
}

fn http() -> reqwest::Client {
    // reqwest takes the process's rustls provider (ring), as the gateway does.
    sse_gateway::app::install_crypto_provider();
    reqwest::Client::builder().no_proxy().build().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The environment of an env-only production gateway on ephemeral ports, files relative to
/// the working folder.
fn production_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("SSE_GATEWAY__HTTP__ADDR", "127.0.0.1:0"),
        ("SSE_GATEWAY__GRPC__ADDR", "127.0.0.1:0"),
        ("SSE_GATEWAY__GRPC__TLS_CERT", "server.pem"),
        ("SSE_GATEWAY__GRPC__TLS_KEY", "server-key.pem"),
        ("SSE_GATEWAY__GRPC__CLIENT_CA", "ca.pem"),
        ("SSE_GATEWAY__JWT__SECRET", SECRET),
        (
            "SSE_GATEWAY__PUBLISHERS",
            r#"[{"name": "etl-service", "channels": ["logs:**"], "control": false}]"#,
        ),
    ]
}

#[tokio::test]
async fn env_only_serve_writes_nothing_and_has_no_dev_surface() {
    let dir = tempfile::tempdir().unwrap();
    production_pki(dir.path(), &["dev-cli", "etl-service"]);
    let before = snapshot(dir.path());
    assert!(!before.contains_key(Path::new("ca-key.pem")));

    let gw = Running::start(&["serve"], &production_env(), dir.path()).await;
    let client = http();
    for path in ["/demo/token", "/demo/", "/"] {
        let resp = client
            .get(format!("http://{}{path}", gw.http))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404, "{path} is not served in production");
    }

    // Dialled by IP: the server certificate names only 127.0.0.1.
    let addr = format!("127.0.0.1:{}", gw.grpc_port());
    let p = |f: &str| dir.path().join(f);
    let mut dev_cli = sse_gateway::client::connect(
        &addr,
        &p("ca.pem"),
        &p("dev-cli.pem"),
        &p("dev-cli-key.pem"),
    )
    .await
    .expect("a client of the configured CA connects");
    let status = publish_err(&mut dev_cli, req("logs:ws1:wf1", &json!({"n": 0}))).await;
    assert_eq!(
        status.code(),
        tonic::Code::PermissionDenied,
        "no built-in dev-cli publisher: {status:?}"
    );

    let token = hs256(
        SECRET.as_bytes(),
        &json!({"sub": "alice", "exp": now_secs() + 600, "channels": ["logs:**"]}),
    );
    let resp = client
        .get(format!("http://{}/api/sse?channels=logs:ws1:wf1", gw.http))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "the env secret verifies tokens");
    let mut stream = SseReader::new(resp);
    stream.ready(WAIT).await;
    let mut etl = sse_gateway::client::connect(
        &addr,
        &p("ca.pem"),
        &p("etl-service.pem"),
        &p("etl-service-key.pem"),
    )
    .await
    .unwrap();
    let published = publish(&mut etl, req("logs:ws1:wf1", &json!({"n": 1}))).await;
    let got = stream.next_data(WAIT).await;
    assert_eq!(got.id, published.id, "the env publisher's event arrives");
    drop(stream);
    gw.stop().await;

    let after = snapshot(dir.path());
    assert_eq!(
        names(&before),
        names(&after),
        "serve created or removed a file"
    );
    assert!(before == after, "serve changed a file");
}

#[tokio::test]
async fn serve_without_required_settings_exits_naming_keys_and_env_vars() {
    let dir = tempfile::tempdir().unwrap();
    let addrs = [
        ("SSE_GATEWAY__HTTP__ADDR", "127.0.0.1:0"),
        ("SSE_GATEWAY__GRPC__ADDR", "127.0.0.1:0"),
    ];
    let out = run(&["serve"], &addrs, dir.path()).await;
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("listening"),
        "nothing was bound"
    );
    for needle in [
        "grpc.tls_cert (SSE_GATEWAY__GRPC__TLS_CERT) is required",
        "grpc.tls_key (SSE_GATEWAY__GRPC__TLS_KEY) is required",
        "grpc.client_ca (SSE_GATEWAY__GRPC__CLIENT_CA) is required",
        "jwt.secret (SSE_GATEWAY__JWT__SECRET) is required",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in: {err}");
    }
    assert_eq!(snapshot(dir.path()).len(), 0, "serve created files");

    // A TLS file that is not there, and no JWT key, with everything else given.
    production_pki(dir.path(), &[]);
    let mut vars = production_env();
    vars.retain(|(k, _)| *k != "SSE_GATEWAY__JWT__SECRET");
    vars.retain(|(k, _)| *k != "SSE_GATEWAY__GRPC__TLS_KEY");
    vars.push(("SSE_GATEWAY__GRPC__TLS_KEY", "missing-key.pem"));
    let out = run(&["serve"], &vars, dir.path()).await;
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    for needle in [
        "grpc.tls_key (SSE_GATEWAY__GRPC__TLS_KEY)",
        "missing-key.pem",
        "jwt.secret (SSE_GATEWAY__JWT__SECRET) is required",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in: {err}");
    }

    // The same from a file: the message still names the environment variable.
    std::fs::write(
        dir.path().join("gw.toml"),
        "[grpc]\ntls_cert = \"server.pem\"\ntls_key = \"server-key.pem\"\nclient_ca = \"ca.pem\"\n",
    )
    .unwrap();
    let out = run(&["--config", "gw.toml"], &addrs, dir.path()).await;
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("jwt.secret (SSE_GATEWAY__JWT__SECRET) is required"),
        "{err}"
    );
}

#[tokio::test]
async fn config_check_prints_the_redacted_config_or_every_error() {
    let dir = tempfile::tempdir().unwrap();
    production_pki(dir.path(), &[]);
    std::fs::write(
        dir.path().join("gw.toml"),
        format!("[jwt]\nsecret = \"{SECRET}\"\n[sse]\nqueue_events = 77\n"),
    )
    .unwrap();
    let mut vars = production_env();
    vars.retain(|(k, _)| *k != "SSE_GATEWAY__JWT__SECRET");
    let out = run(
        &["config", "check", "--config", "gw.toml"],
        &vars,
        dir.path(),
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stdout.contains(SECRET), "the secret is printed: {stdout}");
    assert!(!stderr(&out).contains(SECRET), "the secret is printed");
    let effective: toml::Table = toml::from_str(&stdout).expect("the output is TOML");
    assert_eq!(effective["jwt"]["secret"].as_str(), Some("<redacted>"));
    assert_eq!(effective["sse"]["queue_events"].as_integer(), Some(77));
    assert_eq!(effective["http"]["addr"].as_str(), Some("127.0.0.1:0"));
    assert_eq!(
        effective["publishers"][0]["name"].as_str(),
        Some("etl-service")
    );

    // Several problems at once, from the file and from the environment: all are listed.
    std::fs::write(
        dir.path().join("bad.toml"),
        "[jwt]\nsecret = \"too-short\"\n[[publishers]]\nname = \"etl\"\nchannels = [\"lgos:**\"]\n",
    )
    .unwrap();
    let vars = [
        ("SSE_GATEWAY__HTTP__ADDR", "nowhere"),
        ("SSE_GATEWAY__GRPC__TLS_CERT", "absent.pem"),
        ("SSE_GATEWAY__SSE__HEARTBEAT", "3"),
    ];
    let out = run(
        &["config", "check", "--config", "bad.toml"],
        &vars,
        dir.path(),
    )
    .await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    for needle in [
        "http.addr (SSE_GATEWAY__HTTP__ADDR)",
        "grpc.tls_cert (SSE_GATEWAY__GRPC__TLS_CERT)",
        "absent.pem",
        "grpc.tls_key (SSE_GATEWAY__GRPC__TLS_KEY) is required",
        "sse.heartbeat (SSE_GATEWAY__SSE__HEARTBEAT)",
        "jwt.secret",
        "32 bytes",
        "publishers[0].channels",
        "lgos",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in: {err}");
    }
    assert!(!err.contains("too-short"), "the secret is printed: {err}");
}

#[tokio::test]
async fn the_dev_setup_refuses_a_ca_without_its_key_and_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    production_pki(&certs, &[]);
    std::fs::remove_file(certs.join("server.pem")).unwrap();
    let before = snapshot(dir.path());
    for args in [
        &[
            "dev",
            "--http-addr",
            "127.0.0.1:0",
            "--grpc-addr",
            "127.0.0.1:0",
        ][..],
        &["--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"][..],
    ] {
        let out = run(args, &[], dir.path()).await;
        let err = stderr(&out);
        assert!(!out.status.success(), "{args:?}: {err}");
        assert!(
            err.contains("ca.pem exists without") && err.contains("ca-key.pem"),
            "{args:?}: {err}"
        );
        let after = snapshot(dir.path());
        assert_eq!(names(&before), names(&after), "{args:?} created a file");
        assert!(before == after, "{args:?} changed a file");
    }

    // A server certificate without its key is refused the same way.
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    sse_gateway::pki::ensure_dev_pki(&certs, &["dev-cli"]).unwrap();
    std::fs::remove_file(certs.join("server-key.pem")).unwrap();
    let before = snapshot(dir.path());
    let out = run(
        &[
            "dev",
            "--http-addr",
            "127.0.0.1:0",
            "--grpc-addr",
            "127.0.0.1:0",
        ],
        &[],
        dir.path(),
    )
    .await;
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("server.pem exists without") && err.contains("server-key.pem"),
        "{err}"
    );
    assert!(before == snapshot(dir.path()), "a file changed");
}

#[tokio::test]
async fn the_dev_setup_creates_its_pki_once_and_never_rewrites_it() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "dev",
        "--http-addr",
        "127.0.0.1:0",
        "--grpc-addr",
        "127.0.0.1:0",
    ];
    let gw = Running::start(&args, &[], dir.path()).await;
    gw.stop().await;
    let first = snapshot(dir.path());
    for f in [
        "certs/ca.pem",
        "certs/ca-key.pem",
        "certs/server.pem",
        "certs/server-key.pem",
        "certs/dev-cli.pem",
        "certs/dev-cli-key.pem",
        "certs/l5-etl-service.pem",
        "certs/dev-secret",
    ] {
        assert!(
            first.contains_key(Path::new(f)),
            "{f} in {:?}",
            names(&first)
        );
    }
    let gw = Running::start(&args, &[], dir.path()).await;
    gw.stop().await;
    let second = snapshot(dir.path());
    assert_eq!(names(&first), names(&second));
    for (path, (bytes, mtime)) in &first {
        let (bytes2, mtime2) = &second[path];
        assert!(bytes == bytes2, "{} was rewritten", path.display());
        assert_eq!(mtime, mtime2, "{} was touched", path.display());
    }
}

#[tokio::test]
async fn no_subcommand_is_a_working_dev_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Running::start(
        &["--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"],
        &[],
        dir.path(),
    )
    .await;
    let out = run(
        &["token", "--sub", "alice", "--channels", "logs:**"],
        &[],
        dir.path(),
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let client = http();
    let resp = client
        .get(format!("http://{}/api/sse?channels=logs:ws1:wf1", gw.http))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut stream = SseReader::new(resp);
    stream.ready(WAIT).await;
    // The `publish` subcommand with the dev-cli certificate, dialled by IP.
    let out = run(
        &[
            "publish",
            "--addr",
            &format!("127.0.0.1:{}", gw.grpc_port()),
            "--channel",
            "logs:ws1:wf1",
            "--data",
            r#"{"msg":"hello"}"#,
        ],
        &[],
        dir.path(),
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let id = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let got = stream.next_data(WAIT).await;
    assert_eq!(got.id, id);
    assert_eq!(got.payload, json!({"msg": "hello"}));
    // The dev setup serves the demo page and its token endpoint.
    let resp = client
        .get(format!("http://{}/demo/token", gw.http))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    gw.stop().await;
}

#[tokio::test]
async fn the_dev_setup_never_mints_demo_tokens_with_a_configured_secret() {
    // Production settings in the environment, but no subcommand: the dev setup. It uses the
    // configured certificates and secret, so it creates nothing, adds no example publisher,
    // and has no token endpoint (it would sign with the configured secret).
    let dir = tempfile::tempdir().unwrap();
    production_pki(dir.path(), &["dev-cli"]);
    let before = snapshot(dir.path());
    let gw = Running::start(&[], &production_env(), dir.path()).await;
    let resp = http()
        .get(format!("http://{}/demo/token", gw.http))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let p = |f: &str| dir.path().join(f);
    let mut dev_cli = sse_gateway::client::connect(
        &format!("127.0.0.1:{}", gw.grpc_port()),
        &p("ca.pem"),
        &p("dev-cli.pem"),
        &p("dev-cli-key.pem"),
    )
    .await
    .unwrap();
    let status = publish_err(&mut dev_cli, req("logs:ws1", &json!({}))).await;
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    gw.stop().await;
    assert!(
        before == snapshot(dir.path()),
        "files were created or changed"
    );
}

#[tokio::test]
async fn demo_with_a_config_file_serves_live_simulated_events() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(&["certs", "--out", "pki"], &[], dir.path()).await;
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::write(
        dir.path().join("gw.toml"),
        format!(
            "[http]\naddr = \"127.0.0.1:0\"\n[grpc]\naddr = \"127.0.0.1:0\"\n\
             tls_cert = \"pki/server.pem\"\ntls_key = \"pki/server-key.pem\"\nclient_ca = \"pki/ca.pem\"\n\
             [jwt]\nsecret = \"{SECRET}\"\n\
             [[publishers]]\nname = \"l5-etl-service\"\nchannels = [\"logs:**\", \"metrics:*\"]\n"
        ),
    )
    .unwrap();
    let gw = Running::start(&["demo", "--config", "gw.toml"], &[], dir.path()).await;
    let client = http();
    let token: serde_json::Value = client
        .get(format!("http://{}/demo/token", gw.http))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = token["token"].as_str().unwrap().to_owned();
    let resp = client
        .get(format!(
            "http://{}/api/sse?channels=logs:demo:etl-1",
            gw.http
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "the demo token verifies");
    let mut stream = SseReader::new(resp);
    stream.ready(WAIT).await;
    let event = stream.next_data(WAIT).await;
    assert_eq!(
        event.channel, "logs:demo:etl-1",
        "a simulated service publishes"
    );
    gw.stop().await;
}

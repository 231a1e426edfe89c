//! Configuration (SPEC §1): errors name the key or file, the documented example loads,
//! precedence flag > env > file > default, and the binary exits non-zero on a bad config.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::*;
use sse_gateway::config::{Config, ConfigError, Overrides};
use tempfile::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_sse-gateway");

/// A folder with a PKI and a valid minimal config file (`gateway.toml`, relative paths).
fn setup() -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    sse_gateway::pki::ensure_dev_pki(&dir.path().join("certs"), &["l5-etl-service"]).unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, base_toml("")).unwrap();
    (dir, path)
}

fn base_toml(extra: &str) -> String {
    format!(
        r#"
[grpc]
addr = "127.0.0.1:0"
tls_cert = "certs/server.pem"
tls_key = "certs/server-key.pem"
client_ca = "certs/ca.pem"

[jwt]
secret = "s3cret"
{extra}
"#
    )
}

fn load_text(dir: &Path, text: &str) -> Result<Config, ConfigError> {
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    Config::load(Some(&path), Vec::new(), &Overrides::default())
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn a_valid_file_loads_with_paths_relative_to_it() {
    let (dir, path) = setup();
    let config = Config::load(Some(&path), Vec::new(), &Overrides::default()).unwrap();
    assert_eq!(
        Path::new(&config.raw.grpc.tls_cert),
        dir.path().join("certs/server.pem")
    );
    assert!(!config.dev);
    assert!(
        !format!("{config:?}").contains("s3cret"),
        "Debug never prints the secret"
    );
}

#[test]
fn the_documented_example_loads() {
    let (dir, _) = setup();
    // SPEC §1.1 verbatim, except for a secret (required outside the dev setup) and
    // ephemeral addresses.
    let text = r#"
[http]
addr = "127.0.0.1:0"
tls_cert = ""              # PEM; with tls_key: HTTPS with h2 + http/1.1
tls_key = ""
cors_origins = []          # e.g. ["https://app.example.com"]
allow_query_token = false  # accept ?access_token= on /api/sse

[grpc]
addr = "127.0.0.1:0"
tls_cert = "certs/server.pem"       # required outside the dev setup
tls_key = "certs/server-key.pem"
client_ca = "certs/ca.pem"          # CA that publisher certificates must chain to

[jwt]
algorithm = "HS256"        # HS256 | RS256 | ES256
secret = "s3cret"          # HS256: the secret itself, or
secret_file = ""           #        a file holding it
public_key_file = ""       # RS256/ES256: PEM public key, or
jwks_file = ""             #              a JWKS document (kid selects the key)
issuer = ""                # checked when set
audience = ""              # checked when set
leeway_secs = 30

[sse]
heartbeat_secs = 15
retry_ms = 3000
queue_events = 1024        # per-connection queue bound

[limits]
max_event_bytes = 65536
max_connections_per_user = 16
max_channels_per_connection = 64

[history]
max_events = 100000
max_age_secs = 3600
dedupe_window_secs = 300

[broker]
kind = "memory"            # memory | redis
url = "redis://127.0.0.1:6379"
key_prefix = "sse-gateway"

[channels.logs]            # a file with any [channels.*] table replaces the default set
template = "logs:{workspace_id}:{workflow_id?}"
subscribe = []             # patterns every authenticated user may read, e.g. ["alerts:{sub}"]

[[publishers]]
name = "l5-etl-service"
channels = ["logs:**", "metrics:*"]
"#;
    let config = load_text(dir.path(), text).unwrap();
    assert_eq!(config.raw.sse.queue_events, 1024);
    assert!(config.publishers.contains_key("l5-etl-service"));
    assert!(config.channel_types.parse_name("logs:ws1:wf1").is_ok());
    assert!(
        config.channel_types.parse_name("metrics:ws1").is_err(),
        "[channels.*] replaces the default set"
    );
}

#[test]
fn unknown_keys_are_named() {
    let (dir, _) = setup();
    for (extra, needle) in [
        ("[sse]\nheartbeat = 3\n", "heartbeat"),
        ("[nope]\nx = 1\n", "nope"),
        ("[limits]\nmax_events_bytes = 1\n", "max_events_bytes"),
        (
            "[[publishers]]\nname = \"x\"\nchanels = [\"logs:**\"]\n",
            "chanels",
        ),
    ] {
        let err = load_text(dir.path(), &base_toml(extra)).unwrap_err();
        assert!(err.to_string().contains(needle), "{extra:?}: {err}");
    }
    let err = load_text(dir.path(), &base_toml("[jwt]\nsecret = \"dup\"\n")).unwrap_err();
    assert!(
        err.to_string().contains("jwt") || err.to_string().contains("secret"),
        "{err}"
    );
}

#[test]
fn bad_values_are_named() {
    let (dir, _) = setup();
    for (extra, needle) in [
        ("[http]\naddr = \"nowhere\"\n", "http.addr"),
        ("[sse]\nqueue_events = \"many\"\n", "queue_events"),
        ("[sse]\nqueue_events = 0\n", "sse.queue_events"),
        ("[sse]\nheartbeat_secs = 0\n", "sse.heartbeat_secs"),
        ("[sse]\nretry_ms = -1\n", "retry_ms"),
        (
            "[limits]\nmax_connections_per_user = 0\n",
            "limits.max_connections_per_user",
        ),
        ("[history]\nmax_events = 0\n", "history.max_events"),
        ("[broker]\nkind = \"etcd\"\n", "broker.kind"),
        (
            "[http]\ncors_origins = [\"not an origin\"]\n",
            "http.cors_origins",
        ),
        ("[http]\ntls_cert = \"certs/server.pem\"\n", "http.tls_cert"),
        (
            "[http]\ntls_cert = \"no.pem\"\ntls_key = \"no-key.pem\"\n",
            "http.tls_cert",
        ),
        (
            "[[publishers]]\nname = \"x\"\nchannels = [\"logs:a b\"]\n",
            "publishers[0].channels",
        ),
        (
            "[[publishers]]\nname = \"x\"\n[[publishers]]\nname = \"x\"\n",
            "publishers[1].name",
        ),
        (
            "[channels.logs]\ntemplate = \"other:{x}\"\n",
            "channels.logs",
        ),
    ] {
        let err = load_text(dir.path(), &base_toml(extra)).unwrap_err();
        assert!(err.to_string().contains(needle), "{extra:?}: {err}");
    }
    // Sections that the base file already has, replaced whole.
    let cases = [
        (
            base_toml("").replace("certs/server.pem", "certs/missing.pem"),
            "grpc.tls_cert",
        ),
        (
            base_toml("").replace("secret = \"s3cret\"", ""),
            "jwt.secret",
        ),
        (
            base_toml("").replace("secret = \"s3cret\"", "algorithm = \"HS512\""),
            "jwt.algorithm",
        ),
        (
            base_toml("").replace("secret = \"s3cret\"", "algorithm = \"ES256\""),
            "jwt.public_key_file",
        ),
        (
            base_toml("").replace(
                "secret = \"s3cret\"",
                "algorithm = \"RS256\"\npublic_key_file = \"nope.pem\"",
            ),
            "jwt.public_key_file",
        ),
        (
            base_toml("").replace("secret = \"s3cret\"", "secret_file = \"nope\""),
            "jwt.secret_file",
        ),
        ("this is not toml".to_owned(), "gateway.toml"),
    ];
    for (text, needle) in cases {
        let err = load_text(dir.path(), &text).unwrap_err();
        assert!(err.to_string().contains(needle), "{needle}: {err}");
    }
}

#[test]
fn a_missing_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.toml");
    let err = Config::load(Some(&path), Vec::new(), &Overrides::default()).unwrap_err();
    assert!(err.to_string().contains("absent.toml"), "{err}");
}

#[test]
fn precedence_is_flag_then_env_then_file_then_default() {
    let (_dir, path) = setup();
    std::fs::write(
        &path,
        base_toml("[sse]\nqueue_events = 7\n[http]\naddr = \"127.0.0.1:1\"\n")
            .replace("127.0.0.1:0", "127.0.0.1:1"),
    )
    .unwrap();
    let file_only = Config::load(Some(&path), Vec::new(), &Overrides::default()).unwrap();
    assert_eq!(file_only.http_addr.port(), 1);
    assert_eq!(file_only.raw.sse.queue_events, 7);
    assert_eq!(file_only.raw.sse.retry_ms, 3000, "default");

    let vars = env(&[
        ("SSE_GATEWAY__HTTP__ADDR", "127.0.0.1:2"),
        ("SSE_GATEWAY__SSE__QUEUE_EVENTS", "9"),
        ("SSE_GATEWAY__HTTP__ALLOW_QUERY_TOKEN", "true"),
        ("UNRELATED", "x"),
    ]);
    let with_env = Config::load(Some(&path), vars.clone(), &Overrides::default()).unwrap();
    assert_eq!(with_env.http_addr.port(), 2);
    assert_eq!(with_env.raw.sse.queue_events, 9);
    assert!(with_env.raw.http.allow_query_token);

    let flags = Overrides {
        http_addr: Some("127.0.0.1:3".into()),
        grpc_addr: None,
    };
    let with_flag = Config::load(Some(&path), vars, &flags).unwrap();
    assert_eq!(with_flag.http_addr.port(), 3);
    assert_eq!(with_flag.grpc_addr.port(), 1, "file");

    for (name, value, needle) in [
        ("SSE_GATEWAY__HTTP__NOPE", "1", "http.nope"),
        ("SSE_GATEWAY__SSE__QUEUE_EVENTS", "lots", "queue_events"),
        ("SSE_GATEWAY__HTTP__ADDR", "nowhere", "http.addr"),
    ] {
        let err =
            Config::load(Some(&path), env(&[(name, value)]), &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains(needle), "{name}={value}: {err}");
    }
}

async fn run(args: &[&str], vars: &[(&str, &str)], cwd: &Path) -> Output {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args)
        .current_dir(cwd)
        .env_remove("RUST_LOG")
        .kill_on_drop(true);
    for (k, v) in vars {
        cmd.env(k, v);
    }
    tokio::time::timeout(Duration::from_secs(20), cmd.output())
        .await
        .expect("the binary exits before the deadline")
        .unwrap()
}

#[tokio::test]
async fn the_binary_exits_non_zero_naming_the_bad_key() {
    let (dir, path) = setup();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, base_toml("[sse]\nheartbeat = 3\n")).unwrap();
    type Case<'a> = (Vec<String>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec!["serve".into(), "--config".into(), bad.display().to_string()],
            vec![],
            "heartbeat",
        ),
        (
            vec![
                "serve".into(),
                "--config".into(),
                dir.path().join("absent.toml").display().to_string(),
            ],
            vec![],
            "absent.toml",
        ),
        (
            vec![
                "serve".into(),
                "--config".into(),
                path.display().to_string(),
            ],
            vec![("SSE_GATEWAY__HTTP__ADDR", "nowhere")],
            "http.addr",
        ),
        (
            vec!["--config".into(), bad.display().to_string()],
            vec![],
            "heartbeat",
        ),
    ];
    for (args, vars, needle) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run(&args, &vars, dir.path()).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(stderr.contains(needle), "{args:?}: stderr {stderr}");
    }
}

#[tokio::test]
async fn certs_and_token_subcommands_work_with_the_gateway() {
    let out_dir = tempfile::tempdir().unwrap();
    let certs = out_dir.path().join("pki");
    let out = run(
        &["certs", "--out", certs.to_str().unwrap()],
        &[],
        out_dir.path(),
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in [
        "ca.pem",
        "server.pem",
        "server-key.pem",
        "l5-etl-service.pem",
        "l5-etl-service-key.pem",
        "faas-service.pem",
        "analytics-service.pem",
    ] {
        assert!(certs.join(f).is_file(), "{f}");
    }

    let gw = TestGateway::spawn(|_| {}).await;
    let out = run(
        &[
            "token",
            "--secret",
            &gw.secret,
            "--sub",
            "alice",
            "--channels",
            "metrics:*",
            "--ttl",
            "60",
        ],
        &[],
        out_dir.path(),
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let (_stream, ready) = gw.open("/api/sse?channels=metrics:ws1", &token, None).await;
    assert_eq!(ready.channels, ["metrics:ws1"]);
}

//! Configuration: errors name the key and its source (file, variable, flag), the documented
//! example loads, precedence flag > env > file > default, every error is reported at once, and
//! the binary exits non-zero on a bad config.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::*;
use sse_gateway::config::{Config, ConfigErrors, JwtKey, Overrides, RawConfig};
use tempfile::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_sse-gateway");

/// A secret long enough for production (32+ bytes).
const SECRET: &str = "s3cret-s3cret-s3cret-s3cret-s3cret";

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
secret = "{SECRET}"
{extra}
"#
    )
}

fn load_text(dir: &Path, text: &str) -> Result<Config, ConfigErrors> {
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    Config::load(Some(&path), Vec::new(), &Overrides::default())
}

fn load_env(path: &Path, vars: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
    Config::load(Some(path), env(vars), &Overrides::default())
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
    assert_eq!(config.grpc.tls_cert, dir.path().join("certs/server.pem"));
    assert_eq!(config.jwt.key, JwtKey::Secret(SECRET.into()));
    assert!(
        !format!("{config:?}").contains(SECRET),
        "Debug never prints the secret"
    );
}

#[test]
fn the_documented_example_loads() {
    let (dir, _) = setup();
    // The README's reference verbatim, except for a secret (required outside the dev setup)
    // and ephemeral addresses.
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
secret = "s3cret-s3cret-s3cret-s3cret-s3cret"          # HS256: the secret itself, or
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
snapshot = false

[[publishers]]
name = "l5-etl-service"
channels = ["logs:**"]
control = false
"#;
    let config = load_text(dir.path(), text).unwrap();
    assert_eq!(config.sse.queue_events, 1024);
    assert!(config.http.tls.is_none(), "an empty path is unset");
    assert!(config.publishers.contains_key("l5-etl-service"));
    assert!(config.channel_types.parse_name("logs:ws1:wf1").is_ok());
    assert!(
        config.channel_types.parse_name("metrics:ws1").is_err(),
        "[channels.*] replaces the default set"
    );
    // Without [channels.*], the default set.
    let config = load_text(dir.path(), &base_toml("")).unwrap();
    assert!(config.channel_types.parse_name("metrics:ws1").is_ok());
}

#[test]
fn unknown_keys_are_named() {
    let (dir, _) = setup();
    for (extra, needle) in [
        ("[sse]\nheartbeat = 3\n", "sse.heartbeat"),
        ("[nope]\nx = 1\n", "nope"),
        (
            "[limits]\nmax_events_bytes = 1\n",
            "limits.max_events_bytes",
        ),
        (
            "[[publishers]]\nname = \"x\"\nchanels = [\"logs:**\"]\n",
            "publishers[0].chanels",
        ),
        (
            "[channels.logs]\ntemplate = \"logs:{a}\"\nsnapshots = true\n",
            "channels.logs.snapshots",
        ),
    ] {
        let err = load_text(dir.path(), &base_toml(extra)).unwrap_err();
        assert!(err.mentions(needle), "{extra:?}: {err}");
        assert!(err.mentions("gateway.toml"), "the file is named: {err}");
    }
    let err = load_text(dir.path(), &base_toml("[jwt]\nleeway_secs = 1\n")).unwrap_err();
    assert!(err.mentions("jwt"), "a duplicate table: {err}");
}

#[test]
fn bad_values_are_named() {
    let (dir, _) = setup();
    for (extra, needle) in [
        ("[http]\naddr = \"nowhere\"\n", "http.addr"),
        ("[sse]\nqueue_events = \"many\"\n", "sse.queue_events"),
        ("[sse]\nqueue_events = 0\n", "sse.queue_events"),
        ("[sse]\nheartbeat_secs = 0\n", "sse.heartbeat_secs"),
        ("[sse]\nretry_ms = -1\n", "sse.retry_ms"),
        (
            "[limits]\nmax_connections_per_user = 0\n",
            "limits.max_connections_per_user",
        ),
        ("[history]\nmax_events = 0\n", "history.max_events"),
        ("[broker]\nkind = \"etcd\"\n", "broker.kind"),
        (
            "[broker]\nkind = \"redis\"\nurl = \"http://x\"\n",
            "broker.url",
        ),
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
            "[[publishers]]\nname = \"x\"\nchannels = [\"lgos:**\"]\n",
            "publishers[0].channels",
        ),
        ("[[publishers]]\nchannels = [\"logs:**\"]\n", "name"),
        (
            "[channels.logs]\ntemplate = \"other:{x}\"\n",
            "channels.logs",
        ),
    ] {
        let err = load_text(dir.path(), &base_toml(extra)).unwrap_err();
        assert!(err.mentions(needle), "{extra:?}: {err}");
    }
    // Sections that the base file already has, replaced whole.
    let secret_line = format!("secret = \"{SECRET}\"");
    let cases = [
        (
            base_toml("").replace("certs/server.pem", "certs/missing.pem"),
            "grpc.tls_cert",
        ),
        (base_toml("").replace(&secret_line, ""), "jwt.secret"),
        (
            base_toml("").replace(&secret_line, "secret = \"short\""),
            "at least 32 bytes",
        ),
        (
            base_toml("").replace(&secret_line, "algorithm = \"HS512\""),
            "jwt.algorithm",
        ),
        (
            base_toml("").replace(&secret_line, "algorithm = \"ES256\""),
            "jwt.public_key_file",
        ),
        (
            base_toml("").replace(
                &secret_line,
                "algorithm = \"RS256\"\npublic_key_file = \"nope.pem\"",
            ),
            "jwt.public_key_file",
        ),
        (
            base_toml("").replace(&secret_line, "secret_file = \"nope\""),
            "jwt.secret_file",
        ),
        (
            base_toml("").replace(
                &secret_line,
                "secret_file = \"certs/ca.pem\"\nsecret = \"x\"",
            ),
            "not both",
        ),
        ("this is not toml".to_owned(), "gateway.toml"),
    ];
    for (text, needle) in cases {
        let err = load_text(dir.path(), &text).unwrap_err();
        assert!(err.mentions(needle), "{needle}: {err}");
    }
    // A short secret in a file is refused too; a long one is fine.
    std::fs::write(dir.path().join("secret"), "short\n").unwrap();
    let text = base_toml("").replace(&secret_line, "secret_file = \"secret\"");
    let err = load_text(dir.path(), &text).unwrap_err();
    assert!(
        err.mentions("jwt.secret_file") && err.mentions("32 bytes"),
        "{err}"
    );
    std::fs::write(dir.path().join("secret"), format!("{SECRET}\n")).unwrap();
    let config = load_text(dir.path(), &text).unwrap();
    assert_eq!(
        config.jwt.key,
        JwtKey::SecretFile(dir.path().join("secret"))
    );
}

#[test]
fn every_error_is_reported_at_once() {
    let (dir, _) = setup();
    let text = base_toml(
        "[http]\naddr = \"nowhere\"\n[sse]\nqueue_events = \"many\"\nheartbeat = 1\n\
         [history]\nmax_events = 0\n[[publishers]]\nname = \"x\"\nchannels = [\"lgos:*\"]\n",
    )
    .replace("certs/ca.pem", "certs/absent.pem");
    let err = load_text(dir.path(), &text).unwrap_err();
    for needle in [
        "http.addr",
        "sse.queue_events",
        "sse.heartbeat",
        "history.max_events",
        "publishers[0].channels",
        "grpc.client_ca",
    ] {
        assert!(err.mentions(needle), "{needle}: {err}");
    }
    assert_eq!(err.0.len(), 6, "{err}");
}

#[test]
fn patterns_of_any_type_are_accepted_for_publishers() {
    let (dir, _) = setup();
    let text = base_toml(
        "[[publishers]]\nname = \"ops\"\nchannels = [\"**\", \"*:ws1\", \"metrics:*\"]\n",
    );
    let config = load_text(dir.path(), &text).unwrap();
    assert_eq!(config.publishers["ops"].channels.len(), 3);
}

#[test]
fn a_missing_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.toml");
    let err = Config::load(Some(&path), Vec::new(), &Overrides::default()).unwrap_err();
    assert!(err.mentions("absent.toml"), "{err}");
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
    assert_eq!(file_only.http.addr.port(), 1);
    assert_eq!(file_only.sse.queue_events, 7);
    assert_eq!(file_only.sse.retry_ms, 3000, "default");

    let vars = env(&[
        ("SSE_GATEWAY__HTTP__ADDR", "127.0.0.1:2"),
        ("SSE_GATEWAY__SSE__QUEUE_EVENTS", "9"),
        ("SSE_GATEWAY__HTTP__ALLOW_QUERY_TOKEN", "true"),
        ("UNRELATED", "x"),
    ]);
    let with_env = Config::load(Some(&path), vars.clone(), &Overrides::default()).unwrap();
    assert_eq!(with_env.http.addr.port(), 2);
    assert_eq!(with_env.sse.queue_events, 9);
    assert!(with_env.http.allow_query_token);

    let flags = Overrides {
        http_addr: Some("127.0.0.1:3".into()),
        grpc_addr: None,
    };
    let with_flag = Config::load(Some(&path), vars, &flags).unwrap();
    assert_eq!(with_flag.http.addr.port(), 3);
    assert_eq!(with_flag.grpc.addr.port(), 1, "file");

    for (name, value, needle) in [
        (
            "SSE_GATEWAY__HTTP__NOPE",
            "1",
            "http.nope (SSE_GATEWAY__HTTP__NOPE)",
        ),
        (
            "SSE_GATEWAY__SSE__QUEUE_EVENTS",
            "lots",
            "sse.queue_events (SSE_GATEWAY__SSE__QUEUE_EVENTS)",
        ),
        (
            "SSE_GATEWAY__HTTP__ADDR",
            "nowhere",
            "http.addr (SSE_GATEWAY__HTTP__ADDR)",
        ),
        (
            "SSE_GATEWAY__BROKER__KIND",
            "etcd",
            "broker.kind (SSE_GATEWAY__BROKER__KIND)",
        ),
        ("SSE_GATEWAY__NOPE", "1", "nope (SSE_GATEWAY__NOPE)"),
        ("SSE_GATEWAY__HTTP__", "1", "SSE_GATEWAY__HTTP__: expected"),
    ] {
        let err = load_env(&path, &[(name, value)]).unwrap_err();
        assert!(err.mentions(needle), "{name}={value}: {err}");
    }
    let flags = Overrides {
        http_addr: Some("nowhere".into()),
        grpc_addr: None,
    };
    let err = Config::load(Some(&path), Vec::new(), &flags).unwrap_err();
    assert!(err.mentions("http.addr (--http-addr)"), "{err}");
}

#[test]
fn the_environment_alone_configures_everything() {
    let (dir, _) = setup();
    let p = |f: &str| dir.path().join("certs").join(f).display().to_string();
    let (cert, key, ca) = (p("server.pem"), p("server-key.pem"), p("ca.pem"));
    let vars = [
        ("SSE_GATEWAY__GRPC__TLS_CERT", cert.as_str()),
        ("SSE_GATEWAY__GRPC__TLS_KEY", key.as_str()),
        ("SSE_GATEWAY__GRPC__CLIENT_CA", ca.as_str()),
        // Digits only: still a string, not a number.
        (
            "SSE_GATEWAY__JWT__SECRET",
            "12345678901234567890123456789012345",
        ),
        (
            "SSE_GATEWAY__HTTP__CORS_ORIGINS",
            r#"["https://a.example"]"#,
        ),
        (
            "SSE_GATEWAY__PUBLISHERS",
            r#"[{"name": "etl", "channels": ["audit:**"], "control": true}]"#,
        ),
        (
            "SSE_GATEWAY__CHANNELS",
            r#"{"audit": {"template": "audit:{tenant}", "subscribe": ["audit:{sub}"], "snapshot": false}}"#,
        ),
    ];
    let config = Config::load(None, env(&vars), &Overrides::default()).unwrap();
    assert_eq!(
        config.jwt.key,
        JwtKey::Secret("12345678901234567890123456789012345".into())
    );
    assert_eq!(config.http.cors_origins, ["https://a.example"]);
    assert!(config.publishers["etl"].control);
    assert!(config.channel_types.parse_name("audit:t1").is_ok());
    assert!(
        config.channel_types.parse_name("logs:ws1").is_err(),
        "SSE_GATEWAY__CHANNELS replaces the default set"
    );
    assert_eq!(config.grpc.tls_cert, PathBuf::from(&cert));
}

#[test]
fn json_variables_replace_the_file_and_bad_json_is_named() {
    let (_dir, path) = setup();
    std::fs::write(
        &path,
        base_toml(
            "[channels.logs]\ntemplate = \"logs:{a}\"\n[channels.extra]\ntemplate = \"extra:{a}\"\n\
             [[publishers]]\nname = \"from-file\"\nchannels = [\"logs:*\"]\n",
        ),
    )
    .unwrap();
    let config = load_env(
        &path,
        &[
            (
                "SSE_GATEWAY__PUBLISHERS",
                r#"[{"name": "from-env", "channels": ["metrics:*"]}]"#,
            ),
            (
                "SSE_GATEWAY__CHANNELS",
                r#"{"metrics": {"template": "metrics:{ws}"}}"#,
            ),
        ],
    )
    .unwrap();
    assert_eq!(
        config.publishers.keys().collect::<Vec<_>>(),
        ["from-env"],
        "the variable replaces [[publishers]]"
    );
    assert!(config.channel_types.parse_name("extra:x").is_err());
    assert!(config.channel_types.parse_name("metrics:x").is_ok());

    for (name, value, needle) in [
        (
            "SSE_GATEWAY__PUBLISHERS",
            r#"[{"name": "x", "channels": ["logs:**"]"#,
            "publishers (SSE_GATEWAY__PUBLISHERS): not valid JSON",
        ),
        (
            "SSE_GATEWAY__PUBLISHERS",
            r#"[{"name": "x", "chanels": ["logs:**"]}]"#,
            "publishers[0].chanels (SSE_GATEWAY__PUBLISHERS)",
        ),
        (
            "SSE_GATEWAY__CHANNELS",
            "logs",
            "channels (SSE_GATEWAY__CHANNELS): not valid JSON",
        ),
        (
            "SSE_GATEWAY__PUBLISHERS",
            r#"[{"name": "x", "channels": ["lgos:**"]}]"#,
            "publishers[0].channels (SSE_GATEWAY__PUBLISHERS)",
        ),
    ] {
        let err = load_env(&path, &[(name, value)]).unwrap_err();
        assert!(err.mentions(needle), "{name}={value}: {err}");
    }
}

#[test]
fn relative_paths_follow_their_source() {
    let (dir, path) = setup();
    // From the file: against the file's folder. From the environment: as given (the working
    // directory; cargo runs tests in the package folder, where Cargo.toml is a file).
    let config = load_env(&path, &[("SSE_GATEWAY__GRPC__TLS_KEY", "Cargo.toml")]).unwrap();
    assert_eq!(config.grpc.tls_cert, dir.path().join("certs/server.pem"));
    assert_eq!(config.grpc.tls_key, PathBuf::from("Cargo.toml"));
    // An empty value unsets a file's key.
    let err = load_env(&path, &[("SSE_GATEWAY__GRPC__TLS_KEY", "")]).unwrap_err();
    assert!(
        err.mentions("grpc.tls_key (SSE_GATEWAY__GRPC__TLS_KEY) is required"),
        "{err}"
    );
}

#[test]
fn the_effective_config_prints_redacted() {
    let (dir, _) = setup();
    let path = dir.path().join("gateway.toml");
    let (raw, _) = sse_gateway::config::load_effective(
        Some(&path),
        env(&[("SSE_GATEWAY__SSE__RETRY_MS", "1234")]),
        &Overrides::default(),
    )
    .unwrap();
    let text = raw.to_toml().unwrap();
    assert!(!text.contains(SECRET), "{text}");
    assert!(text.contains("secret = \"<redacted>\""), "{text}");
    let back: RawConfig = toml::from_str(&text).unwrap();
    assert_eq!(back.sse.retry_ms, 1234);
    assert_eq!(
        back.channels.len(),
        5,
        "the default channel types are shown"
    );
    assert!(!format!("{raw:?}").contains(SECRET));
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
            "sse.heartbeat",
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

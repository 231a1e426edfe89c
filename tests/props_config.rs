//! Property tests of the configuration loader: whatever the file or the environment holds, the
//! loader answers with a configuration or with errors that name the offending key and where it
//! came from — never a panic, never a silently ignored key.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use proptest::prelude::*;
use sse_gateway::config::{Config, Overrides};

/// A long enough HS256 secret.
const SECRET: &str = "s3cret-s3cret-s3cret-s3cret-s3cret";

/// Sections of the file and a few of their keys, with a value of the right type.
const KNOWN: &[(&str, &str, &str)] = &[
    ("http", "addr", "\"127.0.0.1:0\""),
    ("http", "allow_query_token", "true"),
    ("sse", "heartbeat_secs", "5"),
    ("sse", "queue_events", "64"),
    ("limits", "max_event_bytes", "1024"),
    ("limits", "max_connections_per_user", "4"),
    ("history", "max_events", "10"),
    ("broker", "kind", "\"memory\""),
];

/// A folder with a dev PKI, shared by every case (the loader only reads it).
fn pki() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        sse_gateway::pki::ensure_dev_pki(&dir.join("certs"), &["l5-etl-service"]).unwrap();
        dir
    })
}

fn base(extra: &str) -> String {
    let certs = pki().join("certs");
    format!(
        "[grpc]\naddr = \"127.0.0.1:0\"\ntls_cert = {:?}\ntls_key = {:?}\nclient_ca = {:?}\n\n[jwt]\nsecret = \"{SECRET}\"\n{extra}",
        certs.join("server.pem"),
        certs.join("server-key.pem"),
        certs.join("ca.pem"),
    )
}

fn load(text: &str, env: Vec<(String, String)>) -> Result<Config, String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    Config::load(Some(&path), env, &Overrides::default()).map_err(|e| e.to_string())
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Key names that no section has.
fn unknown_key() -> impl Strategy<Value = String> {
    "[a-z][a-z_]{2,12}".prop_filter("not a real key", |k| {
        ![
            "addr",
            "tls_cert",
            "tls_key",
            "client_ca",
            "cors_origins",
            "allow_query_token",
            "heartbeat_secs",
            "retry_ms",
            "queue_events",
            "queue_bytes",
            "max_event_bytes",
            "max_connections_per_user",
            "max_connections",
            "max_channels_per_connection",
            "publisher_events_per_sec",
            "max_events",
            "max_age_secs",
            "dedupe_window_secs",
            "kind",
            "url",
            "key_prefix",
            "timeout_ms",
        ]
        .contains(&k.as_str())
    })
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn the_base_configuration_loads(_x in 0u8..1) {
        prop_assert!(load(&base(""), Vec::new()).is_ok());
    }

    /// An unknown key in a known section of the file is an error naming it.
    #[test]
    fn an_unknown_file_key_is_named(section in 0usize..KNOWN.len(), key in unknown_key()) {
        let (sec, _, _) = KNOWN[section];
        let err = load(&base(&format!("[{sec}]\n{key} = 1\n")), Vec::new()).unwrap_err();
        prop_assert!(err.contains(&key), "{err}");
    }

    /// An unknown key in the environment is an error naming the variable.
    #[test]
    fn an_unknown_env_key_is_named(section in 0usize..KNOWN.len(), key in unknown_key()) {
        let (sec, _, _) = KNOWN[section];
        let var = format!("SSE_GATEWAY__{}__{}", sec.to_uppercase(), key.to_uppercase());
        let err = load(&base(""), vec![(var.clone(), "1".into())]).unwrap_err();
        prop_assert!(err.contains(&var) || err.contains(&format!("{sec}.{key}")), "{err}");
    }

    /// A value of the wrong type, in the file or the environment, is an error naming the key.
    #[test]
    fn a_bad_value_is_named(field in 0usize..KNOWN.len(), junk in "[a-z][a-z0-9 .-]{0,10}", in_env in any::<bool>()) {
        let (sec, key, _) = KNOWN[field];
        // Strings accept anything printable: only typed keys can be wrong this way.
        prop_assume!(!matches!(key, "addr" | "kind"));
        let result = if in_env {
            let var = format!("SSE_GATEWAY__{}__{}", sec.to_uppercase(), key.to_uppercase());
            load(&base(""), vec![(var, junk.clone())])
        } else {
            load(&base(&format!("[{sec}]\n{key} = \"{junk}\"\n")), Vec::new())
        };
        let err = result.unwrap_err();
        prop_assert!(err.contains(&format!("{sec}.{key}")) || err.contains(&key.to_uppercase()), "{err}");
    }

    /// Good values of the right type load, from the file or the environment.
    #[test]
    fn good_values_load(field in 0usize..KNOWN.len(), in_env in any::<bool>()) {
        let (sec, key, value) = KNOWN[field];
        let result = if in_env {
            let var = format!("SSE_GATEWAY__{}__{}", sec.to_uppercase(), key.to_uppercase());
            load(&base(""), vec![(var, value.trim_matches('"').to_owned())])
        } else {
            load(&base(&format!("[{sec}]\n{key} = {value}\n")), Vec::new())
        };
        prop_assert!(result.is_ok(), "{sec}.{key} = {value}: {result:?}", result = result.err());
    }

    /// Arbitrary text as a config file: a configuration or an error, never a panic.
    #[test]
    fn any_file_text_is_an_answer(text in "\\PC{0,200}") {
        let _ = load(&text, Vec::new());
    }

    /// Arbitrary environment values for every documented key: never a panic, and an error
    /// always names a key or a variable.
    #[test]
    fn any_env_value_is_an_answer(field in 0usize..KNOWN.len(), value in "\\PC{0,40}") {
        let (sec, key, _) = KNOWN[field];
        let var = format!("SSE_GATEWAY__{}__{}", sec.to_uppercase(), key.to_uppercase());
        if let Err(err) = load(&base(""), vec![(var.clone(), value)]) {
            prop_assert!(err.contains(key) || err.contains(&var), "{err}");
        }
    }
}

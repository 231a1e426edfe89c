//! Where configuration comes from: defaults ⊕ TOML file ⊕ `SSE_GATEWAY__<SECTION>__<KEY>`
//! environment ⊕ CLI flags, layered with `figment` (later wins) and read into a [`RawConfig`].
//!
//! Every key remembers its source ([`Origins`]), so an error names the file, the variable or
//! the flag that set it; relative paths from the file resolve against the file's folder.
//! Errors are collected, not returned at the first: a key that fails is reported and dropped,
//! and reading goes on.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use figment::providers::Serialized;
use figment::value::{Dict, Value};
use figment::Figment;

use super::schema::RawConfig;
use super::{ConfigError, Origin, Overrides, ENV_PREFIX};

/// Environment variables whose value is JSON (a list or table) rather than a scalar.
const JSON_KEYS: [&str; 3] = ["publishers", "channels", "http.cors_origins"];

/// Keys whose value from a higher layer replaces (not merges with) the lower one's.
const REPLACED_WHOLE: [&str; 2] = ["publishers", "channels"];

/// Which source set which key.
#[derive(Clone, Debug, Default)]
pub struct Origins {
    file: Option<PathBuf>,
    file_keys: BTreeSet<Vec<String>>,
    env: BTreeMap<Vec<String>, String>,
    flags: BTreeMap<Vec<String>, &'static str>,
}

/// Whether one key path is a prefix of the other (the same key, or a table and a key in it).
fn related(a: &[String], b: &[String]) -> bool {
    let n = a.len().min(b.len());
    a[..n] == b[..n]
}

impl Origins {
    /// The source of the value at `path` (flag > env > file > default).
    pub fn of(&self, path: &[String]) -> Origin {
        if let Some((_, flag)) = self.flags.iter().find(|(k, _)| related(k, path)) {
            return Origin::Flag(flag);
        }
        if let Some((_, var)) = self.env.iter().find(|(k, _)| related(k, path)) {
            return Origin::Env(var.clone());
        }
        match &self.file {
            Some(file) if self.file_keys.iter().any(|k| related(k, path)) => {
                Origin::File(file.clone())
            }
            _ => Origin::Default,
        }
    }

    /// The source of a dotted key such as `grpc.tls_cert`.
    pub fn of_key(&self, key: &str) -> Origin {
        self.of(&split_key(key))
    }

    /// Whether any `SSE_GATEWAY__…` variable was applied.
    pub fn any_env(&self) -> bool {
        !self.env.is_empty()
    }
}

/// `a.b.c` → `["a", "b", "c"]`.
pub fn split_key(key: &str) -> Vec<String> {
    key.split('.').map(str::to_owned).collect()
}

/// The sources read and layered: the configuration (when it could be read at all, with keys
/// that failed dropped), where each key came from, and every error found.
#[derive(Debug)]
pub struct Layered {
    /// The layered configuration; `None` when nothing could be made of it.
    pub raw: Option<RawConfig>,
    /// Which source set which key.
    pub origins: Origins,
    /// Everything wrong with the sources.
    pub errors: Vec<ConfigError>,
}

/// Reads and layers the sources. The environment is passed in (never read here), so tests never
/// touch the process environment.
pub fn layer(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    overrides: &Overrides,
) -> Layered {
    let mut errors = Vec::new();
    let mut origins = Origins {
        file: file.map(Path::to_path_buf),
        ..Origins::default()
    };
    let mut file_dict = match file {
        Some(path) => read_file(path, &mut origins, &mut errors),
        None => Dict::new(),
    };
    let env_dict = read_env(env, &mut origins, &mut errors);
    for key in REPLACED_WHOLE {
        if env_dict.contains_key(key) {
            file_dict.remove(key);
        }
    }
    let flags_dict = read_flags(overrides, &mut origins);

    let mut defaults = match Value::serialize(RawConfig::default()) {
        Ok(Value::Dict(_, dict)) => dict,
        _ => Dict::new(),
    };
    // Absent, they come from `RawConfig::default()`; present in the defaults layer, a file's
    // `[channels.x]` would be merged into the default set instead of replacing it.
    for key in REPLACED_WHOLE {
        defaults.remove(key);
    }
    let figment = Figment::from(Serialized::defaults(defaults))
        .merge(Serialized::defaults(file_dict))
        .merge(Serialized::defaults(env_dict))
        .merge(Serialized::defaults(flags_dict));
    let merged: Dict = match figment.extract() {
        Ok(dict) => dict,
        Err(e) => {
            errors.push(ConfigError::Sources(e.to_string()));
            return Layered {
                raw: None,
                origins,
                errors,
            };
        }
    };
    let file_failed = errors.iter().any(|e| matches!(e, ConfigError::File { .. }));
    let mut raw = extract(merged, &origins, &mut errors);
    if file_failed {
        // Validating without the file would only report what the file was meant to set.
        raw = None;
    }
    if let (Some(raw), Some(dir)) = (&mut raw, file.and_then(Path::parent)) {
        for (key, value) in raw.paths_mut() {
            if let Some(path) = value {
                if path.is_relative() && matches!(origins.of_key(key), Origin::File(_)) {
                    *path = dir.join(&*path);
                }
            }
        }
    }
    Layered {
        raw,
        origins,
        errors,
    }
}

fn read_file(path: &Path, origins: &mut Origins, errors: &mut Vec<ConfigError>) -> Dict {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            errors.push(ConfigError::File {
                path: path.to_owned(),
                message: format!("cannot read it: {e}"),
            });
            return Dict::new();
        }
    };
    let table: toml::Table = match toml::from_str(&text) {
        Ok(table) => table,
        Err(e) => {
            // The position, not the parser's excerpt of the line; and on a line that may hold
            // a secret, not the parser's message either (it can quote the value).
            let start = e.span().map_or(0, |span| span.start.min(text.len()));
            let before = &text[..start];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            let line_text = text.lines().nth(line - 1).unwrap_or_default();
            let message = if line_text.to_ascii_lowercase().contains("secret") {
                "the value is not shown: this line may hold a secret".to_owned()
            } else {
                format!("{} (`{}`)", e.message().trim_end(), line_text.trim())
            };
            errors.push(ConfigError::File {
                path: path.to_owned(),
                message: format!("not valid TOML: line {line}, column {column}: {message}"),
            });
            return Dict::new();
        }
    };
    record_leaves(&mut Vec::new(), &toml::Value::Table(table.clone()), origins);
    match Value::serialize(&table) {
        Ok(Value::Dict(_, dict)) => dict,
        Ok(_) => Dict::new(),
        Err(e) => {
            errors.push(ConfigError::File {
                path: path.to_owned(),
                message: e.to_string(),
            });
            Dict::new()
        }
    }
}

/// Records the key path of every value the file sets (a list counts as one value).
fn record_leaves(prefix: &mut Vec<String>, value: &toml::Value, origins: &mut Origins) {
    match value {
        toml::Value::Table(table) => {
            for (k, v) in table {
                prefix.push(k.clone());
                record_leaves(prefix, v, origins);
                prefix.pop();
            }
        }
        _ => {
            origins.file_keys.insert(prefix.clone());
        }
    }
}

fn read_env(
    env: impl IntoIterator<Item = (String, String)>,
    origins: &mut Origins,
    errors: &mut Vec<ConfigError>,
) -> Dict {
    let mut dict = Dict::new();
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(name, _)| name.starts_with(ENV_PREFIX))
        .collect();
    vars.sort();
    for (name, text) in vars {
        let path: Vec<String> = name[ENV_PREFIX.len()..]
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect();
        if path.iter().any(String::is_empty) {
            errors.push(ConfigError::Env {
                var: name,
                message: "expected SSE_GATEWAY__<SECTION>__<KEY>".into(),
            });
            continue;
        }
        let key = path.join(".");
        let value = if JSON_KEYS.contains(&key.as_str()) {
            match serde_json::from_str::<serde_json::Value>(&text)
                .map_err(|e| e.to_string())
                .and_then(|json| Value::serialize(json).map_err(|e| e.to_string()))
            {
                Ok(value) => value,
                Err(e) => {
                    errors.push(ConfigError::Key {
                        key: display_key(&path),
                        origin: Origin::Env(name),
                        message: format!("not valid JSON: {e}"),
                    });
                    continue;
                }
            }
        } else {
            // Always a string: the target type decides how to read it, so a secret of digits
            // stays a string and `queue_events=9` still becomes a number.
            Value::from(text)
        };
        insert(&mut dict, &path, value);
        origins.env.insert(path, name);
    }
    dict
}

fn read_flags(overrides: &Overrides, origins: &mut Origins) -> Dict {
    let mut dict = Dict::new();
    for (key, flag, value) in [
        ("http.addr", "--http-addr", &overrides.http_addr),
        ("grpc.addr", "--grpc-addr", &overrides.grpc_addr),
    ] {
        if let Some(value) = value {
            let path = split_key(key);
            insert(&mut dict, &path, Value::from(value.clone()));
            origins.flags.insert(path, flag);
        }
    }
    dict
}

/// Sets `path` in `dict`, creating tables on the way (a scalar in the way is replaced).
fn insert(dict: &mut Dict, path: &[String], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut current = dict;
    for key in parents {
        let entry = current
            .entry(key.clone())
            .or_insert_with(|| Value::from(Dict::new()));
        if !matches!(entry, Value::Dict(..)) {
            *entry = Value::from(Dict::new());
        }
        let Value::Dict(_, next) = entry else {
            return;
        };
        current = next;
    }
    current.insert(last.clone(), value);
}

/// Removes the value at `path` (through tables and lists); whether there was one.
fn remove(dict: &mut Dict, path: &[String]) -> bool {
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    if rest.is_empty() {
        return dict.remove(first).is_some();
    }
    match dict.get_mut(first) {
        Some(value) => remove_in(value, rest),
        None => false,
    }
}

fn remove_in(value: &mut Value, path: &[String]) -> bool {
    match value {
        Value::Dict(_, dict) => remove(dict, path),
        Value::Array(_, items) => {
            let Some((first, rest)) = path.split_first() else {
                return false;
            };
            match (first.parse::<usize>().ok(), rest.is_empty()) {
                (Some(i), false) => items.get_mut(i).is_some_and(|v| remove_in(v, rest)),
                _ => false,
            }
        }
        _ => false,
    }
}

/// `["publishers", "0", "name"]` → `publishers[0].name`.
pub fn display_key(path: &[String]) -> String {
    let mut out = String::new();
    for part in path {
        if part.parse::<usize>().is_ok() && !out.is_empty() {
            out.push_str(&format!("[{part}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(part);
        }
    }
    out
}

/// Reads the merged values into a [`RawConfig`]. A key that fails is reported, removed, and
/// reading starts again, so one run reports every bad key (a value missing from a table entry
/// drops that whole top-level key instead).
fn extract(
    mut merged: Dict,
    origins: &Origins,
    errors: &mut Vec<ConfigError>,
) -> Option<RawConfig> {
    // Each round removes at least one key, so this ends; the bound is a backstop.
    for _ in 0..256 {
        let error = match Figment::from(Serialized::defaults(&merged)).extract_lossy::<RawConfig>()
        {
            Ok(raw) => return Some(raw),
            Err(e) => e,
        };
        let mut progressed = false;
        for e in error {
            // The path ends with the offending key (an unknown one included).
            let path = e.path.clone();
            let message = match &e.kind {
                figment::error::Kind::UnknownField(_, expected) => {
                    format!("unknown key (expected one of: {})", expected.join(", "))
                }
                kind if is_secret(&path) => match kind {
                    // Never echo a secret's value.
                    figment::error::Kind::InvalidType(_, expected)
                    | figment::error::Kind::InvalidValue(_, expected) => {
                        format!("invalid value, expected {expected}")
                    }
                    _ => "invalid value".to_owned(),
                },
                kind => {
                    let mut message = kind.to_string();
                    // Serde's own messages do not quote the value; do it.
                    if let (figment::error::Kind::Message(_), Some(Value::String(_, s))) =
                        (kind, find(&merged, &path))
                    {
                        message.push_str(&format!(": {s:?}"));
                    }
                    message
                }
            };
            let missing = matches!(e.kind, figment::error::Kind::MissingField(_));
            errors.push(ConfigError::Key {
                key: display_key(&path),
                origin: origins.of(&path),
                message,
            });
            progressed |= if missing {
                path.first().is_some_and(|top| merged.remove(top).is_some())
            } else {
                remove(&mut merged, &path)
                    || path.first().is_some_and(|top| merged.remove(top).is_some())
            };
        }
        if !progressed {
            return None;
        }
    }
    None
}

/// Keys whose value must never appear in a message.
fn is_secret(path: &[String]) -> bool {
    path == ["jwt", "secret"]
}

fn find<'a>(dict: &'a Dict, path: &[String]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    let mut value = dict.get(first)?;
    for part in rest {
        value = match value {
            Value::Dict(_, d) => d.get(part)?,
            Value::Array(_, items) => items.get(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_bad_secret_is_never_echoed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gw.toml");
        for text in [
            "[jwt]\nsecret = 98765432109876543210\n",
            "[jwt]\nsecret = \"98765432109876543210\n",
        ] {
            std::fs::write(&file, text).unwrap();
            let layered = layer(Some(&file), Vec::new(), &Overrides::default());
            let shown = format!("{:?} {}", layered.errors, layered.errors[0]);
            assert!(!shown.contains("98765"), "{shown}");
        }
    }

    #[test]
    fn keys_display_with_list_indices() {
        let path = split_key("publishers.0.channels");
        assert_eq!(display_key(&path), "publishers[0].channels");
        assert_eq!(display_key(&split_key("http.addr")), "http.addr");
    }

    #[test]
    fn env_values_are_read_by_their_target_type() {
        let layered = layer(
            None,
            vars(&[
                ("SSE_GATEWAY__JWT__SECRET", "12345"),
                ("SSE_GATEWAY__JWT__ISSUER", "true"),
                ("SSE_GATEWAY__SSE__QUEUE_EVENTS", "9"),
                ("SSE_GATEWAY__HTTP__ALLOW_QUERY_TOKEN", "true"),
                ("SSE_GATEWAY__HTTP__TLS_CERT", ""),
            ]),
            &Overrides::default(),
        );
        assert!(layered.errors.is_empty(), "{:?}", layered.errors);
        let raw = layered.raw.unwrap();
        assert_eq!(raw.jwt.secret.unwrap().expose(), "12345");
        assert_eq!(raw.jwt.issuer, "true");
        assert_eq!(raw.sse.queue_events, 9);
        assert!(raw.http.allow_query_token);
        assert_eq!(raw.http.tls_cert, None, "an empty value is unset");
    }

    #[test]
    fn a_flag_wins_over_the_environment() {
        let layered = layer(
            None,
            vars(&[("SSE_GATEWAY__HTTP__ADDR", "127.0.0.1:2")]),
            &Overrides {
                http_addr: Some("127.0.0.1:3".into()),
                grpc_addr: None,
            },
        );
        assert_eq!(layered.raw.unwrap().http.addr.port(), 3);
        assert_eq!(
            layered.origins.of_key("http.addr"),
            Origin::Flag("--http-addr")
        );
        assert_eq!(layered.origins.of_key("grpc.addr"), Origin::Default);
    }

    #[test]
    fn every_bad_key_is_reported_and_the_rest_is_read() {
        let layered = layer(
            None,
            vars(&[
                ("SSE_GATEWAY__HTTP__ADDR", "nowhere"),
                ("SSE_GATEWAY__SSE__QUEUE_EVENTS", "many"),
                ("SSE_GATEWAY__SSE__NOPE", "1"),
                ("SSE_GATEWAY__SSE__RETRY_MS", "5"),
            ]),
            &Overrides::default(),
        );
        let keys: Vec<_> = layered.errors.iter().filter_map(|e| e.key()).collect();
        assert_eq!(keys.len(), 3, "{:?}", layered.errors);
        for key in ["http.addr", "sse.queue_events", "sse.nope"] {
            assert!(keys.contains(&key), "{key} in {keys:?}");
        }
        assert_eq!(layered.raw.unwrap().sse.retry_ms, 5);
    }
}

//! Authorisation by the app's own permission service (`[authz]`): the gateway POSTs the
//! channels a token alone does not settle to the app, with the subscriber's own token, and
//! caches each (user, channel) answer for its ttl.
//!
//! One request per stream open or subscription change, for every channel not answered by the
//! cache. It fails closed: a timeout, a connection error, a status other than 200, or an
//! answer that is not the expected JSON (or over [`MAX_ANSWER_BYTES`]) denies those channels
//! with [`UNAVAILABLE`], caches nothing, and is counted in `/metrics`
//! (`sse_gateway_authz_requests_total{result}`).
//!
//! Which channels are asked about (the `mode`) is decided by the caller (`egress`), which also
//! knows what the token grants; this module only asks and remembers.

mod cache;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::auth::Subscriber;
use crate::channel::ChannelName;
use crate::config::{AuthzMode, AuthzSettings};
use crate::live::Live;
use crate::metrics::Metrics;
use cache::Cache;

/// The reason given for channels the callback could not answer.
pub(crate) const UNAVAILABLE: &str = "authorizer unavailable";

/// The reason given for a channel the answer neither allows nor denies.
const NOT_ANSWERED: &str = "not allowed by the authorizer";

/// The reason given for a denial that carries none.
const DENIED: &str = "denied by the authorizer";

/// The largest answer read; a bigger one is a failure (`malformed`).
pub(crate) const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// The longest an answer is cached, whatever its `ttl_secs` says.
const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

/// A denial reason is cut to this many characters (it is sent to the browser).
const MAX_REASON_CHARS: usize = 200;

/// The callback's decision for one channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// May read.
    Allow,
    /// May not, and why (shown to the subscriber in `denied`).
    Deny(Arc<str>),
}

/// The body the gateway sends.
#[derive(Serialize)]
struct Request<'a> {
    sub: &'a str,
    roles: &'a [String],
    channels: &'a [ChannelName],
}

/// The body the app answers with.
#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    deny: Vec<Denial>,
    #[serde(default)]
    ttl_secs: Option<u64>,
}

#[derive(Deserialize)]
struct Denial {
    channel: String,
    #[serde(default)]
    reason: Option<String>,
}

/// Why a callback request gave no answer; its label is the metric's `result`.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("request failed: {0}")]
    Error(reqwest::Error),
    #[error("answered with status {0}")]
    BadStatus(reqwest::StatusCode),
    #[error("unusable answer: {0}")]
    Malformed(String),
}

impl Failure {
    fn label(&self) -> &'static str {
        match self {
            Self::Timeout(_) => "timeout",
            Self::Error(_) => "error",
            Self::BadStatus(_) => "bad_status",
            Self::Malformed(_) => "malformed",
        }
    }
}

/// A configured callback: its settings and the one pooled HTTP client they use. Built at start
/// and on each reload (before anything is swapped), so a client that cannot be built is a
/// configuration error, not a request failure.
pub(crate) struct Backend {
    settings: AuthzSettings,
    client: reqwest::Client,
    /// Bounds the requests in flight (`authz.max_concurrent`).
    permits: Arc<Semaphore>,
}

impl Backend {
    /// The backend for `settings` (`None`: no callback configured).
    ///
    /// # Errors
    /// When the HTTP client cannot be built (its TLS set-up).
    pub(crate) fn build(settings: Option<&AuthzSettings>) -> anyhow::Result<Option<Self>> {
        let Some(settings) = settings else {
            return Ok(None);
        };
        // Idempotent; reqwest takes the process's provider (ring) and panics without one.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            // The subscriber's token goes to the configured URL and nowhere else.
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(settings.timeout)
            .user_agent(concat!("sse-gateway/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| anyhow::anyhow!("authz.url: cannot build the HTTP client: {e}"))?;
        Ok(Some(Self {
            permits: Arc::new(Semaphore::new(settings.max_concurrent)),
            settings: settings.clone(),
            client,
        }))
    }

    /// When the callback is asked.
    pub(crate) fn mode(&self) -> AuthzMode {
        self.settings.mode
    }

    /// One request for `channels`, within the configured timeout (waiting for a permit
    /// included).
    async fn ask(&self, user: &Subscriber, channels: &[ChannelName]) -> Result<Answer, Failure> {
        let timeout = self.settings.timeout;
        tokio::time::timeout(timeout, async {
            // The semaphore is never closed, so this only waits.
            let _permit = self.permits.acquire().await.ok();
            let mut response = self
                .client
                .post(&self.settings.url)
                .bearer_auth(user.token.expose())
                .json(&Request {
                    sub: &user.sub,
                    roles: &user.roles,
                    channels,
                })
                .send()
                .await
                .map_err(Failure::Error)?;
            if response.status() != reqwest::StatusCode::OK {
                return Err(Failure::BadStatus(response.status()));
            }
            if response
                .content_length()
                .is_some_and(|n| n > MAX_ANSWER_BYTES as u64)
            {
                return Err(Failure::Malformed(format!("over {MAX_ANSWER_BYTES} bytes")));
            }
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(Failure::Error)? {
                if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                    return Err(Failure::Malformed(format!("over {MAX_ANSWER_BYTES} bytes")));
                }
                body.extend_from_slice(&chunk);
            }
            serde_json::from_slice::<Answer>(&body).map_err(|e| Failure::Malformed(e.to_string()))
        })
        .await
        .unwrap_or(Err(Failure::Timeout(timeout)))
    }
}

/// Asks the app's permission service and caches its answers. Cheap to clone; a reload swaps
/// its backend ([`Authorizer::install`]).
#[derive(Clone)]
pub(crate) struct Authorizer {
    backend: Live<Option<Backend>>,
    cache: Arc<Mutex<Cache>>,
    metrics: Arc<Metrics>,
}

impl Authorizer {
    /// An authorizer using `backend` (`None`: no callback; every call answers nothing).
    pub(crate) fn new(backend: Option<Backend>, metrics: Arc<Metrics>) -> Self {
        let max_entries = backend.as_ref().map_or(1, |b| b.settings.cache_max_entries);
        Self {
            backend: Live::new(backend),
            cache: Arc::new(Mutex::new(Cache::new(max_entries))),
            metrics,
        }
    }

    /// The backend requests use now; one request keeps the one it started with.
    pub(crate) fn current(&self) -> Arc<Option<Backend>> {
        self.backend.load()
    }

    /// Swaps in a reloaded backend. Unchanged settings keep the running client (its pooled
    /// connections) and the cache; changed ones take effect for the next request and clear
    /// the cache.
    pub(crate) fn install(&self, backend: Option<Backend>) {
        let running = self.backend.load();
        let settings = |b: &Option<Backend>| b.as_ref().map(|b| b.settings.clone());
        if settings(&running) == settings(&backend) {
            return;
        }
        let max_entries = backend.as_ref().map_or(1, |b| b.settings.cache_max_entries);
        tracing::info!(
            url = backend.as_ref().map_or("", |b| b.settings.url.as_str()),
            mode = ?backend.as_ref().map(|b| b.settings.mode),
            "authz settings changed; cached answers dropped"
        );
        self.backend.store(backend);
        // A request that started before the swap must not cache its answer either.
        self.lock().reset(max_entries);
    }

    /// Drops every cached answer about user `sub`, so that the next stream open or
    /// subscription change asks the app again (for when the app revokes the user through
    /// the `Control` service). An answer in flight meanwhile is not cached.
    pub(crate) fn forget_user(&self, sub: &str) {
        self.lock().forget(sub);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        // Cache methods do not panic midway through a change, so a poisoned lock still
        // holds a consistent cache.
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The decision for each of `channels` about `user`: from the cache, else from one request
    /// to `backend` for all the rest. Every channel gets a verdict; a failed request denies
    /// the ones it was for with [`UNAVAILABLE`].
    pub(crate) async fn check(
        &self,
        backend: &Backend,
        user: &Subscriber,
        channels: &[ChannelName],
    ) -> HashMap<ChannelName, Verdict> {
        let mut verdicts = HashMap::with_capacity(channels.len());
        let mut missing = Vec::new();
        let epoch = {
            let cache = self.lock();
            let now = Instant::now();
            for ch in channels {
                match cache.get(&user.sub, ch, now) {
                    Some(v) => {
                        verdicts.insert(ch.clone(), v);
                    }
                    None => missing.push(ch.clone()),
                }
            }
            cache.epoch()
        };
        self.metrics.authz_cache_hits.inc_by(verdicts.len() as u64);
        self.metrics.authz_cache_misses.inc_by(missing.len() as u64);
        if missing.is_empty() {
            return verdicts;
        }
        let started = Instant::now();
        let result = backend.ask(user, &missing).await;
        let seconds = started.elapsed().as_secs_f64();
        match result {
            Ok(answer) => {
                self.metrics.authz_request("ok", seconds);
                let ttl = answer
                    .ttl_secs
                    .map_or(backend.settings.cache_ttl, Duration::from_secs)
                    .min(MAX_TTL);
                let fresh = decide(&missing, answer);
                tracing::debug!(sub = %user.sub, asked = missing.len(), ?ttl, "authz answered");
                self.lock().insert(
                    epoch,
                    &user.sub,
                    fresh.iter().map(|(c, v)| (c.clone(), v.clone())),
                    ttl,
                    Instant::now(),
                );
                verdicts.extend(fresh);
            }
            Err(failure) => {
                self.metrics.authz_request(failure.label(), seconds);
                tracing::warn!(sub = %user.sub, error = %failure, "authz callback failed; channels denied");
                let denied = Verdict::Deny(UNAVAILABLE.into());
                verdicts.extend(missing.into_iter().map(|c| (c, denied.clone())));
            }
        }
        verdicts
    }
}

/// The verdict for each asked channel: denied when listed in `deny` (even if also allowed),
/// allowed when listed in `allow`, else denied. Channels that were not asked are ignored.
fn decide(asked: &[ChannelName], answer: Answer) -> Vec<(ChannelName, Verdict)> {
    let allowed: HashSet<&str> = answer.allow.iter().map(String::as_str).collect();
    let denied: HashMap<&str, Option<&str>> = answer
        .deny
        .iter()
        .map(|d| (d.channel.as_str(), d.reason.as_deref()))
        .collect();
    asked
        .iter()
        .map(|ch| {
            let verdict = match denied.get(ch.as_str()) {
                Some(reason) => Verdict::Deny(reason_text(*reason).into()),
                None if allowed.contains(ch.as_str()) => Verdict::Allow,
                None => Verdict::Deny(NOT_ANSWERED.into()),
            };
            (ch.clone(), verdict)
        })
        .collect()
}

fn reason_text(reason: Option<&str>) -> String {
    match reason.map(str::trim).filter(|r| !r.is_empty()) {
        Some(r) => r.chars().take(MAX_REASON_CHARS).collect(),
        None => DENIED.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn names(list: &[&str]) -> Vec<ChannelName> {
        list.iter()
            .map(|n| ChannelName::parse_syntax(n).unwrap())
            .collect()
    }

    #[test]
    fn deny_wins_unlisted_is_denied_unasked_is_ignored() {
        let answer: Answer = serde_json::from_str(
            r#"{"allow":["logs:a","logs:b","logs:x"],
                "deny":[{"channel":"logs:b","reason":"no"},{"channel":"logs:d"}]}"#,
        )
        .unwrap();
        let got = decide(&names(&["logs:a", "logs:b", "logs:c", "logs:d"]), answer);
        let got: Vec<(String, Verdict)> =
            got.into_iter().map(|(c, v)| (c.to_string(), v)).collect();
        assert_eq!(
            got,
            vec![
                ("logs:a".into(), Verdict::Allow),
                ("logs:b".into(), Verdict::Deny("no".into())),
                ("logs:c".into(), Verdict::Deny(NOT_ANSWERED.into())),
                ("logs:d".into(), Verdict::Deny(DENIED.into())),
            ]
        );
    }

    #[test]
    fn long_reasons_are_cut() {
        assert_eq!(reason_text(Some(&"é".repeat(500))).chars().count(), 200);
        assert_eq!(reason_text(Some("  ")), DENIED);
    }
}

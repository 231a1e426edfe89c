//! Subscriber authentication and authorisation (SPEC §4, §5): JWT verification, channel grants,
//! the session cookie, and the query token switch.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use base64::Engine;
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

const PATH: &str = "/api/sse?channels=metrics:ws1";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn claims(sub: &str, ttl: i64) -> Value {
    json!({"sub": sub, "exp": now_secs() + ttl, "channels": ["metrics:*"]})
}

/// A token with an arbitrary header and no valid signature.
fn unsigned(header: &Value, claims: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

fn es256(key: &rcgen::KeyPair, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = kid.map(str::to_owned);
    let key = EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

/// Asserts a 401 with a JSON error body; returns the message.
async fn assert_401(gw: &TestGateway, token: Option<&str>, what: &str) -> String {
    let resp = gw.sse_response(PATH, token, None).await;
    assert_eq!(resp.status(), 401, "{what}");
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"),
        "{what}: {:?}",
        resp.headers()
    );
    let msg = error_body(resp).await;
    if let Some(t) = token.filter(|t| t.len() > 8) {
        assert!(!msg.contains(t), "{what}: the error never echoes the token");
    }
    msg
}

async fn assert_200(gw: &TestGateway, token: &str, what: &str) {
    let resp = gw.sse_response(PATH, Some(token), None).await;
    let status = resp.status();
    if status != 200 {
        panic!(
            "{what}: expected 200, got {status}: {}",
            error_body(resp).await
        );
    }
    SseReader::new(resp).ready(WAIT).await;
}

#[tokio::test]
async fn bad_hs256_tokens_are_401() {
    let gw = TestGateway::spawn(|_| {}).await;
    assert_200(&gw, &gw.token_with(claims("alice", 600)), "valid token").await;

    let msg = assert_401(&gw, None, "no token").await;
    assert!(msg.contains("missing token"), "{msg}");

    let forged = hs256(b"not-the-secret", &claims("alice", 600));
    let msg = assert_401(&gw, Some(&forged), "bad signature").await;
    assert!(msg.contains("signature"), "{msg}");

    let none = unsigned(
        &json!({"alg": "none", "typ": "JWT"}),
        &claims("alice", 600),
        "",
    );
    let msg = assert_401(&gw, Some(&none), "alg none").await;
    assert!(msg.contains("none"), "{msg}");
    let none_signed = format!("{none}{}", b64(b"x"));
    assert_401(&gw, Some(&none_signed), "alg none with a signature").await;

    let expired = gw.token_with(claims("alice", -120));
    let msg = assert_401(&gw, Some(&expired), "expired").await;
    assert!(msg.contains("expired"), "{msg}");

    let no_exp = gw.token_with(json!({"sub": "alice", "channels": ["metrics:*"]}));
    let msg = assert_401(&gw, Some(&no_exp), "no exp").await;
    assert!(msg.contains("no exp claim"), "{msg}");

    let no_sub = gw.token_with(json!({"exp": now_secs() + 600, "channels": ["metrics:*"]}));
    let msg = assert_401(&gw, Some(&no_sub), "no sub").await;
    assert!(msg.contains("no sub claim"), "{msg}");

    for (claims, needle) in [
        (json!({"sub": 42, "exp": now_secs() + 600}), "sub"),
        (json!({"sub": "alice", "exp": "soon"}), "exp"),
        (
            json!({"sub": "alice", "exp": now_secs() + 600, "channels": "metrics:*"}),
            "channels",
        ),
        (
            json!({"sub": "alice", "exp": now_secs() + 600, "roles": [1]}),
            "roles",
        ),
    ] {
        let token = gw.token_with(claims.clone());
        let msg = assert_401(&gw, Some(&token), &format!("{claims}")).await;
        assert!(
            msg.contains(needle) && !msg.contains("malformed"),
            "{claims}: {msg}"
        );
    }

    let not_yet = gw.token_with(json!({
        "sub": "alice", "exp": now_secs() + 600, "nbf": now_secs() + 300, "channels": ["metrics:*"]
    }));
    let msg = assert_401(&gw, Some(&not_yet), "nbf in the future").await;
    assert!(msg.contains("nbf"), "{msg}");

    for garbage in ["garbage", "a.b.c", "", "..."] {
        assert_401(&gw, Some(garbage), &format!("malformed {garbage:?}")).await;
    }
    let resp = gw
        .http
        .get(gw.url(PATH))
        .header("authorization", "Basic YWxpY2U6cHc=")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401, "a non-Bearer Authorization header");
}

#[tokio::test]
async fn audience_and_issuer_are_checked_when_configured() {
    let gw = TestGateway::spawn(|c| {
        c.jwt.audience = "sse-gateway".into();
        c.jwt.issuer = "https://auth.example.com".into();
    })
    .await;
    let with = |aud: Option<&str>, iss: Option<&str>| {
        let mut c = claims("alice", 600);
        if let Some(a) = aud {
            c["aud"] = json!(a);
        }
        if let Some(i) = iss {
            c["iss"] = json!(i);
        }
        gw.token_with(c)
    };
    let good = with(Some("sse-gateway"), Some("https://auth.example.com"));
    assert_200(&gw, &good, "right aud and iss").await;
    let msg = assert_401(
        &gw,
        Some(&with(Some("other-app"), Some("https://auth.example.com"))),
        "wrong aud",
    )
    .await;
    assert!(msg.contains("aud"), "{msg}");
    let msg = assert_401(
        &gw,
        Some(&with(Some("sse-gateway"), Some("https://evil.example.com"))),
        "wrong iss",
    )
    .await;
    assert!(msg.contains("iss"), "{msg}");
    assert_401(&gw, Some(&with(Some("sse-gateway"), None)), "missing iss").await;
}

/// With `jwt.audience` configured, a token without `aud` was not minted for this gateway.
#[tokio::test]
async fn token_without_aud_is_rejected_when_audience_is_configured() {
    let gw = TestGateway::spawn(|c| c.jwt.audience = "sse-gateway".into()).await;
    let mut with_aud = claims("alice", 600);
    with_aud["aud"] = json!("sse-gateway");
    assert_200(&gw, &gw.token_with(with_aud), "right aud").await;
    assert_401(
        &gw,
        Some(&gw.token_with(claims("alice", 600))),
        "missing aud",
    )
    .await;
}

#[tokio::test]
async fn es256_config_accepts_only_es256_tokens_of_its_key() {
    let keys = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let other = rcgen::KeyPair::generate().unwrap();
    let pem = key.public_key_pem();
    let pem_path = keys.path().join("jwt-public.pem");
    std::fs::write(&pem_path, &pem).unwrap();
    let path = pem_path.display().to_string();
    let gw = TestGateway::spawn(move |c| {
        c.jwt.algorithm = sse_gateway::config::JwtAlgorithm::Es256;
        c.jwt.secret = None;
        c.jwt.public_key_file = Some(path.into());
    })
    .await;

    let good = es256(&key, None, &claims("alice", 600));
    assert_200(&gw, &good, "ES256 signed by the configured key").await;

    let wrong_key = es256(&other, None, &claims("alice", 600));
    assert_401(&gw, Some(&wrong_key), "ES256 signed by another key").await;

    let hs = gw.token_with(claims("alice", 600));
    let msg = assert_401(&gw, Some(&hs), "HS256 against an ES256 config").await;
    assert!(msg.contains("HS256"), "{msg}");

    // Algorithm confusion: the public key used as an HMAC secret.
    let confused = hs256(pem.as_bytes(), &claims("alice", 600));
    assert_401(&gw, Some(&confused), "HS256 keyed with the public key").await;

    let rs = unsigned(
        &json!({"alg": "RS256", "typ": "JWT"}),
        &claims("alice", 600),
        &b64(&[7u8; 256]),
    );
    assert_401(&gw, Some(&rs), "RS256 against an ES256 config").await;

    let none = unsigned(&json!({"alg": "none"}), &claims("alice", 600), "");
    assert_401(&gw, Some(&none), "alg none against an ES256 config").await;

    let expired = es256(&key, None, &claims("alice", -120));
    assert_401(&gw, Some(&expired), "expired ES256").await;
}

#[tokio::test]
async fn jwks_selects_the_key_by_kid() {
    let keys = tempfile::tempdir().unwrap();
    let k1 = rcgen::KeyPair::generate().unwrap();
    let k2 = rcgen::KeyPair::generate().unwrap();
    let jwk = |key: &rcgen::KeyPair, kid: &str| {
        let raw = key.public_key_raw();
        assert_eq!(raw.len(), 65, "uncompressed P-256 point");
        json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
            "x": b64(&raw[1..33]), "y": b64(&raw[33..65]),
        })
    };
    let jwks_path = keys.path().join("jwks.json");
    std::fs::write(
        &jwks_path,
        json!({"keys": [jwk(&k1, "k1"), jwk(&k2, "k2")]}).to_string(),
    )
    .unwrap();
    let path = jwks_path.display().to_string();
    let gw = TestGateway::spawn(move |c| {
        c.jwt.algorithm = sse_gateway::config::JwtAlgorithm::Es256;
        c.jwt.secret = None;
        c.jwt.jwks_file = Some(path.into());
    })
    .await;
    assert_200(&gw, &es256(&k1, Some("k1"), &claims("alice", 600)), "k1").await;
    assert_200(&gw, &es256(&k2, Some("k2"), &claims("alice", 600)), "k2").await;
    assert_401(
        &gw,
        Some(&es256(&k2, Some("k1"), &claims("alice", 600))),
        "kid k1 signed by k2",
    )
    .await;
    let msg = assert_401(
        &gw,
        Some(&es256(&k1, Some("k9"), &claims("alice", 600))),
        "unknown kid",
    )
    .await;
    assert!(msg.contains("kid"), "{msg}");
    assert_401(
        &gw,
        Some(&es256(&k1, None, &claims("alice", 600))),
        "no kid with two keys",
    )
    .await;
}

#[tokio::test]
async fn channel_grants_deny_other_users_channels() {
    let gw = TestGateway::spawn(|_| {}).await;
    // No channels claim: only the default rule `alerts:{sub}` applies.
    let alice = gw.token("alice", &[], &[], 600);

    let resp = gw
        .sse_response("/api/sse?channels=alerts:bob", Some(&alice), None)
        .await;
    assert_eq!(resp.status(), 403);
    let msg = error_body(resp).await;
    assert!(msg.contains("alerts:bob"), "{msg}");

    let resp = gw
        .sse_response(
            "/api/sse?channels=alerts:bob&channels=metrics:ws1",
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(resp.status(), 403, "every requested channel denied");

    let (mut stream, ready) = gw
        .open("/api/sse?channels=alerts:alice,alerts:bob", &alice, None)
        .await;
    assert_eq!(ready.channels, ["alerts:alice"]);
    assert_eq!(ready.denied.len(), 1);
    assert_eq!(ready.denied[0].channel, "alerts:bob");
    assert!(!ready.denied[0].reason.is_empty());

    let mut notify = gw.publisher("notify-service").await;
    publish(&mut notify, req("alerts:bob", &json!({"for": "bob"}))).await;
    let mine = publish(&mut notify, req("alerts:alice", &json!({"for": "alice"}))).await;
    let env = stream.next_data(WAIT).await;
    assert_eq!(env.id, mine.id, "bob's alert never reaches alice");

    // `{sub}` in a channels claim.
    let carol = gw.token("carol", &["metrics:{sub}"], &[], 600);
    let (_s, ready) = gw
        .open("/api/sse?channels=metrics:carol,metrics:dave", &carol, None)
        .await;
    assert_eq!(ready.channels, ["metrics:carol"]);
    assert_eq!(ready.denied[0].channel, "metrics:dave");
}

#[tokio::test]
async fn malformed_channels_in_the_query_are_400() {
    let gw = TestGateway::spawn(|_| {}).await;
    let token = gw.token("alice", &["logs:**", "metrics:*"], &[], 600);
    for bad in [
        "logs:*",
        "logs:ws1:**",
        "nope:x",
        "logs::ws1",
        "logs:ws%0A1",
        "logs:ws%0D1",
        "Logs:ws1",
        "metrics:ws1:extra",
        "logs:a%20b",
    ] {
        let resp = gw
            .sse_response(&format!("/api/sse?channels={bad}"), Some(&token), None)
            .await;
        assert_eq!(resp.status(), 400, "{bad}");
        let msg = error_body(resp).await;
        assert!(msg.contains("invalid channel"), "{bad}: {msg}");
    }
    let long = format!("/api/sse?channels=logs:{}", "a".repeat(295));
    let resp = gw.sse_response(&long, Some(&token), None).await;
    assert_eq!(resp.status(), 400);
    // A bad token is reported before a bad channel.
    let resp = gw
        .sse_response("/api/sse?channels=logs:*", None, None)
        .await;
    assert_eq!(resp.status(), 401);
}

/// The `Max-Age` attribute of a cookie's attributes, in seconds.
fn max_age(attrs: &[String]) -> i64 {
    attrs
        .iter()
        .find_map(|a| a.strip_prefix("Max-Age="))
        .expect("Max-Age")
        .parse()
        .unwrap()
}

fn cookie_attrs(set_cookie: &str) -> (String, String, Vec<String>) {
    let mut parts = set_cookie.split(';').map(str::trim);
    let (name, value) = parts.next().unwrap().split_once('=').unwrap();
    (
        name.to_owned(),
        value.to_owned(),
        parts.map(str::to_owned).collect(),
    )
}

#[tokio::test]
async fn session_cookie_authenticates_the_stream() {
    let gw = TestGateway::spawn(|_| {}).await;
    let token = gw.token("alice", &["metrics:*"], &[], 600);
    let resp = gw
        .http
        .post(gw.url("/api/sse/session"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let set_cookie = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    let (name, value, attrs) = cookie_attrs(&set_cookie);
    assert_eq!(name, "sse_token");
    assert!(!value.is_empty());
    for want in ["HttpOnly", "Path=/api/sse", "SameSite=Lax"] {
        assert!(attrs.iter().any(|a| a == want), "{want} in {set_cookie}");
    }
    assert!(
        !attrs.iter().any(|a| a == "Secure"),
        "no Secure over plain HTTP"
    );
    let max_age = max_age(&attrs);
    assert!(
        (1..=600).contains(&max_age),
        "Max-Age {max_age} within the token's remaining life"
    );

    // The cookie alone opens the stream.
    let resp = gw
        .http
        .get(gw.url(PATH))
        .header("cookie", format!("theme=dark; sse_token={value}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let ready = SseReader::new(resp).ready(WAIT).await;
    assert_eq!(ready.channels, ["metrics:ws1"]);

    let resp = gw
        .http
        .get(gw.url(PATH))
        .header("cookie", "sse_token=not-a-jwt")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    for bad in [Some("not-a-jwt"), None] {
        let mut r = gw.http.post(gw.url("/api/sse/session"));
        if let Some(t) = bad {
            r = r.bearer_auth(t);
        }
        let resp = r.send().await.unwrap();
        assert_eq!(resp.status(), 401, "{bad:?}");
        assert!(resp.headers().get("set-cookie").is_none());
        error_body(resp).await;
    }
    let expired = gw.token("alice", &["metrics:*"], &[], -120);
    let resp = gw
        .http
        .post(gw.url("/api/sse/session"))
        .bearer_auth(&expired)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401, "expired token");

    let resp = gw
        .http
        .delete(gw.url("/api/sse/session"))
        .header("cookie", format!("sse_token={value}"))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    let cleared = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    let (name, value, attrs) = cookie_attrs(&cleared);
    assert_eq!(name, "sse_token");
    assert!(value.is_empty(), "{cleared}");
    assert!(attrs.iter().any(|a| a == "Max-Age=0"), "{cleared}");
    assert!(attrs.iter().any(|a| a == "Path=/api/sse"), "{cleared}");
}

#[tokio::test]
async fn query_token_is_rejected_by_default() {
    let gw = TestGateway::spawn(|_| {}).await;
    let token = gw.token("alice", &["metrics:*"], &[], 600);
    let resp = gw
        .sse_response(&format!("{PATH}&access_token={token}"), None, None)
        .await;
    assert_eq!(resp.status(), 401);
    let msg = error_body(resp).await;
    assert!(msg.contains("access_token"), "{msg}");
}

#[tokio::test]
async fn query_token_is_accepted_when_enabled() {
    let gw = TestGateway::spawn(|c| c.http.allow_query_token = true).await;
    let token = gw.token("alice", &["metrics:*"], &[], 600);
    let mut stream = gw
        .sse(&format!("{PATH}&access_token={token}"), None, None)
        .await;
    let ready = stream.ready(WAIT).await;
    assert_eq!(ready.channels, ["metrics:ws1"]);
    let bad = gw
        .sse_response(&format!("{PATH}&access_token=garbage"), None, None)
        .await;
    assert_eq!(bad.status(), 401);
}

#[tokio::test]
async fn sub_placeholder_grants_only_the_users_own_channel() {
    let gw = TestGateway::spawn(|_| {}).await;
    // A sub that is a valid segment, with `@` and `.`.
    let email = gw.token("user@example.com", &[], &[], 600);
    let (_s, ready) = gw
        .open("/api/sse?channels=alerts:user@example.com", &email, None)
        .await;
    assert_eq!(ready.channels, ["alerts:user@example.com"]);
    // Subs that would widen a pattern if substituted textually grant nothing.
    for sub in ["*", "**", "bob:x", "a b"] {
        let token = gw.token(sub, &["metrics:{sub}"], &[], 600);
        for channel in ["alerts:bob", "metrics:ws1"] {
            let resp = gw
                .sse_response(&format!("/api/sse?channels={channel}"), Some(&token), None)
                .await;
            assert_eq!(resp.status(), 403, "sub {sub:?} reading {channel}");
        }
    }
    let empty = gw.token("", &["metrics:*"], &[], 600);
    let resp = gw.sse_response(PATH, Some(&empty), None).await;
    assert_eq!(resp.status(), 401, "an empty sub is not a user");
}

/// A token whose `exp` has passed by less than `jwt.leeway_secs` is honoured the same way by
/// every endpoint until the leeway ends, and a stream it opens ends with `expired` then, not at
/// once (a client that reconnects with the same token would loop); past the leeway it is
/// refused everywhere.
#[tokio::test]
async fn a_token_expired_within_the_leeway_is_honoured_until_the_leeway_ends() {
    let gw = TestGateway::spawn(|c| c.jwt.leeway_secs = 8).await;
    let live = gw.token("alice", &["metrics:*"], &["admin"], 600);
    let (_stream, ready) = gw.open(PATH, &live, None).await;

    // exp 2 s ago, leeway 8 s: honoured for ~6 s more.
    let just_expired = gw.token("alice", &["metrics:*"], &["admin"], -2);
    let (mut stream, _) = gw.open(PATH, &just_expired, None).await;
    let mut publisher = gw.publisher("l5-etl-service").await;
    let sent = publish(&mut publisher, req("metrics:ws1", &json!({"n": 1}))).await;
    assert_eq!(
        stream.next_data(WAIT).await.id,
        sent.id,
        "the stream carries events before the leeway ends"
    );

    let session = gw
        .http
        .post(gw.url("/api/sse/session"))
        .bearer_auth(&just_expired)
        .send()
        .await
        .unwrap();
    assert_eq!(session.status(), 204, "session");
    let set_cookie = session.headers()["set-cookie"].to_str().unwrap().to_owned();
    let (_, _, attrs) = cookie_attrs(&set_cookie);
    let max_age = max_age(&attrs);
    assert!(
        (1..=6).contains(&max_age),
        "Max-Age {max_age}: no longer than what is left of the leeway"
    );

    let change = gw
        .http
        .post(gw.url("/api/sse/subscriptions"))
        .bearer_auth(&just_expired)
        .json(&json!({"connection_id": ready.connection_id, "add": ["metrics:ws2"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(change.status(), 200, "subscriptions");
    let admin = gw.get("/admin/connections", Some(&just_expired)).await;
    assert_eq!(admin.status(), 200, "admin");

    // The stream ends when the leeway does.
    let expired = stream
        .next_control("expired", std::time::Duration::from_secs(20))
        .await;
    assert!(expired.is_object(), "{expired}");
    stream.expect_end(WAIT).await;

    // exp 9 s ago: past the leeway, refused everywhere.
    let past = gw.token("alice", &["metrics:*"], &["admin"], -9);
    let msg = assert_401(&gw, Some(&past), "open").await;
    assert!(msg.contains("token expired"), "{msg}");
    let session = gw
        .http
        .post(gw.url("/api/sse/session"))
        .bearer_auth(&past)
        .send()
        .await
        .unwrap();
    assert_eq!(session.status(), 401, "session");
    assert!(error_body(session).await.contains("token expired"));
    let change = gw
        .http
        .post(gw.url("/api/sse/subscriptions"))
        .bearer_auth(&past)
        .json(&json!({"connection_id": ready.connection_id, "add": ["metrics:ws2"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(change.status(), 401, "subscriptions");
    assert!(error_body(change).await.contains("token expired"));
    let admin = gw.get("/admin/connections", Some(&past)).await;
    assert_eq!(admin.status(), 401, "admin");
    assert!(error_body(admin).await.contains("token expired"));
}

//! The SSE stream (SPEC §4–§5): channel lists, audience targeting, heartbeats, per-user and
//! per-connection limits, CORS.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tokio::time::Instant;

#[tokio::test]
async fn channels_may_be_repeated_or_comma_separated() {
    let gw = TestGateway::spawn(|_| {}).await;
    let token = gw.token("alice", &["logs:**", "metrics:*", "dashboards:*"], &[], 600);
    let (_stream, ready) = gw
        .open(
            "/api/sse?channels=logs:ws1:wf1,metrics:ws1&channels=dashboards:d1&channels=logs:ws1:wf1",
            &token,
            None,
        )
        .await;
    let mut channels = ready.channels.clone();
    channels.sort();
    assert_eq!(channels, ["dashboards:d1", "logs:ws1:wf1", "metrics:ws1"]);
    assert!(ready.denied.is_empty());
}

#[tokio::test]
async fn a_stream_starts_live_without_a_cursor() {
    let gw = TestGateway::spawn(|_| {}).await;
    let mut client = gw.publisher("l5-etl-service").await;
    publish(&mut client, req("metrics:ws1", &json!({"before": true}))).await;
    let token = gw.token("alice", &["metrics:*"], &[], 600);
    let (mut stream, _) = gw.open("/api/sse?channels=metrics:ws1", &token, None).await;
    let resp = publish(&mut client, req("metrics:ws1", &json!({"after": true}))).await;
    let env = stream.next_data(WAIT).await;
    assert_eq!(env.id, resp.id);
    assert_eq!(env.payload, json!({"after": true}));
}

#[tokio::test]
async fn heartbeat_comments_keep_the_stream_alive() {
    let gw = TestGateway::spawn(|c| c.sse.heartbeat_secs = 1).await;
    let token = gw.token("alice", &["metrics:*"], &[], 600);
    let (mut stream, _) = gw.open("/api/sse?channels=metrics:ws1", &token, None).await;
    for _ in 0..2 {
        let frame = stream.next_frame(Duration::from_secs(5)).await;
        assert_eq!(frame.raw, ": ping\n\n");
        assert_eq!(frame.comments, ["ping"]);
    }
}

#[tokio::test]
async fn audience_by_user_and_by_role() {
    let gw = TestGateway::spawn(|_| {}).await;
    let alice_token = gw.token("alice", &["metrics:*"], &[], 600);
    let bob_token = gw.token("bob", &["metrics:*"], &["ops"], 600);
    let (mut alice, _) = gw
        .open("/api/sse?channels=metrics:ws1", &alice_token, None)
        .await;
    let (mut bob, _) = gw
        .open("/api/sse?channels=metrics:ws1", &bob_token, None)
        .await;
    let mut client = gw.publisher("analytics-service").await;

    let to_alice = publish(
        &mut client,
        req_for("metrics:ws1", &json!({"to": "alice"}), &["alice"], &[]),
    )
    .await;
    assert_eq!(to_alice.delivered, 1);
    let marker1 = publish(&mut client, req("metrics:ws1", &json!({"marker": 1}))).await;
    assert_eq!(marker1.delivered, 2);
    assert_eq!(alice.next_data(WAIT).await.id, to_alice.id);
    assert_eq!(alice.next_data(WAIT).await.id, marker1.id);
    assert_eq!(
        bob.next_data(WAIT).await.id,
        marker1.id,
        "bob is not in the user audience"
    );

    let to_ops = publish(
        &mut client,
        req_for("metrics:ws1", &json!({"to": "ops"}), &[], &["ops"]),
    )
    .await;
    assert_eq!(to_ops.delivered, 1);
    let marker2 = publish(&mut client, req("metrics:ws1", &json!({"marker": 2}))).await;
    assert_eq!(bob.next_data(WAIT).await.id, to_ops.id);
    assert_eq!(bob.next_data(WAIT).await.id, marker2.id);
    assert_eq!(
        alice.next_data(WAIT).await.id,
        marker2.id,
        "alice does not hold the ops role"
    );

    // Either list admits; an audience matching nobody reaches nobody.
    let either = publish(
        &mut client,
        req_for(
            "metrics:ws1",
            &json!({"to": "either"}),
            &["alice"],
            &["ops"],
        ),
    )
    .await;
    assert_eq!(either.delivered, 2);
    let nobody = publish(
        &mut client,
        req_for(
            "metrics:ws1",
            &json!({"to": "carol"}),
            &["carol"],
            &["auditor"],
        ),
    )
    .await;
    assert_eq!(nobody.delivered, 0);
    let marker3 = publish(&mut client, req("metrics:ws1", &json!({"marker": 3}))).await;
    for stream in [&mut alice, &mut bob] {
        assert_eq!(stream.next_data(WAIT).await.id, either.id);
        assert_eq!(stream.next_data(WAIT).await.id, marker3.id);
    }
}

#[tokio::test]
async fn per_user_stream_limit_answers_429_with_retry_after() {
    let gw = TestGateway::spawn(|c| {
        c.limits.max_connections_per_user = 2;
        c.sse.heartbeat_secs = 1;
    })
    .await;
    let token = gw.token("alice", &["metrics:*"], &[], 600);
    let path = "/api/sse?channels=metrics:ws1";
    let (first, _) = gw.open(path, &token, None).await;
    let (_second, _) = gw.open(path, &token, None).await;
    let resp = gw.sse_response(path, Some(&token), None).await;
    assert_eq!(resp.status(), 429);
    let retry_after = resp
        .headers()
        .get("retry-after")
        .expect("429 carries Retry-After")
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        retry_after.parse::<u64>().is_ok(),
        "Retry-After is seconds: {retry_after}"
    );
    let msg = error_body(resp).await;
    assert!(msg.contains('2'), "{msg}");

    // The limit is per user.
    let bob = gw.token("bob", &["metrics:*"], &[], 600);
    let (_bob_stream, _) = gw.open(path, &bob, None).await;

    // A closed stream frees its slot (noticed at the latest on the next heartbeat write).
    drop(first);
    let deadline = Instant::now() + WAIT;
    loop {
        let resp = gw.sse_response(path, Some(&token), None).await;
        if resp.status() == 200 {
            let mut stream = SseReader::new(resp);
            stream.ready(WAIT).await;
            break;
        }
        assert_eq!(resp.status(), 429);
        assert!(
            Instant::now() < deadline,
            "the closed stream's slot was never freed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn too_many_channels_on_one_connection_is_400() {
    let gw = TestGateway::spawn(|c| c.limits.max_channels_per_connection = 3).await;
    let token = gw.token("alice", &["metrics:*"], &[], 600);
    let resp = gw
        .sse_response(
            "/api/sse?channels=metrics:a,metrics:b,metrics:c,metrics:d",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(resp.status(), 400);
    let msg = error_body(resp).await;
    assert!(msg.contains('3'), "{msg}");
    let (_s, ready) = gw
        .open(
            "/api/sse?channels=metrics:a,metrics:b,metrics:c",
            &token,
            None,
        )
        .await;
    assert_eq!(ready.channels.len(), 3);
}

#[tokio::test]
async fn cors_allows_configured_origins_with_credentials() {
    let gw =
        TestGateway::spawn(|c| c.http.cors_origins = vec!["https://app.example.com".into()]).await;
    let preflight = gw
        .http
        .request(
            reqwest::Method::OPTIONS,
            gw.url("/api/sse?channels=metrics:ws1"),
        )
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "GET")
        .header(
            "access-control-request-headers",
            "authorization,last-event-id",
        )
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{}", preflight.status());
    let h = preflight.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
    assert_eq!(h["access-control-allow-credentials"], "true");
    let allowed_headers = h["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(
        allowed_headers.contains("authorization"),
        "{allowed_headers}"
    );
    assert!(
        allowed_headers.contains("last-event-id"),
        "{allowed_headers}"
    );

    let token = gw.token("alice", &["metrics:*"], &[], 600);
    let resp = gw
        .http
        .get(gw.url("/api/sse?channels=metrics:ws1"))
        .bearer_auth(&token)
        .header("origin", "https://app.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert_eq!(resp.headers()["access-control-allow-credentials"], "true");
    drop(resp);

    let other = gw
        .http
        .get(gw.url("/health"))
        .header("origin", "https://evil.example.com")
        .send()
        .await
        .unwrap();
    assert!(
        other.headers().get("access-control-allow-origin").is_none(),
        "{:?}",
        other.headers()
    );
}

#[tokio::test]
async fn many_subscribers_each_get_every_event_once() {
    let gw = TestGateway::spawn(|_| {}).await;
    let mut streams = Vec::new();
    for i in 0..20 {
        let token = gw.token(&format!("user{i}"), &["logs:**"], &[], 600);
        streams.push(
            gw.open("/api/sse?channels=logs:ws1:wf1", &token, None)
                .await
                .0,
        );
    }
    let mut client = gw.publisher("l5-etl-service").await;
    let mut ids = Vec::new();
    for i in 0..50 {
        let resp = publish(&mut client, req("logs:ws1:wf1", &json!({"i": i}))).await;
        assert_eq!(resp.delivered, 20);
        ids.push(resp.id);
    }
    let deadline = Instant::now() + WAIT;
    for stream in &mut streams {
        for id in &ids {
            assert_eq!(&stream.next_data(deadline).await.id, id);
        }
    }
}

#[tokio::test]
async fn the_stream_works_over_http2() {
    let gw = TestGateway::spawn(|_| {}).await;
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let token = gw.token("alice", &["metrics:*"], &[], 600);
    let mut streams = Vec::new();
    for _ in 0..3 {
        let resp = tokio::time::timeout(
            WAIT,
            h2.get(gw.url("/api/sse?channels=metrics:ws1"))
                .bearer_auth(&token)
                .send(),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(resp.version(), reqwest::Version::HTTP_2);
        assert_eq!(resp.status(), 200);
        let mut stream = SseReader::new(resp);
        stream.ready(WAIT).await;
        streams.push(stream);
    }
    let mut client = gw.publisher("analytics-service").await;
    let resp = publish(&mut client, req("metrics:ws1", &json!({"over": "h2"}))).await;
    assert_eq!(
        resp.delivered, 3,
        "three streams multiplexed on one connection"
    );
    for stream in &mut streams {
        let env = stream.next_data(WAIT).await;
        assert_eq!(env.id, resp.id);
        assert_eq!(env.payload, json!({"over": "h2"}));
    }
}

/// The HTTP listener with `[http] tls_cert`/`tls_key`: ALPN offers h2 and http/1.1, and the
/// session cookie gets `Secure`. (reqwest is built without TLS here, so this speaks HTTP/1.1
/// over tokio-rustls by hand.)
#[tokio::test]
async fn https_listener_negotiates_h2_and_sets_secure_cookies() {
    use std::sync::Arc;

    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let gw = TestGateway::spawn(|c| {
        c.http.tls_cert = Some("server.pem".into());
        c.http.tls_key = Some("server-key.pem".into());
    })
    .await;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(gw.pki_file("ca.pem")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let connect = |alpn: &[&[u8]]| {
        let mut config = rustls::ClientConfig::builder()
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let addr = gw.http_addr;
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            tokio::time::timeout(
                WAIT,
                connector.connect(ServerName::try_from("localhost").unwrap(), tcp),
            )
            .await
            .unwrap()
            .unwrap()
        }
    };
    let h2 = connect(&[b"h2", b"http/1.1"]).await;
    assert_eq!(h2.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    drop(h2);

    let mut tls = connect(&[b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let token = gw.token("alice", &["metrics:*"], &[], 600);
    let request = format!(
        "POST /api/sse/session HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\n\r\n"
    );
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, tls.read(&mut byte))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 1, "response head before EOF");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 204"), "{head}");
    let cookie = head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("no Set-Cookie in {head}"));
    assert!(
        cookie.split(';').any(|a| a.trim() == "Secure"),
        "Secure behind TLS: {cookie}"
    );
}

#[tokio::test]
async fn node_stream_limit_answers_503_with_retry_after() {
    let gw = TestGateway::spawn(|c| c.limits.max_connections = 2).await;
    let path = "/api/sse?channels=metrics:ws1";
    let alice = gw.token("alice", &["metrics:*"], &[], 600);
    let bob = gw.token("bob", &["metrics:*"], &[], 600);
    let carol = gw.token("carol", &["metrics:*"], &[], 600);
    let (_a, _) = gw.open(path, &alice, None).await;
    let (_b, _) = gw.open(path, &bob, None).await;
    let resp = gw.sse_response(path, Some(&carol), None).await;
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().get("retry-after").is_some());
    let msg = error_body(resp).await;
    assert!(msg.contains("limit of 2 streams"), "{msg}");
}

#[tokio::test]
async fn empty_or_padded_channel_names_are_refused_not_normalised() {
    let gw = TestGateway::spawn(|_| {}).await;
    let token = gw.token("alice", &["logs:**"], &[], 600);
    for query in [
        "channels=",
        "channels=logs:ws1,",
        "channels=logs:ws1,,logs:ws2",
        "channels=%20logs:ws1",
        "channels=logs:ws1%20",
    ] {
        let resp = gw
            .sse_response(&format!("/api/sse?{query}"), Some(&token), None)
            .await;
        assert_eq!(resp.status(), 400, "{query}");
    }
}

/// Concurrent `add`s to one connection never take it over `limits.max_channels_per_connection`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_subscription_adds_respect_the_channel_limit() {
    const LIMIT: usize = 8;
    const REQUESTS: usize = 48;
    let gw = TestGateway::spawn(|c| c.limits.max_channels_per_connection = LIMIT).await;
    let token = gw.token("alice", &["metrics:*"], &[], 600);
    // Removing channels the connection does not hold is a no-op, but makes each request's
    // work (and so any window between checking the room and adding) longer.
    let remove: Vec<String> = (0..250).map(|i| format!("metrics:absent{i}")).collect();
    for round in 0..10 {
        let (mut stream, ready) = gw
            .open("/api/sse?channels=metrics:base", &token, None)
            .await;
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(REQUESTS));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..REQUESTS {
            let http = gw.http.clone();
            let url = gw.url("/api/sse/subscriptions");
            let body = json!({
                "connection_id": ready.connection_id,
                "add": [format!("metrics:r{round}c{i}")],
                "remove": remove,
            });
            let (token, barrier) = (token.clone(), barrier.clone());
            tasks.spawn(async move {
                barrier.wait().await;
                let resp = http
                    .post(url)
                    .bearer_auth(token)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 200);
                resp.json::<Value>().await.unwrap()
            });
        }
        let mut accepted = 0;
        let mut longest = 0;
        while let Some(outcome) = tokio::time::timeout(WAIT, tasks.join_next()).await.unwrap() {
            let outcome = outcome.unwrap();
            let channels = outcome["channels"].as_array().unwrap().len();
            longest = longest.max(channels);
            if outcome["denied"].as_array().unwrap().is_empty() {
                accepted += 1;
            } else {
                let reason = outcome["denied"][0]["reason"].as_str().unwrap();
                assert!(reason.contains(&LIMIT.to_string()), "{reason}");
            }
        }
        assert!(
            longest <= LIMIT,
            "round {round}: a connection held {longest} channels"
        );
        assert_eq!(accepted, LIMIT - 1, "round {round}: adds accepted");
        // The stream agrees: no `subscriptions` event lists more than the limit.
        let mut most = 0;
        for _ in 0..REQUESTS {
            let list = stream.next_control("subscriptions", WAIT).await["channels"]
                .as_array()
                .unwrap()
                .len();
            most = most.max(list);
        }
        assert_eq!(most, LIMIT, "round {round}");
    }
}

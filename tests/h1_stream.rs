//! The lean HTTP/1.1 stream path, spoken to over raw sockets: a stream request is served by it,
//! every other request (first or later on a connection) still by hyper, a client that goes
//! away unregisters its stream, and a request head that never completes is cut off.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Reads from `tcp` until `buf` holds `needle`, failing the test at the deadline or on EOF.
async fn read_until(tcp: &mut TcpStream, buf: &mut Vec<u8>, needle: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        if String::from_utf8_lossy(buf).contains(needle) {
            return;
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, tcp.read(&mut chunk))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no {needle:?} in time; got {:?}",
                    String::from_utf8_lossy(buf)
                )
            })
            .unwrap();
        assert!(
            n > 0,
            "closed before {needle:?}; got {:?}",
            String::from_utf8_lossy(buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads one complete response with a `content-length` body; returns head and body.
async fn read_response(tcp: &mut TcpStream) -> (String, String) {
    let mut buf = Vec::new();
    let response = read_response_from(tcp, &mut buf).await;
    assert!(buf.is_empty(), "no bytes beyond the response");
    response
}

/// [`read_response`], starting with the bytes in `buf` and leaving those after the response.
async fn read_response_from(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> (String, String) {
    read_until(tcp, buf, "\r\n\r\n", WAIT).await;
    let text = String::from_utf8_lossy(buf).into_owned();
    let end = text.find("\r\n\r\n").unwrap() + 4;
    let head = text[..end].to_owned();
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no content-length in {head:?}"));
    while buf.len() < end + length {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, tcp.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed inside a body");
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buf[end..end + length]).into_owned();
    buf.drain(..end + length);
    (head, body)
}

async fn health(gw: &TestGateway) -> Value {
    gw.get("/health", None).await.json().await.unwrap()
}

async fn wait_connections(gw: &TestGateway, want: u64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let now = health(gw).await["connections"].as_u64().unwrap();
        if now == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "connections stayed {now}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Opens a stream over a raw socket; returns the socket, what was read and the connection id.
async fn open_raw(gw: &TestGateway, token: &str, channels: &str) -> (TcpStream, Vec<u8>, String) {
    let tcp = TcpStream::connect(gw.http_addr).await.unwrap();
    open_on(tcp, token, channels).await
}

/// [`open_raw`] on a connected socket.
async fn open_on(mut tcp: TcpStream, token: &str, channels: &str) -> (TcpStream, Vec<u8>, String) {
    let head = format!(
        "GET /api/sse?channels={channels} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    read_until(&mut tcp, &mut buf, "event: ready", WAIT).await;
    read_until(&mut tcp, &mut buf, "}\n\n", WAIT).await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let lower = text.to_ascii_lowercase();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(
        lower.contains("\r\ncontent-type: text/event-stream\r\n"),
        "{text}"
    );
    assert!(lower.contains("\r\ncache-control: no-cache\r\n"), "{text}");
    assert!(lower.contains("\r\nx-accel-buffering: no\r\n"), "{text}");
    assert!(
        lower.contains("\r\ntransfer-encoding: chunked\r\n"),
        "{text}"
    );
    assert!(text.contains("retry: "), "{text}");
    let id = text
        .split("\"connection_id\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();
    (tcp, buf, id)
}

#[tokio::test]
async fn a_raw_stream_gets_events_and_subscription_changes() {
    let gw = TestGateway::spawn(|_| {}).await;
    let token = gw.token("alice", &["metrics:*"], &[], 600);
    let (mut tcp, mut buf, id) = open_raw(&gw, &token, "metrics:ws1").await;
    let mut client = gw.publisher("l5-etl-service").await;
    let resp = publish(&mut client, req("metrics:ws1", &json!({"n": 1}))).await;
    read_until(&mut tcp, &mut buf, &format!("id: {}\n", resp.id), WAIT).await;
    read_until(&mut tcp, &mut buf, "{\"n\":1}", WAIT).await;

    // A POST with a body, on a fresh connection, changes the raw stream's channels.
    let mut post = TcpStream::connect(gw.http_addr).await.unwrap();
    let body = json!({"connection_id": id, "add": ["metrics:ws2"]}).to_string();
    let request = format!(
        "POST /api/sse/subscriptions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    post.write_all(request.as_bytes()).await.unwrap();
    let (head, answer) = read_response(&mut post).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["channels"], json!(["metrics:ws1", "metrics:ws2"]));
    read_until(&mut tcp, &mut buf, "event: subscriptions", WAIT).await;
    let resp = publish(&mut client, req("metrics:ws2", &json!({"n": 2}))).await;
    read_until(&mut tcp, &mut buf, &format!("id: {}\n", resp.id), WAIT).await;
    // Every body chunk is framed: the chunk sizes add up to what follows them.
    let text = String::from_utf8_lossy(&buf).into_owned();
    let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
    let mut rest = body;
    while !rest.is_empty() {
        let (size, after) = rest.split_once("\r\n").unwrap();
        let size = usize::from_str_radix(size, 16).unwrap();
        assert!(size > 0, "no end of body while the stream is open");
        assert_eq!(&after[size..size + 2], "\r\n", "chunk framing in {body:?}");
        rest = &after[size + 2..];
    }
}

#[tokio::test]
async fn other_requests_and_later_requests_on_a_connection_are_served_as_before() {
    let gw = TestGateway::spawn(|_| {}).await;
    // Another path first: hyper serves it, and the next request on the connection too.
    let mut tcp = TcpStream::connect(gw.http_addr).await.unwrap();
    tcp.write_all(b"GET /health HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .unwrap();
    let (head, body) = read_response(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(body.contains("\"connections\""), "{body}");
    tcp.write_all(b"GET /ready HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_response(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");

    // A refused stream request answers as before, and the connection stays usable.
    let mut tcp = TcpStream::connect(gw.http_addr).await.unwrap();
    tcp.write_all(b"GET /api/sse?channels=metrics:ws1 HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .unwrap();
    let (head, body) = read_response(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 401 "), "{head}");
    assert!(body.contains("\"error\""), "{body}");
    tcp.write_all(b"GET /health HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_response(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");

    // Pipelined requests are left to hyper, which answers both in order.
    let token = gw.token("alice", &["metrics:*"], &[], 600);
    let mut tcp = TcpStream::connect(gw.http_addr).await.unwrap();
    tcp.write_all(
        format!(
            "GET /health HTTP/1.1\r\nHost: gw\r\n\r\nGET /api/sse/nope HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let (head, _) = read_response_from(&mut tcp, &mut buf).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    let (head, _) = read_response_from(&mut tcp, &mut buf).await;
    assert!(head.starts_with("HTTP/1.1 404 "), "{head}");
    assert!(buf.is_empty());
}

#[tokio::test]
async fn a_client_that_closes_its_socket_unregisters_its_stream() {
    let gw = TestGateway::spawn(|_| {}).await;
    let token = gw.token("alice", &["metrics:*"], &[], 600);
    let (tcp, _, _) = open_raw(&gw, &token, "metrics:ws1").await;
    let (tcp2, _, _) = open_raw(&gw, &token, "metrics:ws1").await;
    wait_connections(&gw, 2, WAIT).await;
    // No heartbeat is due for 15 s: only reading the socket can notice the close.
    drop(tcp);
    wait_connections(&gw, 1, Duration::from_secs(3)).await;
    drop(tcp2);
    wait_connections(&gw, 0, Duration::from_secs(3)).await;
}

#[tokio::test]
async fn a_slow_consumer_on_the_raw_path_loses_its_connection() {
    let gw = TestGateway::spawn(|c| c.sse.queue_events = 4).await;
    let token = gw.token("alice", &["metrics:*"], &[], 600);
    // A small receive buffer, so that the stall reaches the server soon.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(gw.http_addr).await.unwrap();
    let (mut tcp, _, _) = open_on(tcp, &token, "metrics:ws1").await;
    let mut client = gw.publisher("l5-etl-service").await;
    // Stop reading; publish until the queue overflows and the node drops the connection.
    let big = "x".repeat(16 * 1024);
    let deadline = Instant::now() + Duration::from_secs(20);
    while gw
        .metric("sse_gateway_slow_consumer_disconnects_total")
        .await
        < 1.0
    {
        assert!(Instant::now() < deadline, "never closed as a slow consumer");
        publish(&mut client, req("metrics:ws1", &json!({ "pad": big }))).await;
    }
    wait_connections(&gw, 0, WAIT).await;
    // The TCP connection is gone too: reading drains what was sent, then ends.
    let mut sink = vec![0u8; 64 * 1024];
    let deadline = Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut sink)).await {
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(_)) => {}
            Err(_) => panic!("the connection of a slow consumer stayed open"),
        }
    }
}

#[tokio::test]
async fn a_request_head_that_never_completes_is_cut_off() {
    let gw = TestGateway::spawn(|_| {}).await;
    let mut tcp = TcpStream::connect(gw.http_addr).await.unwrap();
    let started = Instant::now();
    tcp.write_all(b"GET /api/sse?channels=metrics:ws1 HTTP/1.1\r\nHost: gw\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let read = tokio::time::timeout(Duration::from_secs(30), tcp.read(&mut buf))
        .await
        .expect("the connection is closed within the header timeout");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(
        started.elapsed() >= Duration::from_secs(14),
        "closed after {:?}, before the header timeout",
        started.elapsed()
    );
}

//! Ingest under load: fast publishers on one HTTP/2 connection are read, batched and answered,
//! never cut off; what they were told is in the log, in each stream's order.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use sse_gateway::channel::ChannelName;
use sse_gateway::event::Position;
use sse_gateway::ingest::pb::publisher_client::PublisherClient;
use sse_gateway::ingest::pb::{PublishRequest, PublishResponse};
use tonic::transport::{Channel, Endpoint};

/// A publisher channel whose every TCP connection is counted: a connection the server closed
/// (`GOAWAY`) would be replaced by a new one behind tonic's back.
async fn counted_channel(gw: &TestGateway, service: &str) -> (Channel, Arc<AtomicUsize>) {
    let cert = gw.pki_file(&format!("{service}.pem"));
    let key = gw.pki_file(&format!("{service}-key.pem"));
    let connects = Arc::new(AtomicUsize::new(0));
    let addr = gw.grpc_addr;
    let counter = connects.clone();
    let connector = tower::service_fn(move |_: http::Uri| {
        counter.fetch_add(1, Ordering::SeqCst);
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            Ok::<_, std::io::Error>(TokioIo::new(tcp))
        }
    });
    let channel = Endpoint::from_shared(gw.grpc_url())
        .unwrap()
        .tls_config(gw.client_tls(Some((&cert, &key))))
        .unwrap()
        .connect_with_connector(connector)
        .await
        .expect("publisher connects");
    (channel, connects)
}

/// A request stream that hands over one message per poll and is "not ready" in between (waking
/// itself at once), like a live producer: the client's encoder then sends every message as its
/// own small DATA frame instead of coalescing what is ready into large ones.
struct OneAtATime {
    stream: usize,
    next: usize,
    n: usize,
    ready: bool,
}

impl futures_util::Stream for OneAtATime {
    type Item = PublishRequest;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<PublishRequest>> {
        if self.next == self.n {
            return std::task::Poll::Ready(None);
        }
        if !self.ready {
            self.ready = true;
            cx.waker().wake_by_ref();
            return std::task::Poll::Pending;
        }
        self.ready = false;
        let (s, i) = (self.stream, self.next);
        self.next += 1;
        std::task::Poll::Ready(Some(req_raw(
            &format!("logs:ingest:s{s}"),
            &format!(r#"{{"s":{s},"i":{i}}}"#),
        )))
    }
}

/// Sends `n` small events on one `PublishStream` as fast as the transport takes them and
/// collects the answers.
async fn stream_publish(
    mut client: PublisherClient<Channel>,
    stream: usize,
    n: usize,
) -> Result<Vec<PublishResponse>, tonic::Status> {
    let requests = OneAtATime {
        stream,
        next: 0,
        n,
        ready: false,
    };
    let mut inbound = client.publish_stream(requests).await?.into_inner();
    let mut out = Vec::with_capacity(n);
    while let Some(r) = inbound.message().await? {
        out.push(r);
    }
    Ok(out)
}

/// The payloads of the log's events on `channels`, in log order.
async fn log_payloads(gw: &TestGateway, channels: &HashSet<ChannelName>) -> Vec<(String, Value)> {
    let broker = &gw.gateway().state.broker;
    let mut after = Position::default();
    let mut out = Vec::new();
    loop {
        let page = broker.read_after(after, channels, 10_000).await.unwrap();
        assert!(!page.gap, "nothing was trimmed");
        for ev in &page.events {
            let text = std::str::from_utf8(&ev.frame).unwrap();
            let data = text
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .expect("a data line");
            let envelope: Value = serde_json::from_str(data).unwrap();
            out.push((ev.cursor.clone(), envelope["payload"].clone()));
        }
        after = page.last;
        if page.done {
            return out;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_fast_publish_streams_on_one_connection_are_never_cut_off() {
    const N: usize = 20_000;
    let gw = TestGateway::spawn(|raw| raw.history.max_events = 2 * STREAMS * N).await;
    eight_fast_streams(&gw, N).await;
}

/// On Redis the appends are slower than the publishers: the streams' queues fill, reading
/// pauses, and flow control (not a `GOAWAY`) holds the publishers back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_fast_publish_streams_on_redis_are_held_back_not_cut_off() {
    const N: usize = 5_000;
    let prefix = format!("test-ingest-{}", sse_gateway::hub::random_id());
    let gw = TestGateway::spawn(move |raw| {
        raw.broker.kind = sse_gateway::config::BrokerKind::Redis;
        raw.broker.url = "redis://127.0.0.1:6379".into();
        raw.broker.key_prefix = prefix;
        raw.broker.timeout_ms = 5000;
        raw.history.max_events = 2 * STREAMS * N;
    })
    .await;
    eight_fast_streams(&gw, N).await;
}

const STREAMS: usize = 8;

/// Eight streams of `n` small events each, on one connection of `gw`'s publisher channel.
async fn eight_fast_streams(gw: &TestGateway, n: usize) {
    let (channel, connects) = counted_channel(gw, "l5-etl-service").await;
    let client = PublisherClient::new(channel);
    let results = tokio::time::timeout(Duration::from_secs(120), async {
        let tasks: Vec<_> = (0..STREAMS)
            .map(|s| tokio::spawn(stream_publish(client.clone(), s, n)))
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    })
    .await
    .expect("every stream is answered before the deadline");

    let mut acked = Vec::with_capacity(STREAMS);
    for (s, r) in results.into_iter().enumerate() {
        let responses = r.unwrap_or_else(|e| panic!("stream {s} failed: {e:?}"));
        assert_eq!(responses.len(), n, "stream {s}: one response per request");
        for w in responses.windows(2) {
            assert!(
                w[0].id < w[1].id,
                "stream {s}: {} then {}",
                w[0].id,
                w[1].id
            );
        }
        assert!(responses.iter().all(|r| !r.duplicate));
        acked.push(responses);
    }
    assert_eq!(
        connects.load(Ordering::SeqCst),
        1,
        "the connection was never closed and replaced"
    );

    // Every acknowledged event is in the log under the id it was acknowledged with, and each
    // stream's events are in the order they were sent.
    let channels: HashSet<ChannelName> = (0..STREAMS)
        .map(|s| {
            gw.config
                .channel_types
                .parse_name(&format!("logs:ingest:s{s}"))
                .unwrap()
        })
        .collect();
    let log = log_payloads(gw, &channels).await;
    assert_eq!(log.len(), STREAMS * n);
    let mut next = [0u64; STREAMS];
    for (cursor, payload) in &log {
        let s = usize::try_from(payload["s"].as_u64().unwrap()).unwrap();
        let i = payload["i"].as_u64().unwrap();
        assert_eq!(i, next[s], "stream {s}: events in the order sent");
        assert_eq!(
            &acked[s][usize::try_from(i).unwrap()].id,
            cursor,
            "stream {s} event {i}: acknowledged with its log id"
        );
        next[s] += 1;
    }
}

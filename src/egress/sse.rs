//! `GET /api/sse`: one stream per page carrying every granted channel.
//!
//! Order of work for a resume without gap or duplicate: register with the hub first (live events
//! queue up), then replay history after the client's cursor, then drain the queue skipping what
//! the replay already covered.

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::Extension;
use bytes::{Bytes, BytesMut};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};

use super::{authenticate, authorize, Denied, TransportKill};
use crate::app::AppState;
use crate::channel::ChannelName;
use crate::error::GatewayError;
use crate::event::{render_control, Event, Position};
use crate::hub::{Item, NewConnection, Registration};

/// Events per history page during replay.
const REPLAY_PAGE: usize = 1000;
/// Most queued items written in one chunk.
const COALESCE: usize = 256;

#[derive(Serialize)]
struct Ready<'a> {
    connection_id: &'a str,
    /// The stream carries every event after this cursor: the resume cursor when valid, else
    /// the log's head at registration. A client that has seen no event yet resumes from it.
    cursor: Option<&'a str>,
    channels: &'a [ChannelName],
    denied: &'a [Denied],
}

#[derive(Serialize)]
struct Gap<'a> {
    channels: &'a [ChannelName],
}

/// The query of `/api/sse`.
#[derive(Default, Debug)]
struct SseQuery {
    channels: Vec<String>,
    last_event_id: Option<String>,
    access_token: Option<String>,
}

fn parse_query(raw: Option<&str>) -> Result<SseQuery, GatewayError> {
    let mut q = SseQuery::default();
    let Some(raw) = raw else { return Ok(q) };
    for (key, value) in form_urlencoded::parse(raw.as_bytes()) {
        match key.as_ref() {
            "channels" | "channel" => {
                for name in value.split(',') {
                    if name.is_empty() {
                        return Err(GatewayError::InvalidChannel(
                            "empty channel name in the channels parameter".to_owned(),
                        ));
                    }
                    q.channels.push(name.to_owned());
                }
            }
            "last_event_id" | "lastEventId" => q.last_event_id = Some(value.into_owned()),
            "access_token" => q.access_token = Some(value.into_owned()),
            _ => {}
        }
    }
    Ok(q)
}

/// `GET /api/sse`.
///
/// # Errors
/// 401 bad token, 400 malformed channel, 403 every requested channel denied, 429 too many streams.
pub async fn stream(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    kill: Option<Extension<TransportKill>>,
) -> Result<Response, GatewayError> {
    let query = parse_query(raw.as_deref())?;
    let user = authenticate(&state, &headers, query.access_token.as_deref())?;
    let limit = state.config.raw.limits.max_channels_per_connection;
    let mut requested: Vec<ChannelName> = Vec::new();
    let mut seen = HashSet::new();
    for raw in &query.channels {
        let name = state.config.channel_types.parse_name(raw)?;
        if seen.insert(name.clone()) {
            requested.push(name);
        }
        if requested.len() > limit {
            return Err(GatewayError::InvalidArgument(format!(
                "more than {limit} channels requested (the limit per connection)"
            )));
        }
    }
    let asked = !requested.is_empty();
    let (granted, denied) = authorize(&state, &user, requested);
    if asked && granted.is_empty() {
        let list: Vec<&str> = denied.iter().map(|d| d.channel.as_str()).collect();
        return Err(GatewayError::PermissionDenied(format!(
            "not permitted to read any requested channel: {}",
            list.join(", ")
        )));
    }
    let cursor = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or(query.last_event_id)
        .filter(|c| !c.is_empty());
    let replay = cursor
        .as_deref()
        .map(|c| match state.broker.parse_cursor(c) {
            Some(pos) => Replay::From(pos),
            None => Replay::Foreign,
        });
    let sse = &state.config.raw.sse;
    let (registration, rx) = state.hub.register(NewConnection {
        sub: user.sub.clone(),
        roles: user.roles.clone(),
        channels: granted.clone(),
        queue_events: sse.queue_events,
        queue_bytes: sse.queue_bytes,
        max_per_user: state.config.raw.limits.max_connections_per_user,
        max_total: state.config.raw.limits.max_connections,
        // Only an HTTP/1.1 connection is ours alone to drop.
        transport: kill.map(|Extension(k)| k.0),
        replaying: matches!(replay, Some(Replay::From(_))),
    })?;
    tracing::debug!(connection = %registration.connection.id, sub = %user.sub, channels = granted.len(), "stream opened");

    let start = match (&replay, cursor) {
        (Some(Replay::From(_)), Some(c)) => Some(c),
        _ => state.broker.head_cursor().await,
    };
    let mut first = BytesMut::new();
    first.extend_from_slice(format!("retry: {}\n\n", sse.retry_ms).as_bytes());
    first.extend_from_slice(&render_control(
        "ready",
        &Ready {
            connection_id: &registration.connection.id,
            cursor: start.as_deref(),
            channels: &granted,
            denied: &denied,
        },
    ));
    let expires_in = user
        .exp
        .saturating_mul(1000)
        .saturating_sub(crate::event::now_ms());
    let heartbeat = Duration::from_secs(sse.heartbeat_secs);
    let mut ticker = tokio::time::interval_at(Instant::now() + heartbeat, heartbeat);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let stream = SseStream {
        state: state.clone(),
        registration,
        rx,
        first: Some(first.freeze()),
        replay,
        covered: None,
        expires_at: Instant::now() + Duration::from_millis(expires_in),
        ticker,
        done: false,
    };
    let body = Body::from_stream(futures_util::stream::unfold(stream, |mut s| async move {
        s.next_chunk()
            .await
            .map(|chunk| (Ok::<_, Infallible>(chunk), s))
    }));
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::OK;
    let h = response.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    );
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

enum Replay {
    From(Position),
    Foreign,
}

struct SseStream {
    state: AppState,
    registration: Registration,
    rx: mpsc::Receiver<Item>,
    first: Option<Bytes>,
    replay: Option<Replay>,
    /// Events at or before this position were sent by the replay.
    covered: Option<Position>,
    expires_at: Instant,
    ticker: tokio::time::Interval,
    done: bool,
}

impl SseStream {
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        while let Some(replay) = self.replay.take() {
            let page = self.replay_page(replay).await;
            if !page.is_empty() {
                return Some(page);
            }
        }
        loop {
            match self.live().await {
                // Every queued event was already replayed: wait for more.
                Some(chunk) if chunk.is_empty() => continue,
                other => return other,
            }
        }
    }

    /// One page of history; leaves `self.replay` set while more remains.
    async fn replay_page(&mut self, replay: Replay) -> Bytes {
        let channels = self.registration.connection.channels();
        let mut out = BytesMut::new();
        let after = match replay {
            Replay::Foreign => {
                out.extend_from_slice(&render_control(
                    "gap",
                    &Gap {
                        channels: &channels,
                    },
                ));
                // Nothing of this log was seen: live events from the registration on.
                return out.freeze();
            }
            Replay::From(pos) => pos,
        };
        let set: HashSet<ChannelName> = channels.iter().cloned().collect();
        match self.state.broker.read_after(after, &set, REPLAY_PAGE).await {
            Ok(batch) => {
                if batch.gap {
                    out.extend_from_slice(&render_control(
                        "gap",
                        &Gap {
                            channels: &channels,
                        },
                    ));
                }
                let conn = &self.registration.connection;
                for ev in &batch.events {
                    if ev.admits(&conn.sub, &conn.roles) {
                        out.extend_from_slice(&ev.frame);
                    }
                }
                // `last` never passes the log's head: a cursor from beyond it (a lost log) must not hide
                // the live events that follow.
                self.covered = Some(batch.last);
                // Live events dropped while replaying are in the log: read on until none was.
                if !batch.done || !conn.finish_replay() {
                    self.replay = Some(Replay::From(batch.last));
                    self.drain_during_replay(&mut out);
                }
            }
            Err(e) => {
                // The log is unreachable: say so, and continue live.
                tracing::warn!(error = %e, "replay failed; sending gap");
                self.registration.connection.finish_replay();
                out.extend_from_slice(&render_control(
                    "gap",
                    &Gap {
                        channels: &channels,
                    },
                ));
            }
        }
        out.freeze()
    }

    /// While more history remains, live events queued meanwhile are in the log too and will be
    /// read by a later page: drop them to keep room in the queue. (Those that found it full
    /// were dropped by the hub, which marked the connection lagged rather than slow: a replay
    /// is paced by the client's reading, and the log holds what it has not read yet.)
    /// Control frames are kept.
    fn drain_during_replay(&mut self, out: &mut BytesMut) {
        let conn = self.registration.connection.clone();
        while let Ok(item) = self.rx.try_recv() {
            conn.dequeued(&item);
            if let Item::Control(bytes) = item {
                out.extend_from_slice(&bytes);
            }
        }
    }

    fn render(&self, items: &mut Vec<Item>, out: &mut BytesMut) {
        let conn = &self.registration.connection;
        for item in items.drain(..) {
            conn.dequeued(&item);
            match item {
                Item::Event(ev) => {
                    if self.covered.is_some_and(|c| ev.position <= c) {
                        continue;
                    }
                    self.write_event(&ev, out);
                }
                Item::Control(bytes) => out.extend_from_slice(&bytes),
            }
        }
    }

    fn write_event(&self, ev: &Arc<Event>, out: &mut BytesMut) {
        out.extend_from_slice(&ev.frame);
        self.state
            .metrics
            .publish_to_write_seconds
            .observe(ev.accepted_at.elapsed().as_secs_f64());
    }

    async fn live(&mut self) -> Option<Bytes> {
        let mut items = Vec::with_capacity(COALESCE);
        let mut out = BytesMut::new();
        let conn = self.registration.connection.clone();
        tokio::select! {
            biased;
            () = self.state.shutdown.cancelled() => {
                // Flush what is queued, then close: clients resume by cursor.
                while let Ok(item) = self.rx.try_recv() {
                    items.push(item);
                }
                self.render(&mut items, &mut out);
                self.done = true;
            }
            () = conn.closed.cancelled() => {
                self.done = true;
                return None;
            }
            () = tokio::time::sleep_until(self.expires_at) => {
                out.extend_from_slice(&render_control("expired", &serde_json::json!({})));
                self.done = true;
            }
            n = self.rx.recv_many(&mut items, COALESCE) => {
                if n == 0 {
                    self.done = true;
                    return None;
                }
                self.render(&mut items, &mut out);
                if out.is_empty() {
                    return Some(Bytes::from_static(b""));
                }
            }
            _ = self.ticker.tick() => {
                out.extend_from_slice(b": ping\n\n");
            }
        }
        if out.is_empty() {
            return None;
        }
        Some(out.freeze())
    }
}

//! `GET /api/sse`: one stream per page carrying every granted channel.
//!
//! Order of work for a resume without gap or duplicate: register with the hub first (live events
//! queue up), then replay history after the client's cursor, then drain the queue skipping what
//! the replay already covered.
//!
//! Latest values (`snapshot` channel types): a stream that starts without a cursor, or gets
//! `gap`, first writes the latest event of each of its channels that has one, as a data message
//! without `id:`; a channel added live gets its latest event through the queue
//! ([`Item::Snapshot`]). Ordering is kept by position, per channel, in one place
//! ([`SseStream::high`]): a snapshot is written only when the stream has sent that channel
//! nothing as new, and an event no newer than a snapshot already sent is skipped. So however a
//! snapshot read races with live events (a Redis read, a channel add, the tail), a client never
//! sees a channel's value go back, and every event newer than the snapshot still arrives.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::Extension;
use bytes::{Bytes, BytesMut};
use serde::Serialize;
use tokio::time::{Instant, Sleep};

use super::{authorize, Denied, TransportKill};
use crate::auth::Subscriber;
use crate::channel::ChannelName;
use crate::error::GatewayError;
use crate::event::{render_control, Event, Position};
use crate::hub::{Item, NewConnection, Receiver, Registration};
use crate::state::AppState;

/// Events per history page during replay.
const REPLAY_PAGE: usize = 1000;
/// Most queued items written in one chunk.
const COALESCE: usize = 256;
/// Capacity of the per-wake item buffer kept between wake-ups; a larger one (a burst) is
/// released, so that an idle stream holds little.
const ITEMS_KEEP: usize = 8;

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
            "access_token" => {} // read by the Subscriber extractor
            _ => {}
        }
    }
    Ok(q)
}

/// `GET /api/sse`.
///
/// # Errors
/// 401 bad token, 400 malformed channel, 403 every requested channel denied, 429 too many streams.
pub(crate) async fn stream(
    user: Subscriber,
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    kill: Option<Extension<TransportKill>>,
) -> Result<Response, GatewayError> {
    let query = parse_query(raw.as_deref())?;
    let limit = state.config.limits.max_channels_per_connection;
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
    let (granted, denied) =
        authorize(&state.config.channel_types, &state.authz, &user, requested).await;
    if asked && granted.is_empty() {
        let list: Vec<String> = denied
            .iter()
            .map(|d| format!("{} ({})", d.channel, d.reason))
            .collect();
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
    let sse = &state.config.sse;
    let (registration, rx) = state.hub.register(NewConnection {
        sub: user.sub.clone(),
        roles: user.roles.clone(),
        channels: granted.clone(),
        queue_events: sse.queue_events,
        queue_bytes: sse.queue_bytes,
        max_per_user: state.config.limits.max_connections_per_user,
        max_total: state.config.limits.max_connections,
        // Only an HTTP/1.1 connection is ours alone to drop.
        transport: kill.map(|Extension(k)| k.0),
        replaying: matches!(replay, Some(Replay::From(_))),
    })?;
    tracing::debug!(connection = %registration.connection.id, sub = %user.sub, channels = granted.len(), "stream opened");
    if matches!(replay, Some(Replay::From(_))) {
        state.metrics.replays_started.inc();
    }

    let start = match (&replay, cursor) {
        (Some(Replay::From(_)), Some(c)) => Some(c),
        _ => Some(state.broker.head_cursor()),
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
    let ping = Box::pin(tokio::time::sleep(heartbeat));
    let expires_at = Instant::now() + Duration::from_millis(expires_in);
    let waits = {
        let shutdown = state.shutdown.clone();
        let closed = registration.connection.closed.clone();
        Box::pin(async move {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => Stop::Shutdown,
                () = closed.cancelled() => Stop::Closed,
                () = tokio::time::sleep_until(expires_at) => Stop::Expired,
            }
        })
    };
    let stream = SseStream {
        state: state.clone(),
        registration,
        rx,
        first: Some(first.freeze()),
        // A stream without a cursor starts with its channels' latest values.
        snapshot_due: replay.is_none(),
        replay,
        covered: None,
        high: HashMap::new(),
        carry: Vec::new(),
        items: Vec::new(),
        replay_failures: 0,
        waits: Some(waits),
        waits_waker: None,
        expires_at,
        ping,
        heartbeat,
        done: false,
    };
    let body = Body::from_stream(SseBody {
        stream: Some(Box::new(stream)),
        slow: None,
    });
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

/// Why a live stream stops, other than its queue.
enum Stop {
    /// The gateway is shutting down.
    Shutdown,
    /// The gateway closed this connection (revocation, slow consumer).
    Closed,
    /// The token expired.
    Expired,
}

/// What [`SseStream::next_chunk`] came to.
enum Next {
    Chunk(Bytes),
    /// The stream has ended.
    End,
    /// Nothing but live events (or a stop) comes next.
    Live,
}

/// What woke a live stream.
enum Wake {
    Stop(Stop),
    /// Items were moved into [`SseStream::items`].
    Items,
    /// The heartbeat is due.
    Tick,
}

/// The shutdown, close and expiry waits of a stream, made once: making and dropping them per
/// wake-up (a cancellation waiter registered and unlinked, a timer inserted into and removed
/// from the wheel) cost more than writing the event. Polled only when one of them may have
/// ended or the task's waker changed ([`SseStream::poll_live`]).
type Waits = Pin<Box<dyn Future<Output = Stop> + Send>>;

struct SseStream {
    state: AppState,
    registration: Registration,
    rx: Receiver,
    first: Option<Bytes>,
    replay: Option<Replay>,
    /// Events at or before this position were sent by the replay.
    covered: Option<Position>,
    /// Write the latest events of the stream's channels before anything else (a stream that
    /// opened without a cursor, or got `gap`).
    snapshot_due: bool,
    /// Per channel of a `snapshot` type: the newest position sent on it, as an event or as a
    /// snapshot. An event at or before it is skipped (a snapshot as new was sent); a snapshot
    /// at or before it is not sent (the client has that value or a newer one).
    high: HashMap<ChannelName, Position>,
    /// Queued items taken after a `gap`, written after the snapshots that follow it.
    carry: Vec<Item>,
    /// Items taken off the queue at a wake-up; kept (when small) for the next one.
    items: Vec<Item>,
    /// Failed history reads in a row (the retry backs off).
    replay_failures: u32,
    /// `None` once one of them has ended (which ends the stream).
    waits: Option<Waits>,
    /// The waker `waits` last registered.
    waits_waker: Option<Waker>,
    /// When the token expires (`waits` ends then).
    expires_at: Instant,
    /// The next heartbeat; re-armed a heartbeat period after each ping is written.
    ping: Pin<Box<Sleep>>,
    heartbeat: Duration,
    done: bool,
}

impl SseStream {
    /// The next chunk that is not a live wake-up's: the first, latest values, a replay page,
    /// the farewell; [`Next::Live`] when what comes next is for [`SseStream::poll_live_chunk`].
    async fn next_chunk(&mut self) -> Next {
        if self.done {
            return Next::End;
        }
        if let Some(first) = self.first.take() {
            return Next::Chunk(first);
        }
        loop {
            if self.done {
                return Next::End;
            }
            if self.registration.connection.closed.is_cancelled() {
                self.done = true;
                return self
                    .registration
                    .connection
                    .farewell()
                    .map_or(Next::End, Next::Chunk);
            }
            if self.snapshot_due {
                self.snapshot_due = false;
                let mut out = Out::default();
                Box::pin(self.write_snapshots(&mut out)).await;
                let mut carry = std::mem::take(&mut self.carry);
                self.render(&mut carry, &mut out);
                if out.is_empty() {
                    continue;
                }
                return Next::Chunk(out.freeze());
            }
            if let Some(replay) = self.replay.take() {
                let page = Box::pin(self.replay_page(replay)).await;
                if page.is_empty() {
                    continue;
                }
                return Next::Chunk(page);
            }
            return Next::Live;
        }
    }

    /// One page of history; leaves `self.replay` set while more remains.
    async fn replay_page(&mut self, replay: Replay) -> Bytes {
        let channels = self.registration.connection.channels();
        let mut out = Out::default();
        let after = match replay {
            Replay::Foreign => {
                self.state.metrics.gaps_sent.inc();
                out.extend_from_slice(&render_control(
                    "gap",
                    &Gap {
                        channels: &channels,
                    },
                ));
                // Nothing of this log was seen: the latest values, then live events from the
                // registration on.
                self.write_snapshots(&mut out).await;
                return out.freeze();
            }
            Replay::From(pos) => pos,
        };
        let set: HashSet<ChannelName> = channels.iter().cloned().collect();
        match self.state.broker.read_after(after, &set, REPLAY_PAGE).await {
            Ok(batch) => {
                self.replay_failures = 0;
                if batch.gap {
                    self.state.metrics.gaps_sent.inc();
                    out.extend_from_slice(&render_control(
                        "gap",
                        &Gap {
                            channels: &channels,
                        },
                    ));
                    // Read after the page: the replay then skips what they cover.
                    self.write_snapshots(&mut out).await;
                }
                let conn = self.registration.connection.clone();
                let mut written = 0usize;
                for ev in &batch.events {
                    if ev.admits(&conn.sub, &conn.roles) && self.note_event(ev) {
                        out.put_shared(&ev.frame);
                        written += 1;
                    }
                }
                // `last` never passes the log's head: a cursor from beyond it (a lost log) must not hide
                // the live events that follow.
                self.covered = Some(batch.last);
                // Go live only once the replay has caught up with a small last page: the page is
                // still being written when live events start to count against the queue, so a
                // large one (or a queue already full of events the replay covered) would close a
                // client that reads at full speed as a slow consumer.
                let sse = &self.state.config.sse;
                let small =
                    written <= (sse.queue_events / 2).max(1) && out.len() <= sse.queue_bytes / 2;
                if batch.done && small && conn.finish_replay() {
                    // Live from here on: nothing was dropped since the last page (else
                    // `finish_replay` would have said so), so the queue holds every event after
                    // that page's read. Write them now, leaving the queue empty.
                    let mut items = Vec::new();
                    while let Some(item) = self.rx.try_recv() {
                        items.push(item);
                    }
                    self.render(&mut items, &mut out);
                } else {
                    // Queued events are in the log too and a later page reads them: drop them to
                    // keep room in the queue.
                    self.replay = Some(Replay::From(batch.last));
                    self.drain_during_replay(&mut out);
                }
            }
            Err(e) => {
                // The log cannot be read just now (Redis down, or a read that timed out while
                // thousands of streams resume at once). The cursor is still good: wait and read
                // again. A `gap` here would make the app re-fetch state although nothing is lost;
                // live events meanwhile are dropped and read from the log (the stream is still
                // replaying). Heartbeats go on.
                self.replay_failures = self.replay_failures.saturating_add(1);
                tracing::warn!(error = %e, attempt = self.replay_failures, "replay read failed; retrying");
                self.replay = Some(Replay::From(after));
                let base = (100u64 << self.replay_failures.min(5)).min(3000);
                // Jitter, so the streams of one outage do not retry in lockstep.
                let backoff =
                    Duration::from_millis(base / 2 + rand::random::<u64>() % (base / 2 + 1));
                let conn = self.registration.connection.clone();
                tokio::select! {
                    () = self.state.shutdown.cancelled() => self.done = true,
                    () = conn.closed.cancelled() => self.done = true,
                    () = tokio::time::sleep(backoff) => {}
                    () = self.ping.as_mut() => {
                        self.ping.as_mut().reset(Instant::now() + self.heartbeat);
                        // A re-armed timer holds no waker until polled: have the live loop
                        // poll it again.
                        self.waits_waker = None;
                        out.extend_from_slice(b": ping\n\n");
                    }
                }
                self.drain_during_replay(&mut out);
            }
        }
        out.freeze()
    }

    /// While more history remains, live events queued meanwhile are in the log too and will be
    /// read by a later page: drop them to keep room in the queue. (Those that found it full
    /// were dropped by the hub, which marked the connection lagged rather than slow: a replay
    /// is paced by the client's reading, and the log holds what it has not read yet.)
    /// Control frames are kept.
    fn drain_during_replay(&mut self, out: &mut Out) {
        let conn = self.registration.connection.clone();
        while let Some(item) = self.rx.try_recv() {
            conn.dequeued(&item);
            match item {
                Item::Event(_) => {}
                Item::Control(bytes) => out.put_shared(&bytes),
                Item::Gap(bytes) => {
                    out.extend_from_slice(&bytes);
                    self.snapshot_due = true;
                }
                Item::Snapshot(ev) => self.write_snapshot(&ev, out),
            }
        }
    }

    /// Writes the latest event of each of the stream's channels that has one (and that the
    /// client may see and has nothing as new of). A log that cannot be read now is logged: the
    /// live events that follow are still right, only the current values are missing.
    async fn write_snapshots(&mut self, out: &mut Out) {
        let channels = self.registration.connection.channels();
        if !channels
            .iter()
            .any(|c| self.state.config.channel_types.snapshot_ttl(c).is_some())
        {
            return;
        }
        match self.state.broker.latest(&channels).await {
            Ok(latest) => {
                for ev in &latest {
                    self.write_snapshot(ev, out);
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not read latest events; none sent"),
        }
    }

    /// Writes `ev` as its channel's latest value, when the stream still carries the channel,
    /// the audience admits the user and nothing as new was sent on it.
    fn write_snapshot(&mut self, ev: &Arc<Event>, out: &mut Out) {
        let conn = &self.registration.connection;
        if !ev.admits(&conn.sub, &conn.roles)
            || self
                .high
                .get(&ev.channel)
                .is_some_and(|h| *h >= ev.position)
            || !conn.channels().contains(&ev.channel)
        {
            return;
        }
        self.remember(ev);
        out.put_shared(ev.snapshot_frame());
    }

    /// Records an event about to be written; false when a snapshot as new was sent on its
    /// channel (then the event is not written).
    fn note_event(&mut self, ev: &Arc<Event>) -> bool {
        if self
            .high
            .get(&ev.channel)
            .is_some_and(|h| *h >= ev.position)
        {
            return false;
        }
        if self
            .state
            .config
            .channel_types
            .snapshot_ttl(&ev.channel)
            .is_some()
        {
            self.remember(ev);
        }
        true
    }

    fn remember(&mut self, ev: &Arc<Event>) {
        self.high.insert(ev.channel.clone(), ev.position);
        // Bounded by the channels the stream carries: forget channels it no longer does.
        let max = self.state.config.limits.max_channels_per_connection;
        if self.high.len() > max.saturating_mul(2).max(16) {
            let now: HashSet<ChannelName> = self
                .registration
                .connection
                .channels()
                .into_iter()
                .collect();
            self.high.retain(|c, _| now.contains(c));
        }
    }

    fn render(&mut self, items: &mut Vec<Item>, out: &mut Out) {
        let mut items = items.drain(..);
        while let Some(item) = items.next() {
            self.registration.connection.dequeued(&item);
            match item {
                Item::Event(ev) => {
                    if self.covered.is_some_and(|c| ev.position <= c) || !self.note_event(&ev) {
                        continue;
                    }
                    self.write_event(&ev, out);
                }
                Item::Control(bytes) => out.put_shared(&bytes),
                Item::Gap(bytes) => {
                    // The latest values come right after the gap; what was queued behind it is
                    // written after them (`next_chunk`).
                    out.extend_from_slice(&bytes);
                    self.snapshot_due = true;
                    self.carry.extend(items.by_ref());
                }
                Item::Snapshot(ev) => self.write_snapshot(&ev, out),
            }
        }
    }

    fn write_event(&self, ev: &Arc<Event>, out: &mut Out) {
        out.put_shared(&ev.frame);
        self.state
            .metrics
            .publish_to_write_seconds
            .observe(ev.accepted_at.elapsed().as_secs_f64());
    }

    /// Polls, in order of precedence, the stops, the queue and the heartbeat.
    fn poll_live(&mut self, cx: &mut Context<'_>) -> Poll<Wake> {
        // Polling the waits relocks each token's waiter list, and polling a timer re-registers
        // its waker. Once they hold this task's waker they wake it when they end, so they are
        // polled again only when one may have ended (flags and the clock, which are cheap to
        // read) or the waker changed.
        let registered = self
            .waits_waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()));
        let now = Instant::now();
        if let Some(waits) = self.waits.as_mut() {
            if !registered
                || self.state.shutdown.is_cancelled()
                || self.registration.connection.closed.is_cancelled()
                || now >= self.expires_at
            {
                if let Poll::Ready(stop) = waits.as_mut().poll(cx) {
                    self.waits = None;
                    self.waits_waker = None;
                    return Poll::Ready(Wake::Stop(stop));
                }
            }
        }
        if self
            .rx
            .poll_recv_many(cx, &mut self.items, COALESCE)
            .is_ready()
        {
            // The heartbeat may not have seen this waker yet: `waits_waker` is left as it was.
            return Poll::Ready(Wake::Items);
        }
        let tick =
            (!registered || now >= self.ping.deadline()) && self.ping.as_mut().poll(cx).is_ready();
        if tick {
            // Delayed, not caught up: the next ping is a full period after this one.
            self.ping.as_mut().reset(now + self.heartbeat);
            // A re-armed timer holds no waker until polled.
            let _ = self.ping.as_mut().poll(cx);
        }
        if !registered {
            self.waits_waker = Some(cx.waker().clone());
        }
        if tick {
            Poll::Ready(Wake::Tick)
        } else {
            Poll::Pending
        }
    }

    /// Renders what is in `self.items`, keeping the (emptied) buffer when it is small.
    fn render_items(&mut self, out: &mut Out) {
        let mut items = std::mem::take(&mut self.items);
        self.render(&mut items, out);
        if items.capacity() <= ITEMS_KEEP {
            self.items = items;
        }
    }

    /// Whether the next chunk comes from the live queue (or a stop), with nothing else due
    /// first: the checks of [`SseStream::next_chunk`] before it answers [`Next::Live`].
    fn is_live(&self) -> bool {
        !self.done
            && self.first.is_none()
            && !self.snapshot_due
            && self.replay.is_none()
            && !self.registration.connection.closed.is_cancelled()
    }

    /// Waits for the queue, the heartbeat or a stop (an empty chunk: every queued event was
    /// already sent).
    fn poll_live_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        if self.waits.is_none() {
            // A stop was seen already (it ends the stream).
            self.done = true;
            return Poll::Ready(None);
        }
        let Poll::Ready(wake) = self.poll_live(cx) else {
            return Poll::Pending;
        };
        Poll::Ready(self.live_chunk(wake))
    }

    fn live_chunk(&mut self, wake: Wake) -> Option<Bytes> {
        let mut out = Out::default();
        match wake {
            Wake::Stop(Stop::Shutdown) => {
                // Flush what is queued, then close: clients resume by cursor.
                while let Some(item) = self.rx.try_recv() {
                    self.items.push(item);
                }
                self.render_items(&mut out);
                self.done = true;
            }
            Wake::Stop(Stop::Closed) => {
                self.done = true;
                // Closed on purpose (revocation): say why; else (slow consumer) just end.
                return self.registration.connection.farewell();
            }
            Wake::Stop(Stop::Expired) => {
                out.extend_from_slice(&render_control("expired", &serde_json::json!({})));
                self.done = true;
            }
            Wake::Items => {
                self.render_items(&mut out);
                if out.is_empty() {
                    return Some(Bytes::from_static(b""));
                }
            }
            Wake::Tick => out.extend_from_slice(b": ping\n\n"),
        }
        if out.is_empty() {
            return None;
        }
        Some(out.freeze())
    }
}

/// The response body: a live wake-up is served in place, by [`SseStream::poll_live_chunk`];
/// anything else (the first chunk, latest values, replay pages, the end) by
/// [`SseStream::next_chunk`], which takes the stream and gives it back. (A stream built with
/// `unfold` moved its whole state into and out of a new future at every chunk.) An idle
/// stream is live: no future is held for it.
struct SseBody {
    /// `None` while `slow` has it, and once the stream has ended.
    stream: Option<Box<SseStream>>,
    slow: Option<SlowChunk>,
}

type SlowChunk = Pin<Box<dyn Future<Output = (Box<SseStream>, Next)> + Send>>;

impl futures_util::Stream for SseBody {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            let chunk = if let Some(slow) = this.slow.as_mut() {
                let Poll::Ready((stream, next)) = slow.as_mut().poll(cx) else {
                    return Poll::Pending;
                };
                this.slow = None;
                this.stream = Some(stream);
                match next {
                    Next::Chunk(chunk) => Some(chunk),
                    Next::End => None,
                    Next::Live => continue,
                }
            } else {
                let Some(stream) = this.stream.as_mut() else {
                    return Poll::Ready(None);
                };
                if !stream.is_live() {
                    let Some(mut stream) = this.stream.take() else {
                        return Poll::Ready(None);
                    };
                    this.slow = Some(Box::pin(async move {
                        let next = stream.next_chunk().await;
                        (stream, next)
                    }));
                    continue;
                }
                let Poll::Ready(chunk) = stream.poll_live_chunk(cx) else {
                    return Poll::Pending;
                };
                match chunk {
                    // Every queued event was already replayed: wait for more.
                    Some(chunk) if chunk.is_empty() => continue,
                    other => other,
                }
            };
            let Some(chunk) = chunk else {
                this.stream = None;
                return Poll::Ready(None);
            };
            if let Some(stream) = this.stream.as_ref() {
                stream
                    .state
                    .metrics
                    .sse_bytes_written
                    .inc_by(chunk.len() as u64);
            }
            return Poll::Ready(Some(Ok(chunk)));
        }
    }
}

/// A chunk being rendered. A chunk of one shared frame (the usual live wake-up: one event) is
/// that frame itself, not a copy; a second piece copies both into a buffer.
#[derive(Default)]
struct Out {
    shared: Option<Bytes>,
    buf: BytesMut,
}

impl Out {
    /// Appends a frame that is shared (an event's): kept as is while it is the only piece.
    fn put_shared(&mut self, frame: &Bytes) {
        if self.shared.is_none() && self.buf.is_empty() {
            self.shared = Some(frame.clone());
        } else {
            self.extend_from_slice(frame);
        }
    }

    fn extend_from_slice(&mut self, bytes: &[u8]) {
        if let Some(shared) = self.shared.take() {
            self.buf.reserve(shared.len() + bytes.len());
            self.buf.extend_from_slice(&shared);
        }
        self.buf.extend_from_slice(bytes);
    }

    fn len(&self) -> usize {
        self.shared.as_ref().map_or(self.buf.len(), Bytes::len)
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn freeze(self) -> Bytes {
        match self.shared {
            Some(shared) => shared,
            None => self.buf.freeze(),
        }
    }
}

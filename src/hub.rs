//! Local fan-out: channel → subscribers on this node, each with a bounded queue.
//!
//! An event's frame is rendered once and shared (`Arc<Event>`); dispatch looks up the channel's
//! subscribers in O(1) and never blocks: a subscriber whose queue is full is closed (slow
//! consumer) and resumes by cursor.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::channel::ChannelName;
use crate::error::GatewayError;
use crate::event::{Audience, Event};
use crate::metrics::Metrics;

/// What a connection's queue carries.
#[derive(Debug)]
pub enum Item {
    /// A published event (shared).
    Event(Arc<Event>),
    /// A control frame for this connection only.
    Control(Bytes),
    /// `event: gap` for this connection: the stream sends its channels' latest events next.
    Gap(Bytes),
    /// A channel's latest event, for a channel just added to this connection (written as its
    /// snapshot frame, unless the stream already sent that channel something as new).
    Snapshot(Arc<Event>),
}

impl Item {
    /// The bytes it accounts for in its queue: its frame's, and at least one, so that a queue
    /// that accounts no bytes holds no item ([`Receiver::poll_recv_many`] relies on it).
    fn len(&self) -> usize {
        let len = match self {
            Item::Event(e) => e.frame.len(),
            Item::Control(b) | Item::Gap(b) => b.len(),
            Item::Snapshot(e) => e.snapshot_frame().len(),
        };
        len.max(1)
    }
}

/// Where a connection's events come from; decides what a full queue means.
///
/// While a stream replays history, a full queue is not fatal: the event is in the log, and a
/// later page reads it. Once live, a full queue means the client reads too slowly: the stream
/// is closed (slow consumer) and the client resumes by cursor. A control frame that does not
/// fit is always fatal (it is in no log).
///
/// ```text
///            offer: queue full             finish_replay → false: read the log on
/// Replaying ──────────────────▶ Lagged ──────────────────────────────────────▶ Replaying
///     │ finish_replay → true
///     ▼
///   Live
///     │ offer: queue full
///     ▼
///  closed (slow consumer)
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Delivery {
    /// Events come from the hub, through the queue.
    Live = 0,
    /// The stream is reading the log; queued events are dropped by it (a later page reads
    /// them) until it has caught up.
    Replaying = 1,
    /// At least one event was dropped for want of room: the stream must read the log on.
    Lagged = 2,
}

impl Delivery {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Replaying,
            2 => Self::Lagged,
            _ => Self::Live,
        }
    }
}

/// One open SSE stream, as seen by the hub.
#[derive(Debug)]
pub struct Connection {
    /// Unguessable id, used by the subscriptions endpoint.
    pub id: String,
    /// The user (`sub`).
    pub sub: String,
    /// The user's roles, for audience checks.
    pub roles: Vec<String>,
    /// When it opened.
    pub connected_at: SystemTime,
    channels: Mutex<ChannelSet>,
    queue: Queue,
    queued_bytes: AtomicUsize,
    max_bytes: usize,
    delivery: AtomicU8,
    /// Cancelled when the gateway closes this connection.
    pub closed: CancellationToken,
    /// Cancelled to drop the underlying TCP connection (HTTP/1.1), so a stalled reader's
    /// socket buffers are released too.
    transport: Option<CancellationToken>,
    /// The frame the stream writes last when the gateway closes it on purpose (`revoked`),
    /// set before `closed` is cancelled. Kept out of the queue: it is written even when the
    /// queue is full.
    farewell: OnceLock<Bytes>,
}

impl Connection {
    /// The frame to end the stream with, when the gateway closed it on purpose.
    pub fn farewell(&self) -> Option<Bytes> {
        self.farewell.get().cloned()
    }

    /// The channels this connection currently receives.
    pub fn channels(&self) -> Vec<ChannelName> {
        // No invariant spans these short critical sections: a poisoned lock is recovered.
        self.channels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }

    /// Bytes of frames queued and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes.load(Ordering::Relaxed)
    }

    /// Accounts for an item taken off the queue.
    pub fn dequeued(&self, item: &Item) {
        self.queued_bytes.fetch_sub(item.len(), Ordering::Relaxed);
    }

    /// The current delivery state.
    pub fn delivery(&self) -> Delivery {
        Delivery::from_u8(self.delivery.load(Ordering::Acquire))
    }

    fn transition(&self, from: Delivery, to: Delivery) -> Result<(), Delivery> {
        self.delivery
            .compare_exchange(from as u8, to as u8, Ordering::AcqRel, Ordering::Acquire)
            .map(|_| ())
            .map_err(Delivery::from_u8)
    }

    /// Ends the replay phase (`Replaying` → `Live`). Returns false when live events were
    /// dropped meanwhile (`Lagged` → `Replaying`): the caller reads the log on from where it
    /// is and calls this again.
    pub fn finish_replay(&self) -> bool {
        match self.transition(Delivery::Replaying, Delivery::Live) {
            Err(Delivery::Lagged) => {
                // Only this stream's own task leaves `Lagged`; the hub never moves it back.
                self.delivery
                    .store(Delivery::Replaying as u8, Ordering::Release);
                false
            }
            // Already live (a stream that never replayed), or switched just now.
            Ok(()) | Err(Delivery::Live | Delivery::Replaying) => true,
        }
    }

    /// Queues an item without waiting. Returns false when it was not queued: on overflow the
    /// connection is closed (slow consumer), except for an event while replaying.
    fn offer(&self, item: Item, metrics: &Metrics) -> bool {
        let len = item.len();
        let is_event = matches!(item, Item::Event(_));
        // Reserve the bytes first, so the reader's decrement can never run before the increment.
        let before = self.queued_bytes.fetch_add(len, Ordering::Relaxed);
        if before.saturating_add(len) <= self.max_bytes && self.queue.push(item) {
            return true;
        }
        self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
        {
            // While replaying, the event is in the log and a later page reads it; a live
            // stream whose queue overflows is a slow consumer.
            let falls_back = is_event
                && match self.transition(Delivery::Replaying, Delivery::Lagged) {
                    Ok(()) | Err(Delivery::Lagged) => true,
                    Err(Delivery::Live | Delivery::Replaying) => false,
                };
            if !falls_back {
                self.kick_slow_consumer(metrics);
            }
        }
        false
    }

    fn kick_slow_consumer(&self, metrics: &Metrics) {
        if self.closed.is_cancelled() {
            return;
        }
        metrics.slow_consumer_disconnects.inc();
        tracing::info!(connection = %self.id, sub = %self.sub, "slow consumer: queue full, closing stream");
        self.closed.cancel();
        if let Some(t) = &self.transport {
            t.cancel();
        }
    }
}

/// A connection's channels, sorted: a vector sized to its few entries (a B-tree node would take
/// a couple of hundred bytes for a stream of one channel).
#[derive(Debug)]
struct ChannelSet(Vec<ChannelName>);

impl ChannelSet {
    fn new(channels: &[ChannelName]) -> Self {
        let mut v = channels.to_vec();
        v.sort();
        v.dedup();
        Self(v)
    }

    fn contains(&self, ch: &ChannelName) -> bool {
        self.0.binary_search(ch).is_ok()
    }

    /// False when it was there already.
    fn insert(&mut self, ch: ChannelName) -> bool {
        match self.0.binary_search(&ch) {
            Ok(_) => false,
            Err(at) => {
                self.0.insert(at, ch);
                true
            }
        }
    }

    /// False when it was not there.
    fn remove(&mut self, ch: &ChannelName) -> bool {
        match self.0.binary_search(ch) {
            Ok(at) => {
                self.0.remove(at);
                true
            }
            Err(_) => false,
        }
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn iter(&self) -> std::slice::Iter<'_, ChannelName> {
        self.0.iter()
    }
}

/// A connection's bounded queue: one consumer (its stream), many producers (dispatch, control
/// frames). Holds no allocation while empty — most streams are idle most of the time — and
/// gives back what a burst grew.
#[derive(Debug)]
struct Queue {
    items: Mutex<VecDeque<Item>>,
    /// The consumer's waker, woken on each push. The consumer registers it before its last
    /// look at the queue, so a push between that look and its wait is not lost. (Cheaper per
    /// wake-up than a `Notify`, whose waiter list is locked and relinked on every wait.)
    ready: AtomicWaker,
    capacity: usize,
}

/// Capacity kept after the queue has been drained; a larger one is released.
const QUEUE_KEEP: usize = 16;

impl Queue {
    fn new(capacity: usize) -> Self {
        Self {
            items: Mutex::new(VecDeque::new()),
            ready: AtomicWaker::new(),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Item>> {
        // No invariant spans these short critical sections: a poisoned lock is recovered.
        self.items
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Appends `item`; false when the queue is full.
    fn push(&self, item: Item) -> bool {
        {
            let mut items = self.lock();
            if items.len() >= self.capacity {
                return false;
            }
            items.push_back(item);
        }
        self.ready.wake();
        true
    }

    /// Moves up to `limit` items into `out`; returns how many.
    fn take(&self, out: &mut Vec<Item>, limit: usize) -> usize {
        let mut items = self.lock();
        let n = items.len().min(limit);
        out.extend(items.drain(..n));
        if items.is_empty() && items.capacity() > QUEUE_KEEP {
            *items = VecDeque::new();
        }
        n
    }
}

/// The consuming end of a connection's queue (the stream's).
pub struct Receiver {
    connection: Arc<Connection>,
}

impl Receiver {
    /// The next queued item, without waiting.
    pub fn try_recv(&mut self) -> Option<Item> {
        let queue = &self.connection.queue;
        let mut items = queue.lock();
        let item = items.pop_front();
        if items.is_empty() && items.capacity() > QUEUE_KEEP {
            *items = VecDeque::new();
        }
        item
    }

    /// Waits for at least one item, then moves up to `limit` queued items into `out` (all
    /// that are waiting, bounded): one wake-up and one write carry a burst. Returns how many.
    /// Cancel-safe: nothing is taken unless it returns.
    pub async fn recv_many(&mut self, out: &mut Vec<Item>, limit: usize) -> usize {
        std::future::poll_fn(|cx| self.poll_recv_many(cx, out, limit)).await
    }

    /// [`Receiver::recv_many`] as a poll: ready with how many items were moved into `out`
    /// (at least one), else pending with the task's waker registered.
    pub fn poll_recv_many(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut Vec<Item>,
        limit: usize,
    ) -> Poll<usize> {
        let queue = &self.connection.queue;
        // No bytes accounted means no item queued (each accounts at least one, reserved before
        // it is pushed and released after it was taken): an idle stream's wake-up checks that
        // without the lock. The waker is registered before the second look, so a push after it
        // wakes the task.
        if self.connection.queued_bytes() == 0 {
            queue.ready.register(cx.waker());
            if self.connection.queued_bytes() == 0 {
                return Poll::Pending;
            }
        }
        let n = queue.take(out, limit.max(1));
        if n > 0 {
            return Poll::Ready(n);
        }
        queue.ready.register(cx.waker());
        // A push between the first look and the registration woke no one: look again.
        match queue.take(out, limit.max(1)) {
            0 => Poll::Pending,
            n => Poll::Ready(n),
        }
    }
}

/// A JSON summary of a connection, for `/admin/connections`.
#[derive(Debug, Serialize)]
pub struct ConnectionInfo {
    /// The id the stream's `ready` event announced.
    pub connection_id: String,
    /// The subscriber's JWT `sub`.
    pub sub: String,
    /// Channels the stream carries now.
    pub channels: Vec<ChannelName>,
    /// Seconds since the Unix epoch.
    pub connected_at: u64,
    /// Bytes waiting to be written.
    pub queued_bytes: usize,
}

#[derive(Default)]
struct Inner {
    by_channel: HashMap<ChannelName, HashMap<String, Arc<Connection>>>,
    connections: HashMap<String, Arc<Connection>>,
    per_user: HashMap<String, usize>,
}

/// The registry of this node's connections and their channels.
pub struct Hub {
    inner: RwLock<Inner>,
    metrics: Arc<Metrics>,
}

/// Parameters of a new connection.
pub struct NewConnection {
    /// The subscriber's JWT `sub` (counted against `max_per_user`, matched by audiences).
    pub sub: String,
    /// The subscriber's roles (matched by audiences).
    pub roles: Vec<String>,
    /// Initial channels.
    pub channels: Vec<ChannelName>,
    /// Queue bound in items.
    pub queue_events: usize,
    /// Queue bound in bytes.
    pub queue_bytes: usize,
    /// Per-user limit.
    pub max_per_user: usize,
    /// Limit of open streams on this node.
    pub max_total: usize,
    /// Token to drop the transport connection.
    pub transport: Option<CancellationToken>,
    /// The stream starts by replaying history (see [`Connection::finish_replay`]).
    pub replaying: bool,
}

/// Removes a connection from the hub when dropped.
pub struct Registration {
    hub: Arc<Hub>,
    /// The registered connection.
    pub connection: Arc<Connection>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.remove(&self.connection);
    }
}

impl Hub {
    /// An empty hub.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            inner: RwLock::new(Inner::default()),
            metrics,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a connection; live events for its channels queue up from now on.
    ///
    /// # Errors
    /// [`GatewayError::TooManyConnections`] when the user is at the limit.
    pub fn register(
        self: &Arc<Self>,
        new: NewConnection,
    ) -> Result<(Registration, Receiver), GatewayError> {
        let connection = Arc::new(Connection {
            id: random_id(),
            sub: new.sub,
            roles: new.roles,
            connected_at: SystemTime::now(),
            channels: Mutex::new(ChannelSet::new(&new.channels)),
            queue: Queue::new(new.queue_events),
            queued_bytes: AtomicUsize::new(0),
            delivery: AtomicU8::new(if new.replaying {
                Delivery::Replaying
            } else {
                Delivery::Live
            } as u8),
            max_bytes: new.queue_bytes,
            closed: CancellationToken::new(),
            transport: new.transport,
            farewell: OnceLock::new(),
        });
        {
            let mut inner = self.write();
            if inner.connections.len() >= new.max_total {
                return Err(GatewayError::Unavailable(format!(
                    "this node holds its limit of {} streams; retry on another node or later",
                    new.max_total
                )));
            }
            let count = inner.per_user.entry(connection.sub.clone()).or_default();
            if *count >= new.max_per_user {
                return Err(GatewayError::TooManyConnections {
                    limit: new.max_per_user,
                });
            }
            *count += 1;
            inner
                .connections
                .insert(connection.id.clone(), connection.clone());
            for ch in &new.channels {
                inner
                    .by_channel
                    .entry(ch.clone())
                    .or_default()
                    .insert(connection.id.clone(), connection.clone());
            }
        }
        self.metrics.connections.inc();
        self.metrics.subscriptions.inc_by(new.channels.len() as i64);
        let rx = Receiver {
            connection: connection.clone(),
        };
        Ok((
            Registration {
                hub: self.clone(),
                connection,
            },
            rx,
        ))
    }

    fn remove(&self, connection: &Arc<Connection>) {
        let mut inner = self.write();
        if inner.connections.remove(&connection.id).is_none() {
            return;
        }
        // Read under the hub lock: channel changes also hold it, so none can slip past.
        let channels = connection.channels();
        if let Some(count) = inner.per_user.get_mut(&connection.sub) {
            *count -= 1;
            if *count == 0 {
                inner.per_user.remove(&connection.sub);
            }
        }
        for ch in &channels {
            if let Some(subs) = inner.by_channel.get_mut(ch) {
                subs.remove(&connection.id);
                if subs.is_empty() {
                    inner.by_channel.remove(ch);
                }
            }
        }
        drop(inner);
        self.metrics.connections.dec();
        self.metrics.subscriptions.dec_by(channels.len() as i64);
    }

    /// Hands an event to every subscriber of its channel that its audience admits.
    /// Returns how many queues took it.
    pub fn dispatch(&self, event: &Arc<Event>) -> u32 {
        let inner = self.read();
        let Some(subs) = inner.by_channel.get(&event.channel) else {
            return 0;
        };
        let mut delivered = 0;
        let mut kicked = Vec::new();
        for conn in subs.values() {
            if !event.admits(&conn.sub, &conn.roles) {
                continue;
            }
            if conn.offer(Item::Event(event.clone()), &self.metrics) {
                delivered += 1;
            } else if conn.closed.is_cancelled() {
                kicked.push(conn.clone());
            }
        }
        drop(inner);
        // Unregister closed connections now: a stalled HTTP/2 stream is not polled, so its own
        // clean-up may not run until the client reads again.
        for conn in &kicked {
            self.remove(conn);
        }
        self.metrics.events_delivered.inc_by(u64::from(delivered));
        delivered
    }

    /// Queues a control frame for one connection; unregisters it when its queue overflows.
    pub fn send_control(&self, connection: &Arc<Connection>, frame: Bytes) {
        self.send(connection, Item::Control(frame));
    }

    /// Queues a channel's latest event for one connection (like a control frame, it is in no
    /// log this stream reads, so a queue overflow closes the connection).
    pub fn send_snapshot(&self, connection: &Arc<Connection>, event: Arc<Event>) {
        self.send(connection, Item::Snapshot(event));
    }

    fn send(&self, connection: &Arc<Connection>, item: Item) {
        if !connection.offer(item, &self.metrics) && connection.closed.is_cancelled() {
            self.remove(connection);
        }
    }

    /// The open connections of user `sub` on this node.
    pub fn user_connections(&self, sub: &str) -> Vec<Arc<Connection>> {
        let inner = self.read();
        if !inner.per_user.contains_key(sub) {
            return Vec::new();
        }
        inner
            .connections
            .values()
            .filter(|c| c.sub == sub)
            .cloned()
            .collect()
    }

    /// Closes a connection on purpose: unregisters it at once (no event is queued for it any
    /// more) and ends its stream with `frame` (e.g. `event: revoked`), written even when its
    /// queue is full. Returns false when it was closed already.
    pub fn close_with(&self, connection: &Arc<Connection>, frame: Bytes) -> bool {
        if connection.closed.is_cancelled() {
            return false;
        }
        let _ = connection.farewell.set(frame);
        // The transport is left up (unlike a slow consumer's): the stream writes the farewell
        // and ends its response.
        connection.closed.cancel();
        self.remove(connection);
        true
    }

    /// Looks up a connection by id.
    pub fn connection(&self, id: &str) -> Option<Arc<Connection>> {
        self.read().connections.get(id).cloned()
    }

    /// Open connections.
    pub fn connection_count(&self) -> usize {
        self.read().connections.len()
    }

    /// Channels with at least one subscriber.
    pub fn channel_count(&self) -> usize {
        self.read().by_channel.len()
    }

    /// Summaries of all connections.
    pub fn connections(&self) -> Vec<ConnectionInfo> {
        let conns: Vec<Arc<Connection>> = self.read().connections.values().cloned().collect();
        let mut out: Vec<ConnectionInfo> = conns
            .iter()
            .map(|c| ConnectionInfo {
                connection_id: c.id.clone(),
                sub: c.sub.clone(),
                channels: c.channels(),
                connected_at: c
                    .connected_at
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
                queued_bytes: c.queued_bytes(),
            })
            .collect();
        out.sort_by_key(|c| c.connected_at);
        out
    }

    /// Channel → subscriber count.
    pub fn channels(&self) -> Vec<(ChannelName, usize)> {
        let mut out: Vec<_> = self
            .read()
            .by_channel
            .iter()
            .map(|(c, s)| (c.clone(), s.len()))
            .collect();
        out.sort();
        out
    }

    /// Number of local subscribers an event on `channel` with `audience` would reach now.
    pub fn subscriber_count(&self, channel: &ChannelName, audience: Option<&Audience>) -> usize {
        self.read().by_channel.get(channel).map_or(0, |subs| {
            subs.values()
                .filter(|c| audience.is_none_or(|a| a.admits(&c.sub, &c.roles)))
                .count()
        })
    }

    /// Sends `event: gap` naming its channels to every connection (the log skipped entries).
    pub fn broadcast_gap(&self) {
        let conns: Vec<Arc<Connection>> = self.read().connections.values().cloned().collect();
        for conn in conns {
            let channels = conn.channels();
            let frame =
                crate::event::render_control("gap", &serde_json::json!({ "channels": channels }));
            self.send(&conn, Item::Gap(frame));
            self.metrics.gaps_sent.inc();
        }
    }

    /// Changes a connection's channels, checking its channel limit under the same lock as the
    /// change, so concurrent changes cannot take it over `max`: removes first, then adds in
    /// order while there is room. Returns the new channel list and the channels of `add`
    /// refused for lack of room.
    ///
    /// # Errors
    /// [`GatewayError::NotFound`] when the connection has closed.
    pub fn update_channels_bounded(
        &self,
        connection: &Arc<Connection>,
        add: &[ChannelName],
        remove: &[ChannelName],
        max: usize,
    ) -> Result<(Vec<ChannelName>, Vec<ChannelName>), GatewayError> {
        let mut inner = self.write();
        // A connection that closed meanwhile must not be put back into the channel map.
        if !inner.connections.contains_key(&connection.id) {
            return Err(GatewayError::NotFound("unknown connection_id".into()));
        }
        // No invariant spans these short critical sections: a poisoned lock is recovered.
        let mut set = connection
            .channels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut delta: i64 = 0;
        for ch in remove {
            if set.remove(ch) {
                delta -= 1;
                if let Some(subs) = inner.by_channel.get_mut(ch) {
                    subs.remove(&connection.id);
                    if subs.is_empty() {
                        inner.by_channel.remove(ch);
                    }
                }
            }
        }
        let mut refused = Vec::new();
        for ch in add {
            if set.contains(ch) {
                continue;
            }
            if set.len() >= max {
                refused.push(ch.clone());
                continue;
            }
            set.insert(ch.clone());
            delta += 1;
            inner
                .by_channel
                .entry(ch.clone())
                .or_default()
                .insert(connection.id.clone(), connection.clone());
        }
        self.metrics.subscriptions.inc_by(delta);
        Ok((set.iter().cloned().collect(), refused))
    }
}

/// 128 random bits, hex.
pub fn random_id() -> String {
    let n: u128 = rand::random();
    format!("{n:032x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{NewEvent, Position};

    fn hub() -> Arc<Hub> {
        Arc::new(Hub::new(Arc::new(Metrics::new())))
    }

    fn channel() -> ChannelName {
        ChannelName::parse_syntax("logs:ws1").unwrap()
    }

    fn register(hub: &Arc<Hub>, replaying: bool) -> (Registration, Receiver) {
        hub.register(NewConnection {
            sub: "alice".into(),
            roles: Vec::new(),
            channels: vec![channel()],
            queue_events: 2,
            queue_bytes: 1 << 20,
            max_per_user: 8,
            max_total: 8,
            transport: None,
            replaying,
        })
        .unwrap()
    }

    fn event(n: u64) -> Arc<Event> {
        let new = NewEvent {
            channel: channel(),
            event: "message".into(),
            payload: format!("{{\"n\":{n}}}"),
            idempotency_key: None,
            audience: None,
        };
        let position = Position { major: 1, minor: n };
        Arc::new(Event::new(position, n.to_string(), &new, 0))
    }

    #[test]
    fn a_replaying_stream_that_overflows_is_lagged_not_closed() {
        let hub = hub();
        let (reg, _rx) = register(&hub, true);
        let conn = &reg.connection;
        assert_eq!(conn.delivery(), Delivery::Replaying);
        assert_eq!(hub.dispatch(&event(1)), 1);
        assert_eq!(hub.dispatch(&event(2)), 1);
        // The queue holds two: the third is dropped, and the replay must read on.
        assert_eq!(hub.dispatch(&event(3)), 0);
        assert_eq!(conn.delivery(), Delivery::Lagged);
        assert!(!conn.closed.is_cancelled());
        assert_eq!(hub.connection_count(), 1);
        // Lagged: finishing fails once and goes back to replaying; the next attempt succeeds.
        assert!(!conn.finish_replay());
        assert_eq!(conn.delivery(), Delivery::Replaying);
        assert!(conn.finish_replay());
        assert_eq!(conn.delivery(), Delivery::Live);
    }

    #[test]
    fn a_live_stream_that_overflows_is_closed_as_a_slow_consumer() {
        let hub = hub();
        let (reg, _rx) = register(&hub, false);
        let conn = reg.connection.clone();
        assert_eq!(conn.delivery(), Delivery::Live);
        hub.dispatch(&event(1));
        hub.dispatch(&event(2));
        assert_eq!(hub.dispatch(&event(3)), 0);
        assert!(conn.closed.is_cancelled());
        // Unregistered at once, so later events do not even look at it.
        assert_eq!(hub.connection_count(), 0);
        assert_eq!(hub.metrics.slow_consumer_disconnects.get(), 1);
    }

    #[test]
    fn a_finished_replay_is_live_and_finishing_again_is_harmless() {
        let hub = hub();
        let (reg, mut rx) = register(&hub, true);
        let conn = reg.connection.clone();
        assert!(conn.finish_replay());
        assert!(conn.finish_replay());
        hub.dispatch(&event(1));
        hub.dispatch(&event(2));
        assert_eq!(hub.dispatch(&event(3)), 0);
        assert!(
            conn.closed.is_cancelled(),
            "live overflow closes the stream"
        );
        assert!(rx.try_recv().is_some());
    }

    #[tokio::test]
    async fn a_burst_is_taken_in_one_wake_up_in_order_and_no_buffer_is_kept() {
        let hub = hub();
        let (reg, mut rx) = hub
            .register(NewConnection {
                sub: "alice".into(),
                roles: Vec::new(),
                channels: vec![channel()],
                queue_events: 64,
                queue_bytes: 1 << 20,
                max_per_user: 8,
                max_total: 8,
                transport: None,
                replaying: false,
            })
            .unwrap();
        for n in 0..40 {
            assert_eq!(hub.dispatch(&event(n)), 1);
        }
        let mut items = Vec::new();
        assert_eq!(rx.recv_many(&mut items, 256).await, 40);
        let minors: Vec<u64> = items
            .iter()
            .map(|item| match item {
                Item::Event(ev) => ev.position.minor,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(minors, (0..40).collect::<Vec<_>>());
        assert_eq!(reg.connection.queue.lock().capacity(), 0);
        // Empty: the receiver waits until the next push.
        let waiter = tokio::spawn(async move {
            let mut items = Vec::new();
            rx.recv_many(&mut items, 8).await
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        hub.dispatch(&event(40));
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 1);
    }

    #[test]
    fn control_frames_overflowing_a_replaying_stream_close_it() {
        let hub = hub();
        let (reg, _rx) = register(&hub, true);
        let conn = reg.connection.clone();
        for _ in 0..3 {
            hub.send_control(&conn, Bytes::from_static(b"event: x\ndata: {}\n\n"));
        }
        // A control frame is not in the log: it cannot be re-read, so dropping it is fatal.
        assert!(conn.closed.is_cancelled());
        assert_eq!(conn.delivery(), Delivery::Replaying);
    }
}

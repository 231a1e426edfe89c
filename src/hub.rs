//! Local fan-out: channel → subscribers on this node, each with a bounded queue.
//!
//! An event's frame is rendered once and shared (`Arc<Event>`); dispatch looks up the channel's
//! subscribers in O(1) and never blocks: a subscriber whose queue is full is closed (slow
//! consumer) and resumes by cursor.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::mpsc;
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
}

impl Item {
    fn len(&self) -> usize {
        match self {
            Item::Event(e) => e.frame.len(),
            Item::Control(b) => b.len(),
        }
    }
}

/// Delivery state of a connection (see [`Connection::finish_replay`]).
const LIVE: u8 = 0;
/// Replaying history: an event that does not fit the queue is dropped, not fatal — it is in
/// the log and the replay reads it.
const REPLAYING: u8 = 1;
/// Replaying, and at least one live event was dropped: the replay must read on.
const LAGGED: u8 = 2;

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
    channels: Mutex<BTreeSet<ChannelName>>,
    tx: mpsc::Sender<Item>,
    queued_bytes: AtomicUsize,
    max_bytes: usize,
    delivery: AtomicU8,
    /// Cancelled when the gateway closes this connection.
    pub closed: CancellationToken,
    /// Cancelled to drop the underlying TCP connection (HTTP/1.1), so a stalled reader's
    /// socket buffers are released too.
    transport: Option<CancellationToken>,
}

impl Connection {
    /// The channels this connection currently receives.
    pub fn channels(&self) -> Vec<ChannelName> {
        self.channels
            .lock()
            .map(|c| c.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Bytes of frames queued and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes.load(Ordering::Relaxed)
    }

    /// Accounts for an item taken off the queue.
    pub fn dequeued(&self, item: &Item) {
        self.queued_bytes.fetch_sub(item.len(), Ordering::Relaxed);
    }

    /// Ends the replay phase. Returns false when live events were dropped meanwhile: the
    /// caller reads the log on from where it is and calls this again.
    pub fn finish_replay(&self) -> bool {
        match self
            .delivery
            .compare_exchange(REPLAYING, LIVE, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => true,
            Err(LAGGED) => {
                self.delivery.store(REPLAYING, Ordering::Release);
                false
            }
            Err(_) => true,
        }
    }

    /// Queues an item without waiting. Returns false when it was not queued: on overflow the
    /// connection is closed (slow consumer), except for an event while replaying.
    fn offer(&self, item: Item, metrics: &Metrics) -> bool {
        let len = item.len();
        let is_event = matches!(item, Item::Event(_));
        // Reserve the bytes first, so the reader's decrement can never run before the increment.
        let before = self.queued_bytes.fetch_add(len, Ordering::Relaxed);
        let full = if before.saturating_add(len) > self.max_bytes {
            true
        } else {
            match self.tx.try_send(item) {
                Ok(()) => return true,
                Err(e) => matches!(e, mpsc::error::TrySendError::Full(_)),
            }
        };
        self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
        if full {
            let lagging = is_event
                && self
                    .delivery
                    .compare_exchange(REPLAYING, LAGGED, Ordering::AcqRel, Ordering::Acquire)
                    .map_or_else(|state| state == LAGGED, |_| true);
            if !lagging {
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

/// A JSON summary of a connection, for `/admin/connections`.
#[derive(Debug, Serialize)]
pub struct ConnectionInfo {
    /// Id.
    pub connection_id: String,
    /// User.
    pub sub: String,
    /// Channels.
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
    /// User.
    pub sub: String,
    /// Roles.
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
    ) -> Result<(Registration, mpsc::Receiver<Item>), GatewayError> {
        let (tx, rx) = mpsc::channel(new.queue_events);
        let connection = Arc::new(Connection {
            id: random_id(),
            sub: new.sub,
            roles: new.roles,
            connected_at: SystemTime::now(),
            channels: Mutex::new(new.channels.iter().cloned().collect()),
            tx,
            queued_bytes: AtomicUsize::new(0),
            delivery: AtomicU8::new(if new.replaying { REPLAYING } else { LIVE }),
            max_bytes: new.queue_bytes,
            closed: CancellationToken::new(),
            transport: new.transport,
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

    /// Changes a connection's channels; returns its new channel list.
    pub fn update_channels(
        &self,
        connection: &Arc<Connection>,
        add: &[ChannelName],
        remove: &[ChannelName],
    ) -> Option<Vec<ChannelName>> {
        let mut inner = self.write();
        // A connection that closed meanwhile must not be put back into the channel map.
        if !inner.connections.contains_key(&connection.id) {
            return None;
        }
        let Ok(mut set) = connection.channels.lock() else {
            return None;
        };
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
        for ch in add {
            if set.insert(ch.clone()) {
                delta += 1;
                inner
                    .by_channel
                    .entry(ch.clone())
                    .or_default()
                    .insert(connection.id.clone(), connection.clone());
            }
        }
        self.metrics.subscriptions.inc_by(delta);
        Some(set.iter().cloned().collect())
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
        if !connection.offer(Item::Control(frame), &self.metrics)
            && connection.closed.is_cancelled()
        {
            self.remove(connection);
        }
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
            self.send_control(&conn, frame);
        }
    }
}

/// 128 random bits, hex.
pub fn random_id() -> String {
    let n: u128 = rand::random();
    format!("{n:032x}")
}

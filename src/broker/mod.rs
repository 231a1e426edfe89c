//! The event log boundary: every accepted event gets a cursor in one ordered log, from which
//! streams resume. The in-memory log serves one node; the Redis Streams log serves several.

mod memory;
mod redis;

pub(crate) use redis::connection as redis_connection;

use std::collections::HashSet;
use std::sync::Arc;

pub use self::memory::MemoryLog;
pub use self::redis::RedisLog;
use crate::channel::ChannelName;
use crate::error::GatewayError;
use crate::event::{Event, NewEvent, Position};

/// The result of appending one event.
#[derive(Clone, Debug)]
pub struct AppendOutcome {
    /// The event's cursor (the original's, for a duplicate).
    pub cursor: String,
    /// Local subscriber queues it was handed to.
    pub delivered: u32,
    /// The idempotency key was seen within the dedupe window.
    pub duplicate: bool,
}

/// One page of history.
#[derive(Debug, Default)]
pub struct ReadBatch {
    /// Events of the requested channels, in log order.
    pub events: Vec<Arc<Event>>,
    /// Some events after the requested position are no longer retained.
    pub gap: bool,
    /// The position scanned up to (the next page starts after it).
    pub last: Position,
    /// Nothing more is retained after `last` (as of the read).
    pub done: bool,
}

/// The event log of this gateway.
#[derive(Clone)]
pub enum Broker {
    /// In-process log.
    Memory(Arc<MemoryLog>),
    /// Redis Streams log shared by several nodes.
    Redis(Arc<RedisLog>),
}

impl Broker {
    /// Appends validated events in order, atomically per event; dispatches them to local
    /// subscribers in log order.
    ///
    /// # Errors
    /// [`GatewayError::Unavailable`] when the log cannot be reached (nothing was accepted).
    pub async fn append(
        &self,
        publisher: &str,
        events: Vec<NewEvent>,
    ) -> Result<Vec<AppendOutcome>, GatewayError> {
        match self {
            Self::Memory(log) => Ok(log.append(publisher, events)),
            Self::Redis(log) => log.append(publisher, events).await,
        }
    }

    /// Parses a cursor of this log; `None` when it is foreign (another log, or a restarted
    /// in-memory log) or malformed.
    pub fn parse_cursor(&self, cursor: &str) -> Option<Position> {
        match self {
            Self::Memory(log) => log.parse_cursor(cursor),
            Self::Redis(_) => RedisLog::parse_cursor(cursor),
        }
    }

    /// Reads retained events of `channels` strictly after `after`, at most `limit`.
    ///
    /// # Errors
    /// [`GatewayError::Unavailable`] when the log cannot be reached.
    pub async fn read_after(
        &self,
        after: Position,
        channels: &HashSet<ChannelName>,
        limit: usize,
    ) -> Result<ReadBatch, GatewayError> {
        match self {
            Self::Memory(log) => Ok(log.read_after(after, channels, limit)),
            Self::Redis(log) => log.read_after(after, channels, limit).await,
        }
    }

    /// The latest event of each of `channels` whose type keeps one (`snapshot`), unexpired,
    /// in no particular order. Audience rules are the caller's to apply.
    ///
    /// # Errors
    /// [`GatewayError::Unavailable`] when the log cannot be reached.
    pub async fn latest(&self, channels: &[ChannelName]) -> Result<Vec<Arc<Event>>, GatewayError> {
        match self {
            Self::Memory(log) => Ok(log.latest(channels)),
            Self::Redis(log) => log.latest(channels).await,
        }
    }

    /// Whether the log answers.
    pub async fn ready(&self) -> bool {
        match self {
            Self::Memory(_) => true,
            Self::Redis(log) => log.ping().await,
        }
    }

    /// A cursor after which a stream registered now receives every event (the newest event
    /// this node has dispatched). It needs no round trip: a stream that opens while Redis is
    /// unreachable gets one too, and resuming from it loses nothing (or yields `gap`).
    pub fn head_cursor(&self) -> String {
        match self {
            Self::Memory(log) => log.head_cursor(),
            Self::Redis(log) => log.tail_cursor(),
        }
    }
}

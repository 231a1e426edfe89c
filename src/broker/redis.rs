//! The Redis Streams event log, shared by several gateway nodes.

use std::collections::HashSet;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{AppendOutcome, ReadBatch};
use crate::channel::ChannelName;
use crate::config::{BrokerConfig, HistoryConfig};
use crate::error::GatewayError;
use crate::event::{NewEvent, Position};
use crate::hub::Hub;
use crate::metrics::Metrics;

/// The Redis log.
pub struct RedisLog {}

impl RedisLog {
    /// Connects and starts tailing.
    ///
    /// # Errors
    /// Not yet implemented.
    pub async fn connect(
        _broker: &BrokerConfig,
        _history: &HistoryConfig,
        _hub: Arc<Hub>,
        _metrics: Arc<Metrics>,
        _shutdown: CancellationToken,
    ) -> anyhow::Result<Arc<Self>> {
        anyhow::bail!("the redis broker is not available yet")
    }

    /// Parses a Redis stream id cursor.
    pub fn parse_cursor(cursor: &str) -> Option<Position> {
        let (ms, seq) = cursor.split_once('-')?;
        Some(Position {
            major: ms.parse().ok()?,
            minor: seq.parse().ok()?,
        })
    }

    /// Appends.
    ///
    /// # Errors
    /// Unavailable.
    pub async fn append(
        &self,
        _publisher: &str,
        _events: Vec<NewEvent>,
    ) -> Result<Vec<AppendOutcome>, GatewayError> {
        Err(GatewayError::Unavailable("not implemented".into()))
    }

    /// Reads history.
    ///
    /// # Errors
    /// Unavailable.
    pub async fn read_after(
        &self,
        _after: Position,
        _channels: &HashSet<ChannelName>,
        _limit: usize,
    ) -> Result<ReadBatch, GatewayError> {
        Err(GatewayError::Unavailable("not implemented".into()))
    }

    /// Pings.
    pub async fn ping(&self) -> bool {
        false
    }

    /// Head.
    ///
    /// # Errors
    /// Unavailable.
    pub async fn head(&self) -> Result<Position, GatewayError> {
        Err(GatewayError::Unavailable("not implemented".into()))
    }
}

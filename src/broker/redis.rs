//! The Redis Streams event log, shared by several gateway nodes.
//!
//! Every node appends with one Lua script per batch (idempotency check + `XADD` + dedupe key,
//! atomically and in order) and runs ONE tailing reader (`XREAD BLOCK`) that fans new entries
//! out to its local hub. Cursors are the stream's ids, so any node resumes any cursor. When
//! Redis is unreachable, publishes fail fast with `UNAVAILABLE`, streams stay open, and the tail
//! resumes from its last id when Redis is back: nothing Redis accepted is skipped.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::streams::{StreamId, StreamRangeReply, StreamReadOptions, StreamReadReply};
use redis::AsyncCommands;
use tokio_util::sync::CancellationToken;

use super::{AppendOutcome, ReadBatch};
use crate::channel::ChannelName;
use crate::config::{BrokerConfig, HistoryConfig};
use crate::error::GatewayError;
use crate::event::{now_ms, Audience, Event, NewEvent, Position};
use crate::hub::Hub;
use crate::metrics::Metrics;

/// How long one tail `XREAD` blocks.
const TAIL_BLOCK_MS: usize = 1000;
/// Entries per tail read.
const TAIL_COUNT: usize = 1000;
/// Below this retention, trim exactly; above, approximately (cheaper).
const EXACT_TRIM_MAX: usize = 10_000;

/// Appends a batch: for each event, returns `{id, duplicate}`.
/// KEYS[1] = stream; ARGV = maxlen-mode, maxlen, dedupe-ttl, n, then 6 per event:
/// dedupe key ('' = none), channel, event, payload, audience ('' = none), ts.
/// Each entry also records its predecessor's id (`v`), so a reader can tell whether entries
/// after a cursor were trimmed (a gap) even though Redis does not record trimming.
const APPEND_SCRIPT: &str = r"
local mode, maxlen, ttl, n = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local prev = '0-0'
if #newest > 0 then
  prev = newest[1][1]
elseif redis.call('EXISTS', KEYS[1]) == 1 then
  local info = redis.call('XINFO', 'STREAM', KEYS[1])
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then prev = info[i + 1] end
  end
end
local out = {}
for i = 0, n - 1 do
  local b = 5 + i * 6
  local key = ARGV[b]
  local existing = false
  if key ~= '' then existing = redis.call('GET', key) end
  if existing then
    out[#out + 1] = {existing, 1}
  else
    local id
    if ARGV[b + 4] ~= '' then
      id = redis.call('XADD', KEYS[1], 'MAXLEN', mode, maxlen, '*', 'c', ARGV[b + 1], 'e', ARGV[b + 2], 'p', ARGV[b + 3], 't', ARGV[b + 5], 'v', prev, 'a', ARGV[b + 4])
    else
      id = redis.call('XADD', KEYS[1], 'MAXLEN', mode, maxlen, '*', 'c', ARGV[b + 1], 'e', ARGV[b + 2], 'p', ARGV[b + 3], 't', ARGV[b + 5], 'v', prev)
    end
    if key ~= '' then redis.call('SET', key, id, 'EX', ttl) end
    prev = id
    out[#out + 1] = {id, 0}
  end
end
return out
";

/// Where the retained log starts and ends.
#[derive(Clone, Copy, Debug)]
struct Bounds {
    /// The id before the oldest retained entry (as recorded when it was appended).
    before_first: Position,
    /// The oldest retained entry.
    first: Position,
    /// The newest entry.
    last: Position,
}

impl Bounds {
    /// Whether entries after `after` are missing: trimmed, or `after` is not an id of this log.
    fn missing_after(&self, after: Position) -> bool {
        (after < self.first && after != self.before_first) || after > self.last
    }
}

/// The Redis log.
pub struct RedisLog {
    client: redis::Client,
    conn: ConnectionManager,
    stream_key: String,
    dedupe_prefix: String,
    script: redis::Script,
    max_events: usize,
    max_age_ms: u64,
    dedupe_secs: u64,
    timeout: Duration,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    healthy: AtomicBool,
}

fn unavailable(e: &redis::RedisError) -> GatewayError {
    GatewayError::Unavailable(format!("redis: {e}"))
}

/// Renders a Redis id as a cursor, zero-padded so cursors also sort as strings.
fn cursor_of(pos: Position) -> String {
    format!("{:013}-{:06}", pos.major, pos.minor)
}

fn parse_id(id: &str) -> Option<Position> {
    let (ms, seq) = id.split_once('-')?;
    if ms.is_empty() || seq.is_empty() || !ms.bytes().chain(seq.bytes()).all(|b| b.is_ascii_digit())
    {
        return None;
    }
    Some(Position {
        major: ms.parse().ok()?,
        minor: seq.parse().ok()?,
    })
}

fn redis_id(pos: Position) -> String {
    format!("{}-{}", pos.major, pos.minor)
}

impl RedisLog {
    /// Connects and starts the tailing reader.
    ///
    /// # Errors
    /// When the URL is invalid. An unreachable Redis is not an error at start: the gateway
    /// starts not-ready and connects when Redis answers.
    pub async fn connect(
        broker: &BrokerConfig,
        history: &HistoryConfig,
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Arc<Self>> {
        let client = redis::Client::open(broker.url.as_str())
            .map_err(|e| anyhow::anyhow!("broker.url {:?}: {e}", broker.url))?;
        let timeout = Duration::from_millis(broker.timeout_ms.max(1));
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
        let log = Arc::new(Self {
            client,
            conn,
            stream_key: format!("{}:log", broker.key_prefix),
            dedupe_prefix: format!("{}:idem:", broker.key_prefix),
            script: redis::Script::new(APPEND_SCRIPT),
            max_events: history.max_events,
            max_age_ms: history.max_age_secs.saturating_mul(1000),
            dedupe_secs: history.dedupe_window_secs.max(1),
            timeout,
            hub,
            metrics,
            healthy: AtomicBool::new(true),
        });
        let start = match log.last_id().await {
            Ok(id) => id,
            Err(e) => {
                tracing::warn!(error = %e, "redis unreachable at start; will keep trying");
                log.healthy.store(false, Ordering::Relaxed);
                None
            }
        };
        tokio::spawn(log.clone().tail(start, shutdown));
        Ok(log)
    }

    /// Renders a position of this log as a cursor.
    pub fn cursor(pos: Position) -> String {
        cursor_of(pos)
    }

    /// Parses a cursor of this log.
    pub fn parse_cursor(cursor: &str) -> Option<Position> {
        parse_id(cursor)
    }

    async fn last_id(&self) -> Result<Option<Position>, GatewayError> {
        let mut conn = self.conn.clone();
        let reply: StreamRangeReply = conn
            .xrevrange_count(&self.stream_key, "+", "-", 1)
            .await
            .map_err(|e| unavailable(&e))?;
        Ok(reply.ids.first().and_then(|e| parse_id(&e.id)))
    }

    /// See [`super::Broker::append`].
    ///
    /// # Errors
    /// [`GatewayError::Unavailable`] when Redis does not answer in time.
    pub async fn append(
        &self,
        publisher: &str,
        events: Vec<NewEvent>,
    ) -> Result<Vec<AppendOutcome>, GatewayError> {
        let ts = now_ms().to_string();
        let (mode, maxlen) = if self.max_events <= EXACT_TRIM_MAX {
            ("=", self.max_events)
        } else {
            ("~", self.max_events)
        };
        let mut invocation = self.script.key(&self.stream_key);
        invocation
            .arg(mode)
            .arg(maxlen)
            .arg(self.dedupe_secs)
            .arg(events.len());
        let mut counts = Vec::with_capacity(events.len());
        for ev in &events {
            let key = ev
                .idempotency_key
                .as_ref()
                .map(|k| format!("{}{}:{}", self.dedupe_prefix, publisher, k))
                .unwrap_or_default();
            let audience = ev
                .audience
                .as_ref()
                .and_then(|a| serde_json::to_string(a).ok())
                .unwrap_or_default();
            invocation
                .arg(key)
                .arg(ev.channel.as_str())
                .arg(&ev.event)
                .arg(&ev.payload)
                .arg(audience)
                .arg(&ts);
            counts.push(self.hub.subscriber_count(&ev.channel, ev.audience.as_ref()) as u32);
        }
        let mut conn = self.conn.clone();
        let reply: Vec<(String, i64)> =
            tokio::time::timeout(self.timeout, invocation.invoke_async(&mut conn))
                .await
                .map_err(|_| GatewayError::Unavailable("redis did not answer in time".into()))?
                .map_err(|e| unavailable(&e))?;
        Ok(reply
            .into_iter()
            .zip(counts)
            .map(|((id, dup), count)| {
                let cursor = parse_id(&id).map_or(id, cursor_of);
                AppendOutcome {
                    cursor,
                    delivered: if dup == 1 { 0 } else { count },
                    duplicate: dup == 1,
                }
            })
            .collect())
    }

    /// The oldest retained entry's predecessor and id, and the newest id; `None` when the log
    /// is empty.
    async fn bounds(&self) -> Result<Option<Bounds>, GatewayError> {
        let mut conn = self.conn.clone();
        let (first, last): (StreamRangeReply, StreamRangeReply) = redis::pipe()
            .atomic()
            .cmd("XRANGE")
            .arg(&self.stream_key)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .cmd("XREVRANGE")
            .arg(&self.stream_key)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut conn)
            .await
            .map_err(|e| unavailable(&e))?;
        let (Some(first), Some(last)) = (first.ids.first(), last.ids.first()) else {
            return Ok(None);
        };
        let (Some(first_id), Some(last)) = (parse_id(&first.id), parse_id(&last.id)) else {
            return Ok(None);
        };
        // Entries written without a predecessor mark: assume the oldest one's own id.
        let before_first = first
            .get::<String>("v")
            .and_then(|v| parse_id(&v))
            .or_else(|| parse_id(&first.id))
            .unwrap_or_default();
        Ok(Some(Bounds {
            before_first,
            first: first_id,
            last,
        }))
    }

    /// See [`super::Broker::read_after`].
    ///
    /// # Errors
    /// [`GatewayError::Unavailable`] when Redis does not answer.
    pub async fn read_after(
        &self,
        after: Position,
        channels: &HashSet<ChannelName>,
        limit: usize,
    ) -> Result<ReadBatch, GatewayError> {
        let Some(bounds) = self.bounds().await? else {
            // No log at all: any real cursor's events are gone.
            return Ok(ReadBatch {
                gap: after > Position::default(),
                last: Position::default(),
                done: true,
                events: Vec::new(),
            });
        };
        let last = bounds.last;
        let mut batch = ReadBatch {
            gap: bounds.missing_after(after),
            last,
            done: true,
            events: Vec::new(),
        };
        if after >= last {
            return Ok(batch);
        }
        let mut conn = self.conn.clone();
        let start = format!("({}", redis_id(after));
        let reply: StreamRangeReply = conn
            .xrange_count(&self.stream_key, start, "+", limit)
            .await
            .map_err(|e| unavailable(&e))?;
        batch.done = reply.ids.len() < limit;
        if let Some(tail) = reply.ids.last().and_then(|e| parse_id(&e.id)) {
            batch.last = tail;
        }
        // Entries past max_age count as gone even before the periodic trim removes them.
        let oldest_ms = now_ms().saturating_sub(self.max_age_ms);
        for entry in &reply.ids {
            if let Some(ev) = decode(entry) {
                if self.max_age_ms > 0 && ev.position.major < oldest_ms {
                    batch.gap = true;
                    continue;
                }
                if channels.contains(&ev.channel) {
                    batch.events.push(Arc::new(ev));
                }
            }
        }
        if batch.done {
            batch.last = batch.last.max(last);
        }
        Ok(batch)
    }

    /// Whether Redis answers a PING in time.
    pub async fn ping(&self) -> bool {
        let mut conn = self.conn.clone();
        let pong: Result<Result<String, _>, _> =
            tokio::time::timeout(self.timeout, redis::cmd("PING").query_async(&mut conn)).await;
        matches!(pong, Ok(Ok(_)))
    }

    /// The last id of the log.
    ///
    /// # Errors
    /// [`GatewayError::Unavailable`] when Redis does not answer.
    pub async fn head(&self) -> Result<Position, GatewayError> {
        Ok(self.last_id().await?.unwrap_or_default())
    }

    fn set_healthy(&self, healthy: bool, error: Option<&redis::RedisError>) {
        if self.healthy.swap(healthy, Ordering::Relaxed) != healthy {
            if healthy {
                tracing::info!("redis reachable again; tail catching up from its last id");
            } else {
                tracing::warn!(error = ?error.map(ToString::to_string), "redis unreachable; publishes fail with UNAVAILABLE until it is back");
            }
        }
    }

    async fn tail_connection(&self) -> redis::RedisResult<MultiplexedConnection> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(
                self.timeout + Duration::from_millis(TAIL_BLOCK_MS as u64),
            ));
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    /// The one tailing reader of this node.
    async fn tail(self: Arc<Self>, start: Option<Position>, shutdown: CancellationToken) {
        let mut last = start;
        let mut conn: Option<MultiplexedConnection> = None;
        let mut backoff = Duration::from_millis(100);
        let mut last_trim = std::time::Instant::now();
        // Set after a failure: entries may have been trimmed while this node could not read.
        let mut recovering = false;
        let opts = StreamReadOptions::default()
            .block(TAIL_BLOCK_MS)
            .count(TAIL_COUNT);
        while !shutdown.is_cancelled() {
            let mut c = match conn.take() {
                Some(c) => c,
                None => match self.tail_connection().await {
                    Ok(c) => c,
                    Err(e) => {
                        recovering = true;
                        self.fail(&e, &mut backoff, &shutdown).await;
                        continue;
                    }
                },
            };
            if recovering {
                match self.bounds().await {
                    Ok(bounds) => {
                        recovering = false;
                        let from = last.unwrap_or_default();
                        if bounds.is_some_and(|b| b.missing_after(from)) {
                            tracing::warn!("the log was trimmed past this node's read position during an outage; sending gap to every stream");
                            self.hub.broadcast_gap();
                        }
                    }
                    Err(_) => {
                        tokio::time::sleep(backoff).await;
                        continue;
                    }
                }
            }
            if last.is_none() {
                match self.last_id().await {
                    Ok(id) => last = Some(id.unwrap_or_default()),
                    Err(_) => {
                        tokio::time::sleep(backoff).await;
                        continue;
                    }
                }
            }
            let from = [redis_id(last.unwrap_or_default())];
            let keys = [self.stream_key.as_str()];
            let read: redis::RedisResult<Option<StreamReadReply>> = tokio::select! {
                () = shutdown.cancelled() => break,
                r = c.xread_options(&keys, &from, &opts) => r,
            };
            match read {
                Ok(reply) => {
                    self.set_healthy(true, None);
                    backoff = Duration::from_millis(100);
                    for key in reply.map(|r| r.keys).unwrap_or_default() {
                        for entry in &key.ids {
                            if let Some(ev) = decode(entry) {
                                last = Some(ev.position);
                                self.hub.dispatch(&Arc::new(ev));
                            } else if let Some(pos) = parse_id(&entry.id) {
                                last = Some(pos);
                            }
                        }
                    }
                    conn = Some(c);
                    if self.max_age_ms > 0 && last_trim.elapsed() > Duration::from_secs(5) {
                        last_trim = std::time::Instant::now();
                        self.trim_by_age().await;
                    }
                }
                Err(e) => {
                    recovering = true;
                    self.fail(&e, &mut backoff, &shutdown).await;
                }
            }
        }
    }

    async fn fail(
        &self,
        e: &redis::RedisError,
        backoff: &mut Duration,
        shutdown: &CancellationToken,
    ) {
        self.metrics.broker_errors.inc();
        self.set_healthy(false, Some(e));
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = tokio::time::sleep(*backoff) => {}
        }
        *backoff = (*backoff * 2).min(Duration::from_secs(2));
    }

    async fn trim_by_age(&self) {
        let min = now_ms().saturating_sub(self.max_age_ms);
        let mut conn = self.conn.clone();
        let r: redis::RedisResult<i64> = redis::cmd("XTRIM")
            .arg(&self.stream_key)
            .arg("MINID")
            .arg(format!("{min}-0"))
            .query_async(&mut conn)
            .await;
        if let Err(e) = r {
            tracing::debug!(error = %e, "trim by age failed");
        }
    }
}

/// Rebuilds an event (and its frame) from a stream entry.
fn decode(entry: &StreamId) -> Option<Event> {
    let position = parse_id(&entry.id)?;
    let field = |k: &str| -> Option<String> { entry.get(k) };
    let channel = ChannelName::parse_syntax(&field("c")?).ok()?;
    let audience: Option<Audience> = field("a").and_then(|a| serde_json::from_str(&a).ok());
    let event = field("e")?;
    let payload = field("p")?;
    // Entries are written by gateways, but the log is shared: never let one break a frame.
    if crate::event::parse_event_name(&event).is_err() || payload.contains(['\r', '\n']) {
        tracing::warn!(id = %entry.id, "skipping a malformed log entry");
        return None;
    }
    let new = NewEvent {
        channel,
        event,
        payload,
        idempotency_key: None,
        audience,
    };
    let ts = field("t")
        .and_then(|t| t.parse().ok())
        .unwrap_or(position.major);
    Some(Event::new(position, cursor_of(position), &new, ts))
}

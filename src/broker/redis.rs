//! The Redis Streams event log, shared by several gateway nodes.
//!
//! Every node appends with one Lua script per group of appends (idempotency check + `XADD` +
//! dedupe key, atomically and in order; the appends waiting at once share one script) and runs
//! ONE tailing reader (`XREAD BLOCK`) that fans new entries out to its local hub. Cursors are the stream's ids, so any node resumes any cursor.
//!
//! When Redis is unreachable, publishes fail fast with `UNAVAILABLE`, and a request that reaches
//! Redis after this node gave up on it is refused by Redis itself (see [`RedisClock`]), so a
//! failed publish is never appended later. Streams stay open, and the tail resumes from its last
//! id when Redis is back: nothing Redis accepted is skipped without a `gap`.
//!
//! All keys of one log share the hash tag `{key_prefix}` and every script declares the keys it
//! touches in `KEYS`, so a log lives in one Redis Cluster slot.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::streams::{StreamId, StreamRangeReply, StreamReadOptions, StreamReadReply};
use redis::AsyncCommands;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{AppendOutcome, ReadBatch};
use crate::channel::{ChannelName, ChannelTypes};
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
/// Most latest events one node keeps decoded (see `RedisLog::latest_cache`).
const LATEST_CACHE_MAX: usize = 100_000;
/// How often each node trims the log by age.
const AGE_TRIM_EVERY: Duration = Duration::from_secs(5);
/// Fastest the Redis clock is assumed to drift from this process's monotonic clock: 1 ms per
/// second (1000 ppm; quartz clocks are within ~50 ppm and NTP slews at most 500 ppm).
const DRIFT_MS_PER_SEC: u64 = 1;
/// Attempts of one append refused only because this node's bound of the Redis clock was too
/// cautious (each refusal sharpens it; the time budget stays the same).
const APPEND_ATTEMPTS: usize = 3;
/// The cursor of a stream opened before this node ever read the log: it precedes every id and
/// is nobody's predecessor, so resuming from it always yields `gap` (then what is retained).
const UNKNOWN: Position = Position { major: 0, minor: 1 };

/// Lua: `head` = the id of the newest entry of KEYS[1], or its last generated id when every
/// entry was trimmed, or '0-0' when there is no log. Every entry records this as its
/// predecessor (`v`), and the tail starts from it, so both agree on what "nothing missing" is.
macro_rules! head_lua {
    () => {
        r"
local head = '0-0'
local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #newest > 0 then
  head = newest[1][1]
elseif redis.call('EXISTS', KEYS[1]) == 1 then
  local info = redis.call('XINFO', 'STREAM', KEYS[1])
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then head = info[i + 1] end
  end
end
"
    };
}

/// Lua: `now` = Redis's clock in ms.
macro_rules! now_lua {
    () => {
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"
    };
}

/// The newest id of the log (see `head_lua!`). KEYS[1] = stream.
const HEAD_SCRIPT: &str = concat!(head_lua!(), "return head\n");

/// Appends a batch, unless Redis's clock is past the deadline the caller gives (then nothing
/// is written: the caller has answered `UNAVAILABLE` already, or is about to).
/// KEYS[1] = stream, KEYS[2..] = dedupe keys of the events that have an idempotency key, then
/// the latest-event keys of the channels whose type keeps one (`snapshot`).
/// ARGV = deadline (ms, Redis clock), maxlen-mode, maxlen, dedupe-ttl, n, then 8 per event:
/// index of its dedupe key in KEYS (0 = none), channel, event, payload, audience ('' = none), ts,
/// index of its latest-event key in KEYS (0 = none), that key's ttl in ms.
/// The latest-event key holds `<id> <json of the event's fields>` and is replaced only by a
/// newer id, in the same script as the `XADD`, so it never lags or leads the log.
/// Returns {'ok', now, {{id, duplicate}...}} or {'late', now, {}}.
/// Each entry also records its predecessor's id (`v`), so a reader can tell whether entries
/// after a cursor were trimmed (a gap) even though Redis does not record trimming.
const APPEND_SCRIPT: &str = concat!(
    now_lua!(),
    r"
if now > tonumber(ARGV[1]) then return {'late', now, {}} end
local mode, maxlen, ttl, n = ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local function newer(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b or '', '^(%d+)-(%d+)$')
  if not bm then return true end
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am > bm or (am == bm and as > bs)
end
",
    head_lua!(),
    r"
local prev = head
local out = {}
for i = 0, n - 1 do
  local b = 6 + i * 8
  local k = tonumber(ARGV[b])
  local existing = false
  if k > 0 then existing = redis.call('GET', KEYS[k]) end
  if existing then
    out[#out + 1] = {existing, 1}
  else
    local id
    if ARGV[b + 4] ~= '' then
      id = redis.call('XADD', KEYS[1], 'MAXLEN', mode, maxlen, '*', 'c', ARGV[b + 1], 'e', ARGV[b + 2], 'p', ARGV[b + 3], 't', ARGV[b + 5], 'v', prev, 'a', ARGV[b + 4])
    else
      id = redis.call('XADD', KEYS[1], 'MAXLEN', mode, maxlen, '*', 'c', ARGV[b + 1], 'e', ARGV[b + 2], 'p', ARGV[b + 3], 't', ARGV[b + 5], 'v', prev)
    end
    if k > 0 then redis.call('SET', KEYS[k], id, 'EX', ttl) end
    local sk = tonumber(ARGV[b + 6])
    if sk > 0 then
      local cur = redis.call('GET', KEYS[sk])
      local cur_id = cur and string.match(cur, '^(%S+) ')
      if newer(id, cur_id) then
        local fields = cjson.encode({c = ARGV[b + 1], e = ARGV[b + 2], p = ARGV[b + 3], a = ARGV[b + 4], t = ARGV[b + 5]})
        redis.call('SET', KEYS[sk], id .. ' ' .. fields, 'PX', ARGV[b + 7])
      end
    end
    prev = id
    out[#out + 1] = {id, 0}
  end
end
return {'ok', now, out}
"
);

/// Trims entries older than ARGV[1] ms by Redis's clock (not this node's: a node whose clock
/// runs ahead must not trim what others still retain). KEYS[1] = stream.
const TRIM_SCRIPT: &str = concat!(
    now_lua!(),
    r"
local min = now - tonumber(ARGV[1])
if min <= 0 then return 0 end
return redis.call('XTRIM', KEYS[1], 'MINID', string.format('%.0f', min))
"
);

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

/// The bounds of a log from its oldest and newest entries (`None` when it is empty).
fn bounds_of(first: Option<&StreamId>, newest: Option<&StreamId>) -> Option<Bounds> {
    let (first, newest) = (first?, newest?);
    let first_id = parse_id(&first.id)?;
    // Entries written without a predecessor mark: assume the oldest one's own id.
    let before_first = first
        .get::<String>("v")
        .and_then(|v| parse_id(&v))
        .unwrap_or(first_id);
    Some(Bounds {
        before_first,
        first: first_id,
        last: parse_id(&newest.id)?,
    })
}

/// What this node knows of Redis's clock without trusting either wall clock: a lower bound of
/// `redis_ms − local_ms`, where local is this process's monotonic clock.
///
/// Why: a publish that timed out here may still sit in a socket buffer of a frozen or
/// overloaded Redis and run later. Only Redis can refuse it then, so each append carries a
/// deadline in Redis's clock, and the script refuses to write once Redis's `TIME` is past it.
/// For "failed = not accepted" the deadline must fall *before* this node gives up, minus the
/// time a reply needs to come back — so the two clocks must be related, and trusting them to
/// agree (NTP) would turn any skew into either lost publishes or late appends. Instead every
/// script reply carries Redis's `TIME`: a reply sent at local `s` and received at local `r`
/// saying `t` was produced in between, so the offset is within `[t − r, t − s]`. The best lower
/// bound is kept, decaying by the drift allowance; a reply that contradicts it (Redis's clock
/// stepped back) replaces it.
struct RedisClock {
    origin: Instant,
    /// (lower bound of the offset in ms, when it was last confirmed).
    bound: Mutex<Option<(i64, Instant)>>,
}

impl RedisClock {
    fn new() -> Self {
        Self {
            origin: Instant::now(),
            bound: Mutex::new(None),
        }
    }

    fn local_ms(&self, at: Instant) -> i64 {
        i64::try_from(at.saturating_duration_since(self.origin).as_millis()).unwrap_or(i64::MAX)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(i64, Instant)>> {
        self.bound.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The lower bound at `now`, if any reply has carried Redis's time yet.
    fn lower_bound(&self, now: Instant) -> Option<i64> {
        self.lock().map(|(lo, at)| lo - drift_ms(at, now))
    }

    /// Records that Redis's clock read `redis_ms` between `sent` and `received`.
    fn observe(&self, sent: Instant, received: Instant, redis_ms: i64) {
        let lo = redis_ms - self.local_ms(received);
        let hi = redis_ms - self.local_ms(sent);
        let mut bound = self.lock();
        let next = match *bound {
            Some((old, at)) => {
                let old = old - drift_ms(at, received);
                if hi < old {
                    tracing::warn!(
                        by_ms = old - hi,
                        "the Redis clock went back; rebuilding its bound"
                    );
                    lo
                } else {
                    old.max(lo)
                }
            }
            None => lo,
        };
        *bound = Some((next, received));
    }

    /// The deadline, in Redis's clock, for a script sent at `sent` by a caller that gives up at
    /// `give_up`: early enough that a script which starts by then has `margin` left for its
    /// reply to arrive before the caller gives up.
    fn deadline(&self, lower_bound: i64, sent: Instant, give_up: Instant, margin: Duration) -> i64 {
        let budget = give_up
            .saturating_duration_since(sent)
            .saturating_sub(margin);
        self.local_ms(sent) + lower_bound + i64::try_from(budget.as_millis()).unwrap_or(0)
    }
}

fn drift_ms(since: Instant, now: Instant) -> i64 {
    let ms = now.saturating_duration_since(since).as_millis();
    i64::try_from(ms.saturating_mul(u128::from(DRIFT_MS_PER_SEC)) / 1000).unwrap_or(i64::MAX)
}

/// Time kept, out of `broker.timeout_ms`, for an append's reply to travel back after the script
/// started (script run time + network + scheduling): a quarter of the timeout, at least 50 ms,
/// at most half. A reply slower than this is the one case where a publish answered
/// `UNAVAILABLE` may still have been appended (documented in the README).
fn reply_margin(timeout: Duration) -> Duration {
    (timeout / 4)
        .max(Duration::from_millis(50))
        .min(timeout / 2)
}

/// Appends waiting for the committer (see `RedisLog::commit`); past it, `append` waits for room
/// (within its timeout).
const APPEND_QUEUE: usize = 1024;

/// Events one append script carries at most (a larger single job goes alone).
const GROUP_EVENTS: usize = 1000;

/// One event of an append, in the form the script takes.
struct PreparedEvent {
    /// The dedupe key of its idempotency key, if it has one.
    dedupe_key: Option<String>,
    channel: ChannelName,
    event: String,
    payload: String,
    /// JSON of the audience ('' = none).
    audience: String,
    /// Accept time, ms.
    ts: String,
    /// Its channel's latest-event key and that key's ttl in ms, when the channel keeps one.
    snapshot: Option<(String, u64)>,
}

/// One `append` call waiting for the committer.
struct AppendJob {
    events: Vec<PreparedEvent>,
    /// When the caller answers `UNAVAILABLE` if it has no reply.
    give_up: Instant,
    /// Each event's (id, duplicate), in order.
    reply: tokio::sync::oneshot::Sender<Result<Vec<(String, bool)>, GatewayError>>,
}

/// History reads in flight at once on one node (see `RedisLog::history_reads`).
const HISTORY_READS: usize = 16;

/// The Redis log.
pub struct RedisLog {
    client: redis::Client,
    conn: ConnectionManager,
    stream_key: String,
    dedupe_prefix: String,
    /// Prefix of the latest-event keys (`{prefix}:snap:<channel>`).
    snapshot_prefix: String,
    /// Which channels keep their latest event, and for how long.
    snapshots: ChannelTypes,
    /// The latest events this node has read, by channel, so that streams getting the same one
    /// share one `Event` (and its snapshot frame, rendered once). Entries are replaced when
    /// Redis names a newer id and dropped when Redis has none; bounded like the keys.
    latest_cache: Mutex<HashMap<ChannelName, Arc<Event>>>,
    /// Bounds the history reads in flight on this node. Thousands of streams resuming at once
    /// (a node restart) would otherwise all time out on the shared connection, retry, and time
    /// out again; queued behind the permits, each read gets the connection's full attention.
    history_reads: tokio::sync::Semaphore,
    /// The committer's queue (see [`RedisLog::commit`]).
    jobs: mpsc::Sender<AppendJob>,
    /// Append scripts sent.
    append_calls: AtomicU64,
    script: redis::Script,
    head_script: redis::Script,
    trim_script: redis::Script,
    max_events: usize,
    max_age_ms: u64,
    dedupe_secs: u64,
    timeout: Duration,
    clock: RedisClock,
    /// The newest id this node's tail has dispatched (or started after): every later entry
    /// will be dispatched to the streams registered now. `None` until the log was first read.
    tail_at: Mutex<Option<Position>>,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    healthy: AtomicBool,
}

fn unavailable(e: &redis::RedisError) -> GatewayError {
    GatewayError::Unavailable(format!("redis: {e}"))
}

fn too_slow() -> GatewayError {
    GatewayError::Unavailable("redis did not answer in time".into())
}

fn closing() -> GatewayError {
    GatewayError::Unavailable("the event log is closing".into())
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

/// The dedupe key of `publisher`'s idempotency key: the publisher name is length-prefixed, so
/// no (publisher, key) pair can spell another's (`a:b` + `K` vs `a` + `b:K`).
fn dedupe_key(prefix: &str, publisher: &str, key: &str) -> String {
    format!("{prefix}{}:{publisher}:{key}", publisher.len())
}

/// The state of the tailing reader between reads.
struct Tail {
    /// The newest id dispatched; `None` until the log was first read.
    last: Option<Position>,
    conn: Option<MultiplexedConnection>,
    backoff: Duration,
    last_trim: Instant,
    /// Set after a failure: check where the log is before reading on.
    recovering: bool,
}

/// The client and the lazily connecting connection manager for `broker.url`: every command
/// answers within `broker.timeout_ms` (or fails), with one quick reconnect attempt.
///
/// # Errors
/// When the URL is invalid.
pub(crate) fn connection(
    broker: &BrokerConfig,
) -> anyhow::Result<(redis::Client, ConnectionManager)> {
    let client = redis::Client::open(broker.url.as_str())
        .map_err(|e| anyhow::anyhow!("broker.url {:?}: {e}", broker.url))?;
    let timeout = Duration::from_millis(broker.timeout_ms.max(1));
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
    Ok((client, conn))
}

impl RedisLog {
    /// Connects and starts the tailing reader on `tasks` (so a shutdown waits for it).
    ///
    /// # Errors
    /// When the URL is invalid. An unreachable Redis is not an error at start: the gateway
    /// starts not-ready and connects when Redis answers.
    pub async fn connect(
        broker: &BrokerConfig,
        history: &HistoryConfig,
        snapshots: ChannelTypes,
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
        tasks: &TaskTracker,
    ) -> anyhow::Result<Arc<Self>> {
        let (client, conn) = connection(broker)?;
        let timeout = Duration::from_millis(broker.timeout_ms.max(1));
        // `{prefix}`: one hash tag for every key of this log, so they share a cluster slot.
        let tag = format!("{{{}}}", broker.key_prefix);
        let (jobs, queued) = mpsc::channel(APPEND_QUEUE);
        let log = Arc::new(Self {
            client,
            conn,
            stream_key: format!("{tag}:log"),
            dedupe_prefix: format!("{tag}:idem:"),
            snapshot_prefix: format!("{tag}:snap:"),
            snapshots,
            latest_cache: Mutex::new(HashMap::new()),
            history_reads: tokio::sync::Semaphore::new(HISTORY_READS),
            jobs,
            append_calls: AtomicU64::new(0),
            script: redis::Script::new(APPEND_SCRIPT),
            head_script: redis::Script::new(HEAD_SCRIPT),
            trim_script: redis::Script::new(TRIM_SCRIPT),
            max_events: history.max_events,
            max_age_ms: history.max_age_secs.saturating_mul(1000),
            dedupe_secs: history.dedupe_window_secs.max(1),
            timeout,
            clock: RedisClock::new(),
            tail_at: Mutex::new(None),
            hub,
            metrics,
            healthy: AtomicBool::new(true),
        });
        let start = match log.head().await {
            Ok(head) => {
                // Learn Redis's clock now rather than on the first publish.
                log.ping().await;
                Some(head)
            }
            Err(e) => {
                tracing::warn!(error = %e, "redis unreachable at start; will keep trying");
                log.healthy.store(false, Ordering::Relaxed);
                None
            }
        };
        log.set_tail_at(start);
        tasks.spawn(log.clone().commit(queued, shutdown.clone()));
        tasks.spawn(log.clone().tail(start, shutdown));
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

    /// The cursor after which a stream registered now receives every event: the newest id this
    /// node's tail has dispatched. Needs no round trip, so it is also right during an outage
    /// (the tail catches up from there when Redis is back, or sends `gap`). Before the log was
    /// ever read, a cursor that resumes with `gap`.
    pub fn tail_cursor(&self) -> String {
        let at = *self.tail_at.lock().unwrap_or_else(|p| p.into_inner());
        cursor_of(at.unwrap_or(UNKNOWN))
    }

    fn set_tail_at(&self, at: Option<Position>) {
        if let Some(p) = at {
            self.metrics.redis_tail.dispatched((p.major, p.minor));
        }
        *self.tail_at.lock().unwrap_or_else(|p| p.into_inner()) = at;
    }

    /// The newest id of the log (or its last generated id; `0-0` when there is none).
    ///
    /// # Errors
    /// [`GatewayError::Unavailable`] when Redis does not answer in time.
    pub async fn head(&self) -> Result<Position, GatewayError> {
        let mut conn = self.conn.clone();
        let id: String = tokio::time::timeout(
            self.timeout,
            self.head_script
                .key(&self.stream_key)
                .invoke_async(&mut conn),
        )
        .await
        .map_err(|_| too_slow())?
        .map_err(|e| unavailable(&e))?;
        Ok(parse_id(&id).unwrap_or_default())
    }

    /// A lower bound of Redis's clock offset, asking Redis when no reply has told it yet.
    async fn clock_bound(&self, give_up: Instant) -> Result<i64, GatewayError> {
        if let Some(lo) = self.clock.lower_bound(Instant::now()) {
            return Ok(lo);
        }
        self.time(give_up).await?;
        self.clock.lower_bound(Instant::now()).ok_or_else(too_slow)
    }

    /// Asks Redis for its `TIME` (sharpening the clock bound).
    async fn time(&self, give_up: Instant) -> Result<(), GatewayError> {
        let mut conn = self.conn.clone();
        let sent = Instant::now();
        let (secs, micros): (i64, i64) =
            tokio::time::timeout_at(give_up.into(), redis::cmd("TIME").query_async(&mut conn))
                .await
                .map_err(|_| too_slow())?
                .map_err(|e| unavailable(&e))?;
        self.clock
            .observe(sent, Instant::now(), secs * 1000 + micros / 1000);
        Ok(())
    }

    /// See [`super::Broker::append`].
    ///
    /// The events wait in a bounded queue for the committer, which appends everything waiting
    /// (from any publisher and any call) with one script, in queue order (see [`RedisLog::commit`]).
    ///
    /// # Errors
    /// [`GatewayError::Unavailable`] when Redis does not answer in time; Redis then refuses
    /// the request if it arrives later, so nothing of it is appended.
    pub async fn append(
        &self,
        publisher: &str,
        events: Vec<NewEvent>,
    ) -> Result<Vec<AppendOutcome>, GatewayError> {
        let give_up = Instant::now() + self.timeout;
        let ts = now_ms().to_string();
        let mut counts = Vec::with_capacity(events.len());
        let mut prepared = Vec::with_capacity(events.len());
        for ev in events {
            counts.push(self.hub.subscriber_count(&ev.channel, ev.audience.as_ref()) as u32);
            let snapshot = self.snapshots.snapshot_ttl(&ev.channel).map(|ttl| {
                let key = format!("{}{}", self.snapshot_prefix, ev.channel.as_str());
                (
                    key,
                    u64::try_from(ttl.as_millis().max(1)).unwrap_or(u64::MAX),
                )
            });
            prepared.push(PreparedEvent {
                dedupe_key: ev
                    .idempotency_key
                    .as_deref()
                    .map(|k| dedupe_key(&self.dedupe_prefix, publisher, k)),
                audience: ev
                    .audience
                    .as_ref()
                    .and_then(|a| serde_json::to_string(a).ok())
                    .unwrap_or_default(),
                channel: ev.channel,
                event: ev.event,
                payload: ev.payload,
                ts: ts.clone(),
                snapshot,
            });
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = AppendJob {
            events: prepared,
            give_up,
            reply,
        };
        match tokio::time::timeout_at(give_up.into(), self.jobs.send(job)).await {
            Err(_) => return Err(too_slow()),
            Ok(Err(_)) => return Err(closing()),
            Ok(Ok(())) => {}
        }
        // Giving up here is safe: the script that would append this job is refused by Redis
        // once past the deadline it carries, which leaves the reply margin before `give_up`.
        let ids = tokio::time::timeout_at(give_up.into(), answer)
            .await
            .map_err(|_| too_slow())?
            .map_err(|_| closing())??;
        Ok(ids
            .into_iter()
            .zip(counts)
            .map(|((id, duplicate), count)| {
                let cursor = parse_id(&id).map_or(id, cursor_of);
                AppendOutcome {
                    cursor,
                    delivered: if duplicate { 0 } else { count },
                    duplicate,
                }
            })
            .collect())
    }

    /// The append committer: takes every job waiting (whole jobs, up to [`GROUP_EVENTS`] events
    /// unless one job alone has more) and appends them with one script, one group at a time.
    ///
    /// One script per request serialised concurrent publishers on the round trip; grouped,
    /// they share it. Order: jobs run in queue order, each job's events in its order, so a
    /// publisher's order (which it fixes by waiting for one answer before the next request) is
    /// the log's. The script runs the events of the group exactly as separate scripts would
    /// have run one after the other (an idempotency key repeated within the group is a
    /// duplicate of the first), and is atomic: a group is appended whole or not at all.
    ///
    /// Deadlines: a job whose caller has gone (it answered `UNAVAILABLE`, or its call was
    /// cancelled) is dropped before sending; the group's script carries the deadline of its
    /// earliest job, so Redis refuses all of it once any of its callers may have given up.
    ///
    /// After `shutdown`, it finishes the jobs already queued, then stops; later appends fail
    /// `UNAVAILABLE` (the gateway takes no new publishes by then).
    async fn commit(
        self: Arc<Self>,
        mut jobs: mpsc::Receiver<AppendJob>,
        shutdown: CancellationToken,
    ) {
        let mut carry: Option<AppendJob> = None;
        let mut group: Vec<AppendJob> = Vec::new();
        loop {
            let first = match carry.take() {
                Some(job) => job,
                None => tokio::select! {
                    // Queued jobs first: a shutdown still answers them.
                    biased;
                    job = jobs.recv() => match job {
                        Some(job) => job,
                        None => break,
                    },
                    () = shutdown.cancelled() => break,
                },
            };
            let mut n = first.events.len();
            group.push(first);
            while n < GROUP_EVENTS {
                let Ok(job) = jobs.try_recv() else { break };
                if n + job.events.len() > GROUP_EVENTS {
                    carry = Some(job);
                    break;
                }
                n += job.events.len();
                group.push(job);
            }
            self.commit_group(&mut group).await;
            group.clear();
        }
    }

    /// Appends the jobs of `group` with one script and answers each of them.
    async fn commit_group(&self, group: &mut Vec<AppendJob>) {
        let margin = reply_margin(self.timeout);
        let now = Instant::now();
        // A caller that has gone answered UNAVAILABLE (or was cancelled): never append it. One
        // with too little time left for a round trip is answered so now.
        group.retain_mut(|job| {
            if job.reply.is_closed() {
                return false;
            }
            if job.give_up.saturating_duration_since(now) <= margin {
                let reply = std::mem::replace(&mut job.reply, tokio::sync::oneshot::channel().0);
                let _ = reply.send(Err(too_slow()));
                return false;
            }
            true
        });
        let Some(give_up) = group.iter().map(|j| j.give_up).min() else {
            return;
        };
        match self.run_script(group, give_up, margin).await {
            Ok(mut ids) => {
                for job in group.drain(..) {
                    let rest = ids.split_off(job.events.len().min(ids.len()));
                    let _ = job.reply.send(Ok(std::mem::replace(&mut ids, rest)));
                }
            }
            Err(e) => {
                // Every error here is `Unavailable`: each job gets its message.
                let message = match e {
                    GatewayError::Unavailable(m) => m,
                    other => other.to_string(),
                };
                for job in group.drain(..) {
                    let _ = job
                        .reply
                        .send(Err(GatewayError::Unavailable(message.clone())));
                }
            }
        }
    }

    /// Runs the append script over the events of `group`, in order, by `give_up`; returns each
    /// event's (id, duplicate).
    async fn run_script(
        &self,
        group: &[AppendJob],
        give_up: Instant,
        margin: Duration,
    ) -> Result<Vec<(String, bool)>, GatewayError> {
        let mode = if self.max_events <= EXACT_TRIM_MAX {
            "="
        } else {
            "~"
        };
        let events = || group.iter().flat_map(|j| j.events.iter());
        let total = events().count();
        // KEYS: the stream, the dedupe keys in event order, then one latest-event key per
        // channel of the group.
        let dedupe_keys = events().filter(|e| e.dedupe_key.is_some()).count();
        let mut snap_keys: Vec<&str> = Vec::new();
        let mut args = Vec::with_capacity(total);
        let mut next_dedupe = 2;
        for ev in events() {
            let key_index = if ev.dedupe_key.is_some() {
                next_dedupe += 1;
                next_dedupe - 1
            } else {
                0
            };
            let (snap_index, snap_ttl) = match &ev.snapshot {
                Some((key, ttl)) => {
                    let i = match snap_keys.iter().position(|k| k == key) {
                        Some(i) => i,
                        None => {
                            snap_keys.push(key);
                            snap_keys.len() - 1
                        }
                    };
                    (2 + dedupe_keys + i, *ttl)
                }
                None => (0, 0),
            };
            args.push((key_index, snap_index, snap_ttl));
        }
        let mut conn = self.conn.clone();
        for attempt in 0..APPEND_ATTEMPTS {
            if attempt > 0 && give_up.saturating_duration_since(Instant::now()) <= margin {
                break;
            }
            let lower_bound = self.clock_bound(give_up).await?;
            let sent = Instant::now();
            let deadline = self.clock.deadline(lower_bound, sent, give_up, margin);
            let mut invocation = self.script.prepare_invoke();
            invocation.key(&self.stream_key);
            for key in events().filter_map(|e| e.dedupe_key.as_ref()) {
                invocation.key(key);
            }
            for key in &snap_keys {
                invocation.key(*key);
            }
            invocation
                .arg(deadline)
                .arg(mode)
                .arg(self.max_events)
                .arg(self.dedupe_secs)
                .arg(total);
            for (ev, (key_index, snap_index, snap_ttl)) in events().zip(&args) {
                invocation
                    .arg(key_index)
                    .arg(ev.channel.as_str())
                    .arg(&ev.event)
                    .arg(&ev.payload)
                    .arg(&ev.audience)
                    .arg(&ev.ts)
                    .arg(snap_index)
                    .arg(snap_ttl);
            }
            self.append_calls.fetch_add(1, Ordering::Relaxed);
            let (status, redis_now, reply): (String, i64, Vec<(String, i64)>) =
                tokio::time::timeout_at(give_up.into(), invocation.invoke_async(&mut conn))
                    .await
                    .map_err(|_| too_slow())?
                    .map_err(|e| unavailable(&e))?;
            self.clock.observe(sent, Instant::now(), redis_now);
            if status != "ok" {
                // Refused, nothing written: either this request came too late, or the bound of
                // the Redis clock was too cautious — the reply just sharpened it; try again
                // within the same time budget.
                tracing::debug!(deadline, redis_now, "redis refused a late append");
                continue;
            }
            if reply.len() != total {
                return Err(GatewayError::Unavailable(format!(
                    "redis: the append script answered {} of {total} events",
                    reply.len()
                )));
            }
            if let Some(p) = reply.iter().filter_map(|(id, _)| parse_id(id)).max() {
                self.metrics.redis_tail.appended((p.major, p.minor));
            }
            return Ok(reply.into_iter().map(|(id, dup)| (id, dup == 1)).collect());
        }
        Err(too_slow())
    }

    /// Append scripts this node has sent (each carries one group of appends).
    pub fn append_calls(&self) -> u64 {
        self.append_calls.load(Ordering::Relaxed)
    }

    /// Appends waiting in the committer's queue (not counting the group in flight).
    pub fn queued_appends(&self) -> usize {
        self.jobs.max_capacity() - self.jobs.capacity()
    }

    /// See [`super::Broker::latest`]: one `MGET` of the latest-event keys of `channels`.
    ///
    /// # Errors
    /// [`GatewayError::Unavailable`] when Redis does not answer in time.
    pub async fn latest(&self, channels: &[ChannelName]) -> Result<Vec<Arc<Event>>, GatewayError> {
        let wanted: Vec<&ChannelName> = channels
            .iter()
            .filter(|c| self.snapshots.snapshot_ttl(c).is_some())
            .collect();
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = wanted
            .iter()
            .map(|c| format!("{}{}", self.snapshot_prefix, c.as_str()))
            .collect();
        let mut conn = self.conn.clone();
        let values: Vec<Option<String>> = tokio::time::timeout(
            self.timeout,
            redis::cmd("MGET").arg(&keys).query_async(&mut conn),
        )
        .await
        .map_err(|_| too_slow())?
        .map_err(|e| unavailable(&e))?;
        let mut cache = self.latest_cache.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for (channel, value) in wanted.into_iter().zip(values) {
            let Some(value) = value else {
                cache.remove(channel);
                continue;
            };
            let Some(ev) = decode_latest(channel, &value) else {
                tracing::warn!(%channel, "skipping a malformed latest-event key");
                continue;
            };
            match cache.get(channel) {
                Some(cached) if cached.position == ev.position => out.push(cached.clone()),
                _ => {
                    let ev = Arc::new(ev);
                    if cache.len() >= LATEST_CACHE_MAX {
                        // Only a cache: dropping it costs a re-render, never a value.
                        cache.clear();
                    }
                    cache.insert(channel.clone(), ev.clone());
                    out.push(ev);
                }
            }
        }
        Ok(out)
    }

    /// See [`super::Broker::read_after`].
    ///
    /// One transaction reads where the log starts and ends, Redis's clock and the page, so
    /// trimming by concurrent appends cannot fall between the gap check and the read.
    ///
    /// # Errors
    /// [`GatewayError::Unavailable`] when Redis does not answer.
    pub async fn read_after(
        &self,
        after: Position,
        channels: &HashSet<ChannelName>,
        limit: usize,
    ) -> Result<ReadBatch, GatewayError> {
        // Waiting for a permit is not subject to the command timeout.
        let _permit = self
            .history_reads
            .acquire()
            .await
            .map_err(|_| GatewayError::Unavailable("the event log is closing".into()))?;
        let mut conn = self.conn.clone();
        type Reply = (
            StreamRangeReply,
            StreamRangeReply,
            (u64, u64),
            StreamRangeReply,
        );
        let (first, newest, (secs, micros), page): Reply = redis::pipe()
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
            .cmd("TIME")
            .cmd("XRANGE")
            .arg(&self.stream_key)
            .arg(format!("({}", redis_id(after)))
            .arg("+")
            .arg("COUNT")
            .arg(limit)
            .query_async(&mut conn)
            .await
            .map_err(|e| unavailable(&e))?;
        let Some(bounds) = bounds_of(first.ids.first(), newest.ids.first()) else {
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
            done: page.ids.len() < limit,
            events: Vec::new(),
        };
        if let Some(tail) = page.ids.last().and_then(|e| parse_id(&e.id)) {
            batch.last = tail;
        }
        // Entries past max_age count as gone even before the periodic trim removes them
        // (by Redis's clock, which also made their ids).
        let oldest_ms = (secs * 1000 + micros / 1000).saturating_sub(self.max_age_ms);
        for entry in &page.ids {
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

    /// Whether Redis answers in time (its `TIME`, which also sharpens the clock bound).
    pub async fn ping(&self) -> bool {
        self.time(Instant::now() + self.timeout).await.is_ok()
    }

    fn set_healthy(&self, healthy: bool, error: Option<&(dyn std::fmt::Display + Sync)>) {
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

    /// The one tailing reader of this node; ends on `shutdown`, whatever it is waiting for.
    async fn tail(self: Arc<Self>, start: Option<Position>, shutdown: CancellationToken) {
        let mut tail = Tail {
            last: start,
            conn: None,
            backoff: Duration::from_millis(100),
            last_trim: Instant::now(),
            recovering: false,
        };
        while !shutdown.is_cancelled() {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                () = self.tail_step(&mut tail) => {}
            }
        }
    }

    /// One read of the tail (connecting and re-synchronising first when needed).
    async fn tail_step(&self, tail: &mut Tail) {
        let mut conn = match tail.conn.take() {
            Some(c) => c,
            None => match self.tail_connection().await {
                Ok(c) => c,
                Err(e) => return self.tail_failed(tail, &e).await,
            },
        };
        if tail.recovering || tail.last.is_none() {
            match self.head().await {
                Ok(head) => self.resync(tail, head),
                Err(e) => return self.tail_failed(tail, &e).await,
            }
        }
        let from = [redis_id(tail.last.unwrap_or_default())];
        let keys = [self.stream_key.as_str()];
        let opts = StreamReadOptions::default()
            .block(TAIL_BLOCK_MS)
            .count(TAIL_COUNT);
        let read: redis::RedisResult<Option<StreamReadReply>> =
            conn.xread_options(&keys, &from, &opts).await;
        match read {
            Ok(reply) => {
                self.set_healthy(true, None);
                tail.backoff = Duration::from_millis(100);
                for key in reply.map(|r| r.keys).unwrap_or_default() {
                    self.dispatch(tail, &key.ids);
                }
                tail.conn = Some(conn);
                if self.max_age_ms > 0 && tail.last_trim.elapsed() > AGE_TRIM_EVERY {
                    tail.last_trim = Instant::now();
                    self.trim_by_age().await;
                }
            }
            Err(e) => self.tail_failed(tail, &e).await,
        }
    }

    /// Hands entries read after `tail.last` to the hub, in order. When the first one's recorded
    /// predecessor is not `tail.last`, entries in between were trimmed before this node read
    /// them (it fell more than the retention behind, or the log was lost): every stream is told
    /// with `gap` before it gets what follows.
    fn dispatch(&self, tail: &mut Tail, entries: &[StreamId]) {
        let Some(first) = entries.first() else {
            return;
        };
        let predecessor = first.get::<String>("v").and_then(|v| parse_id(&v));
        if let (Some(last), Some(predecessor)) = (tail.last, predecessor) {
            if predecessor != last {
                tracing::warn!(
                    from = %redis_id(last),
                    to = %redis_id(predecessor),
                    "log entries were trimmed before this node read them; sending gap to every stream"
                );
                self.hub.broadcast_gap();
            }
        }
        for entry in entries {
            if let Some(ev) = decode(entry) {
                tail.last = Some(ev.position);
                self.hub.dispatch(&Arc::new(ev));
            } else if let Some(pos) = parse_id(&entry.id) {
                tail.last = Some(pos);
            }
        }
        // Only after dispatching: a stream that reads this position has seen all up to it.
        self.set_tail_at(tail.last);
    }

    /// Where to read on from after an outage or a start without Redis, given the log's head.
    fn resync(&self, tail: &mut Tail, head: Position) {
        tail.recovering = false;
        match tail.last {
            None => {
                // Streams opened before this node could read the log may have missed what
                // other nodes appended meanwhile.
                tail.last = Some(head);
                self.set_tail_at(tail.last);
                tracing::info!("first read of the log; sending gap to streams opened before");
                self.hub.broadcast_gap();
            }
            Some(last) if last > head => {
                // The log is behind what this node read: it lost entries (a Redis restart
                // without persistence, a flush, a fail-over to a lagging replica). Continue after
                // its head, after a gap: reading it from its start again would deliver events
                // streams already have, with cursors going backwards.
                tracing::warn!(
                    last = %redis_id(last),
                    head = %redis_id(head),
                    "the log lost entries this node had read; sending gap to every stream"
                );
                tail.last = Some(head);
                self.set_tail_at(tail.last);
                self.hub.broadcast_gap();
            }
            // Entries trimmed meanwhile are noticed by `dispatch` (predecessor marks).
            Some(_) => {}
        }
    }

    async fn tail_failed(&self, tail: &mut Tail, e: &(dyn std::fmt::Display + Sync)) {
        tail.recovering = true;
        tail.conn = None;
        self.metrics.broker_errors.inc();
        self.set_healthy(false, Some(e));
        tokio::time::sleep(tail.backoff).await;
        tail.backoff = (tail.backoff * 2).min(Duration::from_secs(2));
    }

    async fn trim_by_age(&self) {
        let mut conn = self.conn.clone();
        let r: Result<redis::RedisResult<i64>, _> = tokio::time::timeout(
            self.timeout,
            self.trim_script
                .key(&self.stream_key)
                .arg(self.max_age_ms)
                .invoke_async(&mut conn),
        )
        .await;
        match r {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "trim by age failed"),
            Err(_) => tracing::debug!("trim by age timed out"),
        }
    }
}

/// The fields of a latest-event key's JSON (written by the append script).
#[derive(serde::Deserialize)]
struct LatestFields {
    e: String,
    p: String,
    #[serde(default)]
    a: String,
    #[serde(default)]
    t: String,
}

/// Rebuilds an event from a latest-event key's value, `<id> <json>`.
fn decode_latest(channel: &ChannelName, value: &str) -> Option<Event> {
    let (id, json) = value.split_once(' ')?;
    let position = parse_id(id)?;
    let f: LatestFields = serde_json::from_str(json).ok()?;
    if crate::event::parse_event_name(&f.e).is_err() || f.p.contains(['\r', '\n']) {
        return None;
    }
    let audience: Option<Audience> = (!f.a.is_empty())
        .then(|| serde_json::from_str(&f.a).ok())
        .flatten();
    let new = NewEvent {
        channel: channel.clone(),
        event: f.e,
        payload: f.p,
        idempotency_key: None,
        audience,
    };
    let ts = f.t.parse().unwrap_or(position.major);
    Some(Event::new(position, cursor_of(position), &new, ts))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedupe_keys_of_different_publishers_never_collide() {
        let p = "{gw}:idem:";
        assert_ne!(dedupe_key(p, "a:b", "K"), dedupe_key(p, "a", "b:K"));
        assert_ne!(dedupe_key(p, "a", "1:b:K"), dedupe_key(p, "a:1", "b:K"));
        assert_eq!(dedupe_key(p, "svc", "K"), "{gw}:idem:3:svc:K");
    }

    #[test]
    fn the_clock_bound_is_a_lower_bound_that_decays_and_follows_a_step_back() {
        let clock = RedisClock::new();
        let t0 = clock.origin;
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert_eq!(clock.lower_bound(at(0)), None);
        // Redis said 1_000_000 somewhere between local 100 and 140: offset in [999_860, 999_900].
        clock.observe(at(100), at(140), 1_000_000);
        assert_eq!(clock.lower_bound(at(140)), Some(999_860));
        // A tighter reply raises it; a wider one does not lower it.
        clock.observe(at(200), at(210), 1_000_095);
        assert_eq!(clock.lower_bound(at(210)), Some(999_885));
        clock.observe(at(300), at(900), 1_000_500);
        assert_eq!(clock.lower_bound(at(900)), Some(999_885));
        // It decays by 1 ms per second.
        assert_eq!(clock.lower_bound(at(10_900)), Some(999_875));
        // A reply that contradicts it (Redis's clock went back 5 s) replaces it.
        clock.observe(at(11_000), at(11_010), 995_000 + 11_000);
        assert_eq!(
            clock.lower_bound(at(11_010)),
            Some(995_000 + 11_000 - 11_010)
        );
    }

    #[test]
    fn the_deadline_leaves_the_reply_margin_before_giving_up() {
        let clock = RedisClock::new();
        let sent = clock.origin + Duration::from_millis(1_000);
        let give_up = sent + Duration::from_millis(2_000);
        let margin = reply_margin(Duration::from_millis(2_000));
        assert_eq!(margin, Duration::from_millis(500));
        // A script that starts by the deadline (Redis clock) starts by local sent + 1500 ms.
        assert_eq!(
            clock.deadline(5_000, sent, give_up, margin),
            1_000 + 5_000 + 1_500
        );
        assert_eq!(
            reply_margin(Duration::from_millis(60)),
            Duration::from_millis(30)
        );
        assert_eq!(
            reply_margin(Duration::from_millis(120)),
            Duration::from_millis(50)
        );
    }
}

//! Control commands carried through Redis, so they take effect on every node.
//!
//! Two keys beside the event log (same `{key_prefix}` hash tag, so one cluster slot):
//! - `{prefix}:control`, a stream of commands (capped, approximately, at [`STREAM_MAX`]). Each
//!   node tails it (`XREAD BLOCK`, its own connection) and applies what other nodes sent;
//!   after an outage it reads on from its last id, so a node briefly away still applies them.
//! - `{prefix}:revoked`, a hash user → revocation time (ms, Redis's clock), written in the
//!   same script as the stream entry. Every node loads it at start and after an outage, so a
//!   node that restarted, or missed the entry, still refuses revoked tokens. Entries older than
//!   `[jwt] max_token_lifetime_secs` are deleted by the nodes that load them.
//!
//! A command is applied on the sending node only after Redis accepted it. The script refuses a
//! command that reaches Redis after the sender gave up (a deadline in Redis's own clock), so
//! an `UNAVAILABLE` answer means no node applies it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::streams::{StreamId, StreamRangeReply, StreamReadOptions, StreamReadReply};
use redis::AsyncCommands;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Command, Node};
use crate::config::BrokerConfig;
use crate::error::GatewayError;
use crate::event::now_ms;
use crate::metrics::Metrics;

/// Commands kept in the control stream (approximately): enough for a node away for a while.
const STREAM_MAX: usize = 10_000;
/// How long one tail `XREAD` blocks.
const TAIL_BLOCK_MS: usize = 1000;
/// Entries per tail read.
const TAIL_COUNT: usize = 500;
/// A stream command older than this when a node reads it (it was away) closes no stream and
/// removes no channel: streams opened since then did so after it. Its token revocation still
/// applies.
const STALE_MS: u64 = 60_000;
/// How often each node reloads the revocations hash (and deletes expired entries).
const RELOAD_EVERY: Duration = Duration::from_secs(600);
/// How long this node remembers its own commands (to skip them in its tail).
const OWN_TTL: Duration = Duration::from_secs(120);

/// Appends a command, unless Redis's clock is past ARGV[1] (the sender has given up by then).
/// KEYS[1] = control stream, KEYS[2] = revocations hash.
/// ARGV = deadline (ms), revoke ('1'|'0'), user, node, command id, command JSON, maxlen.
/// Returns {'ok'|'late', now}.
const SEND_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if now > tonumber(ARGV[1]) then return {'late', now} end
local at = string.format('%.0f', now)
if ARGV[2] == '1' then
  local cur = tonumber(redis.call('HGET', KEYS[2], ARGV[3]) or '0')
  if now > cur then redis.call('HSET', KEYS[2], ARGV[3], at) end
end
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[7], '*', 'n', ARGV[4], 'i', ARGV[5], 'c', ARGV[6], 'r', at)
return {'ok', now}
";

/// Where one of this node's own commands is, between its sender and its tail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Own {
    /// Sent; no answer yet.
    Pending,
    /// The tail read it before the sender had its answer: Redis accepted it.
    Seen,
    /// The sender applied it; the tail skips it.
    Applied,
}

/// Carries control commands through Redis and applies other nodes' commands here.
pub(crate) struct RedisCarrier {
    client: redis::Client,
    conn: ConnectionManager,
    stream_key: String,
    revoked_key: String,
    /// This process's id in the stream entries it writes.
    node_id: String,
    timeout: Duration,
    script: redis::Script,
    /// This node's own commands, by command id.
    own: Mutex<HashMap<String, (Own, Instant)>>,
    node: Arc<Node>,
    metrics: Arc<Metrics>,
}

fn unavailable(e: &redis::RedisError) -> GatewayError {
    GatewayError::Unavailable(format!("redis: {e}"))
}

fn too_slow() -> GatewayError {
    GatewayError::Unavailable("redis did not answer in time".into())
}

/// The state of the control tail between reads.
struct Tail {
    /// The newest stream id read; `None` until the stream was first read.
    last: Option<String>,
    conn: Option<MultiplexedConnection>,
    /// When the revocations hash was last loaded; `None`: load it before reading on.
    loaded: Option<Instant>,
    backoff: Duration,
}

impl RedisCarrier {
    /// Connects, loads the revocations Redis holds (when it answers now) and starts the tail.
    ///
    /// # Errors
    /// When the URL is invalid.
    pub(crate) async fn connect(
        broker: &BrokerConfig,
        node: Arc<Node>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
        tasks: &TaskTracker,
    ) -> anyhow::Result<Arc<Self>> {
        let (client, conn) = crate::broker::redis_connection(broker)?;
        let timeout = Duration::from_millis(broker.timeout_ms.max(1));
        let tag = format!("{{{}}}", broker.key_prefix);
        let carrier = Arc::new(Self {
            client,
            conn,
            stream_key: format!("{tag}:control"),
            revoked_key: format!("{tag}:revoked"),
            node_id: crate::hub::random_id(),
            timeout,
            script: redis::Script::new(SEND_SCRIPT),
            own: Mutex::new(HashMap::new()),
            node,
            metrics,
        });
        let mut tail = Tail {
            last: None,
            conn: None,
            loaded: None,
            backoff: Duration::from_millis(100),
        };
        // Before the first request: a restarted node must refuse revoked tokens at once.
        let mut conn = carrier.conn.clone();
        match carrier.sync(&mut conn, &mut tail).await {
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(error = %e, "redis unreachable at start; revocations load when it answers")
            }
        }
        tasks.spawn(carrier.clone().tail(tail, shutdown));
        Ok(carrier)
    }

    fn own(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Own, Instant)>> {
        // One map operation per critical section: a poisoned lock still holds a whole map.
        self.own
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Writes `command` to Redis for every node; returns it stamped with Redis's time (the
    /// revocation time) for this node to apply.
    ///
    /// # Errors
    /// [`GatewayError::Unavailable`] when Redis did not accept it in time; Redis refuses it if
    /// it arrives later.
    pub(crate) async fn send(&self, command: Command) -> Result<Command, GatewayError> {
        let json = serde_json::to_string(&command)
            .map_err(|e| GatewayError::Internal(format!("control command: {e}")))?;
        let id = crate::hub::random_id();
        {
            let mut own = self.own();
            let now = Instant::now();
            own.retain(|_, (_, at)| now.duration_since(*at) < OWN_TTL);
            own.insert(id.clone(), (Own::Pending, now));
        }
        let result = self.write(&command, &id, &json).await;
        let seen = self.own().remove(&id).map(|(state, _)| state);
        match result {
            Ok(at) => {
                if seen == Some(Own::Pending) {
                    // The tail has not read it yet: it skips it when it does.
                    self.own().insert(id, (Own::Applied, Instant::now()));
                }
                Ok(command.stamped(at))
            }
            Err(e) if seen == Some(Own::Seen) => {
                // The answer was lost, but the tail read the entry: Redis accepted it, and
                // every node applies it, so this one does too.
                // Redis's stamp went with the reply: the local clock stands in for it.
                tracing::warn!(error = %e, "control reply lost after Redis accepted the command");
                Ok(command.stamped(now_ms()))
            }
            Err(e) => {
                self.metrics.broker_errors.inc();
                Err(e)
            }
        }
    }

    /// Runs the send script within the timeout; returns Redis's time of the append.
    async fn write(&self, command: &Command, id: &str, json: &str) -> Result<u64, GatewayError> {
        let give_up = Instant::now() + self.timeout;
        let mut conn = self.conn.clone();
        // Redis's clock now, so the script can refuse to run once this call has given up.
        let (secs, micros): (u64, u64) =
            tokio::time::timeout_at(give_up.into(), redis::cmd("TIME").query_async(&mut conn))
                .await
                .map_err(|_| too_slow())?
                .map_err(|e| unavailable(&e))?;
        let redis_now = secs * 1000 + micros / 1000;
        // The reply needs time to come back: stop accepting a quarter of the budget early.
        let margin = self.timeout / 4;
        let left = give_up
            .saturating_duration_since(Instant::now())
            .saturating_sub(margin);
        if left.is_zero() {
            return Err(too_slow());
        }
        // `redis_now` was read before now: this deadline falls before `give_up − margin`.
        let deadline = redis_now + u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
        let (status, at): (String, u64) = tokio::time::timeout_at(
            give_up.into(),
            self.script
                .key(&self.stream_key)
                .key(&self.revoked_key)
                .arg(deadline)
                .arg(if command.revokes() { "1" } else { "0" })
                .arg(command.user_id())
                .arg(&self.node_id)
                .arg(id)
                .arg(json)
                .arg(STREAM_MAX)
                .invoke_async(&mut conn),
        )
        .await
        .map_err(|_| too_slow())?
        .map_err(|e| unavailable(&e))?;
        if status == "ok" {
            Ok(at)
        } else {
            Err(too_slow())
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

    /// This node's control tail; ends on `shutdown`.
    async fn tail(self: Arc<Self>, mut tail: Tail, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                () = self.tail_step(&mut tail) => {}
            }
        }
    }

    async fn tail_step(&self, tail: &mut Tail) {
        let mut conn = match tail.conn.take() {
            Some(c) => c,
            None => match self.tail_connection().await {
                Ok(c) => c,
                Err(e) => return self.tail_failed(tail, &e).await,
            },
        };
        if tail.loaded.is_none_or(|at| at.elapsed() > RELOAD_EVERY) {
            if let Err(e) = self.sync(&mut conn, tail).await {
                return self.tail_failed(tail, &e).await;
            }
        }
        let from = [tail.last.clone().unwrap_or_else(|| "0-0".to_owned())];
        let keys = [self.stream_key.as_str()];
        let opts = StreamReadOptions::default()
            .block(TAIL_BLOCK_MS)
            .count(TAIL_COUNT);
        let read: redis::RedisResult<Option<StreamReadReply>> =
            conn.xread_options(&keys, &from, &opts).await;
        match read {
            Ok(reply) => {
                tail.backoff = Duration::from_millis(100);
                for key in reply.map(|r| r.keys).unwrap_or_default() {
                    for entry in &key.ids {
                        tail.last = Some(entry.id.clone());
                        self.handle(entry);
                    }
                }
                tail.conn = Some(conn);
            }
            Err(e) => self.tail_failed(tail, &e).await,
        }
    }

    async fn tail_failed(&self, tail: &mut Tail, e: &(dyn std::fmt::Display + Sync)) {
        tracing::debug!(error = %e, "control tail: redis unreachable");
        tail.conn = None;
        // Revocations written while this node could not read are loaded when it can again.
        tail.loaded = None;
        tokio::time::sleep(tail.backoff).await;
        tail.backoff = (tail.backoff * 2).min(Duration::from_secs(2));
    }

    /// Loads the revocations hash (deleting entries past the longest token life), and, on the
    /// first read, starts the tail at the stream's newest entry (older commands were applied
    /// before this node started, or are in the hash).
    async fn sync<C: redis::aio::ConnectionLike + Send>(
        &self,
        conn: &mut C,
        tail: &mut Tail,
    ) -> Result<(), GatewayError> {
        if tail.last.is_none() {
            let newest: StreamRangeReply = timed(
                self.timeout,
                redis::cmd("XREVRANGE")
                    .arg(&self.stream_key)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1)
                    .query_async(conn),
            )
            .await?;
            tail.last = Some(
                newest
                    .ids
                    .first()
                    .map_or_else(|| "0-0".to_owned(), |e| e.id.clone()),
            );
        }
        let all: HashMap<String, u64> = timed(
            self.timeout,
            redis::cmd("HGETALL")
                .arg(&self.revoked_key)
                .query_async(conn),
        )
        .await?;
        let now = now_ms();
        let revocations = &self.node.revocations;
        let expired: Vec<&String> = all
            .iter()
            .filter(|(user, at)| !revocations.revoke(user, **at, now))
            .map(|(user, _)| user)
            .collect();
        if !expired.is_empty() {
            let _: i64 = timed(
                self.timeout,
                redis::cmd("HDEL")
                    .arg(&self.revoked_key)
                    .arg(&expired)
                    .query_async(conn),
            )
            .await?;
        }
        tail.loaded = Some(Instant::now());
        Ok(())
    }

    /// Applies one stream entry, unless this node sent it and applied it already.
    fn handle(&self, entry: &StreamId) {
        let node: Option<String> = entry.get("n");
        let id: Option<String> = entry.get("i");
        if node.as_deref() == Some(self.node_id.as_str()) {
            if let Some(id) = &id {
                let mut own = self.own();
                match own.get(id).map(|(s, _)| *s) {
                    Some(Own::Pending) => {
                        own.insert(id.clone(), (Own::Seen, Instant::now()));
                        return;
                    }
                    Some(Own::Applied) => {
                        own.remove(id);
                        return;
                    }
                    // Its sender gave up before this was read (so it answered UNAVAILABLE),
                    // yet Redis took it: apply it like every other node does.
                    Some(Own::Seen) | None => {}
                }
            }
        }
        let Some(command) = entry
            .get::<String>("c")
            .and_then(|c| serde_json::from_str::<Command>(&c).ok())
        else {
            tracing::warn!(id = %entry.id, "unreadable control entry skipped");
            return;
        };
        let at: u64 = entry.get("r").unwrap_or_else(now_ms);
        let command = command.stamped(at);
        let stale = entry_ms(&entry.id).is_some_and(|ms| ms.saturating_add(STALE_MS) < now_ms());
        if stale {
            // Only the revocation is still due: streams open now were opened after the command.
            if let Command::Disconnect {
                user_id,
                revoke_at_ms: Some(at),
                ..
            } = &command
            {
                self.node.revocations.revoke(user_id, *at, now_ms());
            }
            return;
        }
        self.node.apply(&command);
    }
}

/// `f` within `timeout`, its failures as [`GatewayError::Unavailable`].
async fn timed<T>(
    timeout: Duration,
    f: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, GatewayError> {
    tokio::time::timeout(timeout, f)
        .await
        .map_err(|_| too_slow())?
        .map_err(|e| unavailable(&e))
}

/// The ms part of a stream id.
fn entry_ms(id: &str) -> Option<u64> {
    id.split_once('-')?.0.parse().ok()
}

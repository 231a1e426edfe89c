//! The in-memory event log: one node, retention by count and age, idempotency keys.
//!
//! A `VecDeque` of shared events indexed by sequence number, so "after cursor X" is found in
//! O(1). Appends dispatch to the hub while holding the log lock, so every subscriber sees the
//! log's order.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{AppendOutcome, ReadBatch};
use crate::channel::{ChannelName, ChannelTypes};
use crate::config::HistoryConfig;
use crate::event::{now_ms, Event, NewEvent, Position};
use crate::hub::Hub;

/// Most events examined by one history read, bounding the cost of a sparse replay page.
const SCAN_LIMIT: usize = 20_000;

struct State {
    /// Sequence number of the next event (the first is 1).
    next_seq: u64,
    events: VecDeque<(Instant, Arc<Event>)>,
    /// Highest sequence number evicted by retention.
    evicted_upto: u64,
    dedupe: HashMap<(String, String), String>,
    dedupe_order: VecDeque<(Instant, (String, String))>,
    /// The latest event of each channel whose type keeps one, until it expires. Kept apart
    /// from `events`, so retention trimming does not drop it; one entry per channel.
    latest: HashMap<ChannelName, (Instant, Arc<Event>)>,
    /// When expired `latest` entries were last swept out.
    latest_swept: Instant,
}

/// How often expired latest events are swept out (each read also ignores them).
const LATEST_SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Appends `n` in decimal, zero-padded to 12 digits: `format!("{n:012}")` without the
/// formatting machinery, which was a noticeable part of a small publish.
fn push_padded(out: &mut String, mut n: u64) {
    let mut digits = [b'0'; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        // `n % 10` is a single digit.
        #[allow(clippy::cast_possible_truncation)]
        let digit = (n % 10) as u8;
        digits[start] = b'0' + digit;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let from = start.min(digits.len() - 12);
    out.push_str(std::str::from_utf8(&digits[from..]).unwrap_or_default());
}

/// The in-process log.
pub struct MemoryLog {
    /// Random per process: cursors of an earlier process are recognised as foreign.
    epoch: String,
    state: Mutex<State>,
    hub: Arc<Hub>,
    max_events: usize,
    max_age: Duration,
    dedupe_window: Duration,
    /// Which channels keep their latest event, and for how long.
    snapshots: Option<ChannelTypes>,
}

impl MemoryLog {
    /// An empty log feeding `hub`.
    pub fn new(history: &HistoryConfig, hub: Arc<Hub>) -> Self {
        let epoch: u32 = rand::random();
        Self {
            epoch: format!("m{epoch:08x}"),
            state: Mutex::new(State {
                next_seq: 1,
                events: VecDeque::new(),
                evicted_upto: 0,
                dedupe: HashMap::new(),
                dedupe_order: VecDeque::new(),
                latest: HashMap::new(),
                latest_swept: Instant::now(),
            }),
            hub,
            max_events: history.max_events,
            max_age: Duration::from_secs(history.max_age_secs),
            dedupe_window: Duration::from_secs(history.dedupe_window_secs),
            snapshots: None,
        }
    }

    /// Keeps the latest event of the channels whose type has `snapshot` set.
    #[must_use]
    pub fn with_snapshots(mut self, types: ChannelTypes) -> Self {
        self.snapshots = types.any_snapshot().then_some(types);
        self
    }

    /// See [`super::Broker::latest`]: the unexpired latest events of `channels`.
    pub fn latest(&self, channels: &[ChannelName]) -> Vec<Arc<Event>> {
        if self.snapshots.is_none() {
            return Vec::new();
        }
        let now = Instant::now();
        let state = self.lock();
        channels
            .iter()
            .filter_map(|ch| state.latest.get(ch))
            .filter(|(expires, _)| *expires > now)
            .map(|(_, ev)| ev.clone())
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cursor(&self, seq: u64) -> String {
        // Zero-padded so cursors of one log also sort as strings.
        let mut out = String::with_capacity(self.epoch.len() + 1 + 20);
        out.push_str(&self.epoch);
        out.push('-');
        push_padded(&mut out, seq);
        out
    }

    /// See [`super::Broker::parse_cursor`].
    pub fn parse_cursor(&self, cursor: &str) -> Option<Position> {
        let (epoch, seq) = cursor.split_once('-')?;
        if epoch != self.epoch {
            return None;
        }
        let minor = seq.parse().ok()?;
        Some(Position { major: 0, minor })
    }

    /// See [`super::Broker::head_cursor`].
    pub fn head_cursor(&self) -> String {
        self.cursor(self.head().minor)
    }

    /// See [`super::Broker::head`].
    pub fn head(&self) -> Position {
        Position {
            major: 0,
            minor: self.lock().next_seq - 1,
        }
    }

    fn prune(&self, state: &mut State, now: Instant) {
        if now.duration_since(state.latest_swept) >= LATEST_SWEEP_EVERY {
            state.latest_swept = now;
            state.latest.retain(|_, (expires, _)| *expires > now);
        }
        while let Some((at, ev)) = state.events.front() {
            let too_many = state.events.len() > self.max_events;
            if too_many || now.duration_since(*at) > self.max_age {
                state.evicted_upto = ev.position.minor;
                state.events.pop_front();
            } else {
                break;
            }
        }
        while let Some((at, _)) = state.dedupe_order.front() {
            if now.duration_since(*at) > self.dedupe_window {
                if let Some((_, key)) = state.dedupe_order.pop_front() {
                    state.dedupe.remove(&key);
                }
            } else {
                break;
            }
        }
    }

    /// See [`super::Broker::append`].
    pub fn append(&self, publisher: &str, events: Vec<NewEvent>) -> Vec<AppendOutcome> {
        let now = Instant::now();
        let ts = now_ms();
        let mut state = self.lock();
        self.prune(&mut state, now);
        let mut out = Vec::with_capacity(events.len());
        for new in events {
            let key = new
                .idempotency_key
                .as_ref()
                .map(|k| (publisher.to_owned(), k.clone()));
            if let Some(original) = key.as_ref().and_then(|k| state.dedupe.get(k)) {
                out.push(AppendOutcome {
                    cursor: original.clone(),
                    delivered: 0,
                    duplicate: true,
                });
                continue;
            }
            let seq = state.next_seq;
            state.next_seq += 1;
            let cursor = self.cursor(seq);
            let event = Arc::new(Event::new(
                Position {
                    major: 0,
                    minor: seq,
                },
                cursor.clone(),
                &new,
                ts,
            ));
            if let Some(key) = key {
                state.dedupe.insert(key.clone(), cursor.clone());
                state.dedupe_order.push_back((now, key));
            }
            state.events.push_back((now, event.clone()));
            if let Some(ttl) = self
                .snapshots
                .as_ref()
                .and_then(|t| t.snapshot_ttl(&new.channel))
            {
                // Appends hold the lock and positions grow: this one is the newest.
                state
                    .latest
                    .insert(new.channel.clone(), (now + ttl, event.clone()));
            }
            self.prune(&mut state, now);
            let delivered = self.hub.dispatch(&event);
            out.push(AppendOutcome {
                cursor,
                delivered,
                duplicate: false,
            });
        }
        out
    }

    /// See [`super::Broker::read_after`].
    pub fn read_after(
        &self,
        after: Position,
        channels: &HashSet<ChannelName>,
        limit: usize,
    ) -> ReadBatch {
        let mut state = self.lock();
        self.prune(&mut state, Instant::now());
        let head = state.next_seq - 1;
        let mut batch = ReadBatch {
            gap: state.evicted_upto > after.minor || after.minor > head,
            last: Position {
                major: 0,
                minor: head,
            },
            done: true,
            events: Vec::new(),
        };
        if after.minor >= head {
            return batch;
        }
        let first = state
            .events
            .front()
            .map_or(head + 1, |(_, e)| e.position.minor);
        let start = usize::try_from((after.minor + 1).saturating_sub(first)).unwrap_or(usize::MAX);
        for (scanned, (_, ev)) in state.events.iter().skip(start).enumerate() {
            if channels.contains(&ev.channel) {
                batch.events.push(ev.clone());
            }
            if batch.events.len() >= limit || scanned + 1 >= SCAN_LIMIT {
                batch.last = ev.position;
                batch.done = ev.position.minor >= head;
                break;
            }
        }
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::push_padded;

    #[test]
    fn cursors_are_padded_like_format() {
        for n in [0, 1, 9, 10, 999_999_999_999, 1_000_000_000_000, u64::MAX] {
            let mut out = String::new();
            push_padded(&mut out, n);
            assert_eq!(out, format!("{n:012}"));
        }
    }
}

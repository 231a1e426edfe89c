//! The invariant, per subscriber: every acknowledged event of its channels after its start
//! cursor arrives exactly once, in log order — or an explicit `gap` precedes the place where it
//! would have come. Checked window by window (between two checkpoints), so each fault gets its
//! own count and nothing is counted twice.

use std::collections::HashSet;
use std::ops::Bound;

use super::publisher::{Id, Ledger};
use super::subscriber::{Rx, SubLog};

/// Counts of one window (or a sum of them).
#[derive(Clone, Copy, Debug, Default)]
pub struct Tally {
    /// Distinct acknowledged events in the window (all channels).
    pub acked: u64,
    /// (subscriber, acknowledged event) pairs expected and received.
    pub delivered: u64,
    /// Expected, not received, not excused by a gap.
    pub lost: u64,
    /// Received again (same id, or the same published event under another id).
    pub duplicated: u64,
    /// Received after an event with a higher id.
    pub out_of_order: u64,
    /// `gap` frames received.
    pub gaps: u64,
    /// Expected, not received, but preceded by a gap.
    pub excused: u64,
}

impl std::ops::AddAssign for Tally {
    fn add_assign(&mut self, o: Self) {
        self.acked += o.acked;
        self.delivered += o.delivered;
        self.lost += o.lost;
        self.duplicated += o.duplicated;
        self.out_of_order += o.out_of_order;
        self.gaps += o.gaps;
        self.excused += o.excused;
    }
}

/// What the checker remembers of one subscriber between windows.
#[derive(Default)]
pub struct CheckState {
    seen: HashSet<Id>,
    seen_logical: HashSet<(u32, u64)>,
    max: Option<Id>,
    /// Items checked so far.
    pos: usize,
    /// Checked through this id.
    upto: Option<Id>,
}

/// Checks the items of `log` from where the last window ended through the first event with an
/// id at or after `upto` (the checkpoint's marker, which the caller waited for).
pub fn check_window(
    name: &str,
    log: &SubLog,
    channels: &[usize],
    ledger: &Ledger,
    st: &mut CheckState,
    upto: Id,
    problems: &mut Vec<String>,
) -> Tally {
    let mut t = Tally::default();
    let Some(start) = log.start else {
        problems.push(format!("{name}: never received a ready cursor"));
        return t;
    };
    let lower = st.upto.unwrap_or(start).max(start);
    // Excuse intervals (exclusive bounds) of the gaps in this window.
    let mut excuses: Vec<(Id, Id)> = Vec::new();
    let mut end = st.pos;
    let mut reached = false;
    while end < log.items.len() {
        let item = &log.items[end];
        end += 1;
        match item {
            Rx::Open { .. } => {}
            Rx::Gap => {
                t.gaps += 1;
                let prev = st.max.unwrap_or(start);
                let next = log.items[end..]
                    .iter()
                    .find_map(|i| match i {
                        Rx::Event { id, .. } => Some(*id),
                        _ => None,
                    })
                    .unwrap_or((u64::MAX, u64::MAX));
                excuses.push((prev, next));
            }
            Rx::Event {
                id,
                channel,
                publisher,
                seq,
            } => {
                if !channels.contains(channel) {
                    problems.push(format!(
                        "{name}: {id:?} of channel {channel}, not subscribed"
                    ));
                }
                if *id > start {
                    if st.seen.contains(id) || st.seen_logical.contains(&(*publisher, *seq)) {
                        t.duplicated += 1;
                        if t.duplicated <= 3 {
                            problems.push(format!(
                                "{name}: duplicate {id:?} (publisher {publisher} seq {seq})"
                            ));
                        }
                    } else {
                        if st.max.is_some_and(|m| *id < m) {
                            t.out_of_order += 1;
                            if t.out_of_order <= 3 {
                                problems.push(format!(
                                    "{name}: {id:?} after {:?} (out of order)",
                                    st.max
                                ));
                            }
                        }
                        st.seen.insert(*id);
                        st.seen_logical.insert((*publisher, *seq));
                        st.max = Some(st.max.map_or(*id, |m| m.max(*id)));
                    }
                }
                if *id >= upto {
                    reached = true;
                    break;
                }
            }
        }
    }
    if !reached {
        problems.push(format!("{name}: did not reach the checkpoint {upto:?}"));
    }
    st.pos = end;
    st.upto = Some(upto);
    let mut lost_shown = 0;
    for &ch in channels {
        for id in ledger.by_channel[ch].range((Bound::Excluded(lower), Bound::Included(upto))) {
            if st.seen.contains(id) {
                t.delivered += 1;
            } else if excuses.iter().any(|(p, n)| p < id && id < n) {
                t.excused += 1;
            } else {
                t.lost += 1;
                if lost_shown < 5 {
                    lost_shown += 1;
                    let a = ledger.acked[id];
                    problems.push(format!(
                        "{name}: lost {id:?} (channel {ch}, publisher {} seq {})",
                        a.publisher, a.seq
                    ));
                }
            }
        }
    }
    t
}

/// Received events that were never acknowledged: `(id, publisher, seq)`.
pub fn unacked_received(log: &SubLog, ledger: &Ledger) -> Vec<(Id, u32, u64)> {
    log.items
        .iter()
        .filter_map(|i| match i {
            Rx::Event {
                id, publisher, seq, ..
            } if !ledger.acked.contains_key(id) && log.start.is_some_and(|s| *id > s) => {
                Some((*id, *publisher, *seq))
            }
            _ => None,
        })
        .collect()
}

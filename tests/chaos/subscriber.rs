//! SSE subscribers that record every frame and reconnect with `Last-Event-ID`, under one of
//! three policies: fail over to the other node at once, hold until told to reconnect (the storm),
//! or stop reading on command (a slow consumer).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::publisher::{parse_id, Id};
use super::sse::{self, OpenError, OpenOptions};

/// What a subscriber received, in order.
#[derive(Clone, Debug)]
pub enum Rx {
    /// An event message.
    Event {
        id: Id,
        channel: usize,
        publisher: u32,
        seq: u64,
    },
    /// `event: gap`.
    Gap,
    /// A stream opened (200 + `ready`): on which node, resuming from which cursor.
    Open { node: usize, resume: Option<Id> },
}

/// The record of one subscriber.
#[derive(Default, Debug)]
pub struct SubLog {
    pub items: Vec<Rx>,
    /// The `ready` cursor of the first stream: the subscriber expects every event after it.
    pub start: Option<Id>,
    /// The newest event id received, as sent (the next `Last-Event-ID`).
    pub last_cursor: Option<String>,
    pub last_id: Option<Id>,
    pub connected: bool,
    pub node: usize,
    pub opens: u32,
    pub disconnects: u32,
    pub open_errors: u32,
    pub last_open_error: Option<String>,
    /// Frames that broke the contract (bad envelope, unknown channel, control event without a
    /// reason to be there).
    pub anomalies: Vec<String>,
}

/// How a subscriber reconnects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Reconnect at once, to the other node first.
    FailOver,
    /// Reconnect only when the controller bumps `go`, to the node it names, after `jitter`.
    Hold,
    /// Stops reading while `paused`; reconnects to the same node.
    Slow,
}

/// Commands to a subscriber task.
#[derive(Clone, Debug, Default)]
pub struct Ctl {
    pub stop: bool,
    pub paused: bool,
    pub go: u64,
    pub node: usize,
}

/// What all subscribers share.
#[derive(Clone)]
pub struct Env {
    pub http: Vec<SocketAddr>,
    pub channel_index: Arc<HashMap<String, usize>>,
}

/// One subscriber.
pub struct Sub {
    pub name: String,
    pub channels: Vec<usize>,
    pub log: Arc<Mutex<SubLog>>,
    pub ctl: watch::Sender<Ctl>,
    task: Option<JoinHandle<()>>,
}

/// Parameters of a subscriber.
pub struct SubSpec {
    pub name: String,
    pub channels: Vec<usize>,
    pub token: String,
    pub node: usize,
    pub policy: Policy,
    pub source: Option<IpAddr>,
    pub recv_buffer: Option<u32>,
    pub jitter: Duration,
    /// Resume from this cursor on the first open (an auditor replaying the log).
    pub resume_from: Option<String>,
}

impl Sub {
    /// Starts the subscriber's task.
    pub fn spawn(env: &Env, spec: SubSpec, channel_names: &[String]) -> Self {
        let log = Arc::new(Mutex::new(SubLog {
            node: spec.node,
            start: spec.resume_from.as_deref().and_then(parse_id),
            last_cursor: spec.resume_from.clone(),
            ..SubLog::default()
        }));
        let (ctl, rx) = watch::channel(Ctl {
            node: spec.node,
            ..Ctl::default()
        });
        let query: Vec<String> = spec
            .channels
            .iter()
            .map(|&c| format!("channels={}", channel_names[c]))
            .collect();
        let path = format!("/api/sse?{}", query.join("&"));
        let task = tokio::spawn(run(env.clone(), log.clone(), rx, path, spec.clone_parts()));
        Self {
            name: spec.name,
            channels: spec.channels,
            log,
            ctl,
            task: Some(task),
        }
    }

    /// The newest event id received.
    pub fn last_id(&self) -> Option<Id> {
        self.log.lock().unwrap().last_id
    }

    /// Stops the task (its socket closes).
    pub async fn stop(&mut self) {
        self.ctl.send_modify(|c| c.stop = true);
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

struct TaskSpec {
    token: String,
    policy: Policy,
    source: Option<IpAddr>,
    recv_buffer: Option<u32>,
    jitter: Duration,
}

impl SubSpec {
    fn clone_parts(&self) -> TaskSpec {
        TaskSpec {
            token: self.token.clone(),
            policy: self.policy,
            source: self.source,
            recv_buffer: self.recv_buffer,
            jitter: self.jitter,
        }
    }
}

async fn run(
    env: Env,
    log: Arc<Mutex<SubLog>>,
    mut ctl: watch::Receiver<Ctl>,
    path: String,
    spec: TaskSpec,
) {
    let mut node = log.lock().unwrap().node;
    let mut go_seen = ctl.borrow().go;
    // Hold: a stream ended; wait for the controller before reconnecting.
    let mut need_go = false;
    let mut backoff = Duration::from_millis(20);
    loop {
        if ctl.borrow().stop {
            return;
        }
        match spec.policy {
            Policy::Hold if need_go => {
                let c = wait_ctl(&mut ctl, |c| c.stop || c.go > go_seen).await;
                if c.stop {
                    return;
                }
                go_seen = c.go;
                node = c.node;
                need_go = false;
                // Spreads the reconnects of the storm over its second (the fault's shape).
                tokio::time::sleep(spec.jitter).await;
            }
            Policy::Slow => {
                let c = wait_ctl(&mut ctl, |c| c.stop || !c.paused).await;
                if c.stop {
                    return;
                }
            }
            _ => {}
        }
        let resume = log.lock().unwrap().last_cursor.clone();
        let opened = sse::open(OpenOptions {
            addr: env.http[node],
            source: spec.source,
            recv_buffer: spec.recv_buffer,
            path_and_query: &path,
            token: &spec.token,
            last_event_id: resume.as_deref(),
            timeout: Duration::from_secs(20),
        })
        .await;
        let mut stream = match opened {
            Ok(s) => s,
            Err(e) => {
                {
                    let mut l = log.lock().unwrap();
                    l.open_errors += 1;
                    l.last_open_error = Some(e.to_string());
                    if let OpenError::Status(code) = e {
                        if code != 503 && code != 429 {
                            l.anomalies.push(format!("open answered {code}"));
                        }
                    }
                }
                if spec.policy == Policy::FailOver {
                    node = (node + 1) % env.http.len();
                }
                // Retry back-off after a failed open (a node that is down or overloaded).
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
                continue;
            }
        };
        backoff = Duration::from_millis(20);
        let mut ready_seen = false;
        loop {
            let frame = tokio::select! {
                biased;
                c = wait_ctl(&mut ctl, |c| c.stop || (spec.policy == Policy::Slow && c.paused)) => {
                    if c.stop {
                        return;
                    }
                    // A slow consumer: stop reading until resumed.
                    if wait_ctl(&mut ctl, |c| c.stop || !c.paused).await.stop {
                        return;
                    }
                    continue;
                }
                f = stream.next_frame() => f,
            };
            let Ok(Some(frame)) = frame else { break };
            let mut l = log.lock().unwrap();
            match frame.event.as_deref() {
                Some("ready") => {
                    let cursor = frame
                        .data
                        .as_deref()
                        .and_then(|d| serde_json::from_str::<Value>(d).ok())
                        .and_then(|v| v["cursor"].as_str().map(str::to_owned));
                    if l.start.is_none() && l.last_cursor.is_none() {
                        l.start = cursor.as_deref().and_then(parse_id);
                        l.last_cursor = cursor;
                    }
                    let resume_id = resume.as_deref().and_then(parse_id);
                    l.items.push(Rx::Open {
                        node,
                        resume: resume_id,
                    });
                    l.opens += 1;
                    l.connected = true;
                    l.node = node;
                    ready_seen = true;
                }
                Some("gap") => l.items.push(Rx::Gap),
                Some(other) => l.anomalies.push(format!("unexpected event: {other}")),
                None => {
                    if !ready_seen {
                        l.anomalies.push("event before ready".into());
                    }
                    match decode(&frame, &env.channel_index) {
                        Ok((cursor, rx)) => {
                            if let Rx::Event { id, .. } = rx {
                                l.last_id = Some(id);
                            }
                            l.last_cursor = Some(cursor);
                            l.items.push(rx);
                        }
                        Err(e) => l.anomalies.push(e),
                    }
                }
            }
        }
        let mut l = log.lock().unwrap();
        if ready_seen {
            l.disconnects += 1;
        }
        l.connected = false;
        drop(l);
        match spec.policy {
            Policy::FailOver => node = (node + 1) % env.http.len(),
            Policy::Hold => need_go = true,
            Policy::Slow => {}
        }
    }
}

/// Waits for a command state; a dropped controller means stop.
async fn wait_ctl(ctl: &mut watch::Receiver<Ctl>, f: impl FnMut(&Ctl) -> bool) -> Ctl {
    match ctl.wait_for(f).await {
        Ok(c) => c.clone(),
        Err(_) => Ctl {
            stop: true,
            ..Ctl::default()
        },
    }
}

fn decode(frame: &sse::Frame, index: &HashMap<String, usize>) -> Result<(String, Rx), String> {
    let cursor = frame.id.clone().ok_or("event message without id")?;
    let id = parse_id(&cursor).ok_or_else(|| format!("bad cursor {cursor:?}"))?;
    let data = frame.data.as_deref().ok_or("event message without data")?;
    let v: Value = serde_json::from_str(data).map_err(|e| format!("bad JSON ({e}): {data}"))?;
    if v["id"].as_str() != Some(cursor.as_str()) {
        return Err(format!("envelope id differs from the SSE id: {data}"));
    }
    let name = v["channel"].as_str().unwrap_or_default();
    let channel = *index
        .get(name)
        .ok_or_else(|| format!("unknown channel {name:?}"))?;
    let p = &v["payload"];
    let (Some(publisher), Some(seq)) = (p["p"].as_u64(), p["n"].as_u64()) else {
        return Err(format!("payload without p/n: {data}"));
    };
    Ok((
        cursor,
        Rx::Event {
            id,
            channel,
            publisher: u32::try_from(publisher).map_err(|e| e.to_string())?,
            seq,
        },
    ))
}

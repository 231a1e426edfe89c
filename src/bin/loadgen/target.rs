//! The servers under test, each its own process: the `sse-gateway` binary (`serve` with a
//! generated config and test PKI in a temp dir) and Nchan (nginx + nchan, `scripts/nchan.sh`
//! with a state dir and a free port of its own). Both are stopped when the scenario ends.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, BufReader};

/// Which server.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Gateway,
    Nchan,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Gateway => "gateway",
            Kind::Nchan => "nchan",
        }
    }

    /// Channel `i` as this server names it (`metrics:{workspace_id}` is a default gateway type).
    pub fn channel(self, i: usize) -> String {
        match self {
            Kind::Gateway => format!("metrics:c{i}"),
            Kind::Nchan => format!("c{i}"),
        }
    }
}

/// The gateway's log.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Broker {
    Memory,
    Redis,
}

/// Where the programs are.
#[derive(Clone, Debug)]
pub struct Programs {
    pub gateway: PathBuf,
    pub nchan_script: PathBuf,
    pub redis_url: String,
    /// A command the gateway runs under (a profiler), empty for none.
    pub wrap: Vec<String>,
}

impl Programs {
    /// `sse-gateway` beside this binary (same target dir) unless given; `scripts/nchan.sh` of
    /// this source tree unless given.
    pub fn locate(
        gateway: Option<PathBuf>,
        nchan: Option<PathBuf>,
        redis_url: String,
    ) -> anyhow::Result<Self> {
        let gateway = match gateway {
            Some(p) => p,
            None => std::env::current_exe()?
                .parent()
                .context("the loadgen binary has no folder")?
                .join("sse-gateway"),
        };
        if !gateway.exists() {
            anyhow::bail!(
                "{} is missing: build both binaries first (`cargo build --release --bins`)",
                gateway.display()
            );
        }
        let nchan_script =
            nchan.unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/nchan.sh"));
        Ok(Self {
            gateway,
            nchan_script,
            redis_url,
            wrap: Vec::new(),
        })
    }
}

/// A running server.
pub struct Server {
    pub kind: Kind,
    pub http: SocketAddr,
    grpc_port: u16,
    dir: PathBuf,
    token: String,
    child: Option<tokio::process::Child>,
    nchan_script: PathBuf,
    redis: Option<(String, String)>,
    /// Runs under a profiler: slow to start and to stop.
    wrapped: bool,
    /// `stop` ran; otherwise `Drop` stops what it can (a run cut short by `--max-secs` or Ctrl-C).
    stopped: bool,
}

fn scratch_dir(what: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "loadgen-{}-{what}-{}",
        std::process::id(),
        sse_gateway::hub::random_id()
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

impl Server {
    pub async fn start(kind: Kind, programs: &Programs, broker: Broker) -> anyhow::Result<Self> {
        match kind {
            Kind::Gateway => Self::gateway(programs, broker).await,
            Kind::Nchan => Self::nchan(programs).await,
        }
    }

    async fn gateway(programs: &Programs, broker: Broker) -> anyhow::Result<Self> {
        let dir = scratch_dir("gateway")?;
        sse_gateway::pki::ensure_dev_pki(&dir, &["loadgen"])?;
        let secret = format!(
            "{}{}",
            sse_gateway::hub::random_id(),
            sse_gateway::hub::random_id()
        );
        let prefix = format!(
            "loadgen-{}-{}",
            std::process::id(),
            sse_gateway::hub::random_id()
        );
        let broker_kind = match broker {
            Broker::Memory => "memory",
            Broker::Redis => "redis",
        };
        let config = format!(
            r#"[http]
addr = "127.0.0.1:0"

[grpc]
addr = "127.0.0.1:0"
tls_cert = "server.pem"
tls_key = "server-key.pem"
client_ca = "ca.pem"

[jwt]
secret = "{secret}"

[limits]
max_connections_per_user = 1000000
max_connections = 1000000

[broker]
kind = "{broker_kind}"
url = "{url}"
key_prefix = "{prefix}"

[[publishers]]
name = "loadgen"
channels = ["**"]
"#,
            url = programs.redis_url
        );
        let file = dir.join("gateway.toml");
        std::fs::write(&file, config)?;
        let log = std::fs::File::create(dir.join("gateway.log"))?;
        let mut command = match programs.wrap.split_first() {
            Some((tool, args)) => {
                let mut c = tokio::process::Command::new(tool);
                c.args(args).arg(&programs.gateway);
                c
            }
            None => tokio::process::Command::new(&programs.gateway),
        };
        let mut child = command
            .arg("serve")
            .arg("--config")
            .arg(&file)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", programs.gateway.display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let patience = if programs.wrap.is_empty() { 30 } else { 300 };
        let line = tokio::time::timeout(Duration::from_secs(patience), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.starts_with("listening:") {
                    return Some(line);
                }
            }
            None
        })
        .await
        .ok()
        .flatten();
        let Some(line) = line else {
            let _ = child.kill().await;
            let log = std::fs::read_to_string(dir.join("gateway.log")).unwrap_or_default();
            anyhow::bail!("the gateway did not start: {log}");
        };
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let addr = |key: &str| -> anyhow::Result<SocketAddr> {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .with_context(|| format!("no {key} in {line:?}"))?
                .parse()
                .with_context(|| format!("{key} in {line:?}"))
        };
        let (http, grpc) = (addr("http=")?, addr("grpc=")?);
        let token = sse_gateway::auth::jwt::mint_hs256(
            secret.as_bytes(),
            &sse_gateway::auth::jwt::Claims {
                sub: "loadgen".into(),
                exp: sse_gateway::event::now_ms() / 1000 + 24 * 3600,
                channels: vec!["metrics:**".into()],
                roles: vec![],
            },
        )?;
        Ok(Self {
            kind: Kind::Gateway,
            http,
            grpc_port: grpc.port(),
            dir,
            token,
            child: Some(child),
            nchan_script: programs.nchan_script.clone(),
            redis: (broker == Broker::Redis).then(|| (programs.redis_url.clone(), prefix)),
            wrapped: !programs.wrap.is_empty(),
            stopped: false,
        })
    }

    async fn nchan(programs: &Programs) -> anyhow::Result<Self> {
        let dir = scratch_dir("nchan")?;
        // A free port of our own, so a reference Nchan on 9080 (or another run) is left alone.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let out = tokio::process::Command::new("bash")
            .arg(&programs.nchan_script)
            .arg("start")
            .arg(&dir)
            .arg(port.to_string())
            .stdin(Stdio::null())
            .output()
            .await
            .with_context(|| format!("running {}", programs.nchan_script.display()))?;
        if !out.status.success() {
            anyhow::bail!(
                "{} start failed: {}{}",
                programs.nchan_script.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(Self {
            kind: Kind::Nchan,
            http: SocketAddr::from(([127, 0, 0, 1], port)),
            grpc_port: 0,
            dir,
            token: String::new(),
            child: None,
            nchan_script: programs.nchan_script.clone(),
            redis: None,
            wrapped: false,
            stopped: false,
        })
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    /// A publisher client over mTLS gRPC (the gateway).
    pub async fn grpc(
        &self,
    ) -> anyhow::Result<
        sse_gateway::ingest::pb::publisher_client::PublisherClient<tonic::transport::Channel>,
    > {
        sse_gateway::client::connect(
            &format!("localhost:{}", self.grpc_port),
            &self.dir.join("ca.pem"),
            &self.dir.join("loadgen.pem"),
            &self.dir.join("loadgen-key.pem"),
        )
        .await
    }

    /// Server processes: the gateway, or Nchan's workers (the master serves no request).
    pub fn pids(&self) -> Vec<u32> {
        match (&self.child, self.kind) {
            (Some(child), _) => child.id().into_iter().collect(),
            (None, Kind::Nchan) => {
                let Ok(master) = std::fs::read_to_string(self.dir.join("nchan.pid")) else {
                    return Vec::new();
                };
                let master = master.trim().to_owned();
                let mut pids = Vec::new();
                if let Ok(entries) = std::fs::read_dir("/proc") {
                    for entry in entries.flatten() {
                        let name = entry.file_name();
                        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
                            continue;
                        };
                        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                            .unwrap_or_default();
                        // pid (comm) state ppid …: the comm may hold spaces, so split after ')'.
                        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| {
                            rest.split_whitespace().nth(1).map(str::to_owned)
                        });
                        if ppid.as_deref() == Some(master.as_str()) {
                            pids.push(pid);
                        }
                    }
                }
                pids
            }
            (None, Kind::Gateway) => Vec::new(),
        }
    }

    /// Resident memory of the server processes, KiB (`VmRSS`, summed).
    pub fn rss_kib(&self) -> u64 {
        self.pids()
            .iter()
            .map(|&pid| status_kib(pid, "VmRSS:"))
            .sum()
    }

    /// CPU time (user + system) of the server processes so far, seconds.
    pub fn cpu_secs(&self) -> f64 {
        let u = self.usage();
        u.user + u.sys
    }

    /// CPU time by mode and write/read system calls of the server processes so far.
    pub fn usage(&self) -> Usage {
        let mut total = Usage::default();
        for pid in self.pids() {
            let (user, sys) = cpu_of(pid);
            total.user += user;
            total.sys += sys;
            let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
            let count = |key: &str| {
                io.lines()
                    .find_map(|l| l.strip_prefix(key))
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .unwrap_or(0)
            };
            total.writes += count("syscw:");
            total.reads += count("syscr:");
        }
        total
    }

    pub async fn stop(mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM first: the gateway drains and exits, and a profiler it runs under
            // writes its data; SIGKILL when it takes too long.
            if let Some(pid) = child.id() {
                let _ = tokio::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status()
                    .await;
            }
            let patience = if self.wrapped { 120 } else { 10 };
            if tokio::time::timeout(Duration::from_secs(patience), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
        if self.kind == Kind::Nchan {
            let _ = tokio::process::Command::new("bash")
                .arg(&self.nchan_script)
                .arg("stop")
                .arg(&self.dir)
                .stdout(Stdio::null())
                .status()
                .await;
            // nginx exits after its workers; give it a moment before the dir goes.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if let Some((url, prefix)) = self.redis.take() {
            if let Err(e) = drop_keys(&url, &prefix).await {
                eprintln!("loadgen: could not remove Redis keys {prefix}*: {e:#}");
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        self.stopped = true;
    }
}

impl Drop for Server {
    /// The gateway child is killed on drop; Nchan is a daemon and must be told to stop.
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        if self.kind == Kind::Nchan {
            let _ = std::process::Command::new("bash")
                .arg(&self.nchan_script)
                .arg("stop")
                .arg(&self.dir)
                .stdout(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Server CPU seconds (user, system) and system calls (`syscw`, `syscr` of `/proc/<pid>/io`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    pub user: f64,
    pub sys: f64,
    pub writes: u64,
    pub reads: u64,
}

/// CPU seconds (user, system) of a process so far.
pub fn cpu_of(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    // After the comm: state is field 3, utime 14, stime 15 (1-based, man proc); clock ticks.
    let ticks = |i: usize| {
        fields
            .get(i - 3)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(14) / 100.0, ticks(15) / 100.0)
}

fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// Removes the keys a Redis-backed run left under its prefix (Redis is shared).
async fn drop_keys(url: &str, prefix: &str) -> anyhow::Result<()> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await?;
        if !keys.is_empty() {
            let _: u64 = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

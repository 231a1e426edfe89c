//! The processes under test: a private `redis-server` (AOF, `appendfsync always`) and gateway
//! nodes running the built binary, each with its own TOML file. Every process is killed when its
//! handle drops, and dies with the test process (`PR_SET_PDEATHSIG`), so a failed or interrupted
//! run leaves nothing behind on a shared machine.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_sse-gateway");

/// Publisher certificates of the run: the load, the probes and the markers publish as
/// `l5-etl-service` (one dedupe namespace, keys unique per publisher task).
pub const SERVICE: &str = "l5-etl-service";

/// Starts `cmd` so that it is killed when the test process dies.
fn spawn_owned(cmd: &mut Command) -> std::io::Result<Child> {
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.spawn()
}

/// Sends a signal to a child process.
pub fn signal(child: &Child, sig: libc::c_int) {
    let pid = libc::pid_t::try_from(child.id()).expect("pid fits");
    // SAFETY: plain kill(2) on a pid we own and have not reaped.
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
}

/// CPU seconds (user + system) a process has used, from `/proc/PID/stat`.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at state = field 3.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    // utime and stime are fields 14 and 15, i.e. 11 and 12 after the state field.
    (ticks(11) + ticks(12)) / hz.max(1.0)
}

/// A free port on 127.0.0.1 below the ephemeral range (32768+), so that no outgoing connection
/// takes it while its process is down between a kill and a restart. Bound and released: a tiny
/// race, handled by retrying the start.
fn free_port() -> u16 {
    loop {
        let port = 20_000 + rand::random::<u16>() % 12_000;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Raises the soft open-files limit to the hard limit (client sockets of the storm live in
/// this process; the gateway children inherit the raised limit). Returns the new soft limit.
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    lim.rlim_cur
}

/// The private Redis.
pub struct Redis {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
    pub stopped: bool,
}

impl Redis {
    /// Starts a Redis with its AOF in `dir` on a free port.
    pub fn start(dir: &Path) -> Self {
        for _ in 0..5 {
            let mut redis = Self {
                port: free_port(),
                dir: dir.to_owned(),
                child: None,
                stopped: false,
            };
            if redis.spawn() {
                return redis;
            }
        }
        panic!(
            "redis-server did not start (see {}/redis.log)",
            dir.display()
        );
    }

    /// Starts the process on `self.port`; false when it exits before answering.
    fn spawn(&mut self) -> bool {
        let child = spawn_owned(
            Command::new("redis-server")
                .args(["--bind", "127.0.0.1", "--port"])
                .arg(self.port.to_string())
                .arg("--dir")
                .arg(&self.dir)
                .args([
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "always",
                    "--save",
                    "",
                    "--daemonize",
                    "no",
                    "--protected-mode",
                    "no",
                    "--loglevel",
                    "warning",
                    "--logfile",
                ])
                .arg(self.dir.join("redis.log"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
        .expect("redis-server runs (apt-get install redis-server)");
        self.child = Some(child);
        self.stopped = false;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.ping() {
                return true;
            }
            if let Some(Ok(Some(_))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis on port {} did not answer PING in 30 s", self.port);
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Whether it answers PING with PONG (not LOADING) within 1 s.
    pub fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], self.port)),
            Duration::from_secs(1),
        ) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        if s.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut buf = [0u8; 64];
        matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
    }

    /// CPU seconds used since the process started.
    pub fn cpu(&self) -> f64 {
        self.child.as_ref().map_or(0.0, |c| cpu_seconds(c.id()))
    }

    /// `SIGSTOP`: the process freezes with its sockets open.
    pub fn pause(&mut self) {
        signal(self.child.as_ref().expect("redis runs"), libc::SIGSTOP);
        self.stopped = true;
    }

    /// `SIGCONT`.
    pub fn resume(&mut self) {
        signal(self.child.as_ref().expect("redis runs"), libc::SIGCONT);
        self.stopped = false;
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same port from the AOF in the same folder.
    pub fn restart(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.spawn() {
            assert!(
                Instant::now() < deadline,
                "redis did not restart on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What every node of the run shares.
pub struct NodeSpec {
    pub dir: PathBuf,
    pub secret: String,
    pub redis_url: String,
    pub key_prefix: String,
}

/// One gateway process.
pub struct Node {
    pub name: String,
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Node {
    /// Starts a node on free ports (it keeps them across restarts).
    pub fn start(spec: &NodeSpec, name: &str) -> Self {
        let config = spec.dir.join(format!("{name}.toml"));
        let log = spec.dir.join(format!("{name}.log"));
        for _ in 0..5 {
            let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let grpc = SocketAddr::from(([127, 0, 0, 1], free_port()));
            write_config(spec, &config, &http.to_string(), &grpc.to_string());
            let mut node = Self {
                name: name.to_owned(),
                http,
                grpc,
                config: config.clone(),
                log: log.clone(),
                child: None,
            };
            match node.spawn() {
                Ok(bound) => {
                    assert_eq!(bound, (http, grpc), "{name} prints the addresses it bound");
                    return node;
                }
                Err(e) => eprintln!("chaos: {name} did not start ({e}); other ports"),
            }
        }
        panic!("{name} did not start");
    }

    /// Runs the binary and waits for its `listening:` line.
    fn spawn(&mut self) -> Result<(SocketAddr, SocketAddr), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| e.to_string())?;
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "warn,sse_gateway=info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        for (k, _) in std::env::vars() {
            if k.starts_with("SSE_GATEWAY__") {
                cmd.env_remove(k);
            }
        }
        let mut child = spawn_owned(&mut cmd).map_err(|e| e.to_string())?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let mut sent = false;
            for line in lines.by_ref() {
                let Ok(line) = line else { break };
                if !sent && line.starts_with("listening:") {
                    let _ = tx.send(line);
                    sent = true;
                }
            }
        });
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "no `listening:` line (log: {})\n{}",
                    self.log.display(),
                    tail(&self.log)
                ));
            }
        };
        let addr = |key: &str| -> Result<SocketAddr, String> {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .and_then(|a| a.parse().ok())
                .ok_or_else(|| format!("no {key} in {line:?}"))
        };
        let addrs = (addr("http=")?, addr("grpc=")?);
        self.child = Some(child);
        Ok(addrs)
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the node again on its ports (retrying while the port is not free yet).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "{} is running", self.name);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.spawn() {
                Ok((http, grpc)) => {
                    assert_eq!((http, grpc), (self.http, self.grpc), "same ports");
                    return;
                }
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "{} did not restart: {e}",
                        self.name
                    );
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }

    /// CPU seconds used since the process started.
    pub fn cpu(&self) -> f64 {
        self.child.as_ref().map_or(0.0, |c| cpu_seconds(c.id()))
    }

    /// The last lines of its log.
    pub fn log_tail(&self) -> String {
        tail(&self.log)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

fn write_config(spec: &NodeSpec, path: &Path, http: &str, grpc: &str) {
    let text = format!(
        r#"[http]
addr = "{http}"

[grpc]
addr = "{grpc}"
tls_cert = "server.pem"
tls_key = "server-key.pem"
client_ca = "ca.pem"

[jwt]
algorithm = "HS256"
secret = "{secret}"

[limits]
max_connections_per_user = 100000

[history]
max_events = 1000000
max_age_secs = 86400

[broker]
kind = "redis"
url = "{url}"
key_prefix = "{prefix}"

[[publishers]]
name = "{service}"
channels = ["logs:**"]
"#,
        secret = spec.secret,
        url = spec.redis_url,
        prefix = spec.key_prefix,
        service = SERVICE,
    );
    std::fs::write(path, text).expect("config written");
}

/// One blocking `GET path` on a fresh connection: (status, body, elapsed). Runs on plain threads
/// so the measurement does not include the test runtime's scheduling.
pub fn http_get(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<(u16, String, Duration), String> {
    let start = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    let _ = s.set_read_timeout(Some(timeout));
    let _ = s.set_write_timeout(Some(timeout));
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| e.to_string())?;
    let elapsed = start.elapsed();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad response: {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body, elapsed))
}

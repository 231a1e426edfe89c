//! A `redis-server` of one test alone, on an ephemeral port in a temporary directory, that can
//! be paused (SIGSTOP) and resumed (SIGCONT) to play an unresponsive Redis. Killed on drop.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::time::Instant;

use super::WAIT;

pub struct PrivateRedis {
    child: Child,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl PrivateRedis {
    /// Starts one and waits until it answers `PING`; tries another port when the one picked
    /// was taken meanwhile.
    pub async fn start() -> Self {
        for _ in 0..5 {
            let addr = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap();
            let dir = tempfile::tempdir().unwrap();
            let mut child = Command::new("redis-server")
                .args(["--bind", "127.0.0.1", "--port", &addr.port().to_string()])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server is installed");
            let deadline = Instant::now() + WAIT;
            loop {
                if child.try_wait().unwrap().is_some() {
                    break; // the port was taken meanwhile: try another
                }
                let client = redis::Client::open(format!("redis://{addr}")).unwrap();
                if let Ok(mut c) = client.get_multiplexed_async_connection().await {
                    let pong: redis::RedisResult<String> =
                        redis::cmd("PING").query_async(&mut c).await;
                    if pong.is_ok() {
                        return Self {
                            child,
                            addr,
                            _dir: dir,
                        };
                    }
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("private redis-server on {addr} did not answer within {WAIT:?}");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        panic!("could not start a private redis-server");
    }

    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Sends `sig` (as `kill` spells it, e.g. `-STOP`) to the server.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    }

    /// Freezes the server: connections stay open, commands queue up unanswered.
    pub fn stop(&self) {
        self.signal("-STOP");
    }

    pub fn cont(&self) {
        self.signal("-CONT");
    }

    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

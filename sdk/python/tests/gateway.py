"""Test harness: a REAL sse-gateway process with freshly generated certificates, and an SSE reader.

The binary is `$SSE_GATEWAY_BIN`, default `<repo>/target/debug/sse-gateway` (built by `cargo build`).
Every wait has a deadline; nothing sleeps and hopes.
"""

from __future__ import annotations

import http.client
import json
import os
import queue
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

REPO = Path(__file__).resolve().parents[3]
BIN = Path(os.environ.get("SSE_GATEWAY_BIN") or REPO / "target" / "debug" / "sse-gateway")

JWT_SECRET = "test-secret-test-secret-test-secret"
SERVICES = ["l5-etl-service", "faas-service", "analytics-service", "stranger-service"]

CONFIG = f"""\
[http]
addr = "127.0.0.1:0"

[grpc]
addr = "127.0.0.1:0"
tls_cert = "server.pem"
tls_key = "server-key.pem"
client_ca = "ca.pem"

[jwt]
secret = "{JWT_SECRET}"

[[publishers]]
name = "l5-etl-service"
channels = ["logs:**", "metrics:*"]

[[publishers]]
name = "analytics-service"
channels = ["metrics:*", "dashboards:*"]
control = true

[[publishers]]
name = "faas-service"
channels = ["workflow:**"]
"""

_LISTENING = re.compile(r"listening: http=(\S+) grpc=(\S+)")


def require_binary() -> Path:
    if not BIN.is_file() or not os.access(BIN, os.X_OK):
        raise RuntimeError(
            f"sse-gateway binary not found at {BIN}: run `cargo build` in the repository, "
            "or point $SSE_GATEWAY_BIN at it"
        )
    return BIN


def run(*args: str, timeout: float = 30) -> str:
    proc = subprocess.run([str(require_binary()), *args], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"sse-gateway {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def make_certs(out: Path, services: List[str]) -> Path:
    args = ["certs", "--out", str(out)]
    for s in services:
        args += ["--service", s]
    run(*args)
    for f in ["ca.pem", "server.pem", "server-key.pem"] + [f"{s}.pem" for s in services] + [f"{s}-key.pem" for s in services]:
        if not (out / f).is_file():
            raise RuntimeError(f"`sse-gateway certs` did not write {out / f}")
    return out


class Gateway:
    """One `sse-gateway serve` process on ephemeral ports."""

    def __init__(self, folder: Path, config: str = CONFIG):
        self.folder = folder
        self.config = folder / "config.toml"
        self.config.write_text(config)
        self.proc: Optional[subprocess.Popen] = None
        self.http_addr = ""
        self.grpc_port = 0
        self.log_path = folder / "gateway.log"

    @property
    def grpc_addr(self) -> str:
        # Dial the name in the server certificate, not the IP.
        return f"localhost:{self.grpc_port}"

    def start(self, timeout: float = 20) -> "Gateway":
        log = open(self.log_path, "wb")
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info")
        self.proc = subprocess.Popen(
            [str(require_binary()), "serve", "--config", str(self.config)],
            stdout=subprocess.PIPE, stderr=log, env=env, cwd=str(self.folder),
        )
        lines: "queue.Queue[Optional[bytes]]" = queue.Queue()

        def pump() -> None:
            assert self.proc and self.proc.stdout
            for line in self.proc.stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + timeout
        seen = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.stop()
                raise RuntimeError(f"gateway printed no 'listening:' line within {timeout}s; stdout={seen} log:\n{self.log()}")
            try:
                line = lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                code = self.proc.wait(timeout=5)
                raise RuntimeError(f"gateway exited ({code}) before listening; stdout={seen} log:\n{self.log()}")
            text = line.decode(errors="replace").strip()
            seen.append(text)
            m = _LISTENING.search(text)
            if m:
                self.http_addr = m.group(1)
                self.grpc_port = int(m.group(2).rsplit(":", 1)[1])
                return self

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)

    def cert(self, service: str) -> Dict[str, str]:
        """Publisher keyword arguments for a service's certificate."""
        return {
            "addr": self.grpc_addr,
            "ca": str(self.folder / "ca.pem"),
            "cert": str(self.folder / f"{service}.pem"),
            "key": str(self.folder / f"{service}-key.pem"),
        }

    def token(self, sub: str = "alice", channels: str = "logs:**,metrics:*,dashboards:*,workflow:**",
              roles: Optional[str] = None) -> str:
        args = ["token", "--config", str(self.config), "--sub", sub, "--channels", channels]
        if roles:
            args += ["--roles", roles]
        return run(*args).strip()

    def sse(self, channels: List[str], token: Optional[str] = None, timeout: float = 10) -> "SSEStream":
        return SSEStream(self.http_addr, token or self.token(), channels, timeout=timeout)


class SSEStream:
    """A streaming SSE reader (http.client) that parses frames on a thread into a queue."""

    def __init__(self, http_addr: str, token: str, channels: List[str], timeout: float = 10):
        host, port = http_addr.rsplit(":", 1)
        self.conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
        query = "&".join(f"channels={c}" for c in channels)
        self.conn.request("GET", f"/api/sse?{query}", headers={
            "Authorization": f"Bearer {token}", "Accept": "text/event-stream",
        })
        self.resp = self.conn.getresponse()
        if self.resp.status != 200:
            body = self.resp.read().decode(errors="replace")
            self.conn.close()
            raise AssertionError(f"GET /api/sse -> {self.resp.status}: {body}")
        self.content_type = self.resp.getheader("Content-Type", "")
        # Reads block on the reader thread; `next` keeps the deadlines. close() unblocks it.
        if self.conn.sock is not None:
            self.conn.sock.settimeout(None)
        self.frames: "queue.Queue[Optional[Dict[str, Any]]]" = queue.Queue()
        self.retry: Optional[int] = None
        self._closed = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        self.ready = self.next(lambda f: f.get("event") == "ready", timeout=timeout)
        self.ready_data = json.loads(self.ready["data"])

    def _read(self) -> None:
        frame: Dict[str, Any] = {}
        data: List[str] = []
        try:
            while True:
                raw = self.resp.readline()
                if not raw:
                    break
                line = raw.decode("utf-8").rstrip("\r\n")
                if line == "":
                    if data or frame:
                        if data:
                            frame["data"] = "\n".join(data)
                        self.frames.put(frame)
                    frame, data = {}, []
                    continue
                if line.startswith(":"):
                    continue
                name, _, value = line.partition(":")
                if value.startswith(" "):
                    value = value[1:]
                if name == "data":
                    data.append(value)
                elif name == "retry":
                    self.retry = int(value)
                else:
                    frame[name] = value
        except Exception:
            pass
        finally:
            self.frames.put(None)

    def next(self, pred: Callable[[Dict[str, Any]], bool], timeout: float = 10) -> Dict[str, Any]:
        """The next frame matching `pred`, skipping others; fails after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        skipped = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no matching SSE frame within {timeout}s; skipped: {skipped}")
            try:
                frame = self.frames.get(timeout=left)
            except queue.Empty:
                continue
            if frame is None:
                raise AssertionError(f"SSE stream ended; skipped: {skipped}")
            if pred(frame):
                return frame
            skipped.append(frame)

    def next_event(self, channel: Optional[str] = None, timeout: float = 10) -> Dict[str, Any]:
        """The next published event (a frame without `event:`), parsed, with the frame's `id`."""
        def is_event(f: Dict[str, Any]) -> bool:
            if "event" in f or "data" not in f:
                return False
            return channel is None or json.loads(f["data"]).get("channel") == channel
        frame = self.next(is_event, timeout)
        env = json.loads(frame["data"])
        env["_frame_id"] = frame.get("id")
        return env

    def close(self) -> None:
        self._closed = True
        try:
            if self.conn.sock is not None:
                self.conn.sock.shutdown(2)
        except OSError:
            pass
        self.conn.close()

    def __enter__(self) -> "SSEStream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

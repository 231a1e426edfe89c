"""A gateway that is down never breaks (or stalls) the caller: an error result within the deadline."""

import socket
import time
from pathlib import Path

import pytest

from gateway import Gateway, SERVICES, make_certs
from sse_gateway_sdk import AsyncPublisher, PublishError, Publisher


FIXTURES = Path(__file__).parent / "fixtures"
# A self-signed certificate trusted nowhere: no handshake has to succeed in these tests.
DUMMY = dict(ca=str(FIXTURES / "dummy.pem"), cert=str(FIXTURES / "dummy.pem"), key=str(FIXTURES / "dummy-key.pem"))


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_nothing_listening_returns_unavailable():
    with Publisher(f"127.0.0.1:{closed_port()}", **DUMMY, timeout=3) as pub:
        t0 = time.monotonic()
        res = pub.publish("logs:ws1:wf1", {"x": 1})
        batch = pub.publish_batch([("logs:ws1:wf1", 1)])
        log = pub.publish_log("ws1", "wf1", "line")
        assert time.monotonic() - t0 < 3 * 3 + 1
    assert not res.ok and res.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED") and res.message, res
    assert not batch.ok and batch.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
    assert not log.ok


def test_unresponsive_gateway_hits_the_deadline():
    # A socket that accepts TCP connections (kernel backlog) but never speaks TLS.
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(16)
        port = hole.getsockname()[1]
        with Publisher(f"127.0.0.1:{port}", **DUMMY, timeout=1.0) as pub:
            t0 = time.monotonic()
            res = pub.publish("logs:ws1:wf1", 1)
            took = time.monotonic() - t0
            assert res.code == "DEADLINE_EXCEEDED", res
            assert 0.8 < took < 2.5, took
            t0 = time.monotonic()
            with pytest.raises(PublishError) as e:
                pub.publish("logs:ws1:wf1", 1, strict=True, timeout=0.5)
            assert e.value.code == "DEADLINE_EXCEEDED"
            assert time.monotonic() - t0 < 2


def test_async_publisher_with_gateway_down():
    import asyncio

    async def main():
        async with AsyncPublisher(f"127.0.0.1:{closed_port()}", **DUMMY, timeout=2) as pub:
            return await pub.publish("logs:ws1:wf1", 1)

    res = asyncio.run(main())
    assert not res.ok and res.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED")


def test_gateway_going_down_and_publisher_keeps_working(tmp_path):
    folder = make_certs(tmp_path, SERVICES)
    gw = Gateway(folder).start()
    try:
        pub = Publisher(**gw.cert("l5-etl-service"), timeout=2)
        assert pub.publish("logs:ws1:wf1", 1).ok
    finally:
        gw.stop()
    t0 = time.monotonic()
    res = pub.publish("logs:ws1:wf1", 2)
    assert time.monotonic() - t0 < 3
    assert not res.ok and res.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED"), res
    pub.close()
    closed = pub.publish("logs:ws1:wf1", 3)
    assert closed.code == "FAILED_PRECONDITION", closed

"""The on/off switch: SSE_GATEWAY_ENABLED=false (or enabled=False) makes a publisher a no-op."""

import asyncio
import logging
import socket

import pytest

from sse_gateway_sdk import DISABLED, AsyncPublisher, ConfigError, Event, Publisher

PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
ENV = ("SSE_GATEWAY_ADDR", "SSE_GATEWAY_CA", "SSE_GATEWAY_CERT", "SSE_GATEWAY_KEY", "SSE_GATEWAY_ENABLED")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for k in ENV:
        monkeypatch.delenv(k, raising=False)


@pytest.fixture
def listener():
    """A TCP socket that would accept a connection but never answers: any dial would show up
    here (and an enabled publisher would wait for its deadline)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        s.setblocking(False)
        yield s


def assert_never_dialled(s: socket.socket) -> None:
    with pytest.raises(BlockingIOError):
        conn, _ = s.accept()
        conn.close()


def disabled_records(caplog):
    return [r for r in caplog.records if r.name == "sse_gateway_sdk" and "disabled" in r.getMessage()]


@pytest.mark.parametrize("how", ["env", "argument"])
def test_disabled_publisher_dials_nothing_and_logs_once(how, listener, monkeypatch, caplog):
    addr = f"localhost:{listener.getsockname()[1]}"
    if how == "env":
        monkeypatch.setenv("SSE_GATEWAY_ENABLED", "false")
        kwargs = {}
    else:
        kwargs = {"enabled": False}
    with caplog.at_level(logging.INFO, logger="sse_gateway_sdk"):
        # No certificate at all: a disabled publisher needs none.
        pub = Publisher(addr, timeout=2, **kwargs)
        assert pub.enabled is False and "enabled=False" in repr(pub)
        results = [
            pub.publish("dashboards:sales", {"total": 1}, event="update"),
            pub.publish_log("ws1", "wf1", "line"),
            pub.publish_log("ws1", None, "line"),
            pub.publish_metric("ws1", {"cpu": 0.5}),
            pub.publish("dashboards:sales", 2, strict=True),  # never raised, even when strict
            pub.publish("dashboards:sales", object()),  # not even validated
        ]
        batch = pub.publish_batch([Event("metrics:ws1", 1), ("logs:ws1:wf1", "x")])
        pub.close()
        after_close = pub.publish("dashboards:sales", 3)
    for r in results + [after_close]:
        assert not r.ok and r.code == DISABLED == "DISABLED", r
        assert "disabled" in r.message and r.id == ""
    assert [r.channel for r in results[:4]] == ["dashboards:sales", "logs:ws1:wf1", "logs:ws1", "metrics:ws1"]
    assert not batch.ok and batch.code == DISABLED and batch.results == [] and "disabled" in batch.message
    assert_never_dialled(listener)
    records = disabled_records(caplog)
    assert len(records) == 1, [r.getMessage() for r in caplog.records]
    assert records[0].levelno == logging.WARNING and "DISABLED" in records[0].getMessage()
    ours = [r for r in caplog.records if r.name.startswith("sse_gateway_sdk")]
    assert len(ours) == 1, "a disabled publish logs nothing else"


def test_disabled_async_publisher(listener, monkeypatch, caplog):
    monkeypatch.setenv("SSE_GATEWAY_ENABLED", "off")

    async def main():
        async with AsyncPublisher(f"localhost:{listener.getsockname()[1]}") as pub:
            return [
                await pub.publish("dashboards:sales", 1),
                await pub.publish_batch([("metrics:ws1", 1)]),
                await pub.publish_log("ws1", "wf1", "x"),
                await pub.publish_metric("ws1", 1, strict=True),
            ]

    with caplog.at_level(logging.INFO, logger="sse_gateway_sdk"):
        results = asyncio.run(main())
    assert [r.code for r in results] == [DISABLED] * 4 and not any(results)
    assert_never_dialled(listener)
    assert len(disabled_records(caplog)) == 1


def test_disabled_publisher_reads_no_certificate(tmp_path):
    missing = str(tmp_path / "missing.pem")
    with Publisher("localhost:1", ca=missing, cert=missing, key=missing, enabled=False) as pub:
        assert pub.publish("a:b", 1).code == DISABLED


@pytest.mark.parametrize("value", ["false", "FALSE", "False", " off ", "Off", "0", "no", "NO"])
def test_false_spellings_disable(value, monkeypatch):
    monkeypatch.setenv("SSE_GATEWAY_ENABLED", value)
    assert Publisher().enabled is False
    assert Publisher(enabled=value).enabled is False


@pytest.mark.parametrize("value", ["true", "TRUE", "1", "yes", "On", ""])
def test_true_spellings_and_empty_enable(value, monkeypatch):
    monkeypatch.setenv("SSE_GATEWAY_ENABLED", value)
    # Enabled: the certificate is required again.
    with pytest.raises(ConfigError, match="SSE_GATEWAY_CERT"):
        Publisher()
    with Publisher("localhost:9", PEM, PEM, PEM) as pub:
        assert pub.enabled is True and "enabled" not in repr(pub)


def test_unknown_value_is_a_config_error_naming_the_variable(monkeypatch):
    monkeypatch.setenv("SSE_GATEWAY_ENABLED", "flase")
    with pytest.raises(ConfigError, match=r"\$SSE_GATEWAY_ENABLED='flase'.*true or false"):
        Publisher()
    with pytest.raises(ConfigError, match=r"enabled='disable'"):
        Publisher(enabled="disable")
    with pytest.raises(ConfigError, match="enabled must be a bool"):
        Publisher(enabled=0)


def test_argument_overrides_environment(monkeypatch):
    monkeypatch.setenv("SSE_GATEWAY_ENABLED", "false")
    with Publisher("localhost:9", PEM, PEM, PEM, enabled=True) as pub:
        assert pub.enabled is True
    monkeypatch.setenv("SSE_GATEWAY_ENABLED", "true")
    assert Publisher(enabled=False).enabled is False

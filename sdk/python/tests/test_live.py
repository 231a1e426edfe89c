"""The Python SDK against a REAL gateway: events published here arrive on an SSE stream."""

import asyncio
import logging
import time

import pytest

from sse_gateway_sdk import AsyncPublisher, Event, PublishError, Publisher


@pytest.fixture
def etl(gateway):
    with Publisher(**gateway.cert("l5-etl-service")) as pub:
        yield pub


@pytest.fixture
def analytics(gateway):
    with Publisher(**gateway.cert("analytics-service")) as pub:
        yield pub


def assert_envelope(env, channel, event, result, payload):
    assert env["channel"] == channel
    assert env["event"] == event
    assert env["id"] == result.id
    assert env["_frame_id"] == result.id
    assert isinstance(env["ts"], int) and env["ts"] > 1_600_000_000_000
    assert env["payload"] == payload


def test_publish_arrives_on_sse_with_the_envelope(gateway, etl, ws):
    channel = f"logs:{ws}:wf1"
    payload = {"step": "extract", "rows": 1200, "ok": True, "tags": ["a", "b"], "text": "two\nlines\r\nü"}
    with gateway.sse([channel]) as sse:
        assert sse.content_type.startswith("text/event-stream")
        assert sse.retry == 3000
        assert channel in sse.ready_data["channels"]
        res = etl.publish(channel, payload, event="step")
        assert res.ok and res, res
        assert res.code == "OK" and res.id and res.delivered >= 1 and not res.duplicate
        assert_envelope(sse.next_event(channel), channel, "step", res, payload)


def test_scalar_payload_and_default_event(gateway, etl, ws):
    channel = f"metrics:{ws}"
    with gateway.sse([channel]) as sse:
        r1 = etl.publish(channel, 42)
        r2 = etl.publish(channel, "plain string")
        r3 = etl.publish(channel, None)
        assert r1.ok and r2.ok and r3.ok
        assert_envelope(sse.next_event(channel), channel, "message", r1, 42)
        assert_envelope(sse.next_event(channel), channel, "message", r2, "plain string")
        assert_envelope(sse.next_event(channel), channel, "message", r3, None)


def test_publish_batch_arrives_in_order(gateway, etl, ws):
    logs, metrics = f"logs:{ws}:wf9", f"metrics:{ws}"
    with gateway.sse([logs, metrics]) as sse:
        batch = etl.publish_batch([
            Event(logs, {"n": 1}, "log"),
            {"channel": metrics, "data": {"n": 2}, "event": "metric"},
            (logs, {"n": 3}),
        ])
        assert batch.ok, batch
        assert len(batch) == 3 and len(set(batch.ids)) == 3
        assert [r.channel for r in batch] == [logs, metrics, logs]
        got = [sse.next_event() for _ in range(3)]
        assert [e["payload"]["n"] for e in got] == [1, 2, 3]
        assert [e["id"] for e in got] == batch.ids
        assert [e["event"] for e in got] == ["log", "metric", "message"]


def test_batch_with_one_bad_event_publishes_none(gateway, etl, ws, caplog):
    channel = f"logs:{ws}:wf1"
    with gateway.sse([channel]) as sse:
        res = etl.publish_batch([Event(channel, {"n": 1}), Event("nosuchtype:x", {"n": 2})])
        assert not res.ok and res.code == "INVALID_ARGUMENT" and res.results == []
        marker = etl.publish(channel, "marker")
        assert sse.next_event(channel)["id"] == marker.id  # the batch's first event never arrived


def test_helpers_name_channel_and_event(gateway, etl, analytics, ws):
    with gateway.sse([f"logs:{ws}:wf7", f"logs:{ws}", f"metrics:{ws}"]) as sse:
        r1 = etl.publish_log(ws, "wf7", {"line": "extract done"})
        r2 = etl.publish_log(ws, None, "workspace-wide line")
        r3 = analytics.publish_metric(ws, {"cpu": 0.5})
        assert r1.ok and r2.ok and r3.ok, (r1, r2, r3)
        assert_envelope(sse.next_event(), f"logs:{ws}:wf7", "log", r1, {"line": "extract done"})
        assert_envelope(sse.next_event(), f"logs:{ws}", "log", r2, "workspace-wide line")
        assert_envelope(sse.next_event(), f"metrics:{ws}", "metric", r3, {"cpu": 0.5})


def test_idempotency_key_is_not_delivered_twice(gateway, etl, ws):
    channel = f"logs:{ws}:wf1"
    with gateway.sse([channel]) as sse:
        first = etl.publish(channel, {"n": 1}, idempotency_key="job-1-step-1")
        again = etl.publish(channel, {"n": 1}, idempotency_key="job-1-step-1")
        assert first.ok and not first.duplicate
        assert again.ok and again.duplicate and again.id == first.id
        marker = etl.publish(channel, "marker")
        assert sse.next_event(channel)["id"] == first.id
        assert sse.next_event(channel)["id"] == marker.id


def test_audience_restricts_delivery(gateway, analytics, ws):
    channel = f"dashboards:{ws}"
    with gateway.sse([channel], token=gateway.token("alice")) as alice, \
            gateway.sse([channel], token=gateway.token("bob")) as bob:
        secret = analytics.publish(channel, {"for": "bob"}, audience={"user_ids": ["bob"]})
        public = analytics.publish(channel, {"for": "all"})
        assert secret.ok and public.ok
        assert bob.next_event(channel)["id"] == secret.id
        assert bob.next_event(channel)["id"] == public.id
        assert alice.next_event(channel)["id"] == public.id


def test_not_permitted_channel_is_a_result_or_an_error(gateway, etl, ws, caplog):
    with caplog.at_level(logging.WARNING, logger="sse_gateway_sdk"):
        res = etl.publish(f"dashboards:{ws}", {"x": 1})
    assert not res.ok and not res
    assert res.code == "PERMISSION_DENIED" and res.message, res
    assert res.channel == f"dashboards:{ws}" and res.id == ""
    assert any("PERMISSION_DENIED" in r.getMessage() for r in caplog.records)
    with pytest.raises(PublishError) as e:
        etl.publish(f"dashboards:{ws}", {"x": 1}, strict=True)
    assert e.value.code == "PERMISSION_DENIED" and e.value.message
    with pytest.raises(PublishError):
        res.raise_for_error()


def test_strict_publisher_raises(gateway, ws):
    with Publisher(**gateway.cert("l5-etl-service"), strict=True) as pub:
        assert pub.publish(f"logs:{ws}:wf1", 1).ok
        with pytest.raises(PublishError) as e:
            pub.publish_batch([Event(f"workflow:{ws}:wf1", 1)])
        assert e.value.code == "PERMISSION_DENIED"
        # strict=False on one call overrides the publisher's setting
        assert pub.publish(f"workflow:{ws}:wf1", 1, strict=False).code == "PERMISSION_DENIED"


def test_certificate_without_publisher_entry_is_denied(gateway, ws):
    with Publisher(**gateway.cert("stranger-service")) as pub:
        res = pub.publish(f"logs:{ws}:wf1", 1)
    assert res.code == "PERMISSION_DENIED", res


def test_invalid_channel_and_event_are_invalid_argument(etl, ws):
    assert etl.publish("nosuchtype:x", 1).code == "INVALID_ARGUMENT"
    assert etl.publish(f"logs:{ws}:wf:extra:parts", 1).code == "INVALID_ARGUMENT"
    assert etl.publish(f"logs:{ws}", 1, event="bad event name!").code == "INVALID_ARGUMENT"


def test_client_certificate_from_another_ca_fails_clearly(gateway, other_ca, ws):
    kwargs = dict(addr=gateway.grpc_addr, ca=str(gateway.folder / "ca.pem"),
                  cert=str(other_ca / "l5-etl-service.pem"), key=str(other_ca / "l5-etl-service-key.pem"),
                  timeout=5)
    with Publisher(**kwargs) as pub:
        t0 = time.monotonic()
        res = pub.publish(f"logs:{ws}:wf1", 1)
        assert time.monotonic() - t0 < 6
        assert not res.ok and res.code == "UNAVAILABLE" and "TLS handshake" in res.message, res
        with pytest.raises(PublishError) as e:
            pub.publish(f"logs:{ws}:wf1", 1, strict=True)
        assert e.value.code == "UNAVAILABLE"


def test_server_certificate_from_another_ca_is_refused(gateway, other_ca, ws):
    kwargs = gateway.cert("l5-etl-service")
    kwargs["ca"] = str(other_ca / "ca.pem")
    with Publisher(**kwargs) as pub:
        res = pub.publish(f"logs:{ws}:wf1", 1)
    assert not res.ok and res.code == "UNAVAILABLE" and "TLS handshake" in res.message, res


def test_constructible_from_env(gateway, monkeypatch, ws):
    c = gateway.cert("analytics-service")
    monkeypatch.setenv("SSE_GATEWAY_ADDR", c["addr"])
    monkeypatch.setenv("SSE_GATEWAY_CA", c["ca"])
    monkeypatch.setenv("SSE_GATEWAY_CERT", c["cert"])
    monkeypatch.setenv("SSE_GATEWAY_KEY", c["key"])
    with gateway.sse([f"dashboards:{ws}"]) as sse, Publisher() as pub:
        res = pub.publish(f"dashboards:{ws}", {"total": 3}, event="update")
        assert res.ok, res
        assert sse.next_event()["id"] == res.id


def test_pem_contents_instead_of_paths(gateway, ws):
    c = gateway.cert("l5-etl-service")
    read = lambda p: open(p, "rb").read()  # noqa: E731
    with Publisher(c["addr"], read(c["ca"]), read(c["cert"]), read(c["key"]).decode()) as pub:
        assert pub.publish(f"logs:{ws}", 1).ok


def test_one_channel_serves_many_calls_from_threads(gateway, etl, ws):
    from concurrent.futures import ThreadPoolExecutor

    channel = f"metrics:{ws}"
    assert etl.publish(channel, -1).ok
    grpc_channel = etl._channel
    assert grpc_channel is not None
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: etl.publish(channel, i), range(40)))
    assert all(r.ok for r in results)
    assert len({r.id for r in results}) == 40
    assert etl._channel is grpc_channel


def test_async_publisher(gateway, ws):
    async def main():
        async with AsyncPublisher(**gateway.cert("l5-etl-service")) as pub:
            r1 = await pub.publish(f"logs:{ws}:wf1", {"a": 1}, event="x")
            r2 = await pub.publish_log(ws, "wf1", "line")
            r3 = await pub.publish_metric(ws, 7)
            b = await pub.publish_batch([Event(f"logs:{ws}:wf1", 1), Event(f"logs:{ws}:wf1", 2)])
            denied = await pub.publish(f"dashboards:{ws}", 1)
            with pytest.raises(PublishError):
                await pub.publish(f"dashboards:{ws}", 1, strict=True)
            return r1, r2, r3, b, denied

    with gateway.sse([f"logs:{ws}:wf1", f"metrics:{ws}"]) as sse:
        r1, r2, r3, b, denied = asyncio.run(main())
        assert r1.ok and r2.ok and r3.ok and b.ok, (r1, r2, r3, b)
        assert denied.code == "PERMISSION_DENIED"
        got = [sse.next_event() for _ in range(5)]
        assert [e["id"] for e in got] == [r1.id, r2.id, r3.id] + b.ids
        assert [e["event"] for e in got] == ["x", "log", "metric", "message", "message"]

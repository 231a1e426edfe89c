"""What the wrapper does before any network: configuration, request building, local validation."""

import logging

import pytest

import sse_gateway_sdk
from sse_gateway_sdk import ConfigError, Event, PublishError, PublishResult, Publisher
from sse_gateway_sdk.v1 import PublishRequest, PublisherStub, gateway_pb2_grpc

PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


@pytest.fixture
def pub(monkeypatch):
    for k in ("SSE_GATEWAY_ADDR", "SSE_GATEWAY_CA", "SSE_GATEWAY_CERT", "SSE_GATEWAY_KEY"):
        monkeypatch.delenv(k, raising=False)
    # Port 9 (discard) on localhost: nothing is contacted by these tests.
    p = Publisher("localhost:9", PEM, PEM, PEM, timeout=0.5)
    yield p
    p.close()


def test_generated_stubs_are_importable_inside_the_package():
    assert gateway_pb2_grpc.ssegateway_dot_v1_dot_gateway__pb2.__name__ == "sse_gateway_sdk.v1.gateway_pb2"
    assert PublisherStub is gateway_pb2_grpc.PublisherStub
    assert PublishRequest(channel="a", data="1").channel == "a"
    assert sse_gateway_sdk.__version__


def test_missing_client_certificate_is_a_config_error(monkeypatch):
    for k in ("SSE_GATEWAY_CERT", "SSE_GATEWAY_KEY"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(ConfigError, match="SSE_GATEWAY_CERT"):
        Publisher()


def test_unreadable_certificate_file_names_the_file(tmp_path):
    with pytest.raises(ConfigError, match="nope.pem"):
        Publisher("localhost:1", cert=str(tmp_path / "nope.pem"), key=PEM)


def test_env_defaults(monkeypatch, tmp_path):
    f = tmp_path / "x.pem"
    f.write_text(PEM)
    monkeypatch.setenv("SSE_GATEWAY_ADDR", "gw.internal:7000")
    monkeypatch.setenv("SSE_GATEWAY_CA", str(f))
    monkeypatch.setenv("SSE_GATEWAY_CERT", str(f))
    monkeypatch.setenv("SSE_GATEWAY_KEY", str(f))
    with Publisher() as p:
        assert p.addr == "gw.internal:7000" and p.timeout == 5.0 and p.strict is False
    monkeypatch.delenv("SSE_GATEWAY_ADDR")
    with Publisher() as p:
        assert p.addr == "localhost:50051"


def test_request_encoding(pub):
    req = pub._request("logs:a:b", {"x": [1, 2.5, "é"], "n": None}, None, None, None)
    assert req.data == '{"x":[1,2.5,"é"],"n":null}'
    assert req.event == "" and req.idempotency_key == "" and not req.HasField("audience")
    req = pub._request("c:d", "text", "evt", "key-1", {"user_ids": ["u1"], "roles": ["admin"]})
    assert req.data == '"text"' and req.event == "evt" and req.idempotency_key == "key-1"
    assert list(req.audience.user_ids) == ["u1"] and list(req.audience.roles) == ["admin"]


def test_batch_shapes(pub):
    req = pub._batch_request([Event("a:b", 1), {"channel": "c:d", "data": [2], "event": "e"}, ("e:f", {"z": 3}, "g")])
    assert [(e.channel, e.data, e.event) for e in req.events] == [("a:b", "1", ""), ("c:d", "[2]", "e"), ("e:f", '{"z":3}', "g")]
    with pytest.raises(PublishError, match="batch event 1"):
        pub._batch_request([Event("a:b", 1), {"chanel": "typo"}])


def test_data_that_is_not_json_is_a_result_not_an_exception(pub, caplog):
    with caplog.at_level(logging.WARNING, logger="sse_gateway_sdk"):
        res = pub.publish("logs:ws1:wf1", {"when": object()})
        nan = pub.publish("logs:ws1:wf1", float("nan"))
    assert isinstance(res, PublishResult) and not res.ok
    assert res.code == "INVALID_ARGUMENT" and "JSON" in res.message
    assert nan.code == "INVALID_ARGUMENT"
    assert "INVALID_ARGUMENT" in caplog.text
    with pytest.raises(PublishError) as e:
        pub.publish("logs:ws1:wf1", {1, 2}, strict=True)
    assert e.value.code == "INVALID_ARGUMENT" and e.value.channel == "logs:ws1:wf1"
    batch = pub.publish_batch([Event("logs:ws1:wf1", object())])
    assert not batch.ok and batch.code == "INVALID_ARGUMENT"


def test_helpers_refuse_ids_that_would_address_another_channel(pub):
    res = pub.publish_log("ws1:other", "wf1", "x")
    assert res.code == "INVALID_ARGUMENT" and "workspace_id" in res.message
    assert pub.publish_log("ws1", "", "x").code == "INVALID_ARGUMENT"
    assert pub.publish_metric("a b", 1).code == "INVALID_ARGUMENT"
    with pytest.raises(PublishError):
        pub.publish_metric("a/b", 1, strict=True)


def test_audience_validation(pub):
    assert pub.publish("a:b", 1, audience={"users": ["x"]}).code == "INVALID_ARGUMENT"
    assert pub.publish("a:b", 1, audience={"roles": "admin"}).code == "INVALID_ARGUMENT"


def test_custom_json_serialiser(monkeypatch):
    import datetime
    import json

    p = Publisher("localhost:9", PEM, PEM, PEM, json_dumps=lambda v: json.dumps(v, default=str))
    req = p._request("a:b", {"at": datetime.date(2026, 1, 2)}, None, None, None)
    assert req.data == '{"at": "2026-01-02"}'
    p.close()


def test_closed_publisher(pub):
    pub.close()
    assert pub.publish("logs:ws1:wf1", 1).code == "FAILED_PRECONDITION"

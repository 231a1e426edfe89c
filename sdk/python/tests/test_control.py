"""`Control` against a REAL gateway: disconnect a user, remove channels from their streams."""

import json
import logging
import uuid

import pytest

from sse_gateway_sdk import DISABLED, Control, ControlError, ControlResult, PublishError


@pytest.fixture
def control(gateway):
    # analytics-service has `control = true` in the test gateway's [[publishers]].
    with Control(**gateway.cert("analytics-service")) as c:
        yield c


@pytest.fixture
def user():
    return "user-" + uuid.uuid4().hex[:10]


def test_disconnect_closes_the_users_streams_with_revoked(gateway, control, user, ws):
    token = gateway.token(sub=user)
    with gateway.sse([f"logs:{ws}"], token=token) as a, gateway.sse([f"metrics:{ws}"], token=token) as b:
        res = control.disconnect(user, reason="signed out")
        assert res.ok and res and res.code == "OK", res
        assert res.streams == 2
        for stream in (a, b):
            frame = stream.next(lambda f: f.get("event") == "revoked")
            assert json.loads(frame["data"]) == {"reason": "signed out"}
            assert stream.frames.get(timeout=10) is None, "the stream ends after revoked"


def test_revoke_tokens_refuses_the_old_token(gateway, control, user, ws):
    token = gateway.token(sub=user)
    res = control.disconnect(user, reason="locked", revoke_tokens=True)
    assert res.ok and res.streams == 0
    with pytest.raises(AssertionError, match="401"):
        gateway.sse([f"logs:{ws}"], token=token)


def test_unsubscribe_removes_matching_channels(gateway, control, user, ws):
    token = gateway.token(sub=user)
    with gateway.sse([f"logs:{ws}:wf1", f"metrics:{ws}"], token=token) as sse:
        res = control.unsubscribe(user, f"logs:{ws}:**", reason="removed from workspace")
        assert res.ok and res.streams == 1, res
        frame = sse.next(lambda f: f.get("event") == "subscriptions")
        assert json.loads(frame["data"]) == {
            "channels": [f"metrics:{ws}"],
            "denied": [{"channel": f"logs:{ws}:wf1", "reason": "removed from workspace"}],
        }


def test_unknown_user_affects_nothing(control):
    assert control.disconnect("nobody-" + uuid.uuid4().hex) == ControlResult(ok=True, streams=0)
    assert control.unsubscribe("nobody-" + uuid.uuid4().hex, "logs:**").streams == 0


def test_a_certificate_without_control_is_refused(gateway, caplog):
    with Control(**gateway.cert("l5-etl-service")) as c:
        with caplog.at_level(logging.WARNING, logger="sse_gateway_sdk"):
            res = c.disconnect("alice", reason="x")
        assert not res.ok and res.code == "PERMISSION_DENIED", res
        assert "control" in res.message
        assert any("PERMISSION_DENIED" in r.getMessage() for r in caplog.records)
        with pytest.raises(ControlError) as err:
            c.unsubscribe("alice", "logs:**", strict=True)
        assert err.value.code == "PERMISSION_DENIED"
        assert isinstance(err.value, PublishError)


def test_bad_input_is_invalid_argument(control):
    res = control.disconnect("")
    assert not res.ok and res.code == "INVALID_ARGUMENT" and "user_id" in res.message
    res = control.unsubscribe("alice", "logs:**:x")
    assert not res.ok and res.code == "INVALID_ARGUMENT" and "pattern" in res.message
    with pytest.raises(ControlError):
        control.unsubscribe("alice", "", strict=True).raise_for_error()


def test_disabled_control_is_a_no_op(monkeypatch):
    monkeypatch.setenv("SSE_GATEWAY_ENABLED", "false")
    for k in ("SSE_GATEWAY_CERT", "SSE_GATEWAY_KEY"):
        monkeypatch.delenv(k, raising=False)
    c = Control(addr="localhost:1")
    res = c.disconnect("alice", revoke_tokens=True, strict=True)
    assert not res.ok and res.code == DISABLED
    assert c.unsubscribe("alice", "logs:**").code == DISABLED

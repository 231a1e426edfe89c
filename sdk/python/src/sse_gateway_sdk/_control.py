"""The `Control` wrapper around the generated `ssegateway.v1.Control` stub.

Control acts on subscribers' open streams, on every gateway node: ``disconnect`` closes a user's
streams (optionally refusing their current tokens), ``unsubscribe`` removes channels from them.
The gateway allows it only for a certificate whose ``[[publishers]]`` entry has
``control = true``.

It is configured exactly like :class:`~sse_gateway_sdk.Publisher` (the same arguments and
``SSE_GATEWAY_*`` environment variables, ``enabled`` included) and fails the same way: a failed
call is logged and returned with ``ok=False``, unless ``strict=True``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Optional

import grpc

from ._publisher import PemSource, PublishError, _Base, _rpc_error, ENV_ENABLED, DISABLED
from .v1 import gateway_pb2 as pb
from .v1 import gateway_pb2_grpc as pb_grpc

__all__ = ["Control", "ControlError", "ControlResult"]


class ControlError(PublishError):
    """A failed control call, raised only in strict mode (``code``: the gRPC status name,
    e.g. ``"PERMISSION_DENIED"``, ``"INVALID_ARGUMENT"``, ``"UNAVAILABLE"``)."""


@dataclass(frozen=True)
class ControlResult:
    """The outcome of one control call. Truthy when the gateway applied it."""

    ok: bool
    #: Streams affected on the gateway node that answered (other nodes act on theirs).
    streams: int = 0
    #: "OK", or the gRPC status name of the failure (``DISABLED`` when switched off).
    code: str = "OK"
    message: str = ""

    def __bool__(self) -> bool:
        return self.ok

    def raise_for_error(self) -> "ControlResult":
        """Raises :class:`ControlError` when not ok; returns self otherwise."""
        if not self.ok:
            raise ControlError(self.code, self.message)
        return self


class Control(_Base):
    """Disconnects users and removes channels from their streams, on every gateway node
    (blocking; thread-safe). The same arguments and environment variables as
    :class:`~sse_gateway_sdk.Publisher`::

        from sse_gateway_sdk import Control

        control = Control()  # $SSE_GATEWAY_ADDR, $SSE_GATEWAY_CA, $SSE_GATEWAY_CERT, $SSE_GATEWAY_KEY
        control.unsubscribe("u42", "logs:ws1:**", reason="removed from workspace ws1")
        control.disconnect("u42", reason="signed out", revoke_tokens=True)
    """

    def __init__(self, addr: Optional[str] = None, ca: Optional[PemSource] = None,
                 cert: Optional[PemSource] = None, key: Optional[PemSource] = None, **kwargs: Any):
        super().__init__(addr, ca, cert, key, **kwargs)
        self._channel: Optional[grpc.Channel] = None
        self._stub: Optional[pb_grpc.ControlStub] = None
        self._lock = threading.Lock()

    def _disabled_message(self) -> str:
        return f"control is disabled (enabled=False or ${ENV_ENABLED}=false): nothing is sent to {self.addr}"

    def _get_stub(self) -> pb_grpc.ControlStub:
        if self._closed:
            raise ControlError("FAILED_PRECONDITION", "the control client is closed")
        stub = self._stub
        if stub is None:
            with self._lock:
                if self._stub is None:
                    self._channel = grpc.secure_channel(self.addr, self._credentials, options=self._options)
                    self._stub = pb_grpc.ControlStub(self._channel)
                stub = self._stub
        return stub

    def _call(self, what: str, method: str, req: Any, timeout: Optional[float],
              strict: Optional[bool]) -> ControlResult:
        if not self.enabled:
            self._log_disabled_once()
            return ControlResult(ok=False, code=DISABLED, message=self._disabled_message())
        try:
            resp = getattr(self._get_stub(), method)(req, timeout=self._deadline(timeout))
            return ControlResult(ok=True, streams=resp.streams)
        except grpc.RpcError as e:
            err = _rpc_error(e)
        except PublishError as e:
            err = e
        except Exception as e:  # never let a control call break the caller's work
            err = self._unexpected(e)
        err = ControlError(err.code, err.message)
        if self._is_strict(strict):
            raise err
        self._log.warning("sse-gateway %s failed: %s: %s", what, err.code, err.message)
        return ControlResult(ok=False, code=err.code, message=err.message)

    def disconnect(self, user_id: str, reason: str = "", revoke_tokens: bool = False, *,
                   timeout: Optional[float] = None, strict: Optional[bool] = None) -> ControlResult:
        """Closes each of ``user_id``'s streams (the JWT ``sub``) on every node with
        ``event: revoked`` carrying ``reason``. With ``revoke_tokens``, the user's tokens issued
        before this call (by ``iat``) are refused until they expire: issue a new one to let the
        user back in."""
        req = pb.DisconnectRequest(user_id=user_id, reason=reason or "", revoke_tokens=bool(revoke_tokens))
        return self._call(f"disconnect of {user_id!r}", "Disconnect", req, timeout, strict)

    def unsubscribe(self, user_id: str, pattern: str, reason: str = "", *,
                    timeout: Optional[float] = None, strict: Optional[bool] = None) -> ControlResult:
        """Removes the channels matching ``pattern`` (e.g. ``"logs:ws1:**"``) from ``user_id``'s
        open streams on every node; each stream gets ``event: subscriptions`` listing them as
        denied with ``reason``. The user's cached authorizer answers are dropped."""
        req = pb.UnsubscribeRequest(user_id=user_id, pattern=pattern, reason=reason or "")
        return self._call(f"unsubscribe of {user_id!r} from {pattern!r}", "Unsubscribe", req, timeout, strict)

    def close(self) -> None:
        """Closes the gRPC channel. Calls afterwards fail with FAILED_PRECONDITION."""
        with self._lock:
            self._closed = True
            if self._channel is not None:
                self._channel.close()

    def __enter__(self) -> "Control":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

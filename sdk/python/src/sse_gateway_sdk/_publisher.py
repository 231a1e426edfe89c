"""The `Publisher` wrapper around the generated `ssegateway.v1.Publisher` stub.

A publisher holds one mTLS gRPC channel to the gateway, reused by every call. Each call has a
deadline (default 5 s). A call that fails - the gateway is down, the certificate is refused, the
channel is not permitted, the data is not JSON - is logged (logger ``sse_gateway_sdk``) and
returned as a result with ``ok=False``, so that publishing never breaks the caller's own work;
pass ``strict=True`` (to the constructor or to one call) to get a :class:`PublishError` instead.

``SSE_GATEWAY_ENABLED=false`` (or ``enabled=False``) makes a publisher a no-op: it needs no
certificate, dials nothing, and each call returns ``ok=False`` with code ``DISABLED``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import grpc

from .v1 import gateway_pb2 as pb
from .v1 import gateway_pb2_grpc as pb_grpc

__all__ = [
    "AsyncPublisher",
    "BatchResult",
    "ConfigError",
    "DEFAULT_ADDR",
    "DEFAULT_TIMEOUT",
    "DISABLED",
    "Event",
    "PublishError",
    "PublishResult",
    "Publisher",
]

log = logging.getLogger("sse_gateway_sdk")

VERSION = "0.1.0"
DEFAULT_ADDR = "localhost:50051"
DEFAULT_TIMEOUT = 5.0

ENV_ADDR = "SSE_GATEWAY_ADDR"
ENV_CA = "SSE_GATEWAY_CA"
ENV_CERT = "SSE_GATEWAY_CERT"
ENV_KEY = "SSE_GATEWAY_KEY"
ENV_SERVER_NAME = "SSE_GATEWAY_SERVER_NAME"
ENV_ENABLED = "SSE_GATEWAY_ENABLED"

#: The ``code`` of every result of a disabled publisher.
DISABLED = "DISABLED"
_FALSE = frozenset({"false", "0", "no", "off"})
_TRUE = frozenset({"true", "1", "yes", "on"})

# A channel segment (SPEC section 3). The helpers check ids against it so that an id holding a
# ':' can never address another channel than the one the helper names.
_SEGMENT = re.compile(r"[A-Za-z0-9_.@-]{1,128}\Z")

PemSource = Union[str, bytes, "os.PathLike[str]"]
AudienceLike = Union[Mapping[str, Sequence[str]], "pb.Audience", None]


class ConfigError(ValueError):
    """The publisher cannot be set up: a missing or unreadable certificate, a bad address."""


class PublishError(Exception):
    """A failed publish, raised only in strict mode.

    ``code`` is the gRPC status name (``"PERMISSION_DENIED"``, ``"UNAVAILABLE"``,
    ``"DEADLINE_EXCEEDED"``, ``"INVALID_ARGUMENT"``, ...), ``message`` what the gateway (or the
    SDK, for data that is not JSON) said is wrong.
    """

    def __init__(self, code: str, message: str, channel: Optional[str] = None):
        self.code = code
        self.message = message
        self.channel = channel
        where = f" ({channel})" if channel else ""
        super().__init__(f"{code}: {message}{where}")


@dataclass(frozen=True)
class PublishResult:
    """The outcome of one publish. Truthy when the gateway accepted the event."""

    ok: bool
    channel: str
    #: The event's cursor in the gateway's log (the SSE ``id:``); "" when not ok.
    id: str = ""
    #: Subscribers on the accepting gateway node the event was handed to.
    delivered: int = 0
    #: True when the idempotency key was seen before (``id`` is then the original event's).
    duplicate: bool = False
    #: "OK", or the gRPC status name of the failure.
    code: str = "OK"
    message: str = ""

    def __bool__(self) -> bool:
        return self.ok

    def raise_for_error(self) -> "PublishResult":
        """Raises :class:`PublishError` when not ok; returns self otherwise."""
        if not self.ok:
            raise PublishError(self.code, self.message, self.channel)
        return self


@dataclass(frozen=True)
class BatchResult:
    """The outcome of one batch: all events accepted (in order), or none of them."""

    ok: bool
    #: One result per event, in request order; empty when not ok.
    results: List[PublishResult] = field(default_factory=list)
    code: str = "OK"
    message: str = ""

    def __bool__(self) -> bool:
        return self.ok

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self) -> Iterator[PublishResult]:
        return iter(self.results)

    def __getitem__(self, i: int) -> PublishResult:
        return self.results[i]

    @property
    def ids(self) -> List[str]:
        return [r.id for r in self.results]

    def raise_for_error(self) -> "BatchResult":
        if not self.ok:
            raise PublishError(self.code, self.message)
        return self


@dataclass(frozen=True)
class Event:
    """One event of a batch. ``publish_batch`` also takes dicts with these keys, or tuples."""

    channel: str
    data: Any
    event: Optional[str] = None
    idempotency_key: Optional[str] = None
    audience: AudienceLike = None


def _read_pem(value: Optional[PemSource], what: str, env: str) -> Optional[bytes]:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value
    text = os.fspath(value)
    if text.lstrip().startswith("-----BEGIN"):
        return text.encode()
    try:
        with open(text, "rb") as f:
            return f.read()
    except OSError as e:
        raise ConfigError(f"cannot read the {what} file {text!r} (argument or ${env}): {e.strerror or e}") from e


def _enabled(value: Union[bool, str, None]) -> bool:
    """The on/off switch: the ``enabled`` argument, else ``$SSE_GATEWAY_ENABLED``, else on.

    Strings are read case-insensitively: false/0/no/off and true/1/yes/on; empty means unset.
    Anything else is a :class:`ConfigError`, so that a typo never silently flips the switch.
    """
    if isinstance(value, bool):
        return value
    where = "enabled"
    if value is None:
        value = os.environ.get(ENV_ENABLED)
        where = f"${ENV_ENABLED}"
        if value is None:
            return True
    if not isinstance(value, str):
        raise ConfigError(f"{where} must be a bool, not {type(value).__name__}")
    text = value.strip().lower()
    if text == "" or text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(f"{where}={value!r}: use true or false (also 1/0, yes/no, on/off)")


def _segment(value: Any, what: str) -> str:
    text = str(value)
    if not _SEGMENT.match(text):
        raise PublishError(
            "INVALID_ARGUMENT",
            f"{what} {text!r} is not a valid channel segment ([A-Za-z0-9_.@-], 1 to 128 characters)",
        )
    return text


def _audience(value: AudienceLike) -> Optional["pb.Audience"]:
    if value is None:
        return None
    if isinstance(value, pb.Audience):
        return value
    if isinstance(value, Mapping):
        unknown = set(value) - {"user_ids", "roles"}
        if unknown:
            raise PublishError("INVALID_ARGUMENT", f"audience has unknown keys {sorted(unknown)}; use user_ids, roles")
        user_ids = value.get("user_ids") or []
        roles = value.get("roles") or []
        if isinstance(user_ids, str) or isinstance(roles, str):
            raise PublishError("INVALID_ARGUMENT", "audience user_ids and roles must be lists of strings")
        return pb.Audience(user_ids=[str(u) for u in user_ids], roles=[str(r) for r in roles])
    raise PublishError("INVALID_ARGUMENT", f"audience must be a dict with user_ids/roles, not {type(value).__name__}")


# gRPC reports a refused certificate as UNAVAILABLE with a transport message; say what to check.
_TLS_FAILURE = re.compile(r"TSI_|SSL|handshake|certificate|Unwrap failed", re.IGNORECASE)
TLS_HINT = (
    "TLS handshake with the gateway failed: check that this service's certificate (cert/key) is "
    "signed by the CA the gateway trusts ([grpc] client_ca), and that ca is the CA of the "
    "gateway's certificate"
)


def _rpc_error(e: grpc.RpcError) -> PublishError:
    code = e.code() if hasattr(e, "code") else None
    details = (e.details() if hasattr(e, "details") else None) or str(e)
    name = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
    if name == "UNAVAILABLE" and _TLS_FAILURE.search(details):
        details = f"{TLS_HINT} ({details})"
    return PublishError(name, details)


class _Base:
    """Configuration, request building and result handling shared by the sync and async publishers."""

    def __init__(
        self,
        addr: Optional[str] = None,
        ca: Optional[PemSource] = None,
        cert: Optional[PemSource] = None,
        key: Optional[PemSource] = None,
        *,
        strict: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
        server_name: Optional[str] = None,
        json_dumps: Optional[Callable[[Any], str]] = None,
        options: Sequence[Tuple[str, Any]] = (),
        logger: Optional[logging.Logger] = None,
        enabled: Union[bool, str, None] = None,
    ):
        self.addr = addr or os.environ.get(ENV_ADDR) or DEFAULT_ADDR
        if self.addr.startswith(("http://", "https://")):
            raise ConfigError(f"addr {self.addr!r}: give host:port, without a scheme")
        if timeout is None or timeout <= 0:
            raise ConfigError("timeout must be a positive number of seconds")
        self.enabled = _enabled(enabled)
        self.strict = strict
        self.timeout = float(timeout)
        self._log = logger or log
        self._closed = False
        self._disabled_logged = False
        self._disabled_lock = threading.Lock()
        if not self.enabled:
            # A no-op: no certificate is needed or read, no channel is ever opened.
            return
        ca = ca if ca is not None else os.environ.get(ENV_CA) or None
        cert = cert if cert is not None else os.environ.get(ENV_CERT) or None
        key = key if key is not None else os.environ.get(ENV_KEY) or None
        if cert is None or key is None:
            raise ConfigError(
                "the gateway requires a client certificate: pass cert= and key= "
                f"(PEM files or contents) or set ${ENV_CERT} and ${ENV_KEY}"
            )
        self._credentials = grpc.ssl_channel_credentials(
            root_certificates=_read_pem(ca, "CA certificate", ENV_CA),
            private_key=_read_pem(key, "client key", ENV_KEY),
            certificate_chain=_read_pem(cert, "client certificate", ENV_CERT),
        )
        opts = [("grpc.primary_user_agent", f"sse-gateway-sdk-python/{VERSION}")]
        server_name = server_name or os.environ.get(ENV_SERVER_NAME) or None
        if server_name:
            opts.append(("grpc.ssl_target_name_override", server_name))
        opts.extend(options)
        self._options = opts
        self._dumps = json_dumps or (
            lambda v: json.dumps(v, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        )

    def __repr__(self) -> str:
        off = "" if self.enabled else ", enabled=False"
        return f"{type(self).__name__}(addr={self.addr!r}, strict={self.strict}, timeout={self.timeout}{off})"

    # -- the off switch

    def _disabled_message(self) -> str:
        return f"publishing is disabled (enabled=False or ${ENV_ENABLED}=false): nothing is sent to {self.addr}"

    def _log_disabled_once(self) -> None:
        with self._disabled_lock:
            if self._disabled_logged:
                return
            self._disabled_logged = True
        self._log.warning("sse-gateway %s; every publish returns ok=False with code %s", self._disabled_message(), DISABLED)

    def _disabled(self, channel: Optional[str]) -> PublishResult:
        """The result of every publish of a disabled publisher (never raised, even when strict)."""
        self._log_disabled_once()
        return PublishResult(ok=False, channel=channel if isinstance(channel, str) else "",
                             code=DISABLED, message=self._disabled_message())

    def _batch_disabled(self) -> BatchResult:
        self._log_disabled_once()
        return BatchResult(ok=False, code=DISABLED, message=self._disabled_message())

    def _helper_channel(self, build: Callable[[], str]) -> str:
        """A helper's channel for a disabled publisher's result: "" when the ids are not valid."""
        try:
            return build()
        except PublishError:
            return ""

    # -- request building

    def _request(self, channel, data, event, idempotency_key, audience) -> "pb.PublishRequest":
        if not isinstance(channel, str) or not channel:
            raise PublishError("INVALID_ARGUMENT", f"channel must be a non-empty string, not {channel!r}")
        try:
            text = self._dumps(data)
        except (TypeError, ValueError) as e:
            raise PublishError("INVALID_ARGUMENT", f"data is not JSON-serialisable: {e}", channel) from None
        if isinstance(text, bytes):
            text = text.decode()
        return pb.PublishRequest(
            channel=channel,
            data=text,
            event=event or "",
            idempotency_key=idempotency_key or "",
            audience=_audience(audience),
        )

    def _batch_request(self, events: Iterable[Any]) -> "pb.PublishBatchRequest":
        reqs = []
        for i, ev in enumerate(events):
            if isinstance(ev, Event):
                e = ev
            elif isinstance(ev, Mapping):
                try:
                    e = Event(**ev)
                except TypeError as err:
                    raise PublishError("INVALID_ARGUMENT", f"batch event {i}: {err}") from None
            elif isinstance(ev, (tuple, list)):
                try:
                    e = Event(*ev)
                except TypeError as err:
                    raise PublishError("INVALID_ARGUMENT", f"batch event {i}: {err}") from None
            else:
                raise PublishError("INVALID_ARGUMENT", f"batch event {i}: expected Event, dict or tuple, not {type(ev).__name__}")
            try:
                reqs.append(self._request(e.channel, e.data, e.event, e.idempotency_key, e.audience))
            except PublishError as err:
                raise PublishError(err.code, f"batch event {i}: {err.message}", err.channel) from None
        return pb.PublishBatchRequest(events=reqs)

    @staticmethod
    def _log_channel(workspace_id: Any, workflow_id: Any) -> str:
        ws = _segment(workspace_id, "workspace_id")
        if workflow_id is None:
            return f"logs:{ws}"
        return f"logs:{ws}:{_segment(workflow_id, 'workflow_id')}"

    @staticmethod
    def _metric_channel(workspace_id: Any) -> str:
        return f"metrics:{_segment(workspace_id, 'workspace_id')}"

    def _deadline(self, timeout: Optional[float]) -> float:
        return self.timeout if timeout is None else float(timeout)

    # -- results

    def _is_strict(self, strict: Optional[bool]) -> bool:
        return self.strict if strict is None else strict

    def _failed(self, err: PublishError, channel: Optional[str], strict: Optional[bool]) -> PublishResult:
        channel = err.channel or channel or ""
        if self._is_strict(strict):
            if err.channel is None and channel:
                err.channel = channel
            raise err
        self._log.warning("sse-gateway publish to %r failed: %s: %s", channel, err.code, err.message)
        return PublishResult(ok=False, channel=channel, code=err.code, message=err.message)

    def _batch_failed(self, err: PublishError, n: Optional[int], strict: Optional[bool]) -> BatchResult:
        if self._is_strict(strict):
            raise err
        size = f"{n} events" if n is not None else "events"
        self._log.warning("sse-gateway publish_batch of %s failed: %s: %s", size, err.code, err.message)
        return BatchResult(ok=False, code=err.code, message=err.message)

    def _unexpected(self, e: Exception) -> PublishError:
        if self._closed:
            return PublishError("FAILED_PRECONDITION", "the publisher is closed")
        self._log.debug("unexpected error while publishing", exc_info=True)
        return PublishError("INTERNAL", f"{type(e).__name__}: {e}")

    @staticmethod
    def _ok(channel: str, resp: "pb.PublishResponse") -> PublishResult:
        return PublishResult(ok=True, channel=channel, id=resp.id, delivered=resp.delivered, duplicate=resp.duplicate)

    def _batch_ok(self, req: "pb.PublishBatchRequest", resp: "pb.PublishBatchResponse") -> BatchResult:
        results = [self._ok(r.channel, p) for r, p in zip(req.events, resp.results)]
        return BatchResult(ok=True, results=results)


class Publisher(_Base):
    """Publishes events to an sse-gateway over mTLS gRPC (blocking; thread-safe).

    Every argument falls back to an environment variable, so ``Publisher()`` works when they are set:

    - ``addr``: ``host:port`` of the gateway's gRPC listener (``$SSE_GATEWAY_ADDR``, default
      ``localhost:50051``). Use the name in the gateway's certificate (``localhost`` in the dev setup).
    - ``ca``: the CA that signed the gateway's certificate (``$SSE_GATEWAY_CA``; default: system roots).
    - ``cert``, ``key``: this service's client certificate and key (``$SSE_GATEWAY_CERT``,
      ``$SSE_GATEWAY_KEY``; required unless disabled).
    - ``enabled``: the on/off switch (``$SSE_GATEWAY_ENABLED``; default on). Off (``False``, or
      false/0/no/off) makes the publisher a no-op: nothing is dialled, each call returns ``ok=False``
      with code ``DISABLED`` (logged once, never raised, even when strict).

    ``ca``, ``cert`` and ``key`` are file paths, or PEM contents (``bytes``, or ``str`` starting with
    ``-----BEGIN``). ``strict=True`` raises :class:`PublishError` on failure instead of returning a
    result with ``ok=False``; ``timeout`` is the deadline of each call in seconds;
    ``server_name`` overrides the name checked against the gateway's certificate
    (``$SSE_GATEWAY_SERVER_NAME``).
    """

    def __init__(self, addr: Optional[str] = None, ca: Optional[PemSource] = None,
                 cert: Optional[PemSource] = None, key: Optional[PemSource] = None, **kwargs: Any):
        super().__init__(addr, ca, cert, key, **kwargs)
        # Opened on first use, so that a publisher made at import time in a pre-forking server
        # (gunicorn --preload, ...) does not carry a gRPC channel across fork().
        self._channel: Optional[grpc.Channel] = None
        self._stub: Optional[pb_grpc.PublisherStub] = None
        self._lock = threading.Lock()

    def _get_stub(self) -> pb_grpc.PublisherStub:
        if self._closed:
            raise PublishError("FAILED_PRECONDITION", "the publisher is closed")
        stub = self._stub
        if stub is None:
            with self._lock:
                if self._stub is None:
                    self._channel = grpc.secure_channel(self.addr, self._credentials, options=self._options)
                    self._stub = pb_grpc.PublisherStub(self._channel)
                stub = self._stub
        return stub

    def publish(
        self,
        channel: str,
        data: Any,
        event: Optional[str] = None,
        idempotency_key: Optional[str] = None,
        audience: AudienceLike = None,
        *,
        timeout: Optional[float] = None,
        strict: Optional[bool] = None,
    ) -> PublishResult:
        """Publishes ``data`` (any JSON-serialisable value) on ``channel``.

        ``event`` is the event type (default "message" on the gateway); ``idempotency_key``
        makes a retry within the gateway's dedupe window a no-op; ``audience``
        (``{"user_ids": [...], "roles": [...]}``) restricts who receives it.
        """
        if not self.enabled:
            return self._disabled(channel)
        try:
            req = self._request(channel, data, event, idempotency_key, audience)
            resp = self._get_stub().Publish(req, timeout=self._deadline(timeout))
            return self._ok(channel, resp)
        except PublishError as e:
            return self._failed(e, channel, strict)
        except grpc.RpcError as e:
            return self._failed(_rpc_error(e), channel, strict)
        except Exception as e:  # never let publishing break the caller's work
            return self._failed(self._unexpected(e), channel, strict)

    def publish_batch(
        self,
        events: Iterable[Union[Event, Mapping[str, Any], Sequence[Any]]],
        *,
        timeout: Optional[float] = None,
        strict: Optional[bool] = None,
    ) -> BatchResult:
        """Publishes up to 1000 events in order, all or none.

        Each event is an :class:`Event`, a dict with the keys of :meth:`publish`
        (``{"channel": ..., "data": ..., "event": ...}``) or a tuple ``(channel, data[, event])``.
        """
        if not self.enabled:
            return self._batch_disabled()
        n = None
        try:
            req = self._batch_request(events)
            n = len(req.events)
            resp = self._get_stub().PublishBatch(req, timeout=self._deadline(timeout))
            return self._batch_ok(req, resp)
        except PublishError as e:
            return self._batch_failed(e, n, strict)
        except grpc.RpcError as e:
            return self._batch_failed(_rpc_error(e), n, strict)
        except Exception as e:
            return self._batch_failed(self._unexpected(e), n, strict)

    def publish_log(self, workspace_id: Any, workflow_id: Any, data: Any, *, event: str = "log",
                    **kwargs: Any) -> PublishResult:
        """Publishes a workflow log line on ``logs:{workspace_id}:{workflow_id}`` (event "log").

        ``workflow_id=None`` publishes on the workspace-wide ``logs:{workspace_id}``.
        """
        if not self.enabled:
            return self._disabled(self._helper_channel(lambda: self._log_channel(workspace_id, workflow_id)))
        try:
            channel = self._log_channel(workspace_id, workflow_id)
        except PublishError as e:
            return self._failed(e, None, kwargs.get("strict"))
        return self.publish(channel, data, event, **kwargs)

    def publish_metric(self, workspace_id: Any, data: Any, *, event: str = "metric",
                       **kwargs: Any) -> PublishResult:
        """Publishes a metric sample on ``metrics:{workspace_id}`` (event "metric")."""
        if not self.enabled:
            return self._disabled(self._helper_channel(lambda: self._metric_channel(workspace_id)))
        try:
            channel = self._metric_channel(workspace_id)
        except PublishError as e:
            return self._failed(e, None, kwargs.get("strict"))
        return self.publish(channel, data, event, **kwargs)

    def close(self) -> None:
        """Closes the gRPC channel. Publishing afterwards fails with FAILED_PRECONDITION."""
        with self._lock:
            self._closed = True
            if self._channel is not None:
                self._channel.close()

    def __enter__(self) -> "Publisher":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class AsyncPublisher(_Base):
    """The asyncio (``grpc.aio``) variant of :class:`Publisher`: the same arguments and methods,
    as coroutines. The channel is opened on first use, in the running event loop."""

    def __init__(self, addr: Optional[str] = None, ca: Optional[PemSource] = None,
                 cert: Optional[PemSource] = None, key: Optional[PemSource] = None, **kwargs: Any):
        super().__init__(addr, ca, cert, key, **kwargs)
        self._channel: Optional[grpc.aio.Channel] = None
        self._stub: Optional[pb_grpc.PublisherStub] = None

    def _get_stub(self) -> pb_grpc.PublisherStub:
        if self._closed:
            raise PublishError("FAILED_PRECONDITION", "the publisher is closed")
        if self._stub is None:
            self._channel = grpc.aio.secure_channel(self.addr, self._credentials, options=self._options)
            self._stub = pb_grpc.PublisherStub(self._channel)
        return self._stub

    async def publish(
        self,
        channel: str,
        data: Any,
        event: Optional[str] = None,
        idempotency_key: Optional[str] = None,
        audience: AudienceLike = None,
        *,
        timeout: Optional[float] = None,
        strict: Optional[bool] = None,
    ) -> PublishResult:
        if not self.enabled:
            return self._disabled(channel)
        try:
            req = self._request(channel, data, event, idempotency_key, audience)
            resp = await self._get_stub().Publish(req, timeout=self._deadline(timeout))
            return self._ok(channel, resp)
        except PublishError as e:
            return self._failed(e, channel, strict)
        except grpc.RpcError as e:
            return self._failed(_rpc_error(e), channel, strict)
        except Exception as e:
            return self._failed(self._unexpected(e), channel, strict)

    async def publish_batch(
        self,
        events: Iterable[Union[Event, Mapping[str, Any], Sequence[Any]]],
        *,
        timeout: Optional[float] = None,
        strict: Optional[bool] = None,
    ) -> BatchResult:
        if not self.enabled:
            return self._batch_disabled()
        n = None
        try:
            req = self._batch_request(events)
            n = len(req.events)
            resp = await self._get_stub().PublishBatch(req, timeout=self._deadline(timeout))
            return self._batch_ok(req, resp)
        except PublishError as e:
            return self._batch_failed(e, n, strict)
        except grpc.RpcError as e:
            return self._batch_failed(_rpc_error(e), n, strict)
        except Exception as e:
            return self._batch_failed(self._unexpected(e), n, strict)

    async def publish_log(self, workspace_id: Any, workflow_id: Any, data: Any, *, event: str = "log",
                          **kwargs: Any) -> PublishResult:
        if not self.enabled:
            return self._disabled(self._helper_channel(lambda: self._log_channel(workspace_id, workflow_id)))
        try:
            channel = self._log_channel(workspace_id, workflow_id)
        except PublishError as e:
            return self._failed(e, None, kwargs.get("strict"))
        return await self.publish(channel, data, event, **kwargs)

    async def publish_metric(self, workspace_id: Any, data: Any, *, event: str = "metric",
                             **kwargs: Any) -> PublishResult:
        if not self.enabled:
            return self._disabled(self._helper_channel(lambda: self._metric_channel(workspace_id)))
        try:
            channel = self._metric_channel(workspace_id)
        except PublishError as e:
            return self._failed(e, None, kwargs.get("strict"))
        return await self.publish(channel, data, event, **kwargs)

    async def close(self) -> None:
        self._closed = True
        if self._channel is not None:
            await self._channel.close()

    async def __aenter__(self) -> "AsyncPublisher":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

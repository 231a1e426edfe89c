"""Publisher (and Control) SDK for sse-gateway.

    from sse_gateway_sdk import Publisher

    pub = Publisher()  # $SSE_GATEWAY_ADDR, $SSE_GATEWAY_CA, $SSE_GATEWAY_CERT, $SSE_GATEWAY_KEY
    pub.publish_log("ws1", "wf1", {"step": "extract", "rows": 1200})
    pub.publish_metric("ws1", {"cpu": 0.42})
    pub.publish("dashboards:sales", {"total": 10}, event="update")

    from sse_gateway_sdk import Control

    Control().unsubscribe("u42", "logs:ws1:**", reason="removed from workspace ws1")

The generated messages and stub are in :mod:`sse_gateway_sdk.v1`.
"""

from ._publisher import (
    DEFAULT_ADDR,
    DEFAULT_TIMEOUT,
    DISABLED,
    VERSION as __version__,
    AsyncPublisher,
    BatchResult,
    ConfigError,
    Event,
    PublishError,
    PublishResult,
    Publisher,
)
from ._control import Control, ControlError, ControlResult
from . import v1

__all__ = [
    "AsyncPublisher",
    "BatchResult",
    "ConfigError",
    "Control",
    "ControlError",
    "ControlResult",
    "DEFAULT_ADDR",
    "DEFAULT_TIMEOUT",
    "DISABLED",
    "Event",
    "PublishError",
    "PublishResult",
    "Publisher",
    "v1",
]

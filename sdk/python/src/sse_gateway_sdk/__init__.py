"""Publisher SDK for sse-gateway.

    from sse_gateway_sdk import Publisher

    pub = Publisher()  # $SSE_GATEWAY_ADDR, $SSE_GATEWAY_CA, $SSE_GATEWAY_CERT, $SSE_GATEWAY_KEY
    pub.publish_log("ws1", "wf1", {"step": "extract", "rows": 1200})
    pub.publish_metric("ws1", {"cpu": 0.42})
    pub.publish("dashboards:sales", {"total": 10}, event="update")

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
from . import v1

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
    "v1",
]

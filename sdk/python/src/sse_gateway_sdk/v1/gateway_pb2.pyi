from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PublishRequest(_message.Message):
    __slots__ = ("channel", "data", "event", "idempotency_key", "audience")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    AUDIENCE_FIELD_NUMBER: _ClassVar[int]
    channel: str
    data: str
    event: str
    idempotency_key: str
    audience: Audience
    def __init__(self, channel: _Optional[str] = ..., data: _Optional[str] = ..., event: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., audience: _Optional[_Union[Audience, _Mapping]] = ...) -> None: ...

class Audience(_message.Message):
    __slots__ = ("user_ids", "roles")
    USER_IDS_FIELD_NUMBER: _ClassVar[int]
    ROLES_FIELD_NUMBER: _ClassVar[int]
    user_ids: _containers.RepeatedScalarFieldContainer[str]
    roles: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, user_ids: _Optional[_Iterable[str]] = ..., roles: _Optional[_Iterable[str]] = ...) -> None: ...

class PublishResponse(_message.Message):
    __slots__ = ("id", "delivered", "duplicate")
    ID_FIELD_NUMBER: _ClassVar[int]
    DELIVERED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    id: str
    delivered: int
    duplicate: bool
    def __init__(self, id: _Optional[str] = ..., delivered: _Optional[int] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class PublishBatchRequest(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[PublishRequest]
    def __init__(self, events: _Optional[_Iterable[_Union[PublishRequest, _Mapping]]] = ...) -> None: ...

class PublishBatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[PublishResponse]
    def __init__(self, results: _Optional[_Iterable[_Union[PublishResponse, _Mapping]]] = ...) -> None: ...

class DisconnectRequest(_message.Message):
    __slots__ = ("user_id", "reason", "revoke_tokens")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REVOKE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    reason: str
    revoke_tokens: bool
    def __init__(self, user_id: _Optional[str] = ..., reason: _Optional[str] = ..., revoke_tokens: _Optional[bool] = ...) -> None: ...

class UnsubscribeRequest(_message.Message):
    __slots__ = ("user_id", "pattern", "reason")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    PATTERN_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    pattern: str
    reason: str
    def __init__(self, user_id: _Optional[str] = ..., pattern: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ControlResponse(_message.Message):
    __slots__ = ("streams",)
    STREAMS_FIELD_NUMBER: _ClassVar[int]
    streams: int
    def __init__(self, streams: _Optional[int] = ...) -> None: ...

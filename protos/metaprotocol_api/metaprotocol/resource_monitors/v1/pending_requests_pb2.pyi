from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class PendingRequestsConfig(_message.Message):
    __slots__ = ("max_pending_requests",)
    MAX_PENDING_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    max_pending_requests: int
    def __init__(self, max_pending_requests: _Optional[int] = ...) -> None: ...

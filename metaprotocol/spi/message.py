"""Messages: what a codec makes of one frame."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from typing import Final

from mypy_extensions import mypyc_attr


class MessageType(enum.Enum):
    """What a frame is, as far as the core cares (Aeraki's MessageType, minus streams for now)."""

    REQUEST = 0
    RESPONSE = 1
    ONEWAY = 2
    HEARTBEAT = 7
    ERROR = 8
    EVENT = 9
    """An unsolicited server message (e.g. a RESP3 push): it answers no request."""


class Correlation(enum.Enum):
    """How responses are matched to requests on one connection (declared by the codec factory).

    REQUEST_ID: multiplexed; responses carry the request's id and may come in any order.
    ORDERED: pipelined FIFO; the n-th response answers the n-th request.
    EXCLUSIVE: one request in flight per upstream connection.
    """

    REQUEST_ID = "request_id"
    ORDERED = "ordered"
    EXCLUSIVE = "exclusive"


class _NeedData:
    """Type of the NEED_DATA sentinel: never equal to a real message."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"

    def __bool__(self) -> bool:
        return False


NEED_DATA: Final = _NeedData()
"""Returned by ``Codec.decode`` when the buffer holds no whole frame yet."""

Metadata = Mapping[str, str]
"""String attributes for routing, hashing, rate limiting and logs. Keys are lower-case. Read-only
once decoded (a codec may share one mapping between messages): the type forbids writing to it."""


@mypyc_attr(allow_interpreted_subclasses=True)  # codec plugins may extend it
class Message:
    """One decoded frame.

    Attributes:
        type: request, response, oneway, heartbeat or error.
        raw: the frame exactly as received; forwarding it unchanged costs no copy.
        metadata: routing attributes (``interface``, ``method``, ``command``, ``key`` ...).
            Read-only once decoded: a codec may hand the same dict to several messages (Dubbo
            does for a connection's repeated calls).
        request_id: the protocol's correlation id, or None for protocols without one.
        opaque: codec-private decode state (offsets, parsed arguments); the core never reads it.
        parts: for scatter-gather requests (e.g. Redis MGET over shards), the sub-requests the
            codec split this request into; None when the request is sent whole.
    """

    __slots__ = ("metadata", "opaque", "parts", "raw", "request_id", "type")

    def __init__(
        self,
        type: MessageType,  # noqa: A002 - the protocol's own word
        raw: bytes | bytearray,
        metadata: Metadata | None = None,
        request_id: int | None = None,
        opaque: object = None,
    ) -> None:
        self.type = type
        self.raw = raw
        self.metadata: Metadata = metadata if metadata is not None else {}
        self.request_id = request_id
        self.opaque = opaque
        self.parts: list[Message] | None = None

    @property
    def size(self) -> int:
        """Frame size in bytes (header and body)."""
        return len(self.raw)

    def __repr__(self) -> str:
        return (
            f"Message({self.type.name}, id={self.request_id}, size={len(self.raw)}, "
            f"metadata={self.metadata!r})"
        )


class LazyMessage(Message):
    """A message whose metadata is read from its frame only when first asked for.

    For frames the core forwards without looking inside (responses, when no mutation or log
    reads them): the body is not walked at all on the hot path. ``parse`` gets the message and
    returns its metadata; it may also set ``opaque``. It raises RemoteProtocolError for a body
    it cannot read.
    """

    __slots__ = ("_metadata", "_parse")

    def __init__(
        self,
        type: MessageType,  # noqa: A002 - the protocol's own word
        raw: bytes | bytearray,
        parse: Callable[[LazyMessage], Metadata],
        request_id: int | None = None,
        opaque: object = None,
    ) -> None:
        self.type = type
        self.raw = raw
        self._metadata: Metadata | None = None
        self._parse = parse
        self.request_id = request_id
        self.opaque = opaque
        self.parts = None

    @property
    def metadata(self) -> Metadata:
        """Parsed on first read, then kept."""
        md = self._metadata
        if md is None:
            md = self._metadata = self._parse(self)
        return md

    @metadata.setter
    def metadata(self, value: Metadata) -> None:
        self._metadata = value

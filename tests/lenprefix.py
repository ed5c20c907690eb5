"""A tiny request-id protocol for testing the core's multiplexed mode.

Frame: u32 length of what follows | u8 type | u32 request id | metadata "k=v;k=v" | "|" | body.
Types: 0 request, 1 response, 2 oneway, 3 heartbeat, 4 heartbeat reply, 5 error response.
Mutations are written into the metadata section.
"""

from __future__ import annotations

import struct
from collections.abc import Hashable, Mapping

from metaprotocol.spi import (
    NEED_DATA,
    ClientCodec,
    CodecFactory,
    Correlation,
    DecodeResult,
    LocalError,
    Message,
    MessageType,
    Mutation,
    ReadBuffer,
    RemoteProtocolError,
    ServerCodec,
)

HEAD = struct.Struct(">IBI")
TYPES = {
    0: MessageType.REQUEST,
    1: MessageType.RESPONSE,
    2: MessageType.ONEWAY,
    3: MessageType.HEARTBEAT,
    4: MessageType.RESPONSE,
    5: MessageType.ERROR,
}
MAX = 1 << 20


def frame(kind: int, rid: int, metadata: Mapping[str, str] | None = None, body: bytes = b"") -> bytes:
    meta = ";".join(f"{k}={v}" for k, v in (metadata or {}).items()).encode()
    rest = meta + b"|" + body
    return HEAD.pack(len(rest) + 5, kind, rid) + rest


def parse(raw: bytes) -> tuple[int, int, dict[str, str], bytes]:
    _, kind, rid = HEAD.unpack_from(raw)
    meta, _, body = raw[HEAD.size :].partition(b"|")
    md = dict(item.split("=", 1) for item in meta.decode().split(";") if item)
    return kind, rid, md, body


def _decode(buffer: ReadBuffer) -> DecodeResult:
    data, pos = buffer.data, buffer.pos
    if len(data) - pos < HEAD.size:
        return NEED_DATA
    length, kind, rid = HEAD.unpack_from(data, pos)
    if length > MAX or length < 5 or kind not in TYPES:
        raise RemoteProtocolError(f"bad frame header (length {length}, type {kind})")
    end = pos + 4 + length
    if end > len(data):
        return NEED_DATA
    raw = bytes(data[pos:end])
    buffer.pos = end
    try:
        _, _, md, _ = parse(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RemoteProtocolError(f"bad metadata: {exc}") from None
    return Message(TYPES[kind], raw, md, rid)


def _rewrite(msg: Message, mutation: Mutation | None, rid: int | None) -> bytes | bytearray:
    if not mutation and (rid is None or rid == msg.request_id):
        return msg.raw
    kind, old, md, body = parse(bytes(msg.raw))
    md.update(mutation or {})
    return frame(kind, old if rid is None else rid, md, body)


class LenServer(ServerCodec):
    def decode(self, buffer: ReadBuffer) -> DecodeResult:
        return _decode(buffer)

    def encode(self, response: Message, mutation: Mutation | None = None, request_id: int | None = None) -> bytes | bytearray:
        return _rewrite(response, mutation, request_id)

    def on_error(self, request: Message | None, error: LocalError) -> bytes:
        rid = request.request_id if request is not None and request.request_id is not None else 0
        return frame(5, rid, {"error": error.kind.value}, error.message.encode())

    def heartbeat_reply(self, heartbeat: Message) -> bytes:
        return frame(4, heartbeat.request_id or 0)


class LenClient(ClientCodec):
    def decode(self, buffer: ReadBuffer) -> DecodeResult:
        return _decode(buffer)

    def encode(self, request: Message, mutation: Mutation | None = None, request_id: int | None = None) -> bytes | bytearray:
        return _rewrite(request, mutation, request_id)


class LenPrefixFactory(CodecFactory):
    name = "lenprefix"
    correlation = Correlation.REQUEST_ID
    supports_mutation = True
    max_request_id = 2**32 - 1

    def server_codec(self) -> LenServer:
        return LenServer()

    def client_codec(self, profile: Hashable = None) -> LenClient:
        return LenClient()


class ExclusiveFactory(LenPrefixFactory):
    """The same frames as a protocol without correlation: one request at a time per upstream
    connection (``Correlation.EXCLUSIVE``); ids pass through unchanged."""

    name = "lenprefix-exclusive"
    correlation = Correlation.EXCLUSIVE

"""The Dubbo codec: multiplexed by request id, routing metadata from a lazily parsed body.

Decoding a request reads the header and the short strings at the head of the body (service,
version, method, parameter descriptor), skips the arguments without building them, and checks the
attachments map: every attachment is routing metadata, read on first use (``attachments.py``).
Forwarding is zero-copy unless the
request id changes (8 bytes patched) or a mutation sets attachments (only the attachments map is
re-encoded, the body length patched).
"""

from __future__ import annotations

import struct
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from metaprotocol.spi import (
    NEED_DATA,
    ClientCodec,
    CodecConfigError,
    CodecFactory,
    Correlation,
    DecodeResult,
    ErrorKind,
    LazyMessage,
    LocalAnswer,
    LocalError,
    LocalProtocolError,
    Message,
    MessageType,
    Metadata,
    Mutation,
    ReadBuffer,
    RemoteProtocolError,
    ServerCodec,
)
from metaprotocol_codecs.dubbo import wire
from metaprotocol_codecs.dubbo.attachments import EMPTY, Parsed, Recent, RequestMetadata, attachment_metadata, attachments_at
from metaprotocol_codecs.dubbo.fastscan import plain_flat_map, read_string_at, skip_values
from metaprotocol_codecs.dubbo.hessian2 import Hessian2Reader, Hessian2Writer, HessianDecodeError
from metaprotocol_codecs.dubbo.hessian2_types import HessianMap

_STATUS_FOR: Final = {
    ErrorKind.ROUTE_NOT_FOUND: wire.SERVICE_NOT_FOUND,
    ErrorKind.CLUSTER_NOT_FOUND: wire.SERVICE_NOT_FOUND,
    ErrorKind.NO_HEALTHY_UPSTREAM: wire.SERVICE_ERROR,
    ErrorKind.CONNECT_FAILURE: wire.SERVICE_ERROR,
    ErrorKind.UPSTREAM_RESET: wire.SERVER_ERROR,
    ErrorKind.UPSTREAM_TIMEOUT: wire.SERVER_TIMEOUT,
    ErrorKind.BAD_REQUEST: wire.BAD_REQUEST,
    ErrorKind.BAD_RESPONSE: wire.BAD_RESPONSE,
    ErrorKind.OVER_LIMIT: wire.SERVER_THREADPOOL_EXHAUSTED_ERROR,
    ErrorKind.FORBIDDEN: wire.SERVICE_ERROR,  # with "RBAC: access denied": what a Dubbo client shows as its RpcException
    ErrorKind.UNSUPPORTED: wire.BAD_REQUEST,
    ErrorKind.INTERNAL: wire.SERVER_ERROR,
}
_REQUEST_FLAGS: Final = wire.FLAG_REQUEST | wire.FLAG_EVENT
_ID: Final = struct.Struct(">Q")
_PROTOCOL_KEYS: Final = ("interface", "method")
# What reading a body may raise: HessianDecodeError (a ValueError) for bad Hessian; the others
# only from a reader bug, caught here too so that a bad body never escapes the SPI's errors.
_BODY_ERRORS: Final = (ValueError, IndexError, struct.error, RecursionError)


class DubboConfig:
    """Codec settings: ``payload_limit`` (bytes, default 8 MiB as Dubbo) and ``non_hessian2``
    (``passthrough``: route on the header only, or ``reject``: answer BAD_REQUEST)."""

    def __init__(self, config: Mapping[str, object]) -> None:
        unknown = set(config) - {"payload_limit", "non_hessian2"}
        if unknown:
            raise CodecConfigError(f"unknown dubbo codec settings: {', '.join(sorted(unknown))}")
        limit = config.get("payload_limit", wire.DEFAULT_PAYLOAD_LIMIT)
        if not isinstance(limit, int) or isinstance(limit, bool) or limit <= 0:
            raise CodecConfigError("payload_limit must be a positive integer")
        self.payload_limit = limit
        self.non_hessian2 = str(config.get("non_hessian2", "passthrough"))
        if self.non_hessian2 not in ("passthrough", "reject"):
            raise CodecConfigError("non_hessian2 must be passthrough or reject")


class _Body:
    """Where a decoded body's attachments start, and the stream state before them.

    ``reader`` is None when the fast scanner read the body: the attachments then hold only
    scalars, which a writer with a fresh state encodes correctly. ``lazy`` is the request's
    metadata when its attachments are read on first use; ``attachment_map`` reads them then.
    A plain class, not a dataclass: one is made per message, and mypyc compiles this
    constructor, where a dataclass's is generated Python run by the interpreter.
    """

    __slots__ = ("attachments", "attachments_at", "flag", "flag_size", "lazy", "reader")

    def __init__(
        self,
        attachments_at: int,
        attachments: dict[Any, Any],
        reader: Hessian2Reader | None,
        flag: int = -1,  # responses: the result flag; its encoded size is flag_size
        flag_size: int = 0,
        lazy: RequestMetadata | None = None,
    ) -> None:
        self.attachments_at = attachments_at
        self.attachments = attachments
        self.reader = reader
        self.flag = flag
        self.flag_size = flag_size
        self.lazy = lazy

    def attachment_map(self) -> dict[Any, Any]:
        """The attachments as read (for a mutation), reading them now if they were left lazy."""
        lazy = self.lazy
        return lazy.parsed()[0] if lazy is not None else self.attachments


@dataclass(slots=True)
class _Invalid:
    """A frame whose header is sound but whose body is not: answered BAD_REQUEST."""

    reason: str


def _header(data: bytes, pos: int) -> tuple[int, int, int, int, int]:
    """Magic, flag, status, request id and body length of the 16-byte header at ``pos``:
    ``wire.HEADER.unpack_from`` as byte reads mypyc compiles (no struct call, no tuple of
    boxed ints); the id from two 32-bit halves, so an id under 2**32 never needs a long."""
    high = (data[pos + 4] << 24) | (data[pos + 5] << 16) | (data[pos + 6] << 8) | data[pos + 7]
    low = (data[pos + 8] << 24) | (data[pos + 9] << 16) | (data[pos + 10] << 8) | data[pos + 11]
    return (
        (data[pos] << 8) | data[pos + 1],
        data[pos + 2],
        data[pos + 3],
        (high << 32) | low if high else low,
        (data[pos + 12] << 24) | (data[pos + 13] << 16) | (data[pos + 14] << 8) | data[pos + 15],
    )


def _short(data: bytes | bytearray, pos: int, kind: ErrorKind) -> DecodeResult:
    """Less than a header: wait, unless the magic is already wrong."""
    if len(data) - pos >= 2 and (data[pos] != 0xDA or data[pos + 1] != 0xBB):  # noqa: PLR2004
        raise RemoteProtocolError("not a Dubbo frame (bad magic)", kind)
    return NEED_DATA


def _frame_trouble(magic: int, flag: int, rid: int, length: int, limit: int, kind: ErrorKind) -> DecodeResult:
    """A header that is wrong (bad magic, too long: raises) or a body not all here (waits)."""
    if magic != wire.MAGIC:
        raise RemoteProtocolError("not a Dubbo frame (bad magic)", kind)
    if length > limit:
        partial = Message(MessageType.REQUEST, b"", {}, rid) if flag & wire.FLAG_REQUEST else None
        raise RemoteProtocolError(f"Data length too large: {length}, max payload: {limit}", kind, partial)
    return NEED_DATA


def _patch(raw: bytes | bytearray, request_id: int | None, body: bytes | None, flag: int | None = None) -> bytes:
    """The frame with a new request id and/or a new body (length patched)."""
    magic, old_flag, status, rid, length = wire.HEADER.unpack_from(raw, 0)
    if body is None:
        body = bytes(raw[wire.HEADER_SIZE :])
    new_id = rid if request_id is None else request_id
    return wire.header(old_flag if flag is None else flag, status, new_id, len(body)) + body


def _mutated_attachments(info: _Body, mutation: Mutation) -> bytes:
    merged = HessianMap(info.attachment_map())
    merged.update(mutation)
    r = info.reader
    w = Hessian2Writer() if r is None else Hessian2Writer(r.classes, r.types, len(r.refs))
    w.write(merged)
    return w.getvalue()


class DubboServerCodec(ServerCodec):
    """Consumer-facing side."""

    def __init__(self, config: DubboConfig) -> None:
        self.config = config
        self.recent = Recent()

    def decode(self, buffer: ReadBuffer) -> DecodeResult:
        """One request, oneway request or heartbeat."""
        # Framing is written out here and in DubboClientCodec.decode rather than shared: a call
        # and a result tuple per frame were a measurable part of the per-request cost.
        data = buffer.data
        pos = buffer.pos
        if len(data) - pos < wire.HEADER_SIZE:
            return _short(data, pos, ErrorKind.BAD_REQUEST)
        if isinstance(data, bytes):
            magic, flag, _status, rid, length = _header(data, pos)
        else:
            magic, flag, _status, rid, length = wire.HEADER.unpack_from(data, pos)
        end = pos + wire.HEADER_SIZE + length
        if magic != wire.MAGIC or length > self.config.payload_limit or end > len(data):
            return _frame_trouble(magic, flag, rid, length, self.config.payload_limit, ErrorKind.BAD_REQUEST)
        buffer.pos = end
        # bytes, whatever the buffer holds: the scanners are compiled for bytes (a bytearray
        # would make every index and slice a generic call); a bytearray frame is copied once.
        raw = data[pos:end] if isinstance(data, bytes) else bytes(data[pos:end])
        if not flag & wire.FLAG_REQUEST:
            return Message(MessageType.EVENT, raw, {}, rid)  # a stray response from a consumer
        if flag & wire.FLAG_EVENT:
            return Message(MessageType.HEARTBEAT, raw, {}, rid)
        mtype = MessageType.REQUEST if flag & wire.FLAG_TWO_WAY else MessageType.ONEWAY
        if flag & wire.SERIALIZATION_MASK != wire.HESSIAN2:
            opaque = _Invalid("unsupported serialization") if self.config.non_hessian2 == "reject" else None
            return Message(mtype, raw, {"serialization": str(flag & wire.SERIALIZATION_MASK)}, rid, opaque)
        try:
            md, info = _request_metadata(raw, self.recent)
        except _BODY_ERRORS as exc:
            return Message(mtype, raw, {}, rid, _Invalid(f"bad request body: {exc}"))
        return Message(mtype, raw, md, rid, info)

    def answer_locally(self, request: Message) -> LocalAnswer | None:
        """Requests whose body could not be read get BAD_REQUEST; the connection stays up."""
        if isinstance(request.opaque, _Invalid):
            return LocalAnswer(self.on_error(request, LocalError(ErrorKind.BAD_REQUEST, request.opaque.reason)))
        return None

    def encode(self, response: Message, mutation: Mutation | None = None, request_id: int | None = None) -> bytes | bytearray:
        """The response with the consumer's request id, and attachments set by ``mutation``."""
        return _encode(response, mutation, request_id)

    def on_error(self, request: Message | None, error: LocalError) -> bytes:
        """A response with the matching Dubbo status and the message as its body."""
        if request is None:
            return b""  # no request id to answer: Dubbo has no connection-level error reply
        w = Hessian2Writer()
        w.write_string(f"metaprotocol: {error.message}")
        body = w.getvalue()
        status = _STATUS_FOR.get(error.kind, wire.SERVER_ERROR)
        return wire.header(wire.HESSIAN2, status, request.request_id or 0, len(body)) + body

    def heartbeat_reply(self, heartbeat: Message) -> bytes:
        """Heartbeats (and other events) are answered by the proxy with a null event response."""
        return wire.build_heartbeat(heartbeat.request_id or 0, reply=True)

    def upstream_profile(self) -> Hashable:
        """One kind of upstream connection for every consumer. The base class says the same;
        this copy is compiled, where the base class's runs interpreted once per request."""
        return None


def _request_metadata(raw: bytes, recent: Recent | None = None, lazy: bool = True) -> tuple[Metadata, _Body]:
    """A request's metadata and body offsets (``lazy``: attachments read on first use when
    plain_flat_map vouches for them; False reads them now, the reference the tests compare with)."""
    end = len(raw)
    if recent is not None and recent.head_bytes is not None and raw.startswith(recent.head_bytes, wire.HEADER_SIZE):
        head = recent.head
    else:
        guess = _head_end_guess(raw, end)
        key = raw[wire.HEADER_SIZE : guess] if guess > 0 else b""
        known = _HEADS.get(key) if key else None
        head = known if known is not None else _read_head(raw, end, guess)
        if recent is not None and head[2] == guess:
            recent.head_bytes, recent.head = key, head
    head_md, params, pos = head
    at = _skip_arguments(raw, pos, end, params) if params else pos
    parsed: Parsed | None
    if recent is not None and end - at == len(recent.attachments_bytes) and raw.startswith(recent.attachments_bytes, at):
        parsed = recent.attachments
        if parsed is None:  # the same attachments as the last call, still unread
            return _lazy(head_md, recent.attachments_bytes, recent, at)
    else:
        if lazy and at < end:
            region = raw[at:end]
            if plain_flat_map(region):
                return _lazy(head_md, region, recent, at)
        parsed = attachments_at(raw, at, end)
        if parsed is None:  # references, objects or nested values: the full reader
            return _request_metadata_full(raw)
        if recent is not None:
            recent.attachments_bytes, recent.attachments, recent.lazy = raw[at:end], parsed, None
    attachments, cached_md = parsed
    if recent is None:
        # Attachments first: the head's own attributes (interface, method ...) win over them.
        return cached_md | head_md, _Body(at, attachments, None)
    merged_from = recent.metadata_from
    if merged_from is None or merged_from[0] is not head_md or merged_from[1] is not cached_md:
        recent.metadata = cached_md | head_md
        recent.metadata_from = (head_md, cached_md)
    return recent.metadata, _Body(at, attachments, None)


def _lazy(head_md: dict[str, str], region: bytes, recent: Recent | None, at: int) -> tuple[Metadata, _Body]:
    """Metadata whose attachments (``region``, vouched for by plain_flat_map) are read on first
    use; the connection's last one again when head and attachments are the same."""
    if recent is None:
        md = RequestMetadata(head_md, region, None)
    else:
        last = recent.lazy
        if last is not None and last.head is head_md and last.region is region:
            md = last
        else:
            md = RequestMetadata(head_md, region, recent)
            recent.attachments_bytes, recent.attachments, recent.lazy = region, None, md
    return md, _Body(at, EMPTY[0], None, lazy=md)


def _skip_arguments(raw: bytes, at: int, end: int, params: int) -> int:
    """Offset after ``params`` arguments: short ASCII strings and one-byte ints (the common
    arguments) are stepped over here, anything else by skip_values from where it starts."""
    left = params
    while left:
        if at < end:
            code = raw[at]
            if code < 0x20:  # a short string: its length is in UTF-16 units, bytes when ASCII
                stop = at + 1 + code
                if stop <= end and raw[at + 1 : stop].isascii():
                    at = stop
                    left -= 1
                    continue
            elif 0x80 <= code <= 0xBF:  # noqa: PLR2004 - a one-byte int
                at += 1
                left -= 1
                continue
        return skip_values(raw, at, end, left, [], [])  # also reports truncation
    return at


_Head = tuple[dict[str, str], int, int]
"""A request head's metadata, its parameter count, and the body offset after it."""

_HEADS: dict[bytes, _Head] = {}
_HEADS_MAX: Final = 2048


def _head_end_guess(raw: bytes, end: int) -> int:
    """Where the five head strings would end if each is ASCII in a compact form, else -1.

    Only a guess: the bytes up to it are looked up among heads already read in full, and a
    match proves them (a head is self-delimiting, so equal bytes parse equally).
    """
    pos = wire.HEADER_SIZE
    for _ in range(5):
        if pos >= end:
            return -1
        code = raw[pos]
        if code < 0x20:
            pos += 1 + code
        elif 0x30 <= code <= 0x33 and pos + 1 < end:
            pos += 2 + ((code - 0x30) << 8) + raw[pos + 1]
        elif code == 0x4E:
            pos += 1
        else:
            return -1
    return pos if pos <= end else -1


def _read_head(raw: bytes, end: int, guess: int) -> _Head:
    """Read the head strings in full; remember the head when the guess found its end."""
    pos = wire.HEADER_SIZE
    dubbo_version, pos = read_string_at(raw, pos, end)
    path, pos = read_string_at(raw, pos, end)
    version, pos = read_string_at(raw, pos, end)
    method, pos = read_string_at(raw, pos, end)
    desc, pos = read_string_at(raw, pos, end)
    if dubbo_version is None or path is None or method is None or desc is None:
        raise HessianDecodeError("null where the request needs a string")
    md = {"interface": path, "method": method, "dubbo": dubbo_version}
    if version is not None:
        md["version"] = version
    head = (md, wire.count_parameters(desc), pos)
    if pos == guess:
        if len(_HEADS) >= _HEADS_MAX:
            _HEADS.clear()
        _HEADS[raw[wire.HEADER_SIZE : pos]] = head
    return head


def _request_metadata_full(raw: bytes) -> tuple[dict[str, str], _Body]:
    r = Hessian2Reader(raw, wire.HEADER_SIZE)
    dubbo_version = r.read_string()
    path = r.read_string()
    version = r.read_string_or_null()
    method = r.read_string()
    desc = r.read_string()
    for _ in range(wire.count_parameters(desc)):
        r.skip()
    at = r.pos
    attachments = r.read() if not r.at_end() else HessianMap()
    if not isinstance(attachments, dict):
        raise HessianDecodeError("attachments are not a map")
    md: dict[str, str] = {}
    attachment_metadata(attachments, md)
    md["interface"] = path
    md["method"] = method
    md["dubbo"] = dubbo_version
    if version is not None:
        md["version"] = version
    return md, _Body(at, attachments, r)


def _encode(msg: Message, mutation: Mutation | None, request_id: int | None) -> bytes | bytearray:
    new_id = None if request_id is None or request_id == msg.request_id else request_id
    if mutation:
        if isinstance(msg, LazyMessage):
            try:
                msg.metadata  # noqa: B018 - parses the body and sets opaque
            except RemoteProtocolError as exc:
                raise LocalProtocolError(f"cannot set attachments: {exc}") from None
        info = msg.opaque
        if isinstance(info, _Body):
            raw = msg.raw
            if info.flag >= 0 and info.flag < wire.WITH_ATTACHMENTS_OFFSET:
                # A response without attachments: upgrade the flag to its _WITH_ATTACHMENTS variant.
                w = Hessian2Writer()
                w.write_int(info.flag + wire.WITH_ATTACHMENTS_OFFSET)
                head = w.getvalue() + bytes(raw[wire.HEADER_SIZE + info.flag_size : info.attachments_at])
            else:
                head = bytes(raw[wire.HEADER_SIZE : info.attachments_at])
            return _patch(raw, new_id, head + _mutated_attachments(info, mutation))
    if new_id is None:
        return msg.raw
    raw = msg.raw
    if isinstance(raw, bytes):  # slices, int.to_bytes and concatenation: all compiled, no struct call
        return raw[:4] + (new_id & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "big") + raw[12:]
    out = bytearray(raw)  # one copy, then the 8 id bytes patched in place
    _ID.pack_into(out, 4, new_id & 0xFFFFFFFFFFFFFFFF)
    return out


class DubboClientCodec(ClientCodec):
    """Provider-facing side."""

    def __init__(self, config: DubboConfig) -> None:
        self.config = config

    def decode(self, buffer: ReadBuffer) -> DecodeResult:
        """One response; provider heartbeats and other events are EVENTs."""
        data = buffer.data
        pos = buffer.pos
        if len(data) - pos < wire.HEADER_SIZE:
            return _short(data, pos, ErrorKind.BAD_RESPONSE)
        if isinstance(data, bytes):
            magic, flag, status, rid, length = _header(data, pos)
        else:
            magic, flag, status, rid, length = wire.HEADER.unpack_from(data, pos)
        end = pos + wire.HEADER_SIZE + length
        if magic != wire.MAGIC or length > self.config.payload_limit or end > len(data):
            return _frame_trouble(magic, flag, rid, length, self.config.payload_limit, ErrorKind.BAD_RESPONSE)
        buffer.pos = end
        # bytes, whatever the buffer holds: the scanners are compiled for bytes (a bytearray
        # would make every index and slice a generic call); a bytearray frame is copied once.
        raw = data[pos:end] if isinstance(data, bytes) else bytes(data[pos:end])
        if flag & _REQUEST_FLAGS:
            return Message(MessageType.EVENT, raw, {}, rid)
        if status != wire.OK:
            return Message(MessageType.ERROR, raw, {"status": wire.STATUS_NAMES.get(status, str(status))}, rid)
        if flag & wire.SERIALIZATION_MASK != wire.HESSIAN2:
            return Message(MessageType.RESPONSE, raw, {}, rid)
        result_flag = _FLAG_CODES.get(raw[wire.HEADER_SIZE]) if len(raw) > wire.HEADER_SIZE else None
        if result_flag is not None:  # the usual one-byte flag: the value is not walked unless asked
            return LazyMessage(_response_type(result_flag), raw, _lazy_response_metadata, rid)
        try:
            md, body = _checked_response_body(raw)
        except RemoteProtocolError as exc:  # the frame is consumed whole: fail only its request
            raise RemoteProtocolError(str(exc), ErrorKind.BAD_RESPONSE, Message(MessageType.RESPONSE, raw, {}, rid), skipped=True) from None
        return Message(_response_type(body.flag), raw, md, rid, body)

    def encode(self, request: Message, mutation: Mutation | None = None, request_id: int | None = None) -> bytes | bytearray:
        """The request with the upstream request id, and attachments set by ``mutation``."""
        return _encode(request, mutation, request_id)

    def health_check_request(self) -> bytes | None:
        """A heartbeat: every Dubbo provider answers it without invoking a service."""
        return wire.build_heartbeat(1, reply=False)

    def answer_event(self, event: Message) -> bytes | None:
        """Answer a provider's heartbeat request, or it closes the idle connection."""
        raw = event.raw
        if raw[2] & wire.FLAG_REQUEST and raw[2] & wire.FLAG_TWO_WAY:
            return wire.build_heartbeat(event.request_id or 0, reply=True)
        return None


_FLAG_CODES: Final = {0x90 + f: f for f in range(6)}
_ERROR_FLAGS: Final = (wire.RESPONSE_WITH_EXCEPTION, wire.RESPONSE_WITH_EXCEPTION_WITH_ATTACHMENTS)


def _response_type(flag: int) -> MessageType:
    return MessageType.ERROR if flag in _ERROR_FLAGS else MessageType.RESPONSE


def _lazy_response_metadata(msg: LazyMessage) -> dict[str, str]:
    """A response's attachments as metadata, read when first asked for (mutation, logs)."""
    md, msg.opaque = _checked_response_body(msg.raw)
    return md


def _checked_response_body(raw: bytes | bytearray) -> tuple[dict[str, str], _Body]:
    """_response_body, with a body it cannot read reported as the provider's fault."""
    try:
        return _response_body(raw if isinstance(raw, bytes) else bytes(raw))
    except _BODY_ERRORS as exc:
        raise RemoteProtocolError(f"bad response body: {exc}", ErrorKind.BAD_RESPONSE) from None


def _response_body(raw: bytes) -> tuple[dict[str, str], _Body]:
    end = len(raw)
    pos = wire.HEADER_SIZE
    flag = _FLAG_CODES.get(raw[pos]) if pos < end else None
    if flag is not None:
        pos += 1
        has_value = flag in (0, 1, 3, 4)
        at = skip_values(raw, pos, end, 1, [], []) if has_value else pos
        parsed: Parsed | None = EMPTY
        if flag >= wire.WITH_ATTACHMENTS_OFFSET:
            parsed = attachments_at(raw, at, end)
        elif at != end:
            raise HessianDecodeError(f"{end - at} bytes after the response value")
        if parsed is not None:
            attachments, cached_md = parsed
            return cached_md.copy(), _Body(at, attachments, None, flag, 1)
    return _response_full(raw)


def _attachment_map(r: Hessian2Reader) -> dict[Any, Any]:
    """The next value, which must be a map (checked before it is typed as one: compiled code
    would raise TypeError on the assignment, not the protocol error)."""
    value: Any = r.read()
    if not isinstance(value, dict):
        raise HessianDecodeError("attachments are not a map")
    return value


def _response_full(raw: bytes) -> tuple[dict[str, str], _Body]:
    r = Hessian2Reader(raw, wire.HEADER_SIZE)
    start = r.pos
    flag = r.read_int()
    flag_size = r.pos - start
    md: dict[str, str] = {}
    attachments: dict[Any, Any] = HessianMap()
    if flag in (wire.RESPONSE_WITH_EXCEPTION_WITH_ATTACHMENTS, wire.RESPONSE_VALUE_WITH_ATTACHMENTS):
        r.skip()
        at = r.pos
        attachments = _attachment_map(r)
        attachment_metadata(attachments, md)
    elif flag == wire.RESPONSE_NULL_VALUE_WITH_ATTACHMENTS:
        at = r.pos
        attachments = _attachment_map(r)
        attachment_metadata(attachments, md)
    elif flag in (wire.RESPONSE_WITH_EXCEPTION, wire.RESPONSE_VALUE, wire.RESPONSE_NULL_VALUE):
        if flag != wire.RESPONSE_NULL_VALUE:
            r.skip()
        at = r.pos
    else:
        raise HessianDecodeError(f"unknown response flag {flag}")
    return md, _Body(at, attachments, r, flag, flag_size)


class DubboCodecFactory(CodecFactory):
    """Entry point ``dubbo``: Dubbo 2 with Hessian2 bodies, multiplexed by request id."""

    name = "dubbo"
    aliases = ("aeraki.meta_protocol.codec.dubbo",)
    correlation = Correlation.REQUEST_ID
    supports_mutation = True
    max_request_id = 2**63 - 1

    def __init__(self, config: Mapping[str, object] | None = None) -> None:
        super().__init__(config)
        self.settings = DubboConfig(self.config)

    def server_codec(self) -> DubboServerCodec:
        """A codec for one consumer connection."""
        return DubboServerCodec(self.settings)

    def client_codec(self, profile: Hashable = None) -> DubboClientCodec:
        """A codec for one provider connection."""
        return DubboClientCodec(self.settings)

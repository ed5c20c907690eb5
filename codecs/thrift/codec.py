"""The Thrift codec: binary and compact protocols over framed, unframed and THeader transports.

Transport and protocol are detected on a connection's first bytes (as Envoy's ``auto``) or fixed
by configuration. Routing metadata: ``method``, ``service`` (``Service:method`` names, as
TMultiplexedProtocol sends them), ``message_type``, and every THeader string header. Requests are
multiplexed upstream by rewriting the sequence id (a varint in compact, so lengths are patched);
THeader headers can be set by mutations. On framed and unframed connections there is nowhere to
put a mutation: the message passes through unchanged (documented in docs/thrift.md).
"""

from __future__ import annotations

import struct
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Final

from metaprotocol.spi import (
    NEED_DATA,
    ClientCodec,
    CodecConfigError,
    CodecFactory,
    Correlation,
    DecodeResult,
    ErrorKind,
    LazyMessage,
    LocalError,
    Message,
    MessageType,
    Mutation,
    ReadBuffer,
    RemoteProtocolError,
    ServerCodec,
)
from metaprotocol_codecs.thrift import wire
from metaprotocol_codecs.thrift.wire import MessageHeader, NeedMore, Protocol, THeader, Transport

_TYPES: Final = {
    wire.CALL: MessageType.REQUEST,
    wire.ONEWAY: MessageType.ONEWAY,
    wire.REPLY: MessageType.RESPONSE,
    wire.EXCEPTION: MessageType.ERROR,
}
_PROTOCOL_IDS: Final = {wire.PROTOCOL_BINARY: Protocol.BINARY, wire.PROTOCOL_COMPACT: Protocol.COMPACT}
_MIN_DETECT: Final = 8
# TApplicationException type of a local reply, by error kind; INTERNAL_ERROR for the others.
_EXCEPTION_TYPES: Final = {ErrorKind.ROUTE_NOT_FOUND: wire.UNKNOWN_METHOD, ErrorKind.BAD_REQUEST: wire.PROTOCOL_ERROR}


class ThriftConfig:
    """Codec settings: ``transport`` (auto, framed, unframed, header), ``protocol`` (auto, binary,
    binary-nonstrict, compact) and ``max_frame_size`` (bytes, default 16 MiB)."""

    def __init__(self, config: Mapping[str, object]) -> None:
        unknown = set(config) - {"transport", "protocol", "max_frame_size"}
        if unknown:
            raise CodecConfigError(f"unknown thrift codec settings: {', '.join(sorted(unknown))}")
        transport = str(config.get("transport", "auto"))
        protocol = str(config.get("protocol", "auto"))
        try:
            self.transport = None if transport == "auto" else Transport(transport)
            self.protocol = None if protocol == "auto" else Protocol(protocol)
        except ValueError as exc:
            raise CodecConfigError(str(exc)) from None
        size = config.get("max_frame_size", wire.DEFAULT_MAX_FRAME)
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            raise CodecConfigError("max_frame_size must be a positive integer")
        self.max_frame = size


@dataclass(slots=True)
class _Info:
    """Where things are in a decoded frame, for rewriting it."""

    transport: Transport
    protocol: Protocol
    header: MessageHeader  # offsets into ``payload``
    payload: bytes | bytearray  # the (untransformed) message bytes; the frame itself for non-THeader
    theader: THeader | None = None
    payload_at: int = 0  # offset of the message inside the frame (framed: 4, THeader: header end)


def _detect(data: bytes | bytearray, pos: int, n: int) -> tuple[Transport, Protocol | None] | None:
    """Transport (and protocol when evident) from a connection's first bytes; None: need more."""
    if n - pos < 2:  # noqa: PLR2004
        return None
    b0, b1 = data[pos], data[pos + 1]
    if b0 == 0x80 and b1 == 0x01:  # noqa: PLR2004
        return Transport.UNFRAMED, Protocol.BINARY
    if b0 == wire.COMPACT_ID:
        return Transport.UNFRAMED, Protocol.COMPACT
    if n - pos < _MIN_DETECT:
        return None
    if data[pos + 4] == 0x0F and data[pos + 5] == 0xFF:  # noqa: PLR2004
        return Transport.HEADER, None
    if data[pos + 4] == 0x80 and data[pos + 5] == 0x01:  # noqa: PLR2004
        return Transport.FRAMED, Protocol.BINARY
    if data[pos + 4] == wire.COMPACT_ID:
        return Transport.FRAMED, Protocol.COMPACT
    # Non-strict binary: unframed starts with the name length, framed with the frame length.
    first = wire.I32.unpack_from(data, pos)[0]
    inner = wire.I32.unpack_from(data, pos + 4)[0]
    if 0 < first <= n - pos - 9:
        name = bytes(data[pos + 4 : pos + 4 + first])
        if name.isascii() and name.decode("ascii").isprintable() and data[pos + 4 + first] in _TYPES:
            return Transport.UNFRAMED, Protocol.BINARY_NONSTRICT
    if 0 < inner < first:
        return Transport.FRAMED, Protocol.BINARY_NONSTRICT
    if 0 < first < 256 and n - pos < first + 9:  # noqa: PLR2004 - maybe an unframed name: wait
        return None
    raise RemoteProtocolError("not a Thrift message")


class _ThriftSide:
    """Decoding shared by both directions; remembers the connection's transport and protocol."""

    def __init__(self, config: ThriftConfig, kind: ErrorKind, fixed: tuple[Transport, Protocol | None] | None = None) -> None:
        self.config = config
        self.kind = kind
        self.transport = fixed[0] if fixed else config.transport
        self.protocol = fixed[1] if fixed else config.protocol
        # The last binary message header read on this connection up to its seqid (version word,
        # name length, name): a client repeats it call after call, and equal bytes read equally.
        self.last_head: tuple[bytes, str, int, Protocol] | None = None
        # Likewise the last THeader block: magic and flags, then header size and headers.
        self.last_theader: tuple[bytes, bytes, THeader] | None = None

    def _decode(self, buffer: ReadBuffer) -> DecodeResult:
        data = buffer.data
        pos = buffer.pos
        n = len(data)
        if pos >= n:
            return NEED_DATA
        if self.transport is None:
            try:
                detected = _detect(data, pos, n)
            except RemoteProtocolError as exc:
                raise RemoteProtocolError(str(exc), self.kind) from None
            if detected is None:
                return NEED_DATA
            self.transport = detected[0]
            self.protocol = self.protocol or detected[1]
        try:
            if self.transport is Transport.UNFRAMED:
                return self._unframed(buffer, data, pos, n)
            return self._framed(buffer, data, pos, n)
        except NeedMore:
            return NEED_DATA
        except (ValueError, IndexError, struct.error) as exc:
            raise RemoteProtocolError(f"bad Thrift message: {exc}", self.kind) from None

    def _unframed(self, buffer: ReadBuffer, data: bytes | bytearray, pos: int, n: int) -> Message:
        limit = self.config.max_frame
        try:
            h = self._header(data, pos, n)
        except NeedMore:
            if n - pos > limit:
                raise ValueError(f"message larger than {limit} bytes") from None
            raise
        try:
            end = wire.skip_struct(data, h.end, n, h.protocol)
        except NeedMore:
            if n - pos > limit:
                raise self._bad_body(f"message larger than {limit} bytes", data, pos, h) from None
            raise
        except (ValueError, IndexError, struct.error) as exc:
            raise self._bad_body(f"bad Thrift message: {exc}", data, pos, h) from None
        self.protocol = h.protocol
        frame = data[pos:end]
        buffer.pos = end
        _rebase(h, pos)
        return self._message(frame, _Info(Transport.UNFRAMED, h.protocol, h, frame))

    def _bad_transform(self, reason: str, frame: bytes | bytearray) -> RemoteProtocolError:
        """A THeader frame whose payload does not untransform (not zlib, or past the frame limit).

        The frame was consumed whole, so the stream stays aligned. On the client side the
        THeader block's own seqid names the request the reply answers (the proxy writes it
        upstream): the error is ``skipped`` and only that request fails, not the others sharing
        the connection. A seqid of 0 (clients that leave it unset) names nothing: the connection
        is closed. On the server side the method name is inside the unreadable payload, so no
        TApplicationException can be built: the client's connection is closed.
        """
        message = f"bad THeader payload: {reason}"
        seqid = _header_seqid(frame)
        if self.kind is ErrorKind.BAD_RESPONSE and seqid != 0:
            return RemoteProtocolError(message, self.kind, Message(MessageType.RESPONSE, frame, {}, seqid), skipped=True)
        return RemoteProtocolError(message, self.kind)

    def _bad_body(self, reason: str, data: bytes | bytearray, pos: int, h: MessageHeader) -> RemoteProtocolError:
        """The error for an unframed message whose header was read but whose struct is not sound.

        It carries the header as ``request``, so that the core answers with a
        TApplicationException naming the method and seqid: on the server side for a CALL (a
        ONEWAY caller reads no reply), on the client side for the reply's seqid.
        """
        answerable = (wire.CALL,) if self.kind is ErrorKind.BAD_REQUEST else (wire.REPLY, wire.EXCEPTION)
        request = None
        if h.type in answerable:
            head = bytes(data[pos : h.end])
            _rebase(h, pos)
            request = Message(_TYPES[h.type], head, {}, h.seqid, _Info(Transport.UNFRAMED, h.protocol, h, head))
        return RemoteProtocolError(reason, self.kind, request)

    def _framed(self, buffer: ReadBuffer, data: bytes | bytearray, pos: int, n: int) -> Message:
        if n - pos < 4:  # noqa: PLR2004
            raise NeedMore
        size = wire.I32.unpack_from(data, pos)[0]
        if size < 0 or size > self.config.max_frame:
            raise ValueError(f"frame size {size} out of range (max {self.config.max_frame})")
        end = pos + 4 + size
        if end > n:
            raise NeedMore
        frame = data[pos:end]
        buffer.pos = end
        try:
            if self.transport is Transport.HEADER:
                if frame[4] != 0x0F or frame[5] != 0xFF:  # noqa: PLR2004
                    raise ValueError("not a THeader frame")
                t = self._theader(frame)
                protocol = _PROTOCOL_IDS.get(t.protocol_id)
                if protocol is None:
                    raise ValueError(f"unsupported THeader protocol id {t.protocol_id}")
                payload = frame[t.payload_at :]
                if t.transforms:
                    try:
                        payload = wire.untransform(bytes(payload), t.transforms, self.config.max_frame)
                    except ValueError as exc:
                        raise self._bad_transform(str(exc), frame) from None
                h = self._header(payload, 0, len(payload), protocol)
                return self._message(frame, _Info(Transport.HEADER, protocol, h, payload, t, t.payload_at))
            h = self._header(frame, 4, len(frame))
        except NeedMore:
            raise ValueError("message header runs past its frame") from None
        self.protocol = h.protocol
        return self._message(frame, _Info(Transport.FRAMED, h.protocol, h, frame, None, 4))

    def _theader(self, frame: bytes | bytearray) -> THeader:
        """The THeader block of ``frame``; one equal to the last (all but the seqid) is not read
        again."""
        last = self.last_theader
        if last is not None and frame.startswith(last[0], 4) and frame.startswith(last[1], 12) and len(frame) >= last[2].payload_at:
            return last[2]  # shared: the codec reads a frame's own header seqid from the frame
        t = wire.read_theader(frame)
        self.last_theader = (bytes(frame[4:8]), bytes(frame[12 : t.payload_at]), t)
        return t

    def _header(self, data: bytes | bytearray, pos: int, end: int, protocol: Protocol | None = None) -> MessageHeader:
        """The message header at ``pos`` (in ``protocol``, else the connection's); binary ones
        equal to the last up to the seqid are not read again."""
        if protocol is None:
            protocol = self.protocol
        last = self.last_head
        if last is not None and (protocol is None or protocol is last[3]) and data.startswith(last[0], pos):
            at = pos + len(last[0])
            if at + 4 <= end:
                return MessageHeader(last[1], last[2], wire.I32.unpack_from(data, at)[0], at, 4, last[3], pos, at + 4)
        h = wire.read_message_header(data, pos, end, protocol)
        if h.protocol is not Protocol.COMPACT:  # compact puts the seqid before the name
            self.last_head = (bytes(data[pos : h.seqid_at]), h.name, h.type, h.protocol)
        return h

    def _message(self, frame: bytes | bytearray, info: _Info) -> Message:
        h = info.header
        mtype = _TYPES.get(h.type)
        if mtype is None:
            raise ValueError(f"unknown message type {h.type}")
        if mtype is MessageType.RESPONSE or mtype is MessageType.ERROR:
            # Forwarded by sequence id alone: its metadata is worked out only if asked for.
            return LazyMessage(mtype, frame, _response_metadata, h.seqid, info)
        return Message(mtype, frame, _metadata(info), h.seqid, info)

    def upstream_profile(self) -> Hashable:
        """Upstream connections are kept per transport and protocol."""
        return (self.transport, self.protocol)


_NAMES: dict[tuple[str, int], dict[str, str]] = {}
_NAMES_MAX: Final = 4096


def _metadata(info: _Info) -> dict[str, str]:
    """``method``, ``service``, ``message_type`` (from a cache by name and type), then the
    THeader headers; REPLYs carrying a declared exception get ``status: exception``."""
    h = info.header
    base = _NAMES.get((h.name, h.type))
    if base is None:
        base = {}
        service, sep, method = h.name.rpartition(":")
        base["method"] = method
        if sep:
            base["service"] = service
        base["message_type"] = wire.TYPE_NAMES[h.type]
        if len(_NAMES) >= _NAMES_MAX:
            _NAMES.clear()
        _NAMES[(h.name, h.type)] = base
    t = info.theader
    if t is None:
        md = base.copy()
    else:
        lowered = t.metadata
        if lowered is None:
            lowered = t.metadata = {k.lower(): v for k, v in t.headers.items()}
        md = lowered | base
    if h.type == wire.REPLY and _reply_carries_exception(info):
        md["status"] = "exception"
    return md


def _response_metadata(msg: LazyMessage) -> dict[str, str]:
    """A reply's metadata; its body was not read when it was framed, so it may be malformed."""
    info = msg.opaque
    assert isinstance(info, _Info)  # noqa: S101 - set by _message
    try:
        return _metadata(info)
    except (ValueError, IndexError, struct.error) as exc:
        raise RemoteProtocolError(f"bad Thrift reply: {exc}", ErrorKind.BAD_RESPONSE) from None


def _rebase(h: MessageHeader, base: int) -> None:
    h.start -= base
    h.end -= base
    h.seqid_at -= base


def _reply_carries_exception(info: _Info) -> bool:
    """A REPLY whose result struct's first field is not field 0 (success) carries an exception."""
    p = info.header.end
    payload = info.payload
    if p >= len(payload):
        return False
    if info.protocol is Protocol.COMPACT:
        head = payload[p]
        if head == 0:
            return False
        delta = head >> 4
        if delta:
            return delta != 0
        try:
            fid, _ = wire.read_varint(payload, p + 1, len(payload))
        except NeedMore:
            return False
        return wire.unzigzag(fid) != 0
    if payload[p] == 0 or p + 3 > len(payload):
        return False
    return bool(wire.I16.unpack_from(payload, p + 1)[0] != 0)


def _header_seqid(frame: bytes | bytearray) -> int:
    """A THeader frame's own sequence id (its THeader block is shared between frames)."""
    return int(wire.I32.unpack_from(frame, 8)[0])


def _rewrite(msg: Message, mutation: Mutation | None, seqid: int | None) -> bytes | bytearray:
    info = msg.opaque
    if not isinstance(info, _Info):
        return msg.raw
    new_seq = None if seqid is None or seqid == msg.request_id else seqid
    headers_change = bool(mutation) and info.transport is Transport.HEADER
    if new_seq is None and not headers_change:
        return msg.raw
    h = info.header
    t = info.theader
    if not headers_change and info.protocol is not Protocol.COMPACT and (t is None or not t.transforms):
        # A fixed-width seqid: one copy of the frame, four bytes patched (two places in THeader).
        out = bytearray(msg.raw)
        wire.I32.pack_into(out, (info.payload_at if t is not None else 0) + h.seqid_at, new_seq)
        if t is not None and _header_seqid(msg.raw) == msg.request_id:
            wire.I32.pack_into(out, 8, new_seq)  # Python clients mirror it; node writes 0: keep that
        return out
    payload = info.payload
    if new_seq is not None:
        payload = bytes(payload[: h.seqid_at]) + wire.encode_seqid(info.protocol, new_seq) + bytes(payload[h.seqid_at + h.seqid_len :])
    if info.transport is Transport.UNFRAMED:
        return payload
    if info.transport is Transport.FRAMED:
        body = payload[4:]
        return wire.I32.pack(len(body)) + bytes(body)
    assert t is not None  # noqa: S101
    headers = dict(t.headers)
    if mutation:
        headers.update(mutation)
    header_seq = _header_seqid(msg.raw)
    if new_seq is not None and header_seq == msg.request_id:
        header_seq = new_seq  # Python clients mirror the message seqid; node writes 0: keep that
    wire_payload = wire.transform(bytes(payload), t.transforms) if t.transforms else bytes(payload)
    if not headers_change and not t.transforms:
        raw = msg.raw
        prefix = bytearray(raw[: info.payload_at])
        wire.I32.pack_into(prefix, 8, header_seq)
        wire.I32.pack_into(prefix, 0, len(prefix) - 4 + len(wire_payload))
        return bytes(prefix) + wire_payload
    return wire.build_theader(header_seq, {Protocol.BINARY: wire.PROTOCOL_BINARY, Protocol.COMPACT: wire.PROTOCOL_COMPACT}[info.protocol], headers, wire_payload, t.flags, t.transforms)


class ThriftServerCodec(_ThriftSide, ServerCodec):
    """Client-facing side."""

    def __init__(self, config: ThriftConfig) -> None:
        super().__init__(config, ErrorKind.BAD_REQUEST)

    def decode(self, buffer: ReadBuffer) -> DecodeResult:
        """One CALL or ONEWAY (replies from a client are EVENTs and ignored)."""
        msg = self._decode(buffer)
        if isinstance(msg, Message) and msg.type in (MessageType.RESPONSE, MessageType.ERROR):
            msg.type = MessageType.EVENT
        return msg

    def encode(self, response: Message, mutation: Mutation | None = None, request_id: int | None = None) -> bytes | bytearray:
        """The reply with the client's sequence id (and THeader headers set by ``mutation``)."""
        return _rewrite(response, mutation, request_id)

    def on_error(self, request: Message | None, error: LocalError) -> bytes:
        """A TApplicationException reply in the client's transport and protocol."""
        info = request.opaque if request is not None else None
        if not isinstance(info, _Info):
            return b""
        exc_type = _EXCEPTION_TYPES.get(error.kind, wire.INTERNAL_ERROR)
        body = wire.application_exception(info.protocol, info.header.name, request.request_id or 0, f"metaprotocol: {error.message}", exc_type)  # type: ignore[union-attr]
        if info.transport is Transport.FRAMED:
            return wire.I32.pack(len(body)) + body
        if info.transport is Transport.HEADER:
            t = info.theader
            assert t is not None  # noqa: S101
            pid = wire.PROTOCOL_COMPACT if info.protocol is Protocol.COMPACT else wire.PROTOCOL_BINARY
            return wire.build_theader(_header_seqid(request.raw), pid, {}, body)  # type: ignore[union-attr]
        return body


class ThriftClientCodec(_ThriftSide, ClientCodec):
    """Server-facing side, for connections of one transport and protocol."""

    def __init__(self, config: ThriftConfig, profile: tuple[Transport, Protocol | None] | None) -> None:
        super().__init__(config, ErrorKind.BAD_RESPONSE, profile)

    def decode(self, buffer: ReadBuffer) -> DecodeResult:
        """One REPLY or EXCEPTION (calls from a server are EVENTs)."""
        msg = self._decode(buffer)
        if isinstance(msg, Message) and msg.type in (MessageType.REQUEST, MessageType.ONEWAY):
            msg.type = MessageType.EVENT
        return msg

    def encode(self, request: Message, mutation: Mutation | None = None, request_id: int | None = None) -> bytes | bytearray:
        """The call with the upstream sequence id (and THeader headers set by ``mutation``)."""
        return _rewrite(request, mutation, request_id)

    def can_mutate(self, request: Message) -> bool:
        """Only THeader frames have headers to set."""
        info = request.opaque
        return isinstance(info, _Info) and info.transport is Transport.HEADER


class ThriftCodecFactory(CodecFactory):
    """Entry point ``thrift``: multiplexed by sequence id."""

    name = "thrift"
    aliases = ("aeraki.meta_protocol.codec.thrift",)
    correlation = Correlation.REQUEST_ID
    supports_mutation = True
    max_request_id = 2**31 - 1

    def __init__(self, config: Mapping[str, object] | None = None) -> None:
        super().__init__(config)
        self.settings = ThriftConfig(self.config)

    def server_codec(self) -> ThriftServerCodec:
        """A codec for one client connection."""
        return ThriftServerCodec(self.settings)

    def client_codec(self, profile: Hashable = None) -> ThriftClientCodec:
        """A codec for one server connection of the client's transport and protocol."""
        fixed = profile if isinstance(profile, tuple) and profile and isinstance(profile[0], Transport) else None
        return ThriftClientCodec(self.settings, fixed)

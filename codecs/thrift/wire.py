"""Thrift wire formats: transports (framed, unframed, THeader) and protocols (binary, compact).

Message headers::

    binary strict:     i32 0x8001_00TT | i32 name length | name | i32 seqid
    binary non-strict: i32 name length | name | i8 type | i32 seqid
    compact:           0x82 | (type << 5) | 0x01 | varint seqid | varint name length | name

Transports::

    framed:   i32 length | message
    unframed: message (its end is found by walking the struct that follows the header)
    THeader:  i32 length | 0x0fff | u16 flags | i32 seqid | u16 header words
              | varint protocol id | varint transform count, ids | info headers (type 1 = key/value:
              varint count, varint-length strings) | padding to 4 bytes | message (maybe zlib'ed)

Struct walking (``skip_struct``) steps over fields with lengths and counts, building nothing.
"""

from __future__ import annotations

import enum
import struct
import zlib
from typing import Final

from metaprotocol.spi import ErrorKind, RemoteProtocolError

I16 = struct.Struct(">h")
I32 = struct.Struct(">i")
U16 = struct.Struct(">H")
HEADER_MAGIC: Final = 0x0FFF
THEADER_MIN: Final = 14  # length, magic, flags, seqid, header words
BINARY_VERSION_1: Final = 0x80010000
BINARY_VERSION_MASK: Final = 0xFFFF0000
COMPACT_ID: Final = 0x82
COMPACT_VERSION: Final = 1
PROTOCOL_BINARY: Final = 0
PROTOCOL_COMPACT: Final = 2
INFO_KEYVALUE: Final = 1
TRANSFORM_ZLIB: Final = 1
DEFAULT_MAX_FRAME: Final = 16 * 1024 * 1024
MAX_DEPTH: Final = 64

CALL: Final = 1
REPLY: Final = 2
EXCEPTION: Final = 3
ONEWAY: Final = 4
TYPE_NAMES: Final = {CALL: "call", REPLY: "reply", EXCEPTION: "exception", ONEWAY: "oneway"}

# TApplicationException types.
UNKNOWN: Final = 0
UNKNOWN_METHOD: Final = 1
INTERNAL_ERROR: Final = 6
PROTOCOL_ERROR: Final = 7


class Transport(enum.Enum):
    """How messages are delimited on a connection."""

    FRAMED = "framed"
    UNFRAMED = "unframed"
    HEADER = "header"


class Protocol(enum.Enum):
    """How a message is encoded."""

    BINARY = "binary"
    BINARY_NONSTRICT = "binary-nonstrict"
    COMPACT = "compact"


class NeedMore(Exception):  # noqa: N818 - control flow, not an error
    """The buffer ends inside the message."""


def bad(message: str, kind: ErrorKind) -> RemoteProtocolError:
    """A framing error of the given direction."""
    return RemoteProtocolError(message, kind)


def read_varint(data: bytes | bytearray, pos: int, end: int) -> tuple[int, int]:
    """An unsigned LEB128 varint at ``pos``: (value, offset after)."""
    value = 0
    shift = 0
    while True:
        if pos >= end:
            raise NeedMore
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7
        if shift > 63:  # noqa: PLR2004
            raise ValueError("varint too long")


def write_varint(value: int) -> bytes:
    """An unsigned LEB128 varint."""
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def zigzag32(n: int) -> int:
    """Compact's zigzag encoding of a signed 32-bit int."""
    return ((n << 1) ^ (n >> 31)) & 0xFFFFFFFF


def unzigzag(n: int) -> int:
    """Back from zigzag."""
    return (n >> 1) ^ -(n & 1)


class MessageHeader:
    """What routing needs from a message: name, type, seqid, and where the seqid sits."""

    __slots__ = ("end", "name", "protocol", "seqid", "seqid_at", "seqid_len", "start", "type")

    def __init__(
        self,
        name: str,
        type: int,  # noqa: A002 - Thrift's own word
        seqid: int,
        seqid_at: int,
        seqid_len: int,
        protocol: Protocol,
        start: int,
        end: int,
    ) -> None:
        self.name = name
        self.type = type
        self.seqid = seqid
        self.seqid_at = seqid_at
        self.seqid_len = seqid_len
        self.protocol = protocol
        self.start = start
        self.end = end  # offset after the header (the struct follows)


_VERSION_AND_LENGTH: Final = struct.Struct(">ii")


def read_message_header(data: bytes | bytearray, pos: int, end: int, protocol: Protocol | None) -> MessageHeader:
    """Parse a message header at ``pos`` (detecting the protocol when ``protocol`` is None)."""
    if pos >= end:
        raise NeedMore
    first = data[pos]
    if protocol is Protocol.COMPACT or (protocol is None and first == COMPACT_ID):
        if pos + 2 > end:
            raise NeedMore
        if first != COMPACT_ID or data[pos + 1] & 0x1F != COMPACT_VERSION:
            raise ValueError("bad compact protocol header")
        raw_seq, p = read_varint(data, pos + 2, end)  # writeVarint32(seqid): no zigzag
        seqid_len = p - pos - 2
        n, p = read_varint(data, p, end)
        if p + n > end:
            raise NeedMore
        name = str(data[p : p + n], "utf-8", "replace")
        return MessageHeader(name, data[pos + 1] >> 5, (raw_seq + 2**31) % 2**32 - 2**31, pos + 2, seqid_len, Protocol.COMPACT, pos, p + n)
    if first & 0x80:  # strict binary: a version word (negative as an i32), then the name length
        if pos + 8 > end:
            raise NeedMore
        word, n = _VERSION_AND_LENGTH.unpack_from(data, pos)
        if (word & BINARY_VERSION_MASK) & 0xFFFFFFFF != BINARY_VERSION_1:
            raise ValueError(f"bad binary protocol version 0x{word & 0xFFFFFFFF:08x}")
        n = _declared_size(n, end - pos, "name length")
        p = pos + 8 + n
        if p + 4 > end:
            raise NeedMore
        name = str(data[pos + 8 : p], "utf-8", "replace")
        return MessageHeader(name, word & 0xFF, I32.unpack_from(data, p)[0], p, 4, Protocol.BINARY, pos, p + 4)
    if pos + 4 > end:
        raise NeedMore
    # Non-strict binary: the name length comes first.
    n = I32.unpack_from(data, pos)[0]  # never negative: a first byte >= 0x80 is read as strict
    p = pos + 4 + n
    if p + 5 > end:
        raise NeedMore
    name = str(data[pos + 4 : p], "utf-8", "replace")
    return MessageHeader(name, data[p], I32.unpack_from(data, p + 1)[0], p + 1, 4, Protocol.BINARY_NONSTRICT, pos, p + 5)


_BINARY_FIXED: Final = {2: 1, 3: 1, 4: 8, 6: 2, 8: 4, 10: 8, 16: 16}


def skip_struct(data: bytes | bytearray, pos: int, end: int, protocol: Protocol) -> int:
    """Offset after the struct at ``pos`` (raises NeedMore when it runs past ``end``)."""
    if protocol is Protocol.COMPACT:
        return _skip_compact_struct(data, pos, end, 0)
    return _skip_binary_value(data, pos, end, 12, 0)


def _declared_size(n: int, room: int, what: str) -> int:
    """A length or element count read from the wire: negative is malformed; more than the bytes
    left (every element takes at least one) means the frame is not whole yet."""
    if n < 0:
        raise ValueError(f"negative {what}")
    if n > room:
        raise NeedMore
    return n


def _need(pos: int, end: int) -> None:
    if pos > end:
        raise NeedMore


def _skip_binary_value(data: bytes | bytearray, pos: int, end: int, ttype: int, depth: int) -> int:
    if depth > MAX_DEPTH:
        raise ValueError("nesting too deep")
    fixed = _BINARY_FIXED.get(ttype)
    if fixed is not None:
        pos += fixed
        _need(pos, end)
        return pos
    if ttype == 11:  # noqa: PLR2004 - string/binary
        _need(pos + 4, end)
        n = I32.unpack_from(data, pos)[0]
        if n < 0:
            raise ValueError("negative string length")
        pos += 4 + n
        _need(pos, end)
        return pos
    if ttype == 12:  # noqa: PLR2004 - struct
        while True:
            _need(pos + 1, end)
            ftype = data[pos]
            if ftype == 0:
                return pos + 1
            _need(pos + 3, end)
            pos = _skip_binary_value(data, pos + 3, end, ftype, depth + 1)
    if ttype == 13:  # noqa: PLR2004 - map
        _need(pos + 6, end)
        ktype, vtype = data[pos], data[pos + 1]
        n = _declared_size(I32.unpack_from(data, pos + 2)[0], end - pos, "map size")
        pos += 6
        for _ in range(n):
            pos = _skip_binary_value(data, pos, end, ktype, depth + 1)
            pos = _skip_binary_value(data, pos, end, vtype, depth + 1)
        return pos
    if ttype in (14, 15):  # set, list
        _need(pos + 5, end)
        etype = data[pos]
        n = _declared_size(I32.unpack_from(data, pos + 1)[0], end - pos, "list size")
        pos += 5
        fixed = _BINARY_FIXED.get(etype)
        if fixed is not None:
            pos += fixed * n
            _need(pos, end)
            return pos
        for _ in range(n):
            pos = _skip_binary_value(data, pos, end, etype, depth + 1)
        return pos
    raise ValueError(f"bad binary field type {ttype}")


_COMPACT_FIXED: Final = {1: 0, 2: 0, 3: 1, 7: 8, 13: 16}
_COMPACT_VARINT: Final = frozenset({4, 5, 6})


def _skip_compact_value(data: bytes | bytearray, pos: int, end: int, ctype: int, depth: int, in_collection: bool = False) -> int:
    if depth > MAX_DEPTH:
        raise ValueError("nesting too deep")
    if ctype in (1, 2):  # booleans: in a field header no bytes; in a collection one byte
        if in_collection:
            pos += 1
            _need(pos, end)
        return pos
    fixed = _COMPACT_FIXED.get(ctype)
    if fixed is not None:
        pos += fixed
        _need(pos, end)
        return pos
    if ctype in _COMPACT_VARINT:
        _, pos = read_varint(data, pos, end)
        return pos
    if ctype == 8:  # noqa: PLR2004 - binary
        n, pos = read_varint(data, pos, end)
        pos += n
        _need(pos, end)
        return pos
    if ctype == 12:  # noqa: PLR2004
        return _skip_compact_struct(data, pos, end, depth + 1)
    if ctype in (9, 10):  # list, set
        _need(pos + 1, end)
        head = data[pos]
        pos += 1
        n = head >> 4
        etype = head & 0x0F
        if n == 15:  # noqa: PLR2004
            n, pos = read_varint(data, pos, end)
        if n > end - pos:
            raise NeedMore
        for _ in range(n):
            pos = _skip_compact_value(data, pos, end, etype, depth + 1, True)
        return pos
    if ctype == 11:  # noqa: PLR2004 - map
        n, pos = read_varint(data, pos, end)
        if n == 0:
            return pos
        _need(pos + 1, end)
        kv = data[pos]
        pos += 1
        if n > end - pos:
            raise NeedMore
        for _ in range(n):
            pos = _skip_compact_value(data, pos, end, kv >> 4, depth + 1, True)
            pos = _skip_compact_value(data, pos, end, kv & 0x0F, depth + 1, True)
        return pos
    raise ValueError(f"bad compact field type {ctype}")


def _skip_compact_struct(data: bytes | bytearray, pos: int, end: int, depth: int) -> int:
    if depth > MAX_DEPTH:
        raise ValueError("nesting too deep")
    while True:
        _need(pos + 1, end)
        head = data[pos]
        pos += 1
        if head == 0:
            return pos
        if head >> 4 == 0:  # long form: the field id follows as a zigzag varint
            _, pos = read_varint(data, pos, end)
        pos = _skip_compact_value(data, pos, end, head & 0x0F, depth + 1)


class THeader:
    """A parsed THeader frame prefix. ``seqid`` is that of the frame it was read from: the codec
    shares one THeader between frames whose blocks are equal and reads each frame's own
    sequence id from the frame."""

    __slots__ = ("flags", "headers", "metadata", "payload_at", "protocol_id", "seqid", "transforms")

    def __init__(self) -> None:
        self.flags = 0
        self.seqid = 0
        self.protocol_id = 0
        self.transforms: list[int] = []
        self.headers: dict[str, str] = {}
        self.payload_at = 0
        self.metadata: dict[str, str] | None = None  # headers with lower-case names, made once


def read_theader(frame: bytes | bytearray) -> THeader:
    """Parse a whole THeader frame (length word included)."""
    t = THeader()
    end = len(frame)
    if end < THEADER_MIN:
        raise ValueError(f"THeader frame of {end} bytes is shorter than its fixed header")
    t.flags = U16.unpack_from(frame, 6)[0]
    t.seqid = I32.unpack_from(frame, 8)[0]
    words = U16.unpack_from(frame, 12)[0]
    hend = 14 + words * 4
    if hend > end:
        raise ValueError("THeader header longer than the frame")
    try:
        t.protocol_id, p = read_varint(frame, 14, hend)
        count, p = read_varint(frame, p, hend)
        if count > hend - p:
            raise ValueError("too many transforms")
        for _ in range(count):
            tid, p = read_varint(frame, p, hend)
            t.transforms.append(tid)
        while p < hend:
            info, p = read_varint(frame, p, hend)
            if info == 0:  # padding
                break
            if info != INFO_KEYVALUE:
                break  # unknown info types end the parsable part (as Apache Thrift does)
            n, p = read_varint(frame, p, hend)
            if n > hend - p:
                raise ValueError("too many headers")
            for _ in range(n):
                klen, p = read_varint(frame, p, hend)
                key = bytes(frame[p : p + klen]).decode("utf-8", "replace")
                p += klen
                vlen, p = read_varint(frame, p, hend)
                value = bytes(frame[p : p + vlen]).decode("utf-8", "replace")
                p += vlen
                if p > hend:
                    raise ValueError("THeader header runs past its size")
                t.headers[key] = value
    except NeedMore:
        raise ValueError("THeader header runs past its size") from None
    t.payload_at = hend
    return t


def build_theader(seqid: int, protocol_id: int, headers: dict[str, str], payload: bytes, flags: int = 0, transforms: list[int] | None = None) -> bytes:
    """A whole THeader frame around ``payload`` (already transformed if transforms are named)."""
    h = bytearray(write_varint(protocol_id))
    h += write_varint(len(transforms or []))
    for tid in transforms or []:
        h += write_varint(tid)
    if headers:
        h += write_varint(INFO_KEYVALUE)
        h += write_varint(len(headers))
        for k, v in headers.items():
            kb, vb = k.encode(), v.encode()
            h += write_varint(len(kb)) + kb + write_varint(len(vb)) + vb
    h += b"\x00" * (-len(h) % 4)
    body = U16.pack(HEADER_MAGIC) + U16.pack(flags) + I32.pack(seqid) + U16.pack(len(h) // 4) + bytes(h) + payload
    return I32.pack(len(body)) + body


def untransform(payload: bytes, transforms: list[int], limit: int = DEFAULT_MAX_FRAME) -> bytes:
    """Undo THeader transforms (zlib only; others are refused).

    Each inflation stops at ``limit`` bytes (the frame limit, which the message must obey once
    inflated): a small frame cannot make the proxy allocate more. Raises ValueError for a
    payload that is not zlib, is cut short, or inflates past the limit.
    """
    for tid in reversed(transforms):
        if tid != TRANSFORM_ZLIB:
            raise ValueError(f"unsupported THeader transform {tid}")
        inflater = zlib.decompressobj()
        try:
            out = inflater.decompress(payload, limit + 1)
        except zlib.error as exc:
            raise ValueError(f"bad zlib payload: {exc}") from None
        if len(out) > limit:
            raise ValueError(f"zlib payload inflates past {limit} bytes")
        if not inflater.eof:
            raise ValueError("zlib payload cut short")
        payload = out
    return payload


def transform(payload: bytes, transforms: list[int]) -> bytes:
    """Apply THeader transforms in order."""
    for tid in transforms:
        if tid != TRANSFORM_ZLIB:
            raise ValueError(f"unsupported THeader transform {tid}")
        payload = zlib.compress(payload)
    return payload


def encode_seqid(protocol: Protocol, seqid: int) -> bytes:
    """The bytes of a seqid field in ``protocol``."""
    if protocol is Protocol.COMPACT:
        return write_varint(seqid & 0xFFFFFFFF)
    return I32.pack(seqid)


def application_exception(protocol: Protocol, name: str, seqid: int, message: str, exc_type: int) -> bytes:
    """A whole EXCEPTION message carrying a TApplicationException (no transport framing)."""
    name_b = name.encode()
    msg_b = message.encode()
    if protocol is Protocol.COMPACT:
        head = bytes((COMPACT_ID, (EXCEPTION << 5) | COMPACT_VERSION)) + write_varint(seqid & 0xFFFFFFFF) + write_varint(len(name_b)) + name_b
        # field 1 (delta 1, binary 8): message; field 2 (delta 1, i32 5): type; stop.
        body = b"\x18" + write_varint(len(msg_b)) + msg_b + b"\x15" + write_varint(zigzag32(exc_type)) + b"\x00"
        return head + body
    if protocol is Protocol.BINARY_NONSTRICT:
        head = I32.pack(len(name_b)) + name_b + bytes((EXCEPTION,)) + I32.pack(seqid)
    else:
        head = I32.pack((BINARY_VERSION_1 | EXCEPTION) - 2**32) + I32.pack(len(name_b)) + name_b + I32.pack(seqid)
    body = b"\x0b\x00\x01" + I32.pack(len(msg_b)) + msg_b + b"\x08\x00\x02" + I32.pack(exc_type) + b"\x00"
    return head + body

"""An executable wire spec of Thrift framing and message headers, declared with ``construct``.

Tests build frames with it and check the hand-written decoder, and parse what the codec writes.
"""

from __future__ import annotations

from construct import (
    Byte,
    Bytes,
    Const,
    GreedyBytes,
    Int16ub,
    Int32sb,
    Int32ub,
    PascalString,
    Prefixed,
    PrefixedArray,
    Struct,
    VarInt,
    this,
)

BinaryStrictHeader = Struct(
    "version" / Const(b"\x80\x01"),
    "unused" / Const(b"\x00"),
    "type" / Byte,
    "name" / PascalString(Int32ub, "utf8"),
    "seqid" / Int32sb,
)

CompactHeader = Struct(
    "protocol_id" / Const(b"\x82"),
    "type_and_version" / Byte,  # (type << 5) | 1
    "seqid" / VarInt,  # writeVarint32(seqid): unsigned, no zigzag
    "name" / PascalString(VarInt, "utf8"),
)

Framed = Struct("frame" / Prefixed(Int32ub, GreedyBytes))

KeyValue = Struct("key" / PascalString(VarInt, "utf8"), "value" / PascalString(VarInt, "utf8"))

THeaderFrame = Struct(
    "length" / Int32ub,
    "magic" / Const(b"\x0f\xff"),
    "flags" / Int16ub,
    "seqid" / Int32sb,
    "header_words" / Int16ub,
    "header" / Bytes(this.header_words * 4),
    "payload" / Bytes(this.length - 10 - this.header_words * 4),
)

THeaderInfo = Struct(
    "protocol_id" / VarInt,
    "transforms" / PrefixedArray(VarInt, VarInt),
    "info_type" / Const(1, VarInt),
    "headers" / PrefixedArray(VarInt, KeyValue),
)


def build_theader(seqid: int, protocol_id: int, headers: dict[str, str], payload: bytes) -> bytes:
    """A THeader frame built from the declarations."""
    info = THeaderInfo.build({"protocol_id": protocol_id, "transforms": [], "headers": [{"key": k, "value": v} for k, v in headers.items()]})
    info += b"\x00" * (-len(info) % 4)
    return THeaderFrame.build({"length": 10 + len(info) + len(payload), "flags": 0, "seqid": seqid, "header_words": len(info) // 4, "header": info, "payload": payload})

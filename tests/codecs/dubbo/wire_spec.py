"""An executable wire spec of Dubbo 2 frames, declared with ``construct``.

Slow (tens of microseconds per header) and never on the hot path: tests build frames with it and
check that the hand-written decoder agrees, and parse what our encoder writes to check it back.
Strings are declared in their compact Hessian forms for ASCII text (length = bytes = UTF-16 units).
"""

from __future__ import annotations

from construct import (
    BitsInteger,
    BitStruct,
    Byte,
    Bytes,
    Check,
    Const,
    Flag,
    GreedyRange,
    Int32ub,
    Int64ub,
    PaddedString,
    Select,
    Struct,
    this,
)

Header = Struct(
    "magic" / Const(b"\xda\xbb"),
    "flags" / BitStruct(
        "request" / Flag,
        "two_way" / Flag,
        "event" / Flag,
        "serialization" / BitsInteger(5),
    ),
    "status" / Byte,
    "request_id" / Int64ub,
    "body_length" / Int32ub,
)

Frame = Struct("header" / Header, "body" / Bytes(this.header.body_length))

ShortString = Struct("length" / Byte, Check(this.length < 32), "text" / PaddedString(this.length, "ascii"))
MediumString = Struct(
    "hi" / Byte,
    Check(lambda ctx: 0x30 <= ctx.hi <= 0x33),  # a lambda: chained comparisons of `this` do not compose
    "lo" / Byte,
    "text" / PaddedString((this.hi - 0x30) * 256 + this.lo, "ascii"),
)
String = Select(ShortString, MediumString)

CompactInt = Struct("code" / Byte, Check(lambda ctx: 0x80 <= ctx.code <= 0xBF))  # value = code - 0x90

StringMap = Struct(
    "start" / Const(b"H"),
    "entries" / GreedyRange(Struct("key" / String, "value" / String)),
    "end" / Const(b"Z"),
)

RequestBody = Struct(
    "dubbo_version" / String,
    "path" / String,
    "version" / String,
    "method" / String,
    "param_desc" / String,
    "args" / GreedyRange(CompactInt),
    "attachments" / StringMap,
)


def build_string(text: str) -> dict[str, object]:
    """The construct value of a compact ASCII string."""
    n = len(text)
    if n < 32:  # noqa: PLR2004
        return {"length": n, "text": text}
    return {"hi": 0x30 + (n >> 8), "lo": n & 0xFF, "text": text}


def build_request_frame(request_id: int, two_way: bool, path: str, version: str, method: str, args: list[int], attachments: dict[str, str]) -> bytes:
    """A whole request frame built from the declarations (int arguments, string attachments)."""
    body = RequestBody.build(
        {
            "dubbo_version": build_string("2.0.2"),
            "path": build_string(path),
            "version": build_string(version),
            "method": build_string(method),
            "param_desc": build_string("I" * len(args)),
            "args": [{"code": 0x90 + a} for a in args],
            "attachments": {"entries": [{"key": build_string(k), "value": build_string(v)} for k, v in attachments.items()]},
        }
    )
    header = {
        "flags": {"request": True, "two_way": two_way, "event": False, "serialization": 2},
        "status": 0,
        "request_id": request_id,
        "body_length": len(body),
    }
    return Frame.build({"header": header, "body": body})

"""fastscan.skip_values against the full Hessian reader: same decision, same end, on any bytes.

The Dubbo codec skips arguments with fastscan (one loop, no call per value) and falls back to
hessian2.Hessian2Reader elsewhere; a body must not be valid for one and invalid for the other.
The oracle is ``Hessian2Reader.skip`` (what the reader accepts without building values);
``Hessian2Reader.read`` must agree wherever it accepts (it also checks text and dates, which a
skip does not). Streams come from the encoder (random values, shared and cyclic references,
class and type reuse), from a grammar of the forms the encoder never writes (variable-length
lists, chunked strings and binaries, 'O' and 'M' forms, type references), from the golden
vectors, and from mutations of all of these. Example counts follow the hypothesis profile
(tests/conftest.py: dev, ci, nightly).
"""

from __future__ import annotations

import datetime as dt
import struct
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from metaprotocol_codecs.dubbo.fastscan import skip_values
from metaprotocol_codecs.dubbo.hessian2 import Hessian2Reader, Hessian2Writer, HessianDecodeError
from metaprotocol_codecs.dubbo.hessian2_types import UTC, HessianList, HessianMap, JavaObject, Long
from tests.vectors import load

Outcome = tuple[str, int, int, int] | str


def fast(data: bytes, end: int, count: int) -> Outcome:
    classes: list[int] = []
    types: list[str] = []
    try:
        pos = skip_values(data, 0, end, count, classes, types)
    except HessianDecodeError:
        return "error"
    return ("ok", pos, len(classes), len(types))


def reader(data: bytes, end: int, count: int, method: str = "skip") -> Outcome:
    r = Hessian2Reader(data, 0, end)
    step = getattr(r, method)
    try:
        for _ in range(count):
            step()
    except HessianDecodeError:
        return "error"
    return ("ok", r.pos, len(r.classes), len(r.types))


def check(data: bytes, count: int) -> None:
    """fastscan and the reader agree on ``data``, and on it followed by bytes past ``end``
    (which must never be read)."""
    for buf in (data, data + b"\x52\x00\x00\x34\x41"):
        end = len(data)
        skipped = reader(buf, end, count)
        assert fast(buf, end, count) == skipped, (data.hex(), count)
        read = reader(buf, end, count, "read")
        if read != "error":  # reading checks more (UTF-8 text, date range), never less
            assert read == skipped, (data.hex(), count)


# -- streams from the encoder ---------------------------------------------------------------------

names = st.sampled_from(["a", "x", "é", "\U0001f600", "com.example.A"])
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**31), 2**31 - 1),
    st.integers(-(2**63), 2**63 - 1).map(Long),
    st.floats(allow_nan=False),
    st.text(max_size=40),
    st.binary(max_size=40),
    st.sampled_from([b"b" * 1100, b"c" * 5000, "s" * 1100, "\u00e9" * 300]),  # long and chunked forms
    st.integers(-(2**40), 2**40).map(lambda ms: dt.datetime(1970, 1, 1, tzinfo=UTC) + dt.timedelta(milliseconds=ms)),
)


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(children, max_size=9).map(HessianList),
        st.tuples(st.sampled_from(["[int", "java.util.List", "[\u00e9"]), st.lists(children, max_size=9)).map(lambda t: HessianList(t[1], type=t[0])),
        st.dictionaries(st.one_of(st.text(max_size=6), st.integers(-3, 3)), children, max_size=4).map(HessianMap),
        st.tuples(st.sampled_from(["java.util.HashMap", "M\u00e9"]), st.dictionaries(st.text(max_size=4), children, max_size=3)).map(
            lambda t: HessianMap(t[1], type=t[0])
        ),
        st.tuples(st.sampled_from(["com.example.A", "com.example.B", "C\u00e9"]), st.dictionaries(names, children, max_size=3)).map(
            lambda t: JavaObject(t[0], t[1])
        ),
        # The same container twice: the second is a back-reference ('Q').
        children.filter(lambda v: isinstance(v, list | dict | JavaObject)).map(lambda v: HessianList([v, v])),
    )


values = st.recursive(scalars, _containers, max_leaves=25)


def _with_cycle(value: Any) -> Any:
    """A list or object that holds itself: a back-reference to a container still open."""
    if isinstance(value, list):
        value.append(value)
    elif isinstance(value, JavaObject):
        value.fields["self"] = value
    return value


def encode(seq: list[Any]) -> bytes:
    w = Hessian2Writer()
    for v in seq:
        w.write(v)
    return w.getvalue()


@given(st.lists(values.map(_with_cycle), min_size=1, max_size=4))
def test_encoded_streams_are_skipped_to_their_end(seq: list[Any]) -> None:
    data = encode(seq)
    assert fast(data, len(data), len(seq))[:2] == ("ok", len(data))
    check(data, len(seq))


# -- streams of the forms the encoder never writes --------------------------------------------------


class _Stream:
    """Stream state for the grammar: back-reference targets, class field counts, types."""

    def __init__(self) -> None:
        self.refs = 0
        self.classes: list[int] = []
        self.types = 0


def _string(draw: st.DrawFn, text: str) -> bytes:
    raw = text.encode("utf-8", "surrogatepass")
    units = len(text.encode("utf-16-le", "surrogatepass")) // 2
    if units and len(text) == units and draw(st.booleans()):  # BMP text, chunked: 'R', then 'S'
        cut = draw(st.integers(0, units))
        return b"R" + struct.pack(">H", cut) + text[:cut].encode() + b"S" + struct.pack(">H", units - cut) + text[cut:].encode()
    if units < 32:
        return bytes([units]) + raw
    return b"S" + struct.pack(">H", units) + raw


def _int(value: int) -> bytes:
    w = Hessian2Writer()
    w.write_int(value)
    return w.getvalue()


def _type(draw: st.DrawFn, s: _Stream) -> bytes:
    if s.types and draw(st.booleans()):
        return _int(draw(st.integers(0, s.types - 1)))
    s.types += 1
    return _string(draw, draw(names))


def _value(draw: st.DrawFn, s: _Stream, depth: int) -> bytes:
    kinds = ["scalar", "string", "binary"] + (["vlist", "flist", "map", "object", "classdef", "ref"] if depth < 4 else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "scalar":
        return draw(st.sampled_from([b"N", b"T", b"F", b"\x90", b"\xc8\x01", b"\xd4\x00\x01", b"I\x00\x00\x00\x01", b"\xe0", b"\xf8\x01",
                                     b"\x3c\x00\x01", b"Y\x00\x00\x00\x01", b"L" + bytes(8), b"\x5b", b"\x5d\x01", b"\x5e\x00\x01",
                                     b"\x5f\x00\x00\x00\x01", b"D" + bytes(8), b"J" + bytes(8), b"K" + bytes(4)]))  # fmt: skip
    if kind == "string":
        return _string(draw, draw(st.text(max_size=12)))
    if kind == "binary":
        data = draw(st.binary(max_size=20))
        chunks = draw(st.lists(st.binary(max_size=6), max_size=3))
        tail = bytes([0x20 + len(data)]) + data if len(data) < 16 else bytes([0x34, len(data)]) + data
        return b"".join(b"A" + struct.pack(">H", len(c)) + c for c in chunks) + draw(st.sampled_from([tail, b"B" + struct.pack(">H", len(data)) + data]))
    if kind == "ref":
        if not s.refs:
            return b"N"
        return b"Q" + _int(draw(st.integers(0, s.refs - 1)))
    if kind == "classdef":
        fields = draw(st.lists(names, max_size=3))
        s.classes.append(len(fields))
        body = b"C" + _string(draw, draw(names)) + _int(len(fields)) + b"".join(_string(draw, f) for f in fields)
        return body + _value(draw, s, depth + 1)
    if kind == "object":
        if not s.classes:
            return b"N"
        index = draw(st.integers(0, len(s.classes) - 1))
        head = bytes([0x60 + index]) if index < 16 and draw(st.booleans()) else b"O" + _int(index)
        s.refs += 1
        return head + b"".join(_value(draw, s, depth + 1) for _ in range(s.classes[index]))
    s.refs += 1
    n = draw(st.integers(0, 3))
    if kind == "map":
        head = b"M" + _type(draw, s) if draw(st.booleans()) else b"H"
        return head + b"".join(_value(draw, s, depth + 1) + _value(draw, s, depth + 1) for _ in range(n)) + b"Z"
    typed = draw(st.booleans())
    head = b""
    if kind == "vlist":
        head = b"U" + _type(draw, s) if typed else b"W"
        return head + b"".join(_value(draw, s, depth + 1) for _ in range(n)) + b"Z"
    short = draw(st.booleans())
    if typed:
        head = (bytes([0x70 + n]) + _type(draw, s)) if short else (b"V" + _type(draw, s) + _int(n))
    else:
        head = bytes([0x78 + n]) if short else b"X" + _int(n)
    return head + b"".join(_value(draw, s, depth + 1) for _ in range(n))


@st.composite
def grammar_streams(draw: st.DrawFn) -> tuple[bytes, int]:
    s = _Stream()
    count = draw(st.integers(1, 4))
    return b"".join(_value(draw, s, 0) for _ in range(count)), count


@given(grammar_streams())
def test_grammar_streams_are_skipped_to_their_end(stream: tuple[bytes, int]) -> None:
    data, count = stream
    assert reader(data, len(data), count)[:2] == ("ok", len(data)), data.hex()
    check(data, count)


# -- mutated streams ------------------------------------------------------------------------------

GOLDEN = [bytes.fromhex(v["hex"]) for v in load("hessian2/values.json")] + [bytes.fromhex(v["hex"]) for v in load("hessian2/other_encoders.json")]
CODES = [0x00, 0x05, 0x1F, 0x20, 0x30, 0x33, 0x34, 0x37, 0x38, 0x41, 0x42, 0x43, 0x48, 0x49, 0x4D, 0x4E, 0x4F, 0x51, 0x52, 0x53, 0x55,
         0x56, 0x57, 0x58, 0x5A, 0x60, 0x61, 0x70, 0x71, 0x78, 0x79, 0x7F, 0x80, 0x90, 0xC8, 0xD4, 0xE0, 0xF8, 0xFF, 0xC3, 0xED]  # fmt: skip


@st.composite
def mutated(draw: st.DrawFn) -> tuple[bytes, int]:
    source = draw(st.sampled_from(["encoder", "grammar", "golden"]))
    if source == "encoder":
        seq = draw(st.lists(values, min_size=1, max_size=3))
        data, count = encode(seq), len(seq)
    elif source == "grammar":
        data, count = draw(grammar_streams())
    else:
        data, count = draw(st.sampled_from(GOLDEN)), 1
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "code", "truncate", "insert", "delete"]))
        at = draw(st.integers(0, len(out)))
        if op == "flip" and at < len(out):
            out[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "code" and at < len(out):
            out[at] = draw(st.sampled_from(CODES) | st.integers(0, 255))
        elif op == "truncate":
            del out[at:]
        elif op == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=3) | st.sampled_from(CODES).map(lambda c: bytes([c])))
        elif at < len(out):
            del out[at]
    return bytes(out), count + draw(st.sampled_from([0, 0, 0, -1, 1]))


@given(mutated())
@example((bytes.fromhex("41000034"), 1))  # a truncated medium binary after a chunk
@example((b"\x51\x90", 1))  # a reference to nothing
@example((b"\x48\x90\x5a", 1))  # a map with a key and no value
@example((b"\x57\x43\x01a\x90\x5a", 1))  # a class definition with no value to serve
@example((b"\x72\x01\xc3\x28", 1))  # a type name that is not UTF-8
@example((b"\x57" * 255 + b"\x78" + b"\x5a" * 255, 1))  # an empty list at the depth limit
@example((b"\x57" * 256 + b"\x78" + b"\x5a" * 256, 1))  # and one past it
def test_mutated_streams_get_the_same_decision(stream: tuple[bytes, int]) -> None:
    data, count = stream
    check(data, max(count, 0))

"""Hessian 2.0 serialization: a streaming reader (values, or skips without building them) and a writer.

Wire forms (http://hessian.caucho.com/doc/hessian-serialization.html), by first byte::

    N null   T/F boolean   80-bf,c0-cf,d0-d7,I int   d8-ef,f0-ff,38-3f,Y(59),L long
    5b 5c 5d 5e 5f D double (5f = int32 milliseconds: value = 0.001 * mills)   4a ms, 4b minutes date
    00-1f,30-33,S string; R = non-final chunk      20-2f,34-37,B binary; A = non-final chunk
    U(55) typed variable list .. Z   V typed fixed   W(57) untyped variable .. Z   X(58) untyped fixed
    70-77 typed fixed short   78-7f untyped fixed short   M typed map .. Z   H untyped map .. Z
    C class definition   O, 60-6f object instance   Q(51) back-reference to the n-th list/map/object

String lengths count UTF-16 code units and characters outside the BMP travel as CESU-8 surrogate
pairs (as Java and hessian.js write them); 4-byte UTF-8 from lax encoders is accepted too.
Class definitions, type names and reference numbers are state of the stream: a Dubbo body is one
stream, so a reader (or writer) is used for the whole body.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
import struct
from collections.abc import Callable, Iterable
from typing import Any, Final

from metaprotocol_codecs.dubbo.hessian2_types import (
    HessianList,
    HessianMap,
    JavaObject,
    Long,
    MapKey,
    date_from_ms,
    ms_from_date,
)

MAX_DEPTH: Final = 256
_I16 = struct.Struct(">h")
_U16 = struct.Struct(">H")
_I32 = struct.Struct(">i")
_I64 = struct.Struct(">q")
_F64 = struct.Struct(">d")
_SURROGATE = re.compile("[\ud800-\udfff]")
_ASTRAL = re.compile("[\U00010000-\U0010ffff]")
_STRING_CODES: Final = frozenset([*range(0x00, 0x20), *range(0x30, 0x34), 0x52, 0x53])
_Z: Final = 0x5A


class HessianDecodeError(ValueError):
    """The bytes are not valid Hessian 2.0 (truncated, bad code, absurd length, bad reference)."""


class Hessian2Reader:
    """Reads values from ``data[pos:end]``, keeping the stream's classes, types and references.

    Attributes:
        pos: offset of the next unread byte.
    """

    __slots__ = ("classes", "data", "depth", "end", "pos", "refs", "types")

    def __init__(self, data: bytes | bytearray | memoryview, pos: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end
        self.classes: list[tuple[str, list[str]]] = []
        self.types: list[str] = []
        self.refs: list[Any] = []
        self.depth = 0

    # -- primitives ---------------------------------------------------------------------------

    def _take(self, n: int) -> int:
        pos = self.pos
        if n < 0 or pos + n > self.end:
            raise HessianDecodeError(f"truncated: need {n} bytes at offset {pos}")
        self.pos = pos + n
        return pos

    def _byte(self) -> int:
        pos = self.pos
        if pos >= self.end:
            raise HessianDecodeError(f"truncated at offset {pos}")
        self.pos = pos + 1
        return self.data[pos]

    def at_end(self) -> bool:
        """Whether every byte has been read."""
        return self.pos >= self.end

    def peek(self) -> int:
        """The next code byte, without consuming it."""
        if self.pos >= self.end:
            raise HessianDecodeError(f"truncated at offset {self.pos}")
        return self.data[self.pos]

    # -- values -------------------------------------------------------------------------------

    def read(self) -> Any:
        """The next value."""
        try:
            return _READ[self._byte()](self, self.data[self.pos - 1])
        except RecursionError:  # MAX_DEPTH bounds nesting; a caller's deep stack may not leave room
            raise HessianDecodeError("nesting too deep for the interpreter stack") from None

    def skip(self) -> None:
        """Step over the next value without building it (classes, types and refs still count)."""
        try:
            _SKIP[self._byte()](self, self.data[self.pos - 1])
        except RecursionError:
            raise HessianDecodeError("nesting too deep for the interpreter stack") from None

    def read_string(self) -> str:
        """The next value, which must be a string."""
        code = self._byte()
        if code not in _STRING_CODES:
            raise HessianDecodeError(f"expected a string at offset {self.pos - 1}, got 0x{code:02x}")
        return _read_string(self, code)

    def read_string_or_null(self) -> str | None:
        """The next value, which must be a string or null."""
        if self.peek() == 0x4E:
            self.pos += 1
            return None
        return self.read_string()

    def read_int(self) -> int:
        """The next value, which must be an int."""
        code = self._byte()
        if not (0x80 <= code <= 0xD7 or code == 0x49):
            raise HessianDecodeError(f"expected an int at offset {self.pos - 1}, got 0x{code:02x}")
        return _read_int(self, code)

    def read_type(self) -> str:
        """A list or map type: a type name (remembered) or a reference to an earlier one."""
        code = self._byte()
        if code in _STRING_CODES:
            name = _read_string(self, code)
            self.types.append(name)
            return name
        index = _read_int_value(self, code)
        if not 0 <= index < len(self.types):
            raise HessianDecodeError(f"undefined type reference {index}")
        return self.types[index]

    def _enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise HessianDecodeError(f"nesting deeper than {MAX_DEPTH}")

    def _length(self, n: int) -> int:
        if n < 0 or n > self.end - self.pos:
            raise HessianDecodeError(f"length {n} exceeds the data left")
        return n


Reader = Callable[[Hessian2Reader, int], Any]


def _bad(r: Hessian2Reader, code: int) -> Any:
    raise HessianDecodeError(f"unexpected code 0x{code:02x} at offset {r.pos - 1}")


def _read_int_value(r: Hessian2Reader, code: int) -> int:
    if 0x80 <= code <= 0xD7 or code == 0x49:
        return _read_int(r, code)
    if 0xD8 <= code or 0x38 <= code <= 0x3F or code in (0x59, 0x4C):
        return int(_read_long(r, code))
    raise HessianDecodeError(f"expected an integer at offset {r.pos - 1}, got 0x{code:02x}")


def _read_int(r: Hessian2Reader, code: int) -> int:
    if code == 0x49:  # 'I'
        return int(_I32.unpack_from(r.data, r._take(4))[0])
    if code <= 0xBF:
        return code - 0x90
    if code <= 0xCF:
        return ((code - 0xC8) << 8) + r._byte()
    if code <= 0xD7:
        p = r._take(2)
        return ((code - 0xD4) << 16) + int(_U16.unpack_from(r.data, p)[0])
    raise HessianDecodeError(f"expected an int, got 0x{code:02x}")


def _read_long(r: Hessian2Reader, code: int) -> Long:
    if 0xD8 <= code <= 0xEF:
        return Long(code - 0xE0)
    if code >= 0xF0:
        return Long(((code - 0xF8) << 8) + r._byte())
    if 0x38 <= code <= 0x3F:
        p = r._take(2)
        return Long(((code - 0x3C) << 16) + _U16.unpack_from(r.data, p)[0])
    if code == 0x59:
        return Long(_I32.unpack_from(r.data, r._take(4))[0])
    return Long(_I64.unpack_from(r.data, r._take(8))[0])  # 'L'


def _read_double(r: Hessian2Reader, code: int) -> float:
    if code == 0x5B:
        return 0.0
    if code == 0x5C:
        return 1.0
    if code == 0x5D:
        b = r._byte()
        return float(b - 256 if b > 127 else b)
    if code == 0x5E:
        return float(_I16.unpack_from(r.data, r._take(2))[0])
    if code == 0x5F:
        return 0.001 * int(_I32.unpack_from(r.data, r._take(4))[0])
    return float(_F64.unpack_from(r.data, r._take(8))[0])  # 'D'


def _read_date(r: Hessian2Reader, code: int) -> _dt.datetime:
    if code == 0x4B:
        ms = _I32.unpack_from(r.data, r._take(4))[0] * 60_000
    else:
        ms = _I64.unpack_from(r.data, r._take(8))[0]
    try:
        return date_from_ms(ms)
    except OverflowError:
        raise HessianDecodeError(f"date out of range: {ms} ms") from None


def _utf16_units_span(r: Hessian2Reader, units: int) -> int:
    """Byte length of the next ``units`` UTF-16 code units of (CESU-8 or UTF-8) text."""
    data = r.data
    start = r.pos
    end = start + units
    if end <= r.end and bytes(data[start:end]).isascii():
        return units
    p = start
    limit = r.end
    counted = 0
    while counted < units:
        if p >= limit:
            raise HessianDecodeError("truncated string")
        b = data[p]
        if b < 0x80:
            p += 1
            counted += 1
        elif b < 0xC0:
            raise HessianDecodeError(f"bad UTF-8 lead byte 0x{b:02x} at offset {p}")
        elif b < 0xE0:
            p += 2
            counted += 1
        elif b < 0xF0:
            p += 3
            counted += 1
        else:  # 4-byte UTF-8: one non-BMP character, two UTF-16 units
            p += 4
            counted += 2
    if p > limit:
        raise HessianDecodeError("truncated string")
    return p - start


def _string_chunk(r: Hessian2Reader, units: int) -> str:
    r._length(units)
    span = _utf16_units_span(r, units)
    p = r.pos
    raw = bytes(r.data[p : p + span])
    r.pos = p + span
    if span == units:
        return raw.decode("ascii")
    try:
        text = raw.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError as exc:
        raise HessianDecodeError(f"bad string bytes: {exc.reason}") from None
    if _SURROGATE.search(text):
        text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")
    return text


def _read_string(r: Hessian2Reader, code: int) -> str:
    parts = []
    while True:
        if code <= 0x1F:
            parts.append(_string_chunk(r, code))
            break
        if 0x30 <= code <= 0x33:
            parts.append(_string_chunk(r, ((code - 0x30) << 8) + r._byte()))
            break
        if code not in (0x52, 0x53):
            raise HessianDecodeError(f"expected a string chunk, got 0x{code:02x}")
        units = _U16.unpack_from(r.data, r._take(2))[0]
        parts.append(_string_chunk(r, units))
        if code == 0x53:
            break
        code = r._byte()
    text = parts[0] if len(parts) == 1 else "".join(parts)
    if len(parts) > 1 and _SURROGATE.search(text):  # a pair split across chunks
        text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")
    return text


def _read_binary(r: Hessian2Reader, code: int) -> bytes:
    parts = []
    while True:
        if 0x20 <= code <= 0x2F:
            n = code - 0x20
            final = True
        elif 0x34 <= code <= 0x37:
            n = ((code - 0x34) << 8) + r._byte()
            final = True
        elif code in (0x41, 0x42):
            n = _U16.unpack_from(r.data, r._take(2))[0]
            final = code == 0x42
        else:
            raise HessianDecodeError(f"expected a binary chunk, got 0x{code:02x}")
        p = r._take(n)
        parts.append(bytes(r.data[p : p + n]))
        if final:
            break
        code = r._byte()
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _read_list(r: Hessian2Reader, code: int) -> HessianList:
    r._enter()
    if code == 0x55 or code == 0x56 or 0x70 <= code <= 0x77:
        type_ = r.read_type()
    else:
        type_ = None
    out = HessianList(type=type_)
    r.refs.append(out)
    if code == 0x55 or code == 0x57:  # variable length, up to 'Z'
        while r.peek() != _Z:
            out.append(r.read())
        r.pos += 1
    else:
        if code == 0x56 or code == 0x58:
            n = r._length(_read_int_value(r, r._byte()))
        else:
            n = (code - 0x70) if code <= 0x77 else (code - 0x78)
        read = r.read
        for _ in range(n):
            out.append(read())
    r.depth -= 1
    return out


def _map_key(key: Any) -> Any:
    try:
        hash(key)
    except TypeError:
        return MapKey(key)
    return key


def _read_map(r: Hessian2Reader, code: int) -> HessianMap:
    r._enter()
    out = HessianMap(type=r.read_type() if code == 0x4D else None)
    r.refs.append(out)
    read = r.read
    while r.peek() != _Z:
        key = _map_key(read())
        out[key] = read()
    r.pos += 1
    r.depth -= 1
    return out


def _define_class(r: Hessian2Reader) -> None:
    name = r.read_string()
    n = r._length(_read_int_value(r, r._byte()))
    r.classes.append((name, [r.read_string() for _ in range(n)]))


def _read_class_def(r: Hessian2Reader, code: int) -> Any:
    """A class definition and the value it serves: one nesting level, as definitions can chain."""
    _define_class(r)
    r._enter()
    value = r.read()
    r.depth -= 1
    return value


def _class(r: Hessian2Reader, code: int) -> tuple[str, list[str]]:
    index = (code - 0x60) if code >= 0x60 else _read_int_value(r, r._byte())
    if not 0 <= index < len(r.classes):
        raise HessianDecodeError(f"object of undefined class {index}")
    return r.classes[index]


def _read_object(r: Hessian2Reader, code: int) -> JavaObject:
    name, fields = _class(r, code)
    r._enter()
    obj = JavaObject(name)
    r.refs.append(obj)
    values = obj.fields
    read = r.read
    for f in fields:
        values[f] = read()
    r.depth -= 1
    return obj


def _read_ref(r: Hessian2Reader, code: int) -> Any:
    index = _read_int_value(r, r._byte())
    if not 0 <= index < len(r.refs):
        raise HessianDecodeError(f"reference to undefined value {index}")
    return r.refs[index]


def _table(entries: Iterable[tuple[Iterable[int], Reader]]) -> list[Reader]:
    table: list[Reader] = [_bad] * 256
    for codes, fn in entries:
        for c in codes:
            table[c] = fn
    return table


_READ = _table(
    [
        ([0x4E], lambda r, c: None),
        ([0x54], lambda r, c: True),
        ([0x46], lambda r, c: False),
        ([*range(0x80, 0xD8), 0x49], _read_int),
        ([*range(0xD8, 0x100), *range(0x38, 0x40), 0x59, 0x4C], _read_long),
        ([0x5B, 0x5C, 0x5D, 0x5E, 0x5F, 0x44], _read_double),
        ([0x4A, 0x4B], _read_date),
        ([*range(0x00, 0x20), *range(0x30, 0x34), 0x52, 0x53], _read_string),
        ([*range(0x20, 0x30), *range(0x34, 0x38), 0x41, 0x42], _read_binary),
        ([0x55, 0x56, 0x57, 0x58, *range(0x70, 0x80)], _read_list),
        ([0x4D, 0x48], _read_map),
        ([0x43], _read_class_def),
        ([0x4F, *range(0x60, 0x70)], _read_object),
        ([0x51], _read_ref),
    ]
)

# -- skipping: the same walk, building nothing ---------------------------------------------------


def _skip_fixed(n: int) -> Reader:
    def skip(r: Hessian2Reader, code: int) -> None:
        r._take(n)

    return skip


def _skip_string(r: Hessian2Reader, code: int) -> None:
    while True:
        if code <= 0x1F:
            units = code
        elif 0x30 <= code <= 0x33:
            units = ((code - 0x30) << 8) + r._byte()
        elif code in (0x52, 0x53):
            units = _U16.unpack_from(r.data, r._take(2))[0]
        else:
            raise HessianDecodeError(f"expected a string chunk, got 0x{code:02x}")
        r._length(units)
        r.pos += _utf16_units_span(r, units)
        if code != 0x52:
            return
        code = r._byte()


def _skip_list(r: Hessian2Reader, code: int) -> None:
    r._enter()
    if code == 0x55 or code == 0x56 or 0x70 <= code <= 0x77:
        r.read_type()
    r.refs.append(None)
    if code == 0x55 or code == 0x57:
        while r.peek() != _Z:
            r.skip()
        r.pos += 1
    else:
        if code == 0x56 or code == 0x58:
            n = r._length(_read_int_value(r, r._byte()))
        else:
            n = (code - 0x70) if code <= 0x77 else (code - 0x78)
        for _ in range(n):
            r.skip()
    r.depth -= 1


def _skip_map(r: Hessian2Reader, code: int) -> None:
    r._enter()
    if code == 0x4D:
        r.read_type()
    r.refs.append(None)
    while r.peek() != _Z:
        r.skip()
        r.skip()
    r.pos += 1
    r.depth -= 1


def _skip_class_def(r: Hessian2Reader, code: int) -> None:
    _define_class(r)
    r._enter()
    r.skip()
    r.depth -= 1


def _skip_object(r: Hessian2Reader, code: int) -> None:
    _, fields = _class(r, code)
    r._enter()
    r.refs.append(None)
    for _ in fields:
        r.skip()
    r.depth -= 1


def _skip_ref(r: Hessian2Reader, code: int) -> None:
    index = _read_int_value(r, r._byte())
    if not 0 <= index < len(r.refs):
        raise HessianDecodeError(f"reference to undefined value {index}")


def _skip_nothing(r: Hessian2Reader, code: int) -> None:
    return None


_SKIP = _table(
    [
        ([0x4E, 0x54, 0x46, 0x5B, 0x5C, *range(0x80, 0xC0), *range(0xD8, 0xF0)], _skip_nothing),
        ([*range(0xC0, 0xD0), *range(0xF0, 0x100), 0x5D], _skip_fixed(1)),
        ([*range(0xD0, 0xD8), *range(0x38, 0x40), 0x5E], _skip_fixed(2)),
        ([0x49, 0x59, 0x5F, 0x4B], _skip_fixed(4)),
        ([0x4C, 0x44, 0x4A], _skip_fixed(8)),
        ([*range(0x00, 0x20), *range(0x30, 0x34), 0x52, 0x53], _skip_string),
        ([*range(0x20, 0x30), *range(0x34, 0x38), 0x41, 0x42], lambda r, c: _read_binary(r, c) and None),
        ([0x55, 0x56, 0x57, 0x58, *range(0x70, 0x80)], _skip_list),
        ([0x4D, 0x48], _skip_map),
        ([0x43], _skip_class_def),
        ([0x4F, *range(0x60, 0x70)], _skip_object),
        ([0x51], _skip_ref),
    ]
)


def loads(data: bytes | bytearray | memoryview) -> Any:
    """Decode one value that must span all of ``data``."""
    r = Hessian2Reader(data)
    value = r.read()
    if not r.at_end():
        raise HessianDecodeError(f"{r.end - r.pos} bytes after the value")
    return value


def loads_all(data: bytes | bytearray | memoryview) -> list[Any]:
    """Decode every value of one stream (shared classes, types and references)."""
    r = Hessian2Reader(data)
    out = []
    while not r.at_end():
        out.append(r.read())
    return out


# -- writing ----------------------------------------------------------------------------------


def _java_int(x: float) -> int:
    """Java's ``(int) x``: NaN is 0, out-of-range values saturate, the rest truncate."""
    if math.isnan(x):
        return 0
    if x >= 2**31 - 1:
        return 2**31 - 1
    if x <= -(2**31):
        return -(2**31)
    return int(x)


class Hessian2Writer:
    """Writes values with the choices Java's Hessian2Output and hessian.js make (compact forms).

    ``classes`` and ``types`` continue an existing stream (e.g. the part of a Dubbo body before
    the attachments), so that class and type references stay valid.
    """

    STRING_CHUNK: Final = 0x8000
    BINARY_CHUNK: Final = 4093

    def __init__(
        self,
        classes: Iterable[tuple[str, Iterable[str]]] = (),
        types: Iterable[str] = (),
        ref_count: int = 0,
    ) -> None:
        self.out = bytearray()
        self._classes = {(name, tuple(fields)): i for i, (name, fields) in enumerate(classes)}
        self._types = {name: i for i, name in enumerate(types)}
        self._refs: dict[int, int] = {}
        self._ref_count = ref_count
        self._keep: list[Any] = []

    def getvalue(self) -> bytes:
        """Everything written so far."""
        return bytes(self.out)

    def write(self, value: Any) -> None:  # noqa: C901, PLR0912 - one dispatch on type
        """Append one value."""
        if value is None:
            self.out.append(0x4E)
        elif value is True:
            self.out.append(0x54)
        elif value is False:
            self.out.append(0x46)
        elif isinstance(value, Long):
            self.write_long(int(value))
        elif isinstance(value, int):
            if -(2**31) <= value < 2**31:
                self.write_int(value)
            else:
                self.write_long(value)
        elif isinstance(value, float):
            self.write_double(value)
        elif isinstance(value, str):
            self.write_string(value)
        elif isinstance(value, bytes | bytearray | memoryview):
            self.write_binary(bytes(value))
        elif isinstance(value, _dt.datetime):
            self.write_date(value)
        elif isinstance(value, MapKey):
            self.write(value.value)
        elif isinstance(value, JavaObject):
            self._write_object(value)
        elif isinstance(value, list | tuple):
            self._write_list(value)
        elif isinstance(value, dict):
            self._write_map(value)
        else:
            raise TypeError(f"cannot write {type(value).__name__} as Hessian")

    def write_int(self, v: int) -> None:
        """A 32-bit int in its most compact form."""
        out = self.out
        if -16 <= v <= 47:
            out.append(0x90 + v)
        elif -2048 <= v <= 2047:
            out += bytes((0xC8 + (v >> 8), v & 0xFF))
        elif -262144 <= v <= 262143:
            out += bytes((0xD4 + (v >> 16), (v >> 8) & 0xFF, v & 0xFF))
        else:
            out.append(0x49)
            out += _I32.pack(v)

    def write_long(self, v: int) -> None:
        """A 64-bit long in its most compact form."""
        out = self.out
        if -8 <= v <= 15:
            out.append(0xE0 + v)
        elif -2048 <= v <= 2047:
            out += bytes((0xF8 + (v >> 8), v & 0xFF))
        elif -262144 <= v <= 262143:
            out += bytes((0x3C + (v >> 16), (v >> 8) & 0xFF, v & 0xFF))
        elif -(2**31) <= v < 2**31:
            out.append(0x59)
            out += _I32.pack(v)
        else:
            out.append(0x4C)
            out += _I64.pack(v)

    def write_double(self, v: float) -> None:
        """A double, compact as Java writes it (0x5f only when exact in milliseconds)."""
        out = self.out
        iv = _java_int(v)
        if iv == v:
            if iv == 0:
                out.append(0x5B)
                return
            if iv == 1:
                out.append(0x5C)
                return
            if -0x80 <= iv < 0x80:
                out += bytes((0x5D, iv & 0xFF))
                return
            if -0x8000 <= iv < 0x8000:
                out.append(0x5E)
                out += _I16.pack(iv)
                return
        mills = _java_int(v * 1000)
        if 0.001 * mills == v:
            out.append(0x5F)
            out += _I32.pack(mills)
            return
        out.append(0x44)
        out += _F64.pack(v)

    def write_date(self, value: _dt.datetime) -> None:
        """A date: the minute form when minute-aligned and in range, else milliseconds."""
        ms = ms_from_date(value)
        if ms % 60_000 == 0 and -(2**31) <= ms // 60_000 < 2**31:
            self.out.append(0x4B)
            self.out += _I32.pack(ms // 60_000)
        else:
            self.out.append(0x4A)
            self.out += _I64.pack(ms)

    def write_string(self, s: str) -> None:
        """A string in UTF-16 units and CESU-8, chunked by 0x8000 units."""
        if s.isascii():
            self._string_ascii(s.encode("ascii"))
            return
        # Split characters outside the BMP into surrogate pairs: Java's char sequence.
        units = _ASTRAL.sub(_to_pair, s)
        out = self.out
        pos = 0
        n = len(units)
        while n - pos > self.STRING_CHUNK:
            size = self.STRING_CHUNK
            if "\ud800" <= units[pos + size - 1] <= "\udbff":  # never end on a high surrogate
                size -= 1
            out.append(0x52)
            out += _U16.pack(size)
            out += units[pos : pos + size].encode("utf-8", "surrogatepass")
            pos += size
        self._string_tail(len(units) - pos, units[pos:].encode("utf-8", "surrogatepass"))

    def _string_ascii(self, data: bytes) -> None:
        out = self.out
        pos = 0
        n = len(data)
        while n - pos > self.STRING_CHUNK:
            out.append(0x52)
            out += _U16.pack(self.STRING_CHUNK)
            out += data[pos : pos + self.STRING_CHUNK]
            pos += self.STRING_CHUNK
        self._string_tail(n - pos, data[pos:])

    def _string_tail(self, units: int, data: bytes) -> None:
        out = self.out
        if units <= 31:
            out.append(units)
        elif units <= 1023:
            out += bytes((0x30 + (units >> 8), units & 0xFF))
        else:
            out.append(0x53)
            out += _U16.pack(units)
        out += data

    def write_binary(self, b: bytes) -> None:
        """Binary data: compact up to 1023 bytes, else 4093-byte chunks as hessian.js writes them."""
        out = self.out
        n = len(b)
        pos = 0
        while n - pos > self.BINARY_CHUNK:
            out.append(0x41)
            out += _U16.pack(self.BINARY_CHUNK)
            out += b[pos : pos + self.BINARY_CHUNK]
            pos += self.BINARY_CHUNK
        rest = n - pos
        if rest <= 15:
            out.append(0x20 + rest)
        elif rest <= 1023:
            out += bytes((0x34 + (rest >> 8), rest & 0xFF))
        else:
            out.append(0x42)
            out += _U16.pack(rest)
        out += b[pos:]

    def _ref_or_register(self, value: Any) -> bool:
        """Write a back-reference if ``value`` was written before; else number it."""
        index = self._refs.get(id(value))
        if index is not None:
            self.out.append(0x51)
            self.write_int(index)
            return True
        self._refs[id(value)] = self._ref_count
        self._ref_count += 1
        self._keep.append(value)  # ids stay unique while the writer lives
        return False

    def _write_type(self, name: str) -> None:
        index = self._types.get(name)
        if index is None:
            self._types[name] = len(self._types)
            self.write_string(name)
        else:
            self.write_int(index)

    def _write_list(self, value: list[Any] | tuple[Any, ...]) -> None:
        if self._ref_or_register(value):
            return
        type_ = getattr(value, "type", None)
        n = len(value)
        out = self.out
        if type_ is not None:
            if n <= 7:
                out.append(0x70 + n)
                self._write_type(type_)
            else:
                out.append(0x56)
                self._write_type(type_)
                self.write_int(n)
        elif n <= 7:
            out.append(0x78 + n)
        else:
            out.append(0x58)
            self.write_int(n)
        for item in value:
            self.write(item)

    def _write_map(self, value: dict[Any, Any]) -> None:
        if self._ref_or_register(value):
            return
        type_ = getattr(value, "type", None)
        if type_ is not None:
            self.out.append(0x4D)
            self._write_type(type_)
        else:
            self.out.append(0x48)
        for k, v in value.items():
            self.write(k)
            self.write(v)
        self.out.append(_Z)

    def _write_object(self, obj: JavaObject) -> None:
        if self._ref_or_register(obj):
            return
        key = (obj.class_name, tuple(obj.fields))
        index = self._classes.get(key)
        if index is None:
            index = self._classes[key] = len(self._classes)
            self.out.append(0x43)
            self.write_string(obj.class_name)
            self.write_int(len(key[1]))
            for f in key[1]:
                self.write_string(f)
        if index <= 15:
            self.out.append(0x60 + index)
        else:
            self.out.append(0x4F)
            self.write_int(index)
        for v in obj.fields.values():
            self.write(v)


def _to_pair(m: re.Match[str]) -> str:
    c = ord(m.group()) - 0x10000
    return chr(0xD800 + (c >> 10)) + chr(0xDC00 + (c & 0x3FF))


def dumps(value: Any) -> bytes:
    """Encode one value."""
    w = Hessian2Writer()
    w.write(value)
    return w.getvalue()


__all__ = [
    "Hessian2Reader",
    "Hessian2Writer",
    "HessianDecodeError",
    "dumps",
    "loads",
    "loads_all",
]

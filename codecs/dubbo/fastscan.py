"""The hot path of the Dubbo codec: step over Hessian values and read flat attachment maps fast.

``skip_values`` walks values with one loop, local variables and an explicit stack (no call per
value), tracking only what skipping needs: class field counts, type names and how many values a
back-reference may name. ``read_flat_map``
reads an attachments map whose keys are strings and whose values are strings, numbers, booleans
or null, and returns None for anything else so the caller falls back to the full reader
(hessian2.Hessian2Reader), which handles every form. Both raise HessianDecodeError on bad bytes.
"""

from __future__ import annotations

import struct
from typing import Any, Final

from metaprotocol_codecs.dubbo.hessian2 import (
    MAX_DEPTH,
    Hessian2Reader,
    HessianDecodeError,
    _read_int_value,
    _utf16_units_span,
)
from metaprotocol_codecs.dubbo.hessian2_types import Long

_Z: Final = 0x5A
_VARIABLE: Final = -1
_MAP_KEY: Final = -2
_MAP_VALUE: Final = -3
_FLIP: Final = _MAP_KEY + _MAP_VALUE


def _string_span(data: bytes, pos: int, end: int, units: int) -> int:
    """Bytes taken by ``units`` UTF-16 units of text at ``pos``."""
    stop = pos + units
    if stop <= end and data[pos:stop].isascii():
        return units
    r = Hessian2Reader(data, pos, end)
    return _utf16_units_span(r, units)


def _skip_string(data: bytes, pos: int, end: int, code: int) -> int:
    """Offset after a string whose first code byte (at pos - 1) is ``code``."""
    while True:
        if code < 0x20:
            units = code
        elif 0x30 <= code <= 0x33:
            if pos >= end:
                raise HessianDecodeError("truncated string")
            units = ((code - 0x30) << 8) + data[pos]
            pos += 1
        elif code == 0x52 or code == 0x53:
            if pos + 2 > end:
                raise HessianDecodeError("truncated string")
            units = (data[pos] << 8) | data[pos + 1]
            pos += 2
        else:
            raise HessianDecodeError(f"expected a string, got 0x{code:02x}")
        if units > end - pos:
            raise HessianDecodeError("string length exceeds the data left")
        pos += _string_span(data, pos, end, units)
        if code != 0x52:
            return pos
        if pos >= end:
            raise HessianDecodeError("truncated string")
        code = data[pos]
        pos += 1


def _name_at(data: bytes, pos: int, end: int) -> int:
    """Offset after a class, field or type name at ``pos``: unlike a value, a name is decoded by
    the full reader, so text that is not UTF-8 must fail here too (ASCII compact names inline)."""
    if pos >= end:
        raise HessianDecodeError("truncated name")
    code = data[pos]
    if code < 0x20:
        stop = pos + 1 + code
        if stop <= end and data[pos + 1 : stop].isascii():
            return stop
    elif 0x30 <= code <= 0x33 and pos + 1 < end:  # noqa: PLR2004 - a class name is often 32-1023 long
        stop = pos + 2 + ((code - 0x30) << 8) + data[pos + 1]
        if stop <= end and data[pos + 2 : stop].isascii():
            return stop
    r = Hessian2Reader(data, pos, end)
    r.read_string()
    return r.pos


def _int_at(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """An int (any int or long form) at ``pos``: (value, offset after)."""
    if pos >= end:
        raise HessianDecodeError("truncated int")
    code = data[pos]
    if 0x80 <= code <= 0xBF:  # noqa: PLR2004 - the compact forms inline (a field count, an index)
        return code - 0x90, pos + 1
    if 0xC0 <= code <= 0xCF and pos + 1 < end:  # noqa: PLR2004
        return ((code - 0xC8) << 8) + data[pos + 1], pos + 2
    r = Hessian2Reader(data, pos + 1, end)
    value = _read_int_value(r, code)
    return value, r.pos


def _type_at(data: bytes, pos: int, end: int, types: list[str]) -> int:
    """Offset after a list/map type (a string, remembered, or an int reference)."""
    if pos >= end:
        raise HessianDecodeError("truncated type")
    code = data[pos]
    if code < 0x20 or 0x30 <= code <= 0x33 or code == 0x52 or code == 0x53:
        after = _name_at(data, pos, end)
        types.append("")
        return after
    index, after = _int_at(data, pos, end)
    if not 0 <= index < len(types):
        raise HessianDecodeError(f"undefined type reference {index}")
    return after


def skip_values(
    data: bytes,
    pos: int,
    end: int,
    count: int,
    classes: list[int],
    types: list[str],
    refs: int = 0,
) -> int:
    """Offset after ``count`` values starting at ``pos``.

    Accepts and rejects exactly what ``Hessian2Reader.skip`` does (property-tested), ending at the
    same offset. ``classes`` (field counts) and ``types`` carry the stream's definitions in and
    out; ``refs`` is how many lists, maps and objects the stream started before ``pos``.

    Stack entries and ``remaining`` are values left in the open container: a count, or
    _VARIABLE (a list up to 'Z'), or _MAP_KEY / _MAP_VALUE (a map: 'Z' only in place of a key).
    A class definition is a one-value container holding the value it serves, so it counts one
    nesting level as in the reader. Reads past the data surface as IndexError or struct.error
    and become HessianDecodeError here, instead of a bounds check per byte.
    """
    stack: list[int] = []
    remaining = count
    try:
        while True:
            if remaining == 0:
                if not stack:
                    return pos
                remaining = stack.pop()
                continue
            if pos >= end:
                raise HessianDecodeError(f"truncated at offset {pos}")
            code = data[pos]
            if remaining > 0:
                remaining -= 1
            elif code == _Z:
                if remaining == _MAP_VALUE:
                    raise HessianDecodeError(f"map ends after a key at offset {pos}")
                pos += 1
                remaining = stack.pop()
                continue
            elif remaining != _VARIABLE:
                remaining = _FLIP - remaining  # key <-> value
            pos += 1
            if code >= 0x80:  # ints and longs in compact forms
                if code <= 0xBF or 0xD8 <= code <= 0xEF:
                    continue
                pos += 1 if (code <= 0xCF or code >= 0xF0) else 2
            elif code < 0x20 or 0x30 <= code <= 0x33 or code == 0x52 or code == 0x53:
                pos = _skip_string(data, pos, end, code)
            elif code < 0x30:  # 0x20-0x2f short binary
                pos += code - 0x20
            elif code <= 0x37:  # 0x34-0x37 medium binary
                if pos >= end:
                    raise HessianDecodeError("truncated binary")
                pos += ((code - 0x34) << 8) + data[pos] + 1
            elif code <= 0x3F:  # 3-byte long
                pos += 2
            elif code == 0x4E or code == 0x54 or code == 0x46 or code == 0x5B or code == 0x5C:
                continue
            elif code == 0x49 or code == 0x59 or code == 0x5F or code == 0x4B:
                pos += 4
            elif code == 0x4C or code == 0x44 or code == 0x4A:
                pos += 8
            elif code == 0x5D:
                pos += 1
            elif code == 0x5E:
                pos += 2
            elif code == 0x41 or code == 0x42:  # binary chunks
                pos = _skip_binary_chunks(data, pos, end, code)
            elif 0x60 <= code <= 0x6F or code == 0x4F:  # object instance
                if code == 0x4F:
                    index, pos = _int_at(data, pos, end)
                else:
                    index = code - 0x60
                if not 0 <= index < len(classes):
                    raise HessianDecodeError(f"object of undefined class {index}")
                if len(stack) >= MAX_DEPTH:
                    raise HessianDecodeError(f"nesting deeper than {MAX_DEPTH}")
                refs += 1
                if classes[index]:
                    stack.append(remaining)
                    remaining = classes[index]
            elif code == 0x43:  # class definition, then the value it serves
                pos = _name_at(data, pos, end)
                n, pos = _int_at(data, pos, end)
                if n < 0 or n > end - pos:
                    raise HessianDecodeError("bad field count")
                for _ in range(n):
                    pos = _name_at(data, pos, end)
                classes.append(n)
                if len(stack) >= MAX_DEPTH:
                    raise HessianDecodeError(f"nesting deeper than {MAX_DEPTH}")
                stack.append(remaining)
                remaining = 1
            elif 0x70 <= code <= 0x7F or code == 0x56 or code == 0x58 or code == 0x55 or code == 0x57:
                if len(stack) >= MAX_DEPTH:  # also for an empty list: the reader counts it
                    raise HessianDecodeError(f"nesting deeper than {MAX_DEPTH}")
                if code <= 0x77 and code >= 0x70 or code == 0x56 or code == 0x55:
                    pos = _type_at(data, pos, end, types)
                if code == 0x55 or code == 0x57:
                    n = _VARIABLE
                elif code == 0x56 or code == 0x58:
                    n, pos = _int_at(data, pos, end)
                    if n < 0 or n > end - pos:
                        raise HessianDecodeError("list length exceeds the data left")
                else:
                    n = (code - 0x70) if code <= 0x77 else (code - 0x78)
                refs += 1
                if n:
                    stack.append(remaining)
                    remaining = n
            elif code == 0x48 or code == 0x4D:
                if len(stack) >= MAX_DEPTH:
                    raise HessianDecodeError(f"nesting deeper than {MAX_DEPTH}")
                if code == 0x4D:
                    pos = _type_at(data, pos, end, types)
                refs += 1
                stack.append(remaining)
                remaining = _MAP_KEY
            elif code == 0x51:
                index, pos = _int_at(data, pos, end)
                if not 0 <= index < refs:
                    raise HessianDecodeError(f"reference to undefined value {index}")
            else:
                raise HessianDecodeError(f"unexpected code 0x{code:02x} at offset {pos - 1}")
            if pos > end:
                raise HessianDecodeError("truncated value")
    except (IndexError, struct.error):
        raise HessianDecodeError(f"truncated value near offset {pos}") from None


def _skip_binary_chunks(data: bytes, pos: int, end: int, code: int) -> int:
    """Offset after a binary whose first chunk code ('A' non-final, 'B' final) was at pos - 1."""
    while True:
        if pos + 2 > end:
            raise HessianDecodeError("truncated binary")
        pos += 2 + ((data[pos] << 8) | data[pos + 1])
        if code == 0x42:
            return pos
        if pos >= end:
            raise HessianDecodeError("truncated binary")
        code = data[pos]
        pos += 1
        if code == 0x41 or code == 0x42:
            continue
        if 0x20 <= code <= 0x2F:
            return pos + code - 0x20
        if 0x34 <= code <= 0x37:
            if pos >= end:
                raise HessianDecodeError("truncated binary")
            return pos + ((code - 0x34) << 8) + data[pos] + 1
        raise HessianDecodeError("bad binary chunk")


def read_string_at(data: bytes, pos: int, end: int) -> tuple[str | None, int]:
    """A string (or null) at ``pos``, with the ASCII compact forms inline."""
    if pos >= end:
        raise HessianDecodeError("truncated string")
    code = data[pos]
    if code < 0x20:
        stop = pos + 1 + code
        if stop <= end:
            chunk = data[pos + 1 : stop]
            if chunk.isascii():
                return chunk.decode("ascii"), stop
    elif 0x30 <= code <= 0x33:
        if pos + 1 < end:
            stop = pos + 2 + ((code - 0x30) << 8) + data[pos + 1]
            if stop <= end:
                chunk = data[pos + 2 : stop]
                if chunk.isascii():
                    return chunk.decode("ascii"), stop
    elif code == 0x4E:
        return None, pos + 1
    r = Hessian2Reader(data, pos, end)
    return r.read_string(), r.pos


class FlatMapCache:
    """Parsed flat maps by their exact bytes: a client's attachments repeat call after call.

    Bounded: when full it is cleared (maps with per-call values simply keep missing).
    """

    def __init__(self, size: int = 2048) -> None:
        self.size = size
        self.entries: dict[bytes, tuple[dict[str, Any], dict[str, str]]] = {}

    def get(self, key: bytes) -> tuple[dict[str, Any], dict[str, str]] | None:
        """The map and its string metadata, if these bytes were seen."""
        return self.entries.get(key)

    def put(self, key: bytes, value: tuple[dict[str, Any], dict[str, str]]) -> None:
        """Remember a parsed map."""
        if len(self.entries) >= self.size:
            self.entries.clear()
        self.entries[key] = value


def read_flat_map(data: bytes, pos: int, end: int) -> dict[str, Any] | None:
    """An untyped map of string keys to scalar values at ``pos``; None when it is anything else."""
    if pos >= end or data[pos] != 0x48:
        return None
    pos += 1
    out: dict[str, Any] = {}
    while True:
        if pos >= end:
            raise HessianDecodeError("truncated map")
        code = data[pos]
        if code == _Z:
            return out if pos + 1 == end else None
        if not (code < 0x20 or 0x30 <= code <= 0x33 or code == 0x53):
            return None
        key, pos = read_string_at(data, pos, end)
        if pos >= end:
            raise HessianDecodeError("truncated map")
        code = data[pos]
        if code < 0x20 or 0x30 <= code <= 0x33 or code == 0x53 or code == 0x4E:
            value: Any
            value, pos = read_string_at(data, pos, end)
        elif 0x80 <= code <= 0xBF:
            value = code - 0x90
            pos += 1
        elif 0xC0 <= code <= 0xCF:
            if pos + 2 > end:
                raise HessianDecodeError("truncated int")
            value = ((code - 0xC8) << 8) + data[pos + 1]
            pos += 2
        elif 0xD0 <= code <= 0xD7 or code == 0x49:
            value, pos = _int_at(data, pos, end)
        elif 0xD8 <= code or 0x38 <= code <= 0x3F or code == 0x59 or code == 0x4C:
            value, pos = _int_at(data, pos, end)
            value = Long(value)
        elif code == 0x54 or code == 0x46:
            value = code == 0x54
            pos += 1
        else:
            return None
        out[key] = value  # type: ignore[index]




def plain_flat_map(region: bytes) -> bool:
    """Whether ``region`` is exactly a flat map that read_flat_map reads without falling back
    and without an error: string keys and string values in the compact forms and ASCII, or int,
    long, boolean and null values, then 'Z' as the last byte.

    False says nothing (the caller reads the map as before, which decides: a fallback, an error
    or a map); True vouches that ``read_flat_map(region, 0, len(region))`` returns a map. Only
    the structure is walked: no string is made. String contents are proved ASCII together, by
    one ``isascii`` over the region, on a copy with the bytes >= 0x80 the structure accounts
    for (int codes and payloads, long string lengths) zeroed when there are any.
    """
    end = len(region)
    if end < 2 or region[0] != 0x48 or region[end - 1] != _Z:  # noqa: PLR2004
        return False
    masked: bytearray | None = None  # the region with its structural bytes >= 0x80 zeroed
    pos = 1
    while True:
        code = region[pos]
        if code == _Z:
            if pos != end - 1:
                return False
            return region.isascii() if masked is None else masked.isascii()
        # The key: a compact string (read_flat_map reads an 'S' key too, but not inline).
        if code < 0x20:
            pos += 1 + code
        elif 0x30 <= code <= 0x33 and pos + 1 < end:  # noqa: PLR2004
            size = region[pos + 1]
            if size >= 0x80:  # noqa: PLR2004
                masked = _zeroed(region, masked, pos + 1)
            pos += 2 + ((code - 0x30) << 8) + size
        else:
            return False
        if pos >= end:
            return False
        code = region[pos]
        if code < 0x20:
            pos += 1 + code
        elif 0x30 <= code <= 0x33 and pos + 1 < end:  # noqa: PLR2004
            size = region[pos + 1]
            if size >= 0x80:  # noqa: PLR2004
                masked = _zeroed(region, masked, pos + 1)
            pos += 2 + ((code - 0x30) << 8) + size
        elif code == 0x4E or code == 0x54 or code == 0x46:  # noqa: PLR2004 - null, true, false
            pos += 1
        else:
            if 0x80 <= code <= 0xBF or 0xD8 <= code <= 0xEF:  # noqa: PLR2004 - one-byte int, long
                size = 1
            elif 0xC0 <= code <= 0xCF or 0xF0 <= code:  # noqa: PLR2004
                size = 2
            elif 0xD0 <= code <= 0xD7 or 0x38 <= code <= 0x3F:  # noqa: PLR2004
                size = 3
            elif code == 0x49 or code == 0x59:  # noqa: PLR2004
                size = 5
            elif code == 0x4C:  # noqa: PLR2004
                size = 9
            else:
                return False
            if pos + size >= end:
                return False
            for i in range(pos, pos + size):
                if region[i] >= 0x80:  # noqa: PLR2004
                    masked = _zeroed(region, masked, i)
            pos += size
        if pos >= end:
            return False


def _zeroed(region: bytes, masked: bytearray | None, at: int) -> bytearray:
    """``masked`` (a copy of ``region`` made on first use) with the byte at ``at`` zeroed."""
    if masked is None:
        masked = bytearray(region)
    masked[at] = 0
    return masked

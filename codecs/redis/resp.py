"""RESP2/RESP3 reply framing: find where one reply ends without building Python objects.

Wire forms (https://github.com/redis/redis-specifications/blob/master/protocol/RESP3.md)::

    +simple\r\n   -error\r\n   :int\r\n   _\r\n   ,double\r\n   #t\r\n   (bignum\r\n
    $<len>\r\n<bytes>\r\n      $-1\r\n (null)      =<len>\r\ntxt:<bytes>\r\n   !<len>\r\n<bytes>\r\n
    *<n>\r\n<n values>   ~<n> set   ><n> push   %<n>\r\n<2n values>   |<n>\r\n<2n values><value>
    $?\r\n;<len>\r\n<bytes>\r\n...;0\r\n        *?\r\n<values>.\r\n   (streamed, also ~ % |)

The scanner walks headers with ``bytes.find`` and ``int`` on slices; bulk payloads are skipped by
length, never scanned.
"""

from __future__ import annotations

import re
from typing import Final

from metaprotocol.spi import ErrorKind, RemoteProtocolError
from metaprotocol_codecs.redis.patterns import EXACT_BULK, EXACT_MAX, repeated
from metaprotocol_codecs.redis.requests import decimal_line

INCOMPLETE: Final = -1
CRLF: Final = b"\r\n"

_LINE_TYPES: Final = frozenset(b"+-:_,#(")
_BULK_TYPES: Final = frozenset(b"$=!")
_AGGREGATE_TYPES: Final = frozenset(b"*~>")
_MAP: Final = ord("%")
_ATTRIBUTE: Final = ord("|")
_STREAM_CHUNK: Final = ord(";")
_STREAM_END: Final = ord(".")
_STREAMED: Final = -2
MAX_NESTING: Final = 1024


def _bad(message: str) -> RemoteProtocolError:
    return RemoteProtocolError(message, ErrorKind.BAD_RESPONSE)


def _length(data: bytes | bytearray, start: int, end: int) -> int:
    """Parse the decimal length in data[start:end] (``?`` means streamed)."""
    field = data[start:end]
    if field == b"?":
        return _STREAMED
    try:
        return int(field)
    except ValueError:
        raise _bad(f"invalid length {bytes(field)!r}") from None


def scan_reply(data: bytes | bytearray, pos: int, max_bulk: int = 512 * 1024 * 1024) -> int:
    """End offset of the reply starting at ``pos``, or INCOMPLETE when more bytes are needed.

    ``remaining`` counts the values still expected at the current aggregate level (or is
    _STREAMED for a level closed by ``.``); ``stack`` holds the parents' counts. A finished
    aggregate counts as one value of its parent. An attribute ``|n`` is read as a level of
    ``2n + 1`` values (its entries, then the value it annotates) that counts as one value.

    Raises:
        RemoteProtocolError: the bytes are not RESP.
    """
    n = len(data)
    stack: list[int] = []
    remaining = 1
    while True:
        if pos >= n:
            return INCOMPLETE
        kind = data[pos]
        eol = data.find(CRLF, pos)
        if eol < 0:
            return INCOMPLETE
        if kind in _LINE_TYPES:
            pos = eol + 2
        elif kind in _BULK_TYPES:
            size = _length(data, pos + 1, eol)
            pos = eol + 2
            if size == _STREAMED and kind == ord("$"):
                pos = _skip_string_chunks(data, pos, max_bulk)
                if pos == INCOMPLETE:
                    return INCOMPLETE
            elif size != -1 or kind != ord("$"):
                if size < 0 or size > max_bulk:
                    raise _bad(f"invalid bulk length {size}")
                end = pos + size
                if end + 2 > n:
                    return INCOMPLETE
                if data[end : end + 2] != CRLF:
                    raise _bad("bulk string not terminated by CRLF")
                pos = end + 2
        elif kind in _AGGREGATE_TYPES or kind == _MAP or kind == _ATTRIBUTE:
            count = _length(data, pos + 1, eol)
            pos = eol + 2
            if count == _STREAMED:
                if kind == _ATTRIBUTE:
                    raise _bad("streamed attributes are not RESP3")
                if len(stack) >= MAX_NESTING:
                    raise _bad("aggregate nesting too deep")
                stack.append(remaining)
                remaining = _STREAMED
                continue
            if count < -1:
                raise _bad(f"invalid aggregate length {count}")
            if kind == _MAP:
                count *= 2
            elif kind == _ATTRIBUTE:
                count = count * 2 + 1
            if count > 0:
                if len(stack) >= MAX_NESTING:
                    raise _bad("aggregate nesting too deep")
                stack.append(remaining)
                remaining = count
                continue
            # empty or null aggregate: a complete value
        elif kind == _STREAM_END and remaining == _STREAMED:
            pos = eol + 2
            remaining = stack.pop()
        else:
            raise _bad(f"unexpected byte {bytes([kind])!r} at start of a value")
        # One value is complete at the current level; close every level it completes.
        while remaining != _STREAMED:
            remaining -= 1
            if remaining:
                break
            if not stack:
                return pos
            remaining = stack.pop()


def _skip_string_chunks(data: bytes | bytearray, pos: int, max_bulk: int) -> int:
    """Skip ``;<len>\r\n<bytes>\r\n`` chunks up to ``;0\r\n``."""
    n = len(data)
    while True:
        if pos >= n:
            return INCOMPLETE
        if data[pos] != _STREAM_CHUNK:
            raise _bad("expected ';' in a streamed string")
        eol = data.find(CRLF, pos)
        if eol < 0:
            return INCOMPLETE
        chunk = _length(data, pos + 1, eol)
        pos = eol + 2
        if chunk == 0:
            return pos
        if chunk < 0 or chunk > max_bulk:
            raise _bad("invalid chunk length")
        pos += chunk + 2
        if pos > n:
            return INCOMPLETE


# The regex run framers below serve a buffer that is a bytearray (it held a partial reply);
# on bytes, scan_plain_replies (at the end of this module) frames by declared lengths instead.
#
# Flat replies (bulk strings without a CR, nulls, simple strings, errors, integers) are what a
# pipeline of GETs and SETs gets back. A regex bounded to ``limit`` repetitions finds a run of
# them at C speed; a run counts up to the first reply whose declared length differs from its
# bytes' length, so the result is exactly what scan_reply would find reply by reply.
_FLAT = rb"\$(\d{1,10})\r\n([^\r]*)\r\n|\$-1\r\n|([+\-:])([^\r\n]*)\r\n"
_FLAT_ONE: Final = re.compile(_FLAT)
FLAT_RUN_MAX: Final = 64
"""Replies one regex run takes at most (a compiled pattern per bound, so the bounds are few)."""

# Replies whose bulk strings are at most EXACT_MAX bytes: the lengths are in the pattern (one
# alternative per length), so a match needs no check; the one group marks errors.
_EXACT_FLAT = EXACT_BULK + b"|\\$-1\r\n|(-)[^\r\n]*\r\n|[+:][^\r\n]*\r\n"
_EXACT_FLAT_ONE: Final = re.compile(_EXACT_FLAT)


def scan_flat_replies(data: bytes | bytearray, pos: int, limit: int, max_bulk: int) -> tuple[int, int, int]:
    """(end, replies, errors) for a run of at most ``limit`` (capped at FLAT_RUN_MAX) flat
    replies at ``pos``; (pos, 0, 0) when none is there."""
    bound = min(limit, FLAT_RUN_MAX)
    if max_bulk >= EXACT_MAX:
        exact = repeated(_EXACT_FLAT, bound).match(data, pos)
        if exact is not None:
            end = exact.end()
            marks = _EXACT_FLAT_ONE.findall(data, pos, end)
            return end, len(marks), marks.count(b"-")
    run = repeated(_FLAT, bound).match(data, pos)
    if run is None:
        return pos, 0, 0
    end = run.end()
    errors = 0
    found = _FLAT_ONE.findall(data, pos, end)
    for count, (length, body, kind, _) in enumerate(found):
        if length:
            if int(length) != len(body) or len(body) > max_bulk:
                return pos + sum(_flat_size(r) for r in found[:count]), count, errors
        elif kind == b"-":
            errors += 1
    return end, len(found), errors


def _flat_size(reply: tuple[bytes, bytes, bytes, bytes]) -> int:
    length, body, kind, line = reply
    if length:
        return 5 + len(length) + len(body)
    return 3 + len(line) if kind else 5


def flat_reply_end(data: bytes | bytearray, pos: int, max_bulk: int) -> int:
    """End of the flat reply at ``pos`` (checked as in scan_flat_replies), or -1 when the reply
    there is not flat (or not whole): scan_reply decides then."""
    m = _FLAT_ONE.match(data, pos)
    if m is None:
        return -1
    length = m.group(1)
    if length is not None:
        body = m.group(2)
        if int(length) != len(body) or len(body) > max_bulk:
            return -1
    return m.end()


_DOLLAR: Final = ord("$")
_STAR: Final = ord("*")
_CR: Final = ord("\r")
_LF: Final = ord("\n")
_MINUS: Final = ord("-")
_PLUS: Final = ord("+")
_COLON: Final = ord(":")


def _flat_end(data: bytes, pos: int, n: int, max_bulk: int) -> int:
    """End of the flat reply at ``pos`` (see scan_plain_replies), or -1."""
    if pos >= n:
        return -1
    kind = data[pos]
    if kind == _DOLLAR:
        if pos + 4 < n and data[pos + 1] == _MINUS and data[pos + 2] == 49 and data[pos + 3] == _CR and data[pos + 4] == _LF:  # noqa: PLR2004 - $-1
            return pos + 5
        size, start = decimal_line(data, pos + 1, n)
        if size < 0 or size > max_bulk:
            return -1
        end = start + size
        if end + 2 > n or data[end] != _CR or data[end + 1] != _LF:
            return -1
        return end + 2
    if kind == _PLUS or kind == _MINUS or kind == _COLON:
        q = pos + 1
        while q < n and data[q] != _CR and data[q] != _LF:
            q += 1
        if q + 1 >= n or data[q] != _CR or data[q + 1] != _LF:
            return -1
        return q + 2
    return -1


def scan_plain_replies(data: bytes, pos: int, limit: int, max_bulk: int) -> tuple[int, int, int]:
    """(end, replies, errors) for a run of at most ``limit`` plain replies at ``pos``, framed by
    their declared lengths (a bulk string's bytes are skipped, never scanned); (pos, 0, 0) when
    none is there.

    Plain here: a flat reply (a bulk string whose length is plain digits, ``$-1``, a ``+``/``-``/
    ``:`` line without CR or LF inside) or an array (``*`` and plain digits) of flat replies, as
    MGET gets. The run ends before anything else (RESP3 types, nesting, a malformed or
    incomplete reply), where scan_reply takes over: whatever this frames, scan_reply frames the
    same way."""
    n = len(data)
    count = errors = 0
    while count < limit and pos < n:
        kind = data[pos]
        if kind == _STAR:
            items, end = decimal_line(data, pos + 1, n)
            if items < 0:
                break
            for _ in range(items):
                end = _flat_end(data, end, n, max_bulk)
                if end < 0:
                    break
        else:
            end = _flat_end(data, pos, n, max_bulk)
        if end < 0:
            break
        if kind == _MINUS:
            errors += 1
        pos = end
        count += 1
    return pos, count, errors

"""Request framing: multibulk and inline commands, with Redis's own protocol-error texts."""

from __future__ import annotations

import re
from typing import Final

from metaprotocol.spi import ErrorKind, RemoteProtocolError
from metaprotocol_codecs.redis.commands import KEY_SPECS, SINGLE_KEY
from metaprotocol_codecs.redis.patterns import EXACT_BULK, repeated

MAX_INLINE: Final = 64 * 1024
MAX_MULTIBULK: Final = 1024 * 1024
CRLF: Final = b"\r\n"
_DOLLAR: Final = ord("$")
_STAR: Final = ord("*")
_CR: Final = ord("\r")
_LF: Final = ord("\n")
_NEED: Final = None


def protocol_error(detail: str) -> RemoteProtocolError:
    """A framing error with Redis's wording (``Protocol error: ...``)."""
    return RemoteProtocolError(f"Protocol error: {detail}", ErrorKind.BAD_REQUEST)


def pack(args: list[bytes]) -> bytes:
    """Encode a command as a multibulk request."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        out.append(b"$%d\r\n" % len(a))
        out.append(a)
        out.append(CRLF)
    return b"".join(out)


def frame_multibulk(
    data: bytes | bytearray, pos: int, max_bulk: int
) -> tuple[int, list[int]] | None:
    """Bounds of one multibulk request at ``pos``: (end, [start0, end0, start1, end1, ...]).

    Returns None when more bytes are needed; an empty bound list for ``*0``/``*-1`` (which Redis
    ignores). Raises RemoteProtocolError as Redis would.
    """
    n = len(data)
    eol = data.find(CRLF, pos)
    if eol < 0:
        if n - pos > MAX_INLINE:
            raise protocol_error("too big mbulk count string")
        return _NEED
    try:
        argc = int(data[pos + 1 : eol])
    except ValueError:
        raise protocol_error("invalid multibulk length") from None
    if argc > MAX_MULTIBULK:
        raise protocol_error("invalid multibulk length")
    p = eol + 2
    bounds: list[int] = []
    for _ in range(argc):
        if p >= n:
            return _NEED
        if data[p] != _DOLLAR:
            raise protocol_error(f"expected '$', got '{chr(data[p])}'")
        eol = data.find(CRLF, p)
        if eol < 0:
            if n - p > MAX_INLINE:
                raise protocol_error("too big bulk count string")
            return _NEED
        try:
            size = int(data[p + 1 : eol])
        except ValueError:
            raise protocol_error("invalid bulk length") from None
        if size < 0 or size > max_bulk:
            raise protocol_error("invalid bulk length")
        start = eol + 2
        end = start + size
        if end + 2 > n:
            return _NEED
        if data[end] != _CR or data[end + 1] != _LF:
            raise protocol_error("bulk string not terminated by CRLF")
        bounds += (start, end)
        p = end + 2
    return p, bounds


_NOT_PLAIN: Final = (-1, 0, 0, 0, 0)


def decimal_line(data: bytes, p: int, n: int) -> tuple[int, int]:
    """The plain decimal at ``p`` (1 to 10 ASCII digits) ended by CRLF, and where the bytes after
    the CRLF start; (-1, p) for anything else (a sign, a space, no CRLF yet, too long).

    Compiled, this reads bytes as C integers: no slice, no ``int()``, no regex."""
    value = 0
    q = p
    stop = min(n, p + 11)
    while q < stop:
        c = data[q]
        if c == _CR:
            if q == p or q + 1 >= n or data[q + 1] != _LF:
                return -1, p
            return value, q + 2
        if c < 48 or c > 57:  # noqa: PLR2004 - ASCII '0' and '9'
            return -1, p
        value = value * 10 + c - 48
        q += 1
    return -1, p


def frame_plain(data: bytes, pos: int, max_bulk: int, bounds: list[int] | None = None) -> tuple[int, int, int, int, int]:
    """One whole, well-formed multibulk command of two or more arguments at ``pos``, framed by
    skipping each bulk argument by its declared length (its bytes are never looked at):
    (end, name start, name end, key start, key end); with ``bounds``, every argument's start and
    end are appended to it, as frame_multibulk lists them.

    End is -1 for anything else: incomplete, malformed, a length written other than as plain
    digits, one argument. Then frame_multibulk decides (with Redis's errors); whenever this
    frames a command, frame_multibulk frames it to the same end with the same bounds."""
    n = len(data)
    if pos >= n or data[pos] != _STAR:
        return _NOT_PLAIN
    argc, p = decimal_line(data, pos + 1, n)
    if argc < 2 or argc > MAX_MULTIBULK:  # noqa: PLR2004 - a name and a key at least
        return _NOT_PLAIN
    name_start = name_end = key_start = key_end = 0
    for i in range(argc):
        if p >= n or data[p] != _DOLLAR:
            return _NOT_PLAIN
        size, start = decimal_line(data, p + 1, n)
        if size < 0 or size > max_bulk:
            return _NOT_PLAIN
        end = start + size
        if end + 2 > n or data[end] != _CR or data[end + 1] != _LF:
            return _NOT_PLAIN
        if bounds is not None:
            bounds += (start, end)
        if i == 0:
            name_start, name_end = start, end
        elif i == 1:
            key_start, key_end = start, end
        p = end + 2
    return p, name_start, name_end, key_start, key_end


def frame_inline(data: bytes | bytearray, pos: int) -> tuple[int, list[bytes]] | None:
    """One inline command line at ``pos``: (end, args). None when the line is incomplete."""
    eol = data.find(b"\n", pos)
    if eol < 0:
        if len(data) - pos > MAX_INLINE:
            raise protocol_error("too big inline request")
        return _NEED
    line = bytes(data[pos:eol])
    if line.endswith(b"\r"):
        line = line[:-1]
    return eol + 1, split_inline(line)


_ESCAPES: Final = {ord("n"): b"\n", ord("r"): b"\r", ord("t"): b"\t", ord("b"): b"\b", ord("a"): b"\a"}


def split_inline(line: bytes) -> list[bytes]:
    """Split an inline command as Redis's ``sdssplitargs`` does (quotes and escapes)."""
    if b'"' not in line and b"'" not in line:
        return line.split()
    args: list[bytes] = []
    i = 0
    n = len(line)
    while True:
        while i < n and line[i : i + 1].isspace():
            i += 1
        if i >= n:
            return args
        current = bytearray()
        quote = 0
        while True:
            if quote == ord('"'):
                if i >= n:
                    raise protocol_error("unbalanced quotes in request")
                c = line[i]
                if c == ord("\\") and i + 3 < n and line[i + 1] == ord("x") and _hex2(line, i + 2):
                    current.append(int(line[i + 2 : i + 4], 16))
                    i += 4
                    continue
                if c == ord("\\") and i + 1 < n:
                    current += _ESCAPES.get(line[i + 1], line[i + 1 : i + 2])
                    i += 2
                    continue
                if c == ord('"'):
                    if i + 1 < n and not line[i + 1 : i + 2].isspace():
                        raise protocol_error("unbalanced quotes in request")
                    i += 1
                    break
                current.append(c)
                i += 1
            elif quote == ord("'"):
                if i >= n:
                    raise protocol_error("unbalanced quotes in request")
                c = line[i]
                if c == ord("\\") and i + 1 < n and line[i + 1] == ord("'"):
                    current.append(ord("'"))
                    i += 2
                    continue
                if c == ord("'"):
                    if i + 1 < n and not line[i + 1 : i + 2].isspace():
                        raise protocol_error("unbalanced quotes in request")
                    i += 1
                    break
                current.append(c)
                i += 1
            else:
                if i >= n or line[i : i + 1].isspace():
                    break
                c = line[i]
                if c in (ord('"'), ord("'")):
                    quote = c
                else:
                    current.append(c)
                i += 1
        args.append(bytes(current))


def _hex2(line: bytes, i: int) -> bool:
    return all(chr(c) in "0123456789abcdefABCDEF" for c in line[i : i + 2])


__all__ = ["CRLF", "decimal_line", "frame_inline", "frame_multibulk", "frame_plain", "pack", "protocol_error", "split_inline"]


# The regex run framers below serve a buffer that is a bytearray (it held a partial frame):
# compiled, frame_plain reads only bytes (mypyc compiles bytes indexing to a C read, a union to
# generic calls), and on bytes it is also the cheaper of the two (bench/redis_icount.py).
#
# Short commands (a name, a key, at most one more argument, none holding a CR) are the bulk of
# pipelined traffic. One regex match finds a run of them; another pass lists each one's declared
# lengths and bytes, and a run counts only when every declared length equals its bytes' length:
# then the exact framer would cut the same bytes the same way (the pattern can match a position
# in only one way), so the regex is a fast guess that the check turns into proof.
_SHORT = rb"\*([23])\r\n(\$\d{1,2}\r\n[A-Za-z]{1,32})\r\n\$(\d{1,10})\r\n([^\r]*)\r\n(?:\$(\d{1,10})\r\n([^\r]*)\r\n)?"
_SHORT_ONE: Final = re.compile(_SHORT)
_SHORT_RUN: Final = repeated(_SHORT)

ShortCommand = tuple[bytes, bytes, bytes, bytes, bytes, bytes]
"""argc, name field (``$3\r\nGET``), key length, key, value length (b"" when absent), value."""


def short_commands(data: bytes | bytearray, pos: int) -> tuple[int, list[ShortCommand]]:
    """The run of short commands at ``pos`` as the regex sees them (lengths not yet checked),
    and where it ends."""
    first = _SHORT_ONE.match(data, pos)
    if first is None:
        return pos, []
    end = first.end()
    if end >= len(data) or data[end] != _STAR:  # a lone command (no pipelining): no run to find
        return end, [first.groups(b"")]  # type: ignore[list-item]
    run = _SHORT_RUN.match(data, pos)
    assert run is not None  # noqa: S101 - its first command matched
    end = run.end()
    return end, _SHORT_ONE.findall(data, pos, end)


def short_command_size(c: ShortCommand) -> int:
    """Bytes taken by a short command on the wire."""
    size = 4 + len(c[1]) + 2 + 5 + len(c[2]) + len(c[3])
    return size + 5 + len(c[4]) + len(c[5]) if c[4] else size


def short_command_name(field: bytes) -> bytes | None:
    """The name in a name field (``$3\r\nGET``), or None when its declared length is wrong."""
    length, _, name = field[1:].partition(CRLF)
    return name if int(length) == len(name) else None


# Tighter still: when every argument is at most EXACT_MAX bytes, the lengths themselves can be in
# the pattern (``$6\r\n`` then exactly 6 bytes, one alternative per length) and so can the
# single-key command names; one match then frames and proves a whole run, with no check per
# command in Python. Anything longer goes to the pattern above.
def _exact_pattern() -> bytes:
    by_length: dict[int, list[bytes]] = {}
    for name, spec in KEY_SPECS.items():
        if spec == SINGLE_KEY:
            by_length.setdefault(len(name), []).append(re.escape(name))
    names = b"|".join(b"\\$%d\r\n(?:%s)" % (n, b"|".join(sorted(group))) for n, group in sorted(by_length.items()))
    name = b"(?i:" + names + b")\r\n"
    return b"(?:\\*2\r\n" + name + EXACT_BULK + b"|\\*3\r\n" + name + EXACT_BULK + EXACT_BULK + b")"


_EXACT = _exact_pattern()
_EXACT_ONE: Final = re.compile(_EXACT)
_EXACT_RUN: Final = repeated(_EXACT)


def exact_short_run(data: bytes | bytearray, pos: int) -> tuple[int, list[bytes]]:
    """Where a run of short single-key commands at ``pos`` ends (every length already checked
    by the pattern), and the commands' bytes; (pos, []) when there is none."""
    run = _EXACT_RUN.match(data, pos)
    if run is None:
        return pos, []
    end = run.end()
    return end, _EXACT_ONE.findall(data, pos, end)

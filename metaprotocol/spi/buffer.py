"""The read buffer shared by the IO layer and a codec.

The IO layer owns the buffer and feeds it; a codec only reads from ``data`` starting at ``pos``
and advances ``pos`` past each whole frame it consumes (h2's frame buffer, hiredis' reader).
Compaction happens once per read, never once per frame, so a read holding N frames costs O(bytes)
rather than O(N x bytes).
"""

from __future__ import annotations

from typing import Final

_EMPTY: Final = b""


class ReadBuffer:
    """Bytes received but not yet consumed.

    ``data`` is either the immutable ``bytes`` chunk handed over by the transport (the common case:
    no copy at all) or a ``bytearray`` holding a partial frame plus later chunks.
    """

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes | bytearray = _EMPTY) -> None:
        self.data: bytes | bytearray = data
        self.pos: int = 0

    def feed(self, chunk: bytes | bytearray) -> None:
        """Append ``chunk``, dropping the bytes already consumed."""
        data = self.data
        pos = self.pos
        if pos >= len(data):
            self.data = chunk
        elif isinstance(data, bytearray):
            if pos:
                del data[:pos]
            data += chunk
        else:
            merged = bytearray(memoryview(data)[pos:])
            merged += chunk
            self.data = merged
        self.pos = 0

    def pending(self) -> int:
        """Number of unconsumed bytes."""
        return len(self.data) - self.pos

    def view(self) -> bytes:
        """A copy of the unconsumed bytes (for diagnostics and tests, not the hot path)."""
        return bytes(self.data[self.pos :])

    def clear(self) -> None:
        """Forget everything (used after a fatal decode error)."""
        self.data = _EMPTY
        self.pos = 0

"""memcached text protocol (https://github.com/memcached/memcached/blob/master/doc/protocol.txt).

Requests are one line, plus a data block for storage commands::

    set <key> <flags> <exptime> <bytes> [noreply]\\r\\n<data>\\r\\n
    get <key>*\\r\\n          delete <key> [noreply]\\r\\n        incr <key> <value> [noreply]\\r\\n

Replies are one line (STORED, NOT_FOUND, 42, ERROR, CLIENT_ERROR ..., SERVER_ERROR ...) or, for
retrievals and stats, blocks ending with ``END``. Which one follows is known from the request, and
replies on a connection come in request order: the client codec remembers what it sent.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Mapping, Sequence
from typing import Final

from metaprotocol.spi import (
    NEED_DATA,
    ClientCodec,
    CodecFactory,
    Correlation,
    DecodeResult,
    LocalAnswer,
    LocalError,
    Message,
    MessageType,
    Mutation,
    ReadBuffer,
    RemoteProtocolError,
    ServerCodec,
)

CRLF: Final = b"\r\n"
MAX_LINE: Final = 8192
MAX_VALUE: Final = 1024 * 1024
STORAGE: Final = frozenset({b"set", b"add", b"replace", b"append", b"prepend", b"cas"})
RETRIEVAL: Final = frozenset({b"get", b"gets", b"gat", b"gats"})
ONE_KEY: Final = frozenset({b"delete", b"incr", b"decr", b"touch"})
BLOCK_REPLIES: Final = frozenset({*RETRIEVAL, b"stats"})
LINE: Final = "line"
BLOCK: Final = "block"


def _bad(message: str) -> RemoteProtocolError:
    return RemoteProtocolError(message)


class MemcachedServerCodec(ServerCodec):
    """Client-facing side."""

    def decode(self, buffer: ReadBuffer) -> DecodeResult:
        """One command (with its data block)."""
        data, pos = buffer.data, buffer.pos
        eol = data.find(CRLF, pos)
        if eol < 0:
            if len(data) - pos > MAX_LINE:
                raise _bad("line too long")
            return NEED_DATA
        words = bytes(data[pos:eol]).split()
        end = eol + 2
        if not words:
            raise _bad("empty command")
        cmd = words[0].lower()
        md = {"command": cmd.decode("latin-1")}
        noreply = words[-1] == b"noreply"
        if cmd in STORAGE:
            if len(words) < 5:  # noqa: PLR2004
                raise _bad(f"bad {cmd.decode()} command line")
            try:
                size = int(words[4])
            except ValueError:
                raise _bad("bad data chunk") from None
            if size < 0 or size > MAX_VALUE:
                raise _bad("object too large for cache")
            if len(data) < end + size + 2:
                return NEED_DATA
            if data[end + size : end + size + 2] != CRLF:
                raise _bad("bad data chunk")
            end += size + 2
            md["key"] = words[1].decode("utf-8", "surrogateescape")
        elif cmd in RETRIEVAL:
            keys = words[2:] if cmd in (b"gat", b"gats") else words[1:]
            if not keys:
                raise _bad("ERROR")
            md["key"] = keys[0].decode("utf-8", "surrogateescape")
        elif cmd in ONE_KEY and len(words) > 1:
            md["key"] = words[1].decode("utf-8", "surrogateescape")
        buffer.pos = end
        msg = Message(MessageType.ONEWAY if noreply else MessageType.REQUEST, data[pos:end], md, opaque=words)
        if cmd in (b"get", b"gets") and len(words) > 2:  # noqa: PLR2004 - multi-get: split per key
            msg.parts = [
                Message(MessageType.REQUEST, cmd + b" " + k + CRLF, {"command": md["command"], "key": k.decode("utf-8", "surrogateescape")}, opaque=[cmd, k])
                for k in words[1:]
            ]
        return msg

    def encode(self, response: Message, mutation: Mutation | None = None, request_id: int | None = None) -> bytes | bytearray:
        """Replies pass through unchanged."""
        return response.raw

    def on_error(self, request: Message | None, error: LocalError) -> bytes:
        """``SERVER_ERROR <reason>`` (``CLIENT_ERROR`` for a bad request, as memcached says)."""
        text = error.message.replace("\r", " ").replace("\n", " ")
        kind = "CLIENT_ERROR" if error.kind.value == "bad_request" else "SERVER_ERROR"
        return f"{kind} {text}\r\n".encode()

    def answer_locally(self, request: Message) -> LocalAnswer | None:
        """``quit`` closes the connection; ``version`` is answered by the proxy."""
        cmd = request.metadata["command"]
        if cmd == "quit":
            return LocalAnswer(b"", close=True)
        if cmd == "version":
            return LocalAnswer(b"VERSION metaprotocol-memcached 0.1.0\r\n")
        return None

    def merge(self, request: Message, replies: Sequence[Message]) -> bytes:
        """Multi-get: the VALUE blocks of each part in key order, then one END."""
        body = b"".join(bytes(r.raw)[: -len(b"END\r\n")] for r in replies if bytes(r.raw).endswith(b"END\r\n"))
        errors = [r for r in replies if not bytes(r.raw).endswith(b"END\r\n")]
        return bytes(errors[0].raw) if errors else body + b"END\r\n"


class MemcachedClientCodec(ClientCodec):
    """Server-facing side: frames each reply by the command it answers."""

    def __init__(self) -> None:
        self.expect: deque[str] = deque()

    def encode(self, request: Message, mutation: Mutation | None = None, request_id: int | None = None) -> bytes | bytearray:
        """Commands pass through; the expected reply shape is remembered (none for noreply)."""
        if request.type is not MessageType.ONEWAY:
            words = request.opaque
            cmd = words[0].lower() if isinstance(words, list) and words else b""
            self.expect.append(BLOCK if cmd in BLOCK_REPLIES else LINE)
        return request.raw

    def decode(self, buffer: ReadBuffer) -> DecodeResult:
        """One reply: a line, or a block ending with END (an error line ends a block early)."""
        data, pos = buffer.data, buffer.pos
        shape = self.expect[0] if self.expect else LINE
        p = pos
        while True:
            eol = data.find(CRLF, p)
            if eol < 0:
                if len(data) - pos > MAX_VALUE + MAX_LINE:
                    raise RemoteProtocolError("reply too large")
                return NEED_DATA
            line = bytes(data[p:eol])
            nxt = eol + 2
            if shape == LINE or line == b"END" or line.startswith((b"ERROR", b"CLIENT_ERROR", b"SERVER_ERROR")):
                end = nxt
                break
            if line.startswith(b"VALUE "):
                parts = line.split()
                try:
                    size = int(parts[3])
                except (IndexError, ValueError):
                    raise RemoteProtocolError("bad VALUE line") from None
                if not 0 <= size <= MAX_VALUE:  # a negative size would step back: an endless scan
                    raise RemoteProtocolError(f"bad VALUE length {size}")
                if len(data) < nxt + size + 2:
                    return NEED_DATA
                if data[nxt + size : nxt + size + 2] != CRLF:
                    raise RemoteProtocolError("VALUE data block not ended by CRLF")
                p = nxt + size + 2
            else:  # STAT lines and the like
                p = nxt
        buffer.pos = end
        if self.expect:
            self.expect.popleft()
        error = line.startswith((b"ERROR", b"CLIENT_ERROR", b"SERVER_ERROR"))
        return Message(MessageType.ERROR if error else MessageType.RESPONSE, data[pos:end])


class MemcachedCodecFactory(CodecFactory):
    """Entry point ``memcached``: pipelined, replies in request order."""

    name = "memcached"
    correlation = Correlation.ORDERED
    default_hash_policy = ("key",)

    def __init__(self, config: Mapping[str, object] | None = None) -> None:
        super().__init__(config)

    def server_codec(self) -> MemcachedServerCodec:
        """A codec for one client connection."""
        return MemcachedServerCodec()

    def client_codec(self, profile: Hashable = None) -> MemcachedClientCodec:
        """A codec for one memcached connection."""
        return MemcachedClientCodec()

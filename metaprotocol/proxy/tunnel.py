"""Bound mode: one client, one dedicated upstream connection, bytes passed through.

The first routed request picks the endpoint; the codec's handshake runs on the new connection and
its replies are consumed; from then on client and server talk through the proxy unparsed, so
connection-level protocol state (transactions, subscriptions, blocking calls) behaves exactly as
on a direct connection. Closing either side closes the other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from metaprotocol.spi import NEED_DATA, ClientCodec, MessageType, ReadBuffer, RemoteProtocolError

if TYPE_CHECKING:
    from metaprotocol.proxy.session import DownstreamSession


class Tunnel:
    """The upstream side of a bound session (an asyncio protocol by duck typing)."""

    def __init__(self, session: DownstreamSession, codec: ClientCodec, name: str) -> None:
        self.session = session
        self.codec = codec
        self.name = name
        self.transport: object = None
        self.pending: list[bytes] = []  # client bytes waiting for the connection
        self.handshake_left = 0
        self.buffer = ReadBuffer()
        self.closed = False

    def forward(self, data: bytes | bytearray) -> None:
        """Client bytes to the server."""
        if self.closed:
            return
        if self.transport is None:
            self.pending.append(bytes(data))
        else:
            self.transport.write(data)  # type: ignore[attr-defined]

    def connection_made(self, transport: object) -> None:
        """Handshake first, then what the client sent meanwhile."""
        self.transport = transport
        handshake = self.codec.handshake()
        self.handshake_left = len(handshake)
        transport.writelines([*handshake, *self.pending])  # type: ignore[attr-defined]
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        """Server bytes to the client, after the handshake's replies."""
        if self.handshake_left:
            self.buffer.feed(data)
            try:
                while self.handshake_left and (msg := self.codec.decode(self.buffer)) is not NEED_DATA:
                    self.handshake_left -= 1
                    if msg.type is MessageType.ERROR:  # type: ignore[union-attr]
                        self.session.ctx.io.report("upstream_handshake_failed", f"{self.name}: {bytes(msg.raw)[:200]!r}")  # type: ignore[union-attr]
                        self._close_both()
                        return
            except RemoteProtocolError:
                self._close_both()
                return
            if self.handshake_left:
                return
            data = bytes(self.buffer.data[self.buffer.pos :])
            self.buffer.clear()
            if not data:
                return
        self.session.tunnel_reply(data)

    def eof_received(self) -> bool:
        """The server closed its side."""
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        """The server is gone: so is the client's connection."""
        if not self.closed:
            self.closed = True
            self.session.tunnel_closed()

    def connect_failed(self, exc: BaseException) -> None:
        """Could not connect: the client's connection closes."""
        self.session.ctx.io.report("upstream_connect_failed", f"{self.name}: {exc!r}")
        self.connection_lost(None)

    def pause_writing(self) -> None:
        """The server is slow to read: stop reading the client."""
        self.session.pause_for_tunnel(True)

    def resume_writing(self) -> None:
        """See ``pause_writing``."""
        self.session.pause_for_tunnel(False)

    def close(self) -> None:
        """The client went away."""
        self.closed = True
        if self.transport is not None:
            self.transport.close()  # type: ignore[attr-defined]

    def _close_both(self) -> None:
        self.close()
        self.session.tunnel_closed()

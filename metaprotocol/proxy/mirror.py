"""The owner of a mirrored copy: it waits for the copy's outcome and drops it.

A mirrored request is sent like any other (same pools, deadlines, accounting), so it needs an
owner to report to; this one never reaches the client, whatever happens to the copy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from metaprotocol.proxy.context import Pending

if TYPE_CHECKING:
    from metaprotocol.proxy.context import ListenerContext, ProfileSource, Requester
    from metaprotocol.spi import ErrorKind, Message


class MirrorSink:
    """Receives the replies and failures of copies made for one client's request."""

    __slots__ = ("closed", "codec", "ctx")

    def __init__(self, origin: Requester) -> None:
        self.ctx: ListenerContext = origin.ctx
        self.codec: ProfileSource = origin.codec  # the copy needs the connection kind of its original
        self.closed = False

    def pending(self, msg: Message, now: float) -> Pending:
        """A copy of ``msg`` in flight, reporting here."""
        return Pending(self, msg, now)

    def complete(self, p: Pending, response: Message) -> None:
        """A mirror's reply: read and discarded."""
        p.done = True

    def fail(self, p: Pending, kind: ErrorKind, message: str) -> None:
        """A mirror's failure never reaches the client."""
        p.done = True

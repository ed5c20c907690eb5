"""One upstream connection: requests encoded onto it, responses matched back to their requests.

Correlation modes (declared by the codec factory):

* REQUEST_ID: many clients' requests share a few connections per endpoint; each request gets a
  fresh upstream id (so ids of different clients never collide) and its response is found by id.
* ORDERED: requests are pipelined on a shared connection; the n-th response answers the n-th
  request. A request that times out closes its connection (a lost reply would misalign every
  reply after it); the requests behind it get an error reply at once.
* EXCLUSIVE: one request at a time per connection; extra requests wait in the pool for an idle
  connection.

Every request that leaves the connection (answered, failed, abandoned) is handed back to its pool
(``EndpointPool.release``), the one owner of the cluster's in-flight counts.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from metaprotocol.spi import (
    NEED_DATA,
    ClientCodec,
    Correlation,
    ErrorKind,
    Message,
    MessageType,
    MetaProtocolError,
    ReadBuffer,
    RemoteProtocolError,
)
from metaprotocol.spi.codec import Mutation

if TYPE_CHECKING:
    from metaprotocol.proxy.context import Pending
    from metaprotocol.proxy.pool import EndpointPool


class UpstreamConnection:
    """One connection to one endpoint (an asyncio protocol by duck typing)."""

    def __init__(self, pool: EndpointPool) -> None:
        self.pool = pool
        self.codec = pool.ctx.factory.client_codec(pool.profile)
        self.buffer = ReadBuffer()
        self.transport: object = None
        self.connected = False
        self.closed = False
        self.fifo: deque[Pending | None] = deque()
        self.inflight: dict[int, Pending] = {}
        self.next_id = 1
        self.max_id = pool.ctx.factory.max_request_id
        self.out: list[bytes | bytearray] = []
        self.flush_scheduled = False
        self.timeouts = 0  # requests timed out in a row with no reply in between

    @property
    def outstanding(self) -> int:
        """Requests awaiting a response on this connection."""
        return len(self.fifo) + len(self.inflight)

    def send(self, p: Pending, msg: Message, mutation: Mutation | None, oneway: bool) -> None:
        """Encode ``msg`` for this connection and queue it; ``p`` awaits the response."""
        pool = self.pool
        if mutation and not self.codec.can_mutate(msg):
            pool.ctx.stats.mutations_dropped += 1
            mutation = None
        if pool.correlation is Correlation.REQUEST_ID:
            rid = self.next_id  # _allocate_id's common case, inline: the next id is free
            if rid in self.inflight or rid >= self.max_id:
                rid = self._allocate_id()
            else:
                self.next_id = rid + 1
            data = self.codec.encode(msg, mutation, rid)
            if not oneway:
                self.inflight[rid] = p
                p.upstream_id = rid
        else:
            data = self.codec.encode(msg, mutation, None)
            if not oneway:
                self.fifo.append(p)
        p.upstream = self
        pool.stats.requests += 1
        self.out.append(data)
        if self.connected:
            self._flush_soon()

    def _flush_soon(self) -> None:
        """Write what is queued at the end of this event-loop pass (once per pass)."""
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.pool.io.schedule_flush(self)

    def _allocate_id(self) -> int:
        rid = self.next_id
        inflight = self.inflight
        while rid in inflight:
            rid = rid + 1 if rid < self.max_id else 1
        self.next_id = rid + 1 if rid < self.max_id else 1
        return rid

    def flush(self) -> None:
        """Write every queued request in one call."""
        self.flush_scheduled = False
        out = self.out
        transport = self.transport
        if out and self.connected and not self.closed:
            if len(out) == 1:
                transport.write(out[0])  # type: ignore[attr-defined]
            else:
                transport.writelines(out)  # type: ignore[attr-defined]
            out.clear()

    # -- asyncio protocol callbacks -----------------------------------------------------------

    def connection_made(self, transport: object) -> None:
        """Send the codec's handshake, then whatever queued while connecting."""
        self.transport = transport
        if self.closed:  # given up while connecting (its requests timed out): not wanted now
            transport.close()  # type: ignore[attr-defined]
            return
        self.connected = True
        pool = self.pool
        pool.failures = 0
        pool.stats.cx_active += 1
        handshake = self.codec.handshake()
        if handshake:
            self.fifo.extendleft([None] * len(handshake))
            self.out[0:0] = handshake
        self.flush()

    def data_received(self, data: bytes) -> None:
        """Match every whole response to its request; a codec failure closes this connection
        only, never the event loop."""
        self.timeouts = 0  # the server is alive
        try:
            self._receive(data)
            if self.pool.draining:
                self.retire_if_idle()
        except MetaProtocolError as exc:  # a late documented error (e.g. from request_id_of)
            self.pool.stats.response_decoding_errors += 1
            self._abort(ErrorKind.BAD_RESPONSE, f"malformed response: {exc}")
        except Exception as exc:  # noqa: BLE001 - defence in depth at the codec boundary
            self._codec_bug(exc)

    def retire_if_idle(self) -> None:
        """Close a connection of a draining pool once nothing waits on it (``_abort`` with
        nobody left to fail)."""
        if self.pool.draining and not self.outstanding:
            self._abort(ErrorKind.UPSTREAM_RESET, "retired after a cluster update")

    def _codec_bug(self, exc: Exception) -> None:
        """The client codec raised something it does not document: count it, log it with its
        traceback, fail this connection's requests with an error reply and close it."""
        pool = self.pool
        pool.ctx.stats.codec_internal_errors += 1
        pool.io.report("codec_internal_error", f"{pool.name} ({pool.ctx.factory.name} client): {type(exc).__name__}: {exc}", exc)
        self._abort(ErrorKind.BAD_RESPONSE, "malformed response (internal error)")

    def _receive(self, data: bytes) -> None:
        buffer = self.buffer
        buffer.feed(data)
        codec = self.codec
        pool = self.pool
        stats = pool.stats
        inflight = self.inflight
        fifo = self.fifo
        by_id = pool.correlation is Correlation.REQUEST_ID
        detect = pool.cluster.config.outlier_detection is not None
        plain_ids = type(codec).request_id_of is ClientCodec.request_id_of  # the id is msg.request_id
        while buffer.pos < len(buffer.data):
            try:
                if not by_id and fifo and fifo[0] is not None and fifo[0].count > 1 and self._gather(fifo[0]):
                    continue
                msg = codec.decode(buffer)
            except RemoteProtocolError as exc:
                stats.response_decoding_errors += 1
                if exc.skipped and self._drop_bad_reply(exc, by_id):
                    continue
                self._abort(ErrorKind.BAD_RESPONSE, f"malformed response: {exc}")
                return
            if msg is NEED_DATA:
                return
            assert isinstance(msg, Message)  # noqa: S101 - narrows the sentinel
            mtype = msg.type
            if mtype is MessageType.EVENT or mtype is MessageType.HEARTBEAT:
                self._unsolicited(msg)
                continue
            stats.responses += 1
            if by_id:
                p = inflight.pop((msg.request_id if plain_ids else codec.request_id_of(msg)) or 0, None)
                if p is None:
                    stats.unsolicited += 1
                    continue
            else:
                if not fifo:
                    stats.unsolicited += 1
                    self._abort(ErrorKind.BAD_RESPONSE, "response to no request")
                    return
                p = fifo.popleft()
                if p is None:  # the reply to a handshake request
                    if mtype is MessageType.ERROR:
                        pool.io.report("upstream_handshake_failed", f"{pool.name}: {msg.raw!r}")
                        self._abort(ErrorKind.CONNECT_FAILURE, "upstream handshake failed")
                        return
                    continue
            pool.release(self, p)
            if detect:
                pool.upstreams.outcome(pool, mtype is not MessageType.ERROR)
            if not p.done:
                p.session.complete(p, msg)
            else:
                p.session.ctx.stats.late_responses += 1

    def _drop_bad_reply(self, exc: RemoteProtocolError, by_id: bool) -> bool:
        """A malformed reply the codec stepped over whole: fail only the request it answers and
        keep the connection. False when that request cannot be told (the connection must go)."""
        if by_id:
            request = exc.request
            rid = request.request_id if isinstance(request, Message) else None
            if rid is None:
                return False
            p = self.inflight.pop(rid, None)
            if p is None:  # it answers nothing we wait for (a late reply): just skipped
                self.pool.stats.unsolicited += 1
                return True
        else:
            fifo = self.fifo
            if not fifo or fifo[0] is None or fifo[0].count > 1:
                return False  # a handshake reply or part of a forwarded pipeline
            head = fifo.popleft()
            assert head is not None  # noqa: S101 - checked above
            p = head
        pool = self.pool
        pool.release(self, p)
        pool.stats.errors[ErrorKind.BAD_RESPONSE.value] += 1
        pool.upstreams.outcome(pool, False)
        if not p.done:
            p.session.fail(p, ErrorKind.BAD_RESPONSE, f"malformed response: {exc}")
        return True

    def _unsolicited(self, msg: Message) -> None:
        """A server event or heartbeat: counted, and answered when the codec says so."""
        self.pool.stats.unsolicited += 1
        answer = self.codec.answer_event(msg)
        if answer:
            self.out.append(answer)
            self._flush_soon()

    def _gather(self, p: Pending) -> bool:
        """Take the replies to the forwarded pipeline ``p`` that are here, in one slice; complete
        it with the last. False when none could be taken (incomplete, or an event first)."""
        buffer = self.buffer
        start = buffer.pos
        taken, errors = self.codec.frame_replies(buffer, p.batch_left)
        if not taken:
            return False
        pool = self.pool
        pool.stats.responses += taken
        if pool.cluster.config.outlier_detection is not None:
            for _ in range(errors):
                pool.upstreams.outcome(pool, False)
            if taken > errors:
                pool.upstreams.outcome(pool, True)
        chunk = buffer.data[start : buffer.pos]
        replies = p.batch_replies
        if replies is None:
            replies = p.batch_replies = []
        replies.append(chunk)
        p.batch_left -= taken
        if p.batch_left:
            return True
        self.fifo.popleft()
        pool.release(self, p)
        if p.done:
            p.session.ctx.stats.late_responses += 1
        else:
            p.session.complete(p, Message(MessageType.RESPONSE, b"".join(replies), {}))
        return True

    def eof_received(self) -> bool:
        """The upstream closed its side: treat as a reset."""
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        """Fail every request still waiting on this connection."""
        if self.closed:
            return
        self.closed = True
        pool = self.pool
        if self.connected:
            pool.stats.cx_active -= 1
        if self.outstanding:
            pool.stats.cx_destroy_with_active_rq += 1
        # Leave the pool before failing the waiters: a retry must not land on this connection.
        pool.remove(self)
        self._fail_all(ErrorKind.UPSTREAM_RESET, f"upstream {pool.endpoint_key} closed the connection")

    def pause_writing(self) -> None:
        """Upstream is slow to read; its requests simply queue in the transport."""

    def resume_writing(self) -> None:
        """See ``pause_writing``."""

    def connect_failed(self, exc: BaseException) -> None:
        """The IO layer could not connect: fail the queued requests and back off the endpoint."""
        if self.closed:
            return
        self.closed = True
        pool = self.pool
        pool.stats.cx_connect_fail += 1
        pool.io.report("upstream_connect_failed", f"{pool.name}: {exc!r}")
        # Leave the pool and mark the endpoint first, so that retries go elsewhere.
        pool.remove(self)
        pool.upstreams.endpoint_failed(pool)
        self._fail_all(ErrorKind.CONNECT_FAILURE, f"cannot connect to {pool.endpoint_key}")

    # -- failure ------------------------------------------------------------------------------

    def abandon(self, p: Pending) -> None:
        """``p`` timed out. A multiplexed connection forgets it (a late reply is dropped by id),
        and is closed and replaced after ``max_consecutive_timeouts`` of them in a row with no
        reply in between: it is most likely dead (a server that stopped reading, a peer gone
        without a FIN). An ORDERED or EXCLUSIVE connection is closed at once, as Envoy's
        redis_proxy does: its lost reply would answer the wrong request, and the requests
        queued behind it on a stalled connection get their error now rather than at their own
        deadlines."""
        pool = self.pool
        if pool.correlation is Correlation.REQUEST_ID:
            if p.upstream_id is not None:
                self.inflight.pop(p.upstream_id, None)
            pool.release(self, p)
            self.timeouts += 1
            limit = pool.cluster.config.max_consecutive_timeouts
            if limit <= 0 or self.timeouts < limit:
                self.retire_if_idle()
                return
        pool.stats.timeout_closes += 1
        pool.io.report("upstream_cx_timeout_close", f"{pool.name}: closing a connection after {max(self.timeouts, 1)} request timeout(s)")
        self._abort(ErrorKind.UPSTREAM_RESET, "upstream connection closed after a request timeout", skip=p)

    def _abort(self, kind: ErrorKind, message: str, skip: Pending | None = None) -> None:
        if self.closed:
            return
        self.closed = True
        if self.connected:
            self.pool.stats.cx_active -= 1
            self.connected = False
        self.pool.remove(self)
        self._fail_all(kind, message, skip)
        if self.transport is not None:
            self.transport.close()  # type: ignore[attr-defined]

    def _fail_all(self, kind: ErrorKind, message: str, skip: Pending | None = None) -> None:
        waiting = [p for p in self.fifo if p is not None] + list(self.inflight.values())
        self.fifo.clear()
        self.inflight.clear()
        self.out.clear()
        pool = self.pool
        for p in waiting:
            pool.release(self, p)
            if p is not skip and not p.done:
                pool.stats.errors[kind.value] += 1
                pool.upstreams.outcome(pool, False)
                p.session.fail(p, kind, message)

"""A downstream connection: decode requests, route them, return replies in the protocol's order.

The class is an asyncio-compatible protocol by duck typing (``connection_made``,
``data_received`` ...) but imports no asyncio: the IO layer hands it a transport, tests hand it a
fake one. Every read is processed as a batch: all whole frames are decoded, dispatched, and the
replies that are ready are written with one ``writelines`` at the end of the event-loop pass.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Final, Protocol

from metaprotocol.proxy import fanout
from metaprotocol.proxy.chain import Chain
from metaprotocol.proxy.context import Failure, ListenerContext, Pending
from metaprotocol.proxy.peer import peer_attributes
from metaprotocol.proxy.pipeline import forward_pipelines
from metaprotocol.proxy.retry import retry, retry_over
from metaprotocol.proxy.routing import RouterStage
from metaprotocol.proxy.tunnel import Tunnel
from metaprotocol.spi import (
    NEED_DATA,
    ErrorKind,
    LocalAnswer,
    LocalError,
    Message,
    MessageType,
    MetaProtocolError,
    ReadBuffer,
    RemoteProtocolError,
)

_UNDECODED: Final = Message(MessageType.ERROR, b"")  # stands for bytes refused before a message existed


class Transport(Protocol):
    """The part of ``asyncio.Transport`` the core uses."""

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue bytes for sending."""

    def writelines(self, data: list[bytes | bytearray]) -> None:
        """Queue several buffers for sending."""

    def close(self) -> None:
        """Close after queued bytes are sent."""

    def pause_reading(self) -> None:
        """Stop calling ``data_received``."""

    def resume_reading(self) -> None:
        """Resume calling ``data_received``."""

    def get_extra_info(self, name: str, default: object = None) -> object:
        """Socket details."""


class DownstreamSession:
    """One client connection on a listener."""

    def __init__(self, ctx: ListenerContext) -> None:
        self.ctx = ctx
        self.codec = ctx.factory.server_codec()
        self.buffer = ReadBuffer()
        self.transport: Transport | None = None
        self.ordered = ctx.ordered_replies
        self.slots: deque[Pending] = deque()
        self.out: list[bytes | bytearray] = []
        self.inflight = 0
        self.closed = False
        self.closing = False  # no more requests are read; close once replies are out
        self.flush_scheduled = False
        self.read_paused = False
        self.write_paused = False
        self.max_pending = ctx.config.max_pending_per_connection
        self.last_active = ctx.io.now()
        self.tunnel: Tunnel | None = None
        self.peer: Mapping[str, str] = {}  # the client's attributes (peer.py), set on connection

    # -- asyncio protocol callbacks -----------------------------------------------------------

    def connection_made(self, transport: Transport) -> None:
        """Register with the listener, or close at once when a connection bound is reached."""
        self.transport = transport
        self.peer = peer_attributes(transport)
        ctx = self.ctx
        stats = ctx.stats
        stats.cx_total += 1
        overload = ctx.overload
        refused = overload.accept_connection(stats.cx_active, ctx.config.max_connections)
        if refused is not None:
            self.closed = True  # never registered: connection_lost has nothing to undo
            overload.rejected_connections[refused] += 1
            stats.cx_overflow += 1
            ctx.io.report("downstream_cx_overflow", f"{ctx.name}: connection refused ({refused} limit)")
            transport.close()
            return
        stats.cx_active += 1
        overload.connections += 1
        ctx.sessions.add(self)

    def data_received(self, data: bytes) -> None:
        """Decode and dispatch every whole frame received, then write what is ready."""
        if self.tunnel is not None:
            self.last_active = self.ctx.io.now()
            self.tunnel.forward(data)
            return
        if self.closing:
            return
        self.buffer.feed(data)
        self._process_guarded()
        if self.out or self.closing:
            self.flush()

    def eof_received(self) -> bool:
        """The client half-closed: finish in-flight requests, then close."""
        self.closing = True
        if self.inflight == 0:
            self.flush()
            self._close()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the client; replies still on their way are dropped when they arrive."""
        if self.closed:
            return
        self.closed = True
        stats = self.ctx.stats
        stats.cx_active -= 1
        overload = self.ctx.overload
        overload.connections -= 1
        if self.inflight:
            stats.cx_destroy_with_active_rq += 1
            stats.active_requests -= self.inflight
            overload.pending -= self.inflight
            self.inflight = 0
        self.slots.clear()
        self.out.clear()
        self.ctx.sessions.discard(self)
        if self.tunnel is not None:
            self.tunnel.close()

    def pause_writing(self) -> None:
        """The client is not reading its replies: stop reading its requests."""
        self.write_paused = True
        self._pause()

    def resume_writing(self) -> None:
        """The client caught up."""
        self.write_paused = False
        self._maybe_resume()

    # -- request path -------------------------------------------------------------------------

    def _process_guarded(self) -> None:
        """``_process`` behind the codec boundary: a documented codec error that surfaces late
        (a lazily parsed field read while routing) is a protocol error; any other exception is a
        codec bug, answered and confined to this connection instead of reaching the event loop."""
        try:
            self._process()
        except MetaProtocolError as exc:
            self.decode_failed(exc if isinstance(exc, RemoteProtocolError) else RemoteProtocolError(str(exc)), self.last_active)
        except Exception as exc:  # noqa: BLE001 - defence in depth at the codec boundary
            self.codec_bug(exc)
            self._refuse(None, ErrorKind.INTERNAL, "internal error", self.last_active, close=True)

    def _process(self) -> None:
        """Decode every whole frame read and hand each message to ``on_message``; when the
        listener's chain forwards pipelines, runs of plain requests go as units instead."""
        buffer = self.buffer
        ctx = self.ctx
        now = self.last_active = ctx.io.now()
        chain = ctx.chain
        if chain.forwards_pipelines:  # ordered, never bound: no tunnel to care for
            forward_pipelines(self, chain, now)
            return
        codec = self.codec
        while not self.read_paused and not self.closing and buffer.pos < len(buffer.data):
            try:
                msg = codec.decode(buffer)
            except RemoteProtocolError as exc:
                if self.decode_failed(exc, now):
                    continue
                return
            if msg is NEED_DATA:
                return
            assert isinstance(msg, Message)  # noqa: S101 - narrows the sentinel for mypy
            self.on_message(msg, chain, now)
            if self.tunnel is not None:  # bound: the rest of the buffer goes through unparsed
                rest = bytes(buffer.data[buffer.pos :])
                buffer.clear()
                if rest:
                    self.tunnel.forward(rest)
                return

    def on_message(self, msg: Message, chain: Chain, now: float) -> None:
        """One decoded message from the client: a request runs the listener's chain unless the
        codec answers it itself (the protocol's own local commands); heartbeats are answered here;
        anything else is refused."""
        mtype = msg.type
        if mtype is MessageType.REQUEST or mtype is MessageType.ONEWAY:
            answer = self.codec.answer_locally(msg)
            if answer is None:
                self.request(Pending(self, msg, now), chain, now)
            else:
                self.answered_locally(msg, answer, now)
            return
        if mtype is MessageType.HEARTBEAT:
            self.ctx.stats.heartbeats += 1
            self.reply_locally(Pending(self, msg, now), self.codec.heartbeat_reply(msg))
            return
        if mtype is MessageType.EVENT:  # unsolicited from the client (e.g. a stray reply): drop
            return
        self.ctx.stats.errors[ErrorKind.BAD_REQUEST.value] += 1
        self.reply_locally(Pending(self, msg, now), self.error_reply(msg, LocalError(ErrorKind.BAD_REQUEST, "not a request")))

    def answered_locally(self, msg: Message, answer: LocalAnswer, now: float) -> None:
        """The codec answers ``msg`` itself (Redis PING, a Dubbo heartbeat ...): in its place."""
        stats = self.ctx.stats
        stats.requests += 1
        stats.local_answers += 1
        self.reply_locally(Pending(self, msg, now), answer.reply)
        if answer.close:
            self.closing = True

    def request(self, p: Pending, chain: Chain, now: float) -> None:
        """The one request path: ``p`` (one request, or a forwarded pipeline of ``p.count``) runs
        the listener's compiled stages in order until one takes it over."""
        self.ctx.stats.requests += p.count
        for step in chain.steps:
            if not step(self, p, now):
                return

    def resume(self, chain: Chain, p: Pending, index: int) -> None:
        """Go on with ``p`` from stage ``index`` (a stage that deferred it, e.g. a rate limit
        service's answer)."""
        now = self.ctx.io.now()
        for step in chain.steps[index:]:
            if not step(self, p, now):
                return

    def admit(self, p: Pending, now: float) -> bool:
        """The admission stage (``chain.Admission``): a two-way ``p`` is in flight: counted, given
        its reply slot in ordered mode, and reading paused at the connection's limit. False when
        the process is overloaded: ``p`` has then been answered with the codec's over-limit reply
        and must not be sent. A one-way request is only counted."""
        if p.request.type is MessageType.ONEWAY:
            self.ctx.stats.requests_oneway += 1
            return True
        n = p.count
        self.inflight += n
        ctx = self.ctx
        ctx.stats.active_requests += n
        overload = ctx.overload
        overload.pending += n
        if self.ordered:
            self.slots.append(p)
        if self.inflight >= self.max_pending:
            self._pause()
        if overload.pending > overload.admit_below:
            reason = overload.reject_reason()
            overload.rejected_requests[reason] += n
            self.local_error(p, ErrorKind.OVER_LIMIT, f"proxy overloaded ({reason} limit)")
            return False
        return True

    def bind(self, msg: Message, router: RouterStage) -> None:
        """Bound mode: open this client's own upstream connection (to where ``router`` sends
        ``msg``) and pass bytes through."""
        ctx = self.ctx
        target = router.resolve(msg)
        if isinstance(target, Failure):
            self.reply_locally(Pending(self, msg, ctx.io.now()), self.error_reply(msg, target.error))
            self.closing = True
            return
        route, cs, index = target
        ctx.stats.route_requests[route.name] += 1
        endpoint = cs.endpoints[index]
        codec = ctx.factory.client_codec(self.codec.upstream_profile())
        self.tunnel = Tunnel(self, codec, f"{cs.config.name}/{endpoint.key}")
        self.flush()  # replies made before the tunnel go first
        self.tunnel.forward(codec.encode(msg, None, None))
        ctx.io.connect(self.tunnel, endpoint.address, endpoint.port, cs.config.connect_timeout)  # type: ignore[arg-type]

    def tunnel_reply(self, data: bytes) -> None:
        """Server bytes for a bound client."""
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def tunnel_closed(self) -> None:
        """The bound upstream connection is gone: close the client's too."""
        if self.transport is not None and not self.closed:
            self.transport.close()

    def pause_for_tunnel(self, paused: bool) -> None:
        """Backpressure from the bound server."""
        if self.transport is None or self.closed:
            return
        if paused:
            self.transport.pause_reading()
        else:
            self.transport.resume_reading()

    # -- completion ---------------------------------------------------------------------------

    def complete(self, p: Pending, response: Message) -> None:
        """An upstream response for ``p`` arrived (called by the upstream connection)."""
        if p.done:
            self.ctx.stats.late_responses += 1
            return
        if p.parent is not None:
            fanout.part_replied(self, p, response)
            return
        route = p.route
        if response.type is MessageType.ERROR and route is not None and route.rule.retry is not None and retry(self, p, "error"):
            return
        mutation = route.response_mutation if route is not None else None
        try:
            data = self.codec.encode(response, mutation, p.request.request_id)
        except MetaProtocolError as exc:  # e.g. a lazily read response body that is malformed
            self.local_error(p, ErrorKind.BAD_RESPONSE, str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - a codec bug: this request fails, nothing else
            self.codec_bug(exc)
            self.local_error(p, ErrorKind.INTERNAL, "internal error")
            return
        self.ctx.stats.responses += p.count
        self.finish(p, data, "ok" if response.type is MessageType.RESPONSE else "error")

    def fail(self, p: Pending, kind: ErrorKind, message: str) -> None:
        """``p`` failed upstream (reset, timeout ...): retry if the route says so, else answer
        with the codec's error reply."""
        if p.done or retry(self, p, kind.value):
            return
        if p.parent is not None:
            fanout.part_failed(self, p, kind, message)
            return
        self.local_error(p, kind, message)

    def fail_with(self, p: Pending, failure: Failure) -> None:
        """``p`` could not be sent (no route, no healthy upstream ...): answer with the error."""
        if failure.cluster:
            p.cluster = failure.cluster
        self.local_error(p, failure.error.kind, failure.error.message)

    def local_error(self, p: Pending, kind: ErrorKind, message: str) -> None:
        """Answer ``p`` with the protocol's error reply. For a forwarded pipeline cut part-way, the
        replies that came stay and the codec answers the rest (``ServerCodec.batch_error``)."""
        answered = p.batch_replies
        left = p.batch_left if answered else p.count
        self.ctx.stats.errors[kind.value] += left
        if p.request.type is MessageType.ONEWAY:
            p.done = True
            return
        error = LocalError(kind, message)
        if p.count == 1:
            reply = self.error_reply(p.request, error)
        else:
            reply = self._batch_error(p.request, error, left)
            if answered:
                reply = b"".join(answered) + reply
        self.finish(p, reply, kind.value)

    def reply_locally(self, p: Pending, reply: bytes) -> None:
        """A reply made without going upstream, kept in request order."""
        p.done = True
        if self.ordered and self.slots:
            p.reply = reply
            self.slots.append(p)
        else:
            self.out.append(reply)

    def finish(self, p: Pending, data: bytes | bytearray, status: str = "ok") -> None:
        """``p`` is answered with ``data``: out of the books, into its reply slot."""
        p.done = True
        if p.retry_cluster is not None:  # the retry is over, whatever its outcome
            retry_over(self, p, status == "ok")
        if self.closed:
            return
        ctx = self.ctx
        count = p.count
        self.inflight -= count
        ctx.stats.active_requests -= count
        ctx.overload.pending -= count
        now = ctx.io.now()
        ctx.stats.latency.observe(now - p.start, count)
        self.last_active = now
        for hook in ctx.chain.on_finish:
            hook(p, data, now, status)
        if self.ordered:
            p.reply = data
            slots = self.slots
            if slots and slots[0] is p:
                out = self.out
                while slots and slots[0].reply is not None:
                    out.append(slots.popleft().reply)  # type: ignore[arg-type]
        else:
            self.out.append(data)
        self._flush_soon()
        if self.read_paused and not self.write_paused:
            self._maybe_resume()

    # -- output -------------------------------------------------------------------------------

    def _flush_soon(self) -> None:
        """Write what is queued at the end of this event-loop pass (once per pass)."""
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.ctx.io.schedule_flush(self)

    def flush(self) -> None:
        """Write the replies that are ready, in one call."""
        self.flush_scheduled = False
        out = self.out
        transport = self.transport
        if out and transport is not None and not self.closed:
            if len(out) == 1:
                transport.write(out[0])
            else:
                transport.writelines(out)
            out.clear()
        if self.closing and self.inflight == 0 and not self.slots:
            self._close()

    def _close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()

    def _pause(self) -> None:
        if not self.read_paused and self.transport is not None:
            self.read_paused = True
            self.transport.pause_reading()

    def _maybe_resume(self) -> None:
        if (
            self.read_paused
            and not self.write_paused
            and self.inflight <= self.max_pending // 2
            and not self.closed
            and self.transport is not None
        ):
            self.read_paused = False
            self.transport.resume_reading()
            if self.buffer.pending():
                self._process_guarded()
                if self.out or self.closing:  # local replies made now go out this loop pass
                    self._flush_soon()

    def decode_failed(self, exc: RemoteProtocolError, now: float) -> bool:
        """The codec refused what the client sent. A frame it stepped over whole (``exc.skipped``)
        is answered with the protocol's error in its place and reading goes on (True); otherwise
        the connection gets the protocol's reply to garbage, keeps the replies it is owed, and
        closes (False)."""
        ctx = self.ctx
        ctx.stats.request_decoding_errors += 1
        ctx.io.report("downstream_protocol_error", f"{ctx.name}: {exc}")
        request = exc.request if isinstance(exc.request, Message) else None
        if exc.skipped:
            ctx.stats.errors[exc.kind.value] += 1
        self._refuse(request, exc.kind, str(exc), now, close=not exc.skipped)
        return exc.skipped

    def _refuse(self, request: Message | None, kind: ErrorKind, text: str, now: float, *, close: bool) -> None:
        """Answer ``request`` (None: undecodable bytes) with the protocol's error, in its place
        among the replies; with ``close``, read nothing more and close once the replies are out."""
        if close:
            self.buffer.clear()
            self.closing = True
        if request is not None and request.type is MessageType.ONEWAY:
            return
        reply = self.error_reply(request, LocalError(kind, text))
        if reply:
            self.reply_locally(Pending(self, request or _UNDECODED, now), reply)

    def codec_bug(self, exc: BaseException) -> None:
        """The codec raised something it does not document: counted and logged with its traceback."""
        ctx = self.ctx
        ctx.stats.codec_internal_errors += 1
        ctx.io.report("codec_internal_error", f"{ctx.name} ({ctx.factory.name}): {type(exc).__name__}: {exc}", exc)

    def error_reply(self, request: Message | None, error: LocalError) -> bytes:
        """``codec.on_error``, which must not fail in its turn: a codec bug there costs the
        reply (the client then sees the connection close), never the event loop."""
        try:
            return self.codec.on_error(request, error)
        except Exception as exc:  # noqa: BLE001 - defence in depth at the codec boundary
            self.codec_bug(exc)
            return b""

    def _batch_error(self, batch: Message, error: LocalError, unanswered: int) -> bytes:
        """``codec.batch_error``, guarded like ``error_reply``."""
        try:
            return self.codec.batch_error(batch, error, unanswered)
        except Exception as exc:  # noqa: BLE001 - defence in depth at the codec boundary
            self.codec_bug(exc)
            return b""

    def drain(self) -> None:
        """Stop reading new requests; close once every in-flight request is answered."""
        self.closing = True
        if self.transport is not None and not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()
        self.flush()


__all__ = ["DownstreamSession", "Transport"]

"""A downstream connection: decode requests, route them, return replies in the protocol's order.

The class is an asyncio-compatible protocol by duck typing (``connection_made``,
``data_received`` ...) but imports no asyncio: the IO layer hands it a transport, tests hand it a
fake one. Every read is processed as a batch: all whole frames are decoded, dispatched, and the
replies that are ready are written with one ``writelines`` at the end of the event-loop pass.
"""

from __future__ import annotations

from collections import deque
from typing import Final, Protocol

from metaprotocol.proxy.context import Failure, ListenerContext, Pending
from metaprotocol.proxy.tunnel import Tunnel
from metaprotocol.router.table import CompiledRoute
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


class _Ask:
    """Type of ASK: ``_handle`` asks the codec whether it answers the request itself."""


ASK: Final = _Ask()

# Failures of requests that never left the proxy: resending them is safe for any request.
NEVER_SENT = frozenset({ErrorKind.CONNECT_FAILURE.value, ErrorKind.NO_HEALTHY_UPSTREAM.value, ErrorKind.OVER_LIMIT.value})


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

    # -- asyncio protocol callbacks -----------------------------------------------------------

    def connection_made(self, transport: Transport) -> None:
        """Register with the listener, or close at once when a connection bound is reached."""
        self.transport = transport
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
            self._protocol_error(exc if isinstance(exc, RemoteProtocolError) else RemoteProtocolError(str(exc)))
        except Exception as exc:  # noqa: BLE001 - defence in depth at the codec boundary
            self._internal_error(exc)

    def _process(self) -> None:
        codec = self.codec
        buffer = self.buffer
        ctx = self.ctx
        now = self.last_active = ctx.io.now()
        if self.ordered and ctx.forwards_pipelines():  # never in bound mode, the only one with a tunnel
            self._process_pipeline(now)
            return
        express = self._express_allowed()
        while not self.read_paused and not self.closing and buffer.pos < len(buffer.data):
            try:
                msg = codec.decode(buffer)
            except RemoteProtocolError as exc:
                if exc.skipped:
                    self._bad_frame(exc, now)
                    continue
                self._protocol_error(exc)
                return
            if msg is NEED_DATA:
                return
            assert isinstance(msg, Message)  # noqa: S101 - narrows the sentinel for mypy
            if express and msg.type is MessageType.REQUEST and not msg.parts:
                answer = codec.answer_locally(msg)
                if answer is None:
                    self._express(msg, now)
                else:
                    self._handle(msg, now, answer)
                continue
            self._handle(msg, now)
            if self.tunnel is not None:  # bound: the rest of the buffer goes through unparsed
                rest = bytes(buffer.data[buffer.pos :])
                buffer.clear()
                if rest:
                    self.tunnel.forward(rest)
                return

    def _express_allowed(self) -> bool:
        """With no rate limit and no bound mode, a plain two-way request may go from decode to
        dispatch without _handle's checks (``_express``: the same steps, in the same order)."""
        ctx = self.ctx
        return ctx.limiter is None and ctx.global_limit is None and not ctx.factory.bound_upstream

    def _express(self, msg: Message, now: float) -> None:
        """Dispatch a plain two-way request that needs no local answer (see _express_allowed)."""
        ctx = self.ctx
        ctx.stats.requests += 1
        p = Pending(self, msg, now)
        if self._admit(p):
            failure = ctx.upstreams.dispatch(ctx, p, msg, now, False)
            if failure is not None:
                self._fail(p, failure)

    def _admit(self, p: Pending) -> bool:
        """``p`` (two-way) is in flight: counted, given its reply slot in ordered mode, and reading
        paused at the connection's limit. False when the process is overloaded: ``p`` has then
        been answered with the codec's over-limit reply and must not be sent."""
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
            self._local_error(p, ErrorKind.OVER_LIMIT, f"proxy overloaded ({reason} limit)")
            return False
        return True

    def _process_pipeline(self, now: float) -> None:
        """Decode what was read, forwarding each run of plain requests as one unit (one route
        decision, one upstream write, one completion) instead of one by one."""
        codec = self.codec
        buffer = self.buffer
        run: list[Message] = []  # forwarded pipelines imply no limits and no bound mode: express
        while not self.read_paused and not self.closing and buffer.pos < len(buffer.data):
            try:
                unit = codec.decode_run(buffer)
                if unit is not None:
                    self._forward_run(run, now)
                    if unit[1] == 1:  # one plain request: the ordinary path, no local answer
                        self._express(unit[0], now)
                    else:
                        self._forward_unit(unit[0], unit[1], now)
                    continue
                msg = codec.decode(buffer)
            except RemoteProtocolError as exc:
                self._forward_run(run, now)
                if exc.skipped:
                    self._bad_frame(exc, now)
                    continue
                self._protocol_error(exc)
                return
            if msg is NEED_DATA:
                break
            assert isinstance(msg, Message)  # noqa: S101 - narrows the sentinel for mypy
            if msg.type is MessageType.REQUEST and not msg.parts:
                answer = codec.answer_locally(msg)
                if answer is None:
                    if run or buffer.pos < len(buffer.data):
                        run.append(msg)
                    else:  # alone in its read (no pipelining): the ordinary path
                        self._express(msg, now)
                    continue
                self._forward_run(run, now)
                self._handle(msg, now, answer)
            else:
                self._forward_run(run, now)
                self._handle(msg, now)
        self._forward_run(run, now)

    def _forward_run(self, run: list[Message], now: float) -> None:
        """Send the plain requests gathered so far (as one unit where the codec can) and empty
        ``run``."""
        if not run:
            return
        if len(run) == 1 or (batch := self.codec.batch(run)) is None:
            for msg in run:
                self._express(msg, now)
        else:
            self._forward_unit(batch, len(run), now)
        run.clear()

    def _forward_unit(self, batch: Message, n: int, now: float) -> None:
        """Route and send ``n`` requests standing as one message; one pending entry answers all."""
        ctx = self.ctx
        ctx.stats.requests += n
        p = Pending(self, batch, now)
        p.count = p.batch_left = n
        if self._admit(p):
            failure = ctx.upstreams.dispatch(ctx, p, batch, now, False)
            if failure is not None:
                self._fail(p, failure)

    def _handle(self, msg: Message, now: float, answer: LocalAnswer | None | _Ask = ASK) -> None:
        ctx = self.ctx
        mtype = msg.type
        if mtype is MessageType.HEARTBEAT:
            ctx.stats.heartbeats += 1
            self._local(Pending(self, msg, now), self.codec.heartbeat_reply(msg))
            return
        if mtype is MessageType.EVENT:  # unsolicited from the client (e.g. a stray reply): drop
            return
        if mtype is not MessageType.REQUEST and mtype is not MessageType.ONEWAY:
            ctx.stats.errors[ErrorKind.BAD_REQUEST.value] += 1
            reply = self.codec.on_error(msg, LocalError(ErrorKind.BAD_REQUEST, "not a request"))
            self._local(Pending(self, msg, now), reply)
            return
        ctx.stats.requests += 1
        if answer is ASK:
            answer = self.codec.answer_locally(msg)
        if answer is not None:
            assert isinstance(answer, LocalAnswer)  # noqa: S101 - narrows the sentinel
            ctx.stats.local_answers += 1
            self._local(Pending(self, msg, now), answer.reply)
            if answer.close:
                self.closing = True
            return
        oneway = mtype is MessageType.ONEWAY
        limiter = ctx.limiter
        if limiter is not None:
            if limiter.allow(msg.metadata, now):
                ctx.stats.rate_limit_ok += 1
            else:
                ctx.stats.rate_limited += 1
                ctx.stats.errors[ErrorKind.OVER_LIMIT.value] += 1
                if not oneway:
                    self._local(Pending(self, msg, now), self.codec.on_error(msg, LocalError(ErrorKind.OVER_LIMIT, "rate limited")))
                return
        if ctx.factory.bound_upstream:
            self._bind(msg)
            return
        p = Pending(self, msg, now)
        glimit = ctx.global_limit
        if glimit is not None and all(pred(msg.metadata) for pred in ctx.global_match):
            md = msg.metadata
            entries = [(key, md[prop]) for prop, key in glimit.descriptors if prop in md]
            if entries:
                if not oneway and not self._admit(p):
                    return
                ctx.io.rate_limit(ctx, entries, lambda allowed: self._after_global_limit(p, msg, oneway, allowed))
                return
        if oneway:
            ctx.stats.requests_oneway += 1
        elif not self._admit(p):
            return
        parts = msg.parts
        if parts and self._split(p, parts, now):
            return
        failure = ctx.upstreams.dispatch(ctx, p, msg, now, oneway)
        if failure is not None and not oneway:
            self._fail(p, failure)

    def _bind(self, msg: Message) -> None:
        """Bound mode: open this client's own upstream connection and pass bytes through."""
        ctx = self.ctx
        target = ctx.upstreams.resolve(ctx, msg)
        if isinstance(target, Failure):
            self._local(Pending(self, msg, ctx.io.now()), self.codec.on_error(msg, target.error))
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

    def _after_global_limit(self, p: Pending, msg: Message, oneway: bool, allowed: bool) -> None:
        """The rate limit service answered (or failed, already turned into ``allowed``)."""
        if self.closed:
            return
        ctx = self.ctx
        if not allowed:
            ctx.stats.rate_limited += 1
            if oneway:
                ctx.stats.errors[ErrorKind.OVER_LIMIT.value] += 1
            else:
                self._local_error(p, ErrorKind.OVER_LIMIT, "rate limited")
            self.flush()
            return
        ctx.stats.rate_limit_ok += 1
        failure = ctx.upstreams.dispatch(ctx, p, msg, ctx.io.now(), oneway)
        if failure is not None and not oneway:
            self._fail(p, failure)
        self.flush()

    def _split(self, p: Pending, parts: list[Message], now: float) -> bool:
        """Send the parts of a scatter-gather request separately, unless they share an upstream."""
        ctx = self.ctx
        upstreams = ctx.upstreams
        targets = []
        for part in parts:
            target = upstreams.resolve(ctx, part)
            if isinstance(target, Failure):
                self._fail(p, target)
                return True
            targets.append(target)
        first = targets[0]
        if all(t[1] == first[1] and t[2] == first[2] for t in targets):
            return False
        ctx.stats.fanout_requests += 1
        p.parts_left = len(parts)
        p.part_replies = [None] * len(parts)
        for i, (part, target) in enumerate(zip(parts, targets, strict=True)):
            child = Pending(self, part, now)
            child.parent = p
            child.part_index = i
            upstreams.send(ctx, child, part, target, now, oneway=False)
            if p.done:
                break
        return True

    # -- completion ---------------------------------------------------------------------------

    def complete(self, p: Pending, response: Message) -> None:
        """An upstream response for ``p`` arrived (called by the upstream connection)."""
        if p.done:
            self.ctx.stats.late_responses += 1
            return
        parent = p.parent
        if parent is not None:
            p.done = True
            if parent.done:
                return
            replies = parent.part_replies
            assert replies is not None  # noqa: S101
            replies[p.part_index] = response
            parent.parts_left -= 1
            if parent.parts_left == 0:
                try:
                    merged = self.codec.merge(parent.request, [r for r in replies if r])
                except MetaProtocolError as exc:
                    self._local_error(parent, ErrorKind.BAD_RESPONSE, str(exc))
                    return
                except Exception as exc:  # noqa: BLE001 - a codec bug: this request fails, nothing else
                    self._codec_bug(exc)
                    self._local_error(parent, ErrorKind.INTERNAL, "internal error")
                    return
                self._finish(parent, merged)
            return
        route = p.route
        if response.type is MessageType.ERROR and route is not None and route.rule.retry is not None and self._retry(p, "error"):
            return
        mutation = route.response_mutation if route is not None else None
        try:
            data = self.codec.encode(response, mutation, p.request.request_id)
        except MetaProtocolError as exc:  # e.g. a lazily read response body that is malformed
            self._local_error(p, ErrorKind.BAD_RESPONSE, str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - a codec bug: this request fails, nothing else
            self._codec_bug(exc)
            self._local_error(p, ErrorKind.INTERNAL, "internal error")
            return
        self.ctx.stats.responses += p.count
        self._finish(p, data, "ok" if response.type is MessageType.RESPONSE else "error")

    def fail(self, p: Pending, kind: ErrorKind, message: str) -> None:
        """``p`` failed upstream (reset, timeout ...): retry if the route says so, else answer
        with the codec's error reply."""
        if p.done:
            return
        if self._retry(p, kind.value):
            return
        parent = p.parent
        if parent is not None:
            p.done = True
            if not parent.done:
                self._local_error(parent, kind, message)
            return
        self._local_error(p, kind, message)

    def _retry(self, p: Pending, reason: str) -> bool:
        """Send ``p`` again when its route retries ``reason`` and tries are left."""
        route = p.route
        policy = route.rule.retry if route is not None else None
        if policy is None or reason not in policy.retry_on or p.tries >= policy.num_retries or self.closed or p.parent is not None:
            return False
        if p.request.type is not MessageType.REQUEST:
            return False  # one-way requests are not answered, so not retried
        ctx = self.ctx
        if reason not in NEVER_SENT and not policy.retry_non_idempotent and not self.codec.is_idempotent(p.request):
            ctx.stats.retries_not_idempotent += 1
            return False
        upstreams = ctx.upstreams
        cs = upstreams.clusters.get(p.cluster)
        cstats = upstreams.cluster_stats.get(p.cluster)
        if cs is not None and p.retry_cluster is None:
            if not cs.retry_allowed():
                if cstats is not None:
                    cstats.retry_overflows += 1
                return False
            cs.active_retries += 1
            p.retry_cluster = cs
        if cstats is not None:
            cstats.retries += 1
        p.tries += 1
        ctx.stats.retries += 1
        p.upstream = None
        p.upstream_id = None
        failure = ctx.upstreams.dispatch(ctx, p, p.request, ctx.io.now(), oneway=False)
        if failure is not None:
            self._fail(p, failure)
        return True

    def _fail(self, p: Pending, failure: Failure) -> None:
        if failure.cluster:
            p.cluster = failure.cluster
        self._local_error(p, failure.error.kind, failure.error.message)

    def _local_error(self, p: Pending, kind: ErrorKind, message: str) -> None:
        answered = p.batch_replies
        self.ctx.stats.errors[kind.value] += p.batch_left if answered else p.count
        if p.request.type is MessageType.ONEWAY:
            p.done = True
            return
        reply = self._error_reply(p.request, LocalError(kind, message))
        if answered:  # a forwarded pipeline failed part-way: replies that came stay, errors for the rest
            per_request = len(reply) // p.count
            reply = b"".join(answered) + reply[per_request * (p.count - p.batch_left) :]
        self._finish(p, reply, kind.value)

    def _local(self, p: Pending, reply: bytes) -> None:
        """A reply made without going upstream, kept in request order."""
        p.done = True
        if self.ordered and self.slots:
            p.reply = reply
            self.slots.append(p)
        else:
            self.out.append(reply)

    def _finish(self, p: Pending, data: bytes | bytearray, status: str = "ok") -> None:
        p.done = True
        retrying = p.retry_cluster
        if retrying is not None:  # the retry is over, whatever its outcome
            retrying.active_retries -= 1
            p.retry_cluster = None
            if status == "ok":
                cstats = self.ctx.upstreams.cluster_stats.get(p.cluster)
                if cstats is not None:
                    cstats.retry_successes += 1
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
        if ctx.access_log is not None:
            ctx.access_log(_log_record(ctx.name, p, data, now, status))
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

    def _protocol_error(self, exc: RemoteProtocolError) -> None:
        """Garbage from the client: reply as the protocol does, keep earlier replies, close."""
        ctx = self.ctx
        ctx.stats.request_decoding_errors += 1
        ctx.io.report("downstream_protocol_error", f"{ctx.name}: {exc}")
        self.buffer.clear()
        self.closing = True
        request = exc.request if isinstance(exc.request, Message) else None
        reply = self._error_reply(request, LocalError(exc.kind, str(exc)))
        if reply:
            self._local(Pending(self, Message(MessageType.ERROR, b""), 0.0), reply)

    def _bad_frame(self, exc: RemoteProtocolError, now: float) -> None:
        """A malformed request the codec stepped over whole (``exc.skipped``): answer it with the
        protocol's error, in its place among the replies, and go on reading."""
        ctx = self.ctx
        ctx.stats.request_decoding_errors += 1
        ctx.stats.errors[exc.kind.value] += 1
        ctx.io.report("downstream_protocol_error", f"{ctx.name}: {exc}")
        request = exc.request if isinstance(exc.request, Message) else None
        if request is not None and request.type is MessageType.ONEWAY:
            return
        reply = self._error_reply(request, LocalError(exc.kind, str(exc)))
        if reply:
            self._local(Pending(self, request or Message(MessageType.ERROR, b""), now), reply)

    def _internal_error(self, exc: Exception) -> None:
        """A codec raised something it does not document: count it, log it with its traceback,
        answer with the protocol's error and close this connection only (after the replies it
        is still owed)."""
        self._codec_bug(exc)
        self.buffer.clear()
        self.closing = True
        reply = self._error_reply(None, LocalError(ErrorKind.INTERNAL, "internal error"))
        if reply:
            self._local(Pending(self, Message(MessageType.ERROR, b""), 0.0), reply)

    def _codec_bug(self, exc: BaseException) -> None:
        ctx = self.ctx
        ctx.stats.codec_internal_errors += 1
        ctx.io.report("codec_internal_error", f"{ctx.name} ({ctx.factory.name}): {type(exc).__name__}: {exc}", exc)

    def _error_reply(self, request: Message | None, error: LocalError) -> bytes:
        """``codec.on_error``, which must not fail in its turn: a codec bug there costs the
        reply (the client then sees the connection close), never the event loop."""
        try:
            return self.codec.on_error(request, error)
        except Exception as exc:  # noqa: BLE001 - defence in depth at the codec boundary
            self._codec_bug(exc)
            return b""

    def drain(self) -> None:
        """Stop reading new requests; close once every in-flight request is answered."""
        self.closing = True
        if self.transport is not None and not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()
        self.flush()


def _log_record(listener: str, p: Pending, reply: bytes | bytearray, now: float, status: str) -> dict[str, object]:
    """What the access log may print about one finished request."""
    conn = p.upstream
    return {
        "listener": listener,
        "route": p.route.name if p.route is not None else "",
        "cluster": p.cluster,
        "upstream_host": conn.pool.endpoint_key if conn is not None else "",
        "request_id": p.request.request_id,
        "metadata": p.request.metadata,
        "bytes_received": len(p.request.raw),
        "bytes_sent": len(reply),
        "duration": now - p.start,
        "start": p.start,
        "tries": p.tries + 1,
        "status": status,
    }


__all__ = ["CompiledRoute", "DownstreamSession", "Transport"]

"""Upstream side: clusters, per-endpoint connection pools and response correlation.

Correlation modes (declared by the codec factory):

* REQUEST_ID: many clients' requests share a few connections per endpoint; each request gets a
  fresh upstream id (so ids of different clients never collide) and its response is found by id.
* ORDERED: requests are pipelined on a shared connection; the n-th response answers the n-th
  request. A request that times out closes its connection (a lost reply would misalign every
  reply after it); the requests behind it get an error reply at once.
* EXCLUSIVE: one request at a time per connection; extra requests wait for an idle connection.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Mapping

from metaprotocol.cluster.state import ClusterState
from metaprotocol.config.model import HASHING_POLICIES, ClusterConfig
from metaprotocol.proxy.context import Failure, ListenerContext, Pending, ProxyIO
from metaprotocol.proxy.deadlines import DeadlineQueues, Expirable
from metaprotocol.proxy.health import HealthChecker
from metaprotocol.proxy.stats import ClusterStats
from metaprotocol.router.table import CompiledRoute
from metaprotocol.spi import (
    NEED_DATA,
    ClientCodec,
    CodecFactory,
    Correlation,
    ErrorKind,
    LocalError,
    LocalProtocolError,
    Message,
    MessageType,
    MetaProtocolError,
    ReadBuffer,
    RemoteProtocolError,
)
from metaprotocol.spi.codec import Mutation

Target = tuple[CompiledRoute, ClusterState, int]


class Overflow(Exception):  # noqa: N818 - Envoy's word for an open circuit breaker
    """A cluster's circuit breaker refused a request."""

_MAX_BACKOFF = 30.0
_EXCLUSIVE_MIN_CONNECTIONS = 64


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
            p.session.ctx.stats.mutations_dropped += 1
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
        cluster = pool.cluster
        index = pool.index
        by_id = pool.correlation is Correlation.REQUEST_ID
        exclusive = pool.correlation is Correlation.EXCLUSIVE
        detect = cluster.config.outlier_detection is not None
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
            if exclusive:
                pool.release(self, p)
            else:  # pool.release, inlined: the hot path
                cluster.active[index] -= 1
                cluster.in_flight -= 1
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


class EndpointPool:
    """Connections from one listener to one endpoint, for one upstream profile."""

    def __init__(
        self,
        upstreams: Upstreams,
        ctx: ListenerContext,
        cluster: ClusterState,
        index: int,
        profile: Hashable,
    ) -> None:
        self.upstreams = upstreams
        self.ctx = ctx
        self.io: ProxyIO = ctx.io
        self.cluster = cluster
        self.index = index
        self.endpoint = cluster.endpoints[index]
        self.endpoint_key = self.endpoint.key
        self.profile = profile
        self.name = f"{cluster.config.name}/{self.endpoint_key}"
        self.stats = upstreams.cluster_stats[cluster.config.name]
        self.correlation = ctx.correlation
        self.size = max(1, ctx.config.upstream_connections_per_endpoint)
        if self.correlation is Correlation.EXCLUSIVE:
            self.size = max(self.size, _EXCLUSIVE_MIN_CONNECTIONS)
        self.conns: list[UpstreamConnection] = []
        self.idle: list[UpstreamConnection] = []
        self.waiting: deque[tuple[Pending, Message, Mutation | None, bool]] = deque()
        self.rr = 0
        self.failures = 0
        self.draining = False  # replaced by a cluster update: finish what is in flight, take nothing new

    def send(self, p: Pending, msg: Message, mutation: Mutation | None, oneway: bool) -> None:
        """Queue ``msg`` on a connection of this pool.

        Raises:
            Overflow: the cluster's circuit breaker is open.
        """
        breakers = self.cluster.config.circuit_breakers
        if breakers is not None and not oneway:
            if breakers.max_requests and self.cluster.in_flight >= breakers.max_requests:
                raise Overflow("max requests")
            if breakers.max_pending_requests and len(self.waiting) >= breakers.max_pending_requests:
                raise Overflow("max pending requests")
        self.cluster.active[self.index] += 1
        self.cluster.in_flight += 1
        if self.correlation is Correlation.EXCLUSIVE:
            if self.idle:
                conn = self.idle.pop()
            elif len(self.conns) < self.size:
                conn = self._open()
            else:
                self.waiting.append((p, msg, mutation, oneway))
                return
        else:
            conns = self.conns
            if len(conns) < self.size:
                conn = self._open()
            else:
                self.rr += 1
                conn = conns[self.rr % len(conns)]
        conn.send(p, msg, mutation, oneway)
        if oneway:
            self.cluster.active[self.index] -= 1
            self.cluster.in_flight -= 1
            if self.correlation is Correlation.EXCLUSIVE:
                self.idle.append(conn)

    def _open(self) -> UpstreamConnection:
        conn = UpstreamConnection(self)
        self.conns.append(conn)
        self.stats.cx_total += 1
        cfg = self.cluster.config
        self.io.connect(conn, self.endpoint.address, self.endpoint.port, cfg.connect_timeout)
        return conn

    def release(self, conn: UpstreamConnection, p: Pending) -> None:
        """A request left ``conn`` (answered, failed or abandoned)."""
        self.cluster.active[self.index] -= 1
        self.cluster.in_flight -= 1
        if self.correlation is Correlation.EXCLUSIVE and not conn.closed:
            if self.waiting:
                nxt, msg, mutation, oneway = self.waiting.popleft()
                self.cluster.active[self.index] += 1
                self.cluster.in_flight += 1
                conn.send(nxt, msg, mutation, oneway)
            elif conn.outstanding == 0:
                self.idle.append(conn)

    def remove(self, conn: UpstreamConnection) -> None:
        """``conn`` is gone; requests waiting for a connection get a new one or fail."""
        if conn in self.conns:
            self.conns.remove(conn)
        if conn in self.idle:
            self.idle.remove(conn)
        if self.waiting and self.correlation is Correlation.EXCLUSIVE:
            nxt, msg, mutation, oneway = self.waiting.popleft()
            self.cluster.active[self.index] -= 1
            self.cluster.in_flight -= 1
            self.send(nxt, msg, mutation, oneway)

    def close(self) -> None:
        """Close every connection now (the proxy is closing)."""
        for conn in list(self.conns):
            if conn.transport is not None:
                conn.transport.close()  # type: ignore[attr-defined]

    def drain(self) -> None:
        """The cluster was replaced (new endpoints, labels or settings): new requests go to the
        new cluster's pools, and each connection of this one closes once its requests in flight
        are answered (or time out), so a configuration change never resets a request."""
        self.draining = True
        for conn in list(self.conns):
            conn.retire_if_idle()


class _Shadow:
    """Stands in for the client of a mirrored copy: whatever happens to the copy is dropped."""

    def __init__(self, session: object) -> None:
        self.codec = session.codec  # type: ignore[attr-defined]
        self.ctx = session.ctx  # type: ignore[attr-defined]
        self.closed = False

    def complete(self, p: Pending, response: Message) -> None:
        """A mirror's reply: read and discarded."""
        p.done = True

    def fail(self, p: Pending, kind: ErrorKind, message: str) -> None:
        """A mirror's failure never reaches the client."""
        p.done = True


class Upstreams:
    """All clusters and pools of a proxy, and the deadlines of requests in flight."""

    def __init__(self, io: ProxyIO, clusters: Mapping[str, ClusterConfig]) -> None:
        self.io = io
        self.clusters: dict[str, ClusterState] = {}
        self.cluster_stats: dict[str, ClusterStats] = {}
        self.pools: dict[tuple[str, str, int, Hashable], EndpointPool] = {}
        self.deadlines = DeadlineQueues()
        self.generation = 0  # bumped by every cluster update (cached decisions depend on it)
        self.health: dict[str, HealthChecker] = {}
        self.retired: list[EndpointPool] = []  # replaced pools finishing their requests in flight
        self.update_clusters(clusters)

    def stop_health_checks(self) -> None:
        """No more probes (the proxy is closing)."""
        for checker in self.health.values():
            checker.stop()
        self.health.clear()

    def watch_health(self, cluster: str, factory: CodecFactory) -> None:
        """Start active health checks of ``cluster`` with ``factory``'s probe, if its config asks
        for them and no checker runs for its current state (a replaced cluster's checker stops
        by itself)."""
        cs = self.clusters.get(cluster)
        if cs is None or cs.config.health_check is None:
            return
        current = self.health.get(cluster)
        if current is not None and current.cluster is cs:
            return
        checker = self.health[cluster] = HealthChecker(self, cs, factory)
        checker.start()

    def update_clusters(self, clusters: Mapping[str, ClusterConfig]) -> None:
        """Apply a new cluster set: unchanged clusters keep their state and pools."""
        self.generation += 1
        for name, cfg in clusters.items():
            current = self.clusters.get(name)
            if current is None or current.config != cfg:
                self.clusters[name] = ClusterState(cfg)
                self._close_pools(name)
            self.cluster_stats.setdefault(name, ClusterStats(name))
        for name in list(self.clusters):
            if name not in clusters:
                del self.clusters[name]
                self._close_pools(name)

    def _close_pools(self, cluster: str) -> None:
        self.retired = [pool for pool in self.retired if pool.conns]  # drained ones are gone
        for key in [k for k in self.pools if k[1] == cluster]:
            pool = self.pools.pop(key)
            pool.drain()
            if pool.conns:
                self.retired.append(pool)

    def close(self) -> None:
        """Close every upstream connection now, draining ones included (the proxy is closing)."""
        for pool in [*self.pools.values(), *self.retired]:
            pool.close()
        self.retired.clear()

    def resolve(self, ctx: ListenerContext, msg: Message) -> Target | Failure:
        """Route ``msg`` and pick its endpoint."""
        table = ctx.table
        route = table.match(msg.metadata) if table is not None else None
        if route is None:
            return Failure(LocalError(ErrorKind.ROUTE_NOT_FOUND, "no route matched"))
        cluster_name = route.pick_cluster(ctx.rng)
        cs = self.clusters.get(cluster_name)
        if cs is None:
            return Failure(
                LocalError(ErrorKind.CLUSTER_NOT_FOUND, f"unknown cluster {cluster_name}"),
                cluster_name,
            )
        action = route.rule.action
        key = None
        if cs.config.lb_policy in HASHING_POLICIES:
            md = msg.metadata
            names = action.hash_policy or ctx.factory.default_hash_policy
            values = [md[k] for k in names if k in md]
            if values:
                joined = values[0] if len(values) == 1 else "\x00".join(values)
                key = joined.encode("utf-8", "surrogateescape")
        index = cs.pick(action.subset, key, ctx.rng)
        if index is None:
            return Failure(
                LocalError(ErrorKind.NO_HEALTHY_UPSTREAM, f"no healthy upstream in {cluster_name}"),
                cluster_name,
            )
        return route, cs, index

    def dispatch(
        self, ctx: ListenerContext, p: Pending, msg: Message, now: float, oneway: bool
    ) -> Failure | None:
        """Route and send ``msg``; a Failure says why it could not be sent."""
        target = self.resolve(ctx, msg)
        if isinstance(target, Failure):
            return target
        fault = target[0].rule.fault
        if fault is not None and p.tries == 0:
            rng = ctx.rng
            if fault.abort_fraction and rng.random() < fault.abort_fraction:
                ctx.stats.faults_injected += 1
                return Failure(LocalError(ErrorKind(fault.abort_kind), "fault injected"), target[1].config.name)
            if fault.delay and fault.delay_fraction and rng.random() < fault.delay_fraction:
                ctx.stats.faults_injected += 1
                self.io.call_later(fault.delay, lambda: self._send_delayed(ctx, p, msg, target, oneway))
                return None
        self.send(ctx, p, msg, target, now, oneway)
        if target[0].rule.mirrors and p.tries == 0:
            self._mirror(ctx, p, msg, target[0], now)
        return None

    def _send_delayed(self, ctx: ListenerContext, p: Pending, msg: Message, target: Target, oneway: bool) -> None:
        if p.session.closed or p.done:
            return
        self.send(ctx, p, msg, target, self.io.now(), oneway)

    def _mirror(self, ctx: ListenerContext, p: Pending, msg: Message, route: CompiledRoute, now: float) -> None:
        """Copy ``msg`` to the route's mirror clusters; their replies and failures are dropped."""
        for policy in route.rule.mirrors:
            if policy.fraction < 1.0 and ctx.rng.random() >= policy.fraction:
                continue
            cs = self.clusters.get(policy.cluster)
            if cs is None:
                continue
            index = cs.pick((), None, ctx.rng)
            if index is None:
                continue
            ctx.stats.mirrored += 1
            shadow = Pending(_Shadow(p.session), msg, now)  # type: ignore[arg-type]
            self.send(ctx, shadow, msg, (route, cs, index), now, oneway=msg.type is MessageType.ONEWAY, mirror=True)

    def send(
        self,
        ctx: ListenerContext,
        p: Pending,
        msg: Message,
        target: Target,
        now: float,
        oneway: bool,
        mirror: bool = False,
    ) -> None:
        """Send ``msg`` to the target endpoint and track ``p``'s deadline."""
        route, cs, index = target
        p.route = route
        name = cs.config.name
        p.cluster = name
        if not mirror:
            ctx.stats.route_requests[route.name] += 1
        profile = p.session.codec.upstream_profile()
        key = (ctx.name, name, index, profile)
        pool = self.pools.get(key)
        if pool is None:
            pool = self.pools[key] = EndpointPool(self, ctx, cs, index, profile)
            if cs.config.health_check is not None:
                self.watch_health(name, ctx.factory)
        try:
            pool.send(p, msg, route.request_mutation, oneway)
        except Overflow as exc:
            pool.stats.errors["overflow"] += 1
            p.session.fail(p, ErrorKind.OVER_LIMIT, f"upstream overflow ({exc})")
            return
        except LocalProtocolError as exc:
            pool.cluster.active[index] -= 1
            pool.cluster.in_flight -= 1
            p.session.fail(p, ErrorKind.BAD_REQUEST, str(exc))
            return
        if not oneway and route.timeout > 0:
            self.deadlines.add(p, now, route.timeout)
            self.io.arm_sweeper()

    def sweep(self, now: float) -> None:
        """Expire overdue requests."""
        self.deadlines.sweep(now, self._expire)

    def outcome(self, pool: EndpointPool, ok: bool) -> None:
        """Feed outlier detection; an ejected endpoint comes back after its ejection time."""
        cs = pool.cluster
        index = pool.index
        if cs.record(index, ok):
            od = cs.config.outlier_detection
            assert od is not None  # noqa: S101
            pool.stats.errors["ejected"] += 1
            pool.io.report("outlier_ejected", f"{pool.name} after {od.consecutive_errors} consecutive errors")
            self.io.call_later(od.base_ejection_time * cs.ejections[index], lambda: cs.uneject(index))

    def _expire(self, item: Expirable) -> None:
        assert isinstance(item, Pending)  # noqa: S101
        if item.done:
            return
        conn = item.upstream
        if conn is not None:
            conn.pool.stats.errors[ErrorKind.UPSTREAM_TIMEOUT.value] += 1
            self.outcome(conn.pool, False)
            conn.abandon(item)
        item.session.fail(item, ErrorKind.UPSTREAM_TIMEOUT, "upstream request timeout")

    def endpoint_failed(self, pool: EndpointPool) -> None:
        """Take an endpoint out of balancing for a back-off period after a connect failure."""
        pool.failures += 1
        delay = min(_MAX_BACKOFF, 0.5 * 2 ** (pool.failures - 1))
        cs = pool.cluster
        index = pool.index
        if cs.set_healthy(index, False):
            self.io.call_later(delay, lambda: cs.set_healthy(index, True))

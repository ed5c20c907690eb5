"""The connections from one listener to one endpoint, and the cluster's in-flight accounting.

``EndpointPool`` is the one owner of ``ClusterState.active`` and ``in_flight``: a request is
counted when the pool takes it (``send``) and uncounted when it leaves (``release``), whatever
the path (reply, failure, timeout, one-way, an encoding refused), so the circuit breakers and the
least-request balancer always see what is really in flight.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from typing import TYPE_CHECKING

from metaprotocol.cluster.state import ClusterState
from metaprotocol.proxy.connection import UpstreamConnection
from metaprotocol.spi import Correlation, ErrorKind, LocalProtocolError, Message
from metaprotocol.spi.codec import Mutation

if TYPE_CHECKING:
    from metaprotocol.proxy.context import ListenerContext, Pending, ProxyIO
    from metaprotocol.proxy.upstream import Upstreams

_EXCLUSIVE_MIN_CONNECTIONS = 64


class Overflow(Exception):  # noqa: N818 - Envoy's word for an open circuit breaker
    """A cluster's circuit breaker refused a request."""


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

    def send(self, p: Pending, msg: Message, mutation: Mutation | None, oneway: bool) -> bool:
        """Take ``p`` (counted in flight until it leaves) and queue ``msg`` on a connection, or
        wait for one (EXCLUSIVE). False when it was refused: the circuit breaker is open, or the
        codec cannot encode it; ``p`` has then been failed."""
        cluster = self.cluster
        breakers = cluster.config.circuit_breakers
        if breakers is not None and not oneway:
            if breakers.max_requests and cluster.in_flight >= breakers.max_requests:
                return self._overflow(p, "max requests")
            if breakers.max_pending_requests and len(self.waiting) >= breakers.max_pending_requests:
                return self._overflow(p, "max pending requests")
        cluster.active[self.index] += 1
        cluster.in_flight += 1
        if self.correlation is Correlation.EXCLUSIVE:
            if self.idle:
                conn = self.idle.pop()
            elif len(self.conns) < self.size:
                conn = self._open()
            else:
                self.waiting.append((p, msg, mutation, oneway))
                return True
        else:
            conns = self.conns
            if len(conns) < self.size:
                conn = self._open()
            else:
                self.rr += 1
                conn = conns[self.rr % len(conns)]
        try:
            conn.send(p, msg, mutation, oneway)
        except LocalProtocolError as exc:
            self._refused(conn, p, exc)
            return False
        if oneway:  # nothing to wait for: it left as it was written
            self._vacate()
            if self.correlation is Correlation.EXCLUSIVE:
                self.idle.append(conn)
        return True

    def _send_on(self, conn: UpstreamConnection, p: Pending, msg: Message, mutation: Mutation | None, oneway: bool) -> bool:
        """``conn.send``; a request the codec cannot encode leaves the books and fails alone."""
        try:
            conn.send(p, msg, mutation, oneway)
        except LocalProtocolError as exc:
            self._refused(conn, p, exc)
            return False
        return True

    def _refused(self, conn: UpstreamConnection, p: Pending, exc: LocalProtocolError) -> None:
        """The codec cannot encode ``p``'s request: it leaves the books and fails alone."""
        self._vacate()
        if self.correlation is Correlation.EXCLUSIVE and not conn.closed and conn.outstanding == 0:
            self.idle.append(conn)
        p.session.fail(p, ErrorKind.BAD_REQUEST, str(exc))

    def _overflow(self, p: Pending, which: str) -> bool:
        self.stats.errors["overflow"] += 1
        p.session.fail(p, ErrorKind.OVER_LIMIT, f"upstream overflow ({which})")
        return False

    def _vacate(self) -> None:
        cluster = self.cluster
        cluster.active[self.index] -= 1
        cluster.in_flight -= 1

    def _open(self) -> UpstreamConnection:
        conn = UpstreamConnection(self)
        self.conns.append(conn)
        self.stats.cx_total += 1
        cfg = self.cluster.config
        self.io.connect(conn, self.endpoint.address, self.endpoint.port, cfg.connect_timeout)
        return conn

    def release(self, conn: UpstreamConnection, p: Pending) -> None:
        """A request left ``conn`` (answered, failed or abandoned); an EXCLUSIVE connection takes
        the next waiting request, or becomes idle."""
        cluster = self.cluster
        cluster.active[self.index] -= 1
        cluster.in_flight -= 1
        if self.correlation is Correlation.EXCLUSIVE and not conn.closed:
            if self.waiting:
                self._send_on(conn, *self.waiting.popleft())  # still counted: it was taken on arrival
            elif conn.outstanding == 0:
                self.idle.append(conn)

    def remove(self, conn: UpstreamConnection) -> None:
        """``conn`` is gone; a request waiting for a connection gets a new one."""
        if conn in self.conns:
            self.conns.remove(conn)
        if conn in self.idle:
            self.idle.remove(conn)
        if self.waiting and self.correlation is Correlation.EXCLUSIVE:
            self._send_on(self._open(), *self.waiting.popleft())

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

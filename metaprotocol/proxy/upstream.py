"""All clusters of a proxy: their state, connection pools, request deadlines, health checks and
outlier detection. Routing is the router stage's job (``routing.py``); connections and pools live
in ``connection.py`` and ``pool.py``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import TYPE_CHECKING

from metaprotocol.cluster.state import ClusterState
from metaprotocol.config.model import ClusterConfig
from metaprotocol.proxy.connection import UpstreamConnection
from metaprotocol.proxy.context import Pending, ProxyIO
from metaprotocol.proxy.deadlines import DeadlineQueues, Expirable
from metaprotocol.proxy.health import HealthChecker
from metaprotocol.proxy.pool import EndpointPool, Overflow
from metaprotocol.proxy.stats import ClusterStats
from metaprotocol.router.table import CompiledRoute
from metaprotocol.spi import CodecFactory, ErrorKind, Message

if TYPE_CHECKING:
    from metaprotocol.proxy.context import ListenerContext

Target = tuple[CompiledRoute, ClusterState, int]
"""Where a request goes: its route, cluster and endpoint index."""

_MAX_BACKOFF = 30.0


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
        self.listeners: set[ListenerContext] = set()  # their chains depend on the clusters (ListenerContext.close)
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
        for ctx in list(self.listeners):
            ctx.recompile()

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

    def send(self, ctx: ListenerContext, p: Pending, msg: Message, target: Target, now: float, oneway: bool, mirror: bool = False) -> None:
        """Send ``msg`` to the target endpoint (through its pool) and track ``p``'s deadline."""
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
        if pool.send(p, msg, route.request_mutation, oneway) and not oneway and route.timeout > 0:
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


__all__ = ["EndpointPool", "Overflow", "Target", "UpstreamConnection", "Upstreams"]

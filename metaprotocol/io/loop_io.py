"""``ProxyIO`` on an asyncio event loop."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any, Final

from metaprotocol.config.model import ClusterConfig, TcpKeepalive
from metaprotocol.io.log_limit import RateLimitedLog
from metaprotocol.io.tls import TlsConfigError, TlsManager
from metaprotocol.proxy.context import Flushable, ListenerContext
from metaprotocol.proxy.upstream import UpstreamConnection, Upstreams

log = logging.getLogger(__name__)


def _keepalive_of(conn: object) -> TcpKeepalive | None:
    """The cluster's keepalive settings for a traffic connection (probes have none)."""
    pool = getattr(conn, "pool", None)
    return pool.cluster.config.tcp_keepalive if pool is not None else None


def _cluster_of(conn: object) -> ClusterConfig | None:
    """The cluster a connection (a pool's, or a health-check probe's) is made for."""
    pool = getattr(conn, "pool", None)
    if pool is not None:
        return pool.cluster.config  # type: ignore[no-any-return]
    checker = getattr(conn, "checker", None)
    cluster = getattr(checker, "cluster", None)
    return getattr(cluster, "config", None)


def set_keepalive(sock: socket.socket | None, keepalive: TcpKeepalive) -> None:
    """SO_KEEPALIVE with Envoy's three knobs (0 leaves the kernel's default): a peer that vanished
    without a FIN (a crashed host, a dropped NAT entry) is then noticed on an idle connection."""
    if sock is None:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (
        (getattr(socket, "TCP_KEEPCNT", None), keepalive.probes),
        (getattr(socket, "TCP_KEEPIDLE", None), keepalive.time),
        (getattr(socket, "TCP_KEEPINTVL", None), keepalive.interval),
    ):
        if option is not None and value:
            sock.setsockopt(socket.IPPROTO_TCP, option, max(1, int(value)))

SWEEP_INTERVAL: Final = 0.01


class LoopIO:
    """Flush batching, connects and timers for the core, on one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.upstreams: Upstreams | None = None
        self._dirty: list[Flushable] = []
        self._flush_handle: asyncio.Handle | None = None
        self._sweeping = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._rls: dict[str, object] = {}
        self.events = RateLimitedLog(log, loop.time, loop.call_later)
        self.tls = TlsManager(loop, self.report)

    def now(self) -> float:
        """Monotonic seconds."""
        return self.loop.time()

    def schedule_flush(self, conn: Flushable) -> None:
        """Queue ``conn`` for the end-of-pass flush."""
        self._dirty.append(conn)
        if self._flush_handle is None:
            self._flush_handle = self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        dirty = self._dirty
        self._dirty = []
        for conn in dirty:
            conn.flush()

    def connect(self, conn: UpstreamConnection, address: str, port: int, timeout: float) -> None:
        """Open a connection in the background; ``conn`` learns the outcome."""
        task = self.loop.create_task(self._connect(conn, address, port, timeout))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(
        self, conn: UpstreamConnection, address: str, port: int, timeout: float
    ) -> None:
        cluster = _cluster_of(conn)
        if cluster is not None and cluster.tls is not None:
            await self._connect_tls(conn, cluster, address, port, timeout)
            return
        try:
            async with asyncio.timeout(timeout if timeout > 0 else None):
                transport, _ = await self.loop.create_connection(lambda: conn, address, port)  # type: ignore[type-var] # duck-typed protocol
            keepalive = _keepalive_of(conn)
            if keepalive is not None:
                set_keepalive(transport.get_extra_info("socket"), keepalive)
        except (OSError, TimeoutError) as exc:
            conn.connect_failed(exc)
        except asyncio.CancelledError:
            conn.connect_failed(ConnectionAbortedError("connect cancelled"))
            raise

    async def _connect_tls(self, conn: UpstreamConnection, cluster: ClusterConfig, address: str, port: int, timeout: float) -> None:
        """Connect, then the cluster's TLS handshake (SNI, CA, SAN match): ``conn`` is handed the
        TLS transport only once all of it succeeded; a failure is counted per cluster and reason."""
        assert cluster.tls is not None  # noqa: S101
        try:
            try:
                holder = self.tls.holder(cluster.tls)
            except TlsConfigError as exc:
                raise ConnectionError(f"cluster {cluster.name}: TLS context: {exc}") from exc
            tls, buffer = await self.tls.connect(address, port, holder, cluster.name, timeout)
            keepalive = cluster.tcp_keepalive if getattr(conn, "pool", None) is not None else None
            if keepalive is not None:
                set_keepalive(tls.get_extra_info("socket"), keepalive)
        except (OSError, TimeoutError) as exc:
            conn.connect_failed(exc)
            return
        except asyncio.CancelledError:
            conn.connect_failed(ConnectionAbortedError("connect cancelled"))
            raise
        buffer.hand_over(tls, conn)

    async def close(self) -> None:
        """Cancel connects and rate-limit calls still under way, and wait for them: a connect
        left pending (a peer dropping SYNs) would otherwise outlive the proxy and hold its event
        loop open for the kernel's whole SYN retry time."""
        self.tls.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def call_later(self, delay: float, callback: Callable[[], object]) -> None:
        """Run ``callback`` after ``delay`` seconds."""
        self.loop.call_later(delay, callback)

    def arm_sweeper(self) -> None:
        """Start the deadline sweeper if it is not running."""
        if not self._sweeping:
            self._sweeping = True
            self.loop.call_later(SWEEP_INTERVAL, self._sweep)

    def _sweep(self) -> None:
        upstreams = self.upstreams
        if upstreams is None:
            self._sweeping = False
            return
        upstreams.sweep(self.loop.time())
        if upstreams.deadlines.size:
            self.loop.call_later(SWEEP_INTERVAL, self._sweep)
        else:
            self._sweeping = False

    def report(self, event: str, detail: str, exc: BaseException | None = None) -> None:
        """Log an operator-visible event, rate-limited per event kind (a client sending garbage
        in a loop costs one summary line per interval, not a line per frame)."""
        self.events.emit(event, detail, exc)

    def rate_limit(self, ctx: ListenerContext, entries: list[tuple[str, str]], done: Callable[[bool], None]) -> None:
        """Call ShouldRateLimit on the listener's service; failures follow ``deny_on_fail``."""
        task = self.loop.create_task(self._rate_limit(ctx, entries, done))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _rate_limit(self, ctx: ListenerContext, entries: list[tuple[str, str]], done: Callable[[bool], None]) -> None:
        import grpc
        from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
        from envoy.service.ratelimit.v3 import rls_pb2

        config = ctx.global_limit
        assert config is not None and self.upstreams is not None  # noqa: S101
        allowed = not config.deny_on_fail
        try:
            stub = self._rls_stub(config.service_cluster)
            request = rls_pb2.RateLimitRequest(
                domain=config.domain,
                descriptors=[ratelimit_pb2.RateLimitDescriptor(entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key=k, value=v) for k, v in entries])],
                hits_addend=1,
            )
            response = await stub.ShouldRateLimit(request, timeout=config.timeout)
            allowed = response.overall_code != rls_pb2.RateLimitResponse.OVER_LIMIT
        except Exception as exc:  # noqa: BLE001 - unreachable, slow or broken: deny_on_fail decides
            reason = exc.code() if isinstance(exc, grpc.aio.AioRpcError) else exc
            log.warning("rate limit service %s: %s; %s", config.service_cluster, reason, "denying" if config.deny_on_fail else "allowing")
        done(allowed)

    def _rls_stub(self, cluster: str) -> Any:  # noqa: ANN401 - a generated gRPC stub (untyped)
        import grpc
        from envoy.service.ratelimit.v3 import rls_pb2_grpc

        assert self.upstreams is not None  # noqa: S101
        cs = self.upstreams.clusters.get(cluster)
        if cs is None or not cs.endpoints:
            raise LookupError(f"no cluster {cluster!r} for the rate limit service")
        ep = cs.endpoints[0]
        target = f"{ep.address}:{ep.port}"
        stub = self._rls.get(target)
        if stub is None:
            stub = self._rls[target] = rls_pb2_grpc.RateLimitServiceStub(grpc.aio.insecure_channel(target))
        return stub

"""Active health checks (Envoy's ``health_checks`` in spirit), with the probe made by the codec.

Each checked cluster has one ``HealthChecker``: every ``interval`` it opens a fresh connection to
each endpoint, sends the client codec's handshake and ``health_check_request()`` (a TCP connect
alone when the codec has no probe or the check asks for TCP), and waits ``timeout`` for the
replies. ``unhealthy_threshold`` failures in a row take the endpoint out of balancing;
``healthy_threshold`` successes in a row bring it back. Probes never share connections with
traffic, so a stalled traffic connection cannot make a probe pass, and a probe never delays a
request. The checker stops by itself once its cluster is replaced or removed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from metaprotocol.cluster.state import HEALTH_CHECK, ClusterState
from metaprotocol.config.model import HealthCheck, HealthCheckKind
from metaprotocol.spi import NEED_DATA, CodecFactory, Message, MessageType, MetaProtocolError, ReadBuffer

if TYPE_CHECKING:
    from metaprotocol.proxy.upstream import Upstreams


class HealthChecker:
    """Probes the endpoints of one cluster and marks them healthy or not."""

    def __init__(self, upstreams: Upstreams, cluster: ClusterState, factory: CodecFactory) -> None:
        assert cluster.config.health_check is not None  # noqa: S101 - only made for checked clusters
        self.upstreams = upstreams
        self.cluster = cluster
        self.factory = factory
        self.check: HealthCheck = cluster.config.health_check
        self.stats = upstreams.cluster_stats[cluster.config.name]
        n = len(cluster.endpoints)
        self.failures = [0] * n
        self.successes = [0] * n
        self.probing: list[_Probe | None] = [None] * n
        self.stopped = False

    @property
    def active(self) -> bool:
        """False once stopped (the proxy closes) or the cluster was replaced (new config) or
        removed: the checker then stops by itself."""
        return not self.stopped and self.upstreams.clusters.get(self.cluster.config.name) is self.cluster

    def stop(self) -> None:
        """No more probes; the ones under way are closed now (the proxy is closing)."""
        self.stopped = True
        for probe in self.probing:
            if probe is not None:
                probe.finish(False, "stopped")

    def start(self) -> None:
        """Probe every endpoint now, then every interval."""
        self._tick()

    def _tick(self) -> None:
        if not self.active:
            return
        for index in range(len(self.cluster.endpoints)):
            if self.probing[index] is None:
                self._probe(index)
        self.upstreams.io.call_later(self.check.interval, self._tick)

    def _probe(self, index: int) -> None:
        codec = self.factory.client_codec()
        payload: list[bytes] = []
        if self.check.kind is HealthCheckKind.CODEC:
            probe = codec.health_check_request()
            if probe is not None:
                payload = [*codec.handshake(), probe]
        probe_conn = _Probe(self, index, codec, payload)
        self.probing[index] = probe_conn
        endpoint = self.cluster.endpoints[index]
        io = self.upstreams.io
        io.connect(probe_conn, endpoint.address, endpoint.port, self.check.timeout)  # type: ignore[arg-type] # duck-typed protocol
        io.call_later(self.check.timeout, lambda: probe_conn.finish(False, "timed out"))

    def result(self, index: int, ok: bool, why: str) -> None:
        """One probe's outcome: count it and move the endpoint across the thresholds."""
        self.probing[index] = None
        if not self.active:
            return
        cluster = self.cluster
        name = f"{cluster.config.name}/{cluster.endpoints[index].key}"
        checked_down = bool(cluster.down[index] & HEALTH_CHECK)
        if ok:
            self.stats.health_check_successes += 1
            self.failures[index] = 0
            self.successes[index] += 1
            if checked_down and self.successes[index] >= self.check.healthy_threshold:
                cluster.mark(index, HEALTH_CHECK, False)
                self.upstreams.io.report("health_check_healthy", f"{name}: back in balancing")
        else:
            self.stats.health_check_failures += 1
            self.successes[index] = 0
            self.failures[index] += 1
            if not checked_down and self.failures[index] >= self.check.unhealthy_threshold:
                cluster.mark(index, HEALTH_CHECK, True)
                self.upstreams.io.report("health_check_unhealthy", f"{name}: {why}; out of balancing")


class _Probe:
    """One health-check connection (an asyncio protocol by duck typing)."""

    def __init__(self, checker: HealthChecker, index: int, codec: object, payload: list[bytes]) -> None:
        self.checker = checker
        self.index = index
        self.codec = codec
        self.payload = payload
        self.replies_left = len(payload)
        self.buffer = ReadBuffer()
        self.transport: object = None
        self.done = False

    def connection_made(self, transport: object) -> None:
        self.transport = transport
        if self.done:
            transport.close()  # type: ignore[attr-defined]
        elif not self.payload:
            self.finish(True, "connected")
        else:
            transport.writelines(self.payload)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self.done:
            return
        self.buffer.feed(data)
        buffer = self.buffer
        try:
            while self.replies_left and buffer.pos < len(buffer.data):
                msg = self.codec.decode(buffer)  # type: ignore[attr-defined]
                if msg is NEED_DATA:
                    return
                assert isinstance(msg, Message)  # noqa: S101 - narrows the sentinel
                # Any other message is the answer (a Dubbo heartbeat reply decodes as an EVENT):
                # a fresh probe connection has no subscriptions that could push one unasked.
                if msg.type is MessageType.ERROR:
                    self.finish(False, "error reply to the probe")
                    return
                self.replies_left -= 1
        except MetaProtocolError as exc:
            self.finish(False, f"malformed reply to the probe: {exc}")
            return
        except Exception as exc:  # noqa: BLE001 - a codec bug fails the probe, not the loop
            self.finish(False, f"probe reply could not be read: {type(exc).__name__}")
            return
        if not self.replies_left:
            self.finish(True, "answered")

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.finish(False, "connection closed")

    def connect_failed(self, exc: BaseException) -> None:
        self.finish(False, f"connect failed: {exc!r}")

    def pause_writing(self) -> None:
        """Probes are tiny: nothing to do."""

    def resume_writing(self) -> None:
        """See ``pause_writing``."""

    def finish(self, ok: bool, why: str) -> None:
        """The first outcome counts; later ones (the timeout timer, the close) are ignored."""
        if self.done:
            return
        self.done = True
        if self.transport is not None:
            self.transport.close()  # type: ignore[attr-defined]
        self.checker.result(self.index, ok, why)

"""What a session needs from its surroundings, and the per-request record.

``ProxyIO`` is the narrow interface through which the sans-IO core asks the IO layer for the
things only it can do: the time, a deferred flush, a connection, a timer. Tests implement it with
fakes and drive the core byte by byte.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from metaprotocol.config.model import HASHING_POLICIES, GlobalRateLimit, ListenerConfig, OverloadConfig
from metaprotocol.proxy.overload import Overload
from metaprotocol.proxy.policies import RateLimiter
from metaprotocol.router.matchers import compile_matcher
from metaprotocol.proxy.stats import ListenerStats
from metaprotocol.router.table import CompiledRoute, RouteTable
from metaprotocol.spi import CodecFactory, Correlation, LocalError, Message

if TYPE_CHECKING:
    from metaprotocol.cluster.state import ClusterState
    from metaprotocol.proxy.session import DownstreamSession
    from metaprotocol.proxy.upstream import UpstreamConnection, Upstreams


class Flushable(Protocol):
    """A connection that buffers writes until the end of an event-loop pass."""

    def flush(self) -> None:
        """Write everything buffered."""


class ProxyIO(Protocol):
    """Services the IO layer provides to the core."""

    def now(self) -> float:
        """Monotonic seconds."""

    def schedule_flush(self, conn: Flushable) -> None:
        """Call ``conn.flush()`` once before the event loop next waits for IO."""

    def connect(self, conn: UpstreamConnection, address: str, port: int, timeout: float) -> None:
        """Open a TCP connection with ``conn`` as its protocol; on failure ``conn.connect_failed``."""

    def call_later(self, delay: float, callback: Callable[[], object]) -> None:
        """Run ``callback`` after ``delay`` seconds."""

    def arm_sweeper(self) -> None:
        """Make sure request deadlines are being swept."""

    def report(self, event: str, detail: str, exc: BaseException | None = None) -> None:
        """Log an event worth an operator's attention (protocol errors, connect failures), with
        ``exc``'s traceback when given; rate-limited per event kind."""

    def rate_limit(self, ctx: ListenerContext, entries: list[tuple[str, str]], done: Callable[[bool], None]) -> None:
        """Ask the listener's rate limit service; ``done(allowed)`` runs later on the loop."""


class ListenerContext:
    """Everything sessions of one listener share. ``table`` is swapped whole on a route update."""

    def __init__(
        self,
        config: ListenerConfig,
        factory: CodecFactory,
        table: RouteTable | None,
        upstreams: Upstreams,
        io: ProxyIO,
        rng: random.Random | None = None,
        overload: Overload | None = None,
    ) -> None:
        self.config = config
        self.overload = overload if overload is not None else Overload(OverloadConfig())
        self.name = config.name
        self.factory = factory
        self.correlation = factory.correlation
        self.ordered_replies = factory.correlation is not Correlation.REQUEST_ID
        self.table = table
        self.upstreams = upstreams
        self.io = io
        self.rng = rng or random.Random()  # noqa: S311 - load balancing, not cryptography
        self.stats = ListenerStats(config.name, config.stat_prefix, factory.name)
        self.sessions: set[DownstreamSession] = set()
        self.draining = False
        self.limiter: RateLimiter | None = None
        if config.local_rate_limit is not None:
            self.limiter = RateLimiter(config.local_rate_limit, io.now())
        self.access_log: Callable[[dict[str, object]], None] | None = None
        self.global_limit: GlobalRateLimit | None = None
        self.global_match: tuple[Callable[[dict[str, str]], bool], ...] = ()
        self.apply_global_limit(config.global_rate_limit)
        self._pipeline_table: RouteTable | None = None
        self._pipeline_log: Callable[[dict[str, object]], None] | None = None
        self._pipeline_generation = -1
        self._pipeline_limiter: RateLimiter | None = None
        self._pipeline_global_limit: GlobalRateLimit | None = None
        self._pipeline_ok = False

    def forwards_pipelines(self) -> bool:
        """Whether consecutive plain requests may travel upstream as one unit (ORDERED codecs that
        implement ``ServerCodec.decode_run`` or ``batch``): only when no decision is made per request, i.e. one route
        catches everything and sends it to one non-hashing cluster without circuit breakers, with
        no mutation, mirror, retry, fault, rate limit or access log. Cached until the route table,
        the access log or the clusters change."""
        if (
            self.table is not self._pipeline_table
            or self.access_log is not self._pipeline_log
            or self.upstreams.generation != self._pipeline_generation
            or self.limiter is not self._pipeline_limiter
            or self.global_limit is not self._pipeline_global_limit
        ):
            self._pipeline_table, self._pipeline_log = self.table, self.access_log
            self._pipeline_limiter, self._pipeline_global_limit = self.limiter, self.global_limit
            self._pipeline_generation = self.upstreams.generation
            self._pipeline_ok = self._pipelines_allowed()
        return self._pipeline_ok

    def apply_global_limit(self, config: GlobalRateLimit | None) -> None:
        """Take a listener update's global rate limit (and its request matchers)."""
        self.global_limit = config
        self.global_match = tuple(compile_matcher(m) for m in config.match) if config else ()

    def _pipelines_allowed(self) -> bool:
        factory = self.factory
        if factory.correlation is not Correlation.ORDERED or factory.bound_upstream:
            return False
        if self.limiter is not None or self.global_limit is not None or self.access_log is not None:
            return False
        table = self.table
        if table is None or not table.routes:
            return False
        rule = table.routes[0].rule
        if rule.match or rule.request_mutation or rule.response_mutation or rule.mirrors or rule.retry or rule.fault:
            return False
        name = rule.action.cluster
        cs = self.upstreams.clusters.get(name) if name else None
        if cs is None:
            return False
        cfg = cs.config
        return cfg.lb_policy not in HASHING_POLICIES and cfg.circuit_breakers is None


class Pending:
    """One request in flight, from decode until its reply is queued for the client.

    For a split request the parent holds ``parts`` and collects their replies; each part is a
    Pending of its own with ``parent`` set.
    """

    __slots__ = (
        "batch_left",
        "batch_replies",
        "cluster",
        "count",
        "deadline",
        "done",
        "parent",
        "part_index",
        "part_replies",
        "parts_left",
        "reply",
        "request",
        "retry_cluster",
        "route",
        "session",
        "start",
        "tries",
        "upstream",
        "upstream_id",
    )

    def __init__(self, session: DownstreamSession, request: Message, start: float) -> None:
        self.session = session
        self.request = request
        self.start = start
        self.route: CompiledRoute | None = None
        self.cluster = ""
        self.deadline = 0.0
        self.done = False
        self.reply: bytes | bytearray | None = None
        self.upstream: UpstreamConnection | None = None
        self.upstream_id: int | None = None
        self.parent: Pending | None = None
        self.part_index = 0
        self.part_replies: list[Message | None] | None = None
        self.parts_left = 0
        self.tries = 0
        self.retry_cluster: ClusterState | None = None  # holds one of its active retries
        self.count = 1  # requests this Pending stands for (a forwarded pipeline: more than one)
        self.batch_left = 0
        self.batch_replies: list[bytes | bytearray | memoryview] | None = None

    def __repr__(self) -> str:
        return f"Pending({self.request!r}, done={self.done})"


class Failure:
    """Why a request could not be sent upstream, with the cluster it was headed to."""

    __slots__ = ("cluster", "error")

    def __init__(self, error: LocalError, cluster: str = "") -> None:
        self.error = error
        self.cluster = cluster

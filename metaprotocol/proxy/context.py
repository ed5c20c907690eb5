"""What a session needs from its surroundings, and the per-request record.

``ProxyIO`` is the narrow interface through which the sans-IO core asks the IO layer for the
things only it can do: the time, a deferred flush, a connection, a timer. Tests implement it with
fakes and drive the core byte by byte.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING, Final, Protocol

from metaprotocol.config.model import GlobalRateLimit, ListenerConfig, OverloadConfig
from metaprotocol.proxy.chain import Chain, StageBuilder, compile_chain
from metaprotocol.proxy.overload import Overload
from metaprotocol.proxy.policies import RateLimiter
from metaprotocol.proxy.stats import ListenerStats
from metaprotocol.router.matchers import Predicate, compile_matcher
from metaprotocol.router.table import CompiledRoute, RouteTable
from metaprotocol.spi import CodecFactory, Correlation, ErrorKind, LocalError, Message

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


class ProfileSource(Protocol):
    """The part of a server codec the upstream side reads."""

    def upstream_profile(self) -> Hashable:
        """The upstream connection kind the client's requests need."""


class Requester(Protocol):
    """Whoever waits for a request's outcome: a downstream session, or the sink of a mirrored
    copy (``mirror.MirrorSink``). What the upstream side needs of it, and nothing more."""

    @property
    def ctx(self) -> ListenerContext:
        """The listener the request came in on."""

    @property
    def closed(self) -> bool:
        """The client is gone: nothing it sent is worth finishing."""

    @property
    def codec(self) -> ProfileSource:
        """The client's codec: which upstream connection kind its requests need."""

    def complete(self, p: Pending, response: Message) -> None:
        """The upstream answered ``p``."""

    def fail(self, p: Pending, kind: ErrorKind, message: str) -> None:
        """``p`` failed upstream."""


class ListenerContext:
    """Everything sessions of one listener share, and the listener's compiled chain.

    Assigning ``table``, ``limiter``, ``access_log`` or a global limit (``apply_global_limit``)
    compiles a new chain, and so does a cluster update (``Upstreams.update_clusters``): what the
    request path runs is always what the configuration says."""

    def __init__(
        self,
        config: ListenerConfig,
        factory: CodecFactory,
        table: RouteTable | None,
        upstreams: Upstreams,
        io: ProxyIO,
        rng: random.Random | None = None,
        overload: Overload | None = None,
        stages: Sequence[StageBuilder] = (),
    ) -> None:
        self.config = config
        self.overload = overload if overload is not None else Overload(OverloadConfig())
        self.name = config.name
        self.factory = factory
        self.correlation = factory.correlation
        self.ordered_replies = factory.correlation is not Correlation.REQUEST_ID
        self.upstreams = upstreams
        self.io = io
        self.rng = rng or random.Random()  # noqa: S311 - load balancing, not cryptography
        self.stats = ListenerStats(config.name, config.stat_prefix, factory.name)
        self.sessions: set[DownstreamSession] = set()
        self.draining = False
        self.extra_stages = tuple(stages)  # the listener's own stages, before the router
        self._table = table
        self._limiter = RateLimiter(config.local_rate_limit, io.now()) if config.local_rate_limit is not None else None
        self._access_log: Callable[[dict[str, object]], None] | None = None
        self.global_limit: GlobalRateLimit | None = None
        self.global_match: tuple[Predicate, ...] = ()
        self.chain: Chain = _UNCOMPILED
        self.apply_global_limit(config.global_rate_limit)  # compiles the chain
        upstreams.listeners.add(self)

    def close(self) -> None:
        """The listener is gone: cluster updates no longer concern it."""
        self.upstreams.listeners.discard(self)

    def recompile(self) -> None:
        """Compile the chain the configuration needs now."""
        self.chain = compile_chain(self, self.extra_stages)

    @property
    def table(self) -> RouteTable | None:
        """The route table (swapped whole on a route update)."""
        return self._table

    @table.setter
    def table(self, table: RouteTable | None) -> None:
        self._table = table
        self.recompile()

    @property
    def limiter(self) -> RateLimiter | None:
        """The local rate limit, if any."""
        return self._limiter

    @limiter.setter
    def limiter(self, limiter: RateLimiter | None) -> None:
        self._limiter = limiter
        self.recompile()

    @property
    def access_log(self) -> Callable[[dict[str, object]], None] | None:
        """Where finished requests are logged, if anywhere."""
        return self._access_log

    @access_log.setter
    def access_log(self, log: Callable[[dict[str, object]], None] | None) -> None:
        self._access_log = log
        self.recompile()

    def forwards_pipelines(self) -> bool:
        """Whether runs of plain requests travel upstream as units (``Chain.forwards_pipelines``)."""
        return self.chain.forwards_pipelines

    def apply_global_limit(self, config: GlobalRateLimit | None) -> None:
        """Take a listener update's global rate limit (and its request matchers)."""
        self.global_limit = config
        self.global_match = tuple(compile_matcher(m) for m in config.match) if config else ()
        self.recompile()


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

    def __init__(self, session: Requester, request: Message, start: float) -> None:
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


_UNCOMPILED: Final = Chain((), (), False, None)  # the chain before the first compile


class Failure:
    """Why a request could not be sent upstream, with the cluster it was headed to."""

    __slots__ = ("cluster", "error")

    def __init__(self, error: LocalError, cluster: str = "") -> None:
        self.error = error
        self.cluster = cluster

"""A listener's compiled filter chain: the per-request stages it needs, in order, and nothing else.

Envoy's filter-chain idea. At configuration time (``ListenerContext`` recompiles whenever the
route table, a rate limit, the access log or a cluster changes) the listener's builders each
contribute a stage or nothing; the request path then runs exactly that tuple. A listener without
rate limits runs admission and the router: stages it does not use cost nothing.

Every stage says whether it decides per request (``per_request``). Forwarding a client's pipeline
as one unit (one route decision for a run of requests) is a property of the compiled chain:
allowed exactly when no stage decides per request. A new stage is therefore never bypassed by
forwarded pipelines: it takes part in that decision by being in the chain, not by being
remembered in a list of exceptions.

Order: local rate limit, admission (in-flight accounting, reply slot, overload), the RBAC
filters in their configured order (``rbac.py``), global rate limit, the listener's extra
stages, then the terminal stage: the
router (routing, faults, mirroring, fan-out, sending) or, in bound mode, the tunnel. Retries
re-enter the router only. ``on_finish`` hooks (the access log) run when a request completes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mypy_extensions import mypyc_attr

from metaprotocol.spi import Correlation, ErrorKind, LocalError, MessageType

if TYPE_CHECKING:
    from metaprotocol.config.model import GlobalRateLimit
    from metaprotocol.proxy.context import ListenerContext, Pending
    from metaprotocol.proxy.policies import RateLimiter
    from metaprotocol.proxy.routing import RouterStage
    from metaprotocol.proxy.session import DownstreamSession
    from metaprotocol.router.matchers import Predicate


@mypyc_attr(allow_interpreted_subclasses=True)  # listeners' own stages are plain Python classes
class Stage:
    """One per-request step. ``run`` returns True to go on to the next stage, False when it has
    taken the request over (answered it, or deferred it and will ``resume`` the chain)."""

    name = "stage"
    per_request = True
    """Whether the stage decides from each request (its metadata): forwarded pipelines, which
    carry a run of requests as one, are then off for the listener. True unless proven otherwise."""

    def run(self, session: DownstreamSession, p: Pending, now: float) -> bool:
        raise NotImplementedError

    def step(self) -> Step:
        """What the request path calls: ``run``, unless the stage has a cheaper equivalent."""
        return self.run


Step = Callable[["DownstreamSession", "Pending", float], bool]
"""A stage's ``run``, as the request path calls it."""

FinishHook = Callable[["Pending", "bytes | bytearray", float, str], None]
"""Called once per finished request with its reply, the time and its status (the access log)."""


@dataclass(frozen=True)
class Chain:
    """A listener's compiled stages."""

    stages: tuple[Stage, ...]
    on_finish: tuple[FinishHook, ...]
    forwards_pipelines: bool
    router: RouterStage | None  # None in bound mode
    steps: tuple[Step, ...] = ()  # the stages' ``run`` methods, bound once (what the request path calls)

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", tuple(s.step() for s in self.stages))

    def names(self) -> list[str]:
        """The stages' names in order (for the admin API and tests)."""
        return [str(_declared(s, "name", "stage")) for s in self.stages]


class LocalRateLimitStage(Stage):
    """Aeraki's local rate limit: a request over its bucket gets the protocol's over-limit error
    (a one-way request is dropped and counted)."""

    name = "local_rate_limit"

    def __init__(self, limiter: RateLimiter) -> None:
        self.limiter = limiter

    def run(self, session: DownstreamSession, p: Pending, now: float) -> bool:
        stats = session.ctx.stats
        msg = p.request
        if self.limiter.allow(msg.metadata, now):
            stats.rate_limit_ok += 1
            return True
        stats.rate_limited += 1
        stats.errors[ErrorKind.OVER_LIMIT.value] += 1
        if msg.type is not MessageType.ONEWAY:
            session.reply_locally(p, session.error_reply(msg, LocalError(ErrorKind.OVER_LIMIT, "rate limited")))
        return False


class Admission(Stage):
    """A two-way request enters the in-flight books (its reply slot in ordered mode, the
    connection's read pause) and the process's overload bound; one-way requests are counted
    only. Applies to a forwarded pipeline as a whole (it reads no metadata)."""

    name = "admission"
    per_request = False

    def run(self, session: DownstreamSession, p: Pending, now: float) -> bool:
        return session.admit(p, now)

    def step(self) -> Step:
        """``DownstreamSession.admit`` itself: the one stage every request runs costs one call."""
        from metaprotocol.proxy.session import DownstreamSession

        return DownstreamSession.admit


class GlobalRateLimitStage(Stage):
    """Envoy's global rate limit: requests matching the descriptor ask the rate limit service;
    the chain resumes (or answers over-limit) when it replies."""

    name = "global_rate_limit"

    def __init__(self, config: GlobalRateLimit, match: tuple[Predicate, ...], index: int) -> None:
        self.config = config
        self.match = match
        self.index = index  # this stage's place in the chain: where to resume

    def run(self, session: DownstreamSession, p: Pending, now: float) -> bool:
        md = p.request.metadata
        if not all(pred(md) for pred in self.match):
            return True
        entries = [(key, md[prop]) for prop, key in self.config.descriptors if prop in md]
        if not entries:
            return True
        ctx = session.ctx
        chain = ctx.chain
        ctx.io.rate_limit(ctx, entries, lambda allowed: self._answered(session, chain, p, allowed))
        return False

    def _answered(self, session: DownstreamSession, chain: Chain, p: Pending, allowed: bool) -> None:
        if session.closed:
            return
        stats = session.ctx.stats
        if not allowed:
            stats.rate_limited += 1
            if p.request.type is MessageType.ONEWAY:
                stats.errors[ErrorKind.OVER_LIMIT.value] += 1
            else:
                session.local_error(p, ErrorKind.OVER_LIMIT, "rate limited")
            session.flush()
            return
        stats.rate_limit_ok += 1
        session.resume(chain, p, self.index + 1)
        session.flush()


class Bind(Stage):
    """Bound mode's terminal stage: the first routed request opens the client's own upstream
    connection and everything after it passes through unparsed."""

    name = "bind"

    def __init__(self, router: RouterStage) -> None:
        self.router = router  # resolves the first request's endpoint; compiled with the chain

    def run(self, session: DownstreamSession, p: Pending, now: float) -> bool:
        session.bind(p.request, self.router)
        return False


StageBuilder = Callable[["ListenerContext", int], "Stage | list[Stage] | None"]
"""Makes a listener's stage(s) from its configuration (None or []: the listener does not need
any); the int is the position the first will have in the chain."""


def _local_rate_limit(ctx: ListenerContext, index: int) -> Stage | None:
    return LocalRateLimitStage(ctx.limiter) if ctx.limiter is not None else None


def _admission(ctx: ListenerContext, index: int) -> Stage | None:
    return None if ctx.factory.bound_upstream else Admission()


def _rbac(ctx: ListenerContext, index: int) -> list[Stage]:
    from metaprotocol.proxy.rbac import RbacStage  # rbac builds on this module

    if ctx.factory.bound_upstream:
        return []  # bound mode passes bytes through after the first request: nothing to authorize per request
    return [RbacStage(f, ctx.config.port) for f in ctx.config.rbac]


def _global_rate_limit(ctx: ListenerContext, index: int) -> Stage | None:
    if ctx.global_limit is None or ctx.factory.bound_upstream:
        return None
    return GlobalRateLimitStage(ctx.global_limit, ctx.global_match, index)


DEFAULT_BUILDERS: tuple[StageBuilder, ...] = (_local_rate_limit, _admission, _rbac, _global_rate_limit)


def compile_chain(ctx: ListenerContext, extra: Sequence[StageBuilder] = ()) -> Chain:
    """The chain ``ctx``'s configuration needs now."""
    from metaprotocol.proxy.routing import RouterStage  # routing imports the session's helpers

    stages: list[Stage] = []
    for build in (*DEFAULT_BUILDERS, *extra):
        built = build(ctx, len(stages))
        if isinstance(built, Stage):
            stages.append(built)
        elif built:
            stages.extend(built)
    router: RouterStage | None = None
    if ctx.factory.bound_upstream:
        stages.append(Bind(RouterStage(ctx)))
    else:
        router = RouterStage(ctx)
        stages.append(router)
    hooks: tuple[FinishHook, ...] = ()
    log = ctx.access_log
    if log is not None:
        hooks = (_access_log_hook(ctx.name, log),)
    factory = ctx.factory
    forwards = (
        factory.correlation is Correlation.ORDERED
        and not factory.bound_upstream
        and not hooks  # an access log writes one record per request
        and not any(_declared(s, "per_request", True) for s in stages)
    )
    return Chain(tuple(stages), hooks, forwards, router)


def _declared(stage: object, attribute: str, default: object) -> object:
    """A stage's class-level declaration, read the way Python reads it (a plain-Python stage's
    class attribute overrides the compiled base class's default)."""
    return getattr(stage, attribute, default)


def _access_log_hook(listener: str, log: Callable[[dict[str, object]], None]) -> FinishHook:
    def hook(p: Pending, reply: bytes | bytearray, now: float, status: str) -> None:
        log(log_record(listener, p, reply, now, status))

    return hook


def log_record(listener: str, p: Pending, reply: bytes | bytearray, now: float, status: str) -> dict[str, object]:
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

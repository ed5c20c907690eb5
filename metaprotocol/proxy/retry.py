"""Retries: whether a failed request is sent again, and the bookkeeping of Envoy's retry budget
(``max_retries`` circuit breaker, counted per cluster while a retry is outstanding)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from metaprotocol.spi import ErrorKind, MessageType

if TYPE_CHECKING:
    from metaprotocol.proxy.context import Pending
    from metaprotocol.proxy.session import DownstreamSession

# Failures of requests that never left the proxy: resending them is safe for any request.
NEVER_SENT = frozenset({ErrorKind.CONNECT_FAILURE.value, ErrorKind.NO_HEALTHY_UPSTREAM.value, ErrorKind.OVER_LIMIT.value})


def retry(session: DownstreamSession, p: Pending, reason: str) -> bool:
    """Send ``p`` again through the router when its route retries ``reason`` and tries are left;
    False leaves the failure to the caller."""
    route = p.route
    policy = route.rule.retry if route is not None else None
    if policy is None or reason not in policy.retry_on or p.tries >= policy.num_retries or session.closed or p.parent is not None:
        return False
    if p.request.type is not MessageType.REQUEST:
        return False  # one-way requests are not answered, so not retried
    ctx = session.ctx
    if reason not in NEVER_SENT and not policy.retry_non_idempotent and not session.codec.is_idempotent(p.request):
        ctx.stats.retries_not_idempotent += 1
        return False
    router = ctx.chain.router
    if router is None:
        return False
    upstreams = router.upstreams
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
    failure = router.dispatch(p, p.request, ctx.io.now(), oneway=False)
    if failure is not None:
        session.fail_with(p, failure)
    return True


def retry_over(session: DownstreamSession, p: Pending, ok: bool) -> None:
    """``p`` is finished: the retry it held (if any) no longer counts against its cluster."""
    cs = p.retry_cluster
    if cs is None:
        return
    cs.active_retries -= 1
    p.retry_cluster = None
    if ok:
        cstats = session.ctx.upstreams.cluster_stats.get(p.cluster)
        if cstats is not None:
            cstats.retry_successes += 1

"""The router: the terminal stage of a listener's chain, and the only place a request is routed.

It matches the route table, picks the cluster and endpoint (hashing where the cluster asks for
it), applies the route's fault injection, sends, mirrors and splits scatter-gather requests.
Retries come back here (``dispatch``), and only here: admission and rate limits are not run
again for a retry, as in Envoy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from metaprotocol.proxy import fanout
from metaprotocol.proxy.chain import Stage
from metaprotocol.proxy.context import Failure
from metaprotocol.proxy.mirror import MirrorSink
from metaprotocol.spi import ErrorKind, LocalError, MessageType

if TYPE_CHECKING:
    from metaprotocol.proxy.context import ListenerContext, Pending
    from metaprotocol.proxy.session import DownstreamSession
    from metaprotocol.proxy.upstream import Target
    from metaprotocol.spi import Message


class RouterStage(Stage):
    """Route, fault, mirror, fan out and send, with the route table and clusters of the moment it
    was compiled (a route or cluster update compiles a new chain)."""

    name = "router"

    def __init__(self, ctx: ListenerContext) -> None:
        self.ctx = ctx
        self.table = ctx.table
        self.upstreams = ctx.upstreams
        self.per_request = not self._one_destination()

    def _one_destination(self) -> bool:
        """Whether every request goes the same way with nothing decided from it: one route that
        catches everything, changes nothing and sends to one non-hashing cluster without circuit
        breakers (its requests may then travel as forwarded pipelines)."""
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
        return not cs.hashing and cs.config.circuit_breakers is None

    def run(self, session: DownstreamSession, p: Pending, now: float) -> bool:
        msg = p.request
        oneway = msg.type is MessageType.ONEWAY
        parts = msg.parts
        if parts and fanout.split(self, session, p, parts, now):
            return False
        failure = self.dispatch(p, msg, now, oneway)
        if failure is not None and not oneway:
            session.fail_with(p, failure)
        return False

    def resolve(self, msg: Message) -> Target | Failure:
        """Route ``msg`` and pick its endpoint."""
        ctx = self.ctx
        table = self.table
        route = table.match(msg.metadata) if table is not None else None
        if route is None:
            return Failure(LocalError(ErrorKind.ROUTE_NOT_FOUND, "no route matched"))
        cluster_name = route.pick_cluster(ctx.rng)
        cs = self.upstreams.clusters.get(cluster_name)
        if cs is None:
            return Failure(LocalError(ErrorKind.CLUSTER_NOT_FOUND, f"unknown cluster {cluster_name}"), cluster_name)
        action = route.rule.action
        key = None
        if cs.hashing:
            md = msg.metadata
            names = action.hash_policy or ctx.factory.default_hash_policy
            values = [md[k] for k in names if k in md]
            if values:
                joined = values[0] if len(values) == 1 else "\x00".join(values)
                key = joined.encode("utf-8", "surrogateescape")
        index = cs.pick(action.subset, key, ctx.rng)
        if index is None:
            return Failure(LocalError(ErrorKind.NO_HEALTHY_UPSTREAM, f"no healthy upstream in {cluster_name}"), cluster_name)
        return route, cs, index

    def dispatch(self, p: Pending, msg: Message, now: float, oneway: bool) -> Failure | None:
        """Route and send ``msg`` for ``p`` (its first try or a retry); a Failure says why it could
        not be sent."""
        target = self.resolve(msg)
        if isinstance(target, Failure):
            return target
        route = target[0]
        rule = route.rule
        first = p.tries == 0
        fault = rule.fault
        if fault is not None and first:
            ctx = self.ctx
            rng = ctx.rng
            if fault.abort_fraction and rng.random() < fault.abort_fraction:
                ctx.stats.faults_injected += 1
                return Failure(LocalError(ErrorKind(fault.abort_kind), "fault injected"), target[1].config.name)
            if fault.delay and fault.delay_fraction and rng.random() < fault.delay_fraction:
                ctx.stats.faults_injected += 1
                ctx.io.call_later(fault.delay, lambda: self._send_delayed(p, msg, target, oneway))
                return None
        self.upstreams.send(self.ctx, p, msg, target, now, oneway)
        if rule.mirrors and first:
            self._mirror(p, msg, target, now)
        return None

    def _send_delayed(self, p: Pending, msg: Message, target: Target, oneway: bool) -> None:
        if p.session.closed or p.done:
            return
        self.upstreams.send(self.ctx, p, msg, target, self.ctx.io.now(), oneway)

    def _mirror(self, p: Pending, msg: Message, target: Target, now: float) -> None:
        """Copy ``msg`` to the route's mirror clusters; their replies and failures are dropped."""
        ctx = self.ctx
        route = target[0]
        clusters = self.upstreams.clusters
        for policy in route.rule.mirrors:
            if policy.fraction < 1.0 and ctx.rng.random() >= policy.fraction:
                continue
            cs = clusters.get(policy.cluster)
            if cs is None:
                continue
            index = cs.pick((), None, ctx.rng)
            if index is None:
                continue
            ctx.stats.mirrored += 1
            copy = MirrorSink(p.session).pending(msg, now)
            self.upstreams.send(ctx, copy, msg, (route, cs, index), now, oneway=msg.type is MessageType.ONEWAY, mirror=True)

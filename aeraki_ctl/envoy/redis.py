"""Redis listeners for stock Envoy: ``envoy.filters.network.redis_proxy``.

redis_proxy routes a command by its key's prefix to one cluster; it has no RDS, so a route edit
is a listener update (see "Approximated"). What maps exactly:

- ``key`` by prefix -> ``prefix_routes.routes[]`` (``case_insensitive`` when the prefixes ignore
  case); a rule without a key condition, with ``key`` present, or with the prefix "" ->
  ``catch_all_route``. Our table is first-match, Envoy's longest-prefix: a rule whose prefix starts
  with an earlier rule's (or that follows a catch-all) never matches in ours, so it is left out
  (reported, non-fatal: Envoy would otherwise send its keys elsewhere); what is left routes the
  same under both rules.
- a single destination (or a split whose other destinations have weight 0);
- mirrors: ``request_mirror_policy`` per route (``runtime_fraction`` per million; reads and writes,
  as our proxy mirrors every command);
- faults on every route alike -> the listener's ``faults``: an abort fraction ``a`` is an ERROR
  fault of ``a``, a delay fraction ``d`` a DELAY fault of ``(1 - a) * d`` listed after it (Envoy
  injects at most one fault per command, in order, which gives our proxy's odds: abort first,
  else delay);
- the route timeout -> ``settings.op_timeout`` (one per listener);
- ring hash / Maglev clusters as they are (redis_proxy hashes the key); hash tags ``{}`` ->
  ``enable_hashtagging``;
- the codec's ``password`` -> ``downstream_auth_passwords``;
- listener TLS, connection limit and connection-level authorization (``network.py``).

Approximated (served, reported as non-fatal gaps):

- every listener: no RDS, so a route change is a listener update; Envoy gives it to new
  connections at once and drains the connections open before it (``--drain-time-s``), which
  keep the old routes until they close;
- routes left out because they can never match (above);
- different timeouts per route: the longest becomes ``op_timeout`` (no request is cut short);
  no timeout at all: ``op_timeout`` of one day (Envoy requires one);
- fault odds rounded to whole percents (Envoy's resolution), and an injected error reads
  ``Fault Injected: Error`` rather than our proxy's reply for its error kind;
- retries: redis_proxy does not retry;
- hashing: Envoy's ring (MurmurHash2 of the key, xxHash ring) places keys on other endpoints
  than our proxy's ring (the cluster's ``hash_function``): the same key may live on another
  shard when the two data planes share servers;
- ``max_bulk_length``: Envoy has its own request size limits;
- the listener-level items of ``network.py`` (idle timeout, access log, pooling knobs).

Approximated without a report (nothing in the configuration shows it): the commands each side
accepts (Envoy's redis_proxy has a fixed list and refuses the rest; our codec refuses only commands
that depend on connection state), and RESP3 (``HELLO 3``), which Envoy refuses.

Rejected for Envoy (fatal: the route would mean something else there):

- a weighted split (redis_proxy sends a prefix to one cluster);
- a condition on anything but the key (``command``...), or on the key other than by prefix or
  presence, or inverted; prefixes ignoring case mixed with case-sensitive ones;
- faults on some routes only (redis_proxy's faults apply to every command of the listener);
- a subset (no ``metadata_match`` in redis_proxy), a ``hash_policy`` other than the key on a
  hashing cluster, hashing clusters with different hash tags, or a tag other than ``{}``;
- request or response mutations;
- the codec's ``upstream_password``/``upstream_username`` (Envoy reads them from the cluster's
  ``RedisProtocolOptions``, which this translation does not write), ``db`` other than 0 (Envoy
  cannot SELECT), ``mode: bound``;
- rate limits and request-level authorization (``network.py``);
- a listener whose table is not given (``rds_name`` only: our proxy's RDS shape).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeAlias

from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_components_pb2
from envoy.extensions.filters.network.redis_proxy.v3 import redis_proxy_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import duration_pb2

from aeraki_ctl.envoy.common import EnvoyListener, Gap, route_path, typed
from aeraki_ctl.envoy.network import envoy_listener, fatal_first, listener_gaps, percent
from metaprotocol.config.model import HASHING_POLICIES, ClusterConfig, FaultPolicy, ListenerConfig, MatchKind, RouteRule

FILTER = "envoy.filters.network.redis_proxy"
NO_TIMEOUT = 86_400.0  # op_timeout when no route has a timeout (Envoy requires one)
Route: TypeAlias = redis_proxy_pb2.RedisProxy.PrefixRoutes.Route
Fault: TypeAlias = redis_proxy_pb2.RedisProxy.RedisFault


@dataclass
class _Prefix:
    """A rule's key condition: None for every key (catch-all), else the prefix."""

    prefix: str | None
    ignore_case: bool = False


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(round(seconds * 1e9))
    return d


def key_condition(i: int, rule: RouteRule, gaps: list[Gap]) -> _Prefix | None:
    """The key prefix of a rule (see the module docstring); None with a fatal gap when its match
    cannot be expressed."""
    path = route_path(i, rule, "match")
    out = _Prefix(None)
    ok = True
    keys = [m for m in rule.match if m.name == "key"]
    for m in rule.match:
        if m.name != "key":
            gaps.append(Gap(f"{path}.attributes.{m.name}", f"redis_proxy routes on the key prefix only: a condition on {m.name} cannot be expressed"))
            ok = False
    if len(keys) > 1:
        gaps.append(Gap(f"{path}.attributes.key", "several conditions on the key: redis_proxy has one prefix per route"))
        return None
    for m in keys:
        if m.invert or m.kind not in (MatchKind.PREFIX, MatchKind.PRESENT) or (m.kind is MatchKind.PRESENT and m.value == "false"):
            flags = " inverted" if m.invert else ""
            gaps.append(Gap(f"{path}.attributes.key", f"redis_proxy matches a key by prefix: key {m.kind.value}{flags} cannot be expressed"))
            ok = False
        elif m.kind is MatchKind.PREFIX and m.value:
            out = _Prefix(m.value, m.ignore_case)
    return out if ok else None


def _shadowed(p: _Prefix, earlier: list[tuple[int, _Prefix]]) -> int | None:
    """The earlier rule that takes every key ``p`` would match (first match wins), if any."""
    for j, q in earlier:
        if q.prefix is None:
            return j
        a, b = (p.prefix or "", q.prefix)
        if q.ignore_case:
            a, b = a.lower(), b.lower()
        if a.startswith(b):
            return j
    return None


def _cluster(i: int, rule: RouteRule, gaps: list[Gap]) -> str | None:
    a = rule.action
    if a.cluster is not None:
        return a.cluster
    served = [w for w in a.weighted_clusters if w.weight > 0]
    if len(served) == 1:
        return served[0].name
    split = ", ".join(f"{w.name} {w.weight}" for w in a.weighted_clusters)
    gaps.append(Gap(route_path(i, rule, "route"), f"redis_proxy sends a key prefix to one cluster: the weighted split ({split}) cannot be expressed"))
    return None


def _route(i: int, rule: RouteRule, prefix: str, clusters: Mapping[str, ClusterConfig], gaps: list[Gap]) -> Route | None:
    """One prefix route (mirrors included); None when its destination cannot be expressed."""
    cluster = _cluster(i, rule, gaps)
    a = rule.action
    if a.subset:
        gaps.append(Gap(route_path(i, rule, "route"), "redis_proxy has no endpoint subsets (metadata_match)"))
    hashing = [n for n in a.cluster_names() if n in clusters and clusters[n].lb_policy in HASHING_POLICIES]
    if hashing and a.hash_policy not in ((), ("key",)):
        gaps.append(Gap(route_path(i, rule, "route"), f"redis_proxy hashes the key: {', '.join(hashing)} cannot be balanced on {', '.join(a.hash_policy)}"))
    if rule.retry is not None:
        gaps.append(Gap(route_path(i, rule, "retry"), "redis_proxy does not retry: a failed command fails at once", fatal=False))
    for fname, json in (("request_mutation", "requestMutation"), ("response_mutation", "responseMutation")):
        if getattr(rule, fname):
            gaps.append(Gap(route_path(i, rule, json), "Redis commands carry no headers to mutate"))
    if cluster is None:
        return None
    out = Route(prefix=prefix, cluster=cluster)
    for m in rule.mirrors:
        out.request_mirror_policy.add(cluster=m.cluster).runtime_fraction.default_value.CopyFrom(percent(m.fraction))
    return out


def faults(used: list[tuple[int, RouteRule]], gaps: list[Gap]) -> list[Fault]:
    """The listener's faults: those of every route when they agree (see the module docstring)."""
    kinds = {r.fault for _, r in used}
    if kinds <= {None}:
        return []
    if len(kinds) > 1:
        for i, r in used:
            if r.fault is not None:
                gaps.append(Gap(route_path(i, r, "fault"), "redis_proxy's faults apply to every command of the listener: a fault on some routes only cannot be expressed"))
        return []
    f: FaultPolicy | None = next(iter(kinds))
    assert f is not None  # noqa: S101 - {None} was handled
    i, rule = used[0]
    out: list[Fault] = []
    odds = [(Fault.ERROR, f.abort_fraction, 0.0), (Fault.DELAY, (1.0 - f.abort_fraction) * f.delay_fraction if f.delay else 0.0, f.delay)]
    for kind, fraction, delay in odds:
        if fraction <= 0:
            continue
        pct = round(fraction * 100)
        if abs(pct - fraction * 100) > 1e-9:  # noqa: PLR2004
            gaps.append(Gap(route_path(i, rule, "fault"), f"Envoy injects Redis faults in whole percents: {fraction * 100:g} % becomes {pct} %", fatal=False))
        fault = Fault(fault_type=kind, fault_enabled=base_pb2.RuntimeFractionalPercent(default_value=percent_pb2.FractionalPercent(numerator=pct, denominator=percent_pb2.FractionalPercent.HUNDRED)))
        if delay:
            fault.delay.CopyFrom(_duration(delay))
        out.append(fault)
    if f.abort_fraction > 0:
        gaps.append(Gap(route_path(i, rule, "fault"), f"an injected error reads 'Fault Injected: Error' on Envoy, not our proxy's {f.abort_kind} reply", fatal=False))
    return out


def _codec(lst: ListenerConfig, proxy: redis_proxy_pb2.RedisProxy, gaps: list[Gap]) -> None:
    cfg = lst.codec.config
    if cfg.get("password") is not None:
        proxy.downstream_auth_passwords.add(inline_string=str(cfg["password"]))
    for key in ("upstream_password", "upstream_username"):
        if cfg.get(key) is not None:
            gaps.append(Gap(f"codec.{key}", "Envoy reads upstream credentials from the cluster's RedisProtocolOptions, which this translation does not write: upstream commands would be refused"))
    if cfg.get("db", 0) != 0:
        gaps.append(Gap("codec.db", f"redis_proxy cannot SELECT a database: db {cfg['db']} would be db 0 there"))
    if cfg.get("mode", "pooled") != "pooled":
        gaps.append(Gap("codec.mode", f"redis_proxy pools every client's commands: mode {cfg['mode']} (a connection per client) cannot be expressed"))
    if "max_bulk_length" in cfg:
        gaps.append(Gap("codec.max_bulk_length", "Envoy applies its own request size limits", fatal=False))


def _hashing(used: list[tuple[int, RouteRule]], clusters: Mapping[str, ClusterConfig], gaps: list[Gap]) -> bool:
    """Whether to enable hash tagging: the hashing clusters must agree on ``{}`` or no tag."""
    names = sorted({n for _, r in used for n in (*r.action.cluster_names(), *(m.cluster for m in r.mirrors))})
    hashing = [clusters[n] for n in names if n in clusters and clusters[n].lb_policy in HASHING_POLICIES]
    tags = {c.hash_tag for c in hashing}
    shared = [c for c in hashing if len(c.endpoints) > 1]
    if shared:
        where = ", ".join(c.name for c in shared)
        gaps.append(Gap("", f"Envoy places keys on {where} by its own ring (MurmurHash2 of the key on an xxHash ring), not our proxy's ({', '.join(sorted({c.hash_function for c in shared}))}): a key may live on another shard than through our proxy", fatal=False))
    if tags - {"", "{}"} or len(tags) > 1:
        gaps.append(Gap("", f"redis_proxy hash-tags with {{}} for every cluster or none: the hash tags {', '.join(sorted(repr(t) for t in tags))} of {', '.join(c.name for c in hashing)} cannot be expressed"))
    return tags == {"{}"}


def prefix_routes(lst: ListenerConfig, clusters: Mapping[str, ClusterConfig], gaps: list[Gap]) -> tuple[redis_proxy_pb2.RedisProxy.PrefixRoutes, list[tuple[int, RouteRule]]]:
    """The prefix routes and catch-all of the listener's table, and the rules they came from."""
    rules = lst.route_config.routes if lst.route_config is not None else ()
    out = redis_proxy_pb2.RedisProxy.PrefixRoutes()
    accepted: list[tuple[int, _Prefix]] = []
    used: list[tuple[int, RouteRule]] = []
    for i, rule in enumerate(rules):
        cond = key_condition(i, rule, gaps)
        if cond is None:
            continue
        j = _shadowed(cond, accepted)
        if j is not None:
            gaps.append(Gap(route_path(i, rule), f"never matches: {route_path(j, rules[j])} comes first and takes every key it would; left out (Envoy's longest-prefix match would send it keys)", fatal=False))
            continue
        accepted.append((i, cond))
        route = _route(i, rule, cond.prefix or "", clusters, gaps)
        used.append((i, rule))
        if route is None:
            continue
        if cond.prefix is None:
            out.catch_all_route.CopyFrom(route)
        else:
            out.routes.append(route)
    cases = {c.ignore_case for _, c in accepted if c.prefix is not None}
    if len(cases) > 1:
        gaps.append(Gap("spec.routes", "redis_proxy ignores case for every prefix or none: prefixes of both kinds cannot be expressed"))
    out.case_insensitive = cases == {True}
    return out, used


def settings(used: list[tuple[int, RouteRule]], gaps: list[Gap]) -> redis_proxy_pb2.RedisProxy.ConnPoolSettings:
    """``op_timeout`` from the routes' timeouts (one per listener)."""
    timeouts = sorted({r.action.timeout for _, r in used})
    longest = max(timeouts, default=0.0)
    if len(timeouts) > 1:
        told = ", ".join(f"{t:g} s" if t else "none" for t in timeouts)
        gaps.append(Gap("", f"redis_proxy has one timeout per listener: the routes' timeouts ({told}) become the longest", fatal=False))
    if 0.0 in timeouts:
        gaps.append(Gap("", f"redis_proxy requires a timeout: requests without one get {NO_TIMEOUT:g} s", fatal=False))
    if 0.0 in timeouts or not timeouts:
        longest = NO_TIMEOUT
    return redis_proxy_pb2.RedisProxy.ConnPoolSettings(op_timeout=_duration(longest))


def listener(lst: ListenerConfig, clusters: Mapping[str, ClusterConfig]) -> EnvoyListener:
    """``lst`` as a redis_proxy listener (its routes inline), or its fatal gaps."""
    gaps = listener_gaps(lst, "redis_proxy")
    gaps.append(Gap("", "redis_proxy has no RDS: a route change is a listener update, which Envoy gives to new connections while the open ones drain with the old routes (--drain-time-s)", fatal=False))
    if lst.route_config is None:
        gaps.append(Gap("", f"the listener's routes come over RDS ({lst.rds_name}) in our proxy's shape: aeraki-ctl must give the table itself to translate it"))
    routes, used = prefix_routes(lst, clusters, gaps)
    proxy = redis_proxy_pb2.RedisProxy(stat_prefix=lst.stat_prefix, prefix_routes=routes, settings=settings(used, gaps), faults=faults(used, gaps))
    proxy.settings.enable_hashtagging = _hashing(used, clusters, gaps)
    _codec(lst, proxy, gaps)
    gaps = fatal_first(gaps)
    if any(g.fatal for g in gaps):
        return EnvoyListener(None, gaps=gaps)
    return EnvoyListener(envoy_listener(lst, listener_components_pb2.Filter(name=FILTER, typed_config=typed(proxy))), gaps=gaps)

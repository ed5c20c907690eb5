"""Translation: Aeraki/Istio resources -> proxy configuration. Pure and deterministic.

Conventions follow Aeraki's (``internal/xds``): for every ServiceEntry port named
``tcp-metaprotocol-<protocol>[-...]`` one listener and one route table named ``<host>_<port>``;
clusters ``outbound|<port>||<host>`` (all endpoints) and ``outbound|<port>|<subset>|<host>`` per
DestinationRule subset; a MetaRouter's weighted destinations become weighted clusters;
``trafficPolicy.loadBalancer.consistentHash.httpHeaderName`` becomes a hash policy on a
RING_HASH (or MAGLEV) cluster; with no MetaRouter (or no routes) a single ``default`` route sends
everything to the whole service.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aeraki_ctl.resources import BUILTIN_PROTOCOLS, Problem, Resource, ResourceSet
from metaprotocol.config.model import (
    AttributeMatcher,
    CircuitBreakers,
    GlobalRateLimit,
    OutlierDetection,
    Bootstrap,
    ClusterConfig,
    CodecRef,
    Endpoint,
    LbPolicy,
    ListenerConfig,
    LocalRateLimit,
    MatchKind,
    MirrorPolicy,
    RateLimitCondition,
    RouteAction,
    RouteConfig,
    RouteRule,
    TcpKeepalive,
    TokenBucket,
    WeightedCluster,
)

PORT_PREFIX = "tcp-metaprotocol-"
_SIMPLE_LB = {"ROUND_ROBIN": LbPolicy.ROUND_ROBIN, "LEAST_REQUEST": LbPolicy.LEAST_REQUEST, "LEAST_CONN": LbPolicy.LEAST_REQUEST, "RANDOM": LbPolicy.RANDOM, "UNSPECIFIED": LbPolicy.ROUND_ROBIN}


@dataclass(frozen=True)
class Options:
    """Where the generated listeners bind: ``listen_address`` and ``port_offset`` added to the
    service port (so one proxy on a host can listen beside the real services)."""

    listen_address: str = "127.0.0.1"
    port_offset: int = 0


@dataclass
class Translation:
    """The configuration and the problems met while making it."""

    bootstrap: Bootstrap
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        """Problems that made something be skipped."""
        return [p for p in self.problems if p.fatal]


@dataclass
class _Service:
    host: str
    port: int
    port_name: str
    protocol: str
    codec: str
    endpoints: list[Endpoint]
    resource: Resource


def cluster_name(port: int, subset: str, host: str) -> str:
    """Istio's cluster name."""
    return f"outbound|{port}|{subset}|{host}"


def translate(resources: ResourceSet, options: Options | None = None) -> Translation:
    """Resources -> Bootstrap (listeners, route tables, clusters)."""
    opts = options or Options()
    problems = list(resources.problems)
    codecs = dict(BUILTIN_PROTOCOLS)
    for ap in resources.of("ApplicationProtocol"):
        protocol, codec = ap.spec.get("protocol"), ap.spec.get("codec")
        if not protocol or not codec:
            problems.append(Problem(ap.source, ap.ref, "protocol and codec are required"))
            continue
        codecs[str(protocol)] = str(codec)
    services = _services(resources, codecs, problems)
    rules = {(dr.spec.get("host")): dr for dr in resources.of("DestinationRule")}
    routers = _routers(resources, problems)
    listeners: list[ListenerConfig] = []
    clusters: dict[str, ClusterConfig] = {}
    hosts = {s.host for s in services}
    for svc in services:
        dr = rules.get(svc.host)
        subsets, policy, hash_key = _destination_rule(dr, problems)
        for name, cfg in _clusters(svc, subsets, policy, hash_key, problems).items():
            clusters[name] = cfg
        router = routers.get(svc.host)
        routes = None
        limit = None
        global_limit = None
        if router is not None:
            routes = _routes(router, svc, hosts, subsets, hash_key, services, problems)
            limit = _local_rate_limit(router, problems)
            global_limit = _global_rate_limit(router, resources, clusters, problems)
        if not routes:
            action = RouteAction(cluster=cluster_name(svc.port, "", svc.host), hash_policy=(hash_key,) if hash_key else ())
            routes = (RouteRule("default", (), action),)
        name = f"{svc.host}_{svc.port}"
        listeners.append(
            ListenerConfig(
                name=name,
                address=opts.listen_address,
                port=svc.port + opts.port_offset,
                codec=CodecRef(svc.codec),
                stat_prefix=cluster_name(svc.port, "", svc.host),
                route_config=RouteConfig(name, routes),
                local_rate_limit=limit,
                global_rate_limit=global_limit,
            )
        )
    # Subset clusters of destinations in other services are made with those services above.
    return Translation(Bootstrap(tuple(listeners), tuple(clusters[k] for k in sorted(clusters)), None, "aeraki-ctl"), problems)


def _services(resources: ResourceSet, codecs: Mapping[str, str], problems: list[Problem]) -> list[_Service]:
    out = []
    seen: set[tuple[str, int]] = set()
    for se in resources.of("ServiceEntry"):
        hosts = se.spec.get("hosts") or []
        if not hosts:
            problems.append(Problem(se.source, se.ref, "hosts is required"))
            continue
        host = str(hosts[0])
        for p in se.spec.get("ports") or []:
            pname = str(p.get("name", ""))
            if not pname.startswith(PORT_PREFIX):
                continue
            tokens = pname.split("-")
            protocol = tokens[2] if len(tokens) > 2 else ""  # noqa: PLR2004 - Aeraki reads the third token
            codec = codecs.get(protocol)
            if codec is None:
                problems.append(Problem(se.source, se.ref, f"port {pname}: unknown application protocol {protocol!r} (add an ApplicationProtocol)"))
                continue
            try:
                number = int(p["number"])
            except (KeyError, TypeError, ValueError):
                problems.append(Problem(se.source, se.ref, f"port {pname}: number is required"))
                continue
            if (host, number) in seen:
                problems.append(Problem(se.source, se.ref, f"{host}:{number} is defined twice (ignored here)"))
                continue
            seen.add((host, number))
            endpoints = []
            for e in se.spec.get("endpoints") or []:
                address = e.get("address")
                if not address:
                    problems.append(Problem(se.source, se.ref, "an endpoint without address is ignored", fatal=False))
                    continue
                ports = e.get("ports") or {}
                eport = int(ports.get(pname, ports.get(protocol, number)))
                labels = tuple(sorted((str(k), str(v)) for k, v in (e.get("labels") or {}).items()))
                endpoints.append(Endpoint(str(address), eport, int(e.get("weight", 1) or 1), labels))
            out.append(_Service(host, number, pname, protocol, codec, endpoints, se))
    return sorted(out, key=lambda s: (s.host, s.port))


def _routers(resources: ResourceSet, problems: list[Problem]) -> dict[str, Resource]:
    out: dict[str, Resource] = {}
    for mr in resources.of("MetaRouter"):
        hosts = mr.spec.get("hosts") or []
        if not hosts:
            problems.append(Problem(mr.source, mr.ref, "hosts is required"))
            continue
        host = str(hosts[0])
        if host in out:
            problems.append(Problem(mr.source, mr.ref, f"another MetaRouter ({out[host].ref}) already targets {host}; this one is ignored"))
            continue
        out[host] = mr
    return out


_Resilience = tuple[CircuitBreakers | None, OutlierDetection | None, TcpKeepalive | None]


def _keepalive(pool: Mapping[str, Any], dr: Resource, problems: list[Problem]) -> TcpKeepalive | None:
    """``connectionPool.tcp.tcpKeepalive`` (``probes``, ``time``, ``interval``): Envoy's
    upstream_connection_options.tcp_keepalive, in whole seconds as Istio sends it."""
    spec = (pool.get("tcp") or {}).get("tcpKeepalive")
    if spec is None:
        return None
    from metaprotocol.config.bootstrap import _DURATION, _UNITS

    try:
        if not isinstance(spec, Mapping):
            raise ValueError("expected a mapping")
        probes = int(spec.get("probes", 0) or 0)
        if probes < 0:
            raise ValueError("probes must not be negative")
        seconds = []
        for key in ("time", "interval"):
            text = str(spec.get(key) or "0s").strip()
            match = _DURATION.match(text)
            if match is None:
                raise ValueError(f"{key} {text!r} is not a duration")
            value = float(match.group(1)) * _UNITS[match.group(2)]
            if value != int(value):
                problems.append(Problem(dr.source, dr.ref, f"connectionPool.tcp.tcpKeepalive.{key} {text}: whole seconds are used ({int(value)}s)", fatal=False))
            seconds.append(float(int(value)))  # Istio truncates to seconds
    except (TypeError, ValueError) as exc:
        problems.append(Problem(dr.source, dr.ref, f"connectionPool.tcp.tcpKeepalive: {exc}; ignored"))
        return None
    return TcpKeepalive(probes, seconds[0], seconds[1])


def _resilience(tp: Mapping[str, Any], dr: Resource, problems: list[Problem], inherited: _Resilience = (None, None, None)) -> _Resilience:
    """DestinationRule connectionPool and outlierDetection, as Istio maps them to Envoy clusters.

    As Istio merges a subset's policy into the top-level one, each of the two a subset's policy
    sets replaces the ``inherited`` one, the other is kept.
    """
    pool = tp.get("connectionPool") or {}
    od = tp.get("outlierDetection") or {}
    breakers, outlier, keepalive = inherited
    if pool:
        http = pool.get("http") or {}
        breakers = CircuitBreakers(
            int(http.get("http2MaxRequests", 0) or 0), int(http.get("http1MaxPendingRequests", 0) or 0), int(http.get("maxRetries", 0) or 0)
        )
        if (pool.get("tcp") or {}).get("maxConnections"):
            problems.append(Problem(dr.source, dr.ref, "connectionPool.tcp.maxConnections is not enforced (connections are shared)", fatal=False))
        keepalive = _keepalive(pool, dr, problems)
    if od:
        from metaprotocol.config.bootstrap import _DURATION, _UNITS

        ejection = _DURATION.match(str(od.get("baseEjectionTime", "30s")))
        outlier = OutlierDetection(
            int(od.get("consecutive5xxErrors", od.get("consecutiveErrors", od.get("consecutiveGatewayErrors", 5)))),
            float(ejection.group(1)) * _UNITS[ejection.group(2)] if ejection else 30.0,
            int(od.get("maxEjectionPercent", 10)),
        )
    return breakers, outlier, keepalive


def _destination_rule(dr: Resource | None, problems: list[Problem]) -> tuple[dict[str, dict[str, Any]], LbPolicy, str]:
    if dr is None:
        return {}, LbPolicy.ROUND_ROBIN, ""
    policy, hash_key = _lb(dr.spec.get("trafficPolicy") or {}, dr, problems)
    resilience = _resilience(dr.spec.get("trafficPolicy") or {}, dr, problems)
    subsets: dict[str, dict[str, Any]] = {"": {"labels": {}, "policy": policy, "hash": hash_key, "resilience": resilience}}
    for s in dr.spec.get("subsets") or []:
        name = s.get("name")
        if not name:
            problems.append(Problem(dr.source, dr.ref, "a subset without name is ignored"))
            continue
        sub_policy, sub_hash = _lb(s.get("trafficPolicy") or {}, dr, problems)
        sub_tp = s.get("trafficPolicy") or {}
        subsets[str(name)] = {
            "labels": {str(k): str(v) for k, v in (s.get("labels") or {}).items()},
            "policy": sub_policy if s.get("trafficPolicy") else policy,
            "hash": sub_hash or hash_key,
            "resilience": _resilience(sub_tp, dr, problems, resilience),
        }
    return subsets, policy, hash_key


def _lb(tp: Mapping[str, Any], dr: Resource, problems: list[Problem]) -> tuple[LbPolicy, str]:
    lb = tp.get("loadBalancer") or {}
    if "consistentHash" in lb:
        ch = lb["consistentHash"] or {}
        key = ch.get("httpHeaderName")
        if not key:
            problems.append(Problem(dr.source, dr.ref, "consistentHash supports httpHeaderName (a metadata key) only"))
            return LbPolicy.ROUND_ROBIN, ""
        return (LbPolicy.MAGLEV if "maglev" in ch else LbPolicy.RING_HASH), str(key).lower()
    simple = str(lb.get("simple", "ROUND_ROBIN")).upper()
    if simple not in _SIMPLE_LB:
        problems.append(Problem(dr.source, dr.ref, f"loadBalancer.simple {simple} is not supported (ROUND_ROBIN used)", fatal=False))
    for unsupported in ("tls", "portLevelSettings"):
        if unsupported in tp:
            problems.append(Problem(dr.source, dr.ref, f"trafficPolicy.{unsupported} is not enforced yet", fatal=False))
    return _SIMPLE_LB.get(simple, LbPolicy.ROUND_ROBIN), ""


def _clusters(svc: _Service, subsets: Mapping[str, Mapping[str, Any]], policy: LbPolicy, hash_key: str, problems: list[Problem]) -> dict[str, ClusterConfig]:
    breakers, outlier, keepalive = subsets[""]["resilience"] if "" in subsets else (None, None, None)
    out = {
        cluster_name(svc.port, "", svc.host): ClusterConfig(
            cluster_name(svc.port, "", svc.host), tuple(svc.endpoints), policy, circuit_breakers=breakers, outlier_detection=outlier, tcp_keepalive=keepalive
        )
    }
    for name, sub in subsets.items():
        if not name:
            continue
        wanted = set(sub["labels"].items())
        members = tuple(e for e in svc.endpoints if wanted <= set(e.labels))
        if not members:
            problems.append(Problem(svc.resource.source, svc.resource.ref, f"subset {name} of {svc.host} selects no endpoint", fatal=False))
        cname = cluster_name(svc.port, name, svc.host)
        sub_breakers, sub_outlier, sub_keepalive = sub["resilience"]
        out[cname] = ClusterConfig(cname, members, sub["policy"], circuit_breakers=sub_breakers, outlier_detection=sub_outlier, tcp_keepalive=sub_keepalive)
    return out


def _routes(
    mr: Resource,
    svc: _Service,
    hosts: set[str],
    subsets: Mapping[str, Any],
    hash_key: str,
    services: list[_Service],
    problems: list[Problem],
) -> tuple[RouteRule, ...] | None:
    """The MetaRouter's routes for one service port; None (and a problem) when it is invalid."""
    rules = []
    for i, route in enumerate(mr.spec.get("routes") or []):
        where = f"routes[{i}]" + (f" ({route.get('name')})" if route.get("name") else "")
        try:
            matchers = tuple(_matchers(route.get("match") or {}))
            destinations = route.get("route") or []
            if not destinations:
                raise ValueError("route needs at least one destination")
            weighted = []
            for d in destinations:
                dest = d.get("destination") or {}
                host = dest.get("host")
                if host not in hosts:
                    raise ValueError(f"unknown destination host {host!r}")
                subset = str(dest.get("subset", "") or "")
                port = int((dest.get("port") or {}).get("number", svc.port))
                if host == svc.host and subset and subset not in subsets:
                    raise ValueError(f"unknown subset {subset!r} of {host}")
                if not any(s.host == host and s.port == port for s in services):
                    raise ValueError(f"{host} has no MetaProtocol port {port}")
                weighted.append(WeightedCluster(cluster_name(port, subset, str(host)), int(d.get("weight", 100 if len(destinations) == 1 else 0))))
            if len(weighted) > 1 and sum(w.weight for w in weighted) != 100:  # noqa: PLR2004
                raise ValueError(f"weights sum to {sum(w.weight for w in weighted)}, not 100")
        except ValueError as exc:
            problems.append(Problem(mr.source, mr.ref, f"{where}: {exc}; the MetaRouter is skipped"))
            return None
        mirrors: tuple[MirrorPolicy, ...] = ()
        if route.get("mirror"):
            m = route["mirror"] or {}
            if m.get("host") not in hosts:
                problems.append(Problem(mr.source, mr.ref, f"{where}: unknown mirror host {m.get('host')!r}; the MetaRouter is skipped"))
                return None
            mport = int((m.get("port") or {}).get("number", svc.port))
            percentage = route.get("mirrorPercentage")
            fraction = float((percentage or {}).get("value", 100.0)) / 100.0
            mirrors = (MirrorPolicy(cluster_name(mport, str(m.get("subset", "") or ""), str(m["host"])), max(0.0, min(1.0, fraction))),)
        action = (
            RouteAction(cluster=weighted[0].name, hash_policy=(hash_key,) if hash_key else ())
            if len(weighted) == 1
            else RouteAction(weighted_clusters=tuple(weighted), hash_policy=(hash_key,) if hash_key else ())
        )
        rules.append(
            RouteRule(
                name=str(route.get("name", f"route-{i}")),
                match=matchers,
                action=action,
                request_mutation=tuple((str(kv["key"]), str(kv.get("value", ""))) for kv in route.get("requestMutation") or []),
                response_mutation=tuple((str(kv["key"]), str(kv.get("value", ""))) for kv in route.get("responseMutation") or []),
                mirrors=mirrors,
            )
        )
    return tuple(rules)


def _bucket(spec: Mapping[str, Any]) -> TokenBucket:
    from metaprotocol.config.bootstrap import _DURATION, _UNITS

    interval = str(spec.get("fillInterval", "1s"))
    m = _DURATION.match(interval)
    if m is None:
        raise ValueError(f"bad fillInterval {interval!r}")
    seconds = float(m.group(1)) * _UNITS[m.group(2)]
    max_tokens = int(spec.get("maxTokens", 0))
    per_fill = int(spec.get("tokensPerFill", 1) or 1)
    if max_tokens < 1 or seconds < 0.05:  # noqa: PLR2004 - Aeraki's rules
        raise ValueError("maxTokens must be positive and fillInterval at least 50ms")
    return TokenBucket(max_tokens, per_fill, seconds)


def _local_rate_limit(mr: Resource, problems: list[Problem]) -> LocalRateLimit | None:
    """MetaRouter.localRateLimit: a default token bucket and ordered conditions."""
    spec = mr.spec.get("localRateLimit")
    if not spec:
        return None
    try:
        default = _bucket(spec["tokenBucket"]) if spec.get("tokenBucket") else None
        conditions = tuple(RateLimitCondition(tuple(_matchers(c.get("match") or {})), _bucket(c.get("tokenBucket") or {})) for c in spec.get("conditions") or [])
    except (ValueError, KeyError, TypeError) as exc:
        problems.append(Problem(mr.source, mr.ref, f"localRateLimit: {exc}; ignored"))
        return None
    if default is None and not conditions:
        problems.append(Problem(mr.source, mr.ref, "localRateLimit needs tokenBucket or conditions; ignored"))
        return None
    return LocalRateLimit(conditions, default)


def _global_rate_limit(mr: Resource, resources: ResourceSet, clusters: dict[str, ClusterConfig], problems: list[Problem]) -> GlobalRateLimit | None:
    """MetaRouter.globalRateLimit; the service's cluster (``outbound|<port>||<host>``) is made from
    its ServiceEntry, whatever the port's protocol."""
    spec = mr.spec.get("globalRateLimit")
    if not spec:
        return None
    service = str(spec.get("rateLimitService", ""))
    parts = service.split("|")
    host, port = (parts[3], parts[1]) if len(parts) == 4 else ("", "")  # noqa: PLR2004
    se = next((r for r in resources.of("ServiceEntry") if host in (r.spec.get("hosts") or [])), None)
    if se is None or not port.isdigit():
        problems.append(Problem(mr.source, mr.ref, f"globalRateLimit: rateLimitService {service!r} is not outbound|<port>||<host> of a known ServiceEntry; ignored"))
        return None
    port_name = next((str(p.get("name", "")) for p in se.spec.get("ports") or [] if int(p.get("number", 0)) == int(port)), "")
    endpoints = tuple(
        Endpoint(str(e["address"]), int((e.get("ports") or {}).get(port_name, port)))
        for e in se.spec.get("endpoints") or [] if e.get("address")
    )  # fmt: skip
    clusters.setdefault(service, ClusterConfig(service, endpoints))
    from metaprotocol.config.bootstrap import _DURATION, _UNITS

    timeout = _DURATION.match(str(spec.get("requestTimeout", "20ms")))
    descriptors = tuple((str(d["property"]).lower(), str(d["descriptorKey"])) for d in spec.get("descriptors") or [] if d.get("property") and d.get("descriptorKey"))
    if not spec.get("domain") or not descriptors:
        problems.append(Problem(mr.source, mr.ref, "globalRateLimit needs a domain and descriptors; ignored"))
        return None
    return GlobalRateLimit(
        domain=str(spec["domain"]),
        service_cluster=service,
        descriptors=descriptors,
        match=tuple(_matchers(spec.get("match") or {})),
        timeout=float(timeout.group(1)) * _UNITS[timeout.group(2)] if timeout else 0.02,
        deny_on_fail=bool(spec.get("denyOnFail", False)),
    )


def _matchers(match: Mapping[str, Any]) -> list[AttributeMatcher]:
    out = []
    for key, sm in sorted((match.get("attributes") or {}).items()):
        sm = sm or {}
        if "exact" in sm:
            out.append(AttributeMatcher(str(key), MatchKind.EXACT, str(sm["exact"])))
        elif "prefix" in sm:
            out.append(AttributeMatcher(str(key), MatchKind.PREFIX, str(sm["prefix"])))
        elif "regex" in sm and str(sm["regex"]) not in ("", "*"):
            try:
                re.compile(str(sm["regex"]))
            except re.error as exc:
                raise ValueError(f"bad regex {sm['regex']!r} for {key}: {exc}") from None
            out.append(AttributeMatcher(str(key), MatchKind.REGEX, str(sm["regex"])))
        else:  # Aeraki: an empty matcher or regex "*" checks presence
            out.append(AttributeMatcher(str(key), MatchKind.PRESENT, "true"))
    return out

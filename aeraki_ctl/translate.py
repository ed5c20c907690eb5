"""Translation: Aeraki/Istio resources -> proxy configuration. Pure and deterministic.

Conventions follow Aeraki's (``internal/xds``): for every ServiceEntry port named
``tcp-metaprotocol-<protocol>[-...]`` one listener and one route table named ``<host>_<port>``;
clusters ``outbound|<port>||<host>`` (all endpoints) and ``outbound|<port>|<subset>|<host>`` per
DestinationRule subset; a MetaRouter's weighted destinations become weighted clusters;
``trafficPolicy.loadBalancer.consistentHash.httpHeaderName`` (of the DestinationRule or of the
subset a route sends to) becomes the route's hash policy on a RING_HASH (or MAGLEV) cluster; with
no MetaRouter (or no routes) a single ``default`` route sends everything to the whole service.

Works on the typed messages of :mod:`aeraki_ctl.resources` only. Every problem of an object is
reported (never only the first), with its field path; an object with an error is not served (a
MetaRouter's service keeps its default route); fields that are read but not applied are warnings.
Any exception while translating one object becomes a problem on that object.
"""

from __future__ import annotations

import functools
import re
from functools import partial
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from aeraki_ctl import authz, peerauthn, sidecar
from aeraki_ctl.resources import BUILTIN_PROTOCOLS, Problem, Resource, ResourceSet, seconds
from metaprotocol.config.model import (
    DEFAULT_CONNECT_TIMEOUT,
    AttributeMatcher,
    Bootstrap,
    DownstreamTls,
    CircuitBreakers,
    ClusterConfig,
    CodecRef,
    CommonTls,
    DataSource,
    Endpoint,
    GlobalRateLimit,
    LbPolicy,
    ListenerConfig,
    LocalRateLimit,
    MatchKind,
    MirrorPolicy,
    OutlierDetection,
    RateLimitCondition,
    RbacFilter,
    RouteAction,
    RouteConfig,
    RouteRule,
    SanMatcher,
    SanType,
    TcpKeepalive,
    TokenBucket,
    UpstreamTls,
    WeightedCluster,
)
from metaprotocol.registry import CodecRegistry, RegistryError
from metaprotocol.spi.codec import CodecFactory
from metaprotocol_api.istio.networking.v1alpha3.destination_rule_pb2 import (
    ClientTLSSettings,
    ConnectionPoolSettings,
    DestinationRule,
    LoadBalancerSettings,
    TrafficPolicy,
)
from metaprotocol_api.istio.networking.v1alpha3.destination_rule_pb2 import OutlierDetection as IstioOutlierDetection
from metaprotocol_api.istio.networking.v1alpha3.service_entry_pb2 import ServiceEntry
from metaprotocol_api.metaprotocol_aeraki_io.v1alpha1.metaprotocol_pb2 import (
    ApplicationProtocol,
    Destination,
    LocalRateLimit as AerakiLocalRateLimit,
    MetaRoute,
    MetaRouteMatch,
    MetaRouter,
)

PORT_PREFIX = "tcp-metaprotocol-"
POLICY_KINDS = (*authz.KINDS, peerauthn.KIND)  # security policies: checked namespace by namespace
Policy = authz.Authz | peerauthn.PeerAuthn
_SIMPLE_LB = {
    LoadBalancerSettings.ROUND_ROBIN: LbPolicy.ROUND_ROBIN,
    LoadBalancerSettings.UNSPECIFIED: LbPolicy.ROUND_ROBIN,
    LoadBalancerSettings.LEAST_REQUEST: LbPolicy.LEAST_REQUEST,
    LoadBalancerSettings.LEAST_CONN: LbPolicy.LEAST_REQUEST,
    LoadBalancerSettings.RANDOM: LbPolicy.RANDOM,
}
T = TypeVar("T")


@dataclass(frozen=True)
class Options:
    """Where the generated listeners bind: ``listen_address`` and ``port_offset`` added to the
    service port (so one proxy on a host can listen beside the real services); the root namespace,
    whose authorization policies apply to every namespace."""

    listen_address: str = "127.0.0.1"
    port_offset: int = 0
    root_namespace: str = authz.ROOT_NAMESPACE
    identity_dir: str = "/etc/metaprotocol/identity"
    """Where every proxy keeps its workload certificate (``proxy --identity-dir``): ``cert.pem``,
    ``key.pem``, ``ca.pem``. DestinationRule ``ISTIO_MUTUAL`` clusters present and verify with them."""
    trust_domain: str = "cluster.local"
    """An ``ISTIO_MUTUAL`` server must have a SPIFFE id of this trust domain (unless the rule names
    ``subjectAltNames``)."""
    envoy_port_offset: int = 0
    """Added to the listener ports of stock Envoy nodes (on top of ``port_offset``), so that both
    data planes can listen on one host (a demo, a test, a benchmark); 0 in a real mesh."""


@dataclass
class Translation:
    """The configuration and the problems met while making it, and the Sidecars that are served
    (they scope what each proxy receives; they add nothing to the configuration itself)."""

    bootstrap: Bootstrap
    problems: list[Problem] = field(default_factory=list)
    sidecars: tuple[Resource, ...] = ()

    @property
    def errors(self) -> list[Problem]:
        """Problems that made something be skipped."""
        return [p for p in self.problems if p.fatal]


@functools.cache
def default_registry() -> CodecRegistry:
    """The codecs installed where aeraki-ctl runs (their factories tell what each can carry)."""
    return CodecRegistry.from_entry_points()


def cluster_name(port: int, subset: str, host: str) -> str:
    """Istio's cluster name."""
    return f"outbound|{port}|{subset}|{host}"


# -- per-object results ---------------------------------------------------------------------------


@dataclass
class _Service:
    host: str
    port: int
    port_name: str
    protocol: str
    codec: str
    endpoints: list[Endpoint]
    resource: Resource
    factory: type[CodecFactory] | None = None


@dataclass(frozen=True)
class _Policy:
    """A DestinationRule traffic policy as applied to one cluster."""

    lb: LbPolicy = LbPolicy.ROUND_ROBIN
    hash_key: str = ""
    ring_min_size: int = 0
    breakers: CircuitBreakers | None = None
    outlier: OutlierDetection | None = None
    keepalive: TcpKeepalive | None = None
    connect_timeout: float = 0.0
    idle_timeout: float = 0.0
    tls: _ClientTls | None = None


@dataclass(frozen=True)
class _ClientTls:
    """A DestinationRule's ``tls`` (ClientTLSSettings), files resolved when the cluster is made."""

    mode: str  # SIMPLE, MUTUAL or ISTIO_MUTUAL (DISABLE: no _ClientTls)
    certificate: str = ""
    private_key: str = ""
    ca: str = ""
    sans: tuple[str, ...] = ()
    sni: str = ""
    verify: bool = True


@dataclass
class _Rule:
    """A DestinationRule: the host's policy and its subsets (labels, policy)."""

    resource: Resource
    policy: _Policy
    subsets: dict[str, tuple[dict[str, str], _Policy]]

    def policy_of(self, subset: str) -> _Policy:
        return self.subsets[subset][1] if subset in self.subsets else self.policy


@dataclass
class _Failed:
    """Hosts whose ServiceEntry or DestinationRule is rejected in this translation. What refers to
    them is not at fault: it is left out with a warning (not an error), so that the controller can
    put the rejected object's last valid version back and the referrer is accepted with it."""

    services: set[str] = field(default_factory=set)
    rules: set[str] = field(default_factory=set)
    some_service: bool = False  # a rejected ServiceEntry whose hosts could not be read
    some_rule: bool = False

    def service(self, host: str) -> bool:
        return self.some_service or host in self.services

    def rule(self, host: str) -> bool:
        return self.some_rule or host in self.rules


class _World(Protocol):
    """What translating one service port reads of the other services: the incremental translator
    answers from its per-host facts and records each host asked about (a dependency)."""

    def ports(self, host: str) -> list[int]:
        """The MetaProtocol ports of ``host``, sorted."""

    def rule(self, host: str) -> _Rule | None:
        """The DestinationRule served for ``host``."""

    def failed(self) -> _Failed:
        """The rejected hosts (the answers to ``service``/``rule`` are dependencies too)."""

    def service_entry(self, host: str) -> Resource | None:
        """The first ServiceEntry read without error (by namespace, name) listing ``host``."""

    def policies(self, namespace: str) -> Sequence[Policy]:
        """The valid security policies of ``namespace``."""


@dataclass
class _GlobalWorld:
    """The whole translation's answers."""

    by_host: dict[str, list[int]]
    rules: Mapping[str, _Rule]
    failures: _Failed
    valid: ResourceSet
    by_namespace: Mapping[str, list[Policy]] = field(default_factory=dict)
    _entries: dict[str, Resource] | None = None

    def policies(self, namespace: str) -> Sequence[Policy]:
        return self.by_namespace.get(namespace, [])

    def ports(self, host: str) -> list[int]:
        return self.by_host.get(host, [])

    def rule(self, host: str) -> _Rule | None:
        return self.rules.get(host)

    def failed(self) -> _Failed:
        return self.failures

    def service_entry(self, host: str) -> Resource | None:
        if self._entries is None:
            self._entries = {}
            for se in self.valid.of("ServiceEntry"):
                for h in se.message(ServiceEntry).hosts:
                    self._entries.setdefault(h, se)
        return self._entries.get(host)


class _Reporter:
    """Problems of one object, each reported once."""

    def __init__(self, resource: Resource, out: list[Problem]) -> None:
        self.resource = resource
        self.partial = resource.rejected  # fields that did not parse are missing: checks of sums are moot
        self.out = out
        self.seen: set[tuple[str, str, bool]] = set()
        self.errors = 0
        self.blocked = 0

    def block(self, reason: str, path: str = "") -> None:
        """Something this object needs is rejected: it is left out, with a warning."""
        self.blocked += 1
        self.warn(reason, path)

    def __call__(self, reason: str, path: str = "", fatal: bool = True) -> None:
        if (path, reason, fatal) in self.seen:
            return
        self.seen.add((path, reason, fatal))
        self.errors += fatal
        self.out.append(self.resource.problem(reason, path, fatal))

    def warn(self, reason: str, path: str = "") -> None:
        self(reason, path, fatal=False)


def _guard(resource: Resource, problems: list[Problem], fn: Callable[[], T], default: T) -> T:
    """``fn()``, or ``default`` and a problem on ``resource`` if it raises anything."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - one object's failure must not escape the translation
        problems.append(resource.problem(f"cannot be translated ({type(exc).__name__}: {exc}); the object is skipped"))
        return default


# -- the translation ------------------------------------------------------------------------------


def translate(resources: ResourceSet, options: Options | None = None, registry: CodecRegistry | None = None) -> Translation:
    """Resources -> Bootstrap (listeners, route tables, clusters), and every problem."""
    opts = options or Options()
    reg = registry if registry is not None else default_registry()
    problems = list(resources.problems)
    for r in resources.resources:
        problems.extend(r.problems)
    valid = ResourceSet([r for r in resources.resources if not r.rejected])
    failed = _Failed()
    if any(p.fatal and p.obj == "-" for p in resources.problems):  # an unreadable file may hold any of them
        failed.some_service = failed.some_rule = True
    for r in resources.resources:
        if r.rejected and r.kind == "ServiceEntry":
            declared = list(r.message(ServiceEntry).hosts)
            failed.services.update(declared[:1])
            failed.some_service |= not declared
        elif r.rejected and r.kind == "DestinationRule":
            host = r.message(DestinationRule).host
            failed.rules.add(host)
            failed.some_rule |= not host
    codecs = dict(BUILTIN_PROTOCOLS)
    for ap in valid.of("ApplicationProtocol"):
        _guard(ap, problems, partial(_application_protocol, ap, codecs, problems), None)
    services: list[_Service] = []
    seen: dict[tuple[str, int], Resource] = {}
    for se in valid.of("ServiceEntry"):
        made = _guard(se, problems, partial(_services, se, codecs, seen, reg, problems), None)
        if made is None:  # it has an error
            declared = list(se.message(ServiceEntry).hosts)
            failed.services.update(declared[:1])
            failed.some_service |= not declared
        services.extend(made or [])
    services.sort(key=lambda s: (s.host, s.port))
    hosts = {s.host for s in services}
    rules: dict[str, _Rule] = {}
    for dr in valid.of("DestinationRule"):
        if not _guard(dr, problems, partial(_destination_rule, dr, rules, hosts, problems), False):
            failed.rules.add(dr.message(DestinationRule).host)
            failed.some_rule |= not dr.message(DestinationRule).host
    routers: dict[str, Resource] = {}
    for mr in valid.of("MetaRouter"):
        _guard(mr, problems, partial(_router, mr, routers, hosts, failed, problems), None)
    by_host: dict[str, list[int]] = {}
    for s in services:
        by_host.setdefault(s.host, []).append(s.port)
    world = _GlobalWorld(by_host, rules, failed, valid, check_policies(resources, opts, problems))
    _check_rejected(resources, codecs, services, world, reg, problems)
    clusters: dict[str, ClusterConfig] = {}
    listeners: list[ListenerConfig] = []
    for svc in services:
        extra: dict[str, ClusterConfig] = {}
        listeners.append(service_port(svc, rules.get(svc.host), routers.get(svc.host), world, opts, clusters, extra, problems))
        for name, cfg in extra.items():
            clusters.setdefault(name, cfg)
    sidecars = check_sidecars(resources.of("Sidecar"), problems)
    unique = list(dict.fromkeys(problems))  # an object's problem met once per service port is told once
    return Translation(Bootstrap(tuple(listeners), tuple(clusters[k] for k in sorted(clusters)), None, "aeraki-ctl"), unique, sidecars)


def check_policies(resources: ResourceSet, opts: Options, problems: list[Problem], namespace: str | None = None) -> dict[str, list[Policy]]:
    """Every problem of the security policies (authorization and peer authentication, of one
    namespace or all); the valid ones translated, by namespace, in (kind, name) order."""
    out: dict[str, list[Policy]] = {}
    for kind in POLICY_KINDS:
        for r in resources.of(kind):
            if namespace is not None and r.namespace != namespace:
                continue
            check = partial(peerauthn.check, r, problems) if kind == peerauthn.KIND else partial(authz.check, r, problems, opts.port_offset)
            made: Policy | None = _guard(r, problems, check, None)
            if made is not None:
                out.setdefault(r.namespace, []).append(made)
    return out


def _namespace_policies(svc: _Service, world: _World, opts: Options) -> list[Policy]:
    ns, root = svc.resource.namespace, opts.root_namespace
    return [*world.policies(ns), *(world.policies(root) if ns != root else ())]


def _rbac(svc: _Service, world: _World, opts: Options) -> tuple[RbacFilter, ...]:
    """The RBAC filters of a service port's listener: the authorization policies of its namespace
    and of the root namespace that select it."""
    found = [a for a in _namespace_policies(svc, world, opts) if isinstance(a, authz.Authz)]
    if not found:
        return ()
    ns, root = svc.resource.namespace, opts.root_namespace
    labels = [e.labels for e in svc.endpoints]
    return authz.filters([a for a in found if a.applies(ns, root, svc.resource.name, svc.codec, labels)])


def _peer_tls(svc: _Service, world: _World, opts: Options, problems: list[Problem]) -> DownstreamTls | None:
    """The listener TLS the PeerAuthentications that apply to a service port ask for (None: none).
    The mode is worked out per endpoint (its labels, its port); one listener fronts them all, so it
    takes the strictest (a plaintext client could otherwise reach a STRICT workload), said as a
    warning when they differ."""
    found = [p for p in _namespace_policies(svc, world, opts) if isinstance(p, peerauthn.PeerAuthn)]
    if not found:
        return None
    ns, root = svc.resource.namespace, opts.root_namespace
    per_endpoint = {peerauthn.mode_for(found, ns, root, [e.labels], {e.port}) for e in svc.endpoints} or {peerauthn.mode_for(found, ns, root, [], {svc.port})}
    mode = peerauthn.strictest(per_endpoint)
    if len({peerauthn.effective(m) for m in per_endpoint}) > 1:
        problems.append(svc.resource.problem(
            f"the PeerAuthentication modes of {svc.host}'s endpoints differ ({', '.join(sorted(per_endpoint))}): its listener on port {svc.port} "
            f"fronts them all and takes the strictest, {mode}", "spec.endpoints", fatal=False))  # fmt: skip
    return peerauthn.listener_tls(mode, opts.identity_dir, opts.trust_domain)


def check_sidecars(sidecars: Iterable[Resource], problems: list[Problem]) -> tuple[Resource, ...]:
    """Every problem of the Sidecars (namespace by namespace); the valid ones, by ref."""
    by_namespace: dict[str, list[Resource]] = {}
    for r in sidecars:
        by_namespace.setdefault(r.namespace, []).append(r)
    valid: list[Resource] = []
    for ns in sorted(by_namespace):
        valid.extend(sidecar.check(by_namespace[ns], problems))
    return tuple(sorted(valid, key=lambda r: r.ref))


def service_port(
    svc: _Service,
    rule: _Rule | None,
    router: Resource | None,
    world: _World,
    opts: Options,
    clusters: dict[str, ClusterConfig],
    extra: dict[str, ClusterConfig],
    problems: list[Problem],
) -> ListenerConfig:
    """One service port: its clusters (into ``clusters``), the clusters its MetaRouter adds (a
    rate limit service's, into ``extra``) and its listener with its route table."""
    made_clusters = _guard(rule.resource, problems, partial(_clusters, svc, rule, problems, opts), None) if rule else None
    if made_clusters is None:
        made_clusters = _clusters(svc, None, problems, opts)
        rule = None
    clusters.update(made_clusters)
    top = rule.policy if rule else _Policy()
    default = (RouteRule("default", (), RouteAction(cluster=cluster_name(svc.port, "", svc.host), hash_policy=(top.hash_key,) if top.hash_key else ())),)
    routes: tuple[RouteRule, ...] = default
    limit: LocalRateLimit | None = None
    global_limit: GlobalRateLimit | None = None
    if router is not None:
        mine: dict[str, ClusterConfig] = {}
        out = _guard(router, problems, partial(_router_config, router, svc, world, mine, problems), None)
        if out is not None:
            routes = out[0] or default
            limit, global_limit = out[1], out[2]
            for name, cfg in mine.items():
                extra.setdefault(name, cfg)
    name = f"{svc.host}_{svc.port}"
    return ListenerConfig(
        name=name,
        address=opts.listen_address,
        port=svc.port + opts.port_offset,
        codec=CodecRef(svc.codec),
        stat_prefix=cluster_name(svc.port, "", svc.host),
        route_config=RouteConfig(name, routes),
        idle_timeout=top.idle_timeout,
        local_rate_limit=limit,
        global_rate_limit=global_limit,
        protocol=svc.protocol,
        rbac=_rbac(svc, world, opts),
        tls=_peer_tls(svc, world, opts, problems),
    )


def _check_rejected(
    resources: ResourceSet,
    codecs: Mapping[str, str],
    services: list[_Service],
    world: _World,
    registry: CodecRegistry,
    problems: list[Problem],
) -> None:
    """The rest of the problems of objects rejected while reading them (what did parse is checked
    like a valid object's, and thrown away), so that every problem is told at once."""
    hosts = {s.host for s in services}
    for r in resources.resources:
        if r.rejected:
            check_rejected(r, codecs, hosts, services, world, registry, problems)


def check_rejected(r: Resource, codecs: Mapping[str, str], hosts: set[str], services: list[_Service], world: _World, registry: CodecRegistry, problems: list[Problem]) -> None:
    """One rejected object's other problems (``services``: at least those of its host)."""
    if r.kind == "ServiceEntry":
        _guard(r, problems, partial(_services, r, codecs, {}, registry, problems), None)
    elif r.kind == "DestinationRule":
        _guard(r, problems, partial(_destination_rule, r, {}, hosts, problems), False)
    elif r.kind == "MetaRouter":
        routers: dict[str, Resource] = {}
        _guard(r, problems, partial(_router, r, routers, hosts, world.failed(), problems), None)
        for svc in services if routers else ():
            if svc.host in routers:
                _guard(r, problems, partial(_router_config, r, svc, world, {}, problems), None)


def _application_protocol(ap: Resource, codecs: dict[str, str], problems: list[Problem]) -> None:
    spec = ap.message(ApplicationProtocol)
    report = _Reporter(ap, problems)
    if not spec.protocol:
        report("protocol is required", "spec.protocol")
    if not spec.codec:
        report("codec is required", "spec.codec")
    if spec.protocol and spec.codec:
        codecs[spec.protocol] = spec.codec


def _services(se: Resource, codecs: Mapping[str, str], seen: dict[tuple[str, int], Resource], registry: CodecRegistry, problems: list[Problem]) -> list[_Service] | None:
    spec = se.message(ServiceEntry)
    report = _Reporter(se, problems)
    if not spec.hosts or not spec.hosts[0]:
        report("at least one host is required", "spec.hosts")
        return None
    host = spec.hosts[0]
    for fname, json in (("workload_selector", "workloadSelector"), ("export_to", "exportTo"), ("subject_alt_names", "subjectAltNames")):
        if _is_set(spec, fname):
            report.warn(f"{json} is not supported by aeraki-ctl; ignored", f"spec.{json}")
    for j, e in enumerate(spec.endpoints):
        for fname, json in (("network", "network"), ("locality", "locality"), ("service_account", "serviceAccount")):
            if getattr(e, fname):
                report.warn(f"{json} is not supported by aeraki-ctl; ignored", f"spec.endpoints[{j}].{json}")
    out: list[_Service] = []
    pending: list[tuple[str, int]] = []
    for i, p in enumerate(spec.ports):
        path = f"spec.ports[{i}]"
        if not p.name.startswith(PORT_PREFIX):
            continue
        tokens = p.name.split("-")
        protocol = tokens[2] if len(tokens) > 2 else ""  # noqa: PLR2004 - Aeraki reads the third token
        codec = codecs.get(protocol)
        if codec is None:
            report(f"port {p.name}: unknown application protocol {protocol!r} (add an ApplicationProtocol)", f"{path}.name")
            continue
        if not 1 <= p.number <= 65535:  # noqa: PLR2004
            report(f"port {p.name}: number must be 1..65535, not {p.number}", f"{path}.number")
            continue
        if (host, p.number) in seen or (host, p.number) in pending:
            other = seen.get((host, p.number))
            report(f"{host}:{p.number} is defined twice" + (f" (also by {other.ref})" if other else ""), f"{path}.number")
            continue
        pending.append((host, p.number))
        factory: type[CodecFactory] | None = None
        try:
            factory = registry.get(codec)
        except (RegistryError, KeyError) as exc:
            report.warn(f"port {p.name}: codec {codec!r} is not installed where aeraki-ctl runs, so what it can carry is not checked ({exc})", f"{path}.name")
        endpoints = []
        for j, e in enumerate(spec.endpoints):
            epath = f"spec.endpoints[{j}]"
            if not e.address:
                report.warn("an endpoint without address is ignored", f"{epath}.address")
                continue
            if p.name in e.ports:
                eport, where = e.ports[p.name], f"{epath}.ports.{p.name}"
            elif protocol in e.ports:
                eport, where = e.ports[protocol], f"{epath}.ports.{protocol}"
            else:
                eport, where = p.target_port or p.number, f"{path}.targetPort"
            if not 1 <= eport <= 65535:  # noqa: PLR2004
                report(f"endpoint port must be 1..65535, not {eport}", where)
                continue
            endpoints.append(Endpoint(e.address, eport, e.weight or 1, tuple(sorted(e.labels.items()))))
        out.append(_Service(host, p.number, p.name, protocol, codec, endpoints, se, factory))
    if report.errors:
        return None
    for s in out:
        seen[(s.host, s.port)] = se
    return out


def _is_set(msg: object, name: str) -> bool:
    value = getattr(msg, name)
    if isinstance(value, (str, int, float, bool)):
        return bool(value)
    if hasattr(value, "ListFields"):
        return bool(msg.HasField(name))  # type: ignore[attr-defined]
    return len(value) > 0


# -- DestinationRule ------------------------------------------------------------------------------


def _destination_rule(dr: Resource, rules: dict[str, _Rule], hosts: set[str], problems: list[Problem]) -> bool:
    """Whether the rule is valid (then it is in ``rules``)."""
    spec = dr.message(DestinationRule)
    report = _Reporter(dr, problems)
    if not spec.host:
        report("host is required", "spec.host")
        return False
    if spec.host in rules:
        report(f"another DestinationRule ({rules[spec.host].resource.ref}) already applies to {spec.host}; this one is ignored", "spec.host")
        return True  # the host's rule stands
    if spec.host not in hosts:
        report.warn(f"{spec.host} is not a MetaProtocol service known here; the rule has no effect", "spec.host")
    for fname, json in (("export_to", "exportTo"), ("workload_selector", "workloadSelector")):
        if _is_set(spec, fname):
            report.warn(f"{json} is not supported by aeraki-ctl; ignored", f"spec.{json}")
    top = _policy(spec.traffic_policy, "spec.trafficPolicy", _Policy(), report, subset=False) if spec.HasField("traffic_policy") else _Policy()
    subsets: dict[str, tuple[dict[str, str], _Policy]] = {}
    for i, s in enumerate(spec.subsets):
        path = f"spec.subsets[{i}]"
        if not s.name:
            report("a subset needs a name", f"{path}.name")
            continue
        if s.name in subsets:
            report(f"subset {s.name} is defined twice", f"{path}.name")
            continue
        policy = _policy(s.traffic_policy, f"{path}.trafficPolicy", top, report, subset=True) if s.HasField("traffic_policy") else top
        subsets[s.name] = (dict(s.labels), policy)
    if report.errors:
        return False
    rules[spec.host] = _Rule(dr, top, subsets)
    return True


def _policy(tp: TrafficPolicy, path: str, inherited: _Policy, report: _Reporter, subset: bool) -> _Policy:
    """A traffic policy merged over ``inherited`` as Istio merges a subset's policy: each of
    loadBalancer, connectionPool and outlierDetection it sets replaces the inherited one whole."""
    p = inherited
    if tp.HasField("load_balancer"):
        p = _load_balancer(tp.load_balancer, f"{path}.loadBalancer", p, report)
    if tp.HasField("connection_pool"):
        p = _connection_pool(tp.connection_pool, f"{path}.connectionPool", p, report, subset)
    if tp.HasField("outlier_detection"):
        p = _replace(p, outlier=_outlier(tp.outlier_detection, f"{path}.outlierDetection", report))
    if tp.HasField("tls"):
        p = _replace(p, tls=_client_tls(tp.tls, f"{path}.tls", report))
    for fname, json in (("port_level_settings", "portLevelSettings"), ("tunnel", "tunnel"), ("proxy_protocol", "proxyProtocol")):
        if _is_set(tp, fname):
            report.warn(f"{json} is not supported by aeraki-ctl; ignored", f"{path}.{json}")
    return p


def _client_tls(t: ClientTLSSettings, path: str, report: _Reporter) -> _ClientTls | None:
    """Istio's client TLS settings: DISABLE (plaintext, overriding an inherited mode), SIMPLE
    (verify the server), MUTUAL (and present the given certificate), ISTIO_MUTUAL (the proxy's own
    workload certificate, the server's SPIFFE id verified). What would weaken or silently change
    the check is refused with its path."""
    mode = ClientTLSSettings.TLSmode.Name(t.mode)
    if t.mode == ClientTLSSettings.DISABLE:
        return None
    if t.credential_name:
        report("credentialName (a Kubernetes secret) is not read: give clientCertificate, privateKey and caCertificates files", f"{path}.credentialName")
    if t.ca_crl:
        report("caCrl is not supported (no revocation lists): a CRL that is not enforced would let revoked servers in", f"{path}.caCrl")
    skip = t.HasField("insecure_skip_verify") and t.insecure_skip_verify.value
    if t.mode == ClientTLSSettings.ISTIO_MUTUAL:
        for fname, json in (("client_certificate", "clientCertificate"), ("private_key", "privateKey"), ("ca_certificates", "caCertificates")):
            if getattr(t, fname):
                report(f"{json} is not used with ISTIO_MUTUAL (the proxy's workload certificate is)", f"{path}.{json}")
        return _ClientTls(mode, sans=tuple(t.subject_alt_names), sni=t.sni, verify=not skip)
    if t.mode == ClientTLSSettings.MUTUAL and not (t.client_certificate and t.private_key):
        report("MUTUAL needs clientCertificate and privateKey", path)
    if not t.ca_certificates and not skip:
        report("caCertificates is required (the system's roots are not used); or insecureSkipVerify: true", f"{path}.caCertificates")
    return _ClientTls(mode, t.client_certificate, t.private_key, t.ca_certificates, tuple(t.subject_alt_names), t.sni, not skip)


def _upstream_tls(t: _ClientTls | None, host: str, opts: Options) -> UpstreamTls | None:
    """The cluster's UpstreamTlsContext for a rule's TLS settings."""
    if t is None:
        return None
    if t.mode == "ISTIO_MUTUAL":
        base = opts.identity_dir.rstrip("/")
        cert, key, ca = f"{base}/cert.pem", f"{base}/key.pem", f"{base}/ca.pem"
        sans = tuple(SanMatcher(SanType.URI, MatchKind.EXACT, s) for s in t.sans) or (SanMatcher(SanType.URI, MatchKind.PREFIX, f"spiffe://{opts.trust_domain}/"),)
    else:
        cert, key, ca = t.certificate, t.private_key, t.ca
        sans = tuple(SanMatcher(SanType.ANY, MatchKind.EXACT, s) for s in t.sans)
    common = CommonTls(
        certificate_chain=DataSource(filename=cert) if cert else None,
        private_key=DataSource(filename=key) if key else None,
        trusted_ca=DataSource(filename=ca) if ca and t.verify else None,
        match_sans=sans if t.verify else (),
    )
    return UpstreamTls(common, sni=t.sni or host)


def _replace(p: _Policy, **changes: object) -> _Policy:
    from dataclasses import replace

    return replace(p, **changes)  # type: ignore[arg-type]


def _load_balancer(lb: LoadBalancerSettings, path: str, p: _Policy, report: _Reporter) -> _Policy:
    if lb.HasField("locality_lb_setting"):
        report.warn("localityLbSetting is not supported (endpoints carry no locality here); ignored", f"{path}.localityLbSetting")
    if lb.HasField("warmup_duration_secs") or lb.HasField("warmup"):
        report.warn("warmup is not supported (new endpoints get their full share at once); ignored", f"{path}.{'warmup' if lb.HasField('warmup') else 'warmupDurationSecs'}")
    if lb.WhichOneof("lb_policy") == "consistent_hash":
        ch = lb.consistent_hash
        cpath = f"{path}.consistentHash"
        if ch.WhichOneof("hash_key") != "http_header_name" or not ch.http_header_name:
            report("consistentHash supports httpHeaderName (a metadata key of the request) only", cpath)
            return _replace(p, lb=LbPolicy.ROUND_ROBIN, hash_key="", ring_min_size=0)
        ring = ch.ring_hash.minimum_ring_size if ch.HasField("ring_hash") else ch.minimum_ring_size
        if ch.HasField("maglev") and ch.maglev.table_size:
            report.warn("maglev.tableSize is not supported (the default table is used); ignored", f"{cpath}.maglev.tableSize")
        return _replace(p, lb=LbPolicy.MAGLEV if ch.HasField("maglev") else LbPolicy.RING_HASH, hash_key=ch.http_header_name.lower(), ring_min_size=int(ring))
    if lb.simple not in _SIMPLE_LB:
        report.warn(f"simple {LoadBalancerSettings.SimpleLB.Name(lb.simple)} is not supported (ROUND_ROBIN used)", f"{path}.simple")
    return _replace(p, lb=_SIMPLE_LB.get(lb.simple, LbPolicy.ROUND_ROBIN), hash_key="", ring_min_size=0)


def _connection_pool(pool: ConnectionPoolSettings, path: str, p: _Policy, report: _Reporter, subset: bool) -> _Policy:
    tcp, http = pool.tcp, pool.http
    tpath, hpath = f"{path}.tcp", f"{path}.http"
    if tcp.max_connections:
        report.warn("maxConnections is not enforced (connections are shared)", f"{tpath}.maxConnections")
    if tcp.HasField("max_connection_duration"):
        report.warn("maxConnectionDuration is not supported; ignored", f"{tpath}.maxConnectionDuration")
    for fname, json in (("max_requests_per_connection", "maxRequestsPerConnection"), ("h2_upgrade_policy", "h2UpgradePolicy"),
                        ("use_client_protocol", "useClientProtocol"), ("max_concurrent_streams", "maxConcurrentStreams")):  # fmt: skip
        if getattr(http, fname):
            report.warn(f"{json} is not supported (an HTTP setting); ignored", f"{hpath}.{json}")
    if http.HasField("idle_timeout"):
        report.warn("idleTimeout (of upstream connections) is not supported: upstream connections have no idle timeout here; ignored", f"{hpath}.idleTimeout")
    idle = p.idle_timeout
    if tcp.HasField("idle_timeout"):
        if subset:
            report.warn("idleTimeout is a property of the listener (one per service port): only the DestinationRule's own trafficPolicy sets it; ignored here", f"{tpath}.idleTimeout")
        else:
            idle = seconds(tcp.idle_timeout)
    connect = seconds(tcp.connect_timeout) if tcp.HasField("connect_timeout") else 0.0
    if tcp.HasField("connect_timeout") and connect < 0.001:  # noqa: PLR2004 - Istio: MUST BE >= 1ms
        report("connectTimeout must be at least 1ms", f"{tpath}.connectTimeout")
    keepalive = None
    if tcp.HasField("tcp_keepalive"):
        ka = tcp.tcp_keepalive
        whole = []
        for fname in ("time", "interval"):
            value = seconds(getattr(ka, fname))
            if value != int(value):
                report.warn(f"{fname} {value:g}s: whole seconds are used ({int(value)}s)", f"{tpath}.tcpKeepalive.{fname}")
            whole.append(float(int(value)))  # Istio truncates to seconds
        keepalive = TcpKeepalive(ka.probes, whole[0], whole[1])
    breakers = CircuitBreakers(http.http2_max_requests, http.http1_max_pending_requests, http.max_retries)
    for fname, json in (("http2_max_requests", "http2MaxRequests"), ("http1_max_pending_requests", "http1MaxPendingRequests"), ("max_retries", "maxRetries")):
        if getattr(http, fname) < 0:
            report(f"{json} must not be negative", f"{hpath}.{json}")
    return _replace(p, breakers=breakers, keepalive=keepalive, connect_timeout=connect, idle_timeout=idle)


def _outlier(od: IstioOutlierDetection, path: str, report: _Reporter) -> OutlierDetection:
    for fname, json in (("interval", "interval"), ("min_health_percent", "minHealthPercent"), ("split_external_local_origin_errors", "splitExternalLocalOriginErrors"),
                        ("consecutive_local_origin_failures", "consecutiveLocalOriginFailures")):  # fmt: skip
        if _is_set(od, fname):
            report.warn(f"{json} is not supported (an endpoint is ejected as soon as it reaches the error count); ignored", f"{path}.{json}")
    if od.HasField("consecutive_5xx_errors"):
        count = od.consecutive_5xx_errors.value
    elif od.consecutive_errors > 0:
        count = od.consecutive_errors
    elif od.HasField("consecutive_gateway_errors"):
        count = od.consecutive_gateway_errors.value
    else:
        count = 5
    if not 0 <= od.max_ejection_percent <= 100:  # noqa: PLR2004
        report(f"maxEjectionPercent must be 0..100, not {od.max_ejection_percent}", f"{path}.maxEjectionPercent")
    base = seconds(od.base_ejection_time) if od.HasField("base_ejection_time") else 30.0
    return OutlierDetection(count, base, od.max_ejection_percent or 10)


def _clusters(svc: _Service, rule: _Rule | None, problems: list[Problem], opts: Options) -> dict[str, ClusterConfig]:
    def cluster(name: str, endpoints: tuple[Endpoint, ...], p: _Policy) -> ClusterConfig:
        return ClusterConfig(
            name, endpoints, p.lb, connect_timeout=p.connect_timeout or DEFAULT_CONNECT_TIMEOUT, ring_min_size=p.ring_min_size or 1024,
            circuit_breakers=p.breakers, outlier_detection=p.outlier, tcp_keepalive=p.keepalive, tls=_upstream_tls(p.tls, svc.host, opts),
        )  # fmt: skip

    top = rule.policy if rule else _Policy()
    out = {cluster_name(svc.port, "", svc.host): cluster(cluster_name(svc.port, "", svc.host), tuple(svc.endpoints), top)}
    if rule is None:
        return out
    for i, (name, (labels, policy)) in enumerate(rule.subsets.items()):
        wanted = set(labels.items())
        members = tuple(e for e in svc.endpoints if wanted <= set(e.labels))
        if not members:
            problems.append(rule.resource.problem(f"subset {name} selects no endpoint of {svc.host}:{svc.port}", f"spec.subsets[{i}].labels", fatal=False))
        out[cluster_name(svc.port, name, svc.host)] = cluster(cluster_name(svc.port, name, svc.host), members, policy)
    return out


# -- MetaRouter -----------------------------------------------------------------------------------


def _router(mr: Resource, routers: dict[str, Resource], hosts: set[str], failed: _Failed, problems: list[Problem]) -> None:
    spec = mr.message(MetaRouter)
    report = _Reporter(mr, problems)
    if not spec.hosts or not spec.hosts[0]:
        report("hosts is required (the service's host)", "spec.hosts")
        return
    host = spec.hosts[0]
    if len(spec.hosts) > 1:
        report.warn(f"only hosts[0] ({host}) is used, as in Aeraki; the others are ignored", "spec.hosts[1]")
    for fname, json in (("gateways", "gateways"), ("export_to", "exportTo")):
        if _is_set(spec, fname):
            report.warn(f"{json} is not supported by aeraki-ctl; ignored", f"spec.{json}")
    if host in routers:
        report(f"another MetaRouter ({routers[host].ref}) already targets {host}; this one is ignored", "spec.hosts[0]")
        return
    if host not in hosts and failed.service(host):
        report.block(f"{host} is not served now: a ServiceEntry that may declare it is rejected", "spec.hosts[0]")
        return
    if host not in hosts:
        report(f"{host} is not a MetaProtocol service (no ServiceEntry port named {PORT_PREFIX}<protocol>); the MetaRouter applies to nothing", "spec.hosts[0]")
        return
    routers[host] = mr


_RouterConfig = tuple[tuple[RouteRule, ...], LocalRateLimit | None, GlobalRateLimit | None]


def _router_config(mr: Resource, svc: _Service, world: _World, extra: dict[str, ClusterConfig], problems: list[Problem]) -> _RouterConfig | None:
    """The MetaRouter's routes and rate limits for one service port; None when it has an error
    (every one of them is reported)."""
    spec = mr.message(MetaRouter)
    report = _Reporter(mr, problems)
    routes = _routes(spec, svc, world, report)
    limit = _local_rate_limit(spec.local_rate_limit, report) if spec.HasField("local_rate_limit") else None
    global_limit = _global_rate_limit(spec, world, extra, report) if spec.HasField("global_rate_limit") else None
    if (report.errors or report.blocked) and not report.partial:
        report.warn(f"the MetaRouter is not applied to {svc.host}:{svc.port} (its default route is used)")
        return None
    return routes, limit, global_limit


def _destination(d: Destination, path: str, svc: _Service, world: _World, report: _Reporter) -> tuple[str, str] | None:
    """The cluster name of a destination and the hash key of its traffic policy."""
    if not d.host:
        report("host is required", f"{path}.host")
        return None
    ports = world.ports(d.host)
    failed = world.failed()
    if not ports and failed.service(d.host):
        report.block(f"destination host {d.host!r} is not served now: a ServiceEntry that may declare it is rejected", f"{path}.host")
        return None
    if not ports:
        report(f"unknown destination host {d.host!r} (not a MetaProtocol service)", f"{path}.host")
        return None
    if d.HasField("port") and d.port.number:
        port = d.port.number
    elif d.host == svc.host or svc.port in ports:
        port = svc.port
    elif len(ports) == 1:
        port = ports[0]
    else:
        report(f"{d.host} has several MetaProtocol ports ({', '.join(map(str, ports))}): port.number is required", f"{path}.port")
        return None
    if port not in ports:
        report(f"{d.host} has no MetaProtocol port {port}", f"{path}.port.number")
        return None
    rule = world.rule(d.host)
    if d.subset and (rule is None or d.subset not in rule.subsets) and failed.rule(d.host):
        report.block(f"subset {d.subset!r} of {d.host} is not served now: a DestinationRule that may declare it is rejected", f"{path}.subset")
        return None
    if d.subset and (rule is None or d.subset not in rule.subsets):
        report(f"unknown subset {d.subset!r} of {d.host}" + ("" if rule else " (no DestinationRule)"), f"{path}.subset")
        return None
    policy = rule.policy_of(d.subset) if rule else _Policy()
    return cluster_name(port, d.subset, d.host), policy.hash_key


def _routes(spec: MetaRouter, svc: _Service, world: _World, report: _Reporter) -> tuple[RouteRule, ...]:
    out = []
    for i, route in enumerate(spec.routes):
        rpath = f"spec.routes[{i}]"
        out.append(_route(route, i, rpath, svc, world, report))
    return tuple(r for r in out if r is not None)


def _route(route: MetaRoute, i: int, rpath: str, svc: _Service, world: _World, report: _Reporter) -> RouteRule | None:
    errors = report.errors + report.blocked
    matchers = _matchers(route.match, f"{rpath}.match", report)
    weighted: list[WeightedCluster] = []
    keys: list[str] = []
    if not route.route:
        report("a route needs at least one destination", f"{rpath}.route")
    for j, d in enumerate(route.route):
        dest = _destination(d.destination, f"{rpath}.route[{j}].destination", svc, world, report)
        if dest is None:
            continue
        weighted.append(WeightedCluster(dest[0], d.weight if len(route.route) > 1 else 100))
        if dest[1] and dest[1] not in keys:
            keys.append(dest[1])
        if d.weight > 100:  # noqa: PLR2004
            report(f"weight must be 0..100, not {d.weight}", f"{rpath}.route[{j}].weight")
    if not report.partial and len(route.route) > 1 and len(weighted) == len(route.route) and sum(w.weight for w in weighted) != 100:  # noqa: PLR2004
        report(f"weights sum to {sum(w.weight for w in weighted)}, not 100", f"{rpath}.route")
    if len(keys) > 1:
        report.warn(f"the destinations hash on different keys ({', '.join(keys)}); the route hashes on all of them", f"{rpath}.route")
    mirrors: tuple[MirrorPolicy, ...] = ()
    if route.HasField("mirror"):
        m = _destination(route.mirror, f"{rpath}.mirror", svc, world, report)
        pct = route.mirror_percentage.value if route.HasField("mirror_percentage") else 100.0
        if not 0.0 <= pct <= 100.0:  # noqa: PLR2004
            report(f"must be 0..100, not {pct:g}", f"{rpath}.mirrorPercentage.value")
        if m is not None:
            mirrors = (MirrorPolicy(m[0], max(0.0, min(1.0, pct / 100.0))),)
    elif route.HasField("mirror_percentage"):
        report.warn("mirrorPercentage without mirror is ignored", f"{rpath}.mirrorPercentage")
    mutations: list[tuple[tuple[str, str], ...]] = []
    for fname, json in (("request_mutation", "requestMutation"), ("response_mutation", "responseMutation")):
        kvs = getattr(route, fname)
        for k, kv in enumerate(kvs):
            if not kv.key:
                report("key is required", f"{rpath}.{json}[{k}].key")
        if kvs and svc.factory is not None and not svc.factory.supports_mutation:
            report(f"the {svc.factory.name} codec cannot carry request/response mutations (the proxy would reject the route table)", f"{rpath}.{json}")
        mutations.append(tuple((kv.key, kv.value) for kv in kvs))
    if report.errors + report.blocked > errors or not weighted:
        return None
    hash_policy = tuple(keys)
    action = RouteAction(cluster=weighted[0].name, hash_policy=hash_policy) if len(weighted) == 1 else RouteAction(weighted_clusters=tuple(weighted), hash_policy=hash_policy)
    return RouteRule(name=route.name or f"route-{i}", match=matchers, action=action, request_mutation=mutations[0], response_mutation=mutations[1], mirrors=mirrors)


def _matchers(match: MetaRouteMatch, path: str, report: _Reporter) -> tuple[AttributeMatcher, ...]:
    out = []
    for key in sorted(match.attributes):
        sm = match.attributes[key]
        kind = sm.WhichOneof("match_type")
        if kind == "exact":
            out.append(AttributeMatcher(key, MatchKind.EXACT, sm.exact))
        elif kind == "prefix":
            out.append(AttributeMatcher(key, MatchKind.PREFIX, sm.prefix))
        elif kind == "regex" and sm.regex not in ("", "*"):
            try:
                re.compile(sm.regex)
            except re.error as exc:
                report(f"bad regex {sm.regex!r}: {exc}", f"{path}.attributes.{key}.regex")
                continue
            out.append(AttributeMatcher(key, MatchKind.REGEX, sm.regex))
        else:  # Aeraki: an empty matcher or regex "*" checks presence
            out.append(AttributeMatcher(key, MatchKind.PRESENT, "true"))
    return tuple(out)


def _bucket(b: AerakiLocalRateLimit.TokenBucket, path: str, report: _Reporter) -> TokenBucket | None:
    ok = True
    if b.max_tokens < 1:
        report("maxTokens must be at least 1", f"{path}.maxTokens")
        ok = False
    if not b.HasField("fill_interval"):
        report("fillInterval is required", f"{path}.fillInterval")
        ok = False
    elif seconds(b.fill_interval) < 0.05:  # noqa: PLR2004 - Aeraki's rule
        report("fillInterval must be at least 50ms", f"{path}.fillInterval")
        ok = False
    per_fill = b.tokens_per_fill.value if b.HasField("tokens_per_fill") else 1
    if per_fill < 1:
        report("tokensPerFill must be at least 1", f"{path}.tokensPerFill")
        ok = False
    return TokenBucket(b.max_tokens, per_fill, seconds(b.fill_interval)) if ok else None


def _local_rate_limit(spec: AerakiLocalRateLimit, report: _Reporter) -> LocalRateLimit | None:
    """MetaRouter.localRateLimit: a default token bucket and ordered conditions."""
    path = "spec.localRateLimit"
    default = _bucket(spec.token_bucket, f"{path}.tokenBucket", report) if spec.HasField("token_bucket") else None
    conditions = []
    for i, c in enumerate(spec.conditions):
        cpath = f"{path}.conditions[{i}]"
        if not c.HasField("token_bucket"):
            report("tokenBucket is required", f"{cpath}.tokenBucket")
            continue
        bucket = _bucket(c.token_bucket, f"{cpath}.tokenBucket", report)
        matchers = _matchers(c.match, f"{cpath}.match", report)
        if bucket is not None:
            conditions.append(RateLimitCondition(matchers, bucket))
    if not spec.HasField("token_bucket") and not spec.conditions:
        report("needs tokenBucket or conditions", path)
        return None
    return LocalRateLimit(tuple(conditions), default)


def _global_rate_limit(spec: MetaRouter, world: _World, extra: dict[str, ClusterConfig], report: _Reporter) -> GlobalRateLimit | None:
    """MetaRouter.globalRateLimit; the service's cluster (``outbound|<port>||<host>``) is made from
    its ServiceEntry, whatever the port's protocol."""
    g = spec.global_rate_limit
    path = "spec.globalRateLimit"
    parts = g.rate_limit_service.split("|")
    host, port = (parts[3], parts[1]) if len(parts) == 4 else ("", "")  # noqa: PLR2004
    se = world.service_entry(host) if host else None
    if se is None or not port.isdigit():
        report(f"rateLimitService {g.rate_limit_service!r} is not outbound|<port>||<host> of a known ServiceEntry", f"{path}.rateLimitService")
        return None
    se_spec = se.message(ServiceEntry)
    port_name = next((p.name for p in se_spec.ports if p.number == int(port)), "")
    if not port_name:
        report(f"{host} has no port {port}", f"{path}.rateLimitService")
    if not g.domain:
        report("domain is required", f"{path}.domain")
    descriptors = tuple((d.property.lower(), d.descriptor_key) for d in g.descriptors if d.property and d.descriptor_key)
    if not descriptors or len(descriptors) != len(g.descriptors):
        report("descriptors are required, each with property and descriptorKey", f"{path}.descriptors")
    matchers = _matchers(g.match, f"{path}.match", report)
    if not port_name or not g.domain or not descriptors:
        return None
    endpoints = tuple(Endpoint(e.address, e.ports.get(port_name, int(port))) for e in se_spec.endpoints if e.address)
    extra[g.rate_limit_service] = ClusterConfig(g.rate_limit_service, endpoints)
    timeout = seconds(g.request_timeout) if g.HasField("request_timeout") else 0.02
    return GlobalRateLimit(domain=g.domain, service_cluster=g.rate_limit_service, descriptors=descriptors, match=matchers, timeout=timeout, deny_on_fail=g.deny_on_fail)


def problems_of(problems: Iterable[Problem], ref: str) -> list[Problem]:
    """The problems of one object."""
    return [p for p in problems if p.obj == ref]


def report_lines(problems: Iterable[Problem]) -> list[str]:
    """``error: file:line: Kind ns/name: path: reason`` (and ``warning: ...``) for every problem,
    by file and line, then a count when there is any."""
    ordered = sorted(problems, key=lambda p: (p.source, p.line or 0))
    lines = [f"{'error' if p.fatal else 'warning'}: {p}" for p in ordered]
    if ordered:
        errors = sum(p.fatal for p in ordered)
        objects = len({(p.source, p.obj) for p in ordered if p.fatal and p.obj != "-"})
        lines.append(f"{errors} error(s) in {objects} object(s), {len(ordered) - errors} warning(s)")
    return lines

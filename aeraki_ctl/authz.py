"""Authorization policies -> the RBAC filters of the MetaProtocol listeners they select.

Two kinds, read as their owners define them:

* Istio's ``AuthorizationPolicy`` (``security.istio.io`` v1 and v1beta1, one schema);
* Aeraki's ``DubboAuthorizationPolicy`` (``dubbo.aeraki.io/v1alpha1``), for Dubbo listeners only.

**Where a policy applies.** Our proxy has one listener per MetaProtocol service port. A policy in
namespace N applies to the listeners of the services declared in N (their ServiceEntry, or the
Kubernetes Service, is in N); a policy in the root namespace (``istio-system`` unless
``Options.root_namespace`` says otherwise) to the listeners of every namespace. With
``selector.matchLabels`` only to the listeners of services one of whose endpoints carries all
those labels (the workload a selector picks is behind that listener: when only some endpoints
carry them, the policy still guards the whole listener, which denies more, never less). With
``targetRefs`` (``kind: ServiceEntry``, group ``networking.istio.io``, or ``kind: Service``, group
``""``/``core``, in the policy's namespace) only to the listeners of those services. A
DubboAuthorizationPolicy has no selector (Aeraki's message has none): its namespace's (or every
namespace's, from the root namespace) Dubbo listeners.

**What a policy becomes.** Istio's own translation: each rule is one Envoy RBAC policy
(``ns[<ns>]-policy[<name>]-rule[<i>]``) whose permission is the AND of its ``to`` (an OR of
operations, each the AND of its fields) and its request conditions (``when`` on
``request.metadata[...]`` and ``destination.port``), and whose principal is the AND of its
``from`` (an OR of sources, each the AND of its fields) and its connection conditions (``when`` on
``source.principal``, ``source.namespace``, ``source.ip``). Values: exact, ``prefix*``,
``*suffix``, ``*`` (present). A principal ``cluster.local/ns/x/sa/y`` is the SPIFFE id
``spiffe://cluster.local/ns/x/sa/y``; a namespace ``x`` matches the principal ``.*/ns/x/.*`` (as
Istio does: Envoy's RBAC has no namespace). A port is the listener's port (the service port plus
``Options.port_offset``).

**Order** (Istio's): a listener gets up to three RBAC filters: the AUDIT policies (action LOG:
nothing refused), then all DENY policies in one filter, then all ALLOW policies in one filter (a
request that no ALLOW policy matches is refused when at least one ALLOW policy applies). A policy
without rules matches nothing: an ALLOW one still makes an ALLOW filter (so it denies everything
no other ALLOW policy allows), a DENY or AUDIT one adds nothing. ``rules: [{}]`` matches everything.
A policy annotated ``istio.io/dry-run: "true"`` goes into its action's filter as shadow rules
(evaluated and counted, never enforced), as Istio does.

**Checked like every kind**: every problem with its field path. What a MetaProtocol request
cannot have (HTTP methods, paths and hosts, request headers, JWT principals, X-Forwarded-For
addresses) and the CUSTOM action are errors, never ignored: the policy is rejected and its last
valid version keeps serving.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

from aeraki_ctl.resources import Problem, Resource
from metaprotocol.config.model import AttributeMatcher, MatchKind, RbacAction, RbacFilter, RbacOp, RbacPolicy, RbacRule
from metaprotocol_api.dubbo_aeraki_io.v1alpha1.dubbo_authorization_policy_pb2 import DubboAuthorizationPolicy
from metaprotocol_api.istio.security.v1beta1.authorization_policy_pb2 import AuthorizationPolicy, Condition, Operation, Source

ROOT_NAMESPACE = "istio-system"
KINDS = ("AuthorizationPolicy", "DubboAuthorizationPolicy")
DUBBO_CODEC = "aeraki.meta_protocol.codec.dubbo"
PRINCIPAL = "source.principal"
SPIFFE = "spiffe://"
DRY_RUN = "istio.io/dry-run"
STAT_PREFIXES = {RbacAction.LOG: "authz_audit", RbacAction.DENY: "authz_deny", RbacAction.ALLOW: "authz_allow"}
_METADATA_KEY = re.compile(r"^request\.metadata\[([^\[\]]+)\]$")
_ANY = RbacRule(RbacOp.ANY)
_ACTIONS = {AuthorizationPolicy.ALLOW: RbacAction.ALLOW, AuthorizationPolicy.DENY: RbacAction.DENY, AuthorizationPolicy.AUDIT: RbacAction.LOG}
_DUBBO_ACTIONS = {DubboAuthorizationPolicy.ALLOW: RbacAction.ALLOW, DubboAuthorizationPolicy.DENY: RbacAction.DENY}
_HTTP_ONLY_HINT = "a MetaProtocol request has none; match a request attribute with when: request.metadata[<attribute>]"
_CONDITION_KEYS = "request.metadata[<attribute>], source.principal, source.namespace, source.ip, destination.port"
_TARGET_KINDS = {("networking.istio.io", "ServiceEntry"): "", ("", "Service"): ".svc", ("core", "Service"): ".svc"}


@dataclass(frozen=True)
class Authz:
    """A valid policy, translated: where it applies and its rules as Envoy RBAC policies."""

    ref: str
    namespace: str
    action: RbacAction
    selector: tuple[tuple[str, str], ...] = ()
    targets: tuple[str, ...] | None = None  # names of the ServiceEntry resources targeted; None: by selector
    dubbo_only: bool = False
    policies: tuple[RbacPolicy, ...] = ()
    dry_run: bool = False  # istio.io/dry-run: shadow rules (evaluated and counted, never enforced)

    def applies(self, namespace: str, root_namespace: str, service: str, codec: str, endpoint_labels: Iterable[Iterable[tuple[str, str]]]) -> bool:
        """Whether the policy guards a listener of a service declared in ``namespace`` by the
        ServiceEntry(-shaped resource) named ``service``, of codec ``codec``, whose endpoints carry
        ``endpoint_labels``."""
        if self.namespace not in (namespace, root_namespace):
            return False
        if self.dubbo_only and codec != DUBBO_CODEC:
            return False
        if self.targets is not None:
            return self.namespace == namespace and service in self.targets
        if not self.selector:
            return True
        wanted = set(self.selector)
        return any(wanted <= set(labels) for labels in endpoint_labels)


def filters(applicable: Sequence[Authz]) -> tuple[RbacFilter, ...]:
    """A listener's RBAC filters from the policies that apply to it: AUDIT (LOG), then DENY, then
    ALLOW, each one filter of all the policies of that action; the dry-run policies of an action
    are that filter's shadow rules (as Istio makes them)."""
    out = []
    for action in (RbacAction.LOG, RbacAction.DENY, RbacAction.ALLOW):
        for dry_run in (False, True):
            mine = [a for a in applicable if a.action is action and a.dry_run is dry_run]
            policies = tuple(sorted((p for a in mine for p in a.policies), key=lambda p: p.name))
            if mine and (policies or action is RbacAction.ALLOW):
                prefix = STAT_PREFIXES[action]
                out.append(RbacFilter(prefix.replace("authz_", "authz_dry_run_") if dry_run else prefix, action, policies, enforced=not dry_run))
    return tuple(out)


# -- checking and translating ---------------------------------------------------------------------


class _Report:
    def __init__(self, r: Resource, problems: list[Problem]) -> None:
        self.r, self.problems, self.errors = r, problems, 0

    def __call__(self, reason: str, path: str, fatal: bool = True) -> None:
        self.errors += fatal
        self.problems.append(self.r.problem(reason, path, fatal))


def check(r: Resource, problems: list[Problem], port_offset: int = 0) -> Authz | None:
    """The policy translated, or None when it has an error (every one is told in ``problems``)."""
    report = _Report(r, problems)
    if r.kind == "DubboAuthorizationPolicy":
        made = _dubbo(r, r.message(DubboAuthorizationPolicy), report)
    else:
        made = _istio(r, r.message(AuthorizationPolicy), report, port_offset)
    dry_run = r.annotations.get(DRY_RUN, "false").strip().lower()
    if dry_run not in ("true", "false"):
        report(f"{DRY_RUN} must be \"true\" or \"false\", not {r.annotations[DRY_RUN]!r}", f"metadata.annotations.{DRY_RUN}")
    if report.errors or r.rejected:
        return None
    return replace(made, dry_run=True) if dry_run == "true" else made


def _name(r: Resource, i: int) -> str:
    kind = "dubbo-policy" if r.kind == "DubboAuthorizationPolicy" else "policy"
    return f"ns[{r.namespace}]-{kind}[{r.name}]-rule[{i}]"


def _istio(r: Resource, spec: AuthorizationPolicy, report: _Report, offset: int) -> Authz:
    action = _ACTIONS.get(spec.action)
    if spec.action == AuthorizationPolicy.CUSTOM:
        report("CUSTOM (an external authorizer) is not supported: use ALLOW, DENY or AUDIT", "spec.action")
    if spec.HasField("provider") and spec.action != AuthorizationPolicy.CUSTOM:
        report("provider is only for action CUSTOM", "spec.provider")
    elif spec.HasField("provider"):
        report("CUSTOM providers are not supported", "spec.provider")
    targets: tuple[str, ...] | None = None
    refs = [("spec.targetRef", spec.targetRef)] if spec.HasField("targetRef") else []
    refs += [(f"spec.targetRefs[{i}]", t) for i, t in enumerate(spec.targetRefs)]
    if refs:
        if spec.HasField("selector"):
            report("at most one of selector and targetRefs can be set", "spec.selector")
        if spec.HasField("targetRef") and spec.targetRefs:
            report("at most one of targetRef and targetRefs can be set", "spec.targetRef")
        targets = tuple(_target(r, path, t, report) for path, t in refs)
    selector = tuple(sorted(spec.selector.match_labels.items()))
    for k, _ in selector:
        if not k:
            report("a label key cannot be empty", "spec.selector.matchLabels")
    policies = []
    for i, rule in enumerate(spec.rules):
        path = f"spec.rules[{i}]"
        principals = [_or([_source(f.source, f"{path}.from[{j}].source", r.namespace, report) for j, f in enumerate(getattr(rule, "from"))])] if getattr(rule, "from") else []
        permissions = [_or([_operation(t.operation, f"{path}.to[{j}].operation", offset, report) for j, t in enumerate(rule.to)])] if rule.to else []
        for k, c in enumerate(rule.when):
            made = _condition(c, f"{path}.when[{k}]", offset, report)
            if made is not None:
                (permissions if made[0] else principals).append(made[1])
        policies.append(RbacPolicy(_name(r, i), _top(_and(permissions)), _top(_and(principals))))
    return Authz(r.ref, r.namespace, action or RbacAction.ALLOW, selector, targets, False, tuple(policies))


def _target(r: Resource, path: str, t: object, report: _Report) -> str:
    group, kind, name, namespace = (getattr(t, f) for f in ("group", "kind", "name", "namespace"))
    suffix = _TARGET_KINDS.get((group, kind))
    if suffix is None:
        report(f"targetRefs of kind {kind!r} (group {group!r}) are not supported: a ServiceEntry (group networking.istio.io) or a Service (group \"\")", f"{path}.kind")
        return ""
    if not name:
        report("name is required", f"{path}.name")
    if namespace and namespace != r.namespace:
        report(f"a target must be in the policy's namespace ({r.namespace}), not {namespace}", f"{path}.namespace")
    return f"{name}{suffix}"


def _dubbo(r: Resource, spec: DubboAuthorizationPolicy, report: _Report) -> Authz:
    policies = []
    for i, rule in enumerate(spec.rules):
        path = f"spec.rules[{i}]"
        principals = [_or([_source(f.source, f"{path}.from[{j}].source", r.namespace, report) for j, f in enumerate(getattr(rule, "from"))])] if getattr(rule, "from") else []
        permissions = []
        if rule.to:
            ops = []
            for j, t in enumerate(rule.to):
                op, opath = t.operation, f"{path}.to[{j}].operation"
                terms = []
                for attr, fname, json in (("interface", "interfaces", "interfaces"), ("method", "methods", "methods")):
                    terms += _field(getattr(op, fname), f"{opath}.{json}", _request(attr), report)
                    terms += _not(_field(getattr(op, f"not_{fname}"), f"{opath}.not{json.capitalize()}", _request(attr), report))
                ops.append(_and(terms))
            permissions.append(_or(ops))
        policies.append(RbacPolicy(_name(r, i), _top(_and(permissions)), _top(_and(principals))))
    return Authz(r.ref, r.namespace, _DUBBO_ACTIONS.get(spec.action, RbacAction.ALLOW), dubbo_only=True, policies=tuple(policies))


# -- sources, operations, conditions --------------------------------------------------------------


def _source(s: Source, path: str, namespace: str, report: _Report) -> RbacRule:
    """The AND of a source's fields (an empty source matches any client)."""
    terms: list[RbacRule] = []
    fields: tuple[tuple[str, str, _Make], ...] = (("principals", "principals", _principal), ("namespaces", "namespaces", _namespace), ("trust_domains", "trustDomains", _trust_domain),
                              ("ip_blocks", "ipBlocks", _ip_block))  # fmt: skip
    for fname, json, make in fields:
        if hasattr(s, fname):
            terms += _field(getattr(s, fname), f"{path}.{json}", make, report)
            terms += _not(_field(getattr(s, f"not_{fname}"), f"{path}.not{json[0].upper()}{json[1:]}", make, report))
    if hasattr(s, "service_accounts"):
        if (s.service_accounts or s.not_service_accounts) and (s.principals or s.not_principals or s.namespaces or s.not_namespaces):
            report("serviceAccounts cannot be set with principals or namespaces", f"{path}.serviceAccounts")
        account = _service_account(namespace)
        terms += _field(s.service_accounts, f"{path}.serviceAccounts", account, report)
        terms += _not(_field(s.not_service_accounts, f"{path}.notServiceAccounts", account, report))
        for fname, json, why in (("request_principals", "requestPrincipals", "JWT request principals are HTTP only (a MetaProtocol request has no JWT)"),
                                 ("not_request_principals", "notRequestPrincipals", "JWT request principals are HTTP only (a MetaProtocol request has no JWT)"),
                                 ("remote_ip_blocks", "remoteIpBlocks", "remote IP blocks come from X-Forwarded-For or the PROXY protocol, which a MetaProtocol listener does not read; use ipBlocks"),
                                 ("not_remote_ip_blocks", "notRemoteIpBlocks", "remote IP blocks come from X-Forwarded-For or the PROXY protocol, which a MetaProtocol listener does not read; use notIpBlocks")):  # fmt: skip
            if getattr(s, fname):
                report(f"not supported: {why}", f"{path}.{json}")
    return _and(terms)


def _operation(op: Operation, path: str, offset: int, report: _Report) -> RbacRule:
    terms = _field(op.ports, f"{path}.ports", _port(offset), report)
    terms += _not(_field(op.not_ports, f"{path}.notPorts", _port(offset), report))
    for fname, json in (("hosts", "hosts"), ("not_hosts", "notHosts"), ("methods", "methods"), ("not_methods", "notMethods"), ("paths", "paths"), ("not_paths", "notPaths")):
        if getattr(op, fname):
            report(f"{json} is HTTP only: {_HTTP_ONLY_HINT}", f"{path}.{json}")
    return _and(terms)


def _condition(c: Condition, path: str, offset: int, report: _Report) -> tuple[bool, RbacRule] | None:
    """(whether it is a permission (request) condition, the rule), or None with a problem."""
    if not c.key:
        report("key is required", f"{path}.key")
        return None
    if not c.values and not c.not_values:
        report("at least one of values and notValues is required", path)
        return None
    m = _METADATA_KEY.match(c.key)
    make: _Make
    if m is not None:
        permission, make = True, _request(m.group(1).strip().lower())
    elif c.key == "destination.port":
        permission, make = True, _port(offset)
    elif c.key == "source.principal":
        permission, make = False, _principal
    elif c.key == "source.namespace":
        permission, make = False, _namespace
    elif c.key == "source.ip":
        permission, make = False, _ip_block
    elif c.key.startswith(("request.headers", "request.auth", "request.regex")):
        report(f"{c.key} is HTTP only: {_HTTP_ONLY_HINT}", f"{path}.key")
        return None
    else:
        report(f"{c.key!r} is not supported for MetaProtocol requests (supported: {_CONDITION_KEYS})", f"{path}.key")
        return None
    terms = _field(c.values, f"{path}.values", make, report) + _not(_field(c.not_values, f"{path}.notValues", make, report))
    return permission, _and(terms)


# -- values ---------------------------------------------------------------------------------------

_Make = Callable[[str, str, _Report], RbacRule | None]
"""A value's rule (value, its path, where to report a problem)."""


def _field(values: Sequence[str], path: str, make: _Make, report: _Report) -> list[RbacRule]:
    """One term (an OR of the values' rules) when the list is set, none when it is empty."""
    if not values:
        return []
    rules = []
    for i, v in enumerate(values):
        if not v:
            report("a value cannot be empty", f"{path}[{i}]")
            continue
        made = make(v, f"{path}[{i}]", report)
        if made is not None:
            rules.append(made)
    return [_or(rules)] if rules else []


def _not(terms: list[RbacRule]) -> list[RbacRule]:
    return [RbacRule(RbacOp.NOT, (t,)) for t in terms]


def _pattern(v: str) -> tuple[MatchKind, str]:
    """Istio's value semantics: ``*`` present, ``abc*`` prefix, ``*abc`` suffix, else exact."""
    if v == "*":
        return MatchKind.PRESENT, "true"
    if v.endswith("*"):
        return MatchKind.PREFIX, v[:-1]
    if v.startswith("*"):
        return MatchKind.SUFFIX, v[1:]
    return MatchKind.EXACT, v


def _request(attribute: str) -> _Make:
    """Values of a request metadata attribute (``request.metadata[<attribute>]``)."""

    def make(v: str, path: str, report: _Report) -> RbacRule | None:
        kind, value = _pattern(v)
        return RbacRule(RbacOp.REQUEST, matcher=AttributeMatcher(attribute, kind, value))

    return make


def _peer(kind: MatchKind, value: str) -> RbacRule:
    return RbacRule(RbacOp.PEER, matcher=AttributeMatcher(PRINCIPAL, kind, value))


def _principal(v: str, path: str, report: _Report) -> RbacRule | None:
    kind, value = _pattern(v)
    if kind is MatchKind.PRESENT:  # any authenticated client (Envoy: authenticated without a name)
        return _peer(kind, "")
    if kind in (MatchKind.EXACT, MatchKind.PREFIX) and not value.startswith(SPIFFE):
        value = SPIFFE + value
    return _peer(kind, value)


def _namespace(v: str, path: str, report: _Report) -> RbacRule | None:
    """A namespace as Istio matches it: on the principal, ``.*/ns/<ns>/.*``."""
    kind, value = _pattern(v)
    ns = {MatchKind.PRESENT: "[^/]+", MatchKind.PREFIX: re.escape(value) + "[^/]*", MatchKind.SUFFIX: "[^/]*" + re.escape(value)}.get(kind, re.escape(value))
    return _peer(MatchKind.REGEX, f".*/ns/{ns}/.*")


def _trust_domain(v: str, path: str, report: _Report) -> RbacRule | None:
    kind, value = _pattern(v)
    td = {MatchKind.PRESENT: "[^/]+", MatchKind.PREFIX: re.escape(value) + "[^/]*", MatchKind.SUFFIX: "[^/]*" + re.escape(value)}.get(kind, re.escape(value))
    return _peer(MatchKind.REGEX, f"spiffe://{td}/.*")


def _service_account(namespace: str) -> _Make:
    def make(v: str, path: str, report: _Report) -> RbacRule | None:
        if "*" in v:
            report("no wildcard is allowed in a service account", path)
            return None
        ns, _, sa = v.rpartition("/")
        if "/" in ns or (not ns and "/" in v) or not sa:
            report(f"{v!r} is not <namespace>/<serviceaccount> or <serviceaccount>", path)
            return None
        return _peer(MatchKind.SUFFIX, f"/ns/{ns or namespace}/sa/{sa}")

    return make


def _ip_block(v: str, path: str, report: _Report) -> RbacRule | None:
    try:
        net = ipaddress.ip_network(v.strip(), strict=False)
    except ValueError as exc:
        report(f"not an IP address or CIDR block: {exc}", path)
        return None
    return RbacRule(RbacOp.SOURCE_IP, cidr=(str(net.network_address), net.prefixlen))


def _port(offset: int) -> _Make:
    def make(v: str, path: str, report: _Report) -> RbacRule | None:
        if not v.isdigit() or not 1 <= int(v) <= 65535:  # noqa: PLR2004
            report(f"a port is a number 1..65535, not {v!r}", path)
            return None
        port = int(v) + offset
        return RbacRule(RbacOp.DESTINATION_PORT, ports=(port, port))

    return make


# -- rule trees -----------------------------------------------------------------------------------


def _and(terms: list[RbacRule]) -> RbacRule:
    flat: list[RbacRule] = []
    for t in terms:
        if t.op is RbacOp.AND:
            flat.extend(t.children)
        elif t.op is not RbacOp.ANY:
            flat.append(t)
    if not flat:
        return _ANY
    return flat[0] if len(flat) == 1 else RbacRule(RbacOp.AND, tuple(flat))


def _or(terms: list[RbacRule]) -> RbacRule:
    if not terms or any(t.op is RbacOp.ANY for t in terms):
        return _ANY
    flat: list[RbacRule] = []
    for t in terms:
        flat.extend(t.children if t.op is RbacOp.OR else (t,))
    return flat[0] if len(flat) == 1 else RbacRule(RbacOp.OR, tuple(flat))


def _top(rule: RbacRule) -> tuple[RbacRule, ...]:
    """A policy's permissions (or principals) are OR'ed: an OR at the top is its members."""
    return rule.children if rule.op is RbacOp.OR else (rule,)

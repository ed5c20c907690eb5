"""Istio's ``Sidecar``: which services a proxy receives (its listeners, route tables, clusters and
endpoints), checked and resolved as Istio does.

A proxy is in a namespace and has labels (from its node metadata, see :func:`node_identity`).
The Sidecar that applies to it is, as in Istio: the one of its namespace whose
``workloadSelector.labels`` match its labels (the first by name if several do), else the one of its
namespace without a selector, else the one without a selector in the root namespace
(``istio-system``), else none, and then it receives everything (Istio's default). The Sidecar's
``egress[].hosts`` (``namespace/dnsName``) say which services it imports: namespace ``*`` (any),
``.`` (the Sidecar's namespace, or the proxy's for a root-namespace Sidecar), ``~`` (none) or a
name; dnsName ``*``, ``*.suffix`` or an exact host. An egress listener with ``port.number`` imports
only that port of the services it names. Pure: the server caches one view per distinct scope.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from aeraki_ctl.resources import Problem, Resource
from metaprotocol_api.istio.networking.v1alpha3.sidecar_pb2 import Sidecar

ROOT_NAMESPACE = "istio-system"  # Istio's default meshConfig.rootNamespace
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS = re.compile(r"^(\*|(\*\.)?[A-Za-z0-9]([-A-Za-z0-9_]*[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9_]*[A-Za-z0-9])?)*\.?)$")


@dataclass(frozen=True)
class Import:
    """One ``namespace/dnsName`` of an egress listener (``port`` 0: every port)."""

    namespace: str
    dns: str
    port: int = 0

    def matches(self, own_namespace: str, namespace: str, host: str, port: int) -> bool:
        """Whether a service port (``host``:``port`` declared in ``namespace``) is imported."""
        if self.port and self.port != port:
            return False
        if self.namespace == "~" or (self.namespace not in ("*", ".") and self.namespace != namespace):
            return False
        if self.namespace == "." and namespace != own_namespace:
            return False
        if self.dns == "*":
            return True
        if self.dns.startswith("*."):
            return host.endswith(self.dns[1:])
        return host == self.dns


@dataclass(frozen=True)
class Scope:
    """What one kind of proxy sees: the Sidecar that applies (``ref``) read for a namespace (``.``
    is the Sidecar's own namespace, or the proxy's for a root-namespace Sidecar). Hashable: the
    key of the server's view cache."""

    ref: str
    namespace: str
    imports: tuple[Import, ...]

    def sees(self, namespace: str, host: str, port: int) -> bool:
        """Whether a service port declared in ``namespace`` is in this scope."""
        return any(i.matches(self.namespace, namespace, host, port) for i in self.imports)


@dataclass(frozen=True)
class _Rule:
    ref: str
    namespace: str
    selector: tuple[tuple[str, str], ...]
    imports: tuple[Import, ...]


class ScopeRules:
    """The served Sidecars, and which applies to a proxy."""

    def __init__(self, sidecars: Iterable[Resource] = (), root_namespace: str = ROOT_NAMESPACE) -> None:
        self.root_namespace = root_namespace
        self.by_namespace: dict[str, list[_Rule]] = {}
        for r in sorted(sidecars, key=lambda r: (r.namespace, r.name)):
            spec = r.message(Sidecar)
            imports = tuple(_imports(spec))
            selector = tuple(sorted(spec.workload_selector.labels.items()))
            self.by_namespace.setdefault(r.namespace, []).append(_Rule(r.ref, r.namespace, selector, imports))
        self.key = tuple((ns, tuple(rules)) for ns, rules in sorted(self.by_namespace.items()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ScopeRules) and (self.key, self.root_namespace) == (other.key, other.root_namespace)

    def __hash__(self) -> int:
        return hash((self.key, self.root_namespace))

    def scope_of(self, namespace: str, labels: Mapping[str, str]) -> Scope | None:
        """The scope of a proxy in ``namespace`` with ``labels``; None: it sees everything."""
        rules = self.by_namespace.get(namespace, [])
        for rule in rules:
            if rule.selector and all(labels.get(k) == v for k, v in rule.selector):
                return Scope(rule.ref, rule.namespace, rule.imports)
        for rule in rules:
            if not rule.selector:
                return Scope(rule.ref, rule.namespace, rule.imports)
        for rule in self.by_namespace.get(self.root_namespace, []):
            if not rule.selector:
                return Scope(rule.ref, namespace, rule.imports)  # "." is the proxy's namespace
        return None


def _imports(spec: Sidecar) -> Iterable[Import]:
    for egress in spec.egress:
        for h in egress.hosts:
            ns, _, dns = h.partition("/")
            yield Import("." if ns in (".", "./") else ns, dns, egress.port.number if egress.HasField("port") else 0)


def node_identity(node_id: str, metadata: Mapping[str, object]) -> tuple[str, dict[str, str]]:
    """A proxy's namespace and labels, as Istio's sidecars tell them: ``NAMESPACE`` and ``LABELS``
    in ``node.metadata`` (LABELS a map, or a string: JSON or ``k=v,k=v``); without NAMESPACE, the
    namespace of an Istio node id ``sidecar~<ip>~<pod>.<ns>~<ns>.svc.cluster.local``."""
    namespace = metadata.get("NAMESPACE")
    raw = metadata.get("LABELS")
    labels: dict[str, str] = {}
    if isinstance(raw, Mapping):
        labels = {str(k): str(v) for k, v in raw.items()}
    elif isinstance(raw, str) and raw.strip().startswith("{"):
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = {}
        labels = {str(k): str(v) for k, v in parsed.items()} if isinstance(parsed, dict) else {}
    elif isinstance(raw, str):
        labels = dict(kv.split("=", 1) for kv in raw.split(",") if "=" in kv)
    if isinstance(namespace, str) and namespace:
        return namespace, labels
    parts = node_id.split("~")
    if len(parts) == 4:  # noqa: PLR2004 - type~ip~id~domain
        pod = parts[2]
        if "." in pod:
            return pod.split(".", 1)[1], labels
        return parts[3].split(".", 1)[0], labels
    return "", labels


# -- validation ------------------------------------------------------------------------------------


def check(sidecars: list[Resource], problems: list[Problem]) -> list[Resource]:
    """Every problem of the Sidecars of one namespace (in name order); the valid ones (not read
    with an error, none found here) are returned. Two without a workloadSelector in a namespace is
    an error on the later one (Istio leaves the choice undefined)."""
    valid: list[Resource] = []
    catch_all: Resource | None = None
    for r in sorted(sidecars, key=lambda r: r.name):
        before = sum(p.fatal for p in problems)
        _check_one(r, problems)
        spec = r.message(Sidecar)
        if not spec.workload_selector.labels and not r.rejected:
            if catch_all is not None:
                problems.append(r.problem(f"another Sidecar without workloadSelector ({catch_all.ref}) applies to namespace {r.namespace}; this one is ignored", "spec.workloadSelector"))
            else:
                catch_all = r
        if not r.rejected and sum(p.fatal for p in problems) == before:
            valid.append(r)
    return valid


def _check_one(r: Resource, problems: list[Problem]) -> None:
    spec = r.message(Sidecar)
    report = _Report(r, problems)
    if not spec.egress:
        report("egress is required: at least one listener with hosts (namespace/dnsName)", "spec.egress")
    catch_alls = 0
    for i, e in enumerate(spec.egress):
        path = f"spec.egress[{i}]"
        if not e.hosts:
            report("hosts is required (namespace/dnsName)", f"{path}.hosts")
        for j, h in enumerate(e.hosts):
            ns, slash, dns = h.partition("/")
            if not slash or not ns or not dns:
                report(f"{h!r} is not namespace/dnsName (e.g. ./*, istio-system/*, */foo.example.com)", f"{path}.hosts[{j}]")
            elif ns not in ("*", ".", "./", "~") and not _LABEL.match(ns):
                report(f"{ns!r} is not a namespace (a DNS label, *, . or ~)", f"{path}.hosts[{j}]")
            elif not _DNS.match(dns):
                report(f"{dns!r} is not a host name (*, *.suffix or a host)", f"{path}.hosts[{j}]")
        if e.HasField("port"):
            if not 1 <= e.port.number <= 65535:  # noqa: PLR2004
                report(f"port.number must be 1..65535, not {e.port.number}", f"{path}.port.number")
        else:
            catch_alls += 1
            if catch_alls > 1:
                report("only one egress listener may have no port", f"{path}.port")
        if e.bind:
            report.warn("bind is not supported (the proxy binds where the listener says); ignored", f"{path}.bind")
        if e.capture_mode:
            report.warn("captureMode is not supported; ignored", f"{path}.captureMode")
    for k in spec.workload_selector.labels:
        if not k:
            report("a label key must not be empty", "spec.workloadSelector.labels")
    if spec.ingress:
        report.warn("ingress is not supported (aeraki-ctl configures outbound listeners only); ignored", "spec.ingress")
    for fname, jname in (("inbound_connection_pool", "inboundConnectionPool"), ("outbound_traffic_policy", "outboundTrafficPolicy")):
        if spec.HasField(fname):
            report.warn(f"{jname} is not supported; ignored", f"spec.{jname}")


class _Report:
    def __init__(self, r: Resource, out: list[Problem]) -> None:
        self.r, self.out = r, out

    def __call__(self, reason: str, path: str, fatal: bool = True) -> None:
        self.out.append(self.r.problem(reason, path, fatal))

    def warn(self, reason: str, path: str) -> None:
        self(reason, path, fatal=False)

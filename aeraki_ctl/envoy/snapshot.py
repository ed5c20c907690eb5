"""The snapshot served to Envoy nodes, made from the same host outputs as our proxies' snapshot.

Only the hosts a sync redid are translated and packed again. A listener that Envoy's filter cannot
express (a fatal ``Gap``) is rejected for Envoy alone: Envoy nodes keep its last translatable
version, or do not get it at all if it never had one (never a default route in its place); our
proxies get the new version from their own snapshot. Sidecar scoping applies as for our proxies
(the snapshot carries each host's ports and the Sidecar rules; the server's views of Envoy nodes
count Envoy's own route table types).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from aeraki_ctl.envoy.common import EnvoyListener, Gap
from aeraki_ctl.envoy.translate import EnvoyHost, translate_host
from aeraki_ctl.incremental import HostOutput, PortView
from aeraki_ctl.lifecycle import EnvoyStatus
from aeraki_ctl.resources import Problem, Resource as Object
from aeraki_ctl.sidecar import ScopeRules
from aeraki_ctl.translate import Options
from aeraki_ctl.xds.snapshot import TYPES, Resource, Snapshot, resource, version_of
from metaprotocol.config.model import ListenerConfig
from metaprotocol.xds import convert

SERVING: str = "serving"  # the current version is served to Envoy
SERVING_LAST: str = "serving-last-translatable"  # rejected for Envoy; its last translatable version serves
NOT_SERVED: str = "not-served"  # rejected for Envoy and never translatable: Envoy nodes do not get it


@dataclass
class ListenerVerdict:
    """What Envoy nodes get for one listener, and why."""

    state: str
    gaps: list[Gap] = field(default_factory=list)


class EnvoySnapshotBuilder:
    """Envoy's snapshots, host by host (see the module's docstring)."""

    def __init__(self, port_offset: int = 0, identity_dir: str = Options.identity_dir) -> None:
        self.port_offset = port_offset  # added to every listener port (Options.envoy_port_offset)
        self.identity_dir = identity_dir  # TLS with these files is the workload identity: SDS for Envoy
        self._served: dict[str, dict[str, EnvoyListener]] = {}  # host -> listener -> the version Envoy gets
        self._packed: dict[str, dict[str, dict[str, Resource]]] = {}  # host -> type URL -> name -> resource
        self.verdicts: dict[str, dict[str, ListenerVerdict]] = {}  # host -> listener -> verdict (with gaps)
        self._providers: dict[tuple[str, str], dict[str, Resource]] = {}  # (type URL, name) -> host -> its version of it
        self._own: dict[str, frozenset[str]] = {}  # host -> the clusters that are its own (not added by its MetaRouter)
        self._sums: dict[str, int] = {}
        self._hosts: dict[str, tuple[PortView, ...]] = {}
        self._security: dict[str, dict[str, object]] = {}  # host -> listener -> the security of the version served
        self.snapshot = Snapshot(hosts={})

    def build(self, outputs: Mapping[str, HostOutput], touched: Iterable[str], scopes: ScopeRules | None = None) -> Snapshot:
        """The next snapshot: ``outputs`` are every host's, ``touched`` those redone since the
        last build (every host of ``outputs`` on the first build), ``scopes`` the served Sidecars
        (None: unchanged). Made from the previous one: only the names the touched hosts provide are
        looked at, and the snapshot says which changed (so the server compares nothing)."""
        prev = self.snapshot
        touched = list(touched)
        # Every host rendered first, nothing kept yet: a failure leaves the builder as it was.
        rendered = {h: translate_host(out, self.port_offset, self.identity_dir) for h in touched if (out := outputs.get(h)) is not None}
        seen: set[tuple[str, str]] = set()
        moved_hosts: set[str] = set()
        for h in touched:
            before = self._packed.get(h, {})
            out = outputs.get(h)
            if out is None:
                for table in (self._served, self._packed, self.verdicts, self._own, self._security):
                    table.pop(h, None)
                if self._hosts.pop(h, None) is not None:
                    moved_hosts.add(h)
                after: dict[str, dict[str, Resource]] = {}
            else:
                self._host(out, rendered[h])
                after = self._packed[h]
                if self._hosts.get(h) != out.ports:
                    self._hosts[h] = out.ports
                    moved_hosts.add(h)
            for type_url in {*before, *after}:
                old, new = before.get(type_url, {}), after.get(type_url, {})
                for name in {*old, *new}:
                    providers = self._providers.setdefault((type_url, name), {})
                    if name in new:
                        providers[h] = new[name]
                    else:
                        providers.pop(h, None)
                    seen.add((type_url, name))
        by_type: dict[str, Mapping[str, Resource]] = {t: prev.of(t) for t in {*TYPES, *prev.resources, *(t for t, _ in seen)}}
        copied: dict[str, dict[str, Resource]] = {}  # the types changed, copied once
        changed: dict[str, set[str]] = {t: set() for t in by_type}
        for type_url, name in seen:
            providers = self._providers.get((type_url, name), {})
            now = self._chosen(name, providers)
            if not providers:
                self._providers.pop((type_url, name), None)
            was = by_type[type_url].get(name)
            if (was.version if was else None) == (now.version if now else None):
                continue
            changed[type_url].add(name)
            self._sums[type_url] = self._sums.get(type_url, 0) - (was.token if was else 0) + (now.token if now else 0)
            if type_url not in copied:
                copied[type_url] = dict(by_type[type_url])
                by_type[type_url] = copied[type_url]
            if now is None:
                del copied[type_url][name]
            else:
                copied[type_url][name] = now
        versions = {t: version_of(self._sums.get(t, 0)) for t in by_type}
        self.snapshot = Snapshot(by_type, versions, base=prev.serial, changed={t: frozenset(n) for t, n in changed.items()}, hosts=dict(self._hosts),
                                 changed_hosts=frozenset(moved_hosts), scopes=prev.scopes if scopes is None else scopes)  # fmt: skip
        return self.snapshot

    def _chosen(self, name: str, providers: Mapping[str, Resource]) -> Resource | None:
        """The version of a resource several hosts provide (a rate limit service's cluster is its
        own host's and added by the MetaRouters that use it): its own host's, else the first
        adder's, as for our proxies' snapshot."""
        if not providers:
            return None
        own = [h for h in providers if name in self._own.get(h, ())]
        return providers[own[0] if own else min(providers)]

    def _host(self, out: HostOutput, translated: EnvoyHost) -> None:
        """Keep one host's rendering. A listener Envoy cannot express keeps its last translatable
        version only while that version's mesh security (TLS, authorization, connection limit) is
        the current one: stale security is never served, the listener is not served instead."""
        before = self._served.get(out.host, {})
        secured = self._security.get(out.host, {})
        security = {lst.name: _security(lst) for lst in out.listeners}
        served: dict[str, EnvoyListener] = {}
        verdicts: dict[str, ListenerVerdict] = {}
        kept: dict[str, object] = {}
        for name, lst in translated.listeners.items():
            if not lst.rejected:
                served[name], kept[name] = lst, security.get(name)
                verdicts[name] = ListenerVerdict(SERVING, lst.gaps)
            elif name in before and secured.get(name) == security.get(name):
                served[name], kept[name] = before[name], secured.get(name)
                verdicts[name] = ListenerVerdict(SERVING_LAST, lst.gaps)
            elif name in before:
                stale = Gap("", "its last translatable version has other TLS, authorization or connection-limit settings than the current ones, "
                                "which Envoy nodes must not keep: not served until it can be translated again")  # fmt: skip
                verdicts[name] = ListenerVerdict(NOT_SERVED, [*lst.gaps, stale])
            else:
                verdicts[name] = ListenerVerdict(NOT_SERVED, lst.gaps)
        self._security[out.host] = kept
        packed: dict[str, dict[str, Resource]] = {}
        for name, lst in served.items():
            assert lst.listener is not None  # noqa: S101 - a served listener has one (``rejected`` otherwise)
            packed.setdefault(convert.LISTENER_TYPE, {})[name] = resource(name, lst.listener)
            for type_url, route_name, msg in lst.routes:
                packed.setdefault(type_url, {})[route_name] = resource(route_name, msg)
        for name, msg in translated.clusters.items():
            packed.setdefault(convert.CLUSTER_TYPE, {})[name] = resource(name, msg)
        for name, msg in translated.endpoints.items():
            packed.setdefault(convert.ENDPOINT_TYPE, {})[name] = resource(name, msg)
        self._served[out.host] = served
        self._own[out.host] = frozenset(out.clusters)
        self._packed[out.host] = packed
        self.verdicts[out.host] = verdicts

    def problems(self, owner_of: Callable[[str], Object | None]) -> list[Problem]:
        """Every gap of the last translations as a problem of the object it comes from (the
        host's MetaRouter, else its ServiceEntry), saying what Envoy nodes get instead."""
        out: list[Problem] = []
        for host in sorted(self.verdicts):
            owner = owner_of(host)
            for name, verdict in sorted(self.verdicts[host].items()):
                fate = _FATE[verdict.state]
                for gap in verdict.gaps:
                    reason = f"Envoy (listener {name}): {gap.reason}" + (f" ({fate})" if gap.fatal else " (approximated on Envoy)")
                    out.append(_problem(owner, host, reason, gap.path, gap.fatal))
        return out


    def statuses(self, owner_of: Callable[[str], Object | None]) -> dict[str, EnvoyStatus]:
        """Per object that owns listeners: the worst state of its listeners on Envoy, and its gaps
        (as ``problems`` says them)."""
        worst: dict[str, int] = {}
        for host, verdicts in self.verdicts.items():
            owner = owner_of(host)
            if owner is None:
                continue
            for verdict in verdicts.values():
                rank = _RANK[verdict.state] if verdict.state != SERVING else int(bool(verdict.gaps))
                worst[owner.ref] = max(worst.get(owner.ref, 0), rank)
        said: dict[str, list[str]] = {}
        for p in self.problems(owner_of):
            said.setdefault(p.obj, []).append(f"{p.path}: {p.reason}" if p.path else p.reason)
        return {ref: EnvoyStatus(_STATES[rank], tuple(said.get(ref, ()))) for ref, rank in worst.items()}


def _security(lst: ListenerConfig) -> object:
    """What of a listener must never be served stale: its TLS, its authorization, its connection limit."""
    return (lst.tls, lst.rbac, lst.max_connections)


_RANK = {SERVING_LAST: 2, NOT_SERVED: 3}
_STATES = ("translated", "approximated", SERVING_LAST, NOT_SERVED)
_FATE = {
    SERVING: "served",
    SERVING_LAST: "rejected for Envoy nodes: they keep its last translatable version",
    NOT_SERVED: "rejected for Envoy nodes: they do not get this listener",
}


def _problem(owner: Object | None, host: str, reason: str, path: str, fatal: bool) -> Problem:
    if owner is None:
        return Problem("-", f"host {host}", reason, fatal, None, path)
    return owner.problem(reason, path, fatal)

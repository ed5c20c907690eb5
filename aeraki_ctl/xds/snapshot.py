"""Immutable, versioned, consistent snapshots of xDS resources (go-control-plane's idea), made
whole (``snapshot_of``) or from the previous one (``SnapshotBuilder``).

A resource's version is a hash of its deterministic serialization; a type's version is the sum of
its resources' tokens (a hash of name and version), so it follows a change in time proportional
to the change, and the same configuration always has the same versions: nothing is pushed when
nothing changed. A snapshot made by the builder says which names changed since its predecessor
(``base``/``changed``) and what each host adds to a proxy that imports it (``hosts``, for Sidecar
scoping); unchanged resources keep their ``Resource`` (packed Any and version) object for object.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from google.protobuf import any_pb2
from google.protobuf.message import Message

from aeraki_ctl.incremental import HostOutput, PortView
from aeraki_ctl.sidecar import ScopeRules
from metaprotocol.config.model import Bootstrap, ClusterConfig, ListenerConfig
from metaprotocol.xds import convert

TYPES = (convert.LISTENER_TYPE, convert.ROUTE_TYPE, convert.CLUSTER_TYPE, convert.ENDPOINT_TYPE)
_MASK = (1 << 64) - 1
_serials = itertools.count(1)


@dataclass(frozen=True)
class Resource:
    """One resource, packed, with its version and its token (summed into type and view versions)."""

    name: str
    packed: any_pb2.Any
    version: str
    token: int = 0


@dataclass(frozen=True)
class Snapshot:
    """Resources by type and name, the version of each type, and what changed since ``base``
    (the serial of the snapshot it was made from; 0: unknown, the server compares)."""

    resources: Mapping[str, Mapping[str, Resource]] = field(default_factory=dict)
    versions: Mapping[str, str] = field(default_factory=dict)
    serial: int = field(default_factory=lambda: next(_serials))
    base: int = 0
    changed: Mapping[str, frozenset[str]] = field(default_factory=dict)
    hosts: Mapping[str, tuple[PortView, ...]] | None = None  # None: no scoping (every proxy sees all)
    changed_hosts: frozenset[str] = frozenset()
    scopes: ScopeRules = field(default_factory=ScopeRules)

    def of(self, type_url: str) -> Mapping[str, Resource]:
        """Resources of a type, by name."""
        return self.resources.get(type_url, {})


def _pack(msg: Message) -> any_pb2.Any:
    out = any_pb2.Any()
    out.Pack(msg, deterministic=True)
    return out


def _digest(parts: Iterable[bytes]) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
        h.update(b"\x00")
    return h.hexdigest()[:16]


def token(name: str, version: str) -> int:
    """What one resource adds to a version sum (``version`` "-": absent)."""
    return int.from_bytes(hashlib.blake2b(f"{name}={version}".encode(), digest_size=8).digest(), "big")


def version_of(total: int) -> str:
    """A version string from a token sum."""
    return f"{total & _MASK:016x}"


def resource(name: str, msg: Message) -> Resource:
    """A packed resource with its version and token."""
    packed = _pack(msg)
    version = _digest([packed.value])
    return Resource(name, packed, version, token(name, version))


def make_snapshot(resources: Mapping[str, Iterable[tuple[str, Message]]]) -> Snapshot:
    """A snapshot from (name, message) pairs per type URL (the four of ``TYPES`` always, and any
    other type given, such as Envoy's Dubbo and Thrift route tables)."""
    by_type: dict[str, dict[str, Resource]] = {}
    versions: dict[str, str] = {}
    for type_url in sorted({*TYPES, *resources}):
        entries = {name: resource(name, msg) for name, msg in resources.get(type_url, ())}
        by_type[type_url] = dict(sorted(entries.items()))
        versions[type_url] = version_of(sum(r.token for r in entries.values()))
    return Snapshot(by_type, versions)


def snapshot_of(bootstrap: Bootstrap) -> Snapshot:
    """The xDS resources of a translated configuration."""
    listeners, routes = [], []
    for lst in bootstrap.listeners:
        rds_name = lst.route_config.name if lst.route_config is not None else (lst.rds_name or lst.name)
        listeners.append((lst.name, convert.listener_to_xds(lst, rds_name)))
        if lst.route_config is not None:
            routes.append((lst.route_config.name, convert.route_config_to_xds(lst.route_config)))
    return make_snapshot(
        {
            convert.LISTENER_TYPE: listeners,
            convert.ROUTE_TYPE: routes,
            convert.CLUSTER_TYPE: [(c.name, convert.cluster_to_xds(c)) for c in bootstrap.clusters],
            convert.ENDPOINT_TYPE: [(c.name, convert.endpoints_to_xds(c)) for c in bootstrap.clusters],
        }
    )


class SnapshotBuilder:
    """Makes each snapshot from the previous one and the hosts whose translation was redone:
    only their listeners, route tables, clusters and endpoints are packed again, and a resource
    whose version did not change keeps its ``Resource``."""

    def __init__(self) -> None:
        self.snapshot = Snapshot(hosts={})
        self._outputs: dict[str, HostOutput] = {}
        self._owner: dict[str, str] = {}  # cluster -> host whose own cluster it is
        self._adders: dict[str, set[str]] = {}  # cluster -> hosts whose MetaRouter adds it
        self._sums = dict.fromkeys(TYPES, 0)
        self.packed = 0  # resources packed, over all builds

    def build(self, outputs: Mapping[str, HostOutput], touched: Iterable[str], scopes: ScopeRules | None = None) -> Snapshot:
        """The next snapshot: ``outputs`` are every host's (the translator's), ``touched`` the hosts
        redone since the last build; ``scopes`` the served Sidecars (None: unchanged)."""
        prev = self.snapshot
        listeners: set[str] = set()
        clusters: set[str] = set()
        hosts = dict(prev.hosts or {})
        changed_hosts = set()
        for h in touched:
            old, new = self._outputs.get(h), outputs.get(h)
            if old is new:
                continue
            changed_hosts.add(h)
            for out, add in ((old, False), (new, True)):
                if out is None:
                    continue
                listeners.update(lst.name for lst in out.listeners)
                clusters.update(out.clusters)
                clusters.update(out.extra)
                for name in out.clusters:
                    _set(self._owner, name, h, add)
                for name in out.extra:
                    (self._adders.setdefault(name, set()).add if add else self._adders.get(name, set()).discard)(h)
            if new is None:
                self._outputs.pop(h, None)
                hosts.pop(h, None)
            else:
                self._outputs[h] = new
                hosts[h] = new.ports
        fresh: dict[str, dict[str, Resource | None]] = {t: {} for t in TYPES}
        for name in listeners:
            lst = self._listener(name)
            fresh[convert.LISTENER_TYPE][name] = resource(name, convert.listener_to_xds(lst, name)) if lst is not None else None
            rc = lst.route_config if lst is not None else None
            fresh[convert.ROUTE_TYPE][name] = resource(name, convert.route_config_to_xds(rc)) if rc is not None else None
        for name in clusters:
            c = self._cluster(name)
            fresh[convert.CLUSTER_TYPE][name] = resource(name, convert.cluster_to_xds(c)) if c is not None else None
            fresh[convert.ENDPOINT_TYPE][name] = resource(name, convert.endpoints_to_xds(c)) if c is not None else None
        self.packed += sum(len(v) for v in fresh.values())
        by_type: dict[str, Mapping[str, Resource]] = {}
        changed: dict[str, frozenset[str]] = {}
        for t in TYPES:
            before = prev.of(t)
            diff = {n: r for n, r in fresh[t].items() if (before[n].version if n in before else None) != (r.version if r is not None else None)}
            changed[t] = frozenset(diff)
            if not diff:
                by_type[t] = before
                continue
            now = dict(before)
            for n, r in diff.items():
                self._sums[t] -= before[n].token if n in before else 0
                if r is None:
                    del now[n]
                else:
                    now[n] = r
                    self._sums[t] += r.token
            by_type[t] = now
        versions = {t: version_of(self._sums[t]) for t in TYPES}
        self.snapshot = Snapshot(by_type, versions, base=prev.serial, changed=changed, hosts=hosts, changed_hosts=frozenset(changed_hosts),
                                 scopes=prev.scopes if scopes is None else scopes)  # fmt: skip
        return self.snapshot

    def _listener(self, name: str) -> ListenerConfig | None:
        host = name.rsplit("_", 1)[0]
        out = self._outputs.get(host)
        return next((lst for lst in out.listeners if lst.name == name), None) if out is not None else None

    def _cluster(self, name: str) -> ClusterConfig | None:
        owner = self._owner.get(name)
        if owner is not None:
            return self._outputs[owner].clusters[name]
        adders = self._adders.get(name)
        return self._outputs[min(adders)].extra[name] if adders else None


def _set(index: dict[str, str], name: str, host: str, add: bool) -> None:
    if add:
        index[name] = host
    elif index.get(name) == host:
        del index[name]

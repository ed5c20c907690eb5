"""Immutable, versioned, consistent snapshots of xDS resources (go-control-plane's idea).

A resource's version is a hash of its deterministic serialization, a type's version a hash of
its resources' names and versions: the same configuration always has the same versions, so
nothing is pushed when nothing changed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from google.protobuf import any_pb2
from google.protobuf.message import Message

from metaprotocol.config.model import Bootstrap
from metaprotocol.xds import convert

TYPES = (convert.LISTENER_TYPE, convert.ROUTE_TYPE, convert.CLUSTER_TYPE, convert.ENDPOINT_TYPE)


@dataclass(frozen=True)
class Resource:
    """One resource, packed, with its version."""

    name: str
    packed: any_pb2.Any
    version: str


@dataclass(frozen=True)
class Snapshot:
    """Resources by type and name, and the version of each type."""

    resources: Mapping[str, Mapping[str, Resource]] = field(default_factory=dict)
    versions: Mapping[str, str] = field(default_factory=dict)

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


def make_snapshot(resources: Mapping[str, Iterable[tuple[str, Message]]]) -> Snapshot:
    """A snapshot from (name, message) pairs per type URL."""
    by_type: dict[str, dict[str, Resource]] = {}
    versions: dict[str, str] = {}
    for type_url in TYPES:
        entries = {}
        for name, msg in resources.get(type_url, ()):
            packed = _pack(msg)
            entries[name] = Resource(name, packed, _digest([packed.value]))
        by_type[type_url] = dict(sorted(entries.items()))
        versions[type_url] = _digest(f"{n}={r.version}".encode() for n, r in by_type[type_url].items())
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

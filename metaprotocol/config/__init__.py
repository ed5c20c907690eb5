"""Proxy configuration: plain frozen dataclasses (``model``), independent of YAML, protobuf and xDS;
``bootstrap`` and ``dump`` read and write it as Envoy's Bootstrap through ``metaprotocol.xds.convert``."""

from __future__ import annotations

from metaprotocol.config.model import (
    AdminConfig,
    AttributeMatcher,
    Bootstrap,
    ClusterConfig,
    CodecRef,
    Endpoint,
    LbPolicy,
    ListenerConfig,
    MatchKind,
    RouteAction,
    RouteConfig,
    RouteRule,
    WeightedCluster,
)

__all__ = [
    "AdminConfig",
    "AttributeMatcher",
    "Bootstrap",
    "ClusterConfig",
    "CodecRef",
    "Endpoint",
    "LbPolicy",
    "ListenerConfig",
    "MatchKind",
    "RouteAction",
    "RouteConfig",
    "RouteRule",
    "WeightedCluster",
]

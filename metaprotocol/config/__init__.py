"""Proxy configuration: plain frozen dataclasses, independent of YAML, protobuf and xDS."""

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

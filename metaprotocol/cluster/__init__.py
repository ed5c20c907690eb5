"""Clusters and load balancing (pure: no IO, no clock)."""

from __future__ import annotations

from metaprotocol.cluster.hashing import KEY_HASHES, hash_tag_of
from metaprotocol.cluster.lb import LoadBalancer, build_lb
from metaprotocol.cluster.state import ClusterState, HostSet

__all__ = ["KEY_HASHES", "ClusterState", "HostSet", "LoadBalancer", "build_lb", "hash_tag_of"]

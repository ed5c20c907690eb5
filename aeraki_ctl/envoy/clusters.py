"""Clusters for Envoy: our cluster message is Envoy's own ``Cluster``, so most of it carries over
unchanged (EDS over ADS, load balancing, circuit breakers, outlier detection, keepalive, TLS).
The DestinationRule settings aeraki-ctl translates (load balancer, connection pool, outlier
detection, TLS) all have Envoy's meaning already: nothing is approximated today; a cluster feature
only our proxy honours would be reported here as a ``Gap``."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2

from aeraki_ctl.envoy.common import Gap
from metaprotocol.config.model import ClusterConfig
from metaprotocol.xds import convert


def cluster(c: ClusterConfig) -> tuple[cluster_pb2.Cluster, list[Gap]]:
    """The Envoy cluster of ``c`` and what it approximates."""
    out = convert.cluster_to_xds(c)
    out.ClearField("metadata")  # our proxy's extensions (hash function, timeouts in a row): never set by a translation
    return out, []

"""What the proxy's ADS client accepted and rejected, per resource type: ``/config_dump`` and ``/stats``.

Kept apart from the client (no gRPC here) so the admin endpoint can render it.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Final

LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"
CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT_TYPE = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
ROUTE_TYPE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
# Short names, as Envoy's and istioctl's columns: the ``type`` label of the counters.
SHORT_NAMES = {
    CLUSTER_TYPE: "CDS",
    LISTENER_TYPE: "LDS",
    ENDPOINT_TYPE: "EDS",
    ROUTE_TYPE: "RDS",
}
# The route tables of stock Envoy's Dubbo, generic and Thrift filters (aeraki-ctl serves them): RDS in
# proxy-status, not types of their own in our counters.
DUBBO_ROUTE_TYPE: Final = "type.googleapis.com/envoy.extensions.filters.network.dubbo_proxy.v3.MultipleRouteConfiguration"
THRIFT_ROUTE_TYPE: Final = "type.googleapis.com/envoy.extensions.filters.network.thrift_proxy.v3.RouteConfiguration"
GENERIC_ROUTE_TYPE: Final = "type.googleapis.com/envoy.extensions.filters.network.generic_proxy.v3.RouteConfiguration"
ENVOY_ROUTE_TYPES: Final = (DUBBO_ROUTE_TYPE, GENERIC_ROUTE_TYPE, THRIFT_ROUTE_TYPE)


def short_name(type_url: str) -> str:
    """``LDS`` for the Listener type URL, and so on; the message name for any other type."""
    if type_url in ENVOY_ROUTE_TYPES:
        return "RDS"
    return SHORT_NAMES.get(type_url, type_url.rsplit(".", 1)[-1])


@dataclass(frozen=True)
class Nack:
    """One rejected update: its version and nonce, why each rejected resource was, and when."""

    version: str
    nonce: str
    reasons: dict[str, str]
    time: float

    def message(self, type_url: str) -> str:
        """The ``error_detail`` message sent to the server: every rejected resource and its reason."""
        listed = "; ".join(f"{name}: {reason}" for name, reason in sorted(self.reasons.items()))
        return f"{short_name(type_url)} version {self.version}: rejected {len(self.reasons)} resource(s): {listed}"

    def as_dict(self) -> dict[str, object]:
        """JSON-able, for ``/config_dump``."""
        return {
            "version": self.version,
            "nonce": self.nonce,
            "rejected": dict(sorted(self.reasons.items())),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.time)),
        }


@dataclass
class XdsStatus:
    """Per type: the version accepted, counts of accepted and rejected updates, the last NACK."""

    server: str
    node_id: str
    connected: bool = False
    versions: dict[str, str] = field(default_factory=dict)
    accepted: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    last_nack: dict[str, Nack] = field(default_factory=dict)
    nacked_now: set[str] = field(default_factory=set)  # types whose latest update was NACKed

    def record_ack(self, type_url: str, version: str) -> None:
        """An update of ``type_url`` was applied whole."""
        self.accepted[type_url] += 1
        self.versions[type_url] = version
        self.nacked_now.discard(type_url)

    def record_nack(self, type_url: str, nack: Nack) -> None:
        """An update of ``type_url`` was rejected, in part or whole."""
        self.rejected[type_url] += 1
        self.last_nack[type_url] = nack
        self.nacked_now.add(type_url)

    def dump(self) -> dict[str, object]:
        """The ``xds`` section of ``/config_dump``."""
        types: dict[str, object] = {}
        for type_url, short in SHORT_NAMES.items():
            nack = self.last_nack.get(type_url)
            types[short] = {
                "type_url": type_url,
                "version": self.versions.get(type_url, ""),
                "state": "NACKED" if type_url in self.nacked_now else ("ACKED" if type_url in self.versions else "NONE"),
                "updates_accepted": self.accepted[type_url],
                "updates_rejected": self.rejected[type_url],
                "last_nack": nack.as_dict() if nack is not None else None,
            }
        return {"server": self.server, "node_id": self.node_id, "connected": self.connected, "types": types}

    def prometheus(self) -> str:
        """The counters, in Prometheus text format."""
        lines = [
            "# HELP metaprotocol_xds_update_accepted_total xDS updates applied whole, per resource type.",
            "# TYPE metaprotocol_xds_update_accepted_total counter",
            *(f'metaprotocol_xds_update_accepted_total{{type="{short}"}} {self.accepted[t]}' for t, short in SHORT_NAMES.items()),
            "# HELP metaprotocol_xds_update_rejected_total xDS updates NACKed (some or all resources rejected), per resource type.",
            "# TYPE metaprotocol_xds_update_rejected_total counter",
            *(f'metaprotocol_xds_update_rejected_total{{type="{short}"}} {self.rejected[t]}' for t, short in SHORT_NAMES.items()),
            "# HELP metaprotocol_xds_connected 1 while the ADS stream is up.",
            "# TYPE metaprotocol_xds_connected gauge",
            f"metaprotocol_xds_connected {int(self.connected)}",
        ]
        return "\n".join(lines) + "\n"

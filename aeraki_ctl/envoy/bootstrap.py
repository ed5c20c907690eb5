"""The bootstrap of a stock Envoy node of aeraki-ctl (``aeraki-ctl envoy-bootstrap``).

Nothing but the ADS cluster: listeners, route tables, clusters, endpoints and (with
``aeraki-ctl serve --ca``) secrets all come over one ADS stream. The node says ``DATA_PLANE:
envoy``; a token, when given, goes with every ADS request as ``authorization: Bearer <token>``,
which is how the CA grants the node its workload identity (SDS ``default``). The demo, the tests
and the benchmarks start their Envoys from this, as an operator would.
"""

from __future__ import annotations

from collections.abc import Mapping

XDS_CLUSTER = "aeraki-xds"


def envoy_bootstrap(
    xds: tuple[str, int],
    node_id: str,
    *,
    cluster: str = "aeraki-envoy",
    admin_port: int | None = None,
    metadata: Mapping[str, str] | None = None,
    token: str = "",
    delta: bool = False,
) -> dict[str, object]:
    """An Envoy bootstrap (as a plain tree, for YAML or JSON) taking everything from aeraki-ctl's
    ADS at ``xds``; ``metadata`` replaces the default ``{DATA_PLANE: envoy}``."""
    source = {"ads": {}, "resource_api_version": "V3"}
    grpc_service: dict[str, object] = {"envoy_grpc": {"cluster_name": XDS_CLUSTER}}
    if token:
        grpc_service["initial_metadata"] = [{"key": "authorization", "value": f"Bearer {token}"}]
    tree: dict[str, object] = {
        "node": {"id": node_id, "cluster": cluster, "metadata": dict(metadata) if metadata is not None else {"DATA_PLANE": "envoy"}},
        "dynamic_resources": {
            "ads_config": {"api_type": "DELTA_GRPC" if delta else "GRPC", "transport_api_version": "V3", "grpc_services": [grpc_service]},
            "cds_config": source,
            "lds_config": source,
        },
        "static_resources": {
            "clusters": [{
                "name": XDS_CLUSTER, "type": "STRICT_DNS", "connect_timeout": "1s",
                "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}}}},
                "load_assignment": {"cluster_name": XDS_CLUSTER, "endpoints": [{"lb_endpoints": [
                    {"endpoint": {"address": {"socket_address": {"address": xds[0], "port_value": xds[1]}}}}]}]},
            }],
        },
    }  # fmt: skip
    if admin_port is not None:
        tree["admin"] = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}}
    return tree

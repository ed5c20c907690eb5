"""``envoy --mode validate`` on what the Envoy translators serve: the real binary loads each
listener as sent (its routes over RDS) and again with its route table inline, so that Envoy builds
every matcher of the table too; no xDS server is needed."""

from __future__ import annotations

import copy
import json
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from google.protobuf import json_format
from google.protobuf.message import Message

from aeraki_ctl.envoy.bootstrap import envoy_bootstrap
from aeraki_ctl.envoy.common import EnvoyListener
from metaprotocol.config.model import ClusterConfig
from metaprotocol.xds import convert
from tests.envoy_node import envoy_binary

# the RDS field of each filter -> the field that carries its table inline
INLINE = {"drds": "multiple_route_config", "generic_rds": "route_config", "trds": "route_config"}


def plain(msg: Message) -> dict[str, object]:
    """A message as the JSON tree a bootstrap holds (``@type`` on every Any)."""
    return dict(json_format.MessageToDict(msg, preserving_proto_field_name=True))


def validate(tmp: Path, served: Sequence[EnvoyListener], clusters: Mapping[str, ClusterConfig], first_port: int = 20000) -> subprocess.CompletedProcess[str]:
    """Envoy's verdict on a bootstrap holding every served listener (twice when it has an RDS
    table) and the clusters, statically."""
    listeners: list[dict[str, object]] = []
    for k, out in enumerate(served):
        assert out.listener is not None and not out.rejected, out.gaps
        sent = plain(out.listener)
        sent["address"] = {"socket_address": {"address": "127.0.0.1", "port_value": first_port + 2 * k}}
        listeners.append(sent)
        if out.routes:
            inline = copy.deepcopy(sent)
            inline["name"] = f"{sent['name']}-inline"
            inline["address"] = {"socket_address": {"address": "127.0.0.1", "port_value": first_port + 2 * k + 1}}
            cfg = inline["filter_chains"][0]["filters"][-1]["typed_config"]  # type: ignore[index]
            rds = next(key for key in INLINE if key in cfg)
            del cfg[rds]
            cfg[INLINE[rds]] = plain(out.routes[0][2])
            listeners.append(inline)
    tree = envoy_bootstrap(("127.0.0.1", 1), "validate", cluster="test")
    dynamic = tree["dynamic_resources"]
    assert isinstance(dynamic, dict)
    del dynamic["cds_config"], dynamic["lds_config"]
    static = tree["static_resources"]
    assert isinstance(static, dict)
    static["listeners"] = listeners
    static["clusters"] = [*static["clusters"], *(plain(convert.cluster_to_xds(c, static=True)) for c in clusters.values())]
    path = tmp / "envoy.json"
    path.write_text(json.dumps(tree))
    return subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(path), "--log-level", "error", "--disable-hot-restart"], capture_output=True, text=True, timeout=60)


def assert_envoy_accepts(tmp: Path, served: Sequence[EnvoyListener], clusters: Mapping[str, ClusterConfig]) -> None:
    result = validate(tmp, served, clusters)
    assert result.returncode == 0, result.stdout + result.stderr

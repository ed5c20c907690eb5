"""The config model of one host -> stock Envoy's resources.

aeraki-ctl translates Aeraki/Istio resources once, into the config model (``translate.py``); our
proxy is served that model through ``metaprotocol.xds.convert``, Envoy through this module, which
picks Envoy's own filter per codec (``dubbo_proxy``, ``thrift_proxy``, ``redis_proxy``) and maps
clusters and endpoints. One source of truth, two renderings: a MetaRouter means the same thing on
both data planes, or the difference is reported as a ``Gap``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from google.protobuf.message import Message

from envoy.config.listener.v3 import listener_pb2

from aeraki_ctl.envoy import dubbo, identity, redis, thrift
from aeraki_ctl.envoy.common import EnvoyListener, Gap
from aeraki_ctl.incremental import HostOutput
from metaprotocol.config.model import ClusterConfig, ListenerConfig, RbacOp, RbacRule
from aeraki_ctl.translate import Options, default_registry
from metaprotocol.registry import RegistryError
from metaprotocol.xds import convert

ListenerTranslator = Callable[[ListenerConfig, Mapping[str, ClusterConfig]], EnvoyListener]

# codec name -> the Envoy filter that speaks it
FILTERS: dict[str, tuple[str, ListenerTranslator]] = {
    "dubbo": ("envoy.filters.network.dubbo_proxy", dubbo.listener),
    "thrift": ("envoy.filters.network.thrift_proxy", thrift.listener),
    "redis": ("envoy.filters.network.redis_proxy", redis.listener),
}


@dataclass
class EnvoyHost:
    """One host's share of the Envoy snapshot: listeners (each with its route tables and gaps),
    clusters and endpoints."""

    host: str
    listeners: dict[str, EnvoyListener] = field(default_factory=dict)
    clusters: dict[str, Message] = field(default_factory=dict)
    endpoints: dict[str, Message] = field(default_factory=dict)


def codec_name(name: str) -> str:
    """The codec's canonical name (``aeraki.meta_protocol.codec.dubbo`` and aliases -> ``dubbo``)."""
    try:
        return default_registry().get(name).name
    except RegistryError:
        return name.removeprefix("aeraki.meta_protocol.codec.")


def translate_listener(lst: ListenerConfig, known: Mapping[str, ClusterConfig]) -> EnvoyListener:
    """One listener for Envoy, by its codec's filter; a codec Envoy has no filter for is a gap."""
    name = codec_name(lst.codec.name)
    found = FILTERS.get(name)
    if found is None:
        supported = ", ".join(sorted(FILTERS))
        return EnvoyListener(None, gaps=[Gap("", f"stock Envoy has no filter for the {name} protocol (it has {supported})")])
    return found[1](lst, known)


def _moved(lst: ListenerConfig, offset: int) -> ListenerConfig:
    """``lst`` listening ``offset`` ports higher, its authorization's destination ports with it."""
    return replace(lst, port=lst.port + offset, rbac=tuple(replace(f, policies=tuple(
        replace(p, permissions=tuple(_shift(r, offset) for r in p.permissions)) for p in f.policies)) for f in lst.rbac))


def _shift(rule: RbacRule, offset: int) -> RbacRule:
    if rule.op is RbacOp.DESTINATION_PORT:
        return replace(rule, ports=(rule.ports[0] + offset, rule.ports[1] + offset))
    return replace(rule, children=tuple(_shift(c, offset) for c in rule.children)) if rule.children else rule


def translate_host(out: HostOutput, port_offset: int = 0, identity_dir: str = Options.identity_dir) -> EnvoyHost:
    """Every listener, cluster and endpoint set of one host, for Envoy (listeners moved by
    ``port_offset``: ``Options.envoy_port_offset``; the workload identity in ``identity_dir``
    referred to by SDS, ``aeraki_ctl.envoy.identity``)."""
    known = {**out.extra, **out.clusters}
    host = EnvoyHost(out.host)
    for lst in out.listeners:
        made = translate_listener(_moved(lst, port_offset) if port_offset else lst, known)
        if isinstance(made.listener, listener_pb2.Listener):
            identity.finish_listener(made.listener, identity_dir)
        host.listeners[lst.name] = made
    for name, c in known.items():
        # Our cluster message is Envoy's own Cluster: every DestinationRule setting aeraki-ctl
        # translates (load balancer, connection pool, outlier detection, TLS) means the same to
        # Envoy; only our proxy's extensions in the metadata (never set by a translation) go.
        cluster = convert.cluster_to_xds(c)
        cluster.ClearField("metadata")
        if cluster.HasField("transport_socket"):
            cluster.transport_socket.CopyFrom(identity.by_sds(cluster.transport_socket, identity_dir))
        host.clusters[name] = cluster
        host.endpoints[name] = convert.endpoints_to_xds(c)
    return host

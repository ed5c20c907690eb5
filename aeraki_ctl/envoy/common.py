"""What the Envoy translators share: how they report what Envoy cannot do, and what they return.

A translator never drops a feature silently. What the chosen Envoy filter cannot express is a
``Gap`` with the place of the feature in the MetaRouter (``spec.routes[1].mirror``) and the exact
reason; a fatal gap rejects the listener for Envoy nodes alone (their last translatable version
keeps serving, our proxies get the new one), a non-fatal one is an approximation that is served
and reported (``aeraki-ctl validate --data-plane envoy``, ``/status``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from envoy.config.core.v3 import config_source_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message

from metaprotocol.config.model import RouteRule
from metaprotocol.xds.status import DUBBO_ROUTE_TYPE, ENVOY_ROUTE_TYPES, GENERIC_ROUTE_TYPE, THRIFT_ROUTE_TYPE  # what Envoy's filters read over RDS

__all__ = ["DUBBO_ROUTE_TYPE", "ENVOY_ROUTE_TYPES", "GENERIC_ROUTE_TYPE", "THRIFT_ROUTE_TYPE", "EnvoyListener", "Gap", "ads", "route_path", "typed"]


@dataclass(frozen=True)
class Gap:
    """A feature Envoy's filter cannot express: where (a field path of the MetaRouter, or of the
    ServiceEntry/DestinationRule for what comes from them) and why. ``fatal``: the listener is not
    served to Envoy; otherwise it is served approximated."""

    path: str
    reason: str
    fatal: bool = True

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}" if self.path else self.reason


@dataclass
class EnvoyListener:
    """One listener for Envoy: the ``Listener`` and the route tables its filter reads over RDS
    (type URL, name, message), or the gaps that stop it."""

    listener: Message | None
    routes: list[tuple[str, str, Message]] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)

    @property
    def rejected(self) -> bool:
        """A fatal gap: Envoy nodes keep the listener's last translatable version."""
        return self.listener is None or any(g.fatal for g in self.gaps)


def ads() -> config_source_pb2.ConfigSource:
    """Resources come over the same ADS stream (``{ads: {}, resource_api_version: V3}``)."""
    return config_source_pb2.ConfigSource(ads=config_source_pb2.AggregatedConfigSource(), resource_api_version=config_source_pb2.V3)


def typed(msg: Message) -> any_pb2.Any:
    """``msg`` packed for a ``typed_config``."""
    out = any_pb2.Any()
    out.Pack(msg, deterministic=True)
    return out


def route_path(i: int, rule: RouteRule, tail: str = "") -> str:
    """The MetaRouter place of the i-th route of a listener's table (``spec.routes[i].tail``);
    the translator keeps the MetaRouter's order, the default route of a bare service is last."""
    base = f"spec.routes[{i}]" if rule.name != "default" else "default route"
    return f"{base}.{tail}" if tail else base

"""redis listeners for stock Envoy (being written: see issue 17)."""

from __future__ import annotations

from collections.abc import Mapping

from aeraki_ctl.envoy.common import EnvoyListener, Gap
from metaprotocol.config.model import ClusterConfig, ListenerConfig


def listener(lst: ListenerConfig, clusters: Mapping[str, ClusterConfig]) -> EnvoyListener:
    """Not translated yet: rejected for Envoy with that reason."""
    return EnvoyListener(None, gaps=[Gap("", "the redis translation for Envoy is not written yet")])

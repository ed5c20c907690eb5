"""The config model as an Envoy bootstrap tree: the inverse of ``bootstrap.parse_bootstrap``.

The model is converted to Envoy's ``Bootstrap`` message by
:func:`metaprotocol.xds.convert.bootstrap_to_xds` (the conversion xDS resources use, with static
listeners and clusters) and written with ``google.protobuf.json_format``.
``parse_bootstrap(to_bootstrap_tree(b))`` equals ``b`` (property-tested), so a configuration made
by the control plane can be written to a file and run with ``metaprotocol proxy -c``.
"""

from __future__ import annotations

from typing import Any

from metaprotocol.config.model import Bootstrap
from metaprotocol.xds import convert


def to_bootstrap_tree(b: Bootstrap) -> dict[str, Any]:
    """The whole configuration as a bootstrap tree (Envoy's field names)."""
    return convert.to_dict(convert.bootstrap_to_xds(b))

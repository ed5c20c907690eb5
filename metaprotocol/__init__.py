"""metaprotocol: a generic layer-7 proxy core whose only protocol-specific part is a codec."""

from __future__ import annotations

from metaprotocol import _native

_native.install()  # compiled hot path or its pure-Python reference, before any of it is imported

__version__ = "0.1.0"

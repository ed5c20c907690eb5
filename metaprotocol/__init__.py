"""metaprotocol: a generic layer-7 proxy core whose only protocol-specific part is a codec."""

from __future__ import annotations

__version__ = "0.1.0"

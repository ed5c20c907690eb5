"""Built-in codec plugins, installed as ``metaprotocol_codecs`` (never as ``codecs``).

Each subpackage registers through the ``metaprotocol.codecs`` entry-point group exactly as a
third-party plugin would; the proxy core never imports this package.
"""

from __future__ import annotations

import metaprotocol.spi  # noqa: F401 - importing metaprotocol first chooses compiled or pure-Python modules

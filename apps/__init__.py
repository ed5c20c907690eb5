"""Small applications built on the codecs (installed as ``metaprotocol_apps``): not part of the proxy."""

from __future__ import annotations

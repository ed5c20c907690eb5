"""xDS: the config model <-> Envoy/metaprotocol protobuf resources, and the ADS client."""

from __future__ import annotations

"""Thrift codec plugin (binary/compact over framed/unframed/THeader), entry point ``thrift``."""

from __future__ import annotations

from metaprotocol_codecs.thrift.codec import ThriftClientCodec, ThriftCodecFactory, ThriftServerCodec

__all__ = ["ThriftClientCodec", "ThriftCodecFactory", "ThriftServerCodec"]

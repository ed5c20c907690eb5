"""Dubbo 2 (hessian2) codec plugin, registered as entry point ``dubbo``; and a Hessian 2.0 library."""

from __future__ import annotations

from metaprotocol_codecs.dubbo.codec import DubboClientCodec, DubboCodecFactory, DubboServerCodec
from metaprotocol_codecs.dubbo.hessian2 import Hessian2Reader, Hessian2Writer, HessianDecodeError, dumps, loads
from metaprotocol_codecs.dubbo.hessian2_types import HessianList, HessianMap, JavaObject, Long

__all__ = [
    "DubboClientCodec",
    "DubboCodecFactory",
    "DubboServerCodec",
    "Hessian2Reader",
    "Hessian2Writer",
    "HessianDecodeError",
    "HessianList",
    "HessianMap",
    "JavaObject",
    "Long",
    "dumps",
    "loads",
]

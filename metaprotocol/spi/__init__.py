"""The codec SPI: everything a protocol plugin needs, and nothing else (stdlib only)."""

from __future__ import annotations

from metaprotocol.spi.buffer import ReadBuffer
from metaprotocol.spi.codec import (
    ClientCodec,
    CodecFactory,
    DecodeResult,
    LocalAnswer,
    Mutation,
    ServerCodec,
)
from metaprotocol.spi.errors import (
    CodecConfigError,
    ErrorKind,
    LocalError,
    LocalProtocolError,
    MetaProtocolError,
    RemoteProtocolError,
)
from metaprotocol.spi.message import NEED_DATA, Correlation, LazyMessage, Message, MessageType, Metadata

__all__ = [
    "NEED_DATA",
    "ClientCodec",
    "CodecConfigError",
    "CodecFactory",
    "Correlation",
    "DecodeResult",
    "ErrorKind",
    "LazyMessage",
    "LocalAnswer",
    "LocalError",
    "LocalProtocolError",
    "Message",
    "MessageType",
    "Metadata",
    "MetaProtocolError",
    "Mutation",
    "ReadBuffer",
    "RemoteProtocolError",
    "ServerCodec",
]

"""Redis (RESP2/RESP3) codec plugin, registered as entry point ``redis``."""

from __future__ import annotations

from metaprotocol_codecs.redis.codec import (
    RedisClientCodec,
    RedisCodecFactory,
    RedisConfig,
    RedisServerCodec,
)

__all__ = ["RedisClientCodec", "RedisCodecFactory", "RedisConfig", "RedisServerCodec"]

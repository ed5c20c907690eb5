"""A memcached codec plugin for metaprotocol (text protocol), registered as entry point ``memcached``.

The whole plugin: frame requests and replies, say which command and key each request has, answer
errors in memcached's words, split multi-key gets across servers and merge their replies. The
proxy does the rest (routing by key prefix, sharding, pools, timeouts, stats).
"""

from __future__ import annotations

from metaprotocol_memcached.codec import MemcachedCodecFactory

__all__ = ["MemcachedCodecFactory"]

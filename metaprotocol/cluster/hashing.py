"""Key hash functions for consistent hashing, named as twemproxy names them.

``md5`` and ``crc32a`` run in C; the FNV variants are byte loops in Python (kept for
compatibility with twemproxy pools configured with them; prefer md5 on hot paths).
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable
from typing import Final

KeyHash = Callable[[bytes], int]

_FNV64_INIT32: Final = 0xCBF29CE484222325 & 0xFFFFFFFF
_FNV64_PRIME32: Final = 0x100000001B3 & 0xFFFFFFFF
_FNV32_INIT: Final = 2166136261
_FNV32_PRIME: Final = 16777619
_MASK32: Final = 0xFFFFFFFF


def hash_md5(key: bytes) -> int:
    """twemproxy ``md5``: the first four digest bytes, little-endian."""
    return int.from_bytes(hashlib.md5(key, usedforsecurity=False).digest()[:4], "little")


def hash_crc32a(key: bytes) -> int:
    """twemproxy ``crc32a``: the plain CRC-32."""
    return zlib.crc32(key) & _MASK32


def hash_fnv1a_64(key: bytes) -> int:
    """twemproxy ``fnv1a_64``: FNV-1a with the 64-bit constants truncated to 32 bits."""
    h = _FNV64_INIT32
    for b in key:
        h = ((h ^ b) * _FNV64_PRIME32) & _MASK32
    return h


def hash_fnv1a_32(key: bytes) -> int:
    """twemproxy ``fnv1a_32``."""
    h = _FNV32_INIT
    for b in key:
        h = ((h ^ b) * _FNV32_PRIME) & _MASK32
    return h


KEY_HASHES: Final[dict[str, KeyHash]] = {
    "md5": hash_md5,
    "crc32a": hash_crc32a,
    "fnv1a_64": hash_fnv1a_64,
    "fnv1a_32": hash_fnv1a_32,
}


def hash_tag_of(key: bytes, tag: bytes) -> bytes:
    """The part of ``key`` between the two ``tag`` characters (Redis ``{...}`` hash tags).

    As in Redis Cluster and twemproxy: the first opening character, then the first closing one
    after it; an empty or unclosed tag hashes the whole key.
    """
    if len(tag) != 2:  # noqa: PLR2004 - a tag is an opening and a closing character
        return key
    start = key.find(tag[:1])
    if start < 0:
        return key
    end = key.find(tag[1:], start + 1)
    if end <= start + 1:
        return key
    return key[start + 1 : end]

"""What the proxy knows about Redis commands: where their keys are and how to treat them.

Key positions follow ``COMMAND INFO`` (first key, last key, step; last -1 = to the end, -2 = all
but the last argument). Commands whose keys come after a count or keyword are handled by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

KeySpec = tuple[int, int, int]

SINGLE_KEY: Final = (1, 1, 1)
"""The spec of commands whose only key is their first argument (the hot path). Compared with
``==``, never ``is``: compiled code (mypyc) holds fixed-size tuples unboxed, without identity."""

_SINGLE_KEY_COMMANDS: Final = """
APPEND BITCOUNT BITFIELD BITFIELD_RO BITPOS DECR DECRBY DUMP EXPIRE EXPIREAT EXPIRETIME GEOADD
GEODIST GEOHASH GEOPOS GEORADIUS_RO GEORADIUSBYMEMBER_RO GEOSEARCH GET GETBIT GETDEL GETEX
GETRANGE GETSET HDEL HEXISTS HGET HGETALL HINCRBY HINCRBYFLOAT HKEYS HLEN HMGET HMSET HRANDFIELD
HSCAN HSET HSETNX HSTRLEN HVALS INCR INCRBY INCRBYFLOAT LINDEX LINSERT LLEN LPOP LPOS LPUSH LPUSHX
LRANGE LREM LSET LTRIM PERSIST PEXPIRE PEXPIREAT PEXPIRETIME PFADD PSETEX PTTL RESTORE RPOP RPUSH
RPUSHX SADD SCARD SET SETBIT SETEX SETNX SETRANGE SISMEMBER SMEMBERS SMISMEMBER SORT SORT_RO SPOP
SRANDMEMBER SREM SSCAN STRLEN SUBSTR TTL TYPE XACK XADD XAUTOCLAIM XCLAIM XDEL XGROUP XINFO XLEN
XPENDING XRANGE XREVRANGE XSETID XTRIM ZADD ZCARD ZCOUNT ZINCRBY ZLEXCOUNT ZMSCORE ZPOPMAX ZPOPMIN
ZRANDMEMBER ZRANGE ZRANGEBYLEX ZRANGEBYSCORE ZRANK ZREM ZREMRANGEBYLEX ZREMRANGEBYRANK
ZREMRANGEBYSCORE ZREVRANGE ZREVRANGEBYLEX ZREVRANGEBYSCORE ZREVRANK ZSCAN ZSCORE LCS
"""

KEY_SPECS: Final[dict[bytes, KeySpec]] = {c.encode(): SINGLE_KEY for c in _SINGLE_KEY_COMMANDS.split()}
KEY_SPECS.update(
    {
        b"MGET": (1, -1, 1),
        b"DEL": (1, -1, 1),
        b"UNLINK": (1, -1, 1),
        b"EXISTS": (1, -1, 1),
        b"TOUCH": (1, -1, 1),
        b"WATCH": (1, -1, 1),
        b"MSET": (1, -1, 2),
        b"MSETNX": (1, -1, 2),
        b"SDIFF": (1, -1, 1),
        b"SINTER": (1, -1, 1),
        b"SUNION": (1, -1, 1),
        b"PFCOUNT": (1, -1, 1),
        b"PFMERGE": (1, -1, 1),
        b"SDIFFSTORE": (1, -1, 1),
        b"SINTERSTORE": (1, -1, 1),
        b"SUNIONSTORE": (1, -1, 1),
        b"RENAME": (1, 2, 1),
        b"RENAMENX": (1, 2, 1),
        b"COPY": (1, 2, 1),
        b"SMOVE": (1, 2, 1),
        b"LMOVE": (1, 2, 1),
        b"RPOPLPUSH": (1, 2, 1),
        b"GEOSEARCHSTORE": (1, 2, 1),
        b"ZRANGESTORE": (1, 2, 1),
        b"BLPOP": (1, -2, 1),
        b"BRPOP": (1, -2, 1),
        b"BZPOPMIN": (1, -2, 1),
        b"BZPOPMAX": (1, -2, 1),
        b"BRPOPLPUSH": (1, 2, 1),
        b"BLMOVE": (1, 2, 1),
    }
)

# Keys after a numkeys argument: (index of numkeys, index of the first key).
NUMKEYS_COMMANDS: Final[dict[bytes, tuple[int, int]]] = {
    b"EVAL": (2, 3),
    b"EVALSHA": (2, 3),
    b"EVAL_RO": (2, 3),
    b"EVALSHA_RO": (2, 3),
    b"FCALL": (2, 3),
    b"FCALL_RO": (2, 3),
    b"ZUNION": (1, 2),
    b"ZINTER": (1, 2),
    b"ZDIFF": (1, 2),
    b"ZINTERCARD": (1, 2),
    b"SINTERCARD": (1, 2),
    b"LMPOP": (1, 2),
    b"ZMPOP": (1, 2),
}
# Destination key first, then numkeys and keys.
STORE_NUMKEYS_COMMANDS: Final = frozenset({b"ZUNIONSTORE", b"ZINTERSTORE", b"ZDIFFSTORE"})

# Commands split per key across shards, and how their replies are merged.
FANOUT_COMMANDS: Final[dict[bytes, tuple[bytes, int, str]]] = {
    b"MGET": (b"GET", 1, "array"),
    b"MSET": (b"SET", 2, "ok"),
    b"DEL": (b"DEL", 1, "sum"),
    b"UNLINK": (b"UNLINK", 1, "sum"),
    b"EXISTS": (b"EXISTS", 1, "sum"),
    b"TOUCH": (b"TOUCH", 1, "sum"),
}

# Commands that depend on per-connection server state: refused on pooled connections.
CONNECTION_STATE: Final[dict[bytes, str]] = {
    **{
        c: "transactions need a dedicated connection"
        for c in (b"MULTI", b"EXEC", b"DISCARD", b"WATCH", b"UNWATCH")
    },
    **{
        c: "pub/sub needs a dedicated connection"
        for c in (
            b"SUBSCRIBE", b"UNSUBSCRIBE", b"PSUBSCRIBE", b"PUNSUBSCRIBE",
            b"SSUBSCRIBE", b"SUNSUBSCRIBE",
        )
    },
    **{
        c: "blocking commands would stall a shared connection"
        for c in (
            b"BLPOP", b"BRPOP", b"BRPOPLPUSH", b"BLMOVE", b"BLMPOP", b"BZPOPMIN", b"BZPOPMAX",
            b"BZMPOP", b"WAIT", b"WAITAOF",
        )
    },
    b"MONITOR": "MONITOR needs a dedicated connection",
    b"SYNC": "replication is not proxied",
    b"PSYNC": "replication is not proxied",
    b"RESET": "RESET would clear state of a shared connection",
}  # fmt: skip

ALLOWED_CLIENT_SUBCOMMANDS: Final = frozenset({b"SETNAME", b"SETINFO"})


def key_indexes(command: bytes, argc: int, args: Sequence[bytes] = ()) -> list[int]:
    """Indexes of the key arguments of ``command`` (upper-case) with ``argc`` arguments in all.

    ``args`` holds the leading arguments already sliced (enough to read a numkeys or STREAMS).
    """
    spec = KEY_SPECS.get(command)
    if spec is not None:
        first, last, step = spec
        if argc <= first:
            return []
        end = argc - 1 if last == -1 else argc - 2 if last == -2 else min(last, argc - 1)  # noqa: PLR2004
        return list(range(first, end + 1, step))
    numkeys = NUMKEYS_COMMANDS.get(command)
    if numkeys is None and command in STORE_NUMKEYS_COMMANDS:
        return [1, *_numkeys(args, argc, 2, 3)] if argc > 1 else []
    if numkeys is not None:
        return _numkeys(args, argc, *numkeys)
    if command in (b"XREAD", b"XREADGROUP"):
        upper = [a.upper() for a in args]
        if b"STREAMS" in upper:
            start = upper.index(b"STREAMS") + 1
            count = (argc - start) // 2
            return list(range(start, start + count))
    return []


def _numkeys(args: Sequence[bytes], argc: int, count_at: int, first: int) -> list[int]:
    if len(args) <= count_at:
        return []
    try:
        count = int(args[count_at])
    except ValueError:
        return []
    return list(range(first, min(first + max(count, 0), argc)))

# Commands Redis flags ``readonly``: sending one twice changes nothing, so a retry policy may resend
# it after a reset or timeout (ServerCodec.is_idempotent). Writes, even ones that look idempotent
# such as SET (``SET k v GET`` answers differently the second time), are left to the route's opt-in.
READ_ONLY_COMMANDS: Final = frozenset(
    c.encode()
    for c in """
    GET MGET STRLEN GETRANGE SUBSTR LCS EXISTS TYPE TTL PTTL EXPIRETIME PEXPIRETIME DUMP TOUCH OBJECT
    HGET HMGET HGETALL HKEYS HVALS HLEN HEXISTS HSTRLEN HSCAN HRANDFIELD
    LINDEX LLEN LRANGE LPOS
    SCARD SISMEMBER SMISMEMBER SMEMBERS SRANDMEMBER SSCAN SINTER SUNION SDIFF SINTERCARD
    ZCARD ZCOUNT ZLEXCOUNT ZRANGE ZRANGEBYSCORE ZRANGEBYLEX ZREVRANGE ZREVRANGEBYSCORE ZREVRANGEBYLEX
    ZRANK ZREVRANK ZSCORE ZMSCORE ZSCAN ZRANDMEMBER ZINTER ZUNION ZDIFF ZINTERCARD
    BITCOUNT BITPOS GETBIT BITFIELD_RO PFCOUNT
    GEOPOS GEODIST GEOHASH GEOSEARCH GEORADIUS_RO GEORADIUSBYMEMBER_RO
    XRANGE XREVRANGE XLEN XREAD XINFO
    SORT_RO EVAL_RO EVALSHA_RO FCALL_RO
    DBSIZE KEYS SCAN RANDOMKEY PING ECHO TIME
    """.split()
)

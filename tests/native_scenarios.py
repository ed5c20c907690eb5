"""Deterministic traffic through the sans-IO core, printed as one JSON digest.

``tests/test_native.py`` runs it once on the compiled modules and once on their pure-Python
sources (``METAPROTOCOL_PURE_PYTHON=1``) and requires the same output: every byte each client
and upstream received, in order, and every counter. Inputs are seeded and varied: Dubbo, Redis
(pipelines, fan-out, local answers, garbage), and the multiplexed test codec with retries,
timeouts, mirrors, faults, rate limits and a mix of replies and failures.

    python tests/native_scenarios.py [seed]
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metaprotocol.config.model import (  # noqa: E402
    AttributeMatcher,
    FaultPolicy,
    LocalRateLimit,
    MatchKind,
    MirrorPolicy,
    RetryPolicy,
    RouteAction,
    RouteRule,
    TokenBucket,
)
from metaprotocol.proxy.policies import RateLimiter  # noqa: E402
from metaprotocol.proxy.stats import render_prometheus  # noqa: E402
from metaprotocol_codecs.dubbo import DubboCodecFactory, wire  # noqa: E402
from metaprotocol_codecs.redis import RedisCodecFactory  # noqa: E402
from tests.lenprefix import LenPrefixFactory, frame, parse  # noqa: E402
from tests.proxy.test_session import Harness  # noqa: E402

IFACES = ["org.example.Greeter", "org.example.Billing", "org.example.Catalog"]


def _digest(h: Harness, clients: list[object]) -> dict[str, object]:
    text = render_prometheus([h.ctx.stats], h.upstreams.cluster_stats.values())
    lines = [line for line in text.splitlines() if line and not line.startswith("#") and "_seconds" not in line]
    ups = {}
    for conn, _, port in h.io.connects:
        t = h.upstream_transports.get(id(conn))
        ups[f"{port}/{len(ups)}"] = hashlib.sha256(b"".join(t.written) if t else b"").hexdigest()[:16]
    downs = [hashlib.sha256(b"".join(t.written)).hexdigest()[:16] for _, t in clients]  # type: ignore[attr-defined]
    return {"stats": lines, "upstreams": ups, "clients": downs}


def dubbo(rng: random.Random) -> dict[str, object]:
    rules = (
        RouteRule("billing", (AttributeMatcher("interface", MatchKind.EXACT, IFACES[1]),), RouteAction(cluster="b"), mirrors=(MirrorPolicy("m", 0.5),)),
        RouteRule("rest", (), RouteAction(cluster="a", timeout=2.0), retry=RetryPolicy(2, frozenset({"upstream_reset", "upstream_timeout"}), retry_non_idempotent=True)),
    )
    h = Harness(DubboCodecFactory(), rules, {"a": 2, "b": 1, "m": 1})
    clients = [h.client() for _ in range(3)]
    rid = 1
    for step in range(60):
        s, _ = rng.choice(clients)
        batch = b""
        for _ in range(rng.randint(1, 5)):
            inv = wire.Invocation(rng.choice(IFACES), rng.choice(["get", "put", "list"]), "Ljava/lang/String;", ["x" * rng.randint(0, 300)], {"traceparent": f"00-{rng.getrandbits(64):016x}-01"}, "1.0.0")
            batch += wire.build_request(rid, inv)
            rid += 1
        if step % 17 == 16:
            batch += b"\xda\xbb\xc2\x00garbage-not-dubbo"
        s.data_received(batch)  # type: ignore[attr-defined]
        h.connect_all()
        for conn, _, _ in h.io.connects:
            t = h.upstream_transports.get(id(conn))
            if t is None or conn.closed:
                continue
            sent = b"".join(t.written[-20:])
            pos, replies = 0, []
            while pos + 16 <= len(sent):
                _, _, _, urid, length = wire.HEADER.unpack_from(sent, pos)
                pos += 16 + length
                roll = rng.random()
                if roll < 0.7:
                    replies.append(wire.build_response(urid, wire.Result(value="ok" * rng.randint(1, 50))))
                elif roll < 0.8:
                    replies.append(wire.build_response(urid, wire.Result(value="v", attachments={"k": "v"})))
            if replies:
                conn.data_received(b"".join(replies))
            if rng.random() < 0.05:
                conn.connection_lost(None)
        h.io.advance(rng.choice([0.0, 0.5, 2.5]))
    return _digest(h, clients)


def redis(rng: random.Random) -> dict[str, object]:
    rules = (
        RouteRule("hot", (AttributeMatcher("key", MatchKind.PREFIX, "hot"),), RouteAction(cluster="b")),
        RouteRule("rest", (), RouteAction(cluster="a", timeout=1.0)),
    )
    h = Harness(RedisCodecFactory(), rules, {"a": 2, "b": 1})
    clients = [h.client() for _ in range(3)]
    cmds = [b"*2\r\n$3\r\nGET\r\n$%d\r\n%b\r\n", b"*3\r\n$3\r\nSET\r\n$%d\r\n%b\r\n$1\r\nv\r\n"]
    for step in range(80):
        s, _ = rng.choice(clients)
        data = b""
        for _ in range(rng.randint(1, 8)):
            key = rng.choice([b"hot:", b"k", b"user:"]) + str(rng.randint(0, 99)).encode()
            kind = rng.random()
            if kind < 0.1:
                data += b"*1\r\n$4\r\nPING\r\n"
            elif kind < 0.2:
                data += b"*3\r\n$4\r\nMGET\r\n$4\r\nhot1\r\n$2\r\nk2\r\n"
            else:
                data += rng.choice(cmds) % (len(key), key)
        if step % 29 == 28:
            data += b"*x\r\n"
        s.data_received(data)  # type: ignore[attr-defined]
        h.connect_all()
        for conn, _, _ in h.io.connects:
            t = h.upstream_transports.get(id(conn))
            if t is None or conn.closed:
                continue
            n = len(conn.fifo)
            if n:
                conn.data_received(b"".join(rng.choice([b"$1\r\nA\r\n", b"+OK\r\n", b"-ERR no\r\n", b"$-1\r\n"]) for _ in range(rng.randint(0, n))))
        h.io.advance(rng.choice([0.0, 0.3, 1.5]))
    return _digest(h, clients)


def lenprefix(rng: random.Random) -> dict[str, object]:
    rules = (
        RouteRule("faulty", (AttributeMatcher("m", MatchKind.EXACT, "f"),), RouteAction(cluster="a"), fault=FaultPolicy(0.0, 0.0, "internal", 0.5)),
        RouteRule("rest", (), RouteAction(cluster="a", timeout=1.0), retry=RetryPolicy(1, frozenset({"upstream_reset", "error"}), retry_non_idempotent=True)),
    )
    h = Harness(LenPrefixFactory(), rules, {"a": 3})
    h.ctx.limiter = RateLimiter(LocalRateLimit((), TokenBucket(40, 10, 1.0)), 0.0)
    clients = [h.client() for _ in range(4)]
    rid = 1
    for _ in range(100):
        s, _ = rng.choice(clients)
        s.data_received(b"".join(frame(rng.choice([0, 0, 0, 2, 3]), (rid := rid + 1), {"m": rng.choice("abf")}) for _ in range(rng.randint(1, 4))))  # type: ignore[attr-defined]
        h.connect_all()
        for conn, _, _ in h.io.connects:
            t = h.upstream_transports.get(id(conn))
            if t is None or conn.closed:
                continue
            for urid in list(conn.inflight):
                roll = rng.random()
                if roll < 0.6:
                    conn.data_received(frame(1, urid, {}, b"ok"))
                elif roll < 0.7:
                    conn.data_received(frame(5, urid, {}, b"err"))
            if rng.random() < 0.03:
                conn.connection_lost(None)
        h.io.advance(rng.choice([0.0, 0.4, 1.2]))
    assert parse(frame(1, 1))[0] == 1
    return _digest(h, clients)


def main() -> None:
    seed = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    out = {name: fn(random.Random(seed)) for name, fn in (("dubbo", dubbo), ("redis", redis), ("lenprefix", lenprefix))}
    print(json.dumps(out, sort_keys=True))


if __name__ == "__main__":
    main()

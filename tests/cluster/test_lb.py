from __future__ import annotations

import hashlib
import random
from collections import Counter

import pytest

from metaprotocol.cluster import ClusterState, hash_tag_of
from metaprotocol.cluster.hashing import hash_crc32a, hash_fnv1a_32, hash_fnv1a_64, hash_md5
from metaprotocol.cluster.lb import KetamaRing, Maglev, RoundRobin, build_lb
from metaprotocol.config.model import ClusterConfig, Endpoint, LbPolicy


def eps(n: int, **kw: object) -> list[Endpoint]:
    return [Endpoint("127.0.0.1", 7000 + i, **kw) for i in range(n)]  # type: ignore[arg-type]


def test_round_robin_cycles_and_weights_interleave() -> None:
    rr = RoundRobin(eps(3))
    rng = random.Random(0)
    assert [rr.pick(None, rng) for _ in range(6)] == [0, 1, 2, 0, 1, 2]
    weighted = RoundRobin([Endpoint("a", 1, weight=3), Endpoint("b", 1, weight=1)])
    seq = [weighted.pick(None, rng) for _ in range(8)]
    assert Counter(seq) == {0: 6, 1: 2}
    assert seq[:4] != [0, 0, 0, 1] or seq[4:] == seq[:4]  # smooth: a full cycle repeats


def test_random_respects_weights() -> None:
    lb = build_lb(LbPolicy.RANDOM, [Endpoint("a", 1, weight=1), Endpoint("b", 1, weight=3)])
    rng = random.Random(3)
    counts = Counter(lb.pick(None, rng) for _ in range(40_000))
    assert abs(counts[1] / 40_000 - 0.75) < 0.01


def test_least_request_prefers_idle_endpoint() -> None:
    active = [100, 0]
    lb = build_lb(LbPolicy.LEAST_REQUEST, eps(2), active=active)
    rng = random.Random(4)
    picks = Counter(lb.pick(None, rng) for _ in range(1000))
    assert picks[1] > 700  # both draws hit endpoint 0 only a quarter of the time


@pytest.mark.parametrize("policy", [LbPolicy.RING_HASH, LbPolicy.MAGLEV])
def test_hash_policies_are_stable_and_spread(policy: LbPolicy) -> None:
    lb = build_lb(policy, eps(4))
    rng = random.Random(5)
    keys = [f"key:{i}".encode() for i in range(4000)]
    first = [lb.pick(k, rng) for k in keys]
    assert first == [lb.pick(k, rng) for k in keys]
    counts = Counter(first)
    assert len(counts) == 4 and min(counts.values()) > 600


@pytest.mark.parametrize("policy", [LbPolicy.RING_HASH, LbPolicy.MAGLEV])
def test_consistent_hash_moves_few_keys_when_an_endpoint_leaves(policy: LbPolicy) -> None:
    before = build_lb(policy, eps(5))
    after = build_lb(policy, eps(5)[:4])
    rng = random.Random(6)
    keys = [f"k{i}".encode() for i in range(5000)]
    moved = sum(
        1 for k in keys if before.pick(k, rng) != 4 and before.pick(k, rng) != after.pick(k, rng)
    )
    # Keys on the surviving endpoints stay put (maglev allows a little churn).
    assert moved < 0.05 * len(keys)


def test_ketama_ring_is_built_as_twemproxy_builds_it() -> None:
    ring = KetamaRing([Endpoint("127.0.0.1", 6379)])
    # 160 points: 40 md5 digests of "127.0.0.1:6379-<i>", four little-endian words each.
    expected = []
    for i in range(40):
        d = hashlib.md5(f"127.0.0.1:6379-{i}".encode()).digest()
        expected += [int.from_bytes(d[4 * x : 4 * x + 4], "little") for x in range(4)]
    assert ring._values == sorted(expected)
    assert KetamaRing([Endpoint("10.0.0.1", 11211)])._values[0] in {  # port 11211 is left out
        int.from_bytes(hashlib.md5(f"10.0.0.1-{i}".encode()).digest()[4 * x : 4 * x + 4], "little")
        for i in range(40)
        for x in range(4)
    }


def test_key_hashes_match_reference_values() -> None:
    # FNV-1a 32-bit reference: fnv1a_32("a") == 0xe40c292c.
    assert hash_fnv1a_32(b"a") == 0xE40C292C
    # twemproxy's fnv1a_64 truncates to 32 bits: offset 0x84222325, prime 0x1b3.
    assert hash_fnv1a_64(b"") == 0x84222325
    assert hash_fnv1a_64(b"a") == ((0x84222325 ^ 0x61) * 0x1B3) & 0xFFFFFFFF
    assert hash_crc32a(b"123456789") == 0xCBF43926
    assert hash_md5(b"a") == int.from_bytes(hashlib.md5(b"a").digest()[:4], "little")


@pytest.mark.parametrize(
    ("key", "tag"),
    [
        (b"{user1000}.following", b"user1000"),
        (b"foo{}{bar}", b"foo{}{bar}"),
        (b"foo{{bar}}zap", b"{bar"),
        (b"foo{bar}{zap}", b"bar"),
        (b"nobraces", b"nobraces"),
        (b"open{only", b"open{only"),
    ],
)
def test_hash_tags_follow_redis_cluster_rules(key: bytes, tag: bytes) -> None:
    assert hash_tag_of(key, b"{}") == tag


def test_cluster_state_subsets_and_health() -> None:
    endpoints = (
        Endpoint("h", 1, labels=(("version", "v1"),)),
        Endpoint("h", 2, labels=(("version", "v2"),)),
        Endpoint("h", 3, labels=(("version", "v2"),)),
    )
    cs = ClusterState(ClusterConfig("c", endpoints))
    rng = random.Random(7)
    assert {cs.pick((("version", "v2"),), None, rng) for _ in range(10)} == {1, 2}
    assert cs.pick((("version", "v3"),), None, rng) is None
    cs.set_healthy(1, False)
    assert {cs.pick((("version", "v2"),), None, rng) for _ in range(10)} == {2}
    cs.set_healthy(2, False)
    # No healthy member left: try them all rather than fail outright (Envoy's panic mode).
    assert {cs.pick((("version", "v2"),), None, rng) for _ in range(10)} == {1, 2}


def test_hash_tag_applies_to_cluster_keys() -> None:
    cs = ClusterState(ClusterConfig("c", tuple(eps(8)), LbPolicy.RING_HASH, hash_tag="{}"))
    rng = random.Random(8)
    assert len({cs.pick((), f"{{user42}}:{i}".encode(), rng) for i in range(50)}) == 1


def test_maglev_table_weights() -> None:
    lb = Maglev([Endpoint("a", 1, weight=1), Endpoint("b", 1, weight=3)], table_size=4099)
    counts = Counter(lb._table)
    assert abs(counts[1] / 4099 - 0.75) < 0.02

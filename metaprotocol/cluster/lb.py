"""Load balancers: pick an endpoint index from a cluster's healthy endpoints.

Each balancer is built from an immutable list of endpoints and is rebuilt when the list or their
health changes (rare), so ``pick`` stays a few dict/list operations. Randomness is injected.
"""

from __future__ import annotations

import bisect
import hashlib
import random
from collections.abc import Sequence
from typing import Final, Protocol

from metaprotocol.cluster.hashing import KEY_HASHES, KeyHash, hash_md5
from metaprotocol.config.model import Endpoint, LbPolicy

KETAMA_POINTS_PER_SERVER: Final = 160
KETAMA_POINTS_PER_HASH: Final = 4
MAGLEV_TABLE_SIZE: Final = 65537
_SCHEDULE_LIMIT: Final = 10_000


class LoadBalancer(Protocol):
    """Chooses one of ``endpoints`` (by index) for a request."""

    endpoints: Sequence[Endpoint]

    def pick(self, key: bytes | None, rng: random.Random) -> int:
        """Index of the chosen endpoint; ``key`` is the hash-policy key, when there is one."""
        ...


class RoundRobin:
    """Weighted round robin with a smooth (nginx-style) interleaved schedule."""

    def __init__(self, endpoints: Sequence[Endpoint]) -> None:
        self.endpoints = endpoints
        self._schedule = _smooth_schedule([max(e.weight, 1) for e in endpoints])
        self._next = 0

    def pick(self, key: bytes | None, rng: random.Random) -> int:
        """Next endpoint in the schedule."""
        schedule = self._schedule
        i = self._next
        self._next = (i + 1) % len(schedule)
        return schedule[i]


def _smooth_schedule(weights: Sequence[int]) -> list[int]:
    if len(set(weights)) <= 1:
        return list(range(len(weights)))
    total = sum(weights)
    if total > _SCHEDULE_LIMIT:
        scale = _SCHEDULE_LIMIT / total
        weights = [max(1, round(w * scale)) for w in weights]
        total = sum(weights)
    current = [0] * len(weights)
    schedule = []
    for _ in range(total):
        for i, w in enumerate(weights):
            current[i] += w
        best = max(range(len(weights)), key=current.__getitem__)
        current[best] -= total
        schedule.append(best)
    return schedule


class RandomLb:
    """Weighted random choice."""

    def __init__(self, endpoints: Sequence[Endpoint]) -> None:
        self.endpoints = endpoints
        self._cumulative: list[int] = []
        total = 0
        for e in endpoints:
            total += max(e.weight, 1)
            self._cumulative.append(total)

    def pick(self, key: bytes | None, rng: random.Random) -> int:
        """A weighted random endpoint."""
        cumulative = self._cumulative
        return bisect.bisect_right(cumulative, rng.random() * cumulative[-1])


class LeastRequest:
    """Power of two choices on the number of active requests (Envoy's default for LEAST_REQUEST).

    ``active`` is owned by the caller, who counts requests in and out per endpoint; ``positions``
    maps this balancer's endpoints to indexes in ``active`` (a subset of a larger cluster).
    """

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        active: list[int] | None = None,
        positions: Sequence[int] | None = None,
    ) -> None:
        self.endpoints = endpoints
        self.active = active if active is not None else [0] * len(endpoints)
        self.positions = positions if positions is not None else range(len(endpoints))

    def pick(self, key: bytes | None, rng: random.Random) -> int:
        """The less loaded of two random endpoints."""
        n = len(self.endpoints)
        if n == 1:
            return 0
        a = int(rng.random() * n)
        b = int(rng.random() * n)
        active = self.active
        positions = self.positions
        return a if active[positions[a]] <= active[positions[b]] else b


class KetamaRing:
    """Consistent-hash ring built as twemproxy's ``ketama`` distribution builds it.

    160 points per server scaled by weight, four per md5 digest of ``"<host:port>-<i>"``; a key
    goes to the first point at or after its hash. With the same key hash (``md5``, ``fnv1a_64``
    ...) and hash tag, keys land on the same servers as in a twemproxy pool.
    """

    def __init__(self, endpoints: Sequence[Endpoint], key_hash: KeyHash = hash_md5) -> None:
        self.endpoints = endpoints
        self.key_hash = key_hash
        total_weight = sum(max(e.weight, 1) for e in endpoints)
        points: list[tuple[int, int]] = []
        n = len(endpoints)
        for index, e in enumerate(endpoints):
            pct = max(e.weight, 1) / total_weight
            per_server = int(pct * KETAMA_POINTS_PER_SERVER / 4 * n + 1e-10) * 4
            name = _ketama_name(e)
            for p in range(per_server // KETAMA_POINTS_PER_HASH):
                digest = hashlib.md5(f"{name}-{p}".encode(), usedforsecurity=False).digest()
                for x in range(KETAMA_POINTS_PER_HASH):
                    value = int.from_bytes(digest[x * 4 : x * 4 + 4], "little")
                    points.append((value, index))
        points.sort()
        self._values = [v for v, _ in points]
        self._owners = [i for _, i in points]

    def pick(self, key: bytes | None, rng: random.Random) -> int:
        """The owner of the first ring point at or after the key's hash."""
        if key is None:
            return int(rng.random() * len(self.endpoints))
        i = bisect.bisect_left(self._values, self.key_hash(key))
        if i == len(self._values):
            i = 0
        return self._owners[i]


def _ketama_name(e: Endpoint) -> str:
    # twemproxy drops the port when it is memcached's 11211 (libmemcached compatibility).
    memcached_port = 11211
    return e.address if e.port == memcached_port else f"{e.address}:{e.port}"


class Maglev:
    """Maglev lookup table (Eisenbud et al., 2016), weighted as in Envoy."""

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        key_hash: KeyHash = hash_md5,
        table_size: int = MAGLEV_TABLE_SIZE,
    ) -> None:
        self.endpoints = endpoints
        self.key_hash = key_hash
        self.table_size = table_size
        self._table = _maglev_table(endpoints, table_size)

    def pick(self, key: bytes | None, rng: random.Random) -> int:
        """The table entry for the key's hash."""
        if key is None:
            return int(rng.random() * len(self.endpoints))
        return self._table[self.key_hash(key) % self.table_size]


def _maglev_table(endpoints: Sequence[Endpoint], m: int) -> list[int]:
    n = len(endpoints)
    offsets, skips = [], []
    for e in endpoints:
        digest = hashlib.md5(e.key.encode(), usedforsecurity=False).digest()
        offsets.append(int.from_bytes(digest[:8], "little") % m)
        skips.append(int.from_bytes(digest[8:], "little") % (m - 1) + 1)
    weights = [max(e.weight, 1) for e in endpoints]
    max_weight = max(weights)
    table = [-1] * m
    nexts = [0] * n
    credit = [0.0] * n
    filled = 0
    while True:
        for i in range(n):
            credit[i] += weights[i] / max_weight
            if credit[i] < 1:
                continue
            credit[i] -= 1
            c = (offsets[i] + nexts[i] * skips[i]) % m
            while table[c] >= 0:
                nexts[i] += 1
                c = (offsets[i] + nexts[i] * skips[i]) % m
            table[c] = i
            nexts[i] += 1
            filled += 1
            if filled == m:
                return table


def build_lb(
    policy: LbPolicy,
    endpoints: Sequence[Endpoint],
    hash_function: str = "md5",
    active: list[int] | None = None,
    positions: Sequence[int] | None = None,
) -> LoadBalancer:
    """A balancer of the given policy over ``endpoints`` (which must not be empty)."""
    key_hash = KEY_HASHES.get(hash_function, hash_md5)
    if policy is LbPolicy.ROUND_ROBIN:
        return RoundRobin(endpoints)
    if policy is LbPolicy.RANDOM:
        return RandomLb(endpoints)
    if policy is LbPolicy.LEAST_REQUEST:
        return LeastRequest(endpoints, active, positions)
    if policy is LbPolicy.RING_HASH:
        return KetamaRing(endpoints, key_hash)
    return Maglev(endpoints, key_hash)

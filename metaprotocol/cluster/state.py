"""A cluster's live endpoint state: health, active requests and the balancers built over them."""

from __future__ import annotations

import random
from metaprotocol.cluster.hashing import hash_tag_of
from metaprotocol.cluster.lb import LoadBalancer, build_lb
from metaprotocol.config.model import HASHING_POLICIES, ClusterConfig, Endpoint

Subset = tuple[tuple[str, str], ...]

# Why an endpoint is out of balancing; it is healthy when no reason holds. Each source clears only
# its own reason, so a connect back-off ending cannot bring back an endpoint a health check failed.
BACKOFF = 1
EJECTED = 2
HEALTH_CHECK = 4


class HostSet:
    """The healthy endpoints of one subset and the balancer over them."""

    __slots__ = ("indexes", "lb")

    def __init__(self, indexes: list[int], lb: LoadBalancer | None) -> None:
        self.indexes = indexes
        self.lb = lb


class ClusterState:
    """Endpoints of a cluster with health flags; picks an endpoint per request.

    Health changes (connect failures, ejections) are rare, so the balancers are rebuilt then and
    ``pick`` is a dict probe plus the balancer's own work.
    """

    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        self.endpoints: tuple[Endpoint, ...] = config.endpoints
        self.healthy: list[bool] = [True] * len(self.endpoints)
        self.down: list[int] = [0] * len(self.endpoints)  # reasons (BACKOFF | EJECTED | HEALTH_CHECK)
        self.active: list[int] = [0] * len(self.endpoints)
        self.in_flight = 0  # requests in flight to the whole cluster (circuit breaking)
        self.active_retries = 0  # requests being retried (retry budget)
        self.consecutive_failures: list[int] = [0] * len(self.endpoints)
        self.ejections: list[int] = [0] * len(self.endpoints)
        self.ejected: list[bool] = [False] * len(self.endpoints)
        self._hash_tag = config.hash_tag.encode()
        self.hashing = config.lb_policy in HASHING_POLICIES  # picks by a request's hash key (asked per request)
        self._sets: dict[Subset, HostSet] = {}

    def retry_allowed(self) -> bool:
        """Whether one more retry fits the cluster's retry limit or budget (none configured: yes)."""
        breakers = self.config.circuit_breakers
        if breakers is None:
            return True
        if breakers.retry_budget_percent > 0:
            limit = max(breakers.min_retry_concurrency, int(self.in_flight * breakers.retry_budget_percent / 100))
        elif breakers.max_retries:
            limit = breakers.max_retries
        else:
            return True
        return self.active_retries < limit

    def _host_set(self, subset: Subset) -> HostSet:
        hs = self._sets.get(subset)
        if hs is None:
            wanted = set(subset)
            members = [i for i, e in enumerate(self.endpoints) if wanted <= set(e.labels)]
            healthy = [i for i in members if self.healthy[i]]
            # Envoy's panic threshold in spirit: with no healthy member, try them all.
            chosen = healthy or members
            lb = None
            if chosen:
                lb = build_lb(
                    self.config.lb_policy,
                    [self.endpoints[i] for i in chosen],
                    self.config.hash_function,
                    self.active,
                    chosen,
                )
            hs = HostSet(chosen, lb)
            self._sets[subset] = hs
        return hs

    def pick(self, subset: Subset, key: bytes | None, rng: random.Random) -> int | None:
        """Index (into ``endpoints``) of the endpoint for a request, or None when there is none."""
        hs = self._sets.get(subset) or self._host_set(subset)
        indexes = hs.indexes
        if len(indexes) == 1:
            return indexes[0]
        lb = hs.lb
        if lb is None:
            return None
        if key is not None and self._hash_tag:
            key = hash_tag_of(key, self._hash_tag)
        return hs.indexes[lb.pick(key, rng)]

    def record(self, index: int, ok: bool) -> bool:
        """Count an outcome for outlier detection; True when the endpoint is to be ejected now."""
        od = self.config.outlier_detection
        if od is None:
            return False
        if ok:
            self.consecutive_failures[index] = 0
            return False
        self.consecutive_failures[index] += 1
        if self.consecutive_failures[index] < od.consecutive_errors or self.ejected[index]:
            return False
        # Envoy's rule: at most max_ejection_percent of the hosts, but always at least one.
        allowed = max(1, len(self.endpoints) * od.max_ejection_percent // 100)
        if sum(self.ejected) >= allowed:
            return False
        self.ejected[index] = True
        self.ejections[index] += 1
        self.consecutive_failures[index] = 0
        self.mark(index, EJECTED, True)
        return True

    def uneject(self, index: int) -> None:
        """The ejection time is over."""
        self.ejected[index] = False
        self.mark(index, EJECTED, False)

    def set_healthy(self, index: int, healthy: bool) -> bool:
        """Start or end a connect back-off; returns whether the endpoint's health changed."""
        return self.mark(index, BACKOFF, not healthy)

    def mark(self, index: int, reason: int, down: bool) -> bool:
        """Set or clear one reason for keeping an endpoint out of balancing; returns whether
        the endpoint's health changed (balancers are then rebuilt)."""
        mask = self.down[index] | reason if down else self.down[index] & ~reason
        self.down[index] = mask
        healthy = mask == 0
        if self.healthy[index] == healthy:
            return False
        self.healthy[index] = healthy
        self._sets.clear()
        return True


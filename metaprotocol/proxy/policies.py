"""Per-request traffic policies that are pure functions of config, metadata and time."""

from __future__ import annotations

from metaprotocol.config.model import LocalRateLimit, TokenBucket
from metaprotocol.router.matchers import Predicate, compile_matcher
from metaprotocol.spi import Metadata


class Bucket:
    """A token bucket refilled in whole intervals, lazily from the clock (no timer)."""

    __slots__ = ("config", "last", "tokens")

    def __init__(self, config: TokenBucket, now: float) -> None:
        self.config = config
        self.tokens = float(config.max_tokens)
        self.last = now

    def take(self, now: float) -> bool:
        """Take one token if there is one."""
        cfg = self.config
        intervals = int((now - self.last) / cfg.fill_interval)
        if intervals > 0:
            self.tokens = min(float(cfg.max_tokens), self.tokens + intervals * cfg.tokens_per_fill)
            self.last += intervals * cfg.fill_interval
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class RateLimiter:
    """Aeraki's local rate limit: the first matching condition's bucket, else the default one.

    Buckets are per listener (per proxy process), as Aeraki's are per Envoy instance.
    """

    def __init__(self, config: LocalRateLimit, now: float) -> None:
        self.config = config
        self.conditions: list[tuple[tuple[Predicate, ...], Bucket]] = [
            (tuple(compile_matcher(m) for m in c.match), Bucket(c.bucket, now)) for c in config.conditions
        ]
        self.default = Bucket(config.default, now) if config.default is not None else None

    def allow(self, md: Metadata, now: float) -> bool:
        """Whether a request with this metadata may pass now."""
        for predicates, bucket in self.conditions:
            if all(p(md) for p in predicates):
                return bucket.take(now)
        if self.default is None:
            return True
        return self.default.take(now)

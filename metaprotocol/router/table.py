"""A compiled route table: ordered rules, first match wins, indexed for speed.

A linear scan of Python predicates costs ~0.1 us per rule, too slow for tables of thousands. Each
rule is therefore filed under its most selective non-inverted matcher: an exact value
(``method == sayHello``) or a literal prefix (``key`` starts with ``user:``). A lookup gathers the
candidate rules whose indexed condition holds (a dict probe per key, plus one per distinct prefix
length), adds the rules that have no indexable matcher, and tests them in table order. The result
is exactly that of a linear first-match scan.

In front of that, the decision is remembered by the values of the attributes the table reads:
matching is a pure function of them, and real traffic repeats a few (service, method, version)
combinations, so a lookup is usually one tuple and one dict probe. A table whose attributes take
too many values (Redis keys, say) stops remembering after a few refills.
"""

from __future__ import annotations

import bisect
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from metaprotocol.config.model import AttributeMatcher, MatchKind, RouteConfig, RouteRule
from metaprotocol.router.matchers import Predicate, compile_matcher
from metaprotocol.spi import Metadata


MEMO_SIZE = 4096
"""Decisions remembered per table before the memo is emptied and refilled."""
MEMO_REFILLS = 4
"""Refills after which a table's attribute values are deemed too varied to remember."""


@dataclass(frozen=True, slots=True)
class CompiledRoute:
    """A rule ready for matching, with its traffic split precomputed."""

    index: int
    rule: RouteRule
    predicates: tuple[Predicate, ...]
    cumulative_weights: tuple[int, ...]
    cluster_names: tuple[str, ...]
    request_mutation: dict[str, str] | None
    response_mutation: dict[str, str] | None
    name: str
    """The rule's name (``route-<index>`` when unnamed)."""
    timeout: float
    """Deadline of one try: the retry policy's per-try timeout when set, else the route's."""

    def matches(self, md: Metadata) -> bool:
        """Whether every predicate holds."""
        for predicate in self.predicates:
            if not predicate(md):
                return False
        return True

    def pick_cluster(self, rng: random.Random) -> str:
        """The destination cluster; for a split, drawn by weight with ``rng``."""
        names = self.cluster_names
        if len(names) == 1:
            return names[0]
        total = self.cumulative_weights[-1]
        return names[bisect.bisect_right(self.cumulative_weights, rng.random() * total)]


def regex_literal_prefix(pattern: str) -> str:
    """The literal text every full match of ``pattern`` starts with ("" when there is none).

    Read from the parsed pattern: leading LITERAL items only; a top-level alternation, a group or
    any other construct ends the prefix. Used to index regex routes like prefix routes.
    """
    try:
        items = list(re._parser.parse(pattern))  # type: ignore[attr-defined]
    except re.error:
        return ""
    literal = re._constants.LITERAL  # type: ignore[attr-defined]
    out = []
    for op, arg in items:
        if op is not literal:
            break
        out.append(chr(arg))
    return "".join(out)


def _index_key(m: AttributeMatcher) -> tuple[MatchKind, str] | None:
    """How a matcher can be indexed: an exact value, or a literal prefix."""
    if m.invert or m.ignore_case:
        return None
    if m.kind is MatchKind.EXACT:
        return MatchKind.EXACT, m.value
    if m.kind is MatchKind.PREFIX and m.value:
        return MatchKind.PREFIX, m.value
    if m.kind is MatchKind.REGEX:
        prefix = regex_literal_prefix(m.value)
        if prefix:
            return MatchKind.PREFIX, prefix
    return None


class RouteTable:
    """Ordered routes compiled for lookup. Immutable; build a new one on every config change."""

    def __init__(self, config: RouteConfig) -> None:
        self.config = config
        self.routes: tuple[CompiledRoute, ...] = tuple(
            self._compile(i, rule) for i, rule in enumerate(config.routes)
        )
        self._exact: dict[str, dict[str, list[int]]] = {}
        self._prefix: dict[str, dict[int, dict[str, list[int]]]] = {}
        self._unindexed: list[int] = []
        for route in self.routes:
            self._file(route)
        self._prefix_lengths = {k: sorted(v) for k, v in self._prefix.items()}
        # A first rule with no conditions takes everything (the common single-route table).
        self._catch_all = self.routes[0] if self.routes and not self.routes[0].predicates else None
        self._attributes = tuple(sorted({m.name.lower() for rule in config.routes for m in rule.match}))
        self._memo: dict[object, CompiledRoute | None] | None = {} if self._attributes else None
        self._memo_refills = 0

    @staticmethod
    def _compile(index: int, rule: RouteRule) -> CompiledRoute:
        action = rule.action
        names = action.cluster_names()
        weights: list[int] = []
        total = 0
        for w in action.weighted_clusters:
            total += w.weight
            weights.append(total)
        return CompiledRoute(
            index=index,
            rule=rule,
            predicates=tuple(compile_matcher(m) for m in rule.match),
            cumulative_weights=tuple(weights),
            cluster_names=names,
            request_mutation=dict(rule.request_mutation) or None,
            response_mutation=dict(rule.response_mutation) or None,
            name=rule.name or f"route-{index}",
            timeout=rule.retry.per_try_timeout if rule.retry is not None and rule.retry.per_try_timeout else rule.action.timeout,
        )

    def _file(self, route: CompiledRoute) -> None:
        keys = [(m.name.lower(), k) for m in route.rule.match if (k := _index_key(m)) is not None]
        exact = [(name, value) for name, (kind, value) in keys if kind is MatchKind.EXACT]
        prefixes = [(name, value) for name, (kind, value) in keys if kind is MatchKind.PREFIX]
        if exact:
            name, value = exact[0]
            self._exact.setdefault(name, {}).setdefault(value, []).append(route.index)
        elif prefixes:
            name, value = max(prefixes, key=lambda c: len(c[1]))
            by_len = self._prefix.setdefault(name, {})
            by_len.setdefault(len(value), {}).setdefault(value, []).append(route.index)
        else:
            self._unindexed.append(route.index)

    def match(self, md: Metadata) -> CompiledRoute | None:
        """The first route whose matchers all hold for ``md``, or None."""
        if self._catch_all is not None:
            return self._catch_all
        memo = self._memo
        if memo is None:
            return self.lookup(md)
        attributes = self._attributes
        key = md.get(attributes[0]) if len(attributes) == 1 else tuple([md.get(a) for a in attributes])
        try:
            return memo[key]
        except KeyError:
            pass
        route = memo[key] = self.lookup(md)
        if len(memo) >= MEMO_SIZE:
            memo.clear()
            self._memo_refills += 1
            if self._memo_refills >= MEMO_REFILLS:
                self._memo = None
        return route

    @property
    def remembers(self) -> bool:
        """Whether decisions are still remembered (False once values proved too varied)."""
        return self._memo is not None

    def lookup(self, md: Metadata) -> CompiledRoute | None:
        """``match`` without the memo: the index, then the candidates in table order."""
        if not self._exact and not self._prefix:
            for route in self.routes:
                if route.matches(md):
                    return route
            return None
        found: list[Sequence[int]] = []
        for key, by_value in self._exact.items():
            value = md.get(key)
            if value is not None:
                hit = by_value.get(value)
                if hit:
                    found.append(hit)
        for key, by_len in self._prefix.items():
            value = md.get(key)
            if value is None:
                continue
            n = len(value)
            for length in self._prefix_lengths[key]:
                if length > n:
                    break
                hit = by_len[length].get(value[:length])
                if hit:
                    found.append(hit)
        if self._unindexed:
            found.append(self._unindexed)
        if not found:
            return None
        if len(found) == 1:
            order: Sequence[int] = found[0]
        else:
            order = sorted({i for seq in found for i in seq})
        routes = self.routes
        for i in order:
            route = routes[i]
            if route.matches(md):
                return route
        return None

    def __len__(self) -> int:
        return len(self.routes)

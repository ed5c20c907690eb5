from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metaprotocol.config.model import (
    AttributeMatcher,
    MatchKind,
    RouteAction,
    RouteConfig,
    RouteRule,
    WeightedCluster,
)
from metaprotocol.router import RouteTable, compile_matcher

E, P, S, C, R, PR = (
    MatchKind.EXACT, MatchKind.PREFIX, MatchKind.SUFFIX, MatchKind.CONTAINS, MatchKind.REGEX,
    MatchKind.PRESENT,
)  # fmt: skip


@pytest.mark.parametrize(
    ("matcher", "md", "expected"),
    [
        (AttributeMatcher("method", E, "sayHello"), {"method": "sayHello"}, True),
        (AttributeMatcher("method", E, "sayHello"), {"method": "sayhello"}, False),
        (AttributeMatcher("method", E, "sayHello", ignore_case=True), {"method": "SAYHELLO"}, True),
        (AttributeMatcher("method", E, "sayHello"), {}, False),
        (AttributeMatcher("method", E, "sayHello", invert=True), {"method": "x"}, True),
        (AttributeMatcher("method", E, "sayHello", invert=True), {}, False),
        (AttributeMatcher("key", P, "user:"), {"key": "user:1"}, True),
        (AttributeMatcher("key", P, "user:"), {"key": "use"}, False),
        (AttributeMatcher("key", S, ":tmp"), {"key": "a:tmp"}, True),
        (AttributeMatcher("key", C, "mid"), {"key": "amidb"}, True),
        (AttributeMatcher("method", R, "say.*"), {"method": "sayHello"}, True),
        (AttributeMatcher("method", R, "say"), {"method": "sayHello"}, False),  # full match
        (AttributeMatcher("foo", PR, "true"), {"foo": ""}, True),
        (AttributeMatcher("foo", PR, "true"), {}, False),
        (AttributeMatcher("foo", PR, "false"), {}, True),
        (AttributeMatcher("foo", PR, "true", invert=True), {}, True),
        (AttributeMatcher("Method", E, "a"), {"method": "a"}, True),  # names compare lower-case
    ],
)
def test_matcher_semantics(matcher: AttributeMatcher, md: dict[str, str], expected: bool) -> None:
    assert compile_matcher(matcher)(md) is expected


def _rule(name: str, *matchers: AttributeMatcher, cluster: str = "c") -> RouteRule:
    return RouteRule(name, tuple(matchers), RouteAction(cluster=cluster))


def test_first_match_wins_in_table_order() -> None:
    table = RouteTable(
        RouteConfig(
            "t",
            (
                _rule("specific", AttributeMatcher("method", E, "a"), AttributeMatcher("v", E, "2")),
                _rule("by-method", AttributeMatcher("method", E, "a")),
                _rule("catch-all"),
            ),
        )
    )
    assert table.match({"method": "a", "v": "2"}).name == "specific"  # type: ignore[union-attr]
    assert table.match({"method": "a", "v": "1"}).name == "by-method"  # type: ignore[union-attr]
    assert table.match({"method": "b"}).name == "catch-all"  # type: ignore[union-attr]


def test_no_match_returns_none() -> None:
    table = RouteTable(RouteConfig("t", (_rule("x", AttributeMatcher("method", E, "a")),)))
    assert table.match({"method": "b"}) is None


def test_unindexed_route_before_indexed_one_keeps_order() -> None:
    table = RouteTable(
        RouteConfig(
            "t",
            (
                _rule("regex", AttributeMatcher("key", R, "user:.*")),
                _rule("prefix", AttributeMatcher("key", P, "user:")),
            ),
        )
    )
    assert table.match({"key": "user:1"}).name == "regex"  # type: ignore[union-attr]


names = st.sampled_from(["method", "key", "interface", "foo"])
values = st.sampled_from(["", "a", "ab", "abc", "b", "ba", "user:", "user:1", "a.*", "ab|b", "(a)b", "a+", "user:\\d"])
matchers = st.builds(
    AttributeMatcher,
    name=names,
    kind=st.sampled_from([E, P, S, C, PR, R]),
    value=values,
    invert=st.booleans(),
    ignore_case=st.booleans(),
)
tables = st.lists(st.lists(matchers, max_size=3), min_size=1, max_size=12)
metadata = st.dictionaries(names, values, max_size=4)


@given(tables, metadata)
def test_indexed_lookup_equals_linear_first_match(spec: list[list[AttributeMatcher]], md: dict[str, str]) -> None:
    rules = tuple(_rule(f"r{i}", *ms) for i, ms in enumerate(spec))
    table = RouteTable(RouteConfig("t", rules))
    linear = next((r for r in table.routes if r.matches(md)), None)
    assert table.match(md) is linear


@given(tables, st.lists(metadata, min_size=1, max_size=30))
def test_remembered_decisions_equal_linear_first_match(spec: list[list[AttributeMatcher]], mds: list[dict[str, str]]) -> None:
    """The memo keyed by attribute values never changes an answer, whatever the lookup order."""
    rules = tuple(_rule(f"r{i}", *ms) for i, ms in enumerate(spec))
    table = RouteTable(RouteConfig("t", rules))
    for md in mds + mds:
        assert table.match(md) is next((r for r in table.routes if r.matches(md)), None)


def test_memo_gives_up_on_too_varied_values(monkeypatch: pytest.MonkeyPatch) -> None:
    import metaprotocol.router.table as table_module

    monkeypatch.setattr(table_module, "MEMO_SIZE", 8)
    table = RouteTable(RouteConfig("t", (_rule("users", AttributeMatcher("key", P, "user:")), _rule("rest"))))
    for i in range(8 * table_module.MEMO_REFILLS + 1):
        key = f"user:{i}" if i % 2 else f"item:{i}"
        assert table.match({"key": key}).name == ("users" if i % 2 else "rest")  # type: ignore[union-attr]
    assert not table.remembers
    assert table.match({"key": "user:x"}).name == "users"  # type: ignore[union-attr]
    repeated = RouteTable(RouteConfig("t", (_rule("users", AttributeMatcher("key", P, "user:")), _rule("rest"))))
    for _ in range(100):
        repeated.match({"key": "user:1"})
    assert repeated.remembers


@pytest.mark.parametrize(
    ("pattern", "prefix"),
    [("say.*", "say"), (r"com\.example\..*", "com.example."), ("a|b", ""), ("(ab)c", ""), ("ab+", "a"), ("x?y", ""), ("", "")],
)
def test_regex_literal_prefix(pattern: str, prefix: str) -> None:
    from metaprotocol.router.table import regex_literal_prefix

    assert regex_literal_prefix(pattern) == prefix


def test_weighted_split_follows_weights() -> None:
    rule = RouteRule(
        "split",
        (),
        RouteAction(weighted_clusters=(WeightedCluster("v1", 20), WeightedCluster("v2", 80))),
    )
    route = RouteTable(RouteConfig("t", (rule,))).routes[0]
    rng = random.Random(1)
    counts = Counter(route.pick_cluster(rng) for _ in range(20_000))
    # 20/80 with n=20000: standard deviation of the v1 share is 0.28 points; allow 4 sigma.
    assert abs(counts["v1"] / 20_000 - 0.20) < 0.012
    assert set(counts) == {"v1", "v2"}


def test_zero_weight_cluster_never_picked() -> None:
    rule = RouteRule(
        "split", (), RouteAction(weighted_clusters=(WeightedCluster("a", 0), WeightedCluster("b", 1)))
    )
    route = RouteTable(RouteConfig("t", (rule,))).routes[0]
    rng = random.Random(2)
    assert {route.pick_cluster(rng) for _ in range(2000)} == {"b"}

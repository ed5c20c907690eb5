"""Route matching and endpoint selection cost (pytest-benchmark)."""

from __future__ import annotations

import random

import pytest

from metaprotocol.cluster.lb import build_lb
from metaprotocol.config.model import (
    AttributeMatcher,
    Endpoint,
    LbPolicy,
    MatchKind,
    RouteAction,
    RouteConfig,
    RouteRule,
)
from metaprotocol.router import RouteTable


def _table(n: int, kind: MatchKind) -> RouteTable:
    rules = []
    for i in range(n):
        value = f"com.example.Service{i}" if kind is MatchKind.EXACT else f"tenant{i}:"
        key = "interface" if kind is MatchKind.EXACT else "key"
        rules.append(
            RouteRule(
                f"r{i}",
                (AttributeMatcher(key, kind, value), AttributeMatcher("method", MatchKind.PRESENT, "true")),
                RouteAction(cluster=f"c{i % 10}"),
            )
        )
    rules.append(RouteRule("default", (), RouteAction(cluster="default")))
    return RouteTable(RouteConfig("bench", tuple(rules)))


@pytest.mark.parametrize("kind", [MatchKind.EXACT, MatchKind.PREFIX])
def test_match_1000_routes_last_rule(benchmark: object, kind: MatchKind) -> None:
    table = _table(1000, kind)
    md = {"interface": "com.example.Service999", "key": "tenant999:abc", "method": "get"}
    route = benchmark(table.lookup, md)  # type: ignore[operator]
    assert route is not None and route.name == "r999"


def test_match_remembered_decision(benchmark: object) -> None:
    """A Dubbo-shaped table read on interface, method and an attachment, answered from the memo
    (the same attribute values came before, as in steady traffic)."""
    iface = "org.apache.dubbo.samples.basic.api.DemoService"
    rules = (
        RouteRule("by-attachment", (AttributeMatcher("interface", MatchKind.EXACT, iface), AttributeMatcher("method", MatchKind.EXACT, "sayHello"),
                                    AttributeMatcher("foo", MatchKind.EXACT, "bar")), RouteAction(cluster="v2")),
        RouteRule("default", (), RouteAction(cluster="v1")),
    )  # fmt: skip
    table = RouteTable(RouteConfig("bench", rules))
    md = {"interface": iface, "method": "sayHello", "foo": "bar", "version": "1.0.0", "timeout": "3000", "dubbo": "2.0.2"}
    assert table.lookup(md) is table.match(md)
    route = benchmark(table.match, md)  # type: ignore[operator]
    assert route is not None and route.name == "by-attachment"


def test_match_1000_regex_routes_indexed_by_literal_prefix(benchmark: object) -> None:
    rules = tuple(
        RouteRule(f"r{i}", (AttributeMatcher("method", MatchKind.REGEX, rf"m{i}x+"),), RouteAction(cluster="c"))
        for i in range(1000)
    )
    table = RouteTable(RouteConfig("bench", rules))
    route = benchmark(table.lookup, {"method": "m999x"})  # type: ignore[operator]
    assert route is not None and route.name == "r999"


@pytest.mark.parametrize("policy", list(LbPolicy))
def test_lb_pick(benchmark: object, policy: LbPolicy) -> None:
    lb = build_lb(policy, [Endpoint("10.0.0.1", 7000 + i) for i in range(16)])
    rng = random.Random(1)
    key = b"user:12345"
    index = benchmark(lb.pick, key, rng)  # type: ignore[operator]
    assert 0 <= index < 16


def test_match_1000_unindexable_routes_linear_worst_case(benchmark: object) -> None:
    """Suffix matchers cannot be indexed: the honest linear worst case."""
    rules = tuple(
        RouteRule(f"r{i}", (AttributeMatcher("method", MatchKind.SUFFIX, f"-{i}"),), RouteAction(cluster="c"))
        for i in range(1000)
    )
    table = RouteTable(RouteConfig("bench", rules))
    route = benchmark(table.lookup, {"method": "m-999"})  # type: ignore[operator]
    assert route is not None and route.name == "r999"

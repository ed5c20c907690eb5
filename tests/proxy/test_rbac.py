"""L7 authorization (Envoy's RBAC rules) in the chain, for every codec, on every request path."""

from __future__ import annotations

import struct
from dataclasses import replace

import pytest
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac_pb2
from google.protobuf import json_format
from hypothesis import given, settings
from hypothesis import strategies as st

from metaprotocol.config.model import AttributeMatcher, MatchKind, RbacAction, RbacFilter, RbacOp, RbacPolicy, RbacRule
from metaprotocol.proxy.peer import namespace_of, peer_attributes
from metaprotocol.xds.convert import ConversionError
from metaprotocol.xds.rbac import rbac_filters_from_xds, rbac_filters_to_xds
from metaprotocol_codecs.dubbo import DubboCodecFactory, wire
from metaprotocol_codecs.redis import RedisCodecFactory
from metaprotocol_codecs.thrift import ThriftCodecFactory
from tests.fakes import FakeTransport
from tests.proxy.test_session import Harness, route

GET = b"*2\r\n$3\r\nGET\r\n$%d\r\n%b\r\n"
ALICE = "spiffe://cluster.local/ns/billing/sa/alice"


def get(key: bytes) -> bytes:
    return GET % (len(key), key)


def request_is(name: str, kind: MatchKind, value: str) -> RbacRule:
    return RbacRule(RbacOp.REQUEST, matcher=AttributeMatcher(name, kind, value))


def principal_is(value: str) -> RbacRule:
    return RbacRule(RbacOp.PEER, matcher=AttributeMatcher("source.principal", MatchKind.EXACT, value))


ANY = RbacRule(RbacOp.ANY)


def policy(name: str, permission: RbacRule, principal: RbacRule = ANY) -> RbacPolicy:
    return RbacPolicy(name, (permission,), (principal,))


class PeerTransport(FakeTransport):
    def __init__(self, peername: tuple[str, int] = ("10.0.0.7", 40000), principal: str = "") -> None:
        super().__init__()
        self.extra: dict[str, object] = {"peername": peername}
        if principal:
            self.extra["peercert"] = {"subject": ((("commonName", "x"),),), "subjectAltName": (("DNS", "x.example"), ("URI", principal))}

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self.extra.get(name, default)


def secured(h: Harness, *filters: RbacFilter) -> Harness:
    h.ctx.config = replace(h.ctx.config, rbac=filters)
    h.ctx.recompile()
    return h


def client(h: Harness, transport: PeerTransport | None = None) -> tuple[object, PeerTransport]:
    from metaprotocol.proxy.session import DownstreamSession

    s = DownstreamSession(h.ctx)
    t = transport or PeerTransport()
    s.connection_made(t)
    return s, t


def answer_all(h: Harness, reply: bytes) -> None:
    h.connect_all()
    for conn in h.conns():
        t = h.upstream_transports.get(id(conn))
        if t is not None:
            n = len(conn.fifo)  # type: ignore[attr-defined]
            if n:
                conn.data_received(reply * n)  # type: ignore[attr-defined]
    h.io.flush()


# -- Redis ------------------------------------------------------------------------------------


def test_redis_pipeline_with_one_denied_command_denies_only_that_one_in_order() -> None:
    deny = RbacFilter("deny", RbacAction.DENY, (policy("secrets", request_is("key", MatchKind.PREFIX, "secret")),))
    h = secured(Harness(RedisCodecFactory(), (route("a", "c"),), {"c": 1}), deny)
    assert not h.ctx.forwards_pipelines() and "rbac" in h.ctx.chain.names()
    s, t = client(h)
    s.data_received(get(b"a") + get(b"secret:1") + get(b"b"))  # type: ignore[attr-defined]
    h.connect_all()
    up = h.upstream_transports[id(h.conns()[0])]
    assert up.take() == get(b"a") + get(b"b")
    answer_all(h, b"$1\r\nX\r\n")
    assert t.take() == b"$1\r\nX\r\n-NOPERM RBAC: access denied\r\n$1\r\nX\r\n"
    stats = h.ctx.stats
    assert (stats.rbac_denied, stats.rbac_allowed, stats.errors["forbidden"]) == (1, 2, 1)


def test_redis_a_non_matching_allow_denies_and_a_fanout_part_is_checked_too() -> None:
    allow = RbacFilter("allow", RbacAction.ALLOW, (
        policy("reads", RbacRule(RbacOp.AND, (
            RbacRule(RbacOp.OR, (request_is("command", MatchKind.EXACT, "GET"), request_is("command", MatchKind.EXACT, "MGET"))),
            request_is("key", MatchKind.PREFIX, "user:"),
        ))),
    ))  # fmt: skip
    h = secured(Harness(RedisCodecFactory(), (route("a", "c"),), {"c": 2}), allow)
    s, t = client(h)
    s.data_received(b"*3\r\n$3\r\nSET\r\n$6\r\nuser:1\r\n$1\r\nv\r\n")  # type: ignore[attr-defined]  # not a read: no policy matches
    s.data_received(b"*3\r\n$4\r\nMGET\r\n$6\r\nuser:1\r\n$8\r\nsecret:2\r\n")  # type: ignore[attr-defined]  # one part is not user:
    h.io.flush()
    assert t.take() == b"-NOPERM RBAC: access denied\r\n" * 2 and not h.io.connects
    s.data_received(b"*3\r\n$4\r\nMGET\r\n$6\r\nuser:1\r\n$6\r\nuser:2\r\n")  # type: ignore[attr-defined]
    h.connect_all()
    assert any(h.upstream_transports[id(c)].take() for c in h.conns())  # allowed: it went upstream


# -- Dubbo ------------------------------------------------------------------------------------


def dubbo_call(rid: int, method: str, iface: str = "org.example.Billing") -> bytes:
    return wire.build_request(rid, wire.Invocation(iface, method, "Ljava/lang/String;", ["x"], {}, "1.0.0"))


def test_dubbo_allow_by_principal_and_method() -> None:
    allow = RbacFilter("allow", RbacAction.ALLOW, (policy("alice-refunds", request_is("method", MatchKind.EXACT, "refund"), principal_is(ALICE)),))
    h = secured(Harness(DubboCodecFactory(), (route("a", "c"),), {"c": 1}), allow)
    alice, t_alice = client(h, PeerTransport(principal=ALICE))
    mallory, t_mallory = client(h, PeerTransport(principal="spiffe://cluster.local/ns/other/sa/mallory"))
    anonymous, t_anonymous = client(h, PeerTransport())
    for s in (mallory, anonymous):
        s.data_received(dubbo_call(5, "refund"))  # type: ignore[attr-defined]
    h.io.flush()
    for t in (t_mallory, t_anonymous):
        frame = t.take()
        assert frame[3] == wire.SERVICE_ERROR and b"RBAC: access denied" in frame and frame[4:12] == (5).to_bytes(8, "big")
    alice.data_received(dubbo_call(6, "refund"))  # type: ignore[attr-defined]
    h.connect_all()
    assert h.upstream_transports[id(h.conns()[0])].take()  # alice's call went upstream
    assert h.ctx.stats.rbac_denied == 2 and h.ctx.stats.rbac_allowed == 1


def test_deny_runs_before_allow_as_istio_orders_them() -> None:
    deny = RbacFilter("deny", RbacAction.DENY, (policy("no-drop", request_is("method", MatchKind.EXACT, "drop")),))
    allow = RbacFilter("allow", RbacAction.ALLOW, (policy("all-alice", ANY, principal_is(ALICE)),))
    h = secured(Harness(DubboCodecFactory(), (route("a", "c"),), {"c": 1}), deny, allow)
    assert h.ctx.chain.names() == ["admission", "rbac", "rbac", "router"]
    s, t = client(h, PeerTransport(principal=ALICE))
    s.data_received(dubbo_call(1, "drop"))  # type: ignore[attr-defined]
    h.io.flush()
    assert t.take()[3] == wire.SERVICE_ERROR


# -- Thrift -----------------------------------------------------------------------------------


def thrift_call(name: str, seqid: int) -> bytes:
    body = struct.pack(">I", 0x80010001) + struct.pack(">I", len(name)) + name.encode() + struct.pack(">i", seqid) + b"\x00"
    return struct.pack(">I", len(body)) + body


def test_thrift_denied_call_gets_a_tapplicationexception() -> None:
    deny = RbacFilter("deny", RbacAction.DENY, (policy("no-drop", request_is("method", MatchKind.EXACT, "drop"), RbacRule(RbacOp.SOURCE_IP, cidr=("10.0.0.0", 8))),))
    h = secured(Harness(ThriftCodecFactory(), (route("a", "c"),), {"c": 1}), deny)
    inside, t_inside = client(h, PeerTransport(("10.1.2.3", 1234)))
    outside, _ = client(h, PeerTransport(("192.168.1.1", 1234)))
    inside.data_received(thrift_call("drop", 9))  # type: ignore[attr-defined]
    h.io.flush()
    reply = t_inside.take()
    assert struct.unpack(">I", reply[4:8])[0] == 0x80010003  # an EXCEPTION message
    assert b"drop" in reply and b"RBAC: access denied" in reply
    outside.data_received(thrift_call("drop", 10))  # type: ignore[attr-defined]  # not from 10/8: allowed
    h.connect_all()
    sent = h.upstream_transports[id(h.conns()[0])].take()
    assert sent[:16] == thrift_call("drop", 10)[:16]  # the call went upstream (with the proxy's own seqid)


# -- shadow, log, access log, conversion ------------------------------------------------------


def test_shadow_rules_and_log_action_count_but_never_refuse() -> None:
    shadow = RbacFilter("shadow", RbacAction.DENY, (policy("all", ANY),), enforced=False)
    log = RbacFilter("log", RbacAction.LOG, (policy("all", ANY),))
    h = secured(Harness(RedisCodecFactory(), (route("a", "c"),), {"c": 1}), shadow, log)
    s, t = client(h)
    s.data_received(get(b"k"))  # type: ignore[attr-defined]
    answer_all(h, b"$1\r\nX\r\n")
    assert t.take() == b"$1\r\nX\r\n"
    assert h.ctx.stats.rbac_shadow_denied == 1 and h.ctx.stats.rbac_allowed == 1 and h.ctx.stats.rbac_denied == 0


def test_a_denied_request_is_access_logged_as_forbidden() -> None:
    records: list[dict[str, object]] = []
    deny = RbacFilter("deny", RbacAction.DENY, (policy("all", ANY),))
    h = secured(Harness(RedisCodecFactory(), (route("a", "c"),), {"c": 1}), deny)
    h.ctx.access_log = records.append
    s, _ = client(h)
    s.data_received(get(b"k"))  # type: ignore[attr-defined]
    assert [r["status"] for r in records] == ["forbidden"]


ENVOY_RBAC = {
    "stat_prefix": "authz",
    "rules": {"action": "DENY", "policies": {
        "no-secrets": {"permissions": [{"header": {"name": "key", "string_match": {"prefix": "secret"}}}], "principals": [{"any": True}]},
        "mallory": {"permissions": [{"destination_port_range": {"start": 6000, "end": 7000}}],
                    "principals": [{"authenticated": {"principal_name": {"exact": "spiffe://cluster.local/ns/x/sa/mallory"}}},
                                   {"direct_remote_ip": {"address_prefix": "10.0.0.0", "prefix_len": 8}}]},
    }},
    "shadow_rules": {"action": "ALLOW", "policies": {"alice": {"permissions": [{"any": True}], "principals": [{"not_id": {"authenticated": {}}}]}}},
}  # fmt: skip


def test_envoy_rbac_config_round_trips_through_the_model() -> None:
    msg = json_format.ParseDict(ENVOY_RBAC, network_rbac_pb2.RBAC())
    filters = rbac_filters_from_xds(msg, "l", "rbac")
    assert [(f.action, f.enforced) for f in filters] == [(RbacAction.DENY, True), (RbacAction.ALLOW, False)]
    assert filters[0].policies[0].permissions[0].ports == (6000, 6999)
    (back,) = rbac_filters_to_xds(tuple(filters))
    assert rbac_filters_from_xds(back, "l", "rbac") == filters


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"rules": {"policies": {"p": {"permissions": [{"url_path": {"path": {"exact": "/"}}}], "principals": [{"any": True}]}}}}, "rbac.rules.policies[p].permissions[0].url_path"),
        ({"rules": {"policies": {"p": {"permissions": [{"any": True}], "principals": [{"filter_state": {"key": "k"}}]}}}}, "rbac.rules.policies[p].principals[0].filter_state"),
        ({"rules": {"policies": {"p": {"permissions": [{"any": True}]}}}}, "rbac.rules.policies[p]"),
        ({}, "rbac"),
    ],
)
def test_what_cannot_apply_to_a_request_is_refused_with_its_path(change: dict[str, object], path: str) -> None:
    msg = json_format.ParseDict(change, network_rbac_pb2.RBAC())
    with pytest.raises(ConversionError) as err:
        rbac_filters_from_xds(msg, "l", "rbac")
    assert err.value.path == path


def test_peer_attributes_from_the_socket_and_the_certificate() -> None:
    attrs = peer_attributes(PeerTransport(("10.0.0.7", 40000), ALICE))
    assert attrs == {"source.address": "10.0.0.7", "source.port": "40000", "source.principal": ALICE, "source.namespace": "billing"}
    assert peer_attributes(FakeTransport()) == {}
    assert namespace_of("spiffe://td/ns/a/sa/b") == "a" and namespace_of("spiffe://td/x") == ""


_ATTRS = ["interface", "method", "command", "key"]
_VALUES = ["a", "b", "c", ""]


@st.composite
def _leaf(draw: st.DrawFn) -> RbacRule:
    kind = draw(st.sampled_from([MatchKind.EXACT, MatchKind.EXACT, MatchKind.PREFIX, MatchKind.PRESENT]))
    matcher = AttributeMatcher(draw(st.sampled_from(_ATTRS)), kind, draw(st.sampled_from(_VALUES)), draw(st.booleans()), draw(st.booleans()))
    return RbacRule(RbacOp.REQUEST, matcher=matcher)


def test_the_policy_index_agrees_with_evaluating_every_policy() -> None:
    """Fast path (exact-value index) against the reference (each compiled rule in turn)."""
    from metaprotocol.proxy.rbac import RbacStage, compile_rule

    @st.composite
    def rules(draw: st.DrawFn) -> RbacRule:
        leaves = draw(st.lists(_leaf(), min_size=1, max_size=3))
        return leaves[0] if len(leaves) == 1 else RbacRule(RbacOp.AND, tuple(leaves))

    @st.composite
    def policies(draw: st.DrawFn) -> RbacPolicy:
        principal = draw(st.sampled_from([ANY, principal_is(ALICE), RbacRule(RbacOp.NOT, (principal_is(ALICE),))]))
        return RbacPolicy(f"p{draw(st.integers(0, 9))}", tuple(draw(st.lists(rules(), min_size=1, max_size=3))), (principal,))

    @given(st.lists(policies(), max_size=8), st.dictionaries(st.sampled_from(_ATTRS), st.sampled_from(_VALUES)), st.booleans())
    @settings(max_examples=300, deadline=None)
    def check(pols: list[RbacPolicy], request: dict[str, str], alice: bool) -> None:
        stage = RbacStage(RbacFilter("f", RbacAction.ALLOW, tuple(pols)), 9000)
        peer = {"source.principal": ALICE} if alice else {}
        reference = any(
            any(compile_rule(r, 9000)(request, peer) for r in p.permissions) and any(compile_rule(r, 9000)(request, peer) for r in p.principals)
            for p in pols
        )
        assert stage.matches(request, peer) == reference

    check()

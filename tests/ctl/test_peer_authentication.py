"""PeerAuthentication -> listener TLS: Istio's levels (mesh, namespace, workload, port), its modes,
its problems with their places, and the Envoy shape of TLS-or-plaintext (Istio's PERMISSIVE)."""

from __future__ import annotations

import pytest

from aeraki_ctl.incremental import IncrementalTranslator
from aeraki_ctl.peerauthn import DISABLE, PERMISSIVE, STRICT, UNSET, PeerAuthn, mode_for
from aeraki_ctl.resources import ResourceSet, load_text
from aeraki_ctl.translate import Options, translate
from metaprotocol.config.bootstrap import parse_bootstrap
from metaprotocol.config.dump import to_bootstrap_tree
from metaprotocol.config.model import MatchKind, SanType
from metaprotocol.xds import convert

SERVICE = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: cache, namespace: shop}
spec:
  hosts: [cache.shop.svc]
  ports: [{number: 20880, name: tcp-metaprotocol-dubbo, protocol: TCP, targetPort: 7000}]
  resolution: STATIC
  endpoints:
  - {address: 127.0.0.1, labels: {app: cache, version: v1}}
"""


def policy(name: str, namespace: str, mode: str = "", selector: dict[str, str] | None = None, ports: dict[int, str] | None = None, version: str = "v1") -> str:
    spec: list[str] = []
    if selector is not None:
        spec.append("  selector: {matchLabels: {" + ", ".join(f"{k}: {v}" for k, v in selector.items()) + "}}")
    if mode:
        spec.append(f"  mtls: {{mode: {mode}}}")
    if ports:
        spec.append("  portLevelMtls:")
        spec.extend(f"    {p}: {{mode: {m}}}" for p, m in ports.items())
    body = "\n".join(spec) or "  {}"
    return f"apiVersion: security.istio.io/{version}\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{body}\n"


def resources(*docs: str) -> ResourceSet:
    out = ResourceSet()
    load_text("---\n".join([SERVICE, *docs]), "test.yaml", out)
    return out


OPTS = Options(identity_dir="/run/identity", trust_domain="example.org")


def listener_tls(*docs: str):  # type: ignore[no-untyped-def]
    result = translate(resources(*docs), OPTS)
    assert not result.errors, result.problems
    [lst] = result.bootstrap.listeners
    return lst.tls


def test_no_policy_leaves_the_listener_plaintext() -> None:
    assert listener_tls() is None


@pytest.mark.parametrize("version", ["v1", "v1beta1"])
def test_strict_is_mutual_tls_with_the_workload_identity(version: str) -> None:
    tls = listener_tls(policy("default", "shop", "STRICT", version=version))
    assert tls is not None and tls.require_client_certificate and not tls.allow_plaintext
    assert tls.common.certificate_chain.filename == "/run/identity/cert.pem"  # type: ignore[union-attr]
    assert tls.common.private_key.filename == "/run/identity/key.pem"  # type: ignore[union-attr]
    assert tls.common.trusted_ca.filename == "/run/identity/ca.pem"  # type: ignore[union-attr]
    [san] = tls.common.match_sans
    assert (san.san_type, san.kind, san.value) == (SanType.URI, MatchKind.PREFIX, "spiffe://example.org/")


def test_permissive_takes_tls_or_plaintext_and_disable_takes_plaintext() -> None:
    tls = listener_tls(policy("default", "shop", "PERMISSIVE"))
    assert tls is not None and tls.allow_plaintext and tls.require_client_certificate
    assert listener_tls(policy("default", "shop", "DISABLE")) is None


def test_the_most_specific_level_wins_and_unset_inherits() -> None:
    mesh = policy("default", "istio-system", "STRICT")
    assert listener_tls(mesh) is not None and not listener_tls(mesh).allow_plaintext
    # the namespace overrides the mesh, the workload the namespace, a port the workload
    assert listener_tls(mesh, policy("default", "shop", "DISABLE")) is None
    assert listener_tls(mesh, policy("default", "shop", "DISABLE"), policy("cache", "shop", "PERMISSIVE", {"app": "cache"})).allow_plaintext
    assert listener_tls(mesh, policy("cache", "shop", "UNSET", {"app": "cache"})) is not None  # UNSET: the mesh's STRICT
    assert listener_tls(mesh, policy("cache", "shop", "STRICT", {"app": "cache"}, {7000: "DISABLE"})) is None  # the endpoint's port
    assert listener_tls(policy("cache", "shop", "", {"app": "cache"}, {20880: "STRICT"})) is None  # keyed by the workload's port, as Istio does
    assert listener_tls(mesh, policy("cache", "shop", "DISABLE", {"app": "other"})) is not None  # selects nothing here
    assert listener_tls(policy("default", "elsewhere", "STRICT")) is None  # another namespace's


def test_mode_for_keeps_istio_levels() -> None:
    labels = [(("app", "a"),)]
    found = [
        PeerAuthn("m", "istio-system", "m", (), PERMISSIVE),
        PeerAuthn("w2", "ns", "w2", (("app", "a"),), STRICT),
        PeerAuthn("w1", "ns", "w1", (("app", "a"),), DISABLE),  # the first by name at one level
    ]
    assert mode_for(found, "ns", "istio-system", labels, [80]) == DISABLE
    assert mode_for(found[:1], "ns", "istio-system", labels, [80]) == PERMISSIVE
    assert mode_for([], "ns", "istio-system", labels, [80]) == UNSET


def test_problems_carry_their_place() -> None:
    result = translate(resources(policy("default", "shop", "STRICT", ports={8080: "DISABLE"}), policy("bad", "shop", "SOMETIMES")), OPTS)
    texts = [str(p) for p in result.problems]
    assert any("PeerAuthentication shop/default: spec.portLevelMtls: portLevelMtls applies only to a policy with a selector" in t for t in texts), texts
    assert all(p.fatal for p in result.problems if p.obj == "PeerAuthentication shop/default")  # refused, as Istio's validation does
    bad = [p for p in result.problems if p.obj == "PeerAuthentication shop/bad"]
    assert bad and bad[0].fatal and "spec.mtls.mode" in bad[0].path, bad
    result = translate(resources(policy("default", "shop", "STRICT"), policy("bad", "shop", "SOMETIMES")), OPTS)
    assert result.bootstrap.listeners[0].tls is not None  # the valid one still applies


def test_endpoints_with_different_modes_make_the_listener_take_the_strictest() -> None:
    two = SERVICE.replace("  - {address: 127.0.0.1, labels: {app: cache, version: v1}}",
                          "  - {address: 127.0.0.1, labels: {app: cache, version: v1}}\n  - {address: 127.0.0.2, labels: {app: cache, version: v2}}")
    out = ResourceSet()
    load_text("---\n".join([two, policy("default", "shop", "STRICT"), policy("legacy", "shop", "DISABLE", {"version": "v1"})]), "test.yaml", out)
    result = translate(out, OPTS)
    [lst] = result.bootstrap.listeners
    assert lst.tls is not None and not lst.tls.allow_plaintext  # v2 is STRICT: no plaintext client may reach it through the listener
    assert any("modes of cache.shop.svc's endpoints differ (DISABLE, STRICT)" in str(p) and not p.fatal for p in result.problems), result.problems


def test_incremental_translation_follows_a_policy_edit() -> None:
    translator = IncrementalTranslator(OPTS)
    first = translator(resources(policy("default", "shop", "STRICT")))
    assert first.bootstrap.listeners[0].tls is not None
    translator.take_changes()
    second = translator(resources(policy("default", "shop", "DISABLE")))
    assert second.bootstrap.listeners[0].tls is None
    assert translator.take_changes()[0] == {"cache.shop.svc"}


def test_tls_or_plaintext_is_istios_listener_shape_and_reads_back() -> None:
    result = translate(resources(policy("default", "shop", "PERMISSIVE")), OPTS)
    [lst] = result.bootstrap.listeners
    msg = convert.listener_to_xds(lst)
    assert [f.name for f in msg.listener_filters] == [convert.TLS_INSPECTOR]
    assert [c.filter_chain_match.transport_protocol for c in msg.filter_chains] == ["tls", "raw_buffer"]
    assert msg.filter_chains[0].HasField("transport_socket") and not msg.filter_chains[1].HasField("transport_socket")
    assert convert.listener_from_xds(msg).tls == lst.tls
    assert parse_bootstrap(to_bootstrap_tree(result.bootstrap)).listeners == result.bootstrap.listeners


def test_two_filter_chains_that_differ_otherwise_are_refused_with_their_place() -> None:
    result = translate(resources(policy("default", "shop", "PERMISSIVE")), OPTS)
    msg = convert.listener_to_xds(result.bootstrap.listeners[0])
    msg.filter_chains[1].filters[0].name = "envoy.filters.network.tcp_proxy"
    with pytest.raises(convert.ConversionError, match=r"filter_chains\[1\].filters.*same filters"):
        convert.listener_from_xds(msg)
    msg = convert.listener_to_xds(result.bootstrap.listeners[0])
    msg.filter_chains[1].filter_chain_match.transport_protocol = "tls"
    with pytest.raises(convert.ConversionError, match="exactly one filter chain"):
        convert.listener_from_xds(msg)


def test_port_level_tls_is_refused_not_half_applied() -> None:
    doc = policy("default", "shop", "STRICT") + "  portLevelTls:\n    20880: {mode: SIMPLE}\n"
    result = translate(resources(doc), OPTS)
    assert any(p.obj == "PeerAuthentication shop/default" and p.fatal and "portLevelTls" in str(p) for p in result.problems), result.problems


def test_a_single_filter_chain_with_a_match_is_refused_not_served_to_everyone() -> None:
    result = translate(resources(policy("default", "shop", "STRICT")), OPTS)
    msg = convert.listener_to_xds(result.bootstrap.listeners[0])
    msg.filter_chains[0].filter_chain_match.source_prefix_ranges.add(address_prefix="10.0.0.0").prefix_len.value = 8
    with pytest.raises(convert.ConversionError, match=r"filter_chains\[0\]\.filter_chain_match\.source_prefix_ranges"):
        convert.listener_from_xds(msg)

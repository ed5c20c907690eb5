"""TLS transport sockets (Envoy's DownstreamTlsContext / UpstreamTlsContext) in the bootstrap and over
xDS: one mapping both ways, and what this proxy cannot do refused with its field path."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest

from metaprotocol.config.bootstrap import parse_bootstrap
from metaprotocol.config.dump import to_bootstrap_tree
from metaprotocol.config.errors import ConfigError
from metaprotocol.config.model import CommonTls, DataSource, DownstreamTls, MatchKind, SanMatcher, SanType, TlsParams, UpstreamTls
from metaprotocol.xds import convert
from tests.servers import bootstrap_dict, cluster, listener

DOWNSTREAM = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
UPSTREAM = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def _tree(listener_tls: dict[str, object] | None = None, cluster_tls: dict[str, object] | None = None) -> dict[str, object]:
    lst = listener("l", 0, "redis", [{"route": {"cluster": "c"}}])
    if listener_tls is not None:
        lst["filter_chains"][0]["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": {"@type": DOWNSTREAM, **listener_tls}}  # type: ignore[index]
    extra = {"transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {"@type": UPSTREAM, **cluster_tls}}} if cluster_tls is not None else {}
    return bootstrap_dict([lst], [cluster("c", [6379], **extra)])


FULL_DOWNSTREAM = {
    "require_client_certificate": True,
    "common_tls_context": {
        "tls_params": {"tls_minimum_protocol_version": "TLSv1_2", "tls_maximum_protocol_version": "TLSv1_3",
                       "cipher_suites": ["ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256"], "ecdh_curves": ["P-256"]},
        "tls_certificates": [{"certificate_chain": {"filename": "/certs/cert.pem"}, "private_key": {"filename": "/certs/key.pem"}}],
        "validation_context": {
            "trusted_ca": {"inline_string": PEM},
            "match_typed_subject_alt_names": [
                {"san_type": "URI", "matcher": {"prefix": "spiffe://cluster.local/ns/foo/"}},
                {"san_type": "DNS", "matcher": {"suffix": ".svc.cluster.local", "ignore_case": True}},
                {"san_type": "URI", "matcher": {"safe_regex": {"regex": "spiffe://[a-z.]+/ns/bar/.*"}}},
                {"san_type": "EMAIL", "matcher": {"contains": "@example"}},
                {"san_type": "IP_ADDRESS", "matcher": {"exact": "10.0.0.1"}},
            ],
        },
        "alpn_protocols": ["redis"],
    },
}  # fmt: skip


def test_bootstrap_tls_reads_into_the_model_and_round_trips() -> None:
    b = parse_bootstrap(_tree(FULL_DOWNSTREAM, {"sni": "redis.local", "common_tls_context": {"validation_context": {"trusted_ca": {"filename": "/ca.pem"}}}}))
    tls = b.listeners[0].tls
    assert tls == DownstreamTls(
        CommonTls(
            certificate_chain=DataSource(filename="/certs/cert.pem"),
            private_key=DataSource(filename="/certs/key.pem"),
            trusted_ca=DataSource(inline=PEM),
            match_sans=(
                SanMatcher(SanType.URI, MatchKind.PREFIX, "spiffe://cluster.local/ns/foo/"),
                SanMatcher(SanType.DNS, MatchKind.SUFFIX, ".svc.cluster.local", ignore_case=True),
                SanMatcher(SanType.URI, MatchKind.REGEX, "spiffe://[a-z.]+/ns/bar/.*"),
                SanMatcher(SanType.EMAIL, MatchKind.CONTAINS, "@example"),
                SanMatcher(SanType.IP_ADDRESS, MatchKind.EXACT, "10.0.0.1"),
            ),
            params=TlsParams("TLSv1_2", "TLSv1_3", ("ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256"), ("P-256",)),
            alpn_protocols=("redis",),
        ),
        require_client_certificate=True,
    )
    assert b.clusters[0].tls == UpstreamTls(CommonTls(trusted_ca=DataSource(filename="/ca.pem")), sni="redis.local")
    assert parse_bootstrap(to_bootstrap_tree(b)) == b


def test_xds_resources_carry_tls_both_ways() -> None:
    b = parse_bootstrap(_tree(FULL_DOWNSTREAM, {"sni": "s", "common_tls_context": {"tls_certificates": [{"certificate_chain": {"inline_bytes": "LS0t"}, "private_key": {"filename": "/k"}}]}}))
    lst, c = b.listeners[0], b.clusters[0]
    assert c.tls is not None and c.tls.common.certificate_chain == DataSource(inline="---")
    wire = convert.listener_to_xds(replace(lst, route_config=None, rds_name="r"))
    assert wire.filter_chains[0].transport_socket.name == "envoy.transport_sockets.tls"
    assert convert.listener_from_xds(wire).tls == lst.tls
    assert convert.cluster_from_xds(convert.cluster_to_xds(c), convert.endpoints_to_xds(c)).tls == c.tls
    plain = convert.cluster_to_xds(replace(c, tls=None))
    assert not plain.HasField("transport_socket")


def test_raw_buffer_is_plaintext() -> None:
    tree = _tree()
    tree["static_resources"]["clusters"][0]["transport_socket"] = {"name": "envoy.transport_sockets.raw_buffer"}  # type: ignore[index]
    assert parse_bootstrap(tree).clusters[0].tls is None


def _with(path: list[object], value: object) -> dict[str, object]:
    ctx = copy.deepcopy(FULL_DOWNSTREAM)
    node: object = ctx
    for key in path[:-1]:
        node = node[key]  # type: ignore[index]
    node[path[-1]] = value  # type: ignore[index]
    return ctx


CTX = "static_resources.listeners[0].filter_chains[0].transport_socket.typed_config"


@pytest.mark.parametrize(
    ("tree", "path", "reason"),
    [
        (_tree(_with(["common_tls_context", "tls_params", "cipher_suites"], ["NOT-A-CIPHER"])), f"{CTX}.common_tls_context.tls_params.cipher_suites[0]", "unknown to this proxy's OpenSSL"),
        (_tree(_with(["common_tls_context", "tls_params", "cipher_suites"], ["[ECDHE-ECDSA-AES128-GCM-SHA256|ECDHE-ECDSA-CHACHA20-POLY1305]"])), "cipher_suites[0]", "BoringSSL"),
        (_tree(_with(["common_tls_context", "tls_params", "ecdh_curves"], ["P-256", "P-384"])), "tls_params.ecdh_curves[1]", "one curve"),
        (_tree(_with(["common_tls_context", "tls_params", "ecdh_curves"], ["X25519"])), "tls_params.ecdh_curves[0]", "cannot be set"),
        (_tree(_with(["common_tls_context", "tls_params", "signature_algorithms"], ["ecdsa_secp256r1_sha256"])), "tls_params.signature_algorithms", "not supported"),
        (_tree(_with(["common_tls_context", "tls_params", "tls_maximum_protocol_version"], "TLSv1_1")), "tls_params.tls_minimum_protocol_version", "above the maximum"),
        (_tree(_with(["common_tls_context", "validation_context"], {"match_typed_subject_alt_names": [{"san_type": "URI", "matcher": {"exact": "x"}}]})),
         "validation_context.trusted_ca", "SAN-based verification of peer certificates without trusted CA"),
        (_tree(_with(["common_tls_context", "validation_context", "crl"], {"filename": "/crl.pem"})), "validation_context.crl", "not supported"),
        (_tree(_with(["common_tls_context", "tls_certificates"], []) | {"require_client_certificate": False}), f"{CTX}.common_tls_context.tls_certificates", "needs a certificate"),
        (_tree(_with(["common_tls_context", "tls_certificates"], [{"certificate_chain": {"filename": "/c"}}])), "tls_certificates[0].private_key", "required"),
        (_tree(_with(["common_tls_context", "tls_certificates", 0, "private_key"], {"environment_variable": "KEY"})), "private_key.environment_variable", "not supported"),
        (_tree(_with(["common_tls_context", "validation_context", "match_typed_subject_alt_names", 0, "san_type"], "OTHER_NAME")),
         "match_typed_subject_alt_names[0].san_type", "one of DNS, URI, EMAIL, IP_ADDRESS"),
        (_tree(_with(["common_tls_context", "tls_certificate_sds_secret_configs"], [{"name": "default"}])), "tls_certificate_sds_secret_configs", "not supported"),
        (_tree(cluster_tls={"common_tls_context": {}, "allow_renegotiation": True}), "static_resources.clusters[0].transport_socket.typed_config.allow_renegotiation", "not supported"),
    ],
)  # fmt: skip
def test_what_cannot_be_done_is_refused_with_its_path(tree: dict[str, object], path: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_bootstrap(tree, "boot.yaml")
    assert path in info.value.path, info.value
    assert reason in info.value.reason, info.value


def test_an_unknown_transport_socket_is_refused() -> None:
    tree = _tree()
    tree["static_resources"]["clusters"][0]["transport_socket"] = {"name": "envoy.transport_sockets.alts"}  # type: ignore[index]
    with pytest.raises(ConfigError, match="unsupported transport socket 'envoy.transport_sockets.alts'"):
        parse_bootstrap(tree)


def test_a_cluster_may_speak_tls_without_verifying_as_envoy_does() -> None:
    b = parse_bootstrap(_tree(cluster_tls={"sni": "redis.local"}))
    assert b.clusters[0].tls == UpstreamTls(CommonTls(), sni="redis.local")

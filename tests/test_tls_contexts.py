"""metaprotocol.io.tls without sockets: contexts from files and inline PEM, reloads, SAN matching,
failure names."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from metaprotocol.config.model import CommonTls, DataSource, DownstreamTls, MatchKind, SanMatcher, SanType, TlsParams, UpstreamTls
from metaprotocol.io.proxy import redact_keys
from metaprotocol.io.tls import ContextHolder, SanMismatch, TlsConfigError, build_context, failure_reason, san_matches
from tests.tls_certs import CertAuthority


@pytest.fixture(scope="module")
def ca() -> CertAuthority:
    return CertAuthority()


def test_inline_and_file_sources_make_the_same_context(ca: CertAuthority, tmp_path: Path) -> None:
    cert, key = ca.issue("inline", dns=("a.local",))
    inline = DownstreamTls(CommonTls(DataSource(inline=cert.decode()), DataSource(inline=key.decode()), DataSource(inline=ca.pem.decode())), True)
    ctx = build_context(inline)
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2 and ctx.maximum_version == ssl.TLSVersion.TLSv1_3
    optional = DownstreamTls(CommonTls(DataSource(inline=cert.decode()), DataSource(inline=key.decode()), DataSource(inline=ca.pem.decode())), False)
    assert build_context(optional).verify_mode == ssl.CERT_OPTIONAL
    client = build_context(UpstreamTls(CommonTls(params=TlsParams("TLSv1_3", "TLSv1_3")), sni="x"))
    assert client.verify_mode == ssl.CERT_NONE and not client.check_hostname and client.minimum_version == ssl.TLSVersion.TLSv1_3
    with pytest.raises(TlsConfigError, match="No such file"):
        build_context(DownstreamTls(CommonTls(DataSource(filename=str(tmp_path / "missing.pem")), DataSource(filename=str(tmp_path / "k")))))


def test_reload_waits_for_a_matching_pair_and_keeps_the_old_context_meanwhile(ca: CertAuthority, tmp_path: Path) -> None:
    crt, key = tmp_path / "c.pem", tmp_path / "k.pem"
    c1, k1 = ca.issue("one")
    crt.write_bytes(c1)
    key.write_bytes(k1)
    holder = ContextHolder(DownstreamTls(CommonTls(DataSource(filename=str(crt)), DataSource(filename=str(key)))))
    first = holder.current
    assert holder.check() is None  # nothing changed
    c2, k2 = ca.issue("two")
    key.write_bytes(k2)  # the key first: the pair does not match for a moment
    assert holder.check() is None and holder.current is first  # tried, not reported yet
    assert holder.check() is False and holder.current is first  # still broken: reported once
    assert holder.check() is None
    crt.write_bytes(c2)
    assert holder.check() is True and holder.current is not first


def test_san_matching_follows_envoy_typed_matchers() -> None:
    cert = {"subjectAltName": (("URI", "spiffe://cluster.local/ns/foo/sa/bar"), ("DNS", "Api.Example.COM"), ("IP Address", "10.0.0.1"), ("email", "a@b.c"))}
    uri = SanType.URI
    assert san_matches([SanMatcher(uri, MatchKind.EXACT, "spiffe://cluster.local/ns/foo/sa/bar")], cert)
    assert not san_matches([SanMatcher(uri, MatchKind.EXACT, "spiffe://cluster.local/ns/foo/sa/ba")], cert)
    assert san_matches([SanMatcher(uri, MatchKind.PREFIX, "spiffe://cluster.local/ns/foo/")], cert)
    assert san_matches([SanMatcher(uri, MatchKind.SUFFIX, "/sa/bar")], cert)
    assert san_matches([SanMatcher(uri, MatchKind.CONTAINS, "/ns/foo/")], cert)
    assert san_matches([SanMatcher(uri, MatchKind.REGEX, r"spiffe://[^/]+/ns/foo/sa/\w+")], cert)
    assert not san_matches([SanMatcher(uri, MatchKind.REGEX, r"ns/foo")], cert)  # a full match, as RE2's in Envoy
    assert not san_matches([SanMatcher(SanType.DNS, MatchKind.EXACT, "api.example.com")], cert)
    assert san_matches([SanMatcher(SanType.DNS, MatchKind.EXACT, "api.example.com", ignore_case=True)], cert)
    assert not san_matches([SanMatcher(SanType.DNS, MatchKind.PREFIX, "spiffe://")], cert)  # the type matters
    assert san_matches([SanMatcher(SanType.ANY, MatchKind.PREFIX, "spiffe://")], cert)  # match_subject_alt_names: any type
    assert san_matches([SanMatcher(SanType.IP_ADDRESS, MatchKind.EXACT, "10.0.0.1")], cert)
    assert san_matches([SanMatcher(SanType.EMAIL, MatchKind.SUFFIX, "@b.c")], cert)
    assert san_matches([SanMatcher(SanType.DNS, MatchKind.EXACT, "x"), SanMatcher(uri, MatchKind.SUFFIX, "/bar")], cert)  # any matcher
    assert not san_matches([SanMatcher(uri, MatchKind.PREFIX, "")], {})  # no certificate: nothing matches


def test_failure_reasons_are_a_short_fixed_set() -> None:
    def err(reason: str) -> ssl.SSLError:
        e = ssl.SSLError(1, reason)
        e.reason = reason
        return e

    assert failure_reason(err("PEER_DID_NOT_RETURN_A_CERTIFICATE")) == "no_client_certificate"
    assert failure_reason(err("TLSV13_ALERT_CERTIFICATE_REQUIRED")) == "no_client_certificate"
    assert failure_reason(err("CERTIFICATE_VERIFY_FAILED")) == "certificate_verify_failed"
    assert failure_reason(err("TLSV1_ALERT_UNKNOWN_CA")) == "peer_rejected_certificate"
    assert failure_reason(err("UNSUPPORTED_PROTOCOL")) == "protocol_version"
    assert failure_reason(err("NO_SHARED_CIPHER")) == "no_shared_parameters"
    assert failure_reason(err("HTTP_REQUEST")) == "not_tls"
    assert failure_reason(err("SOMETHING_NEW")) == "ssl_error"
    assert failure_reason(SanMismatch("x")) == "san_mismatch"
    assert failure_reason(TimeoutError()) == "timeout"
    assert failure_reason(ConnectionResetError()) == "connection_closed"


def test_config_dump_never_shows_an_inline_private_key() -> None:
    tree = {"tls": {"common": {"certificate_chain": {"filename": "", "inline": "CERT"}, "private_key": {"filename": "", "inline": "KEY"}}}, "other": [{"private_key": {"filename": "/k", "inline": ""}}]}
    assert redact_keys(tree) == {
        "tls": {"common": {"certificate_chain": {"filename": "", "inline": "CERT"}, "private_key": {"filename": "", "inline": "[redacted]"}}},
        "other": [{"private_key": {"filename": "/k", "inline": ""}}],
    }


def test_the_deployed_control_plane_speaks_xds_as_its_sidecars_do() -> None:
    """--tls-cert also secures xDS: the manifests must not serve TLS to sidecars that speak plaintext."""
    import yaml

    root = Path(__file__).resolve().parents[1]
    (server,) = [c for d in yaml.safe_load_all((root / "deploy/deployment.yaml").read_text()) if d and d.get("kind") == "Deployment"
                 for c in d["spec"]["template"]["spec"]["containers"] if c["name"] == "aeraki-ctl"]  # fmt: skip
    sidecars = [c for d in yaml.safe_load_all((root / "deploy/example/consumer.yaml").read_text()) if d and d.get("kind") == "Deployment"
                for c in d["spec"]["template"]["spec"]["containers"] if any(str(a).startswith("--xds=") for a in c.get("args", []))]  # fmt: skip
    assert sidecars
    serves_tls = any(str(a).startswith("--tls-cert") for a in server["args"]) and "--xds-plaintext" not in server["args"]
    for sidecar in sidecars:
        assert serves_tls == any(str(a).startswith("--xds-ca") for a in sidecar["args"]), sidecar["name"]

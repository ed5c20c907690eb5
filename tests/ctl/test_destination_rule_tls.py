"""DestinationRule trafficPolicy.tls (issue 16 item 6): translated into the clusters'
UpstreamTlsContext and enforced, instead of a warning."""

from __future__ import annotations

import pytest

from aeraki_ctl.translate import Options, translate
from metaprotocol.config.model import MatchKind, SanType
from metaprotocol.xds import convert
from tests.ctl.test_translate import ALL, SERVICE, V1, V2, resources

HOST = "org.apache.dubbo.samples.basic.api.demoservice"
SERVICE_ENTRY = next(doc for doc in SERVICE.split("\n---") if "kind: ServiceEntry" in doc)  # the demo's, without its DestinationRule


def rule(tls: str, subset_tls: str = "") -> str:
    sub = f"\n    trafficPolicy: {{tls: {subset_tls}}}" if subset_tls else ""
    return f"""
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {{name: dr, namespace: meta-dubbo}}
spec:
  host: {HOST}
  trafficPolicy: {{tls: {tls}}}
  subsets:
  - name: v1
    labels: {{version: v1}}{sub}
  - name: v2
    labels: {{version: v2}}
"""


def clusters(tls: str, subset_tls: str = "", options: Options | None = None) -> tuple[dict[str, object], list[str]]:
    result = translate(resources(SERVICE_ENTRY, rule(tls, subset_tls)), options)
    return {c.name: c for c in result.bootstrap.clusters}, [f"{p.path}: {p.reason}" for p in result.problems]


def test_istio_mutual_uses_the_workload_identity_and_verifies_the_trust_domain() -> None:
    found, problems = clusters("{mode: ISTIO_MUTUAL}", options=Options(identity_dir="/run/id", trust_domain="corp.example"))
    assert not problems
    tls = found[ALL].tls  # type: ignore[attr-defined]
    common = tls.common
    assert (common.certificate_chain.filename, common.private_key.filename, common.trusted_ca.filename) == ("/run/id/cert.pem", "/run/id/key.pem", "/run/id/ca.pem")
    assert [(m.san_type, m.kind, m.value) for m in common.match_sans] == [(SanType.URI, MatchKind.PREFIX, "spiffe://corp.example/")]
    assert tls.sni == HOST and found[V1].tls == tls and found[V2].tls == tls  # type: ignore[attr-defined]
    # the cluster goes out over xDS with its transport socket, and reads back the same
    back = convert.cluster_from_xds(convert.cluster_to_xds(found[ALL]), convert.endpoints_to_xds(found[ALL]))  # type: ignore[arg-type]
    assert back.tls == tls


def test_simple_and_mutual_take_the_rules_files_and_a_subset_may_disable_tls() -> None:
    found, problems = clusters(
        "{mode: MUTUAL, clientCertificate: /c.pem, privateKey: /k.pem, caCertificates: /ca.pem, subjectAltNames: [provider.example], sni: p.example}",
        subset_tls="{mode: DISABLE}",
    )
    assert not problems
    tls = found[ALL].tls  # type: ignore[attr-defined]
    assert (tls.common.certificate_chain.filename, tls.common.private_key.filename, tls.common.trusted_ca.filename, tls.sni) == ("/c.pem", "/k.pem", "/ca.pem", "p.example")
    assert [(m.san_type, m.value) for m in tls.common.match_sans] == [(SanType.ANY, "provider.example")]
    assert found[V1].tls is None and found[V2].tls == tls  # type: ignore[attr-defined]
    simple, problems = clusters("{mode: SIMPLE, caCertificates: /ca.pem}")
    assert not problems and simple[ALL].tls.common.certificate_chain is None  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("tls", "path"),
    [
        ("{mode: SIMPLE}", "spec.trafficPolicy.tls.caCertificates"),
        ("{mode: MUTUAL, caCertificates: /ca.pem}", "spec.trafficPolicy.tls"),
        ("{mode: SIMPLE, credentialName: my-secret, caCertificates: /ca.pem}", "spec.trafficPolicy.tls.credentialName"),
        ("{mode: SIMPLE, caCertificates: /ca.pem, caCrl: /crl.pem}", "spec.trafficPolicy.tls.caCrl"),
        ("{mode: ISTIO_MUTUAL, clientCertificate: /c.pem}", "spec.trafficPolicy.tls.clientCertificate"),
    ],
)
def test_what_would_weaken_or_change_the_check_is_refused_with_its_path(tls: str, path: str) -> None:
    result = translate(resources(SERVICE_ENTRY, rule(tls)))
    assert any(p.path == path for p in result.errors), [f"{p.path}: {p.reason}" for p in result.problems]


def test_insecure_skip_verify_is_honoured_explicitly() -> None:
    found, problems = clusters("{mode: SIMPLE, insecureSkipVerify: true}")
    assert not problems
    common = found[ALL].tls.common  # type: ignore[attr-defined]
    assert common.trusted_ca is None and common.match_sans == ()

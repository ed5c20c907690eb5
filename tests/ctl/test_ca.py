"""The workload CA (aeraki_ctl.ca), the tokens authenticator (aeraki_ctl.authn) and Istio's
certificate service over a real gRPC server."""

from __future__ import annotations

import datetime
import json
import shutil
import stat
import subprocess
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store

from aeraki_ctl.authn import Identity, Refused, TokensFile
from aeraki_ctl.ca import METHOD, CAError, CertificateAuthority, CertificateService, new_root, parse_duration
from aeraki_ctl.xds.server import AdsServer, start_server
from metaprotocol_api.istio.security.v1alpha1 import ca_pb2

BILLING = "spiffe://cluster.local/ns/billing/sa/billing"
CART = "spiffe://cluster.local/ns/shop/sa/cart"


def csr_for(*uris: str, key: ec.EllipticCurvePrivateKey | None = None, dns: str | None = None) -> str:
    key = key or ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    if dns:
        names.append(x509.DNSName(dns))
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=True)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def verify(chain_pem: list[str], roots: list[x509.Certificate]) -> x509.Certificate:
    """Verify a leaf as a TLS client certificate against ``roots`` with cryptography's verifier."""
    leaf, *rest = (x509.load_pem_x509_certificate(p.encode()) for p in chain_pem)
    verifier = PolicyBuilder().store(Store(roots)).build_client_verifier()
    verifier.verify(leaf, [c for c in rest if c not in roots])
    return leaf


@pytest.fixture
def ca() -> CertificateAuthority:
    key, cert = new_root("cluster.local")
    return CertificateAuthority(key, [cert])


def test_sign_gives_the_granted_identity_key_usages_and_the_chain(ca: CertificateAuthority) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    chain = ca.sign(csr_for(BILLING, key=key), BILLING)
    assert len(chain) == 2 and chain[1] == ca.root_pem
    leaf = verify(chain, [ca.certificate])
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical and san.value.get_values_for_type(x509.UniformResourceIdentifier) == [BILLING]
    assert leaf.public_key().public_numbers() == key.public_key().public_numbers()  # type: ignore[union-attr]
    ku = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and ku.key_encipherment and not ku.key_cert_sign
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == datetime.timedelta(hours=24)  # the default


def test_a_csr_without_san_gets_the_granted_identity(ca: CertificateAuthority) -> None:
    leaf = verify(ca.sign(csr_for(), CART), [ca.certificate])
    assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.UniformResourceIdentifier) == [CART]


def test_a_csr_naming_another_identity_or_a_dns_name_is_refused(ca: CertificateAuthority) -> None:
    with pytest.raises(Refused, match="may have"):
        ca.sign(csr_for(CART), BILLING)
    with pytest.raises(Refused, match="may have"):
        ca.sign(csr_for(BILLING, CART), BILLING)
    with pytest.raises(Refused, match="DNSName"):
        ca.sign(csr_for(BILLING, dns="billing.example.com"), BILLING)
    with pytest.raises(Refused, match="not a PEM"):
        ca.sign("garbage", BILLING)


def test_validity_is_as_asked_and_capped() -> None:
    key, cert = new_root("cluster.local")
    ca = CertificateAuthority(key, [cert], default_ttl=3600, max_ttl=7200)
    def lifetime(ttl: int) -> datetime.timedelta:
        leaf = x509.load_pem_x509_certificate(ca.sign(csr_for(BILLING), BILLING, ttl)[0].encode())
        return leaf.not_valid_after_utc - leaf.not_valid_before_utc

    assert lifetime(0) == datetime.timedelta(hours=1)
    assert lifetime(4) == datetime.timedelta(seconds=4)
    assert lifetime(10**9) == datetime.timedelta(hours=2)
    short_key, short_root = new_root("cluster.local", ttl=60)  # never past the CA's own expiry
    short = CertificateAuthority(short_key, [short_root])
    leaf = x509.load_pem_x509_certificate(short.sign(csr_for(BILLING), BILLING)[0].encode())
    assert leaf.not_valid_after_utc <= short_root.not_valid_after_utc


def test_an_intermediate_signs_and_the_whole_chain_is_returned(tmp_path: Path) -> None:
    root_key, root = new_root("cluster.local")
    inter_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    inter = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "intermediate")])).issuer_name(root.subject)
        .public_key(inter_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1)).not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(inter_key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False)
        .sign(root_key, hashes.SHA256())
    )  # fmt: skip
    (tmp_path / "ca.pem").write_bytes(inter.public_bytes(serialization.Encoding.PEM) + root.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "ca.key").write_bytes(inter_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    ca = CertificateAuthority.from_files(tmp_path / "ca.pem", tmp_path / "ca.key")
    chain = ca.sign(csr_for(BILLING), BILLING)
    assert len(chain) == 3 and ca.root_pem == root.public_bytes(serialization.Encoding.PEM).decode()
    verify(chain, [root])
    if shutil.which("openssl"):
        (tmp_path / "leaf.pem").write_text(chain[0])
        (tmp_path / "inter.pem").write_text(chain[1])
        (tmp_path / "root.pem").write_text(chain[2])
        out = subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "root.pem"), "-untrusted", str(tmp_path / "inter.pem"), "-purpose", "sslclient",
                              str(tmp_path / "leaf.pem")], capture_output=True, text=True, check=False)  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr


def test_a_mismatched_key_or_a_non_ca_certificate_is_refused(tmp_path: Path) -> None:
    key, cert = new_root("cluster.local")
    other, _ = new_root("cluster.local")
    with pytest.raises(CAError, match="does not match"):
        CertificateAuthority(other, [cert])
    ca = CertificateAuthority(key, [cert])
    leaf = x509.load_pem_x509_certificate(ca.sign(csr_for(BILLING, key=other), BILLING)[0].encode())
    with pytest.raises(CAError, match="not a CA"):
        CertificateAuthority(other, [leaf])


def test_generated_root_is_kept_in_the_directory(tmp_path: Path) -> None:
    d = tmp_path / "ca"
    first = CertificateAuthority.in_directory(d, trust_domain="example.org")
    assert stat.S_IMODE((d / "ca-key.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    key = first.certificate.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    again = CertificateAuthority.in_directory(d, trust_domain="example.org")
    assert again.root_pem == first.root_pem  # the same root after a restart
    (d / "ca-key.pem").unlink()
    with pytest.raises(CAError, match="missing"):
        CertificateAuthority.in_directory(d)


def test_identity_and_duration_parsing() -> None:
    assert Identity.parse(BILLING) == Identity("cluster.local", "billing", "billing")
    assert Identity("td", "ns", "sa").uri == "spiffe://td/ns/ns/sa/sa"
    for bad in ("spiffe://cluster.local/billing", "https://x/ns/a/sa/b", "spiffe://td/ns/a/sa/b/c"):
        with pytest.raises(ValueError):
            Identity.parse(bad)
    assert [parse_duration(t) for t in ("4", "4s", "15m", "24h", "90d")] == [4, 4, 900, 86400, 90 * 86400]
    with pytest.raises(ValueError):
        parse_duration("0s")


# -- the tokens file ----------------------------------------------------------------------------


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@pytest.mark.asyncio
async def test_tokens_file_grants_what_a_token_is_listed_for(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({BILLING: "t-billing", CART: "t-cart"}))
    tokens = TokensFile(path)
    assert await tokens.authenticate(bearer("t-billing"), BILLING) == BILLING
    assert await tokens.authenticate(bearer("t-cart"), None) == CART  # no SAN asked: the one it grants
    with pytest.raises(Refused, match="not valid") as wrong:
        await tokens.authenticate(bearer("t-wrong"), BILLING)
    assert wrong.value.unauthenticated
    with pytest.raises(Refused, match="does not grant") as other:
        await tokens.authenticate(bearer("t-cart"), BILLING)  # a real token, someone else's identity
    assert not other.value.unauthenticated
    with pytest.raises(Refused, match="does not grant"):
        await tokens.authenticate(bearer("t-billing"), "spiffe://cluster.local/ns/x/sa/unknown")  # not in the file
    with pytest.raises(Refused, match="no credentials"):
        await tokens.authenticate({}, BILLING)
    with pytest.raises(Refused, match="Bearer"):
        await tokens.authenticate({"authorization": "Basic abc"}, BILLING)


@pytest.mark.asyncio
async def test_tokens_file_is_read_again_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text(f"{BILLING}: old\n")
    tokens = TokensFile(path)
    assert await tokens.authenticate(bearer("old"), BILLING) == BILLING
    path.write_text(f"{BILLING}: newer-token\n")
    assert await tokens.authenticate(bearer("newer-token"), BILLING) == BILLING
    with pytest.raises(Refused):
        await tokens.authenticate(bearer("old"), BILLING)
    path.write_text("{not yaml: [")  # broken: the last good mapping stays
    assert await tokens.authenticate(bearer("newer-token"), BILLING) == BILLING


@pytest.mark.asyncio
async def test_a_shared_token_must_name_its_identity(tmp_path: Path) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text(f"{BILLING}: shared\n{CART}: shared\n")
    tokens = TokensFile(path)
    assert await tokens.authenticate(bearer("shared"), CART) == CART
    with pytest.raises(Refused, match="several"):
        await tokens.authenticate(bearer("shared"), None)


def test_tokens_file_errors(tmp_path: Path) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text("- a list\n")
    with pytest.raises(ValueError, match="mapping"):
        TokensFile(path)
    path.write_text("billing: t\n")
    with pytest.raises(ValueError, match="SPIFFE"):
        TokensFile(path)


# -- over gRPC, on the ADS port -------------------------------------------------------------------


@pytest.mark.asyncio
async def test_create_certificate_over_grpc_on_the_ads_port(ca: CertificateAuthority, tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({BILLING: "t-billing", CART: "t-cart"}))
    service = CertificateService(ca, TokensFile(path))
    server, port = await start_server(AdsServer(), "127.0.0.1:0", services=[service.handler()])
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary(METHOD, request_serializer=ca_pb2.IstioCertificateRequest.SerializeToString,
                                       response_deserializer=ca_pb2.IstioCertificateResponse.FromString)  # fmt: skip
            reply = await call(ca_pb2.IstioCertificateRequest(csr=csr_for(BILLING), validity_duration=60), metadata=(("authorization", "Bearer t-billing"),))
            leaf = verify(list(reply.cert_chain), [ca.certificate])
            assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == datetime.timedelta(seconds=60)
            with pytest.raises(grpc.aio.AioRpcError) as wrong:
                await call(ca_pb2.IstioCertificateRequest(csr=csr_for(BILLING)), metadata=(("authorization", "Bearer nope"),))
            assert wrong.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                await call(ca_pb2.IstioCertificateRequest(csr=csr_for(BILLING)), metadata=(("authorization", "Bearer t-cart"),))
            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED and "does not grant" in (denied.value.details() or "")
            with pytest.raises(grpc.aio.AioRpcError) as empty:
                await call(ca_pb2.IstioCertificateRequest(), metadata=(("authorization", "Bearer t-cart"),))
            assert empty.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert service.issued == {BILLING: 1}
        assert service.refused == {"unauthenticated": 1, "denied": 2}
    finally:
        await server.stop(0)


def test_proto_names_and_field_numbers_are_istios() -> None:
    req = ca_pb2.IstioCertificateRequest.DESCRIPTOR
    assert req.full_name == "istio.v1.auth.IstioCertificateRequest"
    assert {f.name: f.number for f in req.fields} == {"csr": 1, "validity_duration": 3, "metadata": 4}
    assert req.fields_by_name["metadata"].message_type.full_name == "google.protobuf.Struct"
    resp = ca_pb2.IstioCertificateResponse.DESCRIPTOR
    assert {f.name: f.number for f in resp.fields} == {"cert_chain": 1} and resp.fields[0].is_repeated
    service = ca_pb2.DESCRIPTOR.services_by_name["IstioCertificateService"]
    assert service.full_name == "istio.v1.auth.IstioCertificateService"
    method = service.methods_by_name["CreateCertificate"]
    assert (method.input_type.name, method.output_type.name) == ("IstioCertificateRequest", "IstioCertificateResponse")
    assert f"/{service.full_name}/{method.name}" == METHOD


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--ca-dir", "d"], "--ca-dir goes with --ca"),
        (["--ca"], "--ca needs --ca-cert and --ca-key, or --ca-dir"),
        (["--ca", "--ca-cert", "c.pem", "--ca-tokens", "t"], "--ca-cert and --ca-key go together"),
        (["--ca", "--ca-dir", "d"], "--ca needs --ca-tokens FILE"),
        (["--ca", "--ca-dir", "d", "--ca-authn", "kubernetes"], "--ca-authn kubernetes needs --kubernetes"),
        (["--ca", "--ca-dir", "d", "--ca-tokens", "t", "--ca-workload-ttl", "soon"], "expected a duration"),
    ],
)
def test_serve_ca_flags_are_checked(flags: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    from aeraki_ctl.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--config-dir", ".", *flags])
    assert exit_.value.code == 2 and message in capsys.readouterr().err

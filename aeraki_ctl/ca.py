"""The workload CA of ``aeraki-ctl serve --ca``: Istio's certificate service, on the xDS port.

The CA's key and certificate come from ``--ca-cert/--ca-key`` (the certificate file may hold the
CA's chain after it: an intermediate CA signs, and every certificate of the file is returned after
the leaf) or are generated once (EC P-256, 10 years) and kept in ``--ca-dir`` (``ca-cert.pem``,
``ca-key.pem`` with mode 0600), so every restart signs with the same root.

``CreateCertificate`` (``istio.v1.auth.IstioCertificateService``, the service istio-agent calls)
takes a PEM CSR; the caller is authenticated by an :class:`~aeraki_ctl.authn.Authenticator`
from its bearer token. The certificate issued carries exactly the identity the authenticator
grants: a CSR that names another identity (or any DNS, IP or e-mail SAN) is refused, one that
names none gets the granted one. The leaf has the CSR's public key, an empty subject and the
SPIFFE URI SAN (critical), key usage digitalSignature + keyEncipherment, extended key usage
serverAuth + clientAuth, and the validity asked for (``validity_duration``; 0: the default,
24 h), capped by ``max_ttl`` and by the CA's own expiry. The response's ``cert_chain`` is the
leaf, then the CA's chain, the root last (as Istio's).
"""

from __future__ import annotations

import datetime
import logging
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from aeraki_ctl.authn import Authenticator, Identity, Refused
from metaprotocol.io.files import write_atomic
from metaprotocol_api.istio.security.v1alpha1 import ca_pb2

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

log = logging.getLogger(__name__)
SERVICE = "istio.v1.auth.IstioCertificateService"
METHOD = f"/{SERVICE}/CreateCertificate"
DEFAULT_TTL = 24 * 3600  # Istio's DEFAULT_WORKLOAD_CERT_TTL
MAX_TTL = 90 * 24 * 3600  # Istio's MAX_WORKLOAD_CERT_TTL
ROOT_TTL = 10 * 365 * 24 * 3600
E = TypeVar("E", bound=x509.ExtensionType)
CERT_FILE = "ca-cert.pem"
KEY_FILE = "ca-key.pem"


class CAError(Exception):
    """The CA cannot be loaded or created."""


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


class CertificateAuthority:
    """Signs workload CSRs with one CA key.

    ``chain`` is the CA's certificate first, then any intermediates, the root last (a
    self-signed root alone: a chain of one)."""

    def __init__(self, key: CertificateIssuerPrivateKeyTypes, chain: Sequence[x509.Certificate], trust_domain: str = "cluster.local",
                 default_ttl: int = DEFAULT_TTL, max_ttl: int = MAX_TTL) -> None:  # fmt: skip
        if not chain:
            raise CAError("no CA certificate")
        if chain[0].public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) != key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ):
            raise CAError("the CA key does not match the CA certificate")
        constraints = _extension(chain[0], x509.BasicConstraints)
        if constraints is None or not constraints.ca:
            raise CAError("the CA certificate is not a CA (basicConstraints CA:TRUE)")
        self.key = key
        self.chain = list(chain)
        self.trust_domain = trust_domain
        self.default_ttl = default_ttl
        self.max_ttl = max_ttl
        self.issued = 0

    @property
    def certificate(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def root_pem(self) -> str:
        """The trust anchor proxies verify peers with (the last certificate of the chain)."""
        return _pem(self.chain[-1])

    @property
    def chain_pem(self) -> list[str]:
        return [_pem(c) for c in self.chain]

    # -- loading --------------------------------------------------------------------------------

    @classmethod
    def from_files(cls, cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str], **kwargs: object) -> CertificateAuthority:
        """The CA of ``--ca-cert`` (PEM, the CA's certificate then its chain) and ``--ca-key``."""
        try:
            chain = x509.load_pem_x509_certificates(Path(cert_path).read_bytes())
            key = serialization.load_pem_private_key(Path(key_path).read_bytes(), password=None)
        except (OSError, ValueError) as exc:
            raise CAError(f"cannot load the CA from {cert_path} and {key_path}: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise CAError(f"{key_path}: the CA key must be EC or RSA")
        return cls(key, chain, **kwargs)  # type: ignore[arg-type]

    @classmethod
    def in_directory(cls, directory: str | os.PathLike[str], **kwargs: object) -> CertificateAuthority:
        """The CA kept in ``directory``; a new self-signed root (EC P-256) is made and written
        there the first time (the key with mode 0600, the directory 0700)."""
        d = Path(directory)
        cert_path, key_path = d / CERT_FILE, d / KEY_FILE
        if cert_path.exists() and key_path.exists():
            return cls.from_files(cert_path, key_path, **kwargs)
        if cert_path.exists() or key_path.exists():
            raise CAError(f"{d}: one of {CERT_FILE} and {KEY_FILE} is missing; remove the other to make a new CA")
        trust_domain = str(kwargs.get("trust_domain", "cluster.local"))
        key, cert = new_root(trust_domain)
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        key_bytes = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        _write_private(key_path, key_bytes)
        write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        log.info("made a new root CA for %s in %s", trust_domain, d)
        return cls(key, [cert], **kwargs)  # type: ignore[arg-type]

    # -- signing --------------------------------------------------------------------------------

    def validity(self, requested: int) -> int:
        """Seconds a certificate asked for ``requested`` seconds (0: the default) is valid."""
        ttl = requested if requested > 0 else self.default_ttl
        return min(ttl, self.max_ttl)

    def sign(self, csr_pem: str | bytes, identity: str, ttl: int = 0) -> list[str]:
        """A certificate for ``identity`` (the granted SPIFFE URI) with the CSR's key, then the
        CA chain (PEM strings). Refused: the CSR is not valid or names anything else."""
        Identity.parse(identity)
        try:
            csr = x509.load_pem_x509_csr(csr_pem.encode() if isinstance(csr_pem, str) else csr_pem)
        except ValueError as exc:
            raise Refused(f"the CSR is not a PEM certificate request: {exc}", unauthenticated=False) from exc
        if not csr.is_signature_valid:
            raise Refused("the CSR's signature does not verify", unauthenticated=False)
        named = csr_identities(csr)
        if named and named != [identity]:
            raise Refused(f"the CSR asks for {', '.join(named)}; the caller may have {identity} only", unauthenticated=False)
        public_key = csr.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
            raise Refused("the CSR's key must be EC or RSA", unauthenticated=False)
        now = _now()
        not_after = min(now + datetime.timedelta(seconds=self.validity(ttl)), *(c.not_valid_after_utc for c in self.chain))
        if not_after <= now:
            raise Refused("the CA has expired", unauthenticated=False)
        issuer = self.certificate
        ski = _extension(issuer, x509.SubjectKeyIdentifier)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(issuer.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(digital_signature=True, key_encipherment=True, content_commitment=False, data_encipherment=False,
                              key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False),
                critical=True,
            )  # fmt: skip
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity)]), critical=True)  # empty subject: SAN critical (RFC 5280)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        )
        if ski is not None:
            builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        else:
            builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
        leaf = builder.sign(self.key, _digest(self.key))
        self.issued += 1
        return [_pem(leaf), *self.chain_pem]


def csr_identities(csr: x509.CertificateSigningRequest) -> list[str]:
    """Every name a CSR's SAN asks for (URIs as they are, others as ``DNS:``/``IP:``/... text)."""
    san = _extension(csr, x509.SubjectAlternativeName)
    if san is None:
        return []
    out: list[str] = []
    for name in san:
        if isinstance(name, x509.UniformResourceIdentifier):
            out.append(name.value)
        else:
            out.append(f"{type(name).__name__}:{name.value}")
    return out


def new_root(trust_domain: str, ttl: int = ROOT_TTL) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed root CA (EC P-256) for ``trust_domain``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain), x509.NameAttribute(NameOID.COMMON_NAME, "aeraki-ctl root CA")])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # peers whose clocks are a little behind
        .not_valid_after(now + datetime.timedelta(seconds=ttl))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_encipherment=False, content_commitment=False, data_encipherment=False,
                          key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False),
            critical=True,
        )  # fmt: skip
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _digest(key: object) -> hashes.SHA256 | hashes.SHA384:
    return hashes.SHA384() if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size > 256 else hashes.SHA256()  # noqa: PLR2004


def _extension(obj: x509.Certificate | x509.CertificateSigningRequest, kind: type[E]) -> E | None:
    try:
        return obj.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _write_private(path: Path, data: bytes) -> None:
    write_atomic(path, data, 0o600)


# -- the gRPC service -------------------------------------------------------------------------------


class CertificateService:
    """``istio.v1.auth.IstioCertificateService`` on a grpc.aio server (:meth:`handler`)."""

    def __init__(self, ca: CertificateAuthority, authenticator: Authenticator) -> None:
        self.ca = ca
        self.authenticator = authenticator
        self.issued: Counter[str] = Counter()  # per identity
        self.refused: Counter[str] = Counter()  # per reason class: unauthenticated, denied, invalid

    def handler(self) -> grpc.GenericRpcHandler:
        """The handler to add to a grpc.aio server (``start_server(..., services=[...])``)."""
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "CreateCertificate": grpc.unary_unary_rpc_method_handler(
                    self.CreateCertificate,
                    request_deserializer=ca_pb2.IstioCertificateRequest.FromString,
                    response_serializer=ca_pb2.IstioCertificateResponse.SerializeToString,
                )
            },
        )

    async def create(self, request: ca_pb2.IstioCertificateRequest, metadata: dict[str, str], peer: str = "") -> ca_pb2.IstioCertificateResponse:
        """Authenticate, check, sign; raises Refused."""
        requested = None
        if request.csr:
            try:
                named = csr_identities(x509.load_pem_x509_csr(request.csr.encode()))
            except ValueError as exc:
                raise Refused(f"the CSR is not a PEM certificate request: {exc}", unauthenticated=False) from exc
            uris = [n for n in named if n.startswith("spiffe://")]
            requested = uris[0] if len(uris) == 1 else None
        else:
            raise Refused("no CSR in the request", unauthenticated=False)
        identity = await self.authenticator.authenticate(metadata, requested)
        chain = self.ca.sign(request.csr, identity, int(request.validity_duration))
        self.issued[identity] += 1
        log.info("issued a certificate for %s to %s (%s)", identity, peer or "?", _ttl_text(self.ca.validity(int(request.validity_duration))))
        return ca_pb2.IstioCertificateResponse(cert_chain=chain)

    async def CreateCertificate(  # noqa: N802 - gRPC method name
        self, request: ca_pb2.IstioCertificateRequest, context: grpc.aio.ServicerContext
    ) -> ca_pb2.IstioCertificateResponse:
        metadata = {str(k).lower(): v if isinstance(v, str) else v.decode(errors="replace") for k, v in (context.invocation_metadata() or ())}
        peer = str(context.peer())
        try:
            return await self.create(request, metadata, peer)
        except Refused as exc:
            kind = "unauthenticated" if exc.unauthenticated else "denied"
            self.refused[kind] += 1
            log.warning("refused a certificate to %s: %s", peer, exc.reason)
            code = grpc.StatusCode.UNAUTHENTICATED if exc.unauthenticated else grpc.StatusCode.PERMISSION_DENIED
            await context.abort(code, exc.reason)
            raise  # abort raises; this line is never reached

    def metrics(self) -> dict[str, object]:
        """What aeraki-ctl's ``/status`` shows under ``ca``."""
        return {
            "trust_domain": self.ca.trust_domain,
            "root_not_after": self.ca.chain[-1].not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "issued": dict(sorted(self.issued.items())),
            "refused": dict(sorted(self.refused.items())),
        }


def _ttl_text(seconds: int) -> str:
    return f"valid {seconds // 3600} h" if seconds >= 3600 else f"valid {seconds} s"  # noqa: PLR2004


def parse_duration(text: str) -> int:
    """Seconds of ``90``, ``90s``, ``15m``, ``24h`` or ``90d``."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    t = text.strip().lower()
    mult = units.get(t[-1:], 0)
    number = t[:-1] if mult else t
    if not number.isdigit() or int(number) < 1:
        raise ValueError(f"expected a duration such as 90s, 15m, 24h or 90d, got {text!r}")
    return int(number) * (mult or 1)

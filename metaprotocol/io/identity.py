"""The proxy's workload certificate from aeraki-ctl's CA (``metaprotocol proxy --identity``).

The agent makes a key (EC P-256) and a CSR naming the identity (SPIFFE URI SAN), asks the CA for a
certificate (``istio.v1.auth.IstioCertificateService/CreateCertificate`` on the xDS address, with
``authorization: Bearer <token>`` from ``--identity-token-file``, read again at every request so a
rotated token is used) and writes, in ``--identity-dir``:

- ``key.pem``: the private key (mode 0600),
- ``cert.pem``: the certificate, then any intermediate CA certificates,
- ``ca.pem``: the root CA (the trust anchor to verify peers with),

each atomically (written to a temporary file in the same directory, then renamed over the old
one): a reader sees the old file or the new one, never half of one. The key is written first and
the certificate right after, so a reader that loads the pair when either changes may, for an
instant, see a new key with the old certificate; TLS contexts built from these files are reloaded
when they change and keep the previous context when a pair does not match, so the next change
(the certificate's) completes the switch. Established connections keep the context they were made
with: rotating never drops a connection.

A new key and certificate are requested at half of the certificate's life (a 24 h certificate is
renewed after 12 h). A failed request is logged with the CA's reason and counted, and retried with
exponential back-off (1 s doubling to 60 s); the files in place stay untouched until a new
certificate arrives, so the old one serves until it expires.

The agent runs in a thread of its own with a blocking gRPC channel: it needs nothing from the
proxy's event loop, and one agent serves every worker process (``--concurrency``), which read the
same files.
"""

from __future__ import annotations

import datetime
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf import struct_pb2

from metaprotocol.io.files import write_atomic
from metaprotocol_api.istio.security.v1alpha1 import ca_pb2

log = logging.getLogger(__name__)
METHOD = "/istio.v1.auth.IstioCertificateService/CreateCertificate"
CERT_FILE, KEY_FILE, CA_FILE = "cert.pem", "key.pem", "ca.pem"
MIN_BACKOFF = 1.0
MAX_BACKOFF = 60.0


class IdentityError(Exception):
    """A certificate could not be had (the CA refused, could not be reached, or answered wrong)."""


class IdentityAgent:
    """Keeps ``directory``'s ``cert.pem``, ``key.pem`` and ``ca.pem`` current for ``identity``."""

    def __init__(self, address: str, identity: str, directory: str | os.PathLike[str], *, token_file: str | None = None, ttl: int = 0,
                 credentials: Callable[[], grpc.ChannelCredentials] | None = None, channel_options: Sequence[tuple[str, str]] = (),
                 metadata: Mapping[str, str] | None = None, timeout: float = 10.0,
                 min_backoff: float = MIN_BACKOFF, max_backoff: float = MAX_BACKOFF, clock: Callable[[], float] = time.time) -> None:  # fmt: skip
        self.address = address
        self.identity = identity
        self.directory = Path(directory)
        self.token_file = token_file
        self.ttl = ttl  # seconds asked for; 0: the CA's default
        self.credentials = credentials  # xDS over TLS: makes the ADS channel's credentials (files read at every call)
        self.channel_options = list(channel_options)  # e.g. grpc.ssl_target_name_override
        self.metadata = dict(metadata or {})  # IstioCertificateRequest.metadata (WorkloadName, ...)
        self.timeout = timeout
        self.min_backoff, self.max_backoff = min_backoff, max_backoff
        self.clock = clock
        self.issued = 0  # certificates received and written
        self.failures = 0  # requests that got none
        self.last_error = ""
        self.not_before = self.not_after = 0.0  # of the certificate in place (epoch seconds)
        self.ready = threading.Event()  # set once a certificate was written
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- one request ------------------------------------------------------------------------------

    def _token(self) -> str | None:
        if not self.token_file:
            return None
        try:
            return Path(self.token_file).read_text().strip()
        except OSError as exc:
            raise IdentityError(f"cannot read the token file {self.token_file}: {exc.strerror or exc}") from exc

    def _channel(self) -> grpc.Channel:
        """A channel for one request (one every half-life: the TLS files are read anew each time)."""
        if self.credentials is not None:
            return grpc.secure_channel(self.address, self.credentials(), options=self.channel_options)
        return grpc.insecure_channel(self.address, options=self.channel_options)

    def request(self) -> tuple[ec.EllipticCurvePrivateKey, list[x509.Certificate]]:
        """A new key and the chain the CA signed for it (leaf first); raises IdentityError."""
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([]))
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(self.identity)]), critical=True)
            .sign(key, hashes.SHA256())
        )
        req = ca_pb2.IstioCertificateRequest(csr=csr.public_bytes(serialization.Encoding.PEM).decode(), validity_duration=self.ttl)
        if self.metadata:
            req.metadata.CopyFrom(_struct(self.metadata))
        token = self._token()
        call_metadata = (("authorization", f"Bearer {token}"),) if token else ()
        try:
            with self._channel() as channel:
                call = channel.unary_unary(METHOD, request_serializer=ca_pb2.IstioCertificateRequest.SerializeToString,
                                           response_deserializer=ca_pb2.IstioCertificateResponse.FromString)  # fmt: skip
                reply: ca_pb2.IstioCertificateResponse = call(req, metadata=call_metadata, timeout=self.timeout)
        except OSError as exc:  # the TLS files cannot be read
            raise IdentityError(f"cannot read the xDS TLS files: {exc}") from exc
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
            raise IdentityError(f"{code.name if code is not None else 'error'}: {details}") from exc
        try:
            chain = [x509.load_pem_x509_certificate(p.encode()) for p in reply.cert_chain]
        except ValueError as exc:
            raise IdentityError(f"the CA answered a chain that does not parse: {exc}") from exc
        if not chain:
            raise IdentityError("the CA answered no certificate")
        leaf = chain[0]
        mine = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        if leaf.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) != mine:
            raise IdentityError("the certificate the CA answered is not for our key")
        uris = _uris(leaf)
        if uris != [self.identity]:
            raise IdentityError(f"the certificate the CA answered is for {', '.join(uris) or 'no identity'}, not {self.identity}")
        return key, chain

    def renew(self) -> None:
        """Request a certificate and write the files; raises IdentityError (the files stay)."""
        key, chain = self.request()
        self.directory.mkdir(parents=True, exist_ok=True)
        pem = serialization.Encoding.PEM
        leaf_and_intermediates = chain[:-1] if len(chain) > 1 else chain
        write_atomic(self.directory / KEY_FILE, key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()), 0o600)
        write_atomic(self.directory / CERT_FILE, b"".join(c.public_bytes(pem) for c in leaf_and_intermediates), 0o644)
        write_atomic(self.directory / CA_FILE, chain[-1].public_bytes(pem), 0o644)
        leaf = chain[0]
        self.not_before, self.not_after = leaf.not_valid_before_utc.timestamp(), leaf.not_valid_after_utc.timestamp()
        self.issued += 1
        self.last_error = ""
        self.ready.set()
        log.info("certificate for %s written to %s, valid until %s (renewed at half-life, %s)", self.identity, self.directory,
                 _iso(self.not_after), _iso(self.renew_at()))  # fmt: skip

    def renew_at(self) -> float:
        """When the certificate in place is renewed: half-way through its life."""
        return self.not_before + (self.not_after - self.not_before) / 2

    # -- the loop ---------------------------------------------------------------------------------

    def run(self) -> None:
        """Renew until :meth:`stop`: at half-life, and with back-off after a failure."""
        backoff = self.min_backoff
        while not self._stop.is_set():
            try:
                self.renew()
            except IdentityError as exc:
                self.failures += 1
                self.last_error = str(exc)
                wait = backoff
                backoff = min(backoff * 2, self.max_backoff)
                left = f"the certificate in place is valid until {_iso(self.not_after)}" if self.not_after > self.clock() else "no valid certificate in place"
                log.warning("no certificate for %s from %s: %s (failure %d; %s; retrying in %.0f s)", self.identity, self.address, exc,
                            self.failures, left, wait)  # fmt: skip
            except Exception:  # noqa: BLE001 - the agent must go on (a full disk, a bug): logged, retried
                self.failures += 1
                self.last_error = "unexpected error (see the log)"
                wait = backoff
                backoff = min(backoff * 2, self.max_backoff)
                log.exception("no certificate for %s: unexpected error (failure %d; retrying in %.0f s)", self.identity, self.failures, wait)
            else:
                backoff = self.min_backoff
                wait = max(self.renew_at() - self.clock(), 0.0)
            self._stop.wait(wait)

    def start(self) -> threading.Thread:
        """Run in a daemon thread."""
        self._thread = threading.Thread(target=self.run, name="identity-agent", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def prometheus(self) -> str:
        """The agent's counters for the proxy's ``/stats`` (it runs in its own thread: plain reads)."""
        label = f'identity="{self.identity}"'
        return (
            "# HELP metaprotocol_identity_certificates_issued_total Workload certificates received from the CA and written.\n"
            "# TYPE metaprotocol_identity_certificates_issued_total counter\n"
            f"metaprotocol_identity_certificates_issued_total{{{label}}} {self.issued}\n"
            "# HELP metaprotocol_identity_failures_total Certificate requests that got none (each retried with back-off).\n"
            "# TYPE metaprotocol_identity_failures_total counter\n"
            f"metaprotocol_identity_failures_total{{{label}}} {self.failures}\n"
            "# HELP metaprotocol_identity_certificate_expiry_seconds When the certificate in place expires (Unix time; 0: none yet).\n"
            "# TYPE metaprotocol_identity_certificate_expiry_seconds gauge\n"
            f"metaprotocol_identity_certificate_expiry_seconds{{{label}}} {self.not_after:.0f}\n"
        )

    def stats(self) -> dict[str, object]:
        """Counters and state (for logs, tests and an admin page)."""
        return {"identity": self.identity, "issued": self.issued, "failures": self.failures, "last_error": self.last_error,
                "not_after": _iso(self.not_after) if self.not_after else None}  # fmt: skip


def _uris(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return list(san.get_values_for_type(x509.UniformResourceIdentifier))


def _struct(values: Mapping[str, str]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(dict(values))
    return s


def _iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

"""SDS over the ADS stream: Envoy's ``Secret`` resources from the workload CA (``serve --ca``).

Stock Envoy cannot make a key and a CSR, so for it the control plane does: on an ADS stream (state
of the world), requests of type ``envoy.extensions.transport_sockets.tls.v3.Secret`` are answered
here, and every other type by the ADS server as before. Two names are served, as Istio names them:

- ``ROOTCA``: a ``validation_context`` with the CA's root as ``trusted_ca`` (public: to anyone);
- ``default``: a ``tls_certificate`` (a new EC P-256 key and its certificate chain) for the identity
  the stream's credentials grant. The credentials are the stream's gRPC metadata
  ``authorization: Bearer <token>`` (Envoy: ``grpc_services[].initial_metadata``), checked by the
  CA's authenticator as for ``CreateCertificate``; the certificate is renewed at half-life and
  pushed as a new version. A stream the authenticator refuses gets no ``default`` (logged).

The private key crosses the ADS connection: serve xDS over TLS when ``default`` is used beyond
the loopback. Other names are not served (left out of the response). Both ADS variants carry
secrets: state of the world (Envoy's default) and delta (``api_type: DELTA_GRPC``: each secret
sent when its version changes, an unsubscribed one removed).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from envoy.config.core.v3 import base_pb2 as core_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2

from aeraki_ctl.authn import Refused
from aeraki_ctl.ca import CertificateService
from aeraki_ctl.xds.server import AdsServer
from aeraki_ctl.xds.snapshot import Snapshot

log = logging.getLogger(__name__)
SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
ROOTCA = "ROOTCA"
DEFAULT = "default"
REFUSED_RETRY = 30.0  # seconds before a refused stream's credentials are checked again (a tokens file may change)
Req = TypeVar("Req", discovery_pb2.DiscoveryRequest, discovery_pb2.DeltaDiscoveryRequest)
Resp = TypeVar("Resp", discovery_pb2.DiscoveryResponse, discovery_pb2.DeltaDiscoveryResponse)


class SecretSource:
    """Makes the secrets from the CA service (its CA and authenticator)."""

    def __init__(self, service: CertificateService, ttl: int = 0) -> None:
        self.service = service
        self.ttl = ttl  # 0: the CA's default

    def root(self) -> secret_pb2.Secret:
        trusted = core_pb2.DataSource(inline_bytes=self.service.ca.root_pem.encode())
        return secret_pb2.Secret(name=ROOTCA, validation_context=common_pb2.CertificateValidationContext(trusted_ca=trusted))

    async def identity(self, metadata: dict[str, str]) -> tuple[secret_pb2.Secret, float]:
        """``default`` for the identity the credentials grant, and when to renew it; Refused."""
        identity = await self.service.authenticator.authenticate(metadata, None)
        key = ec.generate_private_key(ec.SECP256R1())
        csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
        chain = self.service.ca.sign(csr.public_bytes(serialization.Encoding.PEM), identity, self.ttl)
        self.service.issued[identity] += 1
        leaf = x509.load_pem_x509_certificate(chain[0].encode())
        start, end = leaf.not_valid_before_utc.timestamp(), leaf.not_valid_after_utc.timestamp()
        pem = serialization.Encoding.PEM
        key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        tls = common_pb2.TlsCertificate(certificate_chain=core_pb2.DataSource(inline_bytes="".join(chain[:-1] if len(chain) > 1 else chain).encode()),
                                        private_key=core_pb2.DataSource(inline_bytes=key_pem))  # fmt: skip
        log.info("SDS: issued %s (valid until %s)", identity, leaf.not_valid_after_utc.isoformat())
        return secret_pb2.Secret(name=DEFAULT, tls_certificate=tls), start + (end - start) / 2


@dataclass
class _SecretWatch:
    names: set[str] = field(default_factory=set)
    nonce: str = ""
    sent_version: str = ""
    node_id: str = ""
    identity: secret_pb2.Secret | None = None
    renew_at: float = 0.0  # wall clock
    refused: str = ""
    nacks: int = 0
    delta: bool = False
    sent: dict[str, str] = field(default_factory=dict)  # delta: secret name -> version sent


class SdsAdsServer(AdsServer):
    """The ADS server, with Secret requests answered from :class:`SecretSource`."""

    def __init__(self, secrets: SecretSource, snapshot: Snapshot | None = None) -> None:
        super().__init__(snapshot)
        self.secrets = secrets
        self.secret_streams: dict[int, _SecretWatch] = {}
        self._secret_ids = 0

    async def StreamAggregatedResources(  # noqa: N802 - gRPC method name
        self, request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[discovery_pb2.DiscoveryResponse]:
        """An ADS stream (state of the world) with its Secret requests answered here."""
        async for response in self._with_secrets(request_iterator, context, False, AdsServer.StreamAggregatedResources):
            yield response

    async def DeltaAggregatedResources(  # noqa: N802 - gRPC method name
        self, request_iterator: AsyncIterator[discovery_pb2.DeltaDiscoveryRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[discovery_pb2.DeltaDiscoveryResponse]:
        """An ADS stream (delta) with its Secret requests answered here."""
        async for response in self._with_secrets(request_iterator, context, True, AdsServer.DeltaAggregatedResources):
            yield response

    async def _with_secrets(
        self,
        request_iterator: AsyncIterator[Req],
        context: grpc.aio.ServicerContext,
        delta: bool,
        serve_others: Callable[[AdsServer, AsyncIterator[Req], grpc.aio.ServicerContext], AsyncIterator[Resp]],
    ) -> AsyncIterator[Resp]:
        metadata = _metadata(context)
        watch = _SecretWatch(delta=delta)
        self._secret_ids += 1
        sid = self._secret_ids
        self.secret_streams[sid] = watch
        out: asyncio.Queue[Resp | None] = asyncio.Queue()
        wake = asyncio.Event()
        node: list[core_pb2.Node] = []

        async def others() -> AsyncIterator[Req]:
            async for req in request_iterator:
                if req.HasField("node") and not node:
                    node.append(req.node)
                    watch.node_id = req.node.id
                if req.type_url == SECRET_TYPE:
                    self._on_secret_request(watch, req)
                    wake.set()
                    continue
                if node and not req.HasField("node"):
                    req.node.CopyFrom(node[0])  # the ADS server reads the node from the first request it sees
                yield req

        async def pump() -> None:
            try:
                async for response in serve_others(self, others(), context):
                    await out.put(response)
            finally:
                await out.put(None)

        async def secrets() -> None:
            while True:
                timeout = None
                if DEFAULT in watch.names:  # renew at half-life; after a refusal, ask again now and then
                    timeout = max(watch.renew_at - time.time(), 0.0) if watch.identity is not None else (REFUSED_RETRY if watch.refused else None)
                try:
                    await asyncio.wait_for(wake.wait(), timeout)
                except TimeoutError:
                    watch.identity = None  # half-life: a new key and certificate
                wake.clear()
                response = await self._secret_response(watch, metadata)
                if response is not None:
                    await out.put(response)  # the stream's own kind (watch.delta)

        tasks = [asyncio.ensure_future(pump()), asyncio.ensure_future(secrets())]
        try:
            while (response := await out.get()) is not None:
                yield response
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.secret_streams.pop(sid, None)

    def _on_secret_request(self, watch: _SecretWatch, req: discovery_pb2.DiscoveryRequest | discovery_pb2.DeltaDiscoveryRequest) -> None:
        if req.response_nonce and req.response_nonce != watch.nonce:
            if not watch.delta:
                return  # stale (a delta request may also change subscriptions: read on)
        elif req.response_nonce and req.HasField("error_detail"):
            watch.nacks += 1
            log.warning("SDS NACK from %s: %s", watch.node_id, req.error_detail.message)
        if isinstance(req, discovery_pb2.DeltaDiscoveryRequest):
            if not watch.sent and req.initial_resource_versions:
                watch.sent = dict(req.initial_resource_versions)
            watch.names |= set(req.resource_names_subscribe)
            watch.names -= set(req.resource_names_unsubscribe)
            return
        names = set(req.resource_names)
        if names != watch.names:
            watch.names = names
            watch.sent_version = ""  # a new subscription gets a response

    async def _secret_response(self, watch: _SecretWatch, metadata: dict[str, str]) -> discovery_pb2.DiscoveryResponse | discovery_pb2.DeltaDiscoveryResponse | None:
        chosen: list[secret_pb2.Secret] = []
        if ROOTCA in watch.names:
            chosen.append(self.secrets.root())
        if DEFAULT in watch.names:
            if watch.identity is None:
                try:
                    watch.identity, watch.renew_at = await self.secrets.identity(metadata)
                    watch.refused = ""
                except Refused as exc:
                    if exc.reason != watch.refused:
                        log.warning("SDS: no %r secret for %s: %s", DEFAULT, watch.node_id or "?", exc.reason)
                    self.secrets.service.refused["unauthenticated" if exc.unauthenticated else "denied"] += 1
                    watch.refused = exc.reason
            if watch.identity is not None:
                chosen.append(watch.identity)
        packed = []
        for s in chosen:
            a = any_pb2.Any()
            a.Pack(s, deterministic=True)
            packed.append(a)
        if watch.delta:
            return _delta_response(watch, dict(zip((s.name for s in chosen), packed, strict=True)))
        version = hashlib.sha256(b"".join(a.value for a in packed) + ",".join(sorted(watch.names)).encode()).hexdigest()[:16]
        if version == watch.sent_version:
            return None
        watch.sent_version = version
        watch.nonce = f"sds-{time.monotonic_ns()}"
        return discovery_pb2.DiscoveryResponse(version_info=version, resources=packed, type_url=SECRET_TYPE, nonce=watch.nonce)


def _delta_response(watch: _SecretWatch, packed: dict[str, any_pb2.Any]) -> discovery_pb2.DeltaDiscoveryResponse | None:
    """The secrets whose version changed since they were sent, and the ones no longer served."""
    changed = []
    for name, a in sorted(packed.items()):
        version = hashlib.sha256(a.value).hexdigest()[:16]
        if watch.sent.get(name) != version:
            changed.append(discovery_pb2.Resource(name=name, version=version, resource=a))
            watch.sent[name] = version
    removed = sorted(n for n in watch.sent if n not in packed)
    for n in removed:
        del watch.sent[n]
    if not changed and not removed:
        return None
    watch.nonce = f"sds-{time.monotonic_ns()}"
    watch.sent_version = hashlib.sha256(",".join(f"{n}={v}" for n, v in sorted(watch.sent.items())).encode()).hexdigest()[:16]
    return discovery_pb2.DeltaDiscoveryResponse(system_version_info=watch.sent_version, resources=changed, type_url=SECRET_TYPE,
                                                removed_resources=removed, nonce=watch.nonce)  # fmt: skip


def _metadata(context: grpc.aio.ServicerContext) -> dict[str, str]:
    try:
        items = context.invocation_metadata() or ()
    except Exception:  # noqa: BLE001 - a test double may have none
        return {}
    return {str(k).lower(): v if isinstance(v, str) else v.decode(errors="replace") for k, v in items}

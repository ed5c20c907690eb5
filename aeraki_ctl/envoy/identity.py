"""Mesh TLS for stock Envoy: the workload identity by SDS, and TLS-or-plaintext listeners.

Our proxy reads its workload certificate from files that ``metaprotocol proxy --identity`` keeps
fresh (``Options.identity_dir``: ``cert.pem``, ``key.pem``, ``ca.pem``). Stock Envoy cannot make a
key and ask a CA, so where a TLS context is that identity (PeerAuthentication listeners,
DestinationRule ``ISTIO_MUTUAL`` clusters) Envoy is given Istio's SDS references instead:
``default`` (its certificate and key) and ``ROOTCA`` (the mesh root), both over ADS, which
``aeraki-ctl serve --ca`` answers (``aeraki_ctl.xds.sds``); SAN matchers stay, in a combined
validation context. Other TLS (files a user named) is left as written.

(A listener that takes TLS or plaintext has Istio's shape already, from ``convert.listener_shell``.)
"""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from google.protobuf.message import Message

from aeraki_ctl.envoy.common import ads, typed

CERTIFICATE_SECRET = "default"  # Istio's names, served by aeraki_ctl.xds.sds
ROOT_SECRET = "ROOTCA"


def _is_identity(common: common_pb2.CommonTlsContext, identity_dir: str) -> bool:
    """Whether a context is the workload identity whole: its certificate, key and mesh root (a
    context that takes the certificate with another CA is a user's, left as written)."""
    base = identity_dir.rstrip("/")
    if len(common.tls_certificates) != 1:
        return False
    cert = common.tls_certificates[0]
    trusted = common.validation_context.trusted_ca.filename if common.HasField("validation_context") else f"{base}/ca.pem"
    return cert.certificate_chain.filename == f"{base}/cert.pem" and cert.private_key.filename == f"{base}/key.pem" and trusted == f"{base}/ca.pem"


def by_sds(socket: base_pb2.TransportSocket, identity_dir: str) -> base_pb2.TransportSocket:
    """``socket`` with the workload identity's files replaced by SDS references (unchanged when
    its certificate is not the workload identity's)."""
    for kind in (tls_pb2.DownstreamTlsContext, tls_pb2.UpstreamTlsContext):
        ctx: Message = kind()
        if socket.typed_config.Is(ctx.DESCRIPTOR):
            socket.typed_config.Unpack(ctx)
            break
    else:
        return socket
    common: common_pb2.CommonTlsContext = ctx.common_tls_context
    if not _is_identity(common, identity_dir):
        return socket
    common.ClearField("tls_certificates")
    common.tls_certificate_sds_secret_configs.add(name=CERTIFICATE_SECRET, sds_config=ads())
    if common.HasField("validation_context"):
        checks = common_pb2.CertificateValidationContext()
        checks.CopyFrom(common.validation_context)
        checks.ClearField("trusted_ca")
        common.ClearField("validation_context")
        combined = common.combined_validation_context
        combined.default_validation_context.CopyFrom(checks)
        combined.validation_context_sds_secret_config.CopyFrom(secret_pb2.SdsSecretConfig(name=ROOT_SECRET, sds_config=ads()))
    return base_pb2.TransportSocket(name=socket.name, typed_config=typed(ctx))


def finish_listener(msg: listener_pb2.Listener, identity_dir: str) -> None:
    """The workload identity of an Envoy listener made by a protocol translator by SDS."""
    for chain in msg.filter_chains:
        if chain.HasField("transport_socket"):
            chain.transport_socket.CopyFrom(by_sds(chain.transport_socket, identity_dir))

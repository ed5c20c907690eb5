"""Istio's ``PeerAuthentication`` -> the TLS of the MetaProtocol listeners it selects.

**Where a policy applies** (Istio's rules): a policy without a selector in the root namespace
(``istio-system`` unless ``Options.root_namespace`` says otherwise) is mesh-wide; without a
selector in namespace N, it covers N; with ``selector.matchLabels`` in N, it covers the listeners
of the services of N one of whose endpoints carries all those labels (as for authorization
policies: the workload is behind that listener). The most specific level that sets a mode wins,
``UNSET`` inherits from the level above; ``portLevelMtls`` (selector policies only: refused
elsewhere, as Istio's validation does) is keyed by the workload's port (an endpoint's port or the
ServiceEntry's ``targetPort``), as in Istio. The mode is worked out per endpoint; one listener
fronts them all, so it takes the strictest (STRICT, then PERMISSIVE), with a warning when they
differ: a DISABLE for some workloads never opens plaintext to the others. Several policies at one
level: the first by name applies (Istio keeps the oldest, which a file has no notion of).

**What a mode becomes** on the listener: ``STRICT`` is mutual TLS only: the workload's certificate
and key (``Options.identity_dir``: ``cert.pem``, ``key.pem``, the mesh root ``ca.pem``, kept fresh
by ``metaprotocol proxy --identity``), a client certificate required and its SPIFFE identity in
the trust domain (``spiffe://<trust-domain>/``). ``PERMISSIVE`` is the same TLS, and a client that
does not start a TLS handshake is served in plaintext on the same port (detected on its first
byte, as Envoy's ``tls_inspector`` does). ``DISABLE`` and no policy at all leave the listener as
it is (plaintext, or what its bootstrap says): unlike Istio, no policy does not mean PERMISSIVE,
because a plaintext-only proxy needs no certificate; write a PERMISSIVE policy to accept both.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from aeraki_ctl.resources import Problem, Resource
from metaprotocol.config.model import CommonTls, DataSource, DownstreamTls, MatchKind, SanMatcher, SanType
from metaprotocol_api.istio.security.v1beta1.peer_authentication_pb2 import PeerAuthentication

KIND = "PeerAuthentication"
UNSET, DISABLE, PERMISSIVE, STRICT = "UNSET", "DISABLE", "PERMISSIVE", "STRICT"
_MODES = {PeerAuthentication.MutualTLS.UNSET: UNSET, PeerAuthentication.MutualTLS.DISABLE: DISABLE,
          PeerAuthentication.MutualTLS.PERMISSIVE: PERMISSIVE, PeerAuthentication.MutualTLS.STRICT: STRICT}  # fmt: skip
_MAX_PORT = 65535


@dataclass(frozen=True)
class PeerAuthn:
    """A valid PeerAuthentication: where it applies and the modes it sets."""

    ref: str
    namespace: str
    name: str
    selector: tuple[tuple[str, str], ...]
    mode: str
    ports: tuple[tuple[int, str], ...] = ()

    def selects(self, endpoint_labels: Iterable[Iterable[tuple[str, str]]]) -> bool:
        """Whether one of the endpoints carries every label of the selector."""
        wanted = set(self.selector)
        return any(wanted <= set(labels) for labels in endpoint_labels)


def check(r: Resource, problems: list[Problem]) -> PeerAuthn | None:
    """The policy read, or None when it has an error (every one is told in ``problems``)."""
    spec = r.message(PeerAuthentication)
    errors = 0
    selector = tuple(sorted(spec.selector.match_labels.items())) if spec.HasField("selector") else ()
    ports: list[tuple[int, str]] = []
    for port, mtls in sorted(spec.port_level_mtls.items()):
        path = f"spec.portLevelMtls.{port}"
        if not 0 < port <= _MAX_PORT:
            problems.append(r.problem(f"a port is 1..{_MAX_PORT}, not {port}", path))
            errors += 1
        ports.append((port, _MODES[mtls.mode]))
    if ports and not selector:
        problems.append(r.problem("portLevelMtls applies only to a policy with a selector (Istio's validation refuses it too)", "spec.portLevelMtls"))
        errors += 1
    if errors or r.rejected:
        return None
    return PeerAuthn(r.ref, r.namespace, r.name, selector, _MODES[spec.mtls.mode] if spec.HasField("mtls") else UNSET, tuple(ports))


def mode_for(found: Sequence[PeerAuthn], namespace: str, root_namespace: str, endpoint_labels: Sequence[Iterable[tuple[str, str]]], ports: Iterable[int]) -> str:
    """The mode of a listener of a service in ``namespace`` whose endpoints carry
    ``endpoint_labels`` and which clients reach on ``ports``: the most specific level that sets
    one (mesh, then namespace, then workload, then the workload's port)."""
    reached = set(ports)
    labels = [tuple(x) for x in endpoint_labels]
    levels = (
        [p for p in found if p.namespace == root_namespace and not p.selector],
        [p for p in found if p.namespace == namespace and namespace != root_namespace and not p.selector],
        [p for p in found if p.namespace == namespace and p.selector and p.selects(labels)],
    )
    mode = UNSET
    for level in levels:
        if not level:
            continue
        chosen = min(level, key=lambda p: p.name)
        if chosen.mode != UNSET:
            mode = chosen.mode
        port_mode = next((m for port, m in chosen.ports if port in reached and m != UNSET), None)
        if port_mode is not None:
            mode = port_mode
    return mode


_STRICTNESS = {UNSET: 0, DISABLE: 0, PERMISSIVE: 1, STRICT: 2}


def effective(mode: str) -> str:
    """What a mode does to a listener (UNSET at every level: nothing, like DISABLE)."""
    return DISABLE if mode == UNSET else mode


def strictest(modes: Iterable[str]) -> str:
    """The mode that admits no connection another of ``modes`` refuses."""
    return max(modes, key=lambda m: _STRICTNESS[m], default=UNSET)


def listener_tls(mode: str, identity_dir: str, trust_domain: str) -> DownstreamTls | None:
    """The listener TLS of a mode (None: leave the listener as it is)."""
    if mode not in (STRICT, PERMISSIVE):
        return None
    base = identity_dir.rstrip("/")
    common = CommonTls(
        certificate_chain=DataSource(filename=f"{base}/cert.pem"),
        private_key=DataSource(filename=f"{base}/key.pem"),
        trusted_ca=DataSource(filename=f"{base}/ca.pem"),
        match_sans=(SanMatcher(SanType.URI, MatchKind.PREFIX, f"spiffe://{trust_domain}/"),),
    )
    return DownstreamTls(common, require_client_certificate=True, allow_plaintext=mode == PERMISSIVE)

"""What a connection says about its client: the attributes authorization and logs use.

``source.address`` and ``source.port`` from the socket; ``source.principal`` (the SPIFFE URI SAN,
``spiffe://<trust-domain>/ns/<ns>/sa/<sa>``) and ``source.namespace`` from the client certificate
a TLS listener verified (the transport's ``peercert``, as ``ssl.SSLSocket.getpeercert`` gives it).
Read once per connection, through the transport's ``get_extra_info`` only: no ssl here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol


class PeerInfo(Protocol):
    """The part of a transport peer attributes come from."""

    def get_extra_info(self, name: str, default: object = None) -> object:
        """Socket details (``peername``, ``peercert``)."""


def peer_attributes(transport: PeerInfo) -> Mapping[str, str]:
    """The client's attributes; missing ones are absent."""
    out: dict[str, str] = {}
    peername = transport.get_extra_info("peername")
    if isinstance(peername, tuple) and len(peername) >= 2:  # noqa: PLR2004 - (host, port[, flow, scope])
        out["source.address"] = str(peername[0])
        out["source.port"] = str(peername[1])
    cert = transport.get_extra_info("peercert")
    if isinstance(cert, dict):
        principal = spiffe_id(cert)
        if principal:
            out["source.principal"] = principal
            namespace = namespace_of(principal)
            if namespace:
                out["source.namespace"] = namespace
    return out


def spiffe_id(cert: Mapping[str, object]) -> str:
    """The first ``spiffe://`` URI SAN of a ``getpeercert()`` dict, or ""."""
    sans = cert.get("subjectAltName")
    if not isinstance(sans, tuple | list):
        return ""
    for entry in sans:
        if isinstance(entry, tuple) and len(entry) == 2 and entry[0] == "URI" and str(entry[1]).startswith("spiffe://"):  # noqa: PLR2004
            return str(entry[1])
    return ""


def namespace_of(principal: str) -> str:
    """``ns`` of ``spiffe://<trust-domain>/ns/<ns>/sa/<sa>`` (Istio's form), or ""."""
    parts = principal.removeprefix("spiffe://").split("/")
    for i in range(1, len(parts) - 1):
        if parts[i] == "ns":
            return parts[i + 1]
    return ""

"""Who may get which workload identity from the CA (``aeraki-ctl serve --ca``).

An :class:`Authenticator` looks at a CreateCertificate call's gRPC metadata (the bearer token in
``authorization: Bearer <token>``) and the identity the caller asks for (the SPIFFE URI in its
CSR, if any) and returns the SPIFFE identity it grants, or raises :class:`Refused`. The CA signs
only what is granted (``aeraki_ctl.ca``). Two are built in:

- :class:`TokensFile`: a YAML or JSON mapping of identity -> token (the default). A token grants
  every identity it is listed for, nothing else; tokens are compared in constant time, and the
  file is read again when it changes.
- :class:`TokenReviewAuthenticator`: the Kubernetes API says whose token it is (``TokenReview``,
  ``authentication.k8s.io/v1``, audience ``istio-ca``, as istiod asks); the service account
  ``system:serviceaccount:<ns>:<sa>`` becomes ``spiffe://<trust domain>/ns/<ns>/sa/<sa>``.

Others plug in by implementing ``authenticate``.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml

log = logging.getLogger(__name__)
AUDIENCE = "istio-ca"  # what istio-agent's tokens are minted for, and what istiod reviews them against
SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"
_SPIFFE = re.compile(r"^spiffe://(?P<td>[A-Za-z0-9._-]+)/ns/(?P<ns>[^/]+)/sa/(?P<sa>[^/]+)$")


class Refused(Exception):
    """The caller gets no certificate. ``unauthenticated``: who it is is not known (no token, an
    unknown or invalid token); otherwise it is known and not allowed what it asked for."""

    def __init__(self, reason: str, *, unauthenticated: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.unauthenticated = unauthenticated


@dataclass(frozen=True)
class Identity:
    """A workload identity, ``spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>``."""

    trust_domain: str
    namespace: str
    service_account: str

    @property
    def uri(self) -> str:
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    @classmethod
    def parse(cls, uri: str) -> Identity:
        """Raises ValueError for anything but Istio's SPIFFE form."""
        m = _SPIFFE.match(uri)
        if m is None:
            raise ValueError(f"not a SPIFFE identity spiffe://<trust-domain>/ns/<ns>/sa/<sa>: {uri!r}")
        return cls(m["td"], m["ns"], m["sa"])


class Authenticator(Protocol):
    """Decides which identity a CreateCertificate caller gets."""

    async def authenticate(self, metadata: Mapping[str, str], requested: str | None) -> str:
        """The SPIFFE identity granted to the caller with this call ``metadata`` (lower-case
        keys) asking for ``requested`` (None: whatever its credentials give); raises Refused."""
        ...


def bearer_token(metadata: Mapping[str, str]) -> str:
    """The token of ``authorization: Bearer <token>``; Refused when absent or malformed."""
    value = metadata.get("authorization", "")
    scheme, _, token = value.strip().partition(" ")
    if not value:
        raise Refused("no credentials: send 'authorization: Bearer <token>'")
    if scheme.lower() != "bearer" or not token.strip():
        raise Refused("the authorization metadata is not 'Bearer <token>'")
    return token.strip()


class TokensFile:
    """identity -> token, from a YAML or JSON file (read again when its modification time or
    size changes; a file that no longer parses keeps the last good mapping, with an error logged).

    The file is a mapping from SPIFFE identity to token::

        spiffe://cluster.local/ns/billing/sa/billing: 3f1c...   # one token per identity
        spiffe://cluster.local/ns/shop/sa/cart: 9ab2...
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, int] | None = None
        self._tokens: dict[str, bytes] = {}
        self._load()  # a missing or invalid file at start is an error (ValueError, OSError)

    def _load(self) -> None:
        st = self.path.stat()
        data = yaml.safe_load(self.path.read_text()) or {}  # JSON is YAML
        if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str | int) for k, v in data.items()):
            raise ValueError(f"{self.path}: expected a mapping of identity -> token")
        tokens: dict[str, bytes] = {}
        for identity, token in data.items():
            Identity.parse(identity)  # ValueError names the bad one
            if not str(token):
                raise ValueError(f"{self.path}: empty token for {identity}")
            tokens[identity] = str(token).encode()
        self._tokens = tokens
        self._stamp = (st.st_mtime_ns, st.st_size)

    def _refresh(self) -> None:
        try:
            st = self.path.stat()
            if (st.st_mtime_ns, st.st_size) != self._stamp:
                self._load()
        except (OSError, ValueError, yaml.YAMLError) as exc:
            log.error("tokens file %s: %s (keeping the last good one)", self.path, exc)

    @property
    def identities(self) -> list[str]:
        return sorted(self._tokens)

    async def authenticate(self, metadata: Mapping[str, str], requested: str | None) -> str:
        token = bearer_token(metadata).encode()
        self._refresh()
        # every entry is compared, in constant time, whatever matches: the time taken says nothing
        granted = [identity for identity, known in self._tokens.items() if hmac.compare_digest(known, token)]
        if not granted:
            raise Refused("the token is not valid for any identity")
        if requested is None:
            if len(granted) > 1:
                raise Refused("the token grants several identities: the CSR must name one (URI SAN)", unauthenticated=False)
            return granted[0]
        if requested not in granted:
            raise Refused(f"the token does not grant {requested}", unauthenticated=False)
        return requested


class TokenReviewAuthenticator:
    """Kubernetes service-account tokens, checked by the API server (``TokenReview``).

    ``api_client`` is a kubernetes_asyncio ``ApiClient`` (aeraki-ctl's own, with its RBAC: it needs
    ``create`` on ``tokenreviews.authentication.k8s.io``, which ``system:auth-delegator`` grants).
    """

    def __init__(self, api_client: Any, trust_domain: str = "cluster.local", audiences: tuple[str, ...] = (AUDIENCE,)) -> None:
        self.api_client = api_client
        self.trust_domain = trust_domain
        self.audiences = audiences

    async def review(self, token: str) -> dict[str, Any]:
        """POST a TokenReview; returns its ``status`` as a dict."""
        from kubernetes_asyncio import client as k8s

        api = k8s.AuthenticationV1Api(self.api_client)
        body = k8s.V1TokenReview(api_version="authentication.k8s.io/v1", kind="TokenReview",
                                 spec=k8s.V1TokenReviewSpec(token=token, audiences=list(self.audiences)))  # fmt: skip
        try:
            result = await api.create_token_review(body)
        except k8s.ApiException as exc:
            raise Refused(f"TokenReview failed: {exc.status} {exc.reason}") from exc
        status: Any = result.status  # None when the API answers no status
        if status is None:
            return {}
        return {
            "authenticated": bool(status.authenticated),
            "error": status.error or "",
            "audiences": list(status.audiences or []),
            "username": status.user.username if status.user is not None else "",
        }

    async def authenticate(self, metadata: Mapping[str, str], requested: str | None) -> str:
        token = bearer_token(metadata)
        status = await self.review(token)
        if not status.get("authenticated"):
            raise Refused(f"the Kubernetes API did not authenticate the token{': ' + str(status['error']) if status.get('error') else ''}")
        audiences = status.get("audiences") or []
        if self.audiences and not set(self.audiences) & set(audiences):  # an API server that ignores audiences answers none
            raise Refused(f"the token is not for audience {', '.join(self.audiences)}")
        username = str(status.get("username", ""))
        if not username.startswith(SERVICE_ACCOUNT_PREFIX) or username.count(":") != 3:  # noqa: PLR2004
            raise Refused(f"{username or 'the caller'} is not a service account", unauthenticated=False)
        ns, sa = username[len(SERVICE_ACCOUNT_PREFIX) :].split(":")
        granted = Identity(self.trust_domain, ns, sa).uri
        if requested is not None and requested != granted:
            raise Refused(f"service account {ns}/{sa} is {granted}, not {requested}", unauthenticated=False)
        return granted


def load_tokens(path: str) -> TokensFile:
    """A TokensFile, for the command line (errors as ValueError with the path)."""
    try:
        return TokensFile(path)
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read the tokens file {path}: {exc}") from exc


def dump_tokens(tokens: Mapping[str, str]) -> str:
    """A tokens file's text (JSON), for tests and tooling."""
    return json.dumps(dict(tokens), indent=2, sort_keys=True) + "\n"

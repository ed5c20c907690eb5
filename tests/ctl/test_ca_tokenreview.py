"""The Kubernetes TokenReview authenticator (aeraki_ctl.authn) against the contract server, and the
CA serving a proxy whose service-account token the API server vouches for."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import pytest_asyncio
from cryptography import x509
from kubernetes_asyncio import client

from aeraki_ctl.authn import AUDIENCE, Refused, TokenReviewAuthenticator
from aeraki_ctl.ca import METHOD, CertificateAuthority, CertificateService, new_root
from aeraki_ctl.xds.server import AdsServer, start_server
from metaprotocol_api.istio.security.v1alpha1 import ca_pb2
from tests.ctl.test_ca import csr_for
from tests.k8s_contract import API_AUDIENCE, TOKENREVIEWS, ContractServer

BILLING = "spiffe://cluster.local/ns/billing/sa/billing"


@pytest_asyncio.fixture
async def api() -> AsyncIterator[ContractServer]:
    server = ContractServer()
    await server.start()
    yield server
    await server.close()


@pytest_asyncio.fixture
async def authn(api: ContractServer) -> AsyncIterator[TokenReviewAuthenticator]:
    api_client = client.ApiClient(client.Configuration(host=api.url))
    yield TokenReviewAuthenticator(api_client)
    await api_client.close()


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def raw(api: ContractServer, method: str, body: dict[str, Any] | None) -> tuple[int, dict[str, Any]]:
    import asyncio

    reader, writer = await asyncio.open_connection("127.0.0.1", api.port)
    data = json.dumps(body).encode() if body is not None else b""
    writer.write(f"{method} {TOKENREVIEWS} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
    response = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, payload = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(payload)


@pytest.mark.asyncio
async def test_contract_token_review(api: ContractServer) -> None:
    token = api.issue_token("billing", "billing", audiences=(AUDIENCE,))
    code, review = await raw(api, "POST", {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token, "audiences": [AUDIENCE, "other"]}})
    assert code == 201 and review["kind"] == "TokenReview"
    assert review["status"]["authenticated"] is True and review["status"]["audiences"] == [AUDIENCE]
    assert review["status"]["user"]["username"] == "system:serviceaccount:billing:billing"
    assert "system:serviceaccounts:billing" in review["status"]["user"]["groups"]
    code, review = await raw(api, "POST", {"kind": "TokenReview", "spec": {"token": token}})  # no audiences: the API server's
    assert code == 201 and "authenticated" not in review["status"] and "audiences" in review["status"]["error"]
    api_token = api.issue_token("shop", "cart")
    code, review = await raw(api, "POST", {"kind": "TokenReview", "spec": {"token": api_token}})
    assert code == 201 and review["status"]["audiences"] == [API_AUDIENCE]
    code, review = await raw(api, "POST", {"kind": "TokenReview", "spec": {"token": "forged"}})
    assert code == 201 and not review["status"].get("authenticated") and review["status"]["user"] == {}
    code, _ = await raw(api, "GET", None)
    assert code == 405
    code, _ = await raw(api, "POST", {"kind": "Pod"})
    assert code == 400


@pytest.mark.asyncio
async def test_a_service_account_token_grants_its_spiffe_identity(api: ContractServer, authn: TokenReviewAuthenticator) -> None:
    token = api.issue_token("billing", "billing", audiences=(AUDIENCE,))
    assert await authn.authenticate(bearer(token), BILLING) == BILLING
    assert await authn.authenticate(bearer(token), None) == BILLING
    assert api.reviews[-1] == {"token": token, "audiences": [AUDIENCE]}  # reviewed for istio-ca only
    with pytest.raises(Refused, match="not spiffe://cluster.local/ns/shop/sa/cart") as other:
        await authn.authenticate(bearer(token), "spiffe://cluster.local/ns/shop/sa/cart")
    assert not other.value.unauthenticated


@pytest.mark.asyncio
async def test_invalid_revoked_and_wrong_audience_tokens_are_refused(api: ContractServer, authn: TokenReviewAuthenticator) -> None:
    with pytest.raises(Refused, match="did not authenticate") as forged:
        await authn.authenticate(bearer("forged"), BILLING)
    assert forged.value.unauthenticated
    token = api.issue_token("billing", "billing", audiences=(AUDIENCE,))
    api.revoke_token(token)
    with pytest.raises(Refused, match="did not authenticate"):
        await authn.authenticate(bearer(token), BILLING)
    api_only = api.issue_token("billing", "billing")  # a token for the API server, not for the CA
    with pytest.raises(Refused, match="token audiences"):
        await authn.authenticate(bearer(api_only), BILLING)
    with pytest.raises(Refused, match="no credentials"):
        await authn.authenticate({}, BILLING)


@pytest.mark.asyncio
async def test_an_api_server_that_ignores_audiences_is_not_trusted(authn: TokenReviewAuthenticator) -> None:
    async def unaware(token: str) -> dict[str, Any]:
        return {"authenticated": True, "audiences": [], "username": "system:serviceaccount:billing:billing"}

    authn.review = unaware  # type: ignore[method-assign]
    with pytest.raises(Refused, match="not for audience istio-ca"):
        await authn.authenticate(bearer("t"), BILLING)

    async def user(token: str) -> dict[str, Any]:
        return {"authenticated": True, "audiences": [AUDIENCE], "username": "alice"}

    authn.review = user  # type: ignore[method-assign]
    with pytest.raises(Refused, match="not a service account"):
        await authn.authenticate(bearer("t"), BILLING)


@pytest.mark.asyncio
async def test_ca_over_grpc_with_token_review(api: ContractServer, authn: TokenReviewAuthenticator) -> None:
    key, cert = new_root("cluster.local")
    service = CertificateService(CertificateAuthority(key, [cert]), authn)
    server, port = await start_server(AdsServer(), "127.0.0.1:0", services=[service.handler()])
    token = api.issue_token("billing", "billing", audiences=(AUDIENCE,))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary(METHOD, request_serializer=ca_pb2.IstioCertificateRequest.SerializeToString,
                                       response_deserializer=ca_pb2.IstioCertificateResponse.FromString)  # fmt: skip
            reply = await call(ca_pb2.IstioCertificateRequest(csr=csr_for(BILLING)), metadata=(("authorization", f"Bearer {token}"),))
            leaf = x509.load_pem_x509_certificate(reply.cert_chain[0].encode())
            assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.UniformResourceIdentifier) == [BILLING]
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call(ca_pb2.IstioCertificateRequest(csr=csr_for("spiffe://cluster.local/ns/shop/sa/cart")), metadata=(("authorization", f"Bearer {token}"),))
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        await server.stop(0)

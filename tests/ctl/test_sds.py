"""SDS over ADS (aeraki_ctl.xds.sds): ROOTCA and the stream's own ``default`` certificate, renewed at
half-life and pushed; other types still served by the ADS server on the same stream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from aeraki_ctl.authn import TokensFile
from aeraki_ctl.ca import CertificateAuthority, CertificateService, new_root
from aeraki_ctl.xds.sds import SECRET_TYPE, SdsAdsServer, SecretSource
from aeraki_ctl.xds.server import start_server
from aeraki_ctl.xds.snapshot import make_snapshot
from metaprotocol.xds import convert

BILLING = "spiffe://cluster.local/ns/billing/sa/billing"


class Stream:
    def __init__(self, channel: grpc.aio.Channel, token: str | None) -> None:
        self.requests: asyncio.Queue[discovery_pb2.DiscoveryRequest | None] = asyncio.Queue()
        md = (("authorization", f"Bearer {token}"),) if token else ()
        self.call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(self._iter(), metadata=md)

    async def _iter(self) -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
        while (req := await self.requests.get()) is not None:
            yield req

    async def send(self, type_url: str, names: list[str], nonce: str = "", version: str = "") -> None:
        await self.requests.put(discovery_pb2.DiscoveryRequest(type_url=type_url, resource_names=names, response_nonce=nonce, version_info=version,
                                                               node={"id": "envoy-1"}))  # fmt: skip

    async def read(self) -> discovery_pb2.DiscoveryResponse:
        return await asyncio.wait_for(self.call.read(), 10)  # type: ignore[return-value]


def secrets_of(response: discovery_pb2.DiscoveryResponse) -> dict[str, secret_pb2.Secret]:
    out = {}
    for a in response.resources:
        s = secret_pb2.Secret()
        a.Unpack(s)
        out[s.name] = s
    return out


@pytest.mark.asyncio
async def test_rootca_and_default_over_ads_renewed_at_half_life(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({BILLING: "good"}))
    key, cert = new_root("cluster.local")
    ca = CertificateAuthority(key, [cert])
    ads = SdsAdsServer(SecretSource(CertificateService(ca, TokensFile(tokens)), ttl=2))
    await ads.set_snapshot(make_snapshot({convert.CLUSTER_TYPE: [("c1", cluster_pb2.Cluster(name="c1"))]}))
    server, port = await start_server(ads, "127.0.0.1:0")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            s = Stream(channel, "good")
            await s.send(SECRET_TYPE, ["ROOTCA", "default", "unknown"])
            first = await s.read()
            got = secrets_of(first)
            assert set(got) == {"ROOTCA", "default"}
            assert got["ROOTCA"].validation_context.trusted_ca.inline_bytes.decode() == ca.root_pem
            leaf = x509.load_pem_x509_certificate(got["default"].tls_certificate.certificate_chain.inline_bytes)
            assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.UniformResourceIdentifier) == [BILLING]
            pkey = serialization.load_pem_private_key(got["default"].tls_certificate.private_key.inline_bytes, None)
            assert pkey.public_key().public_numbers() == leaf.public_key().public_numbers()  # type: ignore[union-attr]
            await s.send(SECRET_TYPE, ["ROOTCA", "default", "unknown"], first.nonce, first.version_info)  # ACK
            # other types on the same stream: the ADS server as before
            early: list[discovery_pb2.DiscoveryResponse] = []  # a renewal may come before the clusters on a slow host

            async def read_type(type_url: str) -> discovery_pb2.DiscoveryResponse:
                for i, r in enumerate(early):
                    if r.type_url == type_url:
                        return early.pop(i)
                while (r := await s.read()).type_url != type_url:
                    early.append(r)
                return r

            await s.send(convert.CLUSTER_TYPE, [])
            clusters = await read_type(convert.CLUSTER_TYPE)
            assert clusters.type_url == convert.CLUSTER_TYPE and len(clusters.resources) == 1
            await s.send(convert.CLUSTER_TYPE, [], clusters.nonce, clusters.version_info)
            # half-life of a 2 s certificate: a new one is pushed
            renewed = await read_type(SECRET_TYPE)
            assert renewed.type_url == SECRET_TYPE and renewed.version_info != first.version_info
            leaf2 = x509.load_pem_x509_certificate(secrets_of(renewed)["default"].tls_certificate.certificate_chain.inline_bytes)
            assert leaf2.serial_number != leaf.serial_number
            assert any(info.node_id == "envoy-1" for info in ads.streams.values())
            await s.requests.put(None)
    finally:
        await server.stop(0)


@pytest.mark.asyncio
async def test_a_refused_stream_gets_rootca_only(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({BILLING: "good"}))
    key, cert = new_root("cluster.local")
    service = CertificateService(CertificateAuthority(key, [cert]), TokensFile(tokens))
    server, port = await start_server(SdsAdsServer(SecretSource(service)), "127.0.0.1:0")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            for token in ("wrong", None):
                s = Stream(channel, token)
                await s.send(SECRET_TYPE, ["ROOTCA", "default"])
                assert set(secrets_of(await s.read())) == {"ROOTCA"}
                await s.requests.put(None)
        assert service.refused["unauthenticated"] == 2 and not service.issued
        assert "no 'default' secret" in caplog.text
    finally:
        await server.stop(0)


@pytest.mark.asyncio
async def test_delta_ads_carries_secrets_changed_and_removed_one_by_one(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({BILLING: "good"}))
    key, cert = new_root("cluster.local")
    ca = CertificateAuthority(key, [cert])
    ads = SdsAdsServer(SecretSource(CertificateService(ca, TokensFile(tokens)), ttl=2))
    await ads.set_snapshot(make_snapshot({convert.CLUSTER_TYPE: [("c1", cluster_pb2.Cluster(name="c1"))]}))
    server, port = await start_server(ads, "127.0.0.1:0")
    requests: asyncio.Queue[discovery_pb2.DeltaDiscoveryRequest | None] = asyncio.Queue()

    async def iterate() -> AsyncIterator[discovery_pb2.DeltaDiscoveryRequest]:
        while (req := await requests.get()) is not None:
            yield req

    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).DeltaAggregatedResources(iterate(), metadata=(("authorization", "Bearer good"),))
            early: list[discovery_pb2.DeltaDiscoveryResponse] = []

            async def read_type(type_url: str) -> discovery_pb2.DeltaDiscoveryResponse:
                for i, r in enumerate(early):
                    if r.type_url == type_url:
                        return early.pop(i)
                while (r := await asyncio.wait_for(call.read(), 10)).type_url != type_url:  # type: ignore[union-attr]
                    early.append(r)  # type: ignore[arg-type]
                return r  # type: ignore[return-value]

            await requests.put(discovery_pb2.DeltaDiscoveryRequest(type_url=SECRET_TYPE, resource_names_subscribe=["ROOTCA", "default"], node={"id": "envoy-d"}))
            first = await read_type(SECRET_TYPE)
            assert {r.name for r in first.resources} == {"ROOTCA", "default"} and not first.removed_resources
            versions = {r.name: r.version for r in first.resources}
            await requests.put(discovery_pb2.DeltaDiscoveryRequest(type_url=SECRET_TYPE, response_nonce=first.nonce))  # ACK
            await requests.put(discovery_pb2.DeltaDiscoveryRequest(type_url=convert.CLUSTER_TYPE, resource_names_subscribe=["*"]))
            clusters = await read_type(convert.CLUSTER_TYPE)
            assert [r.name for r in clusters.resources] == ["c1"]  # other types: the ADS server, on the same stream
            await requests.put(discovery_pb2.DeltaDiscoveryRequest(type_url=SECRET_TYPE, resource_names_unsubscribe=["ROOTCA"]))
            removed = await read_type(SECRET_TYPE)
            assert list(removed.removed_resources) == ["ROOTCA"] and not removed.resources  # the key is not sent again
            renewed = await read_type(SECRET_TYPE)  # half-life of a 2 s certificate: only default, a new version
            assert [r.name for r in renewed.resources] == ["default"] and renewed.resources[0].version != versions["default"]
            await requests.put(None)
    finally:
        await server.stop(0)

"""TLS over xDS: a listener or cluster whose TLS context cannot be made here (a certificate file
missing) is rejected alone and keeps its previous version; the rest of the update applies."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from metaprotocol.config.model import ClusterConfig, CommonTls, DataSource, DownstreamTls, Endpoint, ListenerConfig, UpstreamTls
from metaprotocol.xds import convert
from tests.ctl.test_xds_partial import GOOD_LISTENERS, Setup, dubbo_routes, redis_routes, setup, snapshot, until  # noqa: F401 - setup is a fixture
from tests.tls_certs import CertAuthority


@pytest.mark.asyncio
async def test_a_listener_or_cluster_whose_certificate_is_missing_is_rejected_alone(setup: Setup, tmp_path: Path) -> None:  # noqa: F811 - the fixture
    s = setup
    ca = CertAuthority()
    crt, key = ca.write(tmp_path, "server", "proxy", dns=("proxy.local",))
    good_tls = DownstreamTls(CommonTls(DataSource(filename=crt), DataSource(filename=key)))
    missing = DownstreamTls(CommonTls(DataSource(filename=str(tmp_path / "missing.crt")), DataSource(filename=key)))
    redis = replace(GOOD_LISTENERS[0], tls=missing)
    dubbo = replace(GOOD_LISTENERS[1], tls=good_tls, stat_prefix="dubbo-tls")
    d1_bad = ClusterConfig("d1", (Endpoint("127.0.0.1", 1001),), tls=UpstreamTls(CommonTls(trusted_ca=DataSource(filename=str(tmp_path / "no-ca.pem")))))
    d2_good = ClusterConfig("d2", (Endpoint("127.0.0.1", 1002),), tls=UpstreamTls(CommonTls(trusted_ca=DataSource(filename=ca.write_ca(tmp_path))), sni="x"))
    await s.ads.set_snapshot(snapshot([redis, dubbo], [redis_routes(), dubbo_routes(100, 0)], [ClusterConfig("redis-c", (Endpoint("127.0.0.1", 1000),)), d1_bad, d2_good]))
    await until(lambda: s.client.status.rejected[convert.LISTENER_TYPE] == 1 and s.client.status.rejected[convert.CLUSTER_TYPE] == 1)
    lds = s.client.status.last_nack[convert.LISTENER_TYPE].reasons
    assert set(lds) == {"redis"} and "transport_socket" in lds["redis"] and "No such file" in lds["redis"]
    cds = s.client.status.last_nack[convert.CLUSTER_TYPE].reasons
    assert set(cds) == {"d1"} and "transport_socket" in cds["d1"]
    await until(lambda: s.proxy.contexts["dubbo"].config.tls == good_tls)
    config: ListenerConfig = s.proxy.contexts["redis"].config
    assert config.tls is None  # the previous version serves on
    await until(lambda: s.proxy.bootstrap.cluster_map()["d2"].tls == d2_good.tls)
    assert s.proxy.bootstrap.cluster_map()["d1"].tls is None

"""Control plane at scale: 1,000 services x 10 routes, translated and pushed to 200 ADS streams.

    python bench/xds_scale.py [--services 1000] [--routes 10] [--streams 200]

Measures translation time, snapshot time, time until every stream has received (and ACKed) every
listener, route, cluster and endpoint resource, and the controller's peak memory (RSS). Targets
(issue 6): converge in under 5 s, memory under 300 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from aeraki_ctl.resources import load_directory  # noqa: E402
from aeraki_ctl.translate import translate  # noqa: E402
from aeraki_ctl.xds.server import AdsServer, start_server  # noqa: E402
from aeraki_ctl.xds.snapshot import snapshot_of  # noqa: E402
from metaprotocol.xds import convert  # noqa: E402


def write_resources(root: Path, services: int, routes: int) -> None:
    docs = []
    for i in range(services):
        host = f"svc{i}.bench.example"
        docs.append(f"""apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {{name: svc{i}, namespace: bench}}
spec:
  hosts: [{host}]
  ports: [{{number: {20000 + i}, name: tcp-metaprotocol-dubbo, protocol: TCP}}]
  endpoints:
  - {{address: 10.0.{i // 250}.{i % 250}, labels: {{version: v1}}}}
  - {{address: 10.1.{i // 250}.{i % 250}, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {{name: svc{i}, namespace: bench}}
spec:
  host: {host}
  subsets: [{{name: v1, labels: {{version: v1}}}}, {{name: v2, labels: {{version: v2}}}}]
---
apiVersion: metaprotocol.aeraki.io/v1alpha1
kind: MetaRouter
metadata: {{name: svc{i}, namespace: bench}}
spec:
  hosts: [{host}]
  routes:
""")
        for r in range(routes):
            docs.append(f"""  - name: r{r}
    match: {{attributes: {{method: {{exact: m{r}}}}}}}
    route:
    - {{destination: {{host: {host}, subset: v1}}, weight: 20}}
    - {{destination: {{host: {host}, subset: v2}}, weight: 80}}
""")
        docs.append("---\n")
    (root / "bench.yaml").write_text("".join(docs))


async def stream(stub: ads_pb2_grpc.AggregatedDiscoveryServiceStub, node: int, expected: dict[str, int]) -> float:
    """Subscribe like a proxy (wildcards, then named); return when everything arrived and was ACKed."""
    queue: asyncio.Queue[discovery_pb2.DiscoveryRequest] = asyncio.Queue()
    n = base_pb2.Node(id=f"bench-{node}")

    async def requests() -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
        while True:
            yield await queue.get()

    call = stub.StreamAggregatedResources(requests())
    for t in (convert.LISTENER_TYPE, convert.CLUSTER_TYPE):
        queue.put_nowait(discovery_pb2.DiscoveryRequest(node=n, type_url=t))
    got: dict[str, int] = {}
    names: dict[str, list[str]] = {}
    async for r in call:
        got[r.type_url] = len(r.resources)
        if r.type_url == convert.LISTENER_TYPE:
            names[convert.ROUTE_TYPE] = [f"svc{i}.bench.example_{20000 + i}" for i in range(expected[convert.LISTENER_TYPE])]
            queue.put_nowait(discovery_pb2.DiscoveryRequest(node=n, type_url=convert.ROUTE_TYPE, resource_names=names[convert.ROUTE_TYPE]))
        if r.type_url == convert.CLUSTER_TYPE:
            from envoy.config.cluster.v3 import cluster_pb2

            cnames = []
            for a in r.resources:
                c = cluster_pb2.Cluster()
                a.Unpack(c)
                cnames.append(c.name)
            queue.put_nowait(discovery_pb2.DiscoveryRequest(node=n, type_url=convert.ENDPOINT_TYPE, resource_names=cnames))
        queue.put_nowait(discovery_pb2.DiscoveryRequest(node=n, type_url=r.type_url, version_info=r.version_info, response_nonce=r.nonce, resource_names=names.get(r.type_url, [])))
        if all(got.get(t) == k for t, k in expected.items()):
            call.cancel()
            return time.monotonic()
    return time.monotonic()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--routes", type=int, default=10)
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--clients", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.clients:
        await clients(args.clients, args.streams, args.services)
        return
    tmp = Path(tempfile.mkdtemp(prefix="mp-xds-scale-"))
    write_resources(tmp, args.services, args.routes)
    t0 = time.monotonic()
    result = translate(load_directory(tmp))
    t1 = time.monotonic()
    snapshot = snapshot_of(result.bootstrap)
    t2 = time.monotonic()
    expected = {t: len(snapshot.of(t)) for t in (convert.LISTENER_TYPE, convert.ROUTE_TYPE, convert.CLUSTER_TYPE, convert.ENDPOINT_TYPE)}
    server = AdsServer(snapshot)
    grpc_server, port = await start_server(server, "127.0.0.1:0")
    # The clients run in their own process (as proxies would), so the controller has its core.
    t3 = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--clients", str(port), "--streams", str(args.streams), "--services", str(args.services),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate()
    converge = float(out.decode().strip().splitlines()[-1]) - (time.time() - (time.monotonic() - t3))
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    await grpc_server.stop(0)
    print(f"resources: {expected}")
    print(f"load + translate: {t1 - t0:.2f} s, snapshot: {t2 - t1:.2f} s, problems: {len(result.problems)}")
    print(f"{args.streams} ADS streams (another process) fully converged (all 4 types received and ACKed) in {converge:.2f} s after the server started")
    print(f"from files to full convergence: {t2 - t0 + converge:.2f} s; controller peak RSS: {rss_mb:.0f} MB")


async def clients(port: int, streams: int, services: int) -> None:
    """The client side: open the streams, print the wall time when the last one converged."""
    expected = {convert.LISTENER_TYPE: services, convert.ROUTE_TYPE: services, convert.CLUSTER_TYPE: 3 * services, convert.ENDPOINT_TYPE: 3 * services}
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)])
    stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
    await asyncio.gather(*(stream(stub, i, expected) for i in range(streams)))
    print(time.time())
    await channel.close()


if __name__ == "__main__":
    asyncio.run(main())

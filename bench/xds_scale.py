"""Control plane at scale: services with routes, translated and pushed to ADS streams in another
process; then MetaRouter edits, timed until every affected proxy ACKed them.

    python bench/xds_scale.py                                   # 10,000 services x 10 routes, 1,000 streams,
                                                                # 100 namespaces + "shared", Sidecar-scoped
    python bench/xds_scale.py --services 1000 --streams 200 --unscoped   # every proxy sees everything

The controller side runs the real sync path (``Controller.sync``: Ledger, incremental translator,
snapshot builder, ADS server) on an in-memory source holding the objects as a Kubernetes source
would (each read once, through the typed parser). Services are spread over ``--namespaces``
namespaces plus ``shared``; one Sidecar in the root namespace (``istio-system``) imports ``./*``
and ``shared/*``, so each proxy (node metadata NAMESPACE) sees its namespace and the shared one.
Proxies are spread over the namespaces. Reported: the time to read the objects, from then to full
convergence (every stream received and ACKed all four types), the time from a MetaRouter edit
(handed to the controller, no debounce) to the last ACK of it from every affected proxy, for an
edit in ``shared`` (every proxy) and in one namespace (its proxies), the controller's RSS, and a
CPU calibration (a fixed pure-Python loop timed in the same run; the machine is shared).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import struct_pb2, wrappers_pb2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from aeraki_ctl.controller import Controller  # noqa: E402
from aeraki_ctl.resources import Problem, Resource, resource_from_spec  # noqa: E402
from aeraki_ctl.xds.server import AdsServer, StreamInfo, start_server  # noqa: E402
from aeraki_ctl.xds.snapshot import version_of  # noqa: E402
from metaprotocol.xds import convert  # noqa: E402
from metaprotocol.xds.status import short_name  # noqa: E402

SHARED = "shared"
STREAMS_PER_CHANNEL = 50  # proxies have a connection each; one per 50 keeps the client process light


def calibrate() -> float:
    """Seconds for a fixed pure-Python loop (compare runs on a shared machine by it)."""
    t = time.perf_counter()
    total = 0
    for i in range(3_000_000):
        total += i * i % 7
    return time.perf_counter() - t


def namespace_of(i: int, namespaces: int) -> str:
    return SHARED if i % (namespaces + 1) == namespaces else f"ns{i % (namespaces + 1)}"


def host_of(i: int, namespaces: int) -> str:
    return f"svc{i}.{namespace_of(i, namespaces)}.svc.cluster.local"


def router_spec(host: str, routes: int, v1: int) -> dict[str, Any]:
    return {"hosts": [host], "routes": [{"name": f"r{r}", "match": {"attributes": {"method": {"exact": f"m{r}"}}},
                                         "route": [{"destination": {"host": host, "subset": "v1"}, "weight": v1},
                                                   {"destination": {"host": host, "subset": "v2"}, "weight": 100 - v1}]}
                                        for r in range(routes)]}  # fmt: skip


def objects(services: int, routes: int, namespaces: int, scoped: bool) -> list[Resource]:
    """The objects, each read through the typed parser (as a source reads them)."""
    out = []
    for i in range(services):
        host, ns = host_of(i, namespaces), namespace_of(i, namespaces)
        se = {"hosts": [host], "ports": [{"number": 20000 + i % 40000, "name": "tcp-metaprotocol-dubbo", "protocol": "TCP"}],
              "endpoints": [{"address": f"10.0.{i // 250 % 250}.{i % 250}", "labels": {"version": "v1"}},
                            {"address": f"10.1.{i // 250 % 250}.{i % 250}", "labels": {"version": "v2"}}]}  # fmt: skip
        dr = {"host": host, "subsets": [{"name": "v1", "labels": {"version": "v1"}}, {"name": "v2", "labels": {"version": "v2"}}]}
        out.append(resource_from_spec("ServiceEntry", f"svc{i}", ns, se, "bench"))
        out.append(resource_from_spec("DestinationRule", f"svc{i}", ns, dr, "bench"))
        out.append(resource_from_spec("MetaRouter", f"svc{i}", ns, router_spec(host, routes, 20), "bench"))
    if scoped:
        out.append(resource_from_spec("Sidecar", "default", "istio-system", {"egress": [{"hosts": ["./*", f"{SHARED}/*"]}]}, "bench"))
    return out


class MemorySource:
    """A source holding objects in memory (as the Kubernetes source's cache does). They are read
    (typed parse) at the first ``resources()``, which the controller calls inside its first sync,
    as it reads a directory: with the cyclic collector paused."""

    def __init__(self, make: Callable[[], list[Resource]]) -> None:
        self.make = make
        self.objects: dict[str, Resource] = {}
        self.read_seconds = 0.0

    def resources(self) -> tuple[list[Resource], list[Problem]]:
        if not self.objects:
            t = time.perf_counter()
            self.objects = {r.ref: r for r in self.make()}
            self.read_seconds = time.perf_counter() - t
        return list(self.objects.values()), []

    async def start(self, changed: Callable[[], None]) -> None:
        return None

    async def wait_synced(self, timeout: float) -> bool:
        return True

    async def close(self) -> None:
        return None


class AckWatch:
    """Waits until every stream subscribed to a route table has ACKed the version that holds an edit."""

    def __init__(self, ads: AdsServer) -> None:
        self.ads = ads
        self.waiting: dict[int, str] = {}
        self.done = asyncio.Event()
        ads.ack_hooks.append(self._on_ack)

    def expect(self, route: str) -> int:
        """After the edit's sync: the streams that must ACK, with the versions they must ACK."""
        self.done.clear()
        self.waiting = {}
        for info in self.ads.streams.values():
            w = info.watches.get(convert.ROUTE_TYPE)
            if w is not None and route in w.names:
                self.waiting[id(info)] = version_of(w.digest)
        expected = len(self.waiting)
        for info in list(self.ads.streams.values()):
            self._on_ack(info, convert.ROUTE_TYPE)
        return expected

    def _on_ack(self, info: StreamInfo, type_url: str) -> None:
        if type_url != convert.ROUTE_TYPE or id(info) not in self.waiting:
            return
        w = info.watches.get(convert.ROUTE_TYPE)
        if w is not None and w.acked_version == self.waiting[id(info)]:
            del self.waiting[id(info)]
            if not self.waiting:
                self.done.set()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--routes", type=int, default=10)
    parser.add_argument("--streams", type=int, default=1_000)
    parser.add_argument("--namespaces", type=int, default=100)
    parser.add_argument("--unscoped", action="store_true", help="no Sidecar: every proxy receives everything")
    parser.add_argument("--edits", type=int, default=5, help="edits timed per kind")
    parser.add_argument("--clients", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.clients:
        await clients(args.clients, args.streams, args.namespaces)
        return
    before = calibrate()
    source = MemorySource(lambda: objects(args.services, args.routes, args.namespaces, not args.unscoped))
    ads = AdsServer()
    controller = Controller(None, ads, sources=[source])
    t0 = time.time()
    await controller.sync()
    t2 = time.time()
    snapshot = ads.snapshot
    sizes = {short_name(t): len(snapshot.of(t)) for t in snapshot.resources}
    rejected = [ref for ref, s in controller.objects.items() if s.state != "accepted"]
    grpc_server, port = await start_server(ads, "127.0.0.1:0")
    proc = await asyncio.create_subprocess_exec(sys.executable, __file__, "--clients", str(port), "--streams", str(args.streams), "--namespaces", str(args.namespaces),
                                                stdout=asyncio.subprocess.PIPE)  # fmt: skip
    assert proc.stdout is not None
    line = (await proc.stdout.readline()).decode().split()
    converged_at, received = float(line[0]), line[1:]
    watch = AckWatch(ads)
    results: dict[str, list[tuple[float, int]]] = {}
    edits = [(f"{SHARED} namespace (all proxies import it)", args.namespaces), ("one namespace (ns7)", 7)] if not args.unscoped else [("one service", 7)]
    for label, index in edits:
        for n in range(args.edits):
            host, ns = host_of(index, args.namespaces), namespace_of(index, args.namespaces)
            r = resource_from_spec("MetaRouter", f"svc{index}", ns, router_spec(host, args.routes, 30 + n), "bench")
            start = time.monotonic()
            source.objects[r.ref] = r
            cpu = time.process_time()
            await controller.sync()
            sync_cpu = time.process_time() - cpu
            expected = watch.expect(f"{host}_{20000 + index % 40000}")
            await asyncio.wait_for(watch.done.wait(), 60)
            results.setdefault(label, []).append((time.monotonic() - start, expected))
            print(f"  edit {n} ({label}): {expected} proxies ACKed in {time.monotonic() - start:.3f} s (sync CPU {sync_cpu * 1000:.0f} ms)", flush=True)
    rss_now = _rss_mb()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    proc.terminate()
    await proc.wait()
    await grpc_server.stop(0)
    after = calibrate()
    print(f"calibration: fixed pure-Python loop {before:.3f} s before, {after:.3f} s after")
    print(f"{args.services} services x {args.routes} routes, {args.streams} streams, {'unscoped' if args.unscoped else f'{args.namespaces} namespaces + {SHARED}, Sidecar-scoped'}")
    print(f"snapshot: {sizes}; objects not accepted: {len(rejected)}; per proxy (first stream): {received}; scoped views: {len(ads.views.views)}")
    print(f"first sync: {t2 - t0:.2f} s, of which reading the {len(source.objects)} objects (typed parse) {source.read_seconds:.2f} s, "
          f"translating and packing {t2 - t0 - source.read_seconds:.2f} s")
    print(f"from start to all {args.streams} streams converged (received and ACKed all four types): {converged_at - t0:.2f} s "
          f"({converged_at - t0 - source.read_seconds:.2f} s without the reading)")
    for label, runs in results.items():
        times = [t for t, _ in runs]
        print(f"edit in {label}: {runs[0][1]} proxies ACKed in median {statistics.median(times):.3f} s, max {max(times):.3f} s ({len(times)} edits)")
    print(f"controller RSS: {rss_now:.0f} MB now, peak {peak:.0f} MB")


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


async def stream(stub: ads_pb2_grpc.AggregatedDiscoveryServiceStub, node: base_pb2.Node, converged: asyncio.Future[list[int]]) -> None:
    """Subscribe like a proxy (wildcards, then the names they give) and ACK every response forever;
    ``converged`` is resolved when all four types arrived."""
    queue: asyncio.Queue[discovery_pb2.DiscoveryRequest] = asyncio.Queue()

    async def requests() -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
        while True:
            yield await queue.get()

    call = stub.StreamAggregatedResources(requests())
    for t in (convert.LISTENER_TYPE, convert.CLUSTER_TYPE):
        queue.put_nowait(discovery_pb2.DiscoveryRequest(node=node, type_url=t))
    names: dict[str, list[str]] = {}
    counts: dict[str, int] = {}
    async for r in call:
        counts.setdefault(r.type_url, len(r.resources))
        if r.type_url == convert.LISTENER_TYPE:
            names[convert.ROUTE_TYPE] = [_name(a) for a in r.resources]
            queue.put_nowait(discovery_pb2.DiscoveryRequest(node=node, type_url=convert.ROUTE_TYPE, resource_names=names[convert.ROUTE_TYPE]))
        elif r.type_url == convert.CLUSTER_TYPE:
            names[convert.ENDPOINT_TYPE] = [_name(a) for a in r.resources]
            queue.put_nowait(discovery_pb2.DiscoveryRequest(node=node, type_url=convert.ENDPOINT_TYPE, resource_names=names[convert.ENDPOINT_TYPE]))
        queue.put_nowait(discovery_pb2.DiscoveryRequest(node=node, type_url=r.type_url, version_info=r.version_info, response_nonce=r.nonce,
                                                        resource_names=names.get(r.type_url, [])))  # fmt: skip
        if len(counts) == 4 and not converged.done():
            converged.set_result([counts[t] for t in (convert.LISTENER_TYPE, convert.ROUTE_TYPE, convert.CLUSTER_TYPE, convert.ENDPOINT_TYPE)])


def _name(packed: Any) -> str:  # noqa: ANN401 - a packed Listener or Cluster
    """Field 1 (``name``) of a packed Listener or Cluster, read as a StringValue (the other fields
    are skipped as unknown): a proxy decodes what it receives, the bench's 1,000 streams in one
    process only need the names to subscribe to."""
    return str(wrappers_pb2.StringValue.FromString(packed.value).value)


async def clients(port: int, streams: int, namespaces: int) -> None:
    """The proxies' side: open the streams, print the wall time when the last one converged and
    what the first received (listeners, routes, clusters, endpoints), then keep ACKing."""
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", 256 * 1024 * 1024)])
                for _ in range(0, streams, STREAMS_PER_CHANNEL)]  # fmt: skip
    loop = asyncio.get_running_loop()
    done = [loop.create_future() for _ in range(streams)]
    tasks = []
    for i in range(streams):
        node = base_pb2.Node(id=f"bench-{i}")
        meta = struct_pb2.Struct()
        meta.update({"NAMESPACE": f"ns{i % namespaces}", "LABELS": {"app": f"app{i}"}})
        node.metadata.CopyFrom(meta)
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channels[i // STREAMS_PER_CHANNEL])
        tasks.append(asyncio.ensure_future(stream(stub, node, done[i])))
    first = await asyncio.gather(*done)
    print(time.time(), *first[0], flush=True)
    await asyncio.gather(*tasks)


if __name__ == "__main__":
    asyncio.run(main())

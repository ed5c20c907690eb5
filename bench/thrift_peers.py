"""Thrift end to end: direct vs our proxy vs Envoy thrift_proxy, framed binary and THeader, in one run.

    python bench/thrift_peers.py [--seconds 5]

A canned server (bench/thrift_canned.py) answers; bench/loadgen.c keeps 1 or 16 calls in flight
on each of 50 connections (sequence ids patched per call). Envoy is run as in
../shared/reference/peers/envoy_thrift.yaml (framed binary; full decode and payload passthrough),
plus a copy of its full-decode listener with THeader clients (transport HEADER).
"""

from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.peers import build_loadgen, print_table, run_case  # noqa: E402
from metaprotocol_codecs.thrift import wire  # noqa: E402
from tests.servers import free_port, wait_port  # noqa: E402

NAME = b"sayHello"
ARGS = b"\x0b\x00\x01" + wire.I32.pack(5) + b"world" + b"\x00"


def call_message(seqid: int = 1) -> bytes:
    return wire.I32.pack(wire.BINARY_VERSION_1 - 2**32 + wire.CALL) + wire.I32.pack(len(NAME)) + NAME + wire.I32.pack(seqid) + ARGS


def framed_request() -> tuple[str, int]:
    message = call_message()
    frame = wire.I32.pack(len(message)) + message
    return frame.hex(), 4 + 8 + len(NAME)  # seqid offset


def header_request() -> tuple[str, int]:
    message = call_message()
    frame = wire.build_theader(1, wire.PROTOCOL_BINARY, {"client": "bench", "trace-id": "0123456789abcdef"}, message)
    at = 14 + wire.U16.unpack_from(frame, 12)[0] * 4
    return frame.hex(), at + 8 + len(NAME)


def our_bootstrap(port: int, upstream: int) -> dict[str, object]:
    return {"static_resources": {
        "listeners": [{"name": "thrift", "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                       "filter_chains": [{"filters": [{"name": "aeraki.meta_protocol_proxy", "typed_config": {
                           "stat_prefix": "thrift", "codec": {"name": "thrift"},
                           "route_config": {"name": "r", "routes": [{"match": {"metadata": [{"name": "method", "exact_match": "sayHello"}]}, "route": {"cluster": "backend"}}]}}}]}]}],
        "clusters": [{"name": "backend", "connect_timeout": "1s", "load_assignment": {"cluster_name": "backend", "endpoints": [
            {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": upstream}}}}]}]}}],
    }}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=50)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mp-thrift-bench-"))
    loadgen = build_loadgen(tmp)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    upstream, ours = free_port(), free_port()
    procs = {"server": subprocess.Popen([sys.executable, str(ROOT / "bench/thrift_canned.py"), str(upstream)], env=env)}
    (tmp / "ours.yaml").write_text(yaml.safe_dump(our_bootstrap(ours, upstream)))
    procs["metaprotocol"] = subprocess.Popen([sys.executable, "-m", "metaprotocol.cli", "proxy", "-c", str(tmp / "ours.yaml"), "--log-level", "WARNING"], env=env)
    cfg = yaml.safe_load((ROOT.parent / "shared/reference/peers/envoy_thrift.yaml").read_text())
    eports = {"admin": free_port(), "full": free_port(), "passthrough": free_port(), "theader": free_port()}
    cfg["admin"]["address"]["socket_address"]["port_value"] = eports["admin"]
    listeners = cfg["static_resources"]["listeners"]
    listeners[0]["address"]["socket_address"]["port_value"] = eports["full"]
    listeners[1]["address"]["socket_address"]["port_value"] = eports["passthrough"]
    # Envoy with THeader clients too (transport HEADER downstream; the cluster speaks framed binary).
    header = copy.deepcopy(listeners[0])
    header["name"] = "thrift_header_listener"
    header["address"]["socket_address"]["port_value"] = eports["theader"]
    header["filter_chains"][0]["filters"][0]["typed_config"].update({"stat_prefix": "thrift_header", "transport": "HEADER"})
    listeners.append(header)
    ep = cfg["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    ep["address"]["socket_address"]["port_value"] = upstream
    (tmp / "envoy.yaml").write_text(yaml.safe_dump(cfg))
    procs["envoy"] = subprocess.Popen([str(Path(sys.executable).parent / "envoy"), "-c", str(tmp / "envoy.yaml"), "--concurrency", "1", "--log-level", "error"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    framed, header = framed_request(), header_request()
    cases = [
        ("direct framed", upstream, None, framed), ("metaprotocol framed", ours, procs["metaprotocol"], framed),
        ("envoy framed", eports["full"], procs["envoy"], framed), ("envoy passthrough", eports["passthrough"], procs["envoy"], framed),
        ("direct theader", upstream, None, header), ("metaprotocol theader", ours, procs["metaprotocol"], header),
        ("envoy theader", eports["theader"], procs["envoy"], header),
    ]  # fmt: skip
    rows = []
    try:
        for port in (upstream, ours, *eports.values()):
            wait_port(port, 30)
        for depth in (1, 16):
            for name, port, proc, (hexreq, id_off) in cases:
                result = run_case(loadgen, port, proc.pid if proc else None, connections=args.connections, depth=depth, seconds=args.seconds,
                                  request_hex=hexreq, framing=(0, 4, 4), request_id=(id_off, 4))  # fmt: skip
                rows.append({"target": name, "in_flight": depth, **result})
    finally:
        for p in procs.values():
            p.terminate()
            p.wait(10)
    # The better of Envoy's two listeners at each depth (full decode has closed connections under
    # 16 in flight in some runs; a failed run reports 0 and its error).
    print_table(rows, lambda r: str(r["target"]).startswith("envoy"), "vs best envoy", ROOT / "bench/results/thrift_peers.json",
                group=lambda r: "theader" if str(r["target"]).endswith("theader") else "framed")  # fmt: skip


if __name__ == "__main__":
    main()

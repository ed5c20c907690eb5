"""Overload: many clients pipeline calls to an upstream that never answers.

Runs the proxy as its own process (default overload bounds unless ``--max-pending`` is given),
with a Dubbo listener in front of a silent upstream (accepts, reads, never answers), then has
``--clients`` connections each pipeline ``--calls`` Dubbo requests. Reports how many calls were
refused at once with the over-limit reply, how many stayed pending, and the proxy's resident
memory before and after (the figure docs/reliability.md quotes). Not a test: run it by hand,
``python bench/overload.py``; it writes bench/results/overload.json.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from metaprotocol_codecs.dubbo import wire  # noqa: E402
from tests.servers import StallingRelay, bootstrap_dict, cluster, free_port, listener, wait_port  # noqa: E402


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def stat(admin: int, name: str) -> float:
    """One un-labelled or summed metric from the proxy's /stats."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats", timeout=5).read().decode()  # noqa: S310 - loopback
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name) and not line.startswith("#"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--calls", type=int, default=5000)
    ap.add_argument("--max-pending", type=int, default=None, help="override the process pending bound (default: the proxy's)")
    args = ap.parse_args()
    with StallingRelay(free_port(), stall=10**9) as silent, tempfile.TemporaryDirectory() as tmp:
        port, admin = free_port(), free_port()
        tree = bootstrap_dict(
            [listener("dubbo", port, "dubbo", [{"name": "all", "route": {"cluster": "c", "timeout": "60s"}}], max_pending_per_connection=10**6)],
            [cluster("c", [silent.port])],
        )
        if args.max_pending is not None:
            tree["overload_manager"] = {"resource_monitors": [
                {"name": "metaprotocol.resource_monitors.pending_requests", "typed_config": {"max_pending_requests": args.max_pending}}]}  # fmt: skip
        cfg = Path(tmp) / "proxy.yaml"
        cfg.write_text(yaml.safe_dump(tree))
        proc = subprocess.Popen([str(ROOT / ".venv/bin/metaprotocol"), "proxy", "-c", str(cfg), "--admin", f"127.0.0.1:{admin}", "--log-level", "ERROR"])
        try:
            wait_port(port)
            wait_port(admin)
            rss_idle = rss_bytes(proc.pid)
            inv = wire.Invocation("org.example.Svc", "get", "Ljava/lang/String;", ["key"], {"path": "org.example.Svc"}, "0.0.0")
            frames = [b"".join(wire.build_request(c * args.calls + i + 1, inv) for i in range(args.calls)) for c in range(args.clients)]
            socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(args.clients)]
            refused = [0] * args.clients
            last = [0.0] * args.clients

            def reader(i: int, s: socket.socket) -> None:
                s.settimeout(5.0)
                try:
                    while data := s.recv(1 << 20):
                        refused[i] += data.count(wire.MAGIC.to_bytes(2, "big"))
                        last[i] = time.monotonic()
                except OSError:
                    pass

            threads = [threading.Thread(target=reader, args=(i, s), daemon=True) for i, s in enumerate(socks)]
            for t in threads:
                t.start()
            start = time.monotonic()
            for s, f in zip(socks, frames, strict=True):
                s.sendall(f)
            for t in threads:
                t.join(30)
            pending = stat(admin, "metaprotocol_overload_pending_requests")
            result = {
                "clients": args.clients,
                "calls_per_client": args.calls,
                "max_pending_requests": args.max_pending if args.max_pending is not None else "default",
                "refused_at_once": sum(refused),
                "pending": pending,
                "rejected_counter": stat(admin, "metaprotocol_overload_rejected_requests_total"),
                "rss_idle_mib": round(rss_idle / 2**20, 1),
                "rss_loaded_mib": round(rss_bytes(proc.pid) / 2**20, 1),
                "seconds_to_last_refusal": round(max(last) - start, 2) if any(last) else None,
            }
            for s in socks:
                s.close()
        finally:
            proc.kill()  # SIGTERM would drain: wait for the calls the silent upstream never answers
            proc.wait(10)
    print(json.dumps(result, indent=2))
    (ROOT / "bench/results/overload.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""A proxy in front of two local Redis servers, routed by key prefix, on loopback.

Starts two throwaway ``redis-server`` processes and ``metaprotocol proxy`` with
examples/bootstrap/redis.yaml (ports rewritten to free ones), talks RESP through the proxy,
shows where each key landed, prints the proxy's stats, and stops everything it started.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int) -> None:
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(port)


def command(sock: socket.socket, *args: str) -> bytes:
    sock.sendall(b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args))
    time.sleep(0.05)
    return sock.recv(65536)


def main() -> int:
    if shutil.which("redis-server") is None:
        print("redis-server is not installed: run scripts/install first", file=sys.stderr)
        return 1
    tmp = Path(tempfile.mkdtemp(prefix="mp-demo-"))
    users, main_port, proxy_port, admin = free_port(), free_port(), free_port(), free_port()
    procs = [
        subprocess.Popen(["redis-server", "--port", str(p), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
        for p in (users, main_port)
    ]
    boot = yaml.safe_load((ROOT / "examples/bootstrap/redis.yaml").read_text())
    boot["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] = proxy_port
    for c, port in zip(boot["static_resources"]["clusters"], (users, main_port), strict=True):
        c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["port_value"] = port
    (tmp / "redis.yaml").write_text(yaml.safe_dump(boot))
    proxy = subprocess.Popen(
        [sys.executable, "-m", "metaprotocol.cli", "proxy", "-c", str(tmp / "redis.yaml"), "--admin", f"127.0.0.1:{admin}", "--log-level", "WARNING"],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    procs.append(proxy)
    try:
        for p in (users, main_port, proxy_port, admin):
            wait_port(p)
        print(f"proxy on 127.0.0.1:{proxy_port}: keys 'user:*' -> redis :{users}, others -> redis :{main_port}\n")
        with socket.create_connection(("127.0.0.1", proxy_port)) as s:
            for args in (
                ("PING",),
                ("SET", "user:1", "alice"),
                ("SET", "user:2", "bob"),
                ("SET", "greeting", "hello"),
                ("MGET", "user:1", "greeting", "user:2", "missing"),
                ("DEL", "user:1", "greeting"),
                ("MULTI",),
            ):
                print(f"  {' '.join(args):<40} -> {command(s, *args)!r}")
        for name, port in (("users", users), ("main", main_port)):
            with socket.create_connection(("127.0.0.1", port)) as s:
                print(f"\nredis '{name}' (:{port}) holds: {command(s, 'KEYS', '*')!r}")
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats", timeout=5) as resp:
            stats = [line for line in resp.read().decode().splitlines() if line.startswith(("metaprotocol_route_requests", "metaprotocol_fanout", "metaprotocol_local_answers"))]
        print("\nproxy stats:\n  " + "\n  ".join(stats))
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Real servers for integration tests: started on free loopback ports, stopped afterwards."""

from __future__ import annotations

import shutil
import socket
import subprocess
import struct
import tempfile
import threading
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


class RedisServer:
    """A throwaway ``redis-server`` (Debian package) on a loopback port, no persistence."""

    def __init__(self, password: str | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: run scripts/install")
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="mp-redis-")
        args = [
            binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", self.dir, "--protected-mode", "no",
            "--enable-debug-command", "yes",
        ]  # fmt: skip
        if password:
            args += ["--requirepass", password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ResettingServer:
    """An endpoint that takes each request and resets the connection (RST, no reply): the failure
    after which a request may or may not have been executed, which retries must respect."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    data = conn.recv(65536)
                except OSError:
                    continue
                if data:
                    self.received.append(data)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    def stop(self) -> None:
        self.sock.close()

    def __enter__(self) -> ResettingServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def bootstrap_dict(
    listeners: list[dict[str, object]], clusters: list[dict[str, object]]
) -> dict[str, object]:
    return {"static_resources": {"listeners": listeners, "clusters": clusters}}


def listener(name: str, port: int, codec: str, routes: list[dict[str, object]], **extra: object) -> dict[str, object]:
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "aeraki.meta_protocol_proxy",
                        "typed_config": {
                            "@type": "type.googleapis.com/aeraki.meta_protocol_proxy.v1alpha.MetaProtocolProxy",
                            "stat_prefix": name,
                            "codec": {"name": codec},
                            "route_config": {"name": f"{name}_routes", "routes": routes},
                            **extra,
                        },
                    }
                ]
            }
        ],
    }


def cluster(name: str, ports: list[int], lb_policy: str = "ROUND_ROBIN", **extra: object) -> dict[str, object]:
    return {
        "name": name,
        "connect_timeout": "1s",
        "lb_policy": lb_policy,
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}}}
                        for p in ports
                    ]
                }
            ],
        },
        **extra,
    }




class ZooKeeperServer:
    """A throwaway ZooKeeper (Debian's zookeeper package) on a loopback port, standalone."""

    def __init__(self) -> None:
        if not Path("/usr/share/java/zookeeper.jar").exists():
            raise RuntimeError("ZooKeeper is not installed: run scripts/install")
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="mp-zk-")
        cfg = Path(self.dir) / "zoo.cfg"
        cfg.write_text(
            f"tickTime=2000\ndataDir={self.dir}/data\nclientPort={self.port}\nclientPortAddress=127.0.0.1\n"
            "admin.enableServer=false\n4lw.commands.whitelist=ruok\n"
        )
        java = shutil.which("java") or "/usr/bin/java"
        self.proc = subprocess.Popen(
            [java, "-Xmx256m", "-cp", "/usr/share/java/*", "org.apache.zookeeper.server.quorum.QuorumPeerMain", str(cfg)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.dir,
        )  # fmt: skip
        wait_port(self.port, timeout=60)

    @property
    def hosts(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


class StallingRelay:
    """A TCP relay to ``target`` whose first ``stall`` connections are accepted and read but never
    answered (a server that hung on one connection while new ones would be served)."""

    def __init__(self, target: int, stall: int = 1) -> None:
        self.target = target
        self.stall_left = stall
        self.accepted = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.open: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            self.open.append(conn)
            if self.stall_left > 0:
                self.stall_left -= 1
                threading.Thread(target=self._swallow, args=(conn,), daemon=True).start()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self.open.append(upstream)
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _swallow(conn: socket.socket) -> None:
        try:
            while conn.recv(65536):
                pass
        except OSError:
            pass

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def stop(self) -> None:
        self.sock.close()
        for s in self.open:
            s.close()

    def __enter__(self) -> StallingRelay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

"""Dubbo providers registered in ZooKeeper, as Aeraki's dubbo2istio reads them.

Providers register under ``/dubbo/<interface>/providers`` as URL-encoded ``dubbo://`` URLs, e.g.
``dubbo://10.0.0.5:20880/org.apache.dubbo.demo.DemoService?version=1.0.0&side=provider&...``.
Each interface becomes a ServiceEntry-shaped resource: host = the interface lower-cased, port 20880
named ``tcp-metaprotocol-dubbo``, and one endpoint per provider (at its own port) labelled with the URL's parameters
(``version``, ``group``, ``side``, ``application`` ...), so DestinationRule subsets and MetaRouters
written against the YAML shape apply unchanged.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from aeraki_ctl.resources import Problem, Resource, resource_from_spec

ROOT = "/dubbo"
PORT_NAME = "tcp-metaprotocol-dubbo"
SERVICE_PORT = 20880
"""The service port of every registry service (Dubbo's default): stable whatever the providers'
own ports, so cluster names (``outbound|20880|<subset>|<host>``) do not change as providers come
and go. Each endpoint carries its provider's real port."""
_LABEL_VALUE = re.compile(r"[^A-Za-z0-9_.-]")
_LABEL_KEYS = ("version", "group", "side", "application", "revision", "release", "dubbo", "protocol")


def parse_provider(node: str) -> dict[str, Any] | None:
    """A registry node name (URL-encoded dubbo:// URL) as {interface, address, port, labels}."""
    url = urlsplit(unquote(node))
    if url.scheme != "dubbo" or not url.hostname or not url.port:
        return None
    params = dict(parse_qsl(url.query))
    interface = params.get("interface") or url.path.strip("/")
    if not interface:
        return None
    labels = {k: _LABEL_VALUE.sub("_", params[k])[:63] for k in _LABEL_KEYS if params.get(k)}
    return {"interface": interface, "address": url.hostname, "port": url.port, "labels": labels}


def resources_from_registry(providers: dict[str, list[str]], source: str) -> tuple[list[Resource], list[Problem]]:
    """ServiceEntry-shaped resources from ``{interface: [provider node names]}``."""
    out: list[Resource] = []
    problems: list[Problem] = []
    for interface in sorted(providers):
        parsed = []
        for node in sorted(providers[interface]):
            p = parse_provider(node)
            if p is None:
                problems.append(Problem(source, f"{ROOT}/{interface}/providers", f"not a dubbo:// provider URL: {node[:80]}", fatal=False))
            else:
                parsed.append(p)
        if not parsed:
            continue
        spec = {
            "hosts": [interface.lower()],
            "ports": [{"number": SERVICE_PORT, "name": PORT_NAME, "protocol": "TCP"}],
            "resolution": "STATIC",
            "endpoints": [{"address": p["address"], "ports": {PORT_NAME: p["port"]}, "labels": p["labels"]} for p in parsed],
        }
        out.append(resource_from_spec("ServiceEntry", interface.lower(), "zookeeper", spec, f"{source}{ROOT}/{interface}/providers"))
    return out, problems


class ZooKeeperSource:
    """Reads the Dubbo registry tree; ``read()`` is blocking (the controller runs it in a thread)."""

    def __init__(self, hosts: str, timeout: float = 5.0) -> None:
        try:
            from kazoo.client import KazooClient
        except ImportError as exc:
            from aeraki_ctl.extras import MissingExtra

            raise MissingExtra("zookeeper", "kazoo", "reading a Dubbo registry in ZooKeeper") from exc

        self.hosts = hosts
        self.source = f"zookeeper://{hosts}"
        self.client = KazooClient(hosts=hosts, timeout=timeout)
        self.client.start(timeout=timeout)

    def read(self) -> dict[str, list[str]]:
        """``{interface: [provider node names]}``."""
        from kazoo.exceptions import NoNodeError

        out: dict[str, list[str]] = {}
        try:
            interfaces = self.client.get_children(ROOT)
        except NoNodeError:
            return out
        for interface in interfaces:
            try:
                out[interface] = self.client.get_children(f"{ROOT}/{interface}/providers")
            except NoNodeError:
                continue
        return out

    def close(self) -> None:
        """Disconnect."""
        self.client.stop()
        self.client.close()

"""aeraki-ctl's admin HTTP API: ``/healthz``, ``/readyz``, ``/proxies``, ``/status``, ``/metrics``.

Deliberately tiny, like the proxy's (``metaprotocol.io.admin``): asyncio streams, one GET per
connection, JSON or Prometheus text. ``aeraki-ctl proxy-status`` and ``aeraki-ctl status`` read it.
Bind it to loopback: it has no authentication.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Final

from aeraki_ctl.xds.server import PUSH_BUCKETS, AdsServer
from metaprotocol.xds.status import SHORT_NAMES, short_name

log = logging.getLogger(__name__)
PATHS: Final = ("/healthz", "/readyz", "/proxies", "/status", "/metrics")

StatusProvider = Callable[[], dict[str, object]]
"""Per-object status, served as ``/status``: ``{"Kind ns/name": {"state": ..., "problems": [...]}}``,
or that mapping under an ``objects`` key next to other fields."""


def _alive() -> bool:
    return True


def _no_status() -> dict[str, object]:
    return {}


class AdminServer:
    """The admin API over an ADS server.

    Attributes:
        health: ``/healthz`` is 200 while it returns true (set it to watch the controller task);
            by default always alive.
        status_provider: what ``/status`` serves; by default an empty mapping.
    """

    def __init__(self, ads: AdsServer, health: Callable[[], bool] = _alive, status_provider: StatusProvider = _no_status) -> None:
        self.ads = ads
        self.health = health
        self.status_provider = status_provider
        self.server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (0: any); returns the bound port."""
        from metaprotocol.io.admin import serve_admin

        async def respond(path: str) -> tuple[str, str, bytes]:
            return self.respond(path)

        self.server = await serve_admin(respond, host, port)
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        """Stop listening."""
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    def respond(self, path: str) -> tuple[str, str, bytes]:
        """Status line, content type and body for ``path``."""
        if path == "/healthz":
            if _call_ok(self.health):
                return "200 OK", "text/plain", b"ok\n"
            return "503 Service Unavailable", "text/plain", b"controller not running\n"
        if path == "/readyz":
            if self.ads.published:
                return "200 OK", "text/plain", b"ready\n"
            return "503 Service Unavailable", "text/plain", b"no snapshot published yet\n"
        if path == "/proxies":
            return "200 OK", "application/json", _json({"proxies": self.ads.proxies()})
        if path == "/status":
            try:
                status = self.status_provider()
            except Exception as exc:  # noqa: BLE001 - the API must answer even when the provider fails
                log.exception("status provider failed")
                return "500 Internal Server Error", "application/json", _json({"error": f"{type(exc).__name__}: {exc}"})
            return "200 OK", "application/json", _json(status)
        if path == "/metrics":
            return "200 OK", "text/plain; version=0.0.4", self.metrics_text().encode()
        if path == "/":
            return "200 OK", "text/plain", "".join(f"{p}\n" for p in PATHS).encode()
        return "404 Not Found", "text/plain", b"not found\n"

    def metrics_text(self) -> str:
        """Prometheus text: pushes, push latency, ACKs and NACKs per type, proxies, objects."""
        m = self.ads.metrics
        out: list[str] = []

        def family(name: str, kind: str, help_: str) -> None:
            out.append(f"# HELP {name} {help_}")
            out.append(f"# TYPE {name} {kind}")

        for name, counter, help_ in (
            ("aeraki_ctl_xds_pushes_total", m.pushes, "xDS responses sent to proxies, per resource type."),
            ("aeraki_ctl_xds_acks_total", m.acks, "xDS responses ACKed by proxies, per resource type."),
            ("aeraki_ctl_xds_nacks_total", m.nacks, "xDS responses NACKed (rejected) by proxies, per resource type."),
        ):
            family(name, "counter", help_)
            # by short name: every type served (Envoy's route tables count as RDS, secrets as Secret)
            totals = dict.fromkeys(SHORT_NAMES.values(), 0)
            for type_url, n in sorted(counter.items()):
                totals[short_name(type_url)] = totals.get(short_name(type_url), 0) + n
            out.extend(f'{name}{{type="{short}"}} {n}' for short, n in totals.items())
        family("aeraki_ctl_xds_push_duration_seconds", "histogram", "From a snapshot's publication (or the request that asked) to the response sent.")
        for bound, count in zip(PUSH_BUCKETS, m.push_buckets, strict=True):  # cumulative: a push counts in every bound it fits
            out.append(f'aeraki_ctl_xds_push_duration_seconds_bucket{{le="{bound}"}} {count}')
        out.append(f'aeraki_ctl_xds_push_duration_seconds_bucket{{le="+Inf"}} {m.push_count}')
        out.append(f"aeraki_ctl_xds_push_duration_seconds_sum {m.push_sum:.6f}")
        out.append(f"aeraki_ctl_xds_push_duration_seconds_count {m.push_count}")
        family("aeraki_ctl_snapshots_published_total", "counter", "Snapshots published with a change.")
        out.append(f"aeraki_ctl_snapshots_published_total {m.snapshots}")
        family("aeraki_ctl_connected_proxies", "gauge", "ADS streams open now.")
        out.append(f"aeraki_ctl_connected_proxies {len(self.ads.streams)}")
        family("aeraki_ctl_proxies_nacked", "gauge", "Connected proxies whose last response of some type was NACKed.")
        out.append(f"aeraki_ctl_proxies_nacked {sum(1 for i in self.ads.streams.values() if any(w.state == 'NACKED' for w in i.watches.values()))}")
        family("aeraki_ctl_ready", "gauge", "1 once the first snapshot is published.")
        out.append(f"aeraki_ctl_ready {int(self.ads.published)}")
        family("aeraki_ctl_healthy", "gauge", "1 while the controller runs.")
        out.append(f"aeraki_ctl_healthy {int(_call_ok(self.health))}")
        election = leader_election(self.status_provider)
        if election is not None:
            family("aeraki_ctl_leader", "gauge", "1 while this replica holds the leader-election Lease (and writes MetaRouter status).")
            out.append(f'aeraki_ctl_leader{{lease="{election.get("lease", "")}"}} {int(bool(election.get("leader")))}')
        states = object_states(self.status_provider)
        if states is not None:
            family("aeraki_ctl_objects", "gauge", "Objects by lifecycle state at the last sync (accepted, rejected, serving-last-valid).")
            out.extend(f'aeraki_ctl_objects{{state="{state}"}} {n}' for state, n in sorted(states.items()))
        return "\n".join(out) + "\n"


def objects_of(status: dict[str, object]) -> dict[str, object]:
    """The per-object mapping of a ``/status`` answer (at its top level, or under ``objects``)."""
    inner = status.get("objects")
    return inner if isinstance(inner, dict) else status


def leader_election(provider: StatusProvider) -> dict[str, object] | None:
    """The ``leader_election`` field of ``/status`` (serve --kubernetes); None without one."""
    try:
        value = provider().get("leader_election")
    except Exception:  # noqa: BLE001 - metrics must render anyway
        return None
    return value if isinstance(value, dict) else None


def object_states(provider: StatusProvider) -> dict[str, int] | None:
    """How many objects are in each state; None when the provider fails."""
    try:
        objects = objects_of(provider())
    except Exception:  # noqa: BLE001 - metrics must render anyway
        return None
    counts: dict[str, int] = {"accepted": 0, "rejected": 0, "serving-last-valid": 0}
    for value in objects.values():
        if isinstance(value, dict) and isinstance(value.get("state"), str):
            counts[value["state"]] = counts.get(value["state"], 0) + 1
    return counts


def _call_ok(check: Callable[[], bool]) -> bool:
    try:
        return bool(check())
    except Exception:  # noqa: BLE001 - a failing check is a failed check
        return False


def _json(value: object) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True, default=str) + "\n").encode()

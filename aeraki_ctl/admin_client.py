"""``aeraki-ctl proxy-status`` and ``aeraki-ctl status``: read the admin API and print it."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import TextIO

from aeraki_ctl.admin import objects_of

TYPES = ("CDS", "LDS", "EDS", "RDS")  # istioctl proxy-status's column order
ACCEPTED = "accepted"


class AdminUnreachable(Exception):
    """The admin API did not answer (or not with JSON)."""


def fetch(admin: str, path: str, timeout: float = 5.0) -> object:
    """GET ``http://ADMIN/PATH`` as JSON."""
    url = f"http://{admin}{path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - http to an operator-given address
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise AdminUnreachable(f"{url}: HTTP {exc.code} {exc.read().decode(errors='replace').strip()}") from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise AdminUnreachable(f"cannot read {url}: {reason}") from exc


def proxy_status(admin: str, out: TextIO) -> int:
    """One line per connected proxy: NAME, DATA-PLANE (metaprotocol or envoy), then CDS/LDS/EDS/RDS
    state; NACK reasons below."""
    data = fetch(admin, "/proxies")
    proxies = data.get("proxies", []) if isinstance(data, dict) else []
    print(render_proxies(proxies if isinstance(proxies, list) else []), end="", file=out)
    return 0


def render_proxies(proxies: list[object]) -> str:
    """The proxy-status table."""
    rows: list[tuple[str, ...]] = [("NAME", "DATA-PLANE", *TYPES, "PEER", "CONNECTED SINCE")]
    notes: dict[int, list[str]] = {}
    for p in proxies:
        if not isinstance(p, dict):
            continue
        types = p.get("types") or {}
        states = []
        for short in TYPES:
            t = types.get(short) if isinstance(types, dict) else None
            states.append(str(t.get("state", "NOT SENT")) if isinstance(t, dict) else "NOT SENT")
            nack = t.get("nack") if isinstance(t, dict) else None
            if isinstance(t, dict) and t.get("state") == "NACKED" and isinstance(nack, dict):
                notes.setdefault(len(rows), []).append(f"{short} NACKED version {nack.get('version') or '-'}: {nack.get('message', '')}")
        rows.append((str(p.get("node_id") or "-"), str(p.get("data_plane") or "-"), *states, str(p.get("peer", "")), str(p.get("connected_since", ""))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for i, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        lines.extend(f"    {note}" for note in notes.get(i, []))
    if len(rows) == 1:
        lines.append("(no proxy connected)")
    return "\n".join(lines) + "\n"


def object_status(admin: str, out: TextIO) -> int:
    """One line per object (state, problem count), each problem indented; 1 if any is not accepted."""
    data = fetch(admin, "/status")
    if not isinstance(data, dict):
        raise AdminUnreachable(f"http://{admin}/status: expected a JSON object")
    text, bad = render_status(data)
    print(text, end="", file=out)
    return 1 if bad else 0


def render_status(data: dict[str, object]) -> tuple[str, int]:
    """The status listing, and how many objects are not accepted."""
    objects = objects_of(data)
    rows: list[tuple[str, str, str]] = [("OBJECT", "STATE", "PROBLEMS")]
    problems: dict[int, list[str]] = {}
    bad = 0
    for ref, value in sorted(objects.items()):
        entry = value if isinstance(value, dict) else {}
        state = str(entry.get("state", "unknown"))
        found = entry.get("problems") or []
        found = found if isinstance(found, list) else [found]
        if state != ACCEPTED:
            bad += 1
        problems[len(rows)] = [_problem_text(p) for p in found]
        rows.append((ref, state, str(len(found))))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = []
    for i, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        lines.extend(f"    {p}" for p in problems.get(i, []))
    if len(rows) == 1:
        lines.append("(no objects)")
    extra = data.get("file_problems") if objects is not data else None
    if isinstance(extra, list) and extra:
        lines.append("file problems:")
        lines.extend(f"    {p}" for p in extra)
    envoy = data.get("envoy") if objects is not data else None
    if isinstance(envoy, dict) and envoy:
        lines.append("for Envoy nodes:")
        for ref, found in sorted(envoy.items()):
            lines.append(f"  {ref}")
            lines.extend(f"    {p}" for p in (found if isinstance(found, list) else [found]))
    return "\n".join(lines) + "\n", bad


def _problem_text(p: object) -> str:
    if isinstance(p, dict):
        where = " ".join(str(p[k]) for k in ("file", "path", "field") if p.get(k))
        why = p.get("reason") or p.get("message")
        if why is not None:
            return f"{where}: {why}" if where else str(why)
        return json.dumps(p, sort_keys=True)
    return str(p)

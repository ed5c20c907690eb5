"""What the peer comparisons share: the C load generator, CPU accounting, the result table."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")
WARMUP = 0.5  # seconds loadgen.c runs before it starts counting


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def build_loadgen(tmp: Path) -> Path:
    """Compile bench/loadgen.c with the machine's gcc."""
    exe = tmp / "loadgen"
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(ROOT / "bench/loadgen.c")], check=True)
    return exe


def run_case(
    loadgen: Path,
    port: int,
    pid: int | None,
    *,
    connections: int,
    depth: int,
    seconds: float,
    request_hex: str,
    framing: tuple[int, int, int],
    request_id: tuple[int, int],
) -> dict[str, object]:
    """One closed-loop run; CPU per request of the process ``pid`` (a proxy), when given.

    ``framing`` is (length offset, length size, length adjustment), ``request_id`` (offset, size).
    """
    before = cpu_seconds(pid) if pid else 0.0
    argv = [str(loadgen), "127.0.0.1", str(port), str(connections), str(depth), str(seconds), request_hex, *map(str, framing), *map(str, request_id)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    cpu = (cpu_seconds(pid) - before) if pid else 0.0
    result: dict[str, object] = json.loads(out.stdout) if out.returncode == 0 else {"rps": 0, "p50_ms": 0, "p99_ms": 0, "requests": 0, "errors": out.stderr.strip()}
    # CPU is read over warm-up + measurement; requests are counted over the measurement only.
    served = (float(result["rps"]) or 1.0) * (seconds + WARMUP)  # type: ignore[arg-type]
    result["cpu_us_per_request"] = round(cpu / served * 1e6, 2) if pid and result["rps"] else 0.0
    return result


def print_table(
    rows: list[dict[str, object]],
    reference: Callable[[dict[str, object]], bool],
    label: str,
    out: Path,
    group: Callable[[dict[str, object]], str] = lambda row: "",
) -> None:
    """Print rows with each one's ratio to the best reference row at the same depth (and in the
    same ``group``, e.g. the same transport); save JSON."""
    print(f"{'target':<24}{'in flight':>10}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'CPU us/req':>12}{label:>18}")
    for row in rows:
        refs = [r for r in rows if reference(r) and r["in_flight"] == row["in_flight"] and group(r) == group(row)]
        ref = max(refs, key=lambda r: float(r["rps"]), default=None)  # type: ignore[arg-type]
        ratio = f"{float(row['rps']) / float(ref['rps']):.2f}x" if ref and ref["rps"] else "-"  # type: ignore[arg-type]
        print(f"{row['target']!s:<24}{row['in_flight']!s:>10}{float(row['rps']):>10.0f}{float(row['p50_ms']):>9.2f}{float(row['p99_ms']):>9.2f}{row['cpu_us_per_request']!s:>12}{ratio:>18}")  # type: ignore[arg-type]
    out.write_text(json.dumps(rows, indent=2) + "\n")

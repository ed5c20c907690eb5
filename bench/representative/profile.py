"""py-spy profiles of our proxy under a mix: record raw stacks, rank functions by self time."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def pyspy_binary() -> str | None:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return found if Path(found).exists() else None


def record(pid: int, seconds: float, out: Path, rate: int = 200) -> subprocess.Popen[bytes]:
    """Start sampling ``pid`` for ``seconds`` into ``out`` (py-spy's raw, collapsed-stack format),
    native frames included, so time in a system call (``writev``, ``read`` in libc) is told apart
    from the Python function that made it."""
    exe = pyspy_binary()
    assert exe, "py-spy is not installed: run scripts/bench-install"
    argv = [exe, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))), "--rate", str(rate), "--format", "raw", "--native", "--output", str(out)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _short(path: str) -> str:
    for marker in ("/metaprotocol/", "/codecs/", "/site-packages/", "/lib/python3"):
        at = path.find(marker)
        if at >= 0:
            return path[at + 1 :]
    return path


AREAS = (("codecs/", "codecs (metaprotocol_codecs)"), ("metaprotocol/proxy/", "proxy core (metaprotocol/proxy)"),
         ("metaprotocol/router/", "router"), ("metaprotocol/", "rest of metaprotocol"), ("libc", "system calls (libc)"),
         ("uvloop", "event loop (uvloop)"), ("asyncio/", "event loop (uvloop)"))  # fmt: skip


_MYPYC_CODEC = ("fastscan", "dubbo___", "thrift___", "redis___", "requests___", "resp___", "hessian2")


def area(key: str) -> str:
    if key.startswith("CPyDef_"):  # a function compiled by mypyc: CPyDef_<module>___<name>
        return "codecs (metaprotocol_codecs)" if key[7:].startswith(_MYPYC_CODEC) else "proxy core (compiled)"
    if key.startswith(("CPy", "Py_", "_Py")) or "mypyc" in key:
        return "mypyc runtime and CPython helpers"
    if key.startswith(("sre_", "_sre_")):
        return "regular expressions (re)"
    return next((name for marker, name in AREAS if marker in key), "other (interpreter, stdlib)")


def _name(func: str, file: str) -> str:
    if func.startswith("CPyDef_") and "mypyc" in file:
        return func[7:].replace("___", ".") + " [mypyc]"
    if "mypyc" in file:
        return f"{func} (mypyc runtime)"
    return f"{func} ({_short(file)})"


def areas(raw: Path) -> dict[str, float]:
    """Self time by area of the code, in % of all samples."""
    total, rows = top_self(raw, 10_000)
    out: Counter[str] = Counter()
    for row in rows:
        key = str(row["function"])
        out[area("CPyDef_" + key if key.endswith(" [mypyc]") else key)] += int(str(row["samples"]))
    return {k: round(100 * v / total, 1) for k, v in out.most_common()} if total else {}


def top_self(raw: Path, n: int = 15) -> tuple[int, list[dict[str, object]]]:
    """The total samples and the ``n`` functions with the most self samples (the innermost frame
    of each sampled stack), each with its share of all samples."""
    self_counts: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        leaf = stack.split(";")[-1]
        m = _FRAME.match(leaf)
        key = _name(m["func"], m["file"]) if m else leaf
        self_counts[key] += int(count)
        total += int(count)
    rows = [{"function": k, "samples": c, "self_pct": round(100 * c / total, 1)} for k, c in self_counts.most_common(n)] if total else []
    return total, rows

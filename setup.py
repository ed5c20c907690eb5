"""Builds the hot-path modules with mypyc where a C compiler and the Python headers exist.

The metadata is in pyproject.toml; this file only adds the compiled extensions. The modules to
compile are listed in ``[tool.metaprotocol.native]``; each stays importable as pure Python (the
reference), and ``metaprotocol._native`` falls back to it when the build is absent, stale or
disabled (``METAPROTOCOL_PURE_PYTHON=1``). A failed build is a warning, never a failed install.

    python setup.py build_ext --inplace      # what scripts/install runs for the editable install
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tomllib
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
STAMP = ROOT / "metaprotocol" / "_native_build.json"


def _sources() -> list[str]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return list(tomllib.load(f)["tool"]["metaprotocol"]["native"]["modules"])


def _module_path(source: str) -> str:
    """The path mypyc reads ``source`` from, under its import name (codecs/ is installed as
    metaprotocol_codecs, so it is compiled through a link of that name)."""
    if source.startswith("codecs/"):
        link = ROOT / "build" / "native-src" / "metaprotocol_codecs"
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(ROOT / "codecs", target_is_directory=True)
        return str(link.relative_to(ROOT) / source.removeprefix("codecs/"))
    return source


def _native_extensions() -> list[object]:
    if os.environ.get("METAPROTOCOL_PURE_PYTHON"):
        return []
    build_commands = {"build_ext", "build", "bdist_wheel", "editable_wheel", "install", "develop"}
    if not build_commands & set(sys.argv):
        return []  # metadata queries (egg_info, sdist ...) compile nothing
    try:
        from mypyc.build import mypycify
    except ImportError:
        print("metaprotocol: mypyc is not installed: pure-Python modules only", file=sys.stderr)
        return []
    sources = _sources()
    try:
        options = ["--config-file", "setup.cfg", "--cache-dir", "build/native-mypy-cache"]  # not the checkers' cache
        extensions = mypycify([*options, *(_module_path(s) for s in sources)], opt_level="3", debug_level="0", group_name="metaprotocol_native")
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - a failed build falls back to pure Python
        print(f"metaprotocol: the native build failed ({exc}): pure-Python modules only", file=sys.stderr)
        return []
    digests = {s: hashlib.sha256((ROOT / s).read_bytes()).hexdigest() for s in sources}
    STAMP.write_text(json.dumps({"compiler": "mypyc", "sources": digests}, indent=1, sort_keys=True) + "\n")
    return extensions


setup(ext_modules=_native_extensions())

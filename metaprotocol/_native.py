"""Chooses between the compiled (mypyc) hot-path modules and their pure-Python sources.

``setup.py`` compiles the modules listed in pyproject.toml's ``[tool.metaprotocol.native]`` and
records a digest of each source it compiled (``_native_build.json``). The compiled modules are
one group: they call each other directly, so they are used all together or not at all. They are
not used (the sources are imported instead) when:

* the build is absent (no compiler, or ``METAPROTOCOL_PURE_PYTHON`` set at build time);
* ``METAPROTOCOL_PURE_PYTHON=1`` is set at run time (the reference path, e.g. for tests);
* any compiled source changed since the build (a stale build never runs old code).

``install`` runs when ``metaprotocol`` is first imported, before any compiled module is.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

ENV = "METAPROTOCOL_PURE_PYTHON"
_STAMP = Path(__file__).with_name("_native_build.json")
_PACKAGES = ("metaprotocol.", "metaprotocol_codecs.")
_state = {"mode": "pure", "reason": "not built"}


class _SourcesFirst(importlib.abc.MetaPathFinder):
    """Imports a project module from its ``.py`` source even where a compiled one sits beside it."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith(_PACKAGES):
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.origin is None or not spec.origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)):
            return None
        source = Path(spec.origin).parent / (fullname.rpartition(".")[2] + ".py")
        return importlib.util.spec_from_file_location(fullname, source) if source.exists() else None


def _package_dirs() -> dict[str, Path]:
    here = Path(__file__).resolve().parent
    dirs = {"metaprotocol/": here}
    codecs = importlib.util.find_spec("metaprotocol_codecs")
    if codecs is not None and codecs.submodule_search_locations:
        dirs["codecs/"] = Path(next(iter(codecs.submodule_search_locations)))
    return dirs


def _stale(sources: dict[str, str]) -> str:
    """Why the build cannot be used (a source changed or a compiled module is missing), or ""."""
    dirs = _package_dirs()
    for source, digest in sources.items():
        prefix = next((p for p in dirs if source.startswith(p)), None)
        if prefix is None:
            continue  # a package not installed here (its compiled module is not either)
        path = dirs[prefix] / source.removeprefix(prefix)
        try:
            if hashlib.sha256(path.read_bytes()).hexdigest() != digest:
                return f"{source} changed since the native build (rerun scripts/install)"
        except OSError:
            return f"{source} is missing"
        if not any(path.with_suffix(suffix).exists() for suffix in importlib.machinery.EXTENSION_SUFFIXES):
            return f"the compiled {source} is missing (rerun scripts/install)"
    return ""


def install() -> None:
    """Decide once per process which modules load; see the module docstring."""
    if any(isinstance(f, _SourcesFirst) for f in sys.meta_path) or _state["mode"] == "compiled":
        return
    if os.environ.get(ENV):
        _state.update(mode="pure", reason=f"{ENV} is set")
        sys.meta_path.insert(0, _SourcesFirst())
        return
    try:
        built = json.loads(_STAMP.read_text())
    except (OSError, ValueError):
        _state.update(mode="pure", reason="not built")
        return
    stale = _stale(built.get("sources", {}))
    if stale:
        _state.update(mode="pure", reason=stale)
        sys.meta_path.insert(0, _SourcesFirst())
        return
    library = _group_library()
    if library is None:
        _state.update(mode="pure", reason="the compiled modules' shared library is missing (rerun scripts/install)")
        sys.meta_path.insert(0, _SourcesFirst())
        return
    _state.update(mode="compiled", reason=str(built.get("compiler", "")))


_GROUP = "metaprotocol_native__mypyc"  # setup.py's group_name, as mypyc names its shared library


def _group_library() -> ModuleType | None:
    """The compiled modules' shared library, loaded from beside the package when the package is
    not on ``sys.path`` itself (an editable install); None when it is missing."""
    if _GROUP in sys.modules:
        return sys.modules[_GROUP]
    spec = importlib.machinery.PathFinder.find_spec(_GROUP)
    if spec is None:
        root = Path(__file__).resolve().parent.parent
        found = [root / (_GROUP + suffix) for suffix in importlib.machinery.EXTENSION_SUFFIXES if (root / (_GROUP + suffix)).exists()]
        if not found:
            return None
        spec = importlib.util.spec_from_file_location(_GROUP, found[0])
    if spec is None or spec.loader is None:
        return None
    library = importlib.util.module_from_spec(spec)
    sys.modules[_GROUP] = library
    spec.loader.exec_module(library)
    return library


def mode() -> tuple[str, str]:
    """("compiled" or "pure", why): what this process runs."""
    return _state["mode"], _state["reason"]


def compiled_modules() -> list[str]:
    """The project modules loaded from compiled code in this process."""
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    return sorted(
        name
        for name, module in list(sys.modules.items())
        if name.startswith(_PACKAGES) and str(getattr(module, "__file__", "") or "").endswith(suffixes)
    )

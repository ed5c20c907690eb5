"""The layering rule of docs/architecture.md, checked on the source (not on hope)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SANS_IO = ["metaprotocol/spi", "metaprotocol/router", "metaprotocol/cluster", "metaprotocol/proxy", "metaprotocol/config", "codecs"]
FORBIDDEN_IN_SANS_IO = {"asyncio", "socket", "selectors", "grpc", "time", "logging", "uvloop", "threading"}


def _imports(path: Path) -> set[str]:
    source = path.read_text()
    try:
        tree = ast.parse(source, str(path))
    except SystemError:  # CPython 3.11.7 bug: recursion counter shared with other threads
        tree = ast.parse(source, str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("folder", SANS_IO)
def test_sans_io_layers_import_no_io(folder: str) -> None:
    for path in _files(folder):
        bad = {n for n in _imports(path) if n.split(".")[0] in FORBIDDEN_IN_SANS_IO}
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_codecs_use_only_the_spi() -> None:
    for path in _files("codecs"):
        for name in _imports(path):
            if name.startswith("metaprotocol") and not name.startswith("metaprotocol_codecs"):
                assert name == "metaprotocol.spi" or name.startswith("metaprotocol.spi."), f"{path}: {name}"


def test_core_never_imports_codecs_or_controller() -> None:
    for path in _files("metaprotocol"):
        for name in _imports(path):
            assert not name.startswith(("metaprotocol_codecs", "aeraki_ctl")), f"{path}: {name}"


def test_spi_depends_on_stdlib_only() -> None:
    for path in _files("metaprotocol/spi"):
        for name in _imports(path):
            root = name.split(".")[0]
            # mypy_extensions: mypyc_attr marks compiled classes plugins may subclass (a no-op in pure Python)
            assert root in {"__future__", "abc", "collections", "dataclasses", "enum", "typing", "metaprotocol", "mypy_extensions"}, f"{path}: {name}"

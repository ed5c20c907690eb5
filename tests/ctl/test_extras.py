"""kazoo and redis are extras: a feature that needs one says which extra to install."""

from __future__ import annotations

import builtins
import tomllib
from pathlib import Path
from typing import Any

import pytest

from aeraki_ctl import cli

ROOT = Path(__file__).resolve().parents[2]


def test_kazoo_and_redis_are_extras_not_dependencies() -> None:
    with open(ROOT / "pyproject.toml", "rb") as f:
        project = tomllib.load(f)["project"]
    deps = " ".join(project["dependencies"])
    assert "kazoo" not in deps and "redis" not in deps
    assert project["optional-dependencies"]["zookeeper"] == ["kazoo>=2.9"]
    assert project["optional-dependencies"]["ratelimit"] == ["redis>=5"]


@pytest.fixture
def without(monkeypatch: pytest.MonkeyPatch) -> Any:
    def hide(prefix: str) -> None:
        real = builtins.__import__

        def fake(name: str, *args: Any, **kwargs: Any) -> Any:
            if name == prefix or name.startswith(prefix + "."):
                raise ImportError(f"No module named {name!r}")
            return real(name, *args, **kwargs)

        monkeypatch.setattr(builtins, "__import__", fake)

    return hide


def test_serve_with_zookeeper_names_the_extra_when_kazoo_is_missing(tmp_path: Path, without: Any, capsys: pytest.CaptureFixture[str]) -> None:
    without("kazoo")
    code = cli.main(["serve", "--config-dir", str(tmp_path), "--xds-address", "127.0.0.1:0", "--zookeeper", "127.0.0.1:1"])
    assert code == 2
    assert "pip install 'metaprotocol[zookeeper]'" in capsys.readouterr().err


def test_ratelimit_names_the_extra_when_redis_is_missing(tmp_path: Path, without: Any, capsys: pytest.CaptureFixture[str]) -> None:
    without("redis")
    config = tmp_path / "rl.yaml"
    config.write_text("domain: d\ndescriptors: []\n")
    code = cli.main(["ratelimit", "--config", str(config), "--address", "127.0.0.1:0"])
    assert code == 2
    assert "pip install 'metaprotocol[ratelimit]'" in capsys.readouterr().err

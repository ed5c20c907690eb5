"""The Envoy snapshot builder with the real translators: a listener Envoy cannot express keeps its
last version only while its mesh security is the current one, a failed rendering changes nothing,
and moved listeners take their authorization's ports with them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac_pb2

from aeraki_ctl.envoy import snapshot as envoy_snapshot
from aeraki_ctl.envoy.snapshot import NOT_SERVED, SERVING, SERVING_LAST, EnvoySnapshotBuilder
from aeraki_ctl.incremental import IncrementalTranslator
from aeraki_ctl.resources import load_directory
from metaprotocol.xds import convert

ROOT = Path(__file__).resolve().parents[2]
HOST = "org.apache.dubbo.samples.basic.api.demoservice"
LISTENER = f"{HOST}_20880"


def peer_authentication(mode: str) -> str:
    return f"apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: default, namespace: meta-dubbo}}\nspec:\n  mtls: {{mode: {mode}}}\n"


def mutated(folder: Path) -> None:
    path = folder / "metarouter.yaml"
    router = yaml.safe_load(path.read_text())
    router["spec"]["routes"][0]["requestMutation"] = [{"key": "x-mesh", "value": "1"}]  # dubbo_proxy cannot: fatal for Envoy
    path.write_text(yaml.safe_dump(router))


class Plane:
    def __init__(self, folder: Path, port_offset: int = 0) -> None:
        self.folder, self.translator, self.builder = folder, IncrementalTranslator(), EnvoySnapshotBuilder(port_offset=port_offset)

    def sync(self) -> dict[str, str]:
        self.translator(load_directory(self.folder))
        self.builder.build(self.translator.outputs, self.translator.take_changes()[0])
        return {name: v.state for verdicts in self.builder.verdicts.values() for name, v in verdicts.items()}

    def listener(self) -> listener_pb2.Listener:
        return listener_pb2.Listener.FromString(self.builder.snapshot.of(convert.LISTENER_TYPE)[LISTENER].packed.value)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "examples/aeraki/dubbo-demo", tmp_path / "demo")
    return tmp_path / "demo"


def test_a_kept_listener_never_keeps_stale_security(folder: Path) -> None:
    (folder / "pa.yaml").write_text(peer_authentication("PERMISSIVE"))
    plane = Plane(folder)
    assert plane.sync() == {LISTENER: SERVING}
    assert [c.filter_chain_match.transport_protocol for c in plane.listener().filter_chains] == ["tls", "raw_buffer"]
    mutated(folder)
    assert plane.sync() == {LISTENER: SERVING_LAST}  # the same security: the last translatable version serves
    (folder / "pa.yaml").write_text(peer_authentication("STRICT"))
    assert plane.sync() == {LISTENER: NOT_SERVED}  # it would keep accepting plaintext: not served instead
    assert LISTENER not in plane.builder.snapshot.of(convert.LISTENER_TYPE)
    [verdict] = plane.builder.verdicts[HOST].values()
    assert any("other TLS, authorization or connection-limit settings" in g.reason for g in verdict.gaps)


def test_a_failed_rendering_changes_nothing(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plane = Plane(folder)
    plane.sync()
    before = plane.builder.snapshot
    (folder / "service.yaml").write_text((folder / "service.yaml").read_text().replace("20882", "20883"))

    def boom(*args: object, **kwargs: object) -> object:
        raise RuntimeError("render failed")

    monkeypatch.setattr(envoy_snapshot, "translate_host", boom)
    plane.translator(load_directory(folder))
    touched = plane.translator.take_changes()[0]
    with pytest.raises(RuntimeError):
        plane.builder.build(plane.translator.outputs, touched)
    assert plane.builder.snapshot is before
    monkeypatch.undo()
    retried = plane.builder.build(plane.translator.outputs, touched)  # what the controller does next sync
    fresh = EnvoySnapshotBuilder().build(plane.translator.outputs, list(plane.translator.outputs))
    assert {t: {n: r.version for n, r in retried.of(t).items()} for t in fresh.resources} == {t: {n: r.version for n, r in fresh.of(t).items()} for t in fresh.resources}
    assert retried.versions == fresh.versions


def test_envoy_port_offset_moves_port_rules_too(folder: Path) -> None:
    (folder / "deny.yaml").write_text("""apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-port, namespace: meta-dubbo}
spec:
  action: DENY
  rules: [{when: [{key: destination.port, values: ["20880"]}]}]
""")
    plane = Plane(folder, port_offset=1000)
    assert plane.sync() == {LISTENER: SERVING}
    msg = plane.listener()
    assert msg.address.socket_address.port_value == 21880
    [rbac_filter] = [f for f in msg.filter_chains[0].filters if f.name == "envoy.filters.network.rbac"]
    config = network_rbac_pb2.RBAC()
    rbac_filter.typed_config.Unpack(config)
    assert "destination_port: 21880" in str(config) and "20880" not in str(config).replace("21880", "")

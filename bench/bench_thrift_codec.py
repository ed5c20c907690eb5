"""Thrift header decode per message for each transport x protocol, and thriftpy2's full decode."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import pytest
import thriftpy2
from thriftpy2.protocol import TBinaryProtocol, TCompactProtocol
from thriftpy2.transport import TMemoryBuffer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from metaprotocol.spi import ReadBuffer  # noqa: E402
from metaprotocol_codecs.thrift import ThriftCodecFactory  # noqa: E402
from tests.vectors import load, vectors_dir  # noqa: E402

ALL = load("thrift/messages.json")
VECTORS = {v["id"]: v for v in ALL}
# One CALL of updateUser (a User struct argument) per transport x protocol.
CASES = sorted(
    {(v["transport"], v["protocol"]): v["id"] for v in ALL if v["message"]["type"] == "CALL" and v["message"]["name"] == "updateUser"}.values()
)


@pytest.mark.parametrize("vid", [c for c in CASES if c in VECTORS])
def test_decode_to_routing_metadata(benchmark: object, vid: str) -> None:
    data = bytes.fromhex(VECTORS[vid]["hex"])
    codec = ThriftCodecFactory().server_codec()
    codec.decode(ReadBuffer(data))  # detection happens once per connection
    msg = benchmark(lambda: codec.decode(ReadBuffer(data)))  # type: ignore[operator]
    assert msg.metadata["method"] == "updateUser"


def _idl() -> object:
    path = Path(tempfile.mkdtemp()) / "oracle.thrift"
    path.write_text(json.loads((vectors_dir() / "thrift/messages.json").read_text())["idl"])
    return thriftpy2.load(str(path), module_name="bench_oracle_thrift")


@pytest.mark.parametrize(("vid", "proto"), [("buffered-binary-strict-call-updateUser", TBinaryProtocol), ("buffered-compact-call-updateUser", TCompactProtocol)])
def test_reference_thriftpy2_full_decode(benchmark: object, vid: str, proto: type) -> None:
    if vid not in VECTORS:
        pytest.skip("vector missing")
    idl = _idl()
    data = bytes.fromhex(VECTORS[vid]["hex"])

    def decode() -> object:
        p = proto(TMemoryBuffer(data))
        p.read_message_begin()
        args = idl.UserService.updateUser_args()  # type: ignore[attr-defined]
        p.read_struct(args)
        return args

    args = benchmark(decode)  # type: ignore[operator]
    assert args.user is not None

"""Regenerate the committed Python code for protos/ (``scripts/genproto``).

xds-protos ships Envoy's generated modules but no .proto sources, so the imports are resolved from
descriptors: every needed module's FileDescriptor (dependencies first) is copied into a
FileDescriptorSet handed to protoc as ``--descriptor_set_in``.
"""

from __future__ import annotations

import importlib
import sys
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FileDescriptor
from grpc_tools import protoc

HERE = Path(__file__).resolve().parent
DEPENDENCY_MODULES = (
    "envoy.config.accesslog.v3.accesslog_pb2",
    "envoy.config.core.v3.base_pb2",
    "envoy.config.core.v3.config_source_pb2",
    "envoy.config.ratelimit.v3.rls_pb2",
    "envoy.config.route.v3.route_components_pb2",
    "envoy.type.v3.percent_pb2",
    "envoy.type.v3.token_bucket_pb2",
    "google.protobuf.any_pb2",
    "google.protobuf.duration_pb2",
    "google.protobuf.struct_pb2",
    "google.protobuf.wrappers_pb2",
)


def sources() -> list[str]:
    """Our .proto files, relative to protos/."""
    return sorted(str(p.relative_to(HERE)) for p in HERE.rglob("*.proto"))


def _collect(fd: FileDescriptor, out: descriptor_pb2.FileDescriptorSet, seen: set[str]) -> None:
    if fd.name in seen:
        return
    for dep in fd.dependencies:
        _collect(dep, out, seen)
    seen.add(fd.name)
    proto = descriptor_pb2.FileDescriptorProto()
    fd.CopyToProto(proto)
    out.file.append(proto)


def generate(out_dir: Path) -> None:
    """Write ``*_pb2.py`` and ``*_pb2.pyi`` for every source under ``out_dir``."""
    fds = descriptor_pb2.FileDescriptorSet()
    seen: set[str] = set()
    for name in DEPENDENCY_MODULES:
        _collect(importlib.import_module(name).DESCRIPTOR, fds, seen)
    with tempfile.TemporaryDirectory() as tmp:
        deps = Path(tmp) / "deps.pb"
        deps.write_bytes(fds.SerializeToString())
        args = ["grpc_tools.protoc", f"--descriptor_set_in={deps}", f"-I{HERE}", f"--python_out={out_dir}", f"--pyi_out={out_dir}", *sources()]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)

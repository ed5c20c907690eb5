"""Dubbo codec costs per frame: routing metadata, id rewrite, mutation; hessian-codec as reference."""

from __future__ import annotations

import hessian_codec

from metaprotocol.spi import ReadBuffer
from metaprotocol_codecs.dubbo import DubboCodecFactory, JavaObject, Long, wire
from metaprotocol_codecs.dubbo.hessian2 import Hessian2Reader, loads_all

USER = JavaObject("com.example.User", {"id": Long(42), "name": "alice", "email": "alice@example.com", "age": 31})
INVOCATION = wire.Invocation(
    path="org.apache.dubbo.samples.basic.api.DemoService",
    method="updateUser",
    param_desc="Lcom/example/User;Ljava/lang/String;I",
    args=[USER, "reason: profile edit", 7],
    attachments={
        "path": "org.apache.dubbo.samples.basic.api.DemoService",
        "interface": "org.apache.dubbo.samples.basic.api.DemoService",
        "version": "1.0.0",
        "group": "demo",
        "timeout": 3000,
        "application": "bench-consumer",
    },
    version="1.0.0",
)
FRAME = wire.build_request(1234, INVOCATION)
BODY = FRAME[16:]


def test_decode_request_to_routing_metadata(benchmark: object) -> None:
    """Steady state: the connection's previous request had the same head and attachments."""
    codec = DubboCodecFactory().server_codec()
    msg = benchmark(lambda: codec.decode(ReadBuffer(FRAME)))  # type: ignore[operator]
    assert msg.metadata["method"] == "updateUser" and msg.metadata["group"] == "demo"


def test_decode_request_on_a_new_connection(benchmark: object) -> None:
    """A new connection each time: the head and attachments come from the process-wide caches."""
    factory = DubboCodecFactory()
    msg = benchmark(lambda: factory.server_codec().decode(ReadBuffer(FRAME)))  # type: ignore[operator]
    assert msg.metadata["method"]


def test_rewrite_request_id(benchmark: object) -> None:
    msg = DubboCodecFactory().server_codec().decode(ReadBuffer(FRAME))
    client = DubboCodecFactory().client_codec()
    out = benchmark(client.encode, msg, None, 99)  # type: ignore[operator]
    assert out[4:12] == (99).to_bytes(8, "big")


def test_mutation_reencode(benchmark: object) -> None:
    msg = DubboCodecFactory().server_codec().decode(ReadBuffer(FRAME))
    client = DubboCodecFactory().client_codec()
    out = benchmark(client.encode, msg, {"x-request-id": "abc", "foo": "bar"}, 99)  # type: ignore[operator]
    assert wire.parse_invocation(out).attachments["foo"] == "bar"


def test_full_decode_ours(benchmark: object) -> None:
    values = benchmark(loads_all, BODY)  # type: ignore[operator]
    assert values[5] == USER


def test_skip_arguments_ours(benchmark: object) -> None:
    def skip_all() -> int:
        r = Hessian2Reader(BODY)
        while not r.at_end():
            r.skip()
        return r.pos

    assert benchmark(skip_all) == len(BODY)  # type: ignore[operator]


def test_reference_hessian_codec_first_value(benchmark: object) -> None:
    """hessian-codec (Rust) decodes only the first value of a buffer: the dubbo version string."""
    assert benchmark(hessian_codec.loads, BODY) == "2.0.2"  # type: ignore[operator]


def test_reference_hessian_codec_java_object(benchmark: object) -> None:
    """hessian-codec on the Java object argument alone (it drops the class name)."""
    r = Hessian2Reader(BODY)
    for _ in range(5):
        r.skip()
    start = r.pos
    r.skip()
    obj = BODY[start : r.pos]
    out = benchmark(hessian_codec.loads, obj)  # type: ignore[operator]
    assert out["name"] == "alice"

"""The fuzz targets: configurations each input can pick, and seeds read from the shared vectors
at run time (nothing large is copied into the repo). Harness files look targets up by name."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from fuzz._harness import (
    ROOT,
    Finding,
    Target,
    Variant,
    codec_target,
    corpus_files,
    load_vectors,
)
from metaprotocol.spi import ClientCodec, CodecFactory, Message, MetaProtocolError, ReadBuffer

_MIB = 1024 * 1024

# -- seeds from /work/shared/testdata -------------------------------------------------------------


def _redis_sent() -> list[bytes]:
    out = [bytes.fromhex(s["send_hex"]) for v in load_vectors("redis/resp_traffic.json") for s in v["steps"] if s.get("send_hex")]
    return out


def _redis_received() -> list[bytes]:
    out = [bytes.fromhex(s["recv_hex"]) for v in load_vectors("redis/resp_traffic.json") for s in v["steps"] if s.get("recv_hex")]
    return out


def _dubbo_frames() -> list[bytes]:
    return [bytes.fromhex(v["hex"]) for v in load_vectors("dubbo/frames.json")]


def _thrift_messages() -> list[bytes]:
    return [bytes.fromhex(v["hex"]) for v in load_vectors("thrift/messages.json")]


def hessian_values() -> list[bytes]:
    """Hessian values: hessian.js and Java re-encodings, other encoders, Dubbo bodies."""
    out = []
    for v in load_vectors("hessian2/values.json"):
        out.append(bytes.fromhex(v["hex"]))
        if v.get("java_reencoded_hex"):
            out.append(bytes.fromhex(v["java_reencoded_hex"]))
    out += [bytes.fromhex(v["hex"]) for v in load_vectors("hessian2/other_encoders.json")]
    out += [f[16:] for f in _dubbo_frames() if len(f) > 16]  # noqa: PLR2004 - the Dubbo header
    return out + corpus_files("hessian2")


# -- codec variants ----------------------------------------------------------------------------

REDIS_SERVER = [Variant({}), Variant({"password": "pw"}), Variant({"max_bulk_length": 64}), Variant({"mode": "bound"})]
REDIS_CLIENT = [Variant({}, 2), Variant({}, 3), Variant({"max_bulk_length": 64}, 2), Variant({"max_bulk_length": 64}, 3)]
DUBBO = [
    Variant({}, None, 8 * _MIB + 16),
    Variant({"non_hessian2": "reject"}, None, 8 * _MIB + 16),
    Variant({"payload_limit": 512}, None, 512 + 16),
]
THRIFT = [
    Variant({}),
    Variant({"transport": "framed", "protocol": "binary"}),
    Variant({"transport": "framed", "protocol": "compact"}),
    Variant({"transport": "framed", "protocol": "binary-nonstrict"}),
    Variant({"transport": "unframed", "protocol": "binary"}),
    Variant({"transport": "unframed", "protocol": "binary-nonstrict"}),
    Variant({"transport": "unframed", "protocol": "compact"}),
    Variant({"transport": "header"}),
    Variant({"transport": "header", "protocol": "compact"}),
    Variant({"max_frame_size": 512}),
    Variant({"transport": "header", "max_frame_size": 512}),
]


def _thrift_limits(msg: Message, variant: Variant) -> None:
    """Framed and THeader frames stay within max_frame_size, and so does a THeader payload
    after its transforms (zlib): no decompression bomb."""
    max_frame = int(variant.config.get("max_frame_size", 16 * _MIB))  # type: ignore[call-overload]
    info = msg.opaque
    transport = getattr(getattr(info, "transport", None), "value", "unframed")
    if transport != "unframed" and len(msg.raw) > max_frame + 4:
        raise Finding(f"{transport} frame of {len(msg.raw)} bytes beyond max_frame_size {max_frame}")
    payload = getattr(info, "payload", b"")
    if len(payload) > max_frame:
        raise Finding(f"payload of {len(payload)} bytes beyond max_frame_size {max_frame} (after transforms)")


# -- memcached (the example plugin) -------------------------------------------------------------

MEMCACHED_REQUESTS = [
    b"get user:1\r\n",
    b"gets a b c\r\n",
    b"set user:1 0 0 5\r\nhello\r\n",
    b"cas k 0 0 1 99 noreply\r\nx\r\n",
    b"delete k noreply\r\n",
    b"incr n 5\r\ndecr n 1\r\n",
    b"touch k 10\r\ngat 10 a b\r\n",
    b"version\r\nquit\r\n",
    b"stats\r\n",
]
MEMCACHED_REPLIES = [
    b"STORED\r\n",
    b"VALUE a 0 3\r\nabc\r\nEND\r\n",
    b"VALUE a 0 3 7\r\nabc\r\nVALUE b 0 1\r\nx\r\nEND\r\n",
    b"END\r\nNOT_FOUND\r\n42\r\n",
    b"STAT pid 1\r\nSTAT uptime 2\r\nEND\r\n",
    b"CLIENT_ERROR bad\r\nSERVER_ERROR oops\r\nERROR\r\n",
]
_PRIMES = (b"get a b\r\n", b"set k 0 0 1\r\nx\r\n", b"stats\r\n", b"delete k\r\n")


def _memcached_prime(factory: CodecFactory, client: ClientCodec, b0: int) -> None:
    """The client frames replies by the requests it sent: send four, chosen by byte 0."""
    server = factory.server_codec()
    for i in range(4):
        msg = server.decode(ReadBuffer(_PRIMES[(b0 >> (2 * i)) & 3]))
        if isinstance(msg, Message):
            client.encode(msg)


# -- Hessian 2 reader, fastscan, aeraki-ctl ------------------------------------------------------

_HESSIAN_ERROR = "metaprotocol_codecs.dubbo.hessian2:HessianDecodeError"


def _hessian(data: bytes) -> None:
    """loads/loads_all/skip agree on where values end; decoded values encode and decode again."""
    h = importlib.import_module("metaprotocol_codecs.dubbo.hessian2")
    error = h.HessianDecodeError
    ends: list[int] | None = []
    values: list[Any] = []
    r = h.Hessian2Reader(data)
    try:
        while not r.at_end():
            values.append(r.read())
            ends.append(r.pos)  # type: ignore[union-attr]
    except error:
        ends = None
    skips: list[int] | None = []
    s = h.Hessian2Reader(data)
    try:
        while not s.at_end():
            s.skip()
            skips.append(s.pos)  # type: ignore[union-attr]
    except error:
        skips = None
    if ends is not None and skips is not None and ends != skips:
        raise Finding(f"read ends values at {ends[:8]}, skip at {skips[:8]}")
    if ends is not None and skips is None:
        raise Finding("skip rejects a stream that read accepts")
    try:
        h.loads(data)
    except error:
        pass
    for value in values[:4]:
        again = h.dumps(value)  # a decoded value must be writable (attachments are re-encoded)
        h.loads(again)


def _fastscan(data: bytes) -> None:
    """skip_values agrees with the full reader's skip; read_flat_map with its read; read_string_at
    with read_string_or_null (when both accept the bytes)."""
    if not data:
        return
    h = importlib.import_module("metaprotocol_codecs.dubbo.hessian2")
    fs = importlib.import_module("metaprotocol_codecs.dubbo.fastscan")
    error = h.HessianDecodeError
    count = 1 + data[0] % 4
    body = data[1:]
    end = len(body)
    fast: int | None
    try:
        fast = fs.skip_values(body, 0, end, count, [], [])
    except error:
        fast = None
    full: int | None
    r = h.Hessian2Reader(body)
    try:
        for _ in range(count):
            r.skip()
        full = r.pos
    except error:
        full = None
    if fast != full:  # the reader's skip is the oracle: same decision, same end
        if fast is None or full is None:
            raise Finding(f"skip_values {'rejects' if fast is None else 'accepts'} what the reader's skip {'accepts' if fast is None else 'rejects'} (ends {fast}, {full})")
        raise Finding(f"skip_values ends at {fast}, the reader's skip at {full}")
    try:
        flat = fs.read_flat_map(body, 0, end)
    except error:
        flat = None
    if flat is not None:
        try:
            value = h.loads(body)
        except error:
            value = None
        if value is not None and dict(value) != flat:
            raise Finding(f"read_flat_map gives {flat!r}, the reader {dict(value)!r}")
    try:
        text, at = fs.read_string_at(body, 0, end)
    except error:
        return
    r = h.Hessian2Reader(body)
    try:
        want = r.read_string_or_null()
    except error:
        return
    if (text, at) != (want, r.pos):
        raise Finding(f"read_string_at gives {(text, at)!r}, the reader {(want, r.pos)!r}")


def _fastscan_seeds() -> list[bytes]:
    return [bytes([i % 4]) + v for i, v in enumerate(hessian_values())]


def _ctl(data: bytes) -> None:
    """Any YAML text either translates or is reported as Problems; nothing may escape."""
    resources = importlib.import_module("aeraki_ctl.resources")
    translate = importlib.import_module("aeraki_ctl.translate")
    out = resources.ResourceSet()
    resources.load_text(data.decode("utf-8", "replace"), "fuzz.yaml", out)
    result = translate.translate(out)
    for p in result.problems:
        str(p)
    _ = result.errors


def _ctl_seeds() -> list[bytes]:
    texts = [p.read_bytes() for p in sorted((ROOT / "examples/aeraki").rglob("*.yaml"))]
    texts.append(b"---\n".join(texts))
    return texts + corpus_files("ctl_translate")


def _xds_listener(data: bytes) -> None:
    """Any bytes either are not a Listener, or convert, or are refused as a ConversionError with
    its path: the MetaProtocol filter with its RBAC rules, TLS contexts, rate limits, routes."""
    convert = importlib.import_module("metaprotocol.xds.convert")
    listener_pb2 = importlib.import_module("envoy.config.listener.v3.listener_pb2")
    message = importlib.import_module("google.protobuf.message")
    lst = listener_pb2.Listener()
    try:
        lst.ParseFromString(data)
    except message.DecodeError:
        return
    try:
        convert.listener_from_xds(lst)
    except convert.ConversionError as exc:
        str(exc)


def _xds_listener_seeds() -> list[bytes]:
    """Listeners of the bootstraps the tests use, written back to protobuf bytes."""
    convert = importlib.import_module("metaprotocol.xds.convert")
    model = importlib.import_module("metaprotocol.config.model")
    rule = model.RbacRule(model.RbacOp.REQUEST, matcher=model.AttributeMatcher("method", model.MatchKind.PREFIX, "say"))
    peer = model.RbacRule(model.RbacOp.PEER, matcher=model.AttributeMatcher("source.principal", model.MatchKind.EXACT, "spiffe://td/ns/a/sa/b"))
    rbac = (
        model.RbacFilter("authz", model.RbacAction.DENY, (model.RbacPolicy("p", (rule, model.RbacRule(model.RbacOp.DESTINATION_PORT, ports=(1, 9))), (peer,)),)),
        model.RbacFilter("shadow", model.RbacAction.ALLOW, (model.RbacPolicy("q", (model.RbacRule(model.RbacOp.ANY),), (model.RbacRule(model.RbacOp.SOURCE_IP, cidr=("10.0.0.0", 8)),)),), False),
    )
    routes = model.RouteConfig("r", (model.RouteRule("all", (), model.RouteAction(cluster="c")),))
    lst = model.ListenerConfig("l", "127.0.0.1", 9000, model.CodecRef("dubbo"), "l", route_config=routes, rbac=rbac)
    return [convert.listener_to_xds(lst, inline_routes=True).SerializeToString(), *corpus_files("xds_listener")]


# -- the registry -------------------------------------------------------------------------------

_REDIS = "metaprotocol_codecs.redis.codec:RedisCodecFactory"
_DUBBO = "metaprotocol_codecs.dubbo.codec:DubboCodecFactory"
_THRIFT = "metaprotocol_codecs.thrift.codec:ThriftCodecFactory"
_MEMCACHED = "metaprotocol_memcached.codec:MemcachedCodecFactory"


def _seq(items: Iterable[bytes]) -> Callable[[], list[bytes]]:
    return lambda: list(items)


TARGETS: dict[str, Callable[[], Target]] = {
    "redis_server": lambda: codec_target("redis_server", _REDIS, "server", REDIS_SERVER, _redis_sent),
    "redis_client": lambda: codec_target("redis_client", _REDIS, "client", REDIS_CLIENT, _redis_received),
    "dubbo_server": lambda: codec_target("dubbo_server", _DUBBO, "server", DUBBO, _dubbo_frames),
    "dubbo_client": lambda: codec_target("dubbo_client", _DUBBO, "client", DUBBO, _dubbo_frames),
    "thrift_server": lambda: codec_target("thrift_server", _THRIFT, "server", THRIFT, _thrift_messages, check=_thrift_limits),
    "thrift_client": lambda: codec_target("thrift_client", _THRIFT, "client", THRIFT, _thrift_messages, check=_thrift_limits),
    "memcached_server": lambda: codec_target("memcached_server", _MEMCACHED, "server", [Variant({})], _seq(MEMCACHED_REQUESTS)),
    "memcached_client": lambda: codec_target(
        "memcached_client", _MEMCACHED, "client", [Variant({})], _seq(MEMCACHED_REPLIES), prime=_memcached_prime
    ),
    "hessian2": lambda: Target(
        "hessian2", _hessian, hessian_values, documented=(_HESSIAN_ERROR,),
        instrument=("metaprotocol_codecs.dubbo",), imports=("metaprotocol_codecs.dubbo.hessian2",),
    ),  # fmt: skip
    "fastscan": lambda: Target(
        "fastscan", _fastscan, _fastscan_seeds, documented=(_HESSIAN_ERROR,),
        instrument=("metaprotocol_codecs.dubbo",), imports=("metaprotocol_codecs.dubbo.fastscan",),
    ),  # fmt: skip
    "ctl_translate": lambda: Target(
        "ctl_translate", _ctl, _ctl_seeds, documented=(),
        instrument=("aeraki_ctl",), imports=("aeraki_ctl.resources", "aeraki_ctl.translate"),
    ),  # fmt: skip
    "xds_listener": lambda: Target(
        "xds_listener", _xds_listener, _xds_listener_seeds, documented=(),
        instrument=("metaprotocol.xds", "metaprotocol.router"), imports=("metaprotocol.xds.convert", "metaprotocol.xds.rbac"),
    ),  # fmt: skip
}
CODEC_TARGETS = tuple(n for n in TARGETS if n.endswith(("_server", "_client")))


def target(name: str) -> Target:
    """The target called ``name`` (a fresh object: harness state is per process anyway)."""
    return TARGETS[name]()


def harness_file(name: str) -> Path:
    """fuzz/<name>.py."""
    return Path(__file__).resolve().parent / f"{name}.py"


__all__ = ["CODEC_TARGETS", "TARGETS", "MetaProtocolError", "harness_file", "target"]

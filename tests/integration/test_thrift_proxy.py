"""Real Thrift clients and servers through the proxy: thriftpy2 (framed/buffered x binary/compact)
and Apache Thrift's THeader implementation."""

from __future__ import annotations

import json
import threading
import time

from typing import Any

import pytest
import thriftpy2
from thriftpy2.protocol import TBinaryProtocolFactory, TCompactProtocolFactory
from thriftpy2.rpc import make_client, make_server
from thriftpy2.thrift import TApplicationException
from thriftpy2.transport import TBufferedTransportFactory, TFramedTransportFactory

from tests.servers import bootstrap_dict, cluster, free_port, listener, wait_port
from tests.vectors import vectors_dir

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def idl(tmp_path_factory: pytest.TempPathFactory) -> Any:
    text = json.loads((vectors_dir() / "thrift/messages.json").read_text())["idl"]
    path = tmp_path_factory.mktemp("idl") / "oracle.thrift"
    path.write_text(text)
    return thriftpy2.load(str(path), module_name="oracle_thrift")


class Handler:
    def __init__(self, idl: Any, name: str) -> None:
        self.idl = idl
        self.name = name
        self.events: list[tuple[str, dict[str, str]]] = []

    def getUser(self, id: int) -> Any:  # noqa: N802, A002
        if id < 0:
            raise self.idl.NotFound(message=f"no user {id}", id=id)
        return self.idl.User(id=id, name=f"user{id}@{self.name}", tags=["a", "b"], scores={"x": 1}, active=True, balance=1.5)

    def echo(self, msg: str) -> str:
        return f"{self.name}:{msg}"

    def ping(self) -> None:
        return None

    def logEvent(self, event: str, props: dict[str, str]) -> None:  # noqa: N802
        self.events.append((event, props))

    def updateUser(self, user: Any) -> bool:  # noqa: N802
        raise self.idl.InvalidArgument(field="name", reason="read only")

    def listUsers(self, offset: int, limit: int) -> list[Any]:  # noqa: N802
        return [self.getUser(i) for i in range(offset, offset + limit)]


COMBOS = {
    "framed-binary": (TFramedTransportFactory, lambda: TBinaryProtocolFactory()),
    "framed-compact": (TFramedTransportFactory, lambda: TCompactProtocolFactory()),
    "buffered-binary": (TBufferedTransportFactory, lambda: TBinaryProtocolFactory()),
    "buffered-compact": (TBufferedTransportFactory, lambda: TCompactProtocolFactory()),
    "framed-binary-nonstrict": (TFramedTransportFactory, lambda: TBinaryProtocolFactory(strict_read=False, strict_write=False)),
    "buffered-binary-nonstrict": (TBufferedTransportFactory, lambda: TBinaryProtocolFactory(strict_read=False, strict_write=False)),
}


def start_server(idl: Any, name: str, combo: str) -> tuple[int, Handler]:
    trans, proto = COMBOS[combo]
    handler = Handler(idl, name)
    port = free_port()
    server = make_server(idl.UserService, handler, "127.0.0.1", port, proto_factory=proto(), trans_factory=trans())
    threading.Thread(target=server.serve, daemon=True).start()
    wait_port(port)
    return port, handler


@pytest.mark.parametrize("combo", list(COMBOS))
def test_thriftpy2_through_the_proxy(idl: Any, run_proxy: object, combo: str) -> None:
    main_port, main = start_server(idl, "main", combo)
    echo_port, _ = start_server(idl, "echo", combo)
    tree = bootstrap_dict(
        [listener("thrift", 0, "aeraki.meta_protocol.codec.thrift", [
            {"match": {"metadata": [{"name": "method", "exact_match": "echo"}]}, "route": {"cluster": "echo"}},
            {"match": {"metadata": [{"name": "method", "exact_match": "deleteUser"}]}, "route": {"cluster": "missing-cluster-name"}},
            {"match": {"metadata": [{"name": "method", "prefix_match": "nothing-"}]}, "route": {"cluster": "echo"}},
            {"match": {"metadata": [{"name": "method", "safe_regex_match": {"regex": "getUser|ping|logEvent|updateUser|listUsers"}}]}, "route": {"cluster": "main"}},
        ])],
        [cluster("main", [main_port]), cluster("echo", [echo_port]), cluster("missing-cluster-name", [1])],
    )  # fmt: skip
    rp = run_proxy(tree)  # type: ignore[operator]
    trans, proto = COMBOS[combo]
    client = make_client(idl.UserService, "127.0.0.1", rp.port("thrift"), proto_factory=proto(), trans_factory=trans(), timeout=5000)
    try:
        user = client.getUser(7)
        assert user.name == "user7@main" and user.tags == ["a", "b"] and user.balance == 1.5
        with pytest.raises(idl.NotFound) as nf:
            client.getUser(-3)
        assert nf.value.id == -3
        with pytest.raises(idl.InvalidArgument):
            client.updateUser(idl.User(id=1, name="x"))
        assert client.echo("hi") == "echo:hi"  # routed on the method to the other server
        client.ping()
        assert [u.id for u in client.listUsers(3, 4)] == [3, 4, 5, 6]
        client.logEvent("login", {"user": "7"})
        deadline = time.monotonic() + 5
        while not main.events and time.monotonic() < deadline:
            time.sleep(0.01)
        assert main.events == [("login", {"user": "7"})]
    finally:
        client.close()

    # Concurrent clients: sequence ids of different clients never collide upstream.
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        c = make_client(idl.UserService, "127.0.0.1", rp.port("thrift"), proto_factory=proto(), trans_factory=trans(), timeout=5000)
        try:
            for j in range(20):
                assert c.getUser(i * 100 + j).id == i * 100 + j
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            c.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors


def test_mutation_on_a_framed_connection_passes_unchanged_and_is_counted(idl: Any, run_proxy: object) -> None:
    port, _ = start_server(idl, "main", "framed-binary")
    tree = bootstrap_dict(
        [listener("thrift", 0, "thrift", [{"route": {"cluster": "main"}, "request_mutation": [{"key": "x-mesh", "value": "yes"}]}])],
        [cluster("main", [port])],
    )
    rp = run_proxy(tree)  # type: ignore[operator]
    client = make_client(idl.UserService, "127.0.0.1", rp.port("thrift"), proto_factory=TBinaryProtocolFactory(), trans_factory=TFramedTransportFactory(), timeout=5000)
    try:
        assert client.echo("x") == "main:x"
        assert client.echo("y") == "main:y"
    finally:
        client.close()
    stats = rp.run(rp.proxy.stats_text)  # type: ignore[attr-defined]
    assert 'metaprotocol_mutations_dropped_total{listener="thrift",protocol="thrift"} 2' in stats


def test_unknown_method_gets_an_application_exception(idl: Any, run_proxy: object) -> None:
    port, _ = start_server(idl, "main", "framed-binary")
    tree = bootstrap_dict(
        [listener("thrift", 0, "thrift", [{"match": {"metadata": [{"name": "method", "exact_match": "getUser"}]}, "route": {"cluster": "main"}}])],
        [cluster("main", [port])],
    )
    rp = run_proxy(tree)  # type: ignore[operator]
    client = make_client(idl.UserService, "127.0.0.1", rp.port("thrift"), proto_factory=TBinaryProtocolFactory(), trans_factory=TFramedTransportFactory(), timeout=5000)
    try:
        assert client.getUser(1).id == 1
        with pytest.raises(TApplicationException) as info:
            client.echo("x")
        assert info.value.type == TApplicationException.UNKNOWN_METHOD
        assert "no route matched" in info.value.message
        assert client.getUser(2).id == 2  # the connection carries on
    finally:
        client.close()


# -- Apache Thrift THeader ---------------------------------------------------------------------


def _apache_header_server(port: int, seen: list[dict[str, str]], stop: threading.Event) -> None:
    """A THeader echo server on Apache Thrift's THeaderProtocol (no generated code needed)."""
    from thrift.protocol.THeaderProtocol import THeaderProtocol
    from thrift.Thrift import TMessageType, TType
    from thrift.transport import TSocket
    from thrift.transport.THeaderTransport import THeaderClientType

    server = TSocket.TServerSocket(host="127.0.0.1", port=port)
    server.listen()
    types = [THeaderClientType.HEADERS]

    def serve(client: Any) -> None:
        proto = THeaderProtocol(client, types)
        try:
            while not stop.is_set():
                name, mtype, seqid = proto.readMessageBegin()
                headers = {k.decode() if isinstance(k, bytes) else k: v.decode() if isinstance(v, bytes) else v for k, v in proto.trans.get_headers().items()}
                seen.append(headers)
                proto.readStructBegin()
                msg = ""
                while True:
                    _, ftype, fid = proto.readFieldBegin()
                    if ftype == TType.STOP:
                        break
                    if fid == 1 and ftype == TType.STRING:
                        msg = proto.readString()
                    else:
                        proto.skip(ftype)
                    proto.readFieldEnd()
                proto.readStructEnd()
                proto.readMessageEnd()
                proto.trans.set_header(b"served-by", b"apache-thrift")
                proto.writeMessageBegin(name, TMessageType.REPLY, seqid)
                proto.writeStructBegin("echo_result")
                proto.writeFieldBegin("success", TType.STRING, 0)
                proto.writeString(f"{headers.get('route-to', '?')}:{msg}")
                proto.writeFieldEnd()
                proto.writeFieldStop()
                proto.writeStructEnd()
                proto.writeMessageEnd()
                proto.trans.flush()
        except Exception:  # noqa: BLE001 - the client went away
            client.close()

    while not stop.is_set():
        try:
            client = server.accept()
        except Exception:  # noqa: BLE001
            return
        if client is not None:
            threading.Thread(target=serve, args=(client,), daemon=True).start()


def _apache_header_call(port: int, msg: str, headers: dict[str, str], seqid: int = 1) -> tuple[str, dict[str, str]]:
    from thrift.protocol.THeaderProtocol import THeaderProtocol
    from thrift.Thrift import TMessageType, TType
    from thrift.transport import TSocket
    from thrift.transport.THeaderTransport import THeaderClientType

    sock = TSocket.TSocket("127.0.0.1", port)
    sock.setTimeout(5000)
    sock.open()
    proto = THeaderProtocol(sock, [THeaderClientType.HEADERS])
    try:
        for k, v in headers.items():
            proto.trans.set_header(k.encode(), v.encode())
        proto.writeMessageBegin("echo", TMessageType.CALL, seqid)
        proto.writeStructBegin("echo_args")
        proto.writeFieldBegin("msg", TType.STRING, 1)
        proto.writeString(msg)
        proto.writeFieldEnd()
        proto.writeFieldStop()
        proto.writeStructEnd()
        proto.writeMessageEnd()
        proto.trans.flush()
        name, mtype, rseq = proto.readMessageBegin()
        assert (name, mtype, rseq) == ("echo", TMessageType.REPLY, seqid)
        proto.readStructBegin()
        _, ftype, fid = proto.readFieldBegin()
        value = proto.readString()
        rheaders = {k.decode() if isinstance(k, bytes) else k: v.decode() if isinstance(v, bytes) else v for k, v in proto.trans.get_headers().items()}
        return value, rheaders
    finally:
        sock.close()


def test_apache_thrift_theader_routing_on_a_header_and_mutation(header_servers: dict[str, tuple[int, list[dict[str, str]]]], run_proxy: object) -> None:
    tree = bootstrap_dict(
        [listener("thrift", 0, "thrift", [
            {"match": {"metadata": [{"name": "tenant", "exact_match": "b"}]}, "route": {"cluster": "b"},
             "request_mutation": [{"key": "route-to", "value": "b"}]},
            {"route": {"cluster": "a"}, "request_mutation": [{"key": "route-to", "value": "a"}]},
        ])],
        [cluster("a", [header_servers["a"][0]]), cluster("b", [header_servers["b"][0]])],
    )  # fmt: skip
    rp = run_proxy(tree)  # type: ignore[operator]
    port = rp.port("thrift")
    value, headers = _apache_header_call(port, "hello", {"tenant": "b", "trace-id": "t1"}, seqid=41)
    assert value == "b:hello"  # routed on the THeader header; the mutation reached the server
    assert headers["served-by"] == "apache-thrift"
    assert header_servers["b"][1][-1]["trace-id"] == "t1" and header_servers["b"][1][-1]["route-to"] == "b"
    value, _ = _apache_header_call(port, "again", {"tenant": "x"}, seqid=7)
    assert value == "a:again"

"""redis-py and redis-benchmark through the proxy to real redis-server processes."""

from __future__ import annotations

import shutil
import time
import subprocess
from collections.abc import Iterator

import pytest
import redis

from tests.servers import RedisServer, bootstrap_dict, cluster, free_port, listener

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def shards() -> Iterator[list[RedisServer]]:
    servers = [RedisServer() for _ in range(3)]
    yield servers
    for s in servers:
        s.stop()


@pytest.fixture
def clean(shards: list[RedisServer]) -> list[redis.Redis]:
    direct = [redis.Redis(port=s.port) for s in shards]
    for d in direct:
        d.flushall()
    return direct


def sharded_proxy(run_proxy: object, shards: list[RedisServer], **codec: object) -> object:
    tree = bootstrap_dict(
        [
            listener(
                "redis",
                0,
                "redis",
                [{"name": "all", "route": {"cluster": "shards", "timeout": "2s"}}],
                protocol={"name": "redis", "codec": {"name": "redis", "config": codec}},
            )
        ],
        [cluster("shards", [s.port for s in shards], lb_policy="RING_HASH")],
    )
    return run_proxy(tree)  # type: ignore[operator]


@pytest.mark.parametrize("protocol", [2, 3])
def test_data_types_through_sharded_proxy(run_proxy: object, shards: list[RedisServer], clean: list[redis.Redis], protocol: int) -> None:
    rp = sharded_proxy(run_proxy, shards)
    r = redis.Redis(port=rp.port("redis"), protocol=protocol)  # type: ignore[attr-defined]
    assert r.ping()
    assert r.set("s", "v") and r.get("s") == b"v"
    assert r.incr("n") == 1 and r.incrby("n", 4) == 5
    r.hset("h", mapping={"a": "1", "b": "2"})
    assert r.hgetall("h") == {b"a": b"1", b"b": b"2"}
    r.rpush("l", "x", "y", "z")
    assert r.lrange("l", 0, -1) == [b"x", b"y", b"z"]
    r.sadd("set", "a", "b")
    assert r.smembers("set") == {b"a", b"b"}
    r.zadd("z", {"a": 1.5, "b": 2})
    assert [tuple(x) for x in r.zrange("z", 0, -1, withscores=True)] == [(b"a", 1.5), (b"b", 2.0)]
    assert r.get("missing") is None
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        r.lpush("s", "x")
    # Keys really are spread over the shards, each where the ring says.
    for i in range(60):
        r.set(f"spread:{i}", i)
    assert all(d.dbsize() > 10 for d in clean)


def test_pipeline_of_1000_mixed_commands_across_3_shards_stays_in_order(run_proxy: object, shards: list[RedisServer], clean: list[redis.Redis]) -> None:
    rp = sharded_proxy(run_proxy, shards)
    r = redis.Redis(port=rp.port("redis"))  # type: ignore[attr-defined]
    pipe = r.pipeline(transaction=False)
    expected: list[object] = []
    for i in range(250):
        pipe.set(f"k{i}", i)
        expected.append(True)
        pipe.get(f"k{i}")
        expected.append(str(i).encode())
        pipe.incr(f"c{i % 7}")
        expected.append(None)
        pipe.exists(f"k{i}", f"nope{i}")
        expected.append(1)
    results = pipe.execute()
    assert len(results) == 1000
    counters: dict[int, int] = {}
    for i, (got, want) in enumerate(zip(results, expected, strict=True)):
        if want is None:
            counters[i // 4 % 7] = counters.get(i // 4 % 7, 0) + 1
            assert got == counters[i // 4 % 7]
        else:
            assert got == want, i


def test_fanout_commands_merge_across_shards(run_proxy: object, shards: list[RedisServer], clean: list[redis.Redis]) -> None:
    rp = sharded_proxy(run_proxy, shards)
    r = redis.Redis(port=rp.port("redis"))  # type: ignore[attr-defined]
    keys = [f"fan:{i}" for i in range(20)]
    assert r.mset({k: k.upper() for k in keys})
    assert sum(d.dbsize() > 0 for d in clean) == 3
    assert r.mget([*keys, "absent"]) == [k.upper().encode() for k in keys] + [None]
    assert r.exists(*keys, "absent") == 20
    assert r.touch(*keys[:5]) == 5
    assert r.delete(*keys[:10]) == 10
    assert r.unlink(*keys[10:], "absent") == 10
    assert r.mget(keys) == [None] * 20
    stats = rp.run(rp.proxy.stats_text)  # type: ignore[attr-defined]
    assert "metaprotocol_fanout_requests_total" in stats


def test_big_values_and_binary_keys(run_proxy: object, shards: list[RedisServer], clean: list[redis.Redis]) -> None:
    rp = sharded_proxy(run_proxy, shards)
    r = redis.Redis(port=rp.port("redis"))  # type: ignore[attr-defined]
    big = bytes(range(256)) * 4096  # 1 MiB
    key = b"\x00\xff\r\nbinary key\xfe"
    assert r.set(key, big)
    assert r.get(key) == big
    assert r.strlen(key) == len(big)
    assert sum(d.exists(key) for d in clean) == 1


def test_connection_state_commands_are_refused_clearly(run_proxy: object, shards: list[RedisServer], clean: list[redis.Redis]) -> None:
    rp = sharded_proxy(run_proxy, shards)
    r = redis.Redis(port=rp.port("redis"))  # type: ignore[attr-defined]
    with pytest.raises(redis.ResponseError, match="MULTI is not supported by this proxy: transactions"):
        r.execute_command("MULTI")
    with pytest.raises(redis.ResponseError, match="blocking commands"):
        r.blpop(["q"], timeout=1)
    with pytest.raises(redis.ResponseError, match="SELECT is not supported"):
        r.execute_command("SELECT", 3)
    assert r.execute_command("SELECT", 0) is True  # redis-py maps +OK to True
    assert r.echo("still fine") == b"still fine"


def test_auth_downstream_and_upstream(run_proxy: object) -> None:
    with RedisServer(password="upstream-pw") as server:
        tree = bootstrap_dict(
            [listener("redis", 0, "redis", [{"route": {"cluster": "c"}}],
                      protocol={"name": "redis", "codec": {"name": "redis", "config": {"password": "client-pw", "upstream_password": "upstream-pw", "db": 3}}})],
            [cluster("c", [server.port])],
        )  # fmt: skip
        rp = run_proxy(tree)  # type: ignore[operator]
        port = rp.port("redis")
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port, password="wrong").ping()
        with pytest.raises(redis.AuthenticationError, match="Authentication required"):
            redis.Redis(port=port, protocol=2).get("k")  # -NOAUTH
        # redis-py 8 opens RESP3 connections with HELLO 3, refused as Redis refuses it.
        with pytest.raises(redis.AuthenticationError, match="HELLO must be called with the client already authenticated"):
            redis.Redis(port=port, protocol=3).get("k")
        for protocol in (2, 3):
            r = redis.Redis(port=port, password="client-pw", protocol=protocol)
            assert r.set("k", f"v{protocol}") and r.get("k") == f"v{protocol}".encode()
        direct = redis.Redis(port=server.port, password="upstream-pw", db=3)
        assert direct.get("k") == b"v3"


def test_killing_an_upstream_mid_request_replies_with_error_and_spares_other_clients(run_proxy: object) -> None:
    with RedisServer() as victim, RedisServer() as healthy:
        tree = bootstrap_dict(
            [listener("redis", 0, "redis", [
                {"match": {"metadata": [{"name": "key", "prefix_match": "victim:"}]}, "route": {"cluster": "victim", "timeout": "10s"}},
                {"route": {"cluster": "healthy"}},
            ])],
            [cluster("victim", [victim.port]), cluster("healthy", [healthy.port])],
        )  # fmt: skip
        rp = run_proxy(tree)  # type: ignore[operator]
        port = rp.port("redis")
        other = redis.Redis(port=port)
        assert other.set("a", 1)
        # A request that will never be answered: DEBUG SLEEP keeps the server busy, then we kill it.
        waiting = redis.Redis(port=port, socket_timeout=5)
        import threading

        result: dict[str, object] = {}

        def call() -> None:
            try:
                waiting.execute_command("EVAL", "while true do end", "1", "victim:x")
            except redis.RedisError as exc:
                result["error"] = exc

        t = threading.Thread(target=call)
        t.start()
        import time

        time.sleep(0.3)
        victim.proc.kill()
        t.join(5)
        assert not t.is_alive()
        assert isinstance(result.get("error"), redis.ResponseError)
        assert "closed the connection" in str(result["error"])
        # Other clients, and the same client on other keys, carry on.
        assert other.get("a") == b"1"
        assert waiting.get("a") == b"1"
        with pytest.raises(redis.ResponseError, match="connect"):
            waiting.get("victim:y")


def test_timeout_fires_at_the_configured_time(run_proxy: object) -> None:
    import time

    with RedisServer() as server:
        tree = bootstrap_dict(
            [listener("redis", 0, "redis", [{"route": {"cluster": "c", "timeout": "0.3s"}}])],
            [cluster("c", [server.port])],
        )
        rp = run_proxy(tree)  # type: ignore[operator]
        r = redis.Redis(port=rp.port("redis"))
        start = time.monotonic()
        with pytest.raises(redis.ResponseError, match="timeout"):
            r.execute_command("DEBUG", "SLEEP", "1")
        elapsed = time.monotonic() - start
        assert 0.28 <= elapsed < 0.6
        # The shared upstream connection is still busy (head of line) until the sleep ends; then
        # the late reply to DEBUG SLEEP is swallowed and the next command gets its own reply.
        time.sleep(1.0)
        assert r.set("after", "ok")
        assert r.get("after") == b"ok"


def test_malformed_request_gets_protocol_error_and_close(run_proxy: object) -> None:
    import socket

    with RedisServer() as server:
        tree = bootstrap_dict([listener("redis", 0, "redis", [{"route": {"cluster": "c"}}])], [cluster("c", [server.port])])
        rp = run_proxy(tree)  # type: ignore[operator]
        port = rp.port("redis")
        good = redis.Redis(port=port)
        good.set("x", "1")
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n*1\r\n:bad\r\n")
            s.settimeout(5)
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        assert data == b"+PONG\r\n-ERR Protocol error: expected '$', got ':'\r\n"
        assert good.get("x") == b"1"


@pytest.mark.skipif(shutil.which("redis-benchmark") is None, reason="redis-tools not installed")
def test_redis_benchmark_default_suite_completes_without_errors(run_proxy: object) -> None:
    with RedisServer() as server:
        tree = bootstrap_dict([listener("redis", 0, "redis", [{"route": {"cluster": "c"}}])], [cluster("c", [server.port])])
        rp = run_proxy(tree)  # type: ignore[operator]
        out = subprocess.run(
            ["redis-benchmark", "-p", str(rp.port("redis")), "-n", "2000", "-c", "10", "-q", "--csv"],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        lines = [line for line in out.stdout.splitlines() if line and not line.startswith('"test"')]
        tests = {line.split(",")[0].strip('"') for line in lines}
        # The default suite's commands, including the MSET fan-out and LRANGE variants.
        assert {"PING_INLINE", "SET", "GET", "INCR", "LPUSH", "SADD", "HSET", "MSET (10 keys)", "LRANGE_600 (first 600 elements)"} <= tests
        assert "ERR" not in out.stdout + out.stderr
        stats = rp.run(rp.proxy.stats_text)  # type: ignore[attr-defined]
        assert 'metaprotocol_local_replies_total{' not in stats


def test_free_port_helper_gives_bindable_ports() -> None:
    assert 0 < free_port() < 65536


def _bound_proxy(run_proxy: object, server: RedisServer, **codec: object) -> int:
    tree = bootstrap_dict(
        [listener("redis", 0, "redis", [{"route": {"cluster": "c"}}], protocol={"name": "redis", "codec": {"name": "redis", "config": {"mode": "bound", **codec}}})],
        [cluster("c", [server.port])],
    )
    return int(run_proxy(tree).port("redis"))  # type: ignore[operator]


def test_bound_mode_passes_transactions_select_and_blocking_commands(run_proxy: object) -> None:
    import threading

    with RedisServer() as server:
        port = _bound_proxy(run_proxy, server)
        r = redis.Redis(port=port, protocol=2)
        pipe = r.pipeline(transaction=True)  # MULTI ... EXEC on the client's own connection
        pipe.set("t1", "a").incr("n").get("t1")
        assert pipe.execute() == [True, 1, b"a"]
        with r.pipeline(transaction=True) as watched:  # WATCH + an aborted EXEC
            watched.watch("t1")
            redis.Redis(port=server.port).set("t1", "changed")
            watched.multi()
            watched.set("t1", "mine")
            with pytest.raises(redis.WatchError):
                watched.execute()
        db2 = redis.Redis(port=port, db=2, protocol=2)  # SELECT 2 passes through
        db2.set("only-in-2", "x")
        assert redis.Redis(port=server.port, db=2).get("only-in-2") == b"x"
        assert redis.Redis(port=server.port, db=0).get("only-in-2") is None
        result: list[object] = []
        blocker = redis.Redis(port=port, protocol=2, socket_timeout=10)
        t = threading.Thread(target=lambda: result.append(blocker.blpop(["queue"], timeout=5)))
        t.start()
        time.sleep(0.2)
        redis.Redis(port=server.port).lpush("queue", "job")
        t.join(10)
        assert result == [(b"queue", b"job")]
        for c in (r, db2, blocker):
            c.close()


def test_bound_mode_pub_sub_and_resp3_with_upstream_auth(run_proxy: object) -> None:
    with RedisServer(password="pw") as server:
        port = _bound_proxy(run_proxy, server, upstream_password="pw")
        for protocol in (2, 3):
            sub = redis.Redis(port=port, protocol=protocol).pubsub()
            sub.subscribe("news")
            assert sub.get_message(timeout=5)["type"] == "subscribe"  # type: ignore[index]
            redis.Redis(port=server.port, password="pw").publish("news", f"hello {protocol}")
            message = None
            for _ in range(50):
                message = sub.get_message(timeout=0.1)
                if message:
                    break
            assert message is not None and message["data"] == f"hello {protocol}".encode()
            sub.close()


def _mixed_pipeline(r: redis.Redis, n: int) -> list[object]:
    """The same commands, whoever runs them: plain ones, local ones, fan-out, errors, big values."""
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        pipe.set(f"k{i}", "v" * (i % 5) * 1000)
        pipe.get(f"k{i}")
        pipe.incr(f"c{i % 7}")
        if i % 10 == 0:
            pipe.ping()
            pipe.echo(f"e{i}")
            pipe.mget(f"k{i}", f"k{i // 2}", "missing")
            pipe.lpush(f"k{i}", "x")  # WRONGTYPE: an error reply inside the unit
            pipe.delete(f"k{i}", f"nope{i}")
    return pipe.execute(raise_on_error=False)


def test_pipelines_forwarded_as_units_answer_exactly_as_redis_does(run_proxy: object) -> None:
    with RedisServer() as through, RedisServer() as reference:
        tree = bootstrap_dict([listener("redis", 0, "redis", [{"route": {"cluster": "c"}}])], [cluster("c", [through.port])])
        rp = run_proxy(tree)  # type: ignore[operator]
        got = _mixed_pipeline(redis.Redis(port=rp.port("redis")), 400)  # type: ignore[attr-defined]
        want = _mixed_pipeline(redis.Redis(port=reference.port), 400)
        assert len(got) == len(want) == 400 * 3 + 40 * 5
        assert [repr(x) for x in got] == [repr(x) for x in want]
        stats = rp.run(rp.proxy.stats_text)  # type: ignore[attr-defined]
        counters = {line.split("{")[0]: float(line.rsplit(" ", 1)[1]) for line in stats.splitlines() if line.endswith(tuple("0123456789")) and 'listener="redis"' in line}
        # Every request counted once (1400 plus redis-py's CLIENT SETINFO on connect), each answered once.
        assert counters["metaprotocol_requests_total"] >= 1400
        assert counters["metaprotocol_requests_total"] == counters["metaprotocol_responses_total"] + counters["metaprotocol_local_answers_total"]
        assert counters["metaprotocol_active_requests"] == 0
        out = subprocess.run(
            ["redis-benchmark", "-p", str(rp.port("redis")), "-t", "get,set,incr,lpush", "-n", "20000", "-c", "20", "-P", "16", "-q", "--csv"],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert out.returncode == 0 and "ERR" not in out.stdout + out.stderr, out.stdout + out.stderr
        assert redis.Redis(port=through.port).llen("mylist") > 0

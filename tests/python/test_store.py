"""pc.store on both backends - the memory table (the daemon's shared_kv) and a
real redis-server - with the same expectations: values, counters, time to
live, atomic increments from many threads, errors, and that it outlives a
policy reload. Sharing between worker processes: tests/unit/shared_kv_test.cpp
and tests/e2e/test_store.py."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time

import pytest

import portcullis as pc
from helpers.redis_server import running_redis
from portcullis import _context
from portcullis.testing import Harness

_keys = itertools.count()


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    with running_redis(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture(params=["memory", "redis"])
def backend(request, monkeypatch):
    """Makes pc.config's [store] the backend under test; returns a fresh key prefix."""
    url = "memory:" if request.param == "memory" else request.getfixturevalue("redis_url")
    monkeypatch.setattr(_context, "_default_config", {"store": {"url": url, "prefix": "test:"}})
    return f"k{next(_keys)}-"


def test_values_and_missing_keys(backend):
    k = backend
    assert pc.store.get_sync(k + "a") is None
    pc.store.set_sync(k + "a", "hello")
    pc.store.set_sync(k + "n", 42)
    assert pc.store.get_sync(k + "a") == "hello" and pc.store.get_sync(k + "n") == "42"
    assert pc.store.delete_sync(k + "a") is True and pc.store.delete_sync(k + "a") is False
    assert pc.store.get_sync(k + "a") is None
    pc.store.set_sync(k + "u", "ünïcode ✓")
    assert pc.store.get_sync(k + "u") == "ünïcode ✓"


def test_counters_and_their_window(backend):
    k = backend + "c"
    assert pc.store.incr_sync(k, ttl=0.3) == 1
    assert pc.store.incr_sync(k, ttl=100) == 2  # an existing key keeps its expiry
    assert pc.store.incr_sync(k, by=5) == 7
    assert pc.store.incr_sync(k, by=-7) == 0
    time.sleep(0.45)
    assert pc.store.get_sync(k) is None
    assert pc.store.incr_sync(k) == 1  # a new window


def test_set_with_a_time_to_live(backend):
    k = backend + "t"
    pc.store.set_sync(k, "x", ttl=0.2)
    assert pc.store.get_sync(k) == "x"
    time.sleep(0.3)
    assert pc.store.get_sync(k) is None


def test_the_async_forms(backend):
    k = backend

    async def go():
        await pc.store.set(k + "a", "v", ttl=10)
        counts = await asyncio.gather(*(pc.store.incr(k + "c") for _ in range(50)))
        return await pc.store.get(k + "a"), sorted(counts), await pc.store.delete(k + "a")

    value, counts, deleted = asyncio.run(go())
    assert value == "v" and counts == list(range(1, 51)) and deleted


def test_increments_from_many_threads_are_atomic(backend):
    k = backend + "atomic"
    config = _context._default_config

    def work():
        token = _context.scope.set(("", config, None))
        try:
            for _ in range(200):
                pc.store.incr_sync(k)
        finally:
            _context.scope.reset(token)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert pc.store.get_sync(k) == "1600"


def test_errors(backend):
    k = backend
    pc.store.set_sync(k + "text", "not a number")
    with pytest.raises(ValueError, match=f"pc.store: {k}text does not hold an integer"):
        pc.store.incr_sync(k + "text")
    with pytest.raises(ValueError):
        pc.store.set_sync("x" * 201, "v")
    with pytest.raises(TypeError):
        pc.store.set_sync(k + "b", b"bytes")
    with pytest.raises(TypeError):
        pc.store.get_sync("")
    with pytest.raises(ValueError):
        pc.store.set_sync(k + "t", "v", ttl=0)
    with pytest.raises(TypeError):
        pc.store.incr_sync(k + "c", by=1.5)
    # Both backends check with the same code (bindings/store.cpp): a bool is not a number here.
    with pytest.raises(ValueError, match="ttl is a number of seconds above 0, not True"):
        pc.store.incr_sync(k + "c", ttl=True)
    with pytest.raises(TypeError, match="by is an int"):
        pc.store.incr_sync(k + "c", by=True)
    with pytest.raises(ValueError, match="64 bits"):
        pc.store.incr_sync(k + "c", by=2**64)
    with pytest.raises(TypeError, match="not bool"):
        asyncio.run(pc.store.set(k + "b", True))
    with pytest.raises(ValueError, match="at most 200 bytes"):
        pc.store.get_sync("é" * 101)  # 101 characters, 202 bytes
    with pytest.raises(TypeError, match="non-empty str, not b'k'"):
        asyncio.run(pc.store.delete(b"k"))
    assert pc.store.get_sync(k + "c") is None  # nothing refused was written


def test_incr_with_a_ttl_leaves_a_key_that_has_no_expiry_without_one(backend):
    k = backend + "forever"
    pc.store.set_sync(k, 5)  # no ttl: it lives until deleted
    assert pc.store.incr_sync(k, ttl=0.2) == 6  # an existing key keeps its expiry, none here
    time.sleep(0.35)
    assert pc.store.get_sync(k) == "6"
    assert pc.store.incr_sync(k + "new", ttl=0.2) == 1  # a new key gets it
    time.sleep(0.35)
    assert pc.store.get_sync(k + "new") is None


@pytest.mark.parametrize("value, after", [("0", 1), ("-5", -4), (str(2**63 - 2), 2**63 - 1)])
def test_incr_takes_what_redis_reads_as_an_integer(backend, value, after):
    pc.store.set_sync(backend + "n", value)
    assert pc.store.incr_sync(backend + "n") == after


@pytest.mark.parametrize("value", ["007", "-0", "-01", "+1", " 1", "1 ", "1.5", "", "-", str(2**63), "abc"])
def test_incr_refuses_the_same_values_on_both_backends(backend, value):
    pc.store.set_sync(backend + "n", value)
    with pytest.raises(ValueError, match=f"^pc.store: {backend}n does not hold an integer "):
        pc.store.incr_sync(backend + "n")
    assert pc.store.get_sync(backend + "n") == value


def test_incr_past_64_bits_is_the_same_error_on_both_backends(backend):
    pc.store.set_sync(backend + "big", 2**63 - 1)
    with pytest.raises(ValueError, match=f"^pc.store: {backend}big would overflow 64 bits$"):
        pc.store.incr_sync(backend + "big")
    with pytest.raises(ValueError, match="would overflow 64 bits"):
        asyncio.run(pc.store.incr(backend + "big", ttl=5))


@pytest.mark.parametrize("ttl", [1e9 + 1, float("inf"), 10**30])
def test_a_ttl_past_1e9_seconds_is_refused_on_both_backends(backend, ttl):
    with pytest.raises(ValueError, match="ttl is at most 1e9 seconds"):
        pc.store.set_sync(backend + "t", "v", ttl=ttl)
    with pytest.raises(ValueError, match="ttl is at most 1e9 seconds"):
        pc.store.incr_sync(backend + "t", ttl=ttl)
    assert pc.store.get_sync(backend + "t") is None
    with pytest.raises(ValueError, match="ttl is a number of seconds above 0, not nan"):
        pc.store.set_sync(backend + "t", "v", ttl=float("nan"))
    pc.store.set_sync(backend + "t", "v", ttl=1e9)
    assert pc.store.get_sync(backend + "t") == "v"


def test_a_key_with_a_lone_surrogate_works_on_both_backends(backend):
    k = backend + "k\udcff"  # a byte that is not UTF-8, as surrogateescape decodes it
    pc.store.set_sync(k, "v")
    assert pc.store.get_sync(k) == "v" and asyncio.run(pc.store.get(k)) == "v"
    assert pc.store.incr_sync(k + "c", ttl=5) == 1
    assert pc.store.delete_sync(k) is True and pc.store.get_sync(k) is None
    with pytest.raises(UnicodeEncodeError):  # a value is text: one that cannot be UTF-8 is refused
        pc.store.set_sync(backend + "v", "x\udcff")
    assert pc.store.get_sync(backend + "v") is None


def test_a_full_memory_store_raises_store_error(monkeypatch):
    """Keys without a TTL are never dropped: once they fill the table, a write is pc.store.Error.
    The table is the process's (65,536 entries, 131,072 slots here): the test empties it again."""
    monkeypatch.setattr(_context, "_default_config", {"store": {"url": "memory:"}})
    written = []
    try:
        with pytest.raises(pc.store.Error, match="memory store is full"):
            for i in range(140_000):
                pc.store.set_sync(f"fill-{i}", "x")
                written.append(f"fill-{i}")
        # Its capacity at least (past it, a run of 128 taken slots, shared_kv_probe, refuses a key).
        assert len(written) >= 65_536
    finally:
        for key in written:
            pc.store.delete_sync(key)
    pc.store.set_sync("fill-after", "x")  # room again
    assert pc.store.delete_sync("fill-after")


def test_a_redis_that_does_not_answer_raises_store_error(monkeypatch):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there
    monkeypatch.setattr(_context, "_default_config", {"store": {"url": f"redis://127.0.0.1:{port}/0", "timeout": 1}})
    with pytest.raises(pc.store.Error, match="Redis: ConnectionError"):
        pc.store.incr_sync("x")
    with pytest.raises(pc.store.Error):
        asyncio.run(pc.store.get("x"))


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_counters_survive_a_policy_reload(policy_file, kind, request):
    url = "memory:" if kind == "memory" else request.getfixturevalue("redis_url")
    key = f"reload-{next(_keys)}"
    source = f"""
        import portcullis as pc
        def on_mail(tx, sender):
            tx.data["n"] = pc.store.incr_sync("{key}")
        async def on_rcpt(tx, rcpt):
            n = await pc.store.incr("{key}")
            return pc.reject(f"seen {{tx.data['n']}} {{n}}", code=550, status="5.7.1")
        """
    path = policy_file(source)
    with Harness([path], config={"store": {"url": url}}) as h:
        s = h.connect(helo="a")
        s.mail("x@example.com")
        assert s.rcpt("y@example.com").text == "seen 1 2"
        h.reload()
        s = h.connect(helo="b")
        s.mail("x@example.com")
        assert s.rcpt("y@example.com").text == "seen 3 4"


def test_the_contracts_signature_ttl_second(backend):
    k = backend + "sig"
    assert asyncio.run(pc.store.incr(k, 0.2)) == 1  # incr(key, ttl): the ttl, not a step
    time.sleep(0.3)
    assert pc.store.get_sync(k) is None


def test_a_reload_that_moves_the_store_moves_new_sessions_only(policy_file, redis_url):
    # pc.store reads [store] of the config of the hook's own generation, however calls
    # from sessions on either side of a reload interleave.
    key = f"moved-{next(_keys)}"
    source = f"""
        import portcullis as pc
        def on_rcpt(tx, rcpt):
            n = pc.store.incr_sync("{key}")
            return pc.reject(f"{{'memory' if pc.store.in_memory() else 'redis'}} {{n}}", code=550, status="5.7.1")
        """
    with Harness([policy_file(source)], config={"store": {"url": "memory:"}}) as h:
        old = h.connect(helo="a")
        old.mail("x@example.com")
        assert old.rcpt("y@example.com").text == "memory 1"
        h.reload(config={"store": {"url": redis_url}})
        new = h.connect(helo="b")
        new.mail("x@example.com")
        assert new.rcpt("y@example.com").text == "redis 1"
        assert old.rcpt("y@example.com").text == "memory 2"
        assert new.rcpt("y@example.com").text == "redis 2"
        assert old.rcpt("y@example.com").text == "memory 3"

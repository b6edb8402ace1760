"""``pc.store``: state that policies keep between connections, shared by every
worker process and, with Redis, by every instance.

    count = await pc.store.incr(f"rate:{conn.client_ip}", ttl=60)
    await pc.store.set(f"grey:{triplet}", "1", ttl=36 * 86400)
    seen = await pc.store.get(f"grey:{triplet}")          # a str, or None

``[store] url`` picks the backend: ``"memory:"`` (the default) is a table in
memory shared by the daemon's worker processes (``[store] memory_entries``
keys; it lives as long as the daemon, through reloads); ``redis://HOST:PORT/DB``
(also ``rediss://`` and ``unix://``) is a Redis server, shared by several
daemons, its keys prefixed with ``[store] prefix`` (``"portcullis:"``).
Values are text (``set`` takes ``str``, ``int`` or ``float``); counters are
decimal integers, as in Redis. ``incr`` is atomic: a new key starts at 0 and
gets ``ttl`` seconds to live, an existing one keeps its expiry (a fixed
window; sliding windows are several keys; a key set without one keeps
none). A counter is what Redis's INCR reads as one: a decimal integer of 64
bits without a leading zero (``"007"`` and ``"-0"`` are not); incr on any
other value, or past 64 bits, is ValueError on both backends. Keys are at
most 200 bytes (a lone surrogate, ``surrogateescape``, is the byte it
stands for, on both backends) and, in memory, values at most 256; a ttl is
at most 1e9 seconds.

Plain (``def``) hooks use the ``*_sync`` forms. A store that cannot answer
(Redis down, past ``[store] timeout``) raises ``pc.store.Error``: the hook
fails and the client gets ``451 4.3.0`` (or the mail passes, per
``[policy] on_error``).

Both backends survive a SIGHUP: counters do not reset when a policy or an
alias file is reloaded.
"""

from __future__ import annotations

import asyncio
import functools
import types
import weakref
from typing import Any

import _portcullis_core as _core

from . import _context

__all__ = ["Error", "delete", "delete_sync", "get", "get_sync", "in_memory", "incr", "incr_sync", "run_at_once", "set",
           "set_sync"]

_DEFAULT_PREFIX = "portcullis:"
_DEFAULT_TIMEOUT = 2.0


class Error(Exception):
    """The store could not answer (Redis unreachable, a timeout, a full memory table)."""


# The memory backend's calls (bindings/store.cpp) check their own arguments, as the API
# promises; the Redis path checks them with the same code.
_checked_key = _core.store_checked_key
_checked_value = _core.store_checked_value
_checked_ttl = _core.store_checked_ttl
_checked_by = _core.store_checked_by


# -- Redis (python3-redis): one client per URL (and, for asyncio, per event loop), kept across reloads

_sync_clients: dict[tuple[str, float], Any] = {}
_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, float], Any]] = (
    weakref.WeakKeyDictionary())


# What Redis answers an INCRBY it refuses, and the memory table's ValueError for each
# (bindings/store.cpp's raise_for): both backends raise the same for the same value.
_REDIS_INCR_REFUSALS = (
    ("not an integer", "does not hold an integer (decimal, 64 bits, no leading zero, as Redis's INCR wants)"),
    ("would overflow", "would overflow 64 bits"),
)


def _redis_error(e: Exception, key: str = "") -> Exception:
    if type(e).__name__ == "ResponseError":
        for answer, why in _REDIS_INCR_REFUSALS:
            if answer in str(e):
                return ValueError(f"pc.store: {key[:100]} {why}")
    return Error(f"pc.store: Redis: {type(e).__name__}: {e}")


def _sync_client(url: str, timeout: float) -> Any:
    client = _sync_clients.get((url, timeout))
    if client is None:
        import redis

        client = _sync_clients[(url, timeout)] = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, decode_responses=True)
    return client


def _async_client(url: str, timeout: float) -> Any:
    clients = _async_clients.setdefault(asyncio.get_running_loop(), {})
    client = clients.get((url, timeout))
    if client is None:
        import redis.asyncio

        client = clients[(url, timeout)] = redis.asyncio.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, decode_responses=True)
    return client


def _px(ttl: float | None) -> int | None:
    return None if ttl is None else max(1, int(ttl * 1000))


def _redis_incr(client: Any, key: bytes, by: int, ttl: float | None) -> Any:
    pipe = client.pipeline(transaction=True)  # MULTI ... EXEC: atomic
    if ttl is not None:
        # Only a new key gets the ttl: SET NX makes it (at 0, with its expiry) only if it is
        # not there, and leaves an existing one as it is, expiry or none (as INCR does, and the
        # memory table). In the same MULTI as the INCRBY: no other client comes between.
        pipe.set(key, "0", px=_px(ttl), nx=True)
    pipe.incrby(key, by)
    return pipe.execute()


def _redis_key(prefix: str, key: object) -> bytes:
    # A lone surrogate stands for the byte it escapes, as the memory table counts it.
    return (prefix + _checked_key(key)).encode("utf-8", "surrogateescape")


def _redis_value(value: object) -> str:
    text = _checked_value(value)
    text.encode("utf-8")  # a lone surrogate: UnicodeEncodeError, as the memory table's set raises
    return text


# Each operation once, for Redis: (the call on a client and a prefixed key, what Redis's answer
# means, what the arguments after the key are checked with).
_REDIS_OPERATIONS: dict[str, tuple[Any, Any, tuple[Any, ...]]] = {
    "get": (lambda c, k: c.get(k), lambda r: r, ()),
    "set": (lambda c, k, text, ttl: c.set(k, text, px=_px(ttl)), lambda r: None, (_redis_value, _checked_ttl)),
    "incr": (_redis_incr, lambda r: int(r[-1]), (_checked_by, _checked_ttl)),
    "delete": (lambda c, k: c.delete(k), bool, ()),
}

# The memory backend's operations: they answer at once and check their own arguments.
_MEMORY_OPERATIONS: dict[str, Any] = {
    "get": _core.store_get, "set": _core.store_set, "incr": _core.store_incr, "delete": _core.store_delete,
}


def _redis_operation(name: str, prefix: str, key: object, args: tuple[Any, ...]) -> tuple[Any, Any, bytes, tuple[Any, ...]]:
    """(call, meaning, prefixed key, arguments) of a Redis operation, its key and arguments
    checked as the memory backend checks its own."""
    redis_op, meaning, checks = _REDIS_OPERATIONS[name]
    return redis_op, meaning, _redis_key(prefix, key), tuple(check(a) for check, a in zip(checks, args))


def _redis_call_sync(name: str, url: str, prefix: str, timeout: float, key: object, *args: Any) -> Any:
    redis_op, meaning, prefixed, args = _redis_operation(name, prefix, key, args)
    try:
        return meaning(redis_op(_sync_client(url, timeout), prefixed, *args))
    except Exception as e:
        raise _redis_error(e, key) from None  # type: ignore[arg-type]


def _redis_call(name: str, url: str, prefix: str, timeout: float, key: object, *args: Any) -> Any:
    redis_op, meaning, prefixed, args = _redis_operation(name, prefix, key, args)
    return _redis(redis_op, meaning, url, timeout, prefixed, args, key)


async def _redis(redis_op: Any, meaning: Any, url: str, timeout: float, prefixed: bytes, args: tuple[Any, ...],
                 key: Any) -> Any:
    try:
        return meaning(await redis_op(_async_client(url, timeout), prefixed, *args))
    except Exception as e:
        raise _redis_error(e, key) from None


class _Backend:
    """What a config's ``[store]`` makes: each operation as a call on
    (key, *arguments). ``calls`` answer at once (memory) or give a coroutine that gets the
    answer (Redis: the async API awaits it, ``_Coroutine``); ``sync_calls`` answer at once."""

    __slots__ = ("config", "calls", "sync_calls")

    def __init__(self, config: Any) -> None:
        table = config.get("store", {})
        url, prefix, timeout = (table.get("url", "memory:"), table.get("prefix", _DEFAULT_PREFIX),
                                float(table.get("timeout", _DEFAULT_TIMEOUT)))
        self.config = config
        if url == "memory:":
            self.calls = self.sync_calls = _MEMORY_OPERATIONS
        else:
            self.calls = {name: functools.partial(_redis_call, name, url, prefix, timeout) for name in _REDIS_OPERATIONS}
            self.sync_calls = {name: functools.partial(_redis_call_sync, name, url, prefix, timeout)
                               for name in _REDIS_OPERATIONS}


# The last config's backend: asked for every call, and a config is not changed once loaded
# (a reload makes a new one).
_last_backend = _Backend({})


def _backend() -> _Backend:
    global _last_backend
    config = _context.current_config()
    if config is not _last_backend.config:
        _last_backend = _Backend(config)
    return _last_backend


_Coroutine = types.CoroutineType


# -- the API


def in_memory() -> bool:
    """Whether ``[store] url`` is the memory store, whose calls never wait: a policy may then
    run its store logic in plain hooks (``run_at_once``), with no trip to the event loop."""
    return _backend().calls is _MEMORY_OPERATIONS


def run_at_once(coroutine: Any) -> Any:
    """Runs ``coroutine`` to its end now and returns its result, for a coroutine that awaits
    nothing but the memory store (which answers without waiting): one body of store logic
    serves ``async def`` hooks (any store) and plain ones (``in_memory()``). Raises
    RuntimeError if the coroutine would wait."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    coroutine.close()
    raise RuntimeError("pc.store.run_at_once: the coroutine waited (it needs an async hook)")


async def get(key: str) -> str | None:
    """The value at ``key``, or None."""
    answer = _backend().calls["get"](key)
    return (await answer) if type(answer) is _Coroutine else answer


async def set(key: str, value: str | int | float, ttl: float | None = None) -> None:  # noqa: A001
    """Sets ``key`` to ``value``, for ``ttl`` seconds (None: until deleted)."""
    answer = _backend().calls["set"](key, value, ttl)
    if type(answer) is _Coroutine:
        await answer


async def incr(key: str, ttl: float | None = None, *, by: int = 1) -> int:
    """Adds ``by`` to the counter at ``key`` (a new key starts at 0 and gets ``ttl``) and returns it."""
    answer = _backend().calls["incr"](key, by, ttl)
    return (await answer) if type(answer) is _Coroutine else answer


async def delete(key: str) -> bool:
    """Deletes ``key``; whether it was there."""
    answer = _backend().calls["delete"](key)
    return (await answer) if type(answer) is _Coroutine else answer


def get_sync(key: str) -> str | None:
    """``get`` for plain hooks."""
    return _backend().sync_calls["get"](key)


def set_sync(key: str, value: str | int | float, ttl: float | None = None) -> None:
    """``set`` for plain hooks."""
    _backend().sync_calls["set"](key, value, ttl)


def incr_sync(key: str, ttl: float | None = None, *, by: int = 1) -> int:
    """``incr`` for plain hooks."""
    return _backend().sync_calls["incr"](key, by, ttl)


def delete_sync(key: str) -> bool:
    """``delete`` for plain hooks."""
    return _backend().sync_calls["delete"](key)

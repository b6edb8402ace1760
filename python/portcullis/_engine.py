"""The Python side of the policy engine: loading policies, running hooks, answering jobs.

The daemon's policy thread calls ``run_host`` and never returns from it until
it asks to stop; see docs/policy-engine.md for the job and result dicts and
``run_host`` below for the exchange with ``_portcullis_core``. Policy authors
use ``portcullis.testing``, which drives this same engine in process.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import gc
import importlib.util
import inspect
import itertools
import linecache
import operator
import os
import queue
import re
import selectors
import sys
import threading
import time
import tomllib
import traceback
import types
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _portcullis_core as _core

from . import _context
from ._address import Address, AddressList, as_recipient, as_sender
from ._log import DETAIL, log, log_text, traceback_lines
from ._message import Message
from ._objects import ArcResult, Connection, DkimSignature, DmarcResult, SpfResult, Transaction, UpstreamReply
from ._verdicts import Verdict

#: The stages in SMTP order, with the arguments each hook is called with.
HOOK_ARGUMENTS: dict[str, tuple[str, ...]] = {
    "connect": ("conn",),
    "helo": ("conn", "hostname"),
    "auth": ("conn", "mechanism", "username", "password"),
    "mail": ("tx", "sender"),
    "rcpt": ("tx", "rcpt"),
    "data": ("tx", "message"),
    "delivered": ("tx", "reply"),
    "reset": ("tx",),
    "disconnect": ("conn",),
}
HOOK_NAMES = {f"on_{stage}": stage for stage in HOOK_ARGUMENTS}
#: Stages whose hooks are told, not asked: every hook runs, and what they return decides nothing.
NOTIFICATIONS = frozenset({"delivered", "reset", "disconnect"})

#: The positive reply of each stage, for verdicts that leave code and status to
#: the stage (accept, discard, redirect). RFC 2034 §3: no enhanced status code
#: in the greeting or the HELO/EHLO reply.
STAGE_POSITIVE_REPLY: dict[str, tuple[int, str]] = {
    "connect": (220, ""),
    "helo": (250, ""),
    "auth": (235, "2.7.0"),  # RFC 4954 §6
    "mail": (250, "2.1.0"),
    "rcpt": (250, "2.1.5"),
    "data": (250, "2.0.0"),
}

#: What the client gets for a hook error when policy.on_error is "tempfail".
POLICY_ERROR_REPLY = (451, "4.3.0", "Temporary policy failure, try again later")

ON_ERROR_CHOICES = ("tempfail", "accept")
DEFAULT_TIMEOUT = 10.0
DEFAULT_THREADS = 16
#: The name of every job's task (what asyncio.current_task().get_name() says in a hook).
JOB_TASK_NAME = "portcullis-job"
#: Seconds a stopping engine gives cancelled async hooks to unwind (the daemon waits 5 s in all).
STOP_GRACE = 1.0

_generations = itertools.count(1)
_get_ident, _monotonic = threading.get_ident, time.monotonic  # called at every hook
_first_step = _core.first_step  # an async hook's first step (most hooks' only one)
_call_with_deadline = _core.call_with_deadline  # a plain hook, pc.dns.resolve_sync bounded by its deadline
_scope = _context.scope  # set around every stage's hooks
_Result = _core.Result
# Frames of these files are the engine's, not the policy's: left out of tracebacks and stacks.
_INTERNAL_FILES = (__file__, os.path.dirname(concurrent.futures.__file__), os.path.dirname(asyncio.__file__),
                   threading.__file__)


def error_result(text: str) -> _core.Result:
    """A result that reports a failure; C++ applies policy.on_error. (None is the empty result: "next".)
    A lone surrogate in ``text`` (a hook's error quoting an undecodable header octet) is written
    as ``log_text`` writes it: it could not cross to C++, and the hook's error became an internal one."""
    result = _core.Result()
    result.error = log_text(text)
    return result


def job_from_dict(job: dict[str, Any]) -> Any:
    """A ``_core.Job`` from the dict form of docs/policy-engine.md (for ``portcullis.testing`` and tests)."""
    j = _core.Job()
    j.stage = job["stage"]
    j.generation = job.get("generation") or 0
    session = job.get("session") or {}
    j.session_id = str(session.get("id", ""))
    j.client_ip = str(session.get("client_ip", ""))
    j.client_port = int(session.get("client_port", 0))
    j.helo = session.get("helo") or ""
    j.tls = bool(session.get("tls", False))
    j.tls_version = session.get("tls_version") or ""
    j.tls_cipher = session.get("tls_cipher") or ""
    j.auth_user = session.get("auth_user")
    tx = job.get("tx")
    if tx is not None:
        options = tx.get("options") or {}
        j.has_tx = True
        j.tx_id = str(tx["id"])
        j.sender = str(tx.get("sender", ""))
        j.sender_params = dict(tx.get("sender_params") or {})
        j.recipients = [str(r) for r in tx.get("recipients") or []]
        j.smtputf8 = bool(options.get("smtputf8", False))
        j.body_8bit = bool(options.get("body_8bit", False))
        spf = tx.get("spf")
        if spf is not None:
            j.spf = (spf["result"], spf.get("domain", ""), spf.get("explanation"))
        dkim = tx.get("dkim")
        if dkim is not None:
            j.dkim = [(d["result"], d.get("domain", ""), d.get("selector", "")) for d in dkim]
        dmarc = tx.get("dmarc")
        if dmarc is not None:
            j.dmarc = (dmarc["result"], dmarc.get("domain", ""), dmarc.get("policy"), dmarc.get("disposition"),
                       dmarc.get("org_domain", ""), int(dmarc.get("pct", 100)), bool(dmarc.get("spf_aligned")),
                       bool(dmarc.get("dkim_aligned")), tuple(dmarc.get("from_domains", ())),
                       bool(dmarc.get("unusable_from")), bool(dmarc.get("arc_aligned")))
        arc = tx.get("arc")
        if arc is not None:
            j.arc = (arc["result"], int(arc.get("instances", 0)), list(arc.get("sealers", ())))
    for key in ("hostname", "mechanism", "username", "password", "rcpt"):
        if job.get(key) is not None:
            setattr(j, key, str(job[key]))
    if job.get("rcpt_params") is not None:
        j.rcpt_params = dict(job["rcpt_params"])
    if job.get("message") is not None:
        j.message = bytes(job["message"])
    reply = job.get("reply")  # delivered: the upstream's final reply
    if reply is not None:
        j.reply_code, j.reply_status, j.reply_text = int(reply[0]), str(reply[1]), str(reply[2])
    return j


def result_as_dict(result: Any) -> dict[str, Any]:
    """A ``_core.Result`` (or None) in the dict form of docs/policy-engine.md (for tests and the harness)."""
    d: dict[str, Any] = {"verdict": None, "auth": None, "error": None, "sender": None, "recipients": None,
                         "message": None}
    if result is None:
        return d
    v = result.verdict
    if v is not None:
        d["verdict"] = {"kind": v.kind, "code": v.code, "status": v.status, "text": v.text,
                        "addresses": list(v.addresses)}
    d.update(auth=result.auth, error=result.error, sender=result.sender, recipients=result.recipients,
             message=result.message)
    if result.message_prefix is not None:
        d["message_prefix"] = result.message_prefix
        if result.message_keep_from:
            d["message_keep_from"] = result.message_keep_from
    if result.generation:
        d["generation"] = result.generation
    return d


# -- loading -------------------------------------------------------------------


@dataclass(frozen=True)
class LoadProblem:
    """One thing wrong with a policy file or the config: where, what, and the traceback."""

    file: str
    line: int | None
    message: str
    traceback: str = ""

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.message}"


class PolicyLoadError(Exception):
    """The policies (or the config) could not be loaded; ``problems`` says where and why.

    ``str()`` is one ``file:line: message`` line per problem, followed by the
    tracebacks.
    """

    def __init__(self, problems: Sequence[LoadProblem]) -> None:
        self.problems = list(problems)
        lines = [str(p) for p in self.problems]
        lines += [p.traceback.rstrip() for p in self.problems if p.traceback]
        super().__init__("\n".join(lines))


def _ignore(*args: Any) -> None:
    pass


@dataclass(frozen=True, slots=True)
class Hook:
    """One policy module's hook for one stage. (Slotted, as Engine is: the
    daemon reads `function` and `observed_none` at every call, and a slot is
    what its attribute cache reads directly: bindings/attribute.hpp.)"""

    stage: str
    function: Callable[..., Any]
    file: str
    is_async: bool
    metrics: Any = None  # _core.HookMetrics: its calls' figures for [metrics] (not for on_unload)
    observed_none: Callable[[float], None] = _ignore  # metrics.none_observer: a call that returned None, its duration

    def __post_init__(self) -> None:
        if self.metrics is not None:
            object.__setattr__(self, "observed_none", self.metrics.none_observer)

    @property
    def label(self) -> str:
        return f"on_{self.stage} in {self.file}"


def load_config(config_path: str | os.PathLike[str] | None) -> dict[str, Any]:
    """The whole TOML config as a dict ({} without a file); PolicyLoadError on a bad file."""
    if config_path is None:
        return {}
    try:
        with open(config_path, "rb") as f:
            return parse_config(f.read(), config_path)
    except OSError as e:
        raise PolicyLoadError([LoadProblem(str(config_path), None, f"cannot read the config: {e.strerror}")]) from e


def parse_config(text: bytes, config_path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The config from the bytes the daemon parsed (so C++ and Python read one snapshot of the file)."""
    try:
        return tomllib.loads(text.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        match = re.search(r"at line (\d+)", str(e))
        raise PolicyLoadError([LoadProblem(str(config_path), int(match.group(1)) if match else None, str(e))]) from e


#: How a policy names a setting of its own table it refuses (portcullis.settings and the ready-made
#: policies): "[table] key: ..." or "[table]: unknown key(s) key, ...".
_SETTING_PROBLEM = re.compile(r"\[([A-Za-z0-9_-]+)\](?: ([A-Za-z0-9_-]+)[ :=]|: unknown keys?(?:\(s\))? ([A-Za-z0-9_-]+))")


def _setting_line(config_path: str, table: str, key: str) -> int | None:
    """The line of ``key`` in the config's ``[table]`` (a plain ``key = ...`` line), or None."""
    try:
        with open(config_path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    current = None
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if text.startswith("[") and not text.startswith("[["):
            current = text[1 : text.find("]")].strip().strip("\"'")
        elif current == table and re.match(rf"""(?:{re.escape(key)}|"{re.escape(key)}"|'{re.escape(key)}')\s*=""", text):
            return number
    return None


def _problem_from_exception(path: str, exc: BaseException, config_path: str | None = None) -> LoadProblem:
    # The traceback from the policy's own code on (not the import machinery's).
    tb = exc.__traceback__
    while tb is not None and (_is_internal(tb.tb_frame.f_code.co_filename)
                              or tb.tb_frame.f_code.co_filename.startswith("<frozen")):
        tb = tb.tb_next
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    if isinstance(exc, SyntaxError):
        return LoadProblem(exc.filename or path, exc.lineno, f"{type(exc).__name__}: {exc.msg}", text)
    # A setting the policy refuses: where it is in the config (CONTRACT.md: "with file and line").
    if isinstance(exc, ValueError) and config_path is not None and (m := _SETTING_PROBLEM.match(str(exc))):
        if (line := _setting_line(config_path, m.group(1), m.group(2) or m.group(3))) is not None:
            return LoadProblem(config_path, line, f"{exc} (refused by {path})")
    # The line: the innermost frame in the policy file itself.
    line = None
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        if frame.f_code.co_filename == path:
            line = lineno
    return LoadProblem(path, line, f"{type(exc).__name__}: {exc}", text)


class Engine:
    """One generation of loaded policies: the modules, their hooks, the config and the thread pool.

    ``files`` are loaded in order, each as its own module (a unique name, so
    two files called ``rules.py`` do not collide); relative paths are relative
    to the config file's folder (the current folder without one).
    ``portcullis.config`` is the config while the modules load and while
    their hooks run. Any problem (a missing file, a syntax error, an exception
    at import, a hook that is not callable or cannot take its arguments)
    raises ``PolicyLoadError`` listing every problem with file and line.
    """

    # Slots: the daemon reads `timeout` and `hooks` at every job, and a slot
    # is what its attribute cache reads directly (bindings/attribute.hpp).
    __slots__ = ("timeout", "on_error", "threads", "config_path", "config", "folder", "files", "generation",
                 "sessions", "held", "modules", "hooks", "unloaders", "executor", "closed", "hook_counts",
                 "async_only", "any_async")

    def __init__(
        self,
        files: Iterable[str | os.PathLike[str]],
        config_path: str | os.PathLike[str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        on_error: str = "tempfail",
        threads: int = DEFAULT_THREADS,
        *,
        config: dict[str, Any] | None = None,
    ) -> None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(f"policy timeout must be a positive number of seconds, not {timeout!r}")
        if on_error not in ON_ERROR_CHOICES:
            raise ValueError(f"policy on_error must be one of {', '.join(ON_ERROR_CHOICES)}, not {on_error!r}")
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"policy threads must be a positive integer, not {threads!r}")
        self.timeout = float(timeout)
        self.on_error = on_error
        self.threads = threads
        self.config_path = None if config_path is None else str(config_path)
        self.config: dict[str, Any] = config if config is not None else load_config(config_path)
        base = Path(config_path).resolve().parent if config_path is not None else Path.cwd()
        self.folder = base  # pc.path() resolves a policy's files as the daemon resolves config paths
        self.files = [str(base / Path(f)) for f in files]
        self.generation = next(_generations)
        self.sessions = 0  # sessions bound to this generation (see EngineHost)
        self.held = False  # the daemon still hands out sessions of this generation (see EngineHost)
        self.modules: list[types.ModuleType] = []
        self.hooks: dict[str, list[Hook]] = {stage: [] for stage in HOOK_ARGUMENTS}
        self.unloaders: list[Hook] = []  # on_unload(), called when this generation is retired

        problems: list[LoadProblem] = []
        token = _context.scope.set(("", self.config, self.folder))
        try:
            for index, path in enumerate(self.files):
                problems += self._load(index, path)
        finally:
            _context.scope.reset(token)
        if problems:
            self._unregister_modules()
            raise PolicyLoadError(problems)
        self.executor = DaemonThreadPool(threads, f"portcullis-policy-{self.generation}")
        self.closed = False
        # What the daemon needs to route jobs: hooks per stage, the stages
        # whose hooks are all async (they run on the event loop) and those
        # with any (a policy worker runs them; the others, all plain, run on
        # the I/O thread itself). _core.STAGES is the daemon's order.
        self.hook_counts = [len(self.hooks[stage]) for stage in _core.STAGES]
        self.async_only = sum(1 << i for i, stage in enumerate(_core.STAGES)
                              if self.hooks[stage] and all(h.is_async for h in self.hooks[stage]))
        self.any_async = sum(1 << i for i, stage in enumerate(_core.STAGES)
                             if any(h.is_async for h in self.hooks[stage]))

    def _load(self, index: int, path: str) -> list[LoadProblem]:
        if not os.path.isfile(path):
            return [LoadProblem(path, None, "no such policy file")]
        stem = re.sub(r"\W", "_", Path(path).stem)
        name = f"portcullis_policy_{self.generation}_{index}_{stem}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            return [LoadProblem(path, None, "not loadable as a Python module")]
        module = importlib.util.module_from_spec(spec)
        # Registered like any module, so dataclasses, pickle and typing can find it.
        sys.modules[name] = module
        self.modules.append(module)
        try:
            spec.loader.exec_module(module)
        except BaseException as e:  # KeyboardInterrupt, GeneratorExit, the policy's own too: its file and line
            return [_problem_from_exception(path, e, self.config_path)]
        return self._collect_hooks(module, path)

    def _collect_hooks(self, module: types.ModuleType, path: str) -> list[LoadProblem]:
        problems = []
        for attr, value in vars(module).items():
            if attr == "on_unload":
                problems += self._collect_unloader(value, path)
                continue
            stage = HOOK_NAMES.get(attr)
            if stage is None:
                if attr.startswith("on_") and inspect.isfunction(value) and value.__module__ == module.__name__:
                    log.warning("%s:%d: %s is not a hook name (hooks: %s); it is never called",
                                path, value.__code__.co_firstlineno, attr, ", ".join(HOOK_NAMES))
                continue
            line = getattr(getattr(value, "__code__", None), "co_firstlineno", None)
            if not callable(value):
                problems.append(LoadProblem(path, line, f"{attr} is not a function"))
                continue
            arguments = HOOK_ARGUMENTS[stage]
            try:
                inspect.signature(value).bind(*arguments)
            except TypeError:
                problems.append(LoadProblem(
                    path, line, f"{attr} cannot be called with its {len(arguments)} argument(s) ({', '.join(arguments)})"))
                continue
            except ValueError:
                pass  # no signature to inspect (some builtins): find out at the call
            is_async = inspect.iscoroutinefunction(value) or inspect.iscoroutinefunction(
                getattr(value, "__call__", None))
            self.hooks[stage].append(Hook(stage, value, path, is_async, _core.HookMetrics(path, stage)))
        return problems

    def _collect_unloader(self, value: Any, path: str) -> list[LoadProblem]:
        line = getattr(getattr(value, "__code__", None), "co_firstlineno", None)
        try:
            if not callable(value):
                raise TypeError
            inspect.signature(value).bind()
        except TypeError:
            return [LoadProblem(path, line, "on_unload must be a function without arguments")]
        except ValueError:
            pass
        self.unloaders.append(Hook("unload", value, path, inspect.iscoroutinefunction(value)))
        return []

    def _run_unloaders(self) -> None:
        """Each policy's on_unload(), last loaded first; failures are logged, never raised."""
        token = _context.scope.set(("", self.config, self.folder))
        try:
            for hook in reversed(self.unloaders):
                try:
                    value = hook.function()
                    if inspect.isawaitable(value):
                        try:
                            asyncio.get_running_loop().create_task(value)  # on the policy loop: it finishes there
                        except RuntimeError:
                            asyncio.run(asyncio.wait_for(value, self.timeout))
                except Exception as e:
                    _raised(hook, e).log()
        finally:
            _context.scope.reset(token)

    def _unregister_modules(self) -> None:
        for module in self.modules:
            if sys.modules.get(module.__name__) is module:
                del sys.modules[module.__name__]

    def close(self) -> None:
        """Drops this generation: its thread pool (hooks still running are left to finish) and modules."""
        if getattr(self, "closed", True):
            return
        self.closed = True
        self._run_unloaders()  # close pools, flush state: before the modules go
        self.executor.shutdown(wait=False, cancel_futures=True)
        self._unregister_modules()
        # A module is a cycle (its functions hold its globals): only the collector frees
        # it, and its full pass hardly ever runs on its own (a policy's big tables are
        # strings, which it does not count): each reload kept the old tables. Let go of
        # here (a hook still running holds what it uses), and collected now.
        self.modules, self.unloaders = [], []
        self.hooks = {stage: [] for stage in self.hooks}
        gc.collect()

    def __repr__(self) -> str:
        return f"<Engine generation {self.generation}: {len(self.files)} file(s), {self.sessions} session(s)>"


def check_policies(files: Iterable[str], config_path: str | None = None) -> list[str]:
    """For ``portcullis --check-config``: every problem as ``file:line: message``; [] when all load."""
    try:
        Engine(files, config_path).close()
    except PolicyLoadError as e:
        return [str(p) for p in e.problems]
    return []


# -- running hooks ---------------------------------------------------------------


class DaemonThreadPool(concurrent.futures.Executor):
    """A fixed-size pool of daemon threads for plain hooks.

    Like ``ThreadPoolExecutor`` (threads started as work arrives, up to
    ``max_workers``), except that its threads are daemon threads: a hook that
    never returns must not keep the daemon from exiting, and
    ``ThreadPoolExecutor`` joins its threads at interpreter exit.
    """

    def __init__(self, max_workers: int, name: str) -> None:
        self._max_workers = max_workers
        self._name = name
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = threading.Semaphore(0)
        self._lock = threading.Lock()
        self._shut_down = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        with self._lock:
            if self._shut_down:
                raise RuntimeError("cannot run hooks on a closed engine")
            future: concurrent.futures.Future[Any] = concurrent.futures.Future()
            self._queue.put((future, fn, args, kwargs))
            if not self._idle.acquire(blocking=False) and len(self._threads) < self._max_workers:
                thread = threading.Thread(target=self._work, name=f"{self._name}-{len(self._threads)}", daemon=True)
                thread.start()
                self._threads.append(thread)
        return future

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            future, fn, args, kwargs = item
            del item
            if future.set_running_or_notify_cancel():
                try:
                    result = fn(*args, **kwargs)
                except BaseException as e:
                    future.set_exception(e)
                    del e
                else:
                    future.set_result(result)
                    del result
            del future, fn, args, kwargs
            self._idle.release()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shut_down = True
            if cancel_futures:
                while True:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is not None:
                        item[0].cancel()
            for _ in self._threads:
                self._queue.put(None)
        if wait:
            for thread in self._threads:
                thread.join()


class HookFailure(Exception):
    """A hook raised, ran past the timeout, or returned something it may not.

    ``summary`` is one line; ``detail`` the traceback or stack lines under it
    (each its own log line); ``text`` both, for the result's ``error``.
    """

    def __init__(self, summary: str, detail: Sequence[str] = (), *, timed_out: bool = False) -> None:
        self.summary = summary
        self.timed_out = timed_out  # it ran past policy.timeout
        self.detail = list(detail)
        self.text = summary + "".join("\n" + line for line in self.detail) + ("\n" if self.detail else "")
        super().__init__(self.text)

    def log(self) -> None:
        """Logs it: the summary, then the detail a line at a time."""
        log.error("%s", self.summary, extra={DETAIL: self.detail})


class HookExit(Exception):
    """A hook called sys.exit(): the daemon must not exit for that."""


def _is_internal(filename: str) -> bool:
    return filename == __file__ or filename.startswith(_INTERNAL_FILES[1:])


def format_exception(exc: BaseException) -> str:
    """The traceback of ``exc`` starting at the policy's code (engine and asyncio frames left out)."""
    tb = exc.__traceback__
    while tb is not None and _is_internal(tb.tb_frame.f_code.co_filename):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def exception_lines(exc: BaseException) -> list[str]:
    """``format_exception`` as log lines (see ``_log.traceback_lines``)."""
    return traceback_lines(exc, _is_internal)


def _format_frames(frames: Iterable[tuple[str, int, str]]) -> str:
    lines = []
    for filename, lineno, name in frames:
        if _is_internal(filename):
            continue
        lines.append(f'  File "{filename}", line {lineno}, in {name}\n')
        source = linecache.getline(filename, lineno).strip()
        if source:
            lines.append(f"    {source}\n")
    return "".join(lines)


def _coroutine_frames(coro: Any) -> list[tuple[str, int, str]]:
    """Where a suspended coroutine (and what it awaits, down the chain) stands."""
    frames = []
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is None:
            break
        frames.append((frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name))
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return frames


def _thread_frames(thread_id: int | None) -> list[tuple[str, int, str]]:
    frame = sys._current_frames().get(thread_id) if thread_id is not None else None
    return [(f.f_code.co_filename, lineno, f.f_code.co_name) for f, lineno in traceback.walk_stack(frame)][::-1] \
        if frame is not None else []


def _exit_of(e: SystemExit) -> HookExit:
    return HookExit(f"the hook called sys.exit({e.code!r})")


def _call_sync(function: Callable[..., Any], args: tuple[Any, ...], where: dict[str, int] | None,
               deadline: float) -> Any:
    if where is not None:
        where["thread"] = threading.get_ident()
    try:
        return _call_with_deadline(deadline, function, args)  # (pc.dns.resolve_sync waits no longer)
    except SystemExit as e:
        raise _exit_of(e) from None


#: The job tasks the engine itself cancelled (abandoned at their deadline, the daemon stopping):
#: any other cancel of a job's task is a hook's doing (see _hook_failed).
_engine_cancels: weakref.WeakSet[asyncio.Future[Any]] = weakref.WeakSet()


def _cancel(task: asyncio.Future[Any]) -> None:
    """Cancels a job's task for the engine (not a hook's failure, unlike a hook's own cancel)."""
    _engine_cancels.add(task)
    task.cancel()


def _hook_failed(e: BaseException) -> bool:
    """Whether ``e``, out of a hook called in a task, is the hook's failure: any exception
    (KeyboardInterrupt, a BaseException of the policy's own, a GeneratorExit or a cancel of
    its own task) but the engine's cancel of the task (the job abandoned, the daemon
    stopping) and the closing of its coroutine, which go on up. Called in the frame that
    awaited the hook. (Out of the loop, a KeyboardInterrupt would stop the policy engine for
    every session.)"""
    if isinstance(e, GeneratorExit):
        # close() throws a new one into each frame where it waits, innermost first: this
        # frame's has no frame under it. One the hook raised comes up from the hook's frames.
        tb = e.__traceback__
        return tb is not None and tb.tb_next is not None
    if isinstance(e, asyncio.CancelledError):
        task = asyncio.current_task()
        if task is None or not task.cancelling():
            return True  # raised by the hook itself
        if task in _engine_cancels:
            return False
        task.uncancel()  # the hook cancelled its own task: its failure, and the cancel is spent
        return True
    return True


async def _spend_cancel(task: asyncio.Future[Any]) -> None:
    # A hook cancelled its own task and returned: the cancel, due at the task's next step,
    # would fail the next hook that waits, or end the task with the job's result lost (as
    # "abandoned"). Taken here, the job goes on as one whose first steps the daemon takes does.
    try:
        await asyncio.sleep(0)
    except asyncio.CancelledError:
        if task in _engine_cancels:
            raise
        task.uncancel()


def _failure(hook: Hook, e: BaseException) -> HookFailure:
    """What a hook that raised ``e`` (HookFailure, SystemExit or any other exception) fails its stage with."""
    if isinstance(e, HookFailure):
        return e
    return _raised(hook, _exit_of(e) if isinstance(e, SystemExit) else e)


def _raised(hook: Hook, e: BaseException) -> HookFailure:
    return HookFailure(f"{hook.label} raised an exception:", exception_lines(e))


async def call_hook(engine: Engine, hook: Hook, args: tuple[Any, ...], loop: asyncio.AbstractEventLoop) -> Any:
    """Runs one hook with the engine's timeout; returns its value or raises HookFailure.

    ``loop`` is the running loop (passed down: asking asyncio for it costs a
    getpid() system call per hook). ``async def`` hooks run in the calling
    task and are cancelled on timeout; plain hooks run in the engine's thread
    pool (in a copy of this context, so ``pc.log`` knows the session) and
    are abandoned on timeout: a thread cannot be stopped, it frees its pool
    slot when the hook returns.
    """
    deadline = loop.time() + engine.timeout
    try:
        if hook.is_async:
            value = await _await_with_deadline(hook, hook.function(*args), deadline, engine.timeout, loop)
        else:
            where: dict[str, int] = {}
            context = contextvars.copy_context()
            future = loop.run_in_executor(engine.executor, context.run, _call_sync, hook.function, args, where,
                                          deadline)
            try:
                done, _ = await asyncio.wait({future}, timeout=engine.timeout)
            except asyncio.CancelledError:
                future.cancel()
                raise
            if not done:
                if future.cancel() and "thread" not in where:
                    fate = f"never started: all {engine.threads} policy threads were busy"
                    raise _timeout_failure(hook, engine.timeout, fate, "")
                stack = _format_frames(_thread_frames(where.get("thread")))
                raise _timeout_failure(hook, engine.timeout, "abandoned (its thread runs on)", stack)
            value = future.result()
            if inspect.isawaitable(value):  # a plain function that returned a coroutine
                value = await _await_with_deadline(hook, value, deadline, engine.timeout, loop)
    except HookFailure:
        raise
    except BaseException as e:
        if not _hook_failed(e):
            raise
        raise _raised(hook, e) from e
    return value


async def _await_with_deadline(hook: Hook, awaitable: Any, deadline: float, timeout: float,
                               loop: asyncio.AbstractEventLoop) -> Any:
    # Most hooks finish without ever suspending: their first step runs here,
    # in this task, and only a hook that suspends gets a timer. At the
    # deadline the timer notes where the hook stands and cancels the task,
    # and the cancellation becomes the timeout failure. Awaited in this very
    # task: no task, no wait set, no extra loop turns per hook.
    steps = awaitable.__await__()
    try:
        returned, value = _first_step(steps)
    except SystemExit as e:
        raise _exit_of(e) from None
    if returned:
        if loop.time() > deadline:  # a first step that blocked: no timer could stop it
            raise _too_late(hook, timeout)
        return value
    return await _rest_with_deadline(hook, awaitable, steps, value, deadline, timeout, loop)


async def _rest_with_deadline(hook: Hook, awaitable: Any, steps: Any, first: Any, deadline: float, timeout: float,
                              loop: asyncio.AbstractEventLoop) -> Any:
    # The rest of _await_with_deadline, once the first step yielded ``first``.
    task = asyncio.current_task(loop)
    assert task is not None
    expired: list[str] = []

    def expire() -> None:
        expired.append(_format_frames(_coroutine_frames(awaitable)))
        task.cancel()

    timer = loop.call_at(deadline, expire)
    try:
        value = await _rest_of(steps, first)
    except asyncio.CancelledError:
        if not expired:
            raise  # the job itself is cancelled (abandoned, or the daemon stops)
        task.uncancel()
        raise _timeout_failure(hook, timeout, "cancelled", expired[0]) from None
    except SystemExit as e:
        raise _exit_of(e) from None
    finally:
        timer.cancel()
    if expired:  # the hook swallowed the cancellation and returned: too late all the same
        task.uncancel()
        raise _timeout_failure(hook, timeout, "cancelled", expired[0])
    if loop.time() > deadline:  # its last step blocked past the deadline, before the timer could fire
        raise _too_late(hook, timeout)
    return value


async def _run_with_deadline(hook: Hook, awaitable: Any, timeout: float) -> Any:
    # _await_with_deadline on a loop of its own (asyncio.run), where no policy loop runs.
    loop = asyncio.get_running_loop()
    return await _await_with_deadline(hook, awaitable, loop.time() + timeout, timeout, loop)


@types.coroutine
def _rest_of(steps: Any, yielded: Any) -> Any:
    """Awaits the rest of an awaitable whose first step yielded ``yielded``
    (what ``yield from`` does, from its second step on): the task waits for
    what it yields, and sends and throws into it."""
    while True:
        try:
            sent = yield yielded
        except GeneratorExit:
            steps.close()
            raise
        except BaseException as e:
            try:
                yielded = steps.throw(e)
            except StopIteration as done:
                return done.value
        else:
            try:
                yielded = steps.send(sent)
            except StopIteration as done:
                return done.value


def _forget(task: asyncio.Future[Any]) -> None:
    # A cancelled hook may still fail while unwinding: nobody waits for it any more.
    if not task.cancelled():
        task.exception()


def _too_late(hook: Hook, timeout: float) -> HookFailure:
    # A hook that answered past policy.timeout: its answer is not taken (docs/policy-api.md).
    return HookFailure(f"{hook.label} ran past policy.timeout ({timeout:g} s); its answer came too late",
                       timed_out=True)


def _timeout_failure(hook: Hook, timeout: float, fate: str, stack: str) -> HookFailure:
    text = f"{hook.label} ran past policy.timeout ({timeout:g} s) and was {fate}"
    if not stack:
        return HookFailure(text, timed_out=True)
    return HookFailure(text + "; it was at:", stack.rstrip("\n").split("\n"), timed_out=True)


# -- sessions and jobs -------------------------------------------------------------


class _Session:
    """What the host keeps per session: the engine it is bound to, its Connection, its Transaction.
    Made by the stage runner (``_job_objects.session``, under the host's lock), never by __init__:

    engine: the Engine of the daemon session's generation; conn: its Connection;
    scope: what _context.scope holds while its hooks run, (conn.id, engine.config, engine.folder);
    context: the contextvars.Context its plain hooks run in, the scope set in it (made by the stage
    runner at its first job: entering it costs less than setting the scope; async hooks run in tasks);
    tx: its Transaction, or None; connection: the daemon's view of the connection conn was last set
    from; envelope: the daemon's envelope tx holds unchanged (None: rebuild it at the next job);
    before: tx's sender and recipients as made, for rewrites.
    """

    __slots__ = ("engine", "conn", "scope", "context", "tx", "connection", "envelope", "before")


# A job's _Session and Connection, its Transaction (from the daemon's envelope, the truth: rewrites
# it did not apply are gone), the recipient of on_rcpt and the lazy Message of on_data (read from
# the daemon when a hook first looks at it; outside SMTPUTF8, header values it generates go out as
# RFC 2047 encoded-words): made in C for both binders, _StageRun and the stage runner.
_job_objects = _core.JobObjects(connection=Connection, session=_Session, transaction=Transaction, address=Address,
                                address_list=AddressList, message=Message, spf_result=SpfResult,
                                dkim_signature=DkimSignature, dmarc_result=DmarcResult, arc_result=ArcResult)


class EngineHost:
    """The current Engine, the sessions bound to engines, and ``dispatch`` for jobs.

    A session is bound to the engine of its first job's generation and
    stays on it until its disconnect, so a reload leaves sessions in progress
    on the old code; an old engine is dropped when its last session ends.

    A stage's hooks run two ways, both through ``_StageRun`` (the job bound
    to its session, and what the hooks' values make of it): ``dispatch``
    awaits ``_drive`` (the daemon's event loop for stages whose hooks are
    all async, and ``portcullis.testing``; plain hooks go to the engine's
    thread pool), and ``run_plain`` calls them in place in a flat loop (the
    daemon's I/O threads and policy workers: its hot path).
    The session table is shared by those threads, so it changes under
    ``_lock``; one session's jobs never run at once (the daemon awaits each).
    """

    # Slots: the daemon reads `engine` and `_lock` at every connection
    # (bindings/attribute.hpp reads a slot directly).
    __slots__ = ("_settings", "engine", "_sessions", "_retired", "_lock", "_reload_lock", "loop", "_running",
                 "_runner", "_loader")

    def __init__(
        self,
        files: Iterable[str | os.PathLike[str]],
        config_path: str | os.PathLike[str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        on_error: str = "tempfail",
        threads: int = DEFAULT_THREADS,
        *,
        config: dict[str, Any] | None = None,
    ) -> None:
        self._settings: dict[str, Any] = {
            "files": [str(f) for f in files], "config_path": config_path, "timeout": timeout,
            "on_error": on_error, "threads": threads, "config": config,
        }
        self.engine = Engine(**self._settings)
        _context.set_default_config(self.engine.config, self.engine.folder)
        self._sessions: dict[str, _Session] = {}
        self._retired: list[Engine] = []
        self._lock = threading.Lock()  # the session table and the engines' session counts
        self._reload_lock: asyncio.Lock | None = None
        #: The event loop async hooks run on when a policy worker meets one (set by run_host).
        self.loop: asyncio.AbstractEventLoop | None = None
        # Plain hooks running on policy workers, by thread: the loop logs
        # where one stands when the daemon abandons its job.
        self._running: dict[int, tuple[Hook, float]] = {}
        # run_plain's hot path, in C++ (it holds no reference to the host: no cycle).
        self._runner = _core.StageRunner(
            sessions=self._sessions, running=self._running, scope=_scope,
            leave_loop=_leave_loop, objects=_job_objects, upstream_reply=UpstreamReply,
            resume=EngineHost._resume_plain, slow=EngineHost._run_plain_slow,
            resume_async=EngineHost._resume_async, drive=EngineHost._drive,
            verdict_type=Verdict, positive_replies=STAGE_POSITIVE_REPLY)
        # Policies load off the loop (hooks keep running meanwhile), on a
        # daemon thread: a module that hangs at import must not block exit.
        self._loader = DaemonThreadPool(1, "portcullis-policy-loader")

    # -- reload --------------------------------------------------------------

    def _settings_with(self, changes: dict[str, Any]) -> dict[str, Any]:
        settings = dict(self._settings)
        settings.update({k: v for k, v in changes.items() if v is not None})
        if changes.get("config_path") is not None and changes.get("config") is None:
            settings["config"] = None  # a new file: read it
        return settings

    def _swap(self, engine: Engine, settings: dict[str, Any]) -> Engine:
        with self._lock:
            old, self.engine, self._settings = self.engine, engine, settings
            _context.set_default_config(engine.config, engine.folder)
            self._retired.append(old)
            self._close_if_unused(old)
        return engine

    def _close_if_unused(self, engine: Engine) -> None:
        # (Under _lock.) A retired generation lives while sessions are bound to it or the
        # daemon may still bind new ones (its settings snapshot has not moved on).
        if engine is not self.engine and engine.sessions == 0 and not engine.held and engine in self._retired:
            self._retired.remove(engine)
            engine.close()

    def _engine_of_generation(self, generation: Any) -> Engine:
        if not generation:
            return self.engine
        for engine in (self.engine, *self._retired):
            if engine.generation == generation:
                return engine
        raise LookupError(f"policy generation {generation} is no longer loaded")

    def release(self, generation: int) -> None:
        """The daemon will start no more sessions on ``generation`` (its settings moved on)."""
        with self._lock:
            try:
                engine = self._engine_of_generation(generation)
            except LookupError:
                return
            engine.held = False
            self._close_if_unused(engine)

    def reload(self, **changes: Any) -> Engine:
        """Loads the policies anew (with any of files, config_path, timeout, on_error,
        threads, config changed) and makes them current for new sessions.

        On failure raises ``PolicyLoadError`` and the engine in place stays.
        Blocks while the modules load; ``areload`` loads in a thread instead.
        """
        settings = self._settings_with(changes)
        return self._swap(Engine(**settings), settings)

    async def areload(self, **changes: Any) -> Engine:
        """``reload`` for the loop: the modules load in a worker thread, hooks keep running meanwhile."""
        if self._reload_lock is None:
            self._reload_lock = asyncio.Lock()
        async with self._reload_lock:
            settings = self._settings_with(changes)
            loop = asyncio.get_running_loop()
            engine = await loop.run_in_executor(self._loader, functools.partial(Engine, **settings))
            return self._swap(engine, settings)

    async def reload_job(self, job: dict[str, Any]) -> _core.Result:
        """Answers a ``{"stage": "reload", ...}`` job: error None, or why the old policies stay."""
        changes = {k: job.get(k) for k in ("files", "config_path", "timeout", "on_error", "threads")}
        try:
            if job.get("config_text") is not None:
                # The file may have changed since the daemon read it: never read it again.
                changes["config"] = parse_config(bytes(job["config_text"]), job.get("config_path"))
            engine = await self.areload(**changes)
            # The daemon makes its settings snapshot from this generation and
            # binds its sessions to it by number until it sends "release".
            engine.held = True
        except Exception as e:  # PolicyLoadError, or a bad setting in the job
            # Not logged here: the daemon tells it once, as its start-up, reload or
            # --check-config tells any problem (a line each).
            return error_result(str(e))
        log.info("policies loaded: %s", ", ".join(engine.files) or "none")
        result = _core.Result()
        result.generation = engine.generation
        result.hook_counts = engine.hook_counts
        result.async_only = engine.async_only
        result.any_async = engine.any_async
        return result

    def close(self) -> None:
        """Drops every engine (for shutdown)."""
        self._loader.shutdown(wait=False, cancel_futures=True)
        for engine in [self.engine, *self._retired]:
            engine.close()
        self._retired.clear()
        self._sessions.clear()

    @property
    def session_count(self) -> int:
        """Sessions in progress (between their connect and disconnect jobs)."""
        return len(self._sessions)

    def engine_of(self, session_id: str) -> Engine | None:
        """The engine a session is bound to, or None for an unknown session."""
        session = self._sessions.get(session_id)
        return session.engine if session else None

    # -- jobs ------------------------------------------------------------------

    async def dispatch(self, job: Any, loop: asyncio.AbstractEventLoop | None = None) -> Any:
        """Runs one job (a ``_core.Job``, or a reload/release dict) on this loop. Never raises.

        ``loop``: the running loop, if the caller has it at hand. Returns a
        ``_core.Result``, or None for the empty result ("next").
        """
        if isinstance(job, dict):
            stage = job.get("stage")
            if stage == "reload":
                return await self.reload_job(job)
            if stage == "release":
                self.release(job.get("generation"))
                return None
            return error_result(f"unknown job stage {stage!r}")
        return await self._drive(job, loop or asyncio.get_running_loop())

    def run_plain(self, job: Any, forgotten: Sequence[str] | None = None) -> Any:
        """Runs one job on the calling thread (a daemon I/O thread or policy worker, GIL held). Never raises.

        Plain hooks are called in place; the daemon enforces policy.timeout
        (it stops waiting and this thread's result is dropped). An async
        hook in the stage runs on the event loop meanwhile. ``forgotten``:
        sessions that ended without a disconnect job, dropped first.
        This is the daemon's hot path (a call per hook stage): the C++ stage
        runner (bindings/stage_runner.cpp) binds the job and calls the hooks,
        and hands over to ``_resume_plain`` at the first value that is not
        None (the daemon calls the runner itself, with no frame here).
        """
        if forgotten:
            self.forget(forgotten)
        return self._runner.run(self, job)

    def _run_plain_slow(self, job: Any) -> Any:
        """The stage runner's Python path for a whole job (auth, or a job it could not bind)."""
        try:
            run = _StageRun(self, job)
        except Exception as e:
            return _malformed(job.stage, e)
        if _stepping.loop is not None:  # a plain hook sees no running loop here
            _leave_loop()
        token = _scope.set(run.session.scope)
        try:
            return self._plain_hooks(run, 0, None)
        finally:
            _scope.reset(token)
            if run.stage == "disconnect":
                self._end_session(run.session)

    def _resume_plain(self, session: _Session, stage: str, args: tuple[Any, ...], message: Message | None,
                      envelope: tuple[Any, ...] | None, index: int, value: Any, raised: bool, start: float,
                      rewritten: tuple[Address, str] | None = None) -> Any:
        """Where the stage runner hands over: hook ``index`` gave ``value`` (an exception if
        ``raised``; it started at ``start``), or, at the end of the hooks, the transaction
        changed. ``rewritten``: (recipient, policy file) of a pc.rewrite() a hook before made
        (``args`` have it). The runner set the scope and resets it, and ends the session at disconnect."""
        run = _StageRun._bound(session, stage, args, message, envelope, rewritten)
        return self._plain_hooks(run, index, (value, raised, start) if index < len(run.hooks) else None)

    def _plain_hooks(self, run: _StageRun, index: int, first: tuple[Any, bool, float] | None) -> Any:
        """Calls run.hooks[index:] here and makes the job's result. ``first``: what the stage
        runner got from run.hooks[index] already (value, raised, start), or None."""
        engine = run.engine
        timeout, running, thread = engine.timeout, self._running, _get_ident()
        for hook in run.hooks[index:]:
            running[thread] = (hook, timeout)  # where report_stuck looks
            try:
                if first is None:
                    start = _monotonic()
                    # (run.args: a rewrite changes the recipient; the deadline: pc.dns.resolve_sync's)
                    value = _call_with_deadline(start + timeout, hook.function, run.args)
                else:
                    value, raised, start = first
                    first = None
                    if raised:
                        raise value
                # Async, or a plain hook returning a coroutine (a verdict, the usual value, is not: asked first).
                if value is not None and type(value) is not Verdict and inspect.isawaitable(value):
                    value = self._await_from_thread(engine, hook, value, start + timeout)
            except BaseException as e:  # (a thread of its own or an I/O thread's: nothing to pass on)
                value = _failure(hook, e)
            finally:
                del running[thread]
            elapsed = _monotonic() - start
            if elapsed > timeout and not isinstance(value, HookFailure):
                # The daemon may still wait (several hooks share the job's deadline): not for this one.
                value = _too_late(hook, timeout)
            if value is None:
                hook.observed_none(elapsed)
                continue
            _observed(hook, elapsed, value)
            if run.took(hook, value):
                break
        return run.finish()

    async def _drive(self, job: Any, loop: asyncio.AbstractEventLoop) -> Any:
        """Runs a stage job's hooks in file order with ``call_hook``, in this task on ``loop``."""
        try:
            run = _StageRun(self, job)
        except Exception as e:
            return _malformed(job.stage, e)
        return await self._drive_from(run, 0, None, loop)

    def _resume_async(self, session: _Session, stage: str, args: tuple[Any, ...], message: Message | None,
                      envelope: tuple[Any, ...] | None, index: int, pending: tuple[Any, bool, float, Any] | None,
                      loop: asyncio.AbstractEventLoop, rewritten: tuple[Address, str] | None = None) -> Any:
        """Where the stage runner hands a loop job over: the coroutine (for a task) that goes on
        from hook ``index``. ``pending``: what its first step gave, (value, raised, start,
        None), or (what it yielded, False, start, its coroutine) when it waits; None: not called.
        ``rewritten``: as for ``_resume_plain``."""
        run = _StageRun._bound(session, stage, args, message, envelope, rewritten)
        return self._drive_from(run, index, pending, loop)

    async def _drive_from(self, run: _StageRun, index: int, pending: tuple[Any, bool, float, Any] | None,
                          loop: asyncio.AbstractEventLoop) -> Any:
        """run.hooks[index:] in this task (``pending``: see ``_resume_async``), and the job's result."""
        token = _scope.set(run.session.scope)  # pc.log's session and pc.config, for the hooks
        timeout = run.engine.timeout
        task = asyncio.current_task(loop)
        try:
            for hook in run.hooks[index:]:
                try:
                    if pending is not None:  # the stage runner took its first step
                        value, raised, start, coro = pending
                        pending = None
                        if raised:
                            raise value
                        if coro is not None:  # it waits: value is what it yielded
                            value = await _rest_with_deadline(hook, coro, coro, value, start + timeout, timeout, loop)
                    elif hook.is_async:  # call_hook's case, inlined: the hook's first step here, most never wait
                        start = _monotonic()
                        coro = hook.function(*run.args)
                        returned, value = _first_step(coro)
                        if not returned:
                            value = await _rest_with_deadline(hook, coro, coro, value, start + timeout, timeout, loop)
                    else:
                        start = _monotonic()
                        value = await call_hook(run.engine, hook, run.args, loop)
                except BaseException as e:
                    if not _hook_failed(e):
                        raise
                    value = _failure(hook, e)
                elapsed = _monotonic() - start
                if task is not None and task._must_cancel and task not in _engine_cancels:
                    # The hook cancelled its own task and returned: spent now, not in the
                    # next hook's first wait (which it would fail) or at the end (the job lost).
                    await _spend_cancel(task)
                if elapsed > timeout and not isinstance(value, HookFailure):
                    # A step that blocked (a synchronous call in an async def) past the deadline
                    # before its timer could fire: too late, as for a plain hook.
                    value = _too_late(hook, timeout)
                if value is None:  # the common case, kept short (as in run_plain)
                    hook.observed_none(elapsed)
                    continue
                _observed(hook, elapsed, value)
                if run.took(hook, value):
                    break
            return run.finish()
        finally:
            _scope.reset(token)
            if run.stage == "disconnect":
                self._end_session(run.session)

    def forget(self, session_ids: Iterable[str]) -> None:
        """Drops the sessions (they ended; their policies had no on_disconnect hook)."""
        self._runner.forget(self, list(session_ids))  # (bindings/stage_runner.cpp, as _end_session)

    def report_stuck(self, thread: int, session_id: str) -> None:
        """The daemon abandoned the plain hook running on ``thread``: logs where it stands."""
        running = self._running.get(thread)
        if running is None:
            return  # it returned meanwhile
        hook, timeout = running
        stack = _format_frames(_thread_frames(thread))
        token = _context.scope.set((session_id, None, None))
        try:
            _timeout_failure(hook, timeout, "abandoned (its thread runs on)", stack).log()
        finally:
            _context.scope.reset(token)

    def _await_from_thread(self, engine: Engine, hook: Hook, awaitable: Any, deadline: float) -> Any:
        loop = self.loop
        if loop is None or loop.is_closed():
            return asyncio.run(_run_with_deadline(hook, awaitable, engine.timeout))
        context = contextvars.copy_context()  # pc.log knows the session there too

        async def on_loop() -> Any:
            try:
                return await _await_with_deadline(hook, awaitable, loop.time() + max(0.0, deadline - time.monotonic()),
                                                  engine.timeout, loop)
            except BaseException as e:  # a KeyboardInterrupt out of this task would stop the loop
                if not _hook_failed(e):
                    raise
                raise _failure(hook, e) from None

        future = asyncio.run_coroutine_threadsafe(context.run(on_loop), loop)
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            raise HookFailure(f"{hook.label} was cancelled (the policy engine is stopping)") from None

    def _new_session(self, generation: int, connection: tuple[Any, ...]) -> _Session:
        # The stage runner's (bindings/stage_runner.cpp): under _lock, bound to the engine of the
        # daemon session's generation (its C++ settings and Python policies are one snapshot).
        return self._runner.new_session(self, generation, connection)

    def _end_session(self, session: _Session) -> None:
        # The stage runner's: out of the table (under _lock), its engine's count down.
        self._runner.end_session(self, session)


def _observed(hook: Hook, elapsed: float, value: Any) -> None:
    """One hook call's figures ([metrics]): its duration, its verdict, whether it timed out."""
    if value is None:
        verdict = "none"
    elif isinstance(value, Verdict):
        verdict = value.kind
    elif isinstance(value, bool) and hook.stage == "auth":
        verdict = "accept" if value else "reject"
    else:  # HookFailure, or a value no hook may return (it fails the stage)
        verdict = "error"
    hook.metrics.observed(elapsed, verdict, isinstance(value, HookFailure) and value.timed_out)


def _malformed(stage: str, e: Exception) -> _core.Result:
    """The error answering a job the engine could not bind to its session."""
    log.error("malformed %s job: %s", stage, e)
    return error_result(f"malformed {stage} job: {format_exception(e)}")


def _checked_verdict(hook: Hook, stage: str, value: Any) -> Verdict:
    if not isinstance(value, Verdict):
        expected = "None, True, False or a verdict" if stage == "auth" else "None or a verdict (pc.accept(), pc.reject(...), ...)"
        raise HookFailure(f"{hook.label} returned {value!r:.200}; it must return {expected}")
    if not value.allowed_at(stage):
        where = "on_rcpt" if value.kind in ("redirect", "rewrite") else "on_rcpt and on_data"
        raise HookFailure(f"{hook.label} returned {value!r}, which only {where} may return")
    return value


class _StageRun:
    """One stage job bound to its session: the hooks to call in file order,
    their arguments, and how their values make the job's result (None: "next").
    The driver calls ``took`` with each value other than None or HookFailure,
    stops when it says the stage ended, then ``finish``."""

    __slots__ = ("session", "engine", "stage", "hooks", "args", "message", "result", "envelope", "rewritten",
                 "rewritten_by", "failed")

    def __init__(self, host: EngineHost, job: Any) -> None:
        stage, connection, envelope, arguments = job.state()  # one call into the daemon's job for it all
        session = host._sessions.get(connection[0])
        if session is None:
            session = host._new_session(job.generation, connection)
        elif connection != session.connection:  # the daemon's view moved (HELO, STARTTLS, AUTH)
            _job_objects.update_connection(session.conn, connection)
            session.connection = connection
        self.session = session
        self.engine = engine = session.engine
        self.stage = stage
        self.hooks: list[Hook] = engine.hooks[stage]
        self.message: Message | None = None
        self.result: _core.Result | None = None
        self.rewritten: Address | None = None  # the recipient a pc.rewrite() made, for the hooks after it
        self.rewritten_by = ""  # the policy file whose hook made it
        self.failed = False  # a hook failed and, per policy.on_error = "accept", the next ones were asked
        # The daemon's envelope, which session.tx holds unchanged again only
        # once this stage ends with no hook having changed it (see finish).
        self.envelope = envelope
        if envelope is None:
            session.tx = session.envelope = tx = None
        else:
            tx = session.tx
            if job.fresh_transaction:  # tx stays with a hook abandoned at its deadline: its writes go nowhere
                tx = _job_objects.transaction_of(session, envelope, True)
            elif tx is None or envelope != session.envelope:
                tx = _job_objects.transaction_of(session, envelope)
            session.envelope = None
        conn = session.conn
        if stage == "connect" or stage == "disconnect":
            self.args: tuple[Any, ...] = (conn,)
        elif stage == "helo":
            self.args = (conn, arguments)
        elif stage == "auth":
            self.args = (conn, *arguments)
        elif tx is None:
            raise LookupError(f"a {stage} job without a transaction")
        elif stage == "rcpt":
            self.args = (tx, _job_objects.address(*arguments))
        elif stage == "mail":
            self.args = (tx, tx._sender)
        elif stage == "delivered":
            self.args = (tx, UpstreamReply(*arguments))
        elif stage == "reset":
            self.args = (tx,)
        else:
            self.message = _job_objects.lazy_message(lambda: job.message, tx._smtputf8)
            self.args = (tx, self.message)

    @classmethod
    def _bound(cls, session: _Session, stage: str, args: tuple[Any, ...], message: Message | None,
               envelope: tuple[Any, ...] | None, rewritten: tuple[Address, str] | None = None) -> _StageRun:
        """A run the stage runner bound already (as __init__ does): the hooks saw ``args``, and
        ``rewritten`` is (recipient, policy file) of a rewrite they made, or None."""
        run = cls.__new__(cls)
        run.session, run.engine, run.stage = session, session.engine, stage
        run.hooks = session.engine.hooks[stage]
        run.args, run.message, run.envelope = args, message, envelope
        run.result = None
        run.rewritten, run.rewritten_by = rewritten or (None, "")
        run.failed = False
        return run

    def took(self, hook: Hook, value: Any) -> bool:
        """A hook's value (not None) or HookFailure: whether the stage ends with it. Never raises."""
        try:
            if isinstance(value, HookFailure):
                return self.fail(hook, value)
            try:
                return self.decide(hook, value)
            except HookFailure as f:
                return self.fail(hook, f)
        except Exception as e:  # a bug here must still answer the job
            self.result = _internal_error(self.stage, e)
            return True

    def decide(self, hook: Hook, value: Any) -> bool:
        """A hook returned ``value`` (not None): whether the stage ends with it."""
        stage = self.stage
        if stage in NOTIFICATIONS:
            return False  # nothing left to decide: the next hooks run
        result = _core.Result()
        if stage == "auth" and isinstance(value, bool):
            result.auth = value
        else:
            verdict = _checked_verdict(hook, stage, value)
            if verdict.kind == "rewrite":  # not final: the next hooks see the new recipient
                self.rewritten = verdict.addresses[0]
                self.rewritten_by = hook.file
                self.args = (self.args[0], self.rewritten)
                return False
            result.verdict = verdict_reply(verdict, stage)
            if stage == "auth":
                result.auth = verdict.kind == "accept"
        result.decided_by = hook.file  # for the daemon's log
        self.result = result
        return True

    def fail(self, hook: Hook, failure: HookFailure) -> bool:
        """A hook failed: logged; whether the stage ends with the error (not at disconnect, nor
        with policy.on_error = "accept": the next hooks are asked, as after a None)."""
        failure.log()
        if self.stage in NOTIFICATIONS:
            return False
        if self.engine.on_error == "accept":
            # A policy listed after a failing one (a blocklist, say) still decides; what the
            # stage rewrote is dropped (the failed hook may have left it half-changed).
            log.warning("policy error in on_%s (accepting, per policy.on_error): %s; the next hooks are asked, "
                        "and this stage's rewrites are dropped", self.stage, failure.summary)
            self.failed = True
            return False
        self.result = error_result(failure.text)
        self.result.decided_by = hook.file
        return True

    def finish(self) -> _core.Result | None:
        """The job's result: the deciding hook's, or the error, with the hooks' rewrites. Never raises."""
        result = self.result
        if self.failed:  # (policy.on_error = "accept") the verdict of a hook after the failure, or None
            return result
        if self.rewritten is not None and (result is None or (result.verdict is not None
                                                              and result.verdict.kind == "accept")):
            # Rewritten and then let through: the daemon delivers to the new recipient.
            result = self.result = result or _core.Result()
            # A redirect to it (the rewrite's address was checked when it was made: no Verdict again).
            code, status = STAGE_POSITIVE_REPLY[self.stage]
            result.verdict = _core.VerdictReply("redirect", code, status, None, [str(self.rewritten)])
            result.decided_by = self.rewritten_by
        if self.stage in NOTIFICATIONS:
            return None  # (what a notification hook changed goes nowhere)
        if result is not None and result.error is not None:
            return result
        tx = self.session.tx
        if tx is None and self.message is None:
            return result  # connect, helo, auth: nothing to rewrite
        if self.args[0] is not tx:
            # The daemon gave up on this stage at its deadline and a later one renewed the
            # session's transaction: the session is that stage's now (this result goes nowhere).
            return result
        try:
            return self._with_rewrites(tx, result)
        except (ValueError, TypeError) as e:
            text = f"a rewrite at {self.stage} was refused: {type(e).__name__}: {e}"
            log.error("%s", text)
            return error_result(text)
        except Exception as e:  # a bug here must still answer the job
            return _internal_error(self.stage, e)

    def _with_rewrites(self, tx: Transaction | None, result: _core.Result | None) -> _core.Result | None:
        session, message = self.session, self.message
        if tx is not None:
            before_sender, before_recipients = session.before
            now = tx._recipients
            # Addresses are immutable: the same objects in the same order are the same envelope.
            if (tx._sender is before_sender and len(now) == len(before_recipients)
                    and all(map(operator.is_, now, before_recipients))):
                session.envelope = self.envelope  # nothing assigned or put in: tx still is what the daemon sent
            else:
                # The strings of the objects tx was made with are the daemon's.
                old_sender, old_recipients = str(before_sender), [str(r) for r in before_recipients]
                sender = str(as_sender(tx._sender))
                recipients = [str(as_recipient(r)) for r in now]
                if sender == old_sender and recipients == old_recipients:
                    session.envelope = self.envelope  # tx still is what the daemon sent
                else:
                    result = result or _core.Result()
                    if sender != old_sender:
                        result.sender = sender
                    if recipients != old_recipients:
                        result.recipients = recipients
        if message is not None and message.changed:
            result = result or _core.Result()
            on_top = message._added_on_top()
            new_head = None if on_top is not None else message._new_head()
            if on_top is not None:
                result.message_prefix = on_top  # the daemon's message stays where it is
            elif new_head is not None:  # the fields changed, not the body: it stays where it is
                result.message_prefix, result.message_keep_from = new_head
            else:
                result.message = message._checked_raw()
        # A signing or sealing choice goes back from the stage that made it (MAIL on), not from
        # on_data alone: a policy with no on_data hook has no job there.
        if tx is not None and (tx._dkim_sign is not None or tx._arc_seal is not None):
            result = result or _core.Result()
            if tx._dkim_sign is not None:
                result.dkim_sign = "" if tx._dkim_sign is False else tx._dkim_sign
            if tx._arc_seal is not None:
                result.arc_seal = tx._arc_seal
        return result


def _internal_error(stage: str, e: Exception) -> _core.Result:
    log.error("internal error in the policy engine at %s:", stage, extra={DETAIL: exception_lines(e)})
    return error_result(f"internal error in the policy engine at {stage}:\n{format_exception(e)}")


def verdict_reply(verdict: Verdict, stage: str) -> _core.VerdictReply:
    """A verdict as the daemon applies it, with the stage's code and status where it leaves them."""
    code, status = verdict.code, verdict.status
    if code is None or status is None:
        code, status = STAGE_POSITIVE_REPLY[stage]
    return _core.VerdictReply(verdict.kind, code, status, verdict.text, [str(a) for a in verdict.addresses])


# -- the daemon's policy thread ------------------------------------------------------


class _JobRunner:
    """Takes jobs from the daemon when its eventfd fires, runs each as a task, completes it."""

    def __init__(self, host: EngineHost, loop: asyncio.AbstractEventLoop, core: Any, wakeup_fd: int) -> None:
        self.host, self.loop, self.core, self.wakeup_fd = host, loop, core, wakeup_fd
        self.tasks: dict[asyncio.Task[None], Any] = {}  # task -> job id
        self.by_id: dict[Any, asyncio.Task[None]] = {}  # job id -> task
        self.stopping = False
        self.stopped: asyncio.Future[None] = loop.create_future()
        # start(job_id, job) and run_here(job_id, job), in C (bindings/job_tasks.cpp): a stage
        # job's task runs a _core.JobCoroutine (the stage runner's first steps, then whatever is
        # left, awaited), a reload job's runs host.dispatch; the task's first step is taken at
        # once. A stage job that ends in its first steps leaves its task waiting, idle, and the
        # next stage job runs in it (woken at once: no task made per job; end_idle ends it).
        # start -> (True, the job's result) if the job ended there, else (False, the task),
        # handed to _waiting. run_here is start for a daemon I/O thread that holds the
        # loop's turn (the loop's thread waits in select(): no hand-off and no wake-up for a
        # job whose hooks do not wait): the job's result (a _core.Result or None) if the job
        # ended and left the loop nothing to do; else a bool, whether the loop's thread must
        # look now (the task waits for a timer, or left callbacks to run); the job is then
        # completed through the daemon.
        self.starter = _core.JobStarter(self, loop, host, JOB_TASK_NAME, _enter_loop)
        self.start, self.run_here, self.start_task = self.starter.start, self.starter.run_here, self.starter.start_task

    async def run(self) -> None:
        self.host.loop = self.loop
        set_runner = getattr(self.core, "set_plain_runner", None)
        if set_runner is not None:
            set_runner(self.host)  # the daemon's I/O threads and policy workers run its plain stages
        # The daemon's I/O threads start tasks themselves while the loop lends them its turn
        # (_TurnLendingSelector; a loop that never lends it never gets such a call).
        set_loop_runner = getattr(self.core, "set_loop_runner", None)
        if set_loop_runner is not None:
            set_loop_runner(self.starter)  # (its run_here, called from C++)
        self.loop.add_reader(self.wakeup_fd, self.on_wakeup)
        try:
            self.loop.call_soon(self.drain)  # jobs queued before the reader was in place (outside this task)
            await self.stopped
        finally:
            self.loop.remove_reader(self.wakeup_fd)
            self.starter.end_idle()  # the task kept for the next job ends: none is left pending
            if set_runner is not None:
                set_runner(None)
            if set_loop_runner is not None:
                set_loop_runner(None)

    def on_wakeup(self) -> None:
        # Reset the eventfd first: a job queued after this read writes it again.
        try:
            os.read(self.wakeup_fd, 8)
        except (BlockingIOError, InterruptedError):
            pass
        self.drain()

    def drain(self) -> None:
        try:
            # One call into the daemon per wake-up, for everything it has for the loop.
            forgotten, jobs, cancelled, stuck, stopping = self.core.take_all()
        except Exception:
            log.exception("take_all failed")
            return
        if forgotten:
            self.host.forget(forgotten)
        for job_id, job in jobs:
            if stopping or job_id in cancelled:  # one the same wake-up cancels (or the stop) never starts
                self.complete(job_id, self.cancelled_result(stopping))
            else:
                done, result = self.start(job_id, job)
                if done:
                    self.complete(job_id, result)
        # Jobs whose session stopped waiting (its deadline passed): async
        # hooks are cancelled, their results discarded by the daemon; a plain
        # hook's thread cannot be stopped, so where it stands is logged.
        for job_id in cancelled:
            task = self.by_id.get(job_id)
            if task is not None:
                _cancel(task)
        for thread, session_id in stuck:
            self.host.report_stuck(thread, session_id)
        if stopping and not self.stopping:
            # The daemon stops once its sessions are done (or their grace ran
            # out): what still runs is cancelled, and answered with an error.
            self.stopping = True
            for task in list(self.tasks):
                _cancel(task)
        self.maybe_stop()

    def _waiting(self, job_id: Any, task: asyncio.Task[Any]) -> None:
        # A job's task that did not finish in its first step: it completes the job when done.
        self.tasks[task] = job_id
        self.by_id[job_id] = task
        task.add_done_callback(self.finished)

    def finished(self, task: asyncio.Task[Any]) -> None:
        # A task that waited is done (or was cancelled, before its first step even).
        job_id = self.tasks.pop(task)
        del self.by_id[job_id]
        self.complete(job_id, self.outcome(task))
        self.maybe_stop()

    def outcome(self, task: asyncio.Task[Any]) -> Any:
        """A done job task's result: its own (dispatch and _drive never raise), or the error."""
        if task.cancelled():
            return self.cancelled_result(self.stopping)
        e = task.exception()
        if e is None:
            return task.result()
        log.error("internal error in the policy engine:", extra={DETAIL: exception_lines(e)})
        return error_result(f"internal error in the policy engine:\n{format_exception(e)}")

    @staticmethod
    def cancelled_result(stopping: bool) -> _core.Result:
        return error_result("the policy engine is stopping" if stopping else "the job was abandoned")

    def complete(self, job_id: Any, result: Any) -> None:
        try:
            self.core.complete(job_id, result)
        except Exception as e:
            log.error("the result of job %s could not be handed over: %s", job_id, e)
            try:
                self.core.complete(job_id, error_result(f"the policy result could not be handed over: {e}"))
            except Exception:
                log.exception("job %s could not be completed", job_id)

    def maybe_stop(self) -> None:
        if self.stopping and not self.tasks and not self.stopped.done():
            self.stopped.set_result(None)


_set_running_loop = asyncio.events._set_running_loop


# What a daemon I/O thread that steps the loop's tasks (_JobRunner.run_here)
# has set: ``_stepping.loop``. Such a thread has what the loop's own thread
# has while it runs: the running loop, and the loop's async generator hooks
# (an async generator a hook starts there is finalized on the loop, and
# closed when it stops). It keeps them between jobs, as setting the running
# loop costs a getpid() system call in Python 3.11 (about 1.5 µs here, each
# way), and drops them when it runs a plain job (run_plain: no running loop
# there). Per thread, as they are, and kept in C (bindings/job_tasks.cpp),
# where the runners read it at every job: a new thread (a spare) starts
# with none.
_stepping = _core.Stepping()


def _enter_loop(loop: asyncio.AbstractEventLoop) -> None:
    _set_running_loop(loop)
    sys.set_asyncgen_hooks(firstiter=loop._asyncgen_firstiter_hook,  # type: ignore[attr-defined]
                           finalizer=loop._asyncgen_finalizer_hook)  # type: ignore[attr-defined]
    _stepping.loop = loop


def _leave_loop() -> None:
    # (An I/O thread has no hooks of its own: it never runs a loop itself.)
    _stepping.loop = None
    _set_running_loop(None)
    sys.set_asyncgen_hooks(firstiter=None, finalizer=None)


class _TurnLendingSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    """The policy loop's selector. The loop's thread holds the loop's turn (a
    lock of the daemon's) except while it waits here; a daemon I/O thread that
    takes the turn meanwhile may start a job's task itself (``_JobRunner.run_here``).
    Whatever such a task leaves for the loop wakes it (the daemon's eventfd, or
    the descriptor the task waits for), so no wait here outlasts its work."""

    def __init__(self, core: Any) -> None:
        super().__init__()
        self._core = core

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        self._core.lend_turn()
        try:
            return super().select(timeout)
        finally:
            self._core.take_turn_back()


class _PolicyLoop(asyncio.SelectorEventLoop):  # type: ignore[misc,valid-type]
    """The policy thread's loop. What it adds: a task that ``_JobRunner`` starts
    hands its first step back to it (``call_soon``, in C) instead of queueing a
    Handle for it (the step runs at once, as Python 3.12's eager tasks do): no
    Handle made, run and dropped for each job. Every other call_soon queues."""

    call_soon = _core.claiming_call_soon
    _until: asyncio.Future[Any] | None = None  # what run_until_complete runs the loop for

    def run_until_complete(self, future: Any) -> Any:
        self._until = until = asyncio.ensure_future(future, loop=self)
        try:
            return super().run_until_complete(until)
        finally:
            self._until = None

    def stop(self) -> None:
        # The loop stops when what it runs for is done (asyncio's own callback calls this
        # then); a hook that stops it would stop the policy engine for every session.
        if self._until is not None and not self._until.done():
            log.error("a policy called stop() on the policy engine's event loop: ignored")
            return
        super().stop()

    def set_debug(self, enabled: bool) -> None:
        super().set_debug(enabled)
        # Every future and task asks the loop get_debug() when made: answered
        # in C, not by a Python method (a frame per job's task).
        self.get_debug = (True).__bool__ if enabled else (False).__bool__  # type: ignore[method-assign]


def run_policy_loop(loop: _PolicyLoop, until: asyncio.Future[Any]) -> None:
    """Runs the policy loop until ``until`` is done (the daemon's policy thread, and
    ``portcullis.testing``'s): a hook's stop() is ignored there, and a KeyboardInterrupt or
    SystemExit out of a callback a policy left on the loop is logged, the loop going on."""
    while True:
        try:
            loop.run_until_complete(until)
            return
        except (KeyboardInterrupt, SystemExit) as e:
            if until.done():
                raise
            # (asyncio lets these two through): the loop, and every session's hooks, go on.
            log.error("the policy engine's event loop went on after %s out of a callback: %s",
                      type(e).__name__, e, extra={DETAIL: exception_lines(e)})


def run_host(
    files: Sequence[str],
    config_path: str | None,
    timeout: float,
    on_error: str,
    threads: int,
    wakeup_fd: int,
    core: Any = None,
) -> None:
    """The policy thread's whole life. Called by the daemon with the GIL held; returns on stop.

    ``core`` is the daemon's side of the exchange (an engine's
    ``_portcullis_core.Channel``; the module ``_portcullis_core`` itself by
    default): ``take_all``, ``complete`` and, optionally,
    ``set_plain_runner(host)`` (the daemon's workers and I/O threads then run
    plain stages with ``host._runner``, as ``run_plain`` does).

    1. Loads the policies (``PolicyLoadError`` propagates: the daemon reports
       it and does not start) and creates this thread's asyncio loop.
    2. Watches ``wakeup_fd`` (the daemon's eventfd, ideally ``EFD_NONBLOCK``).
       Each time it is readable: reads it (resetting it), then calls
       ``core.take_all()`` -> ``(forgotten, jobs, cancelled, stuck,
       stopping)``: the sessions Python may drop, ``[(job_id, job), ...]``,
       the ids of jobs the daemon stopped waiting for, ``[(thread,
       session_id), ...]`` of plain hooks it abandoned (their stacks are
       logged), and whether it stops. It starts one task per job:
       ``EngineHost.dispatch`` for a stage job (a ``_core.Job``),
       a reload for ``{"stage": "reload", "files"?, "config_path"?,
       "timeout"?, "on_error"?, "threads"?}`` (missing keys keep their
       values). Each task ends with ``core.complete(job_id, result)``;
       every job is completed exactly once, whatever happens. The tasks of
       the cancelled ids are cancelled; they are completed all the same.
    3. Once ``stopping`` is true it cancels the jobs still running
       (``async`` hooks are cancelled, threads of plain hooks abandoned),
       completes each with an error, drops the engines and returns promptly.
    """
    lends_turn = core is not None and hasattr(core, "lend_turn")
    loop = _PolicyLoop(_TurnLendingSelector(core)) if lends_turn else _PolicyLoop()
    asyncio.set_event_loop(loop)
    try:
        host = EngineHost(files, config_path, timeout, on_error, threads)
        try:
            runner = loop.create_task(_JobRunner(host, loop, _core if core is None else core, wakeup_fd).run())
            run_policy_loop(loop, runner)
        finally:
            # Hooks still running (cancelled with their jobs) get a moment to
            # unwind; one that ignores the cancellation is left behind.
            leftovers = asyncio.all_tasks(loop)
            for task in leftovers:
                _cancel(task)
                task.add_done_callback(_forget)
            if leftovers:
                loop.run_until_complete(asyncio.wait(leftovers, timeout=STOP_GRACE))
            host.close()
            loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        asyncio.set_event_loop(None)
        loop.close()

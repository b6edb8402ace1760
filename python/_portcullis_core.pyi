"""Type stub for `_portcullis_core`, the C++ module (bindings/core.cpp, bindings/module.cpp;
in the daemon proxy/policy/python_engine.cpp). Documents what `portcullis` relies on.

tests/python/test_core_stub.py holds it to the built module: every name the module
has is here, and nothing else but what only the daemon's embedded module has (Channel)."""

from collections.abc import Callable, Coroutine, Generator
from typing import Any

#: False when imported as an extension module (tests), True inside the daemon.
embedded: bool

def parse_address(text: str, utf8: bool = True) -> tuple[str, str]:
    """(local, domain) of "local@domain" (RFC 5321 §4.1.2); ValueError on bad syntax."""

def a_label_domain(domain: str) -> str | None:
    """The domain in A-labels as the daemon's checks take it (libidn2: IDNA 2008, UTS #46
    non-transitional, NFC); as it is when all ASCII; None when IDNA 2008 refuses it."""

def check_header_name(name: str, /) -> None:
    """ValueError unless printable ASCII without colon or space (RFC 5322 §3.6.8)."""

def check_header_value(value: str, /) -> None:
    """ValueError if the value holds CR, LF or NUL."""

def check_message(raw: bytes, /) -> None:
    """ValueError unless CRLF only, no NUL and a well-formed header section."""

def head_is_whole(raw: bytes, /) -> bool:
    """Whether the header section is all fields (CRLF lines, with continuations) up to an empty line or the end."""

def log(level: int, session_id: str, message: str) -> None:
    """One line in the daemon's log (stderr outside it), tagged with the session id."""

#: The hook stages in the daemon's order (bit i of Result.async_only is STAGES[i]).
STAGES: list[str]

# -- pc.store (bindings/store.cpp): the daemon's shared table, a process-local one outside it.

def store_get(key: str) -> str | None:
    """The value at key, or None."""

def store_set(key: str, value: str, ttl: float | None = None) -> None:
    """Sets key to value, for ttl seconds (None: no limit)."""

def store_incr(key: str, by: int = 1, ttl: float | None = None) -> int:
    """Adds by to the integer at key (a new key starts at 0 and gets ttl) and returns it."""

def store_delete(key: str) -> bool:
    """Deletes key; whether it was there."""

# The argument checks of the calls above, alone (TypeError or ValueError), each returning its argument.
def store_checked_key(key: object) -> str: ...
def store_checked_value(value: object) -> str: ...
def store_checked_ttl(ttl: object) -> float | None: ...
def store_checked_by(by: object) -> int: ...

# -- pc.dns (bindings/dns.cpp): lookups on the daemon's resolver (libunbound); an answer is
# (status, records, ttl, error), MX records as (preference, host), TXT ones str.

def dns_configure(nameserver: str = "", timeout: float = 5.0) -> None:
    """Outside the daemon: the nameserver ('IP:PORT', '' for /etc/resolv.conf) and timeout (s) pc.dns uses."""

def dns_lookup(name: str, type: str, token: int) -> None:
    """Starts a lookup; its answer comes from dns_take(), with the token, once dns_wakeup_fd() is readable."""

def dns_lookup_sync(name: str, type: str) -> tuple[str, list[Any], int, str]:
    """Blocks until the answer, or the deadline of the plain hook that asks."""

def call_with_deadline(deadline: float, function: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    """function(*args) as a plain hook whose deadline is ``deadline`` (time.monotonic()'s seconds)."""

def dns_take() -> list[tuple[int, tuple[str, list[Any], int, str]]]:
    """The answers of dns_lookup() ready since the last call."""

def dns_wakeup_fd() -> int:
    """An eventfd written when an answer is ready (read it before dns_take())."""

# -- pc.metrics and the hooks' figures (bindings/metrics.cpp, proxy/metrics/metric_table).

class MetricSeries:
    """One labelled series of a metric (pc.metrics)."""
    #: A counter's or gauge's value; a histogram's sum.
    @property
    def value(self) -> float: ...
    def inc(self, amount: float = 1.0) -> None: ...
    def set(self, value: float) -> None: ...
    def observe(self, value: float) -> None: ...

def metrics_family(name: str, help: str, kind: str, labels: list[str], buckets: list[float]) -> int:
    """Registers a metric family (the same description again gives the same number); its number."""

def metrics_series(family: int, values: list[str]) -> MetricSeries:
    """The series of a family with these label values."""

def metrics_exposition() -> str:
    """Every metric in the Prometheus text format (for tests)."""

class HookMetrics:
    """A policy hook's figures ([metrics])."""
    def __init__(self, policy: str, stage: str) -> None: ...
    #: A function of one argument, seconds: observed(seconds, 'none', False), fast.
    @property
    def none_observer(self) -> Callable[[float], None]: ...
    def observed(self, seconds: float, verdict: str, timed_out: bool) -> None:
        """One call: its duration, its verdict and whether it ran past policy.timeout."""

# -- jobs and results (bindings/protocol.cpp; proxy/policy/policy_job.hpp)

class Job:
    """One hook stage's input (proxy/policy/policy_job.hpp); fields convert when read."""
    stage: str
    generation: int
    session_id: str
    client_ip: str
    client_port: int
    helo: str
    tls: bool
    tls_version: str
    tls_cipher: str
    auth_user: str | None
    has_tx: bool
    #: the session's last job was abandoned at its deadline: the hooks get a new transaction object
    fresh_transaction: bool
    tx_id: str
    sender: str  # addresses are held parsed: setting one that does not parse raises ValueError
    sender_params: dict[str, str | None]
    recipients: list[str]
    smtputf8: bool
    body_8bit: bool
    #: (result, domain, explanation or None), or None without an SPF check.
    spf: tuple[str, str, str | None] | None
    #: [(result, domain, selector), ...] in the message's order, or None without a DKIM check.
    dkim: list[tuple[str, str, str]] | None
    #: (result, domain, policy, disposition, org_domain, pct, spf_aligned, dkim_aligned,
    #: from_domains, unusable_from, arc_aligned), or None; set with those 11 items or the first 8.
    dmarc: tuple[Any, ...] | None
    #: (result, instances, (sealer domain, ...)), or None without an ARC check.
    arc: tuple[str, int, tuple[str, ...]] | None
    hostname: str
    mechanism: str
    username: str
    password: str
    rcpt: str
    rcpt_params: dict[str, str | None]
    message: bytes | None
    # delivered: the upstream's final reply.
    reply_code: int
    reply_status: str
    reply_text: str
    # (stage, connection, envelope, arguments); see docs/policy-engine.md. envelope: (tx id,
    # sender, sender_params, recipients, smtputf8, body_8bit, spf, dkim, dmarc, arc), each
    # address as (local part, domain).
    def state(
        self,
    ) -> tuple[
        str,
        tuple[str, str, int, str | None, bool, str | None, str | None, str | None],
        tuple[str, tuple[str, str], dict[str, str | None], list[tuple[str, str]], bool, bool, Any, Any, Any, Any]
        | None,
        Any,
    ]: ...

class VerdictReply:
    kind: str
    code: int
    status: str
    text: str | None
    addresses: list[str]
    def __init__(self, kind: str, code: int, status: str, text: str | None = None,
                 addresses: list[str] = ...) -> None: ...

class Result:
    """A stage's outcome for the daemon (None stands for the empty one)."""
    error: str | None
    verdict: VerdictReply | None
    auth: bool | None
    sender: str | None
    recipients: list[str] | None
    #: tx.dkim_sign after on_data: "" for False (not signed), else the domain to sign as.
    dkim_sign: str | None
    #: tx.arc_seal after on_data: False to send the message without our ARC seal.
    arc_seal: bool | None
    #: The policy file whose hook gave the verdict or the error (for the daemon's log).
    decided_by: str
    message: bytes | None
    message_prefix: bytes | None
    #: 0: message_prefix goes on top of the whole message as received; else the byte of it
    #: (its body's first) that follows message_prefix, then a whole new header section.
    message_keep_from: int
    generation: int
    hook_counts: list[int]
    #: Bit i: every hook of STAGES[i] is async (any_async: at least one is).
    async_only: int
    any_async: int

class Attribute:
    """An attribute name with the stage runner's slot cache (bindings/attribute.hpp), for tests."""
    def __init__(self, name: str) -> None: ...
    def get(self, obj: Any) -> Any: ...
    def set(self, obj: Any, value: Any) -> None: ...

class JobObjects:
    """The policy objects a job is bound to, made in C (bindings/job_objects.hpp)."""
    def __init__(self, *, connection: type, session: type, transaction: type, address: type, address_list: type,
                 message: type, spf_result: type, dkim_signature: type, dmarc_result: type,
                 arc_result: type) -> None: ...
    # A Connection from the daemon's view: (id, client_ip, client_port, helo, tls, tls_version, tls_cipher, auth_user).
    def connection(self, view: tuple[Any, ...]) -> Any: ...
    # The Connection brought up to the daemon's view (all but the id; its data kept).
    def update_connection(self, conn: Any, view: tuple[Any, ...]) -> None: ...
    # A _Session bound to the engine, its Connection made from the daemon's view.
    def session(self, engine: Any, view: tuple[Any, ...]) -> Any: ...
    # An Address from (local part, domain) and its parameters, as the daemon parsed them.
    def address(self, parts: tuple[str, str], params: dict[str, str | None]) -> Any: ...
    # An AddressList of (local part, domain) pairs, each with no parameters.
    def address_list(self, parts: Any) -> Any: ...
    # session.tx made or brought up to date from the daemon's envelope; sets session.tx and session.before.
    def transaction_of(self, session: Any, envelope: tuple[Any, ...], renew: bool = False) -> Any: ...
    # session.tx given the recipients of parts from start on (the daemon took them since tx was
    # made as it sent it): its sender and first recipients kept, session.before brought along.
    def add_recipients(self, session: Any, tx: Any, parts: Any, start: int) -> None: ...
    # A Message read from loader() when a hook first looks at it (Message._lazy).
    def lazy_message(self, loader: Any, smtputf8: bool, head_whole: bool | None = None,
                     head_loader: Any = None) -> Any: ...

class StageRunner:
    """A stage job's hooks called from C++ (bindings/stage_runner.cpp; docs/policy-engine.md)."""
    def __init__(self, sessions: dict[str, Any], running: dict[int, Any], scope: Any, leave_loop: Any,
                 objects: JobObjects, upstream_reply: Any, resume: Any, slow: Any, resume_async: Any, drive: Any,
                 verdict_type: type, positive_replies: dict[str, tuple[int, str]]) -> None: ...
    # EngineHost._new_session and _end_session (under the host's _lock).
    def new_session(self, host: Any, generation: int, connection: tuple[Any, ...]) -> Any: ...
    def end_session(self, host: Any, session: Any) -> None: ...
    # EngineHost.forget: these sessions (by id) out of the table, as end_session; unknown ids skipped.
    def forget(self, host: Any, session_ids: list[str]) -> None: ...
    # The job's plain hooks here: a Result, or None for "next".
    def run(self, host: Any, job: Job) -> Result | None: ...
    # The first steps of its async hooks here (the loop running): a Result or None, or the coroutine of the rest.
    def run_async(self, host: Any, job: Job, loop: Any) -> Any: ...

# -- the policy loop's tasks, in C (bindings/job_tasks.cpp)

def first_step(steps: Coroutine[Any, Any, Any] | Generator[Any, Any, Any], /) -> tuple[bool, Any]:
    """(returned, value): sends None into a coroutine or an awaitable's iterator once."""

#: The policy loop's call_soon (a method of the loop): a task that JobStarter makes hands its
#: first step back to it.
claiming_call_soon: Callable[..., Any]

class Stepping:
    """Stepping(): .loop, the loop whose tasks this thread steps (per thread)."""
    #: The loop this thread steps tasks of, or None (this thread's own).
    loop: Any

class JobMailbox:
    """Where an idle JobCoroutine's task waits for its next job (Future-like)."""
    def get_loop(self) -> Any: ...
    def add_done_callback(self, fn: Callable[[Any], object], *, context: Any = None) -> None: ...
    def remove_done_callback(self, fn: Callable[[Any], object]) -> int: ...
    def result(self) -> None: ...
    def cancel(self, msg: Any = None) -> bool: ...
    def cancelled(self) -> bool: ...
    def done(self) -> bool: ...

class JobCoroutine:
    """A loop job's coroutine (what _JobRunner's task runs): the stage runner's first steps, then
    whatever is left, awaited; idle between jobs that end in their first steps."""
    def __await__(self) -> Generator[Any, Any, Any]: ...
    def __next__(self) -> Any: ...
    def send(self, value: Any) -> Any: ...
    def throw(self, exception: BaseException, /) -> Any: ...
    def close(self) -> None: ...

class JobStarter:
    """How _JobRunner starts a job's task, in C."""
    def __init__(self, runner: Any, loop: Any, host: Any, name: str, enter_loop: Any) -> None: ...
    # (True, result) if the job's task finished in its first step, else (False, task).
    def start(self, job_id: int, job: Job) -> tuple[bool, Any]: ...
    # The job's result, or whether the loop's thread must look (the job goes on there).
    def run_here(self, job_id: int, job: Job) -> Any: ...
    # A task on the loop, its first step taken.
    def start_task(self, coro: Coroutine[Any, Any, Any]) -> Any: ...
    # The task waiting for the next job ends (the runner stops).
    def end_idle(self) -> None: ...

# Only in the daemon (embedded; proxy/policy/python_engine.cpp): an engine's Channel, run_host's `core`.
class Channel:
    # (forgotten session ids, [(job id, job)], cancelled job ids, [(thread, session id)] stuck, stopping)
    def take_all(
        self,
    ) -> tuple[list[str], list[tuple[int, Job | dict[str, Any]]], list[int], list[tuple[int, str]], bool]: ...
    # The EngineHost (None: none): the daemon runs plain stages with its StageRunner.
    def set_plain_runner(self, host: Any) -> None: ...
    # The loop's JobStarter (None: none).
    def set_loop_runner(self, runner: JobStarter | None) -> None: ...
    # The loop's selector around its wait (portcullis._engine._TurnLendingSelector).
    def lend_turn(self) -> None: ...
    def take_turn_back(self) -> None: ...
    def complete(self, job_id: int, result: Result | None) -> None: ...

"""Type stub for `_portcullis_core`, the C++ module (bindings/core.cpp, bindings/module.cpp;
in the daemon proxy/policy/python_engine.cpp). Documents what `portcullis` relies on."""

from typing import Any

#: False when imported as an extension module (tests), True inside the daemon.
embedded: bool

def parse_address(text: str, utf8: bool = True) -> tuple[str, str]:
    """(local, domain) of "local@domain" (RFC 5321 §4.1.2); ValueError on bad syntax."""

def a_label_domain(domain: str) -> str | None:
    """The domain in A-labels as the daemon's checks take it (libidn2: IDNA 2008, UTS #46
    non-transitional, NFC); as it is when all ASCII; None when IDNA 2008 refuses it."""

def check_header_name(name: str) -> None:
    """ValueError unless printable ASCII without colon or space (RFC 5322 §3.6.8)."""

def check_header_value(value: str) -> None:
    """ValueError if the value holds CR, LF or NUL."""

def check_message(raw: bytes) -> None:
    """ValueError unless CRLF only, no NUL and a well-formed header section."""

def head_is_whole(raw: bytes) -> bool:
    """Whether the header section is all fields (CRLF lines, with continuations) up to an empty line or the end."""

def log(level: int, session_id: str, message: str) -> None:
    """One line in the daemon's log (stderr outside it), tagged with the session id."""

#: The hook stages in the daemon's order (bit i of Result.async_only is STAGES[i]).
STAGES: list[str]

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
    tx_id: str
    sender: str  # addresses are held parsed: setting one that does not parse raises ValueError
    sender_params: dict[str, str | None]
    recipients: list[str]
    smtputf8: bool
    body_8bit: bool
    hostname: str
    mechanism: str
    username: str
    password: str
    rcpt: str
    rcpt_params: dict[str, str | None]
    message: bytes | None
    # (stage, connection, envelope, arguments); see docs/policy-engine.md
    def state(
        self,
    ) -> tuple[
        str,
        tuple[str, str, int, str | None, bool, str | None, str | None, str | None],
        tuple[str, tuple[str, str], dict[str, str | None], list[tuple[str, str]], bool, bool] | None,
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
    message: bytes | None
    message_prefix: bytes | None
    #: 0: message_prefix goes on top of the whole message as received; else the byte of it
    #: (its body's first) that follows message_prefix, then a whole new header section.
    message_keep_from: int
    generation: int
    hook_counts: list[int]
    async_only: int

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
    def transaction_of(self, session: Any, envelope: tuple[Any, ...]) -> Any: ...
    # A Message read from loader() when a hook first looks at it (Message._lazy).
    def lazy_message(self, loader: Any, smtputf8: bool, head_whole: bool | None = None,
                     head_loader: Any = None) -> Any: ...

class StageRunner:
    """A stage job's hooks called from C++ (bindings/stage_runner.cpp; docs/policy-engine.md)."""
    def __init__(self, *, sessions: dict[str, Any], running: dict[int, Any], scope: Any, stepping: Any,
                 leave_loop: Any, objects: JobObjects, upstream_reply: Any, resume: Any, slow: Any,
                 resume_async: Any, drive: Any) -> None: ...
    # EngineHost._new_session and _end_session (under the host's _lock).
    def new_session(self, host: Any, generation: int, connection: tuple[Any, ...]) -> Any: ...
    def end_session(self, host: Any, session: Any) -> None: ...
    # The job's plain hooks here: a Result, or None for "next".
    def run(self, host: Any, job: Job) -> Result | None: ...
    # The first steps of its async hooks here (the loop running): a Result or None, or the coroutine of the rest.
    def run_async(self, host: Any, job: Job, loop: Any) -> Any: ...

# Only in the daemon (embedded): an engine's Channel, run_host's `core`.
class Channel:
    # (forgotten session ids, [(job id, job)], cancelled job ids, [(thread, session id)] stuck, stopping)
    def take_all(
        self,
    ) -> tuple[list[str], list[tuple[int, Job | dict[str, Any]]], list[int], list[tuple[int, str]], bool]: ...
    # The EngineHost (None: none): the daemon runs plain stages with its StageRunner.
    def set_plain_runner(self, host: Any) -> None: ...
    def complete(self, job_id: int, result: Result | None) -> None: ...

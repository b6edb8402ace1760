"""Type stub for `_portcullis_core`, the C++ module (bindings/core.cpp, bindings/module.cpp;
in the daemon proxy/policy/python_engine.cpp). Documents what `portcullis` relies on."""

from typing import Any

#: False when imported as an extension module (tests), True inside the daemon.
embedded: bool

def parse_address(text: str, utf8: bool = True) -> tuple[str, str]:
    """(local, domain) of "local@domain" (RFC 5321 §4.1.2); ValueError on bad syntax."""

def check_header_name(name: str) -> None:
    """ValueError unless printable ASCII without colon or space (RFC 5322 §3.6.8)."""

def check_header_value(value: str) -> None:
    """ValueError if the value holds CR, LF or NUL."""

def check_message(raw: bytes) -> None:
    """ValueError unless CRLF only, no NUL and a well-formed header section."""

def log(level: int, session_id: str, message: str) -> None:
    """One line in the daemon's log (stderr outside it), tagged with the session id."""

# Only in the daemon (embedded):
def take_jobs() -> list[tuple[int, dict[str, Any]]]: ...
def complete(job_id: int, result: dict[str, Any]) -> None: ...
def should_stop() -> bool: ...

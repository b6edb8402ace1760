"""pytest for the `portcullis` package: run from the repository root as
`PYTHONPATH=python:build/python /usr/bin/python3 -m pytest -q tests/python`
(the paths are also added here, so plain `pytest tests/python` works after a build)."""

from __future__ import annotations

import contextlib
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
for path in (ROOT / "python", ROOT / "build" / "python", ROOT / "tests"):  # tests/helpers: shared helpers
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))


@pytest.fixture
def policy_file(tmp_path: Path) -> Callable[..., str]:
    """Writes a policy file from source (dedented) and returns its path."""
    counter = iter(range(1000))

    def write(source: str, name: str | None = None) -> str:
        path = tmp_path / (name or f"policy{next(counter)}.py")
        path.write_text(textwrap.dedent(source))
        return str(path)

    return write


@pytest.fixture
def core_log(monkeypatch):
    """What reaches _portcullis_core.log: (level, session id, message)."""
    lines = []
    monkeypatch.setattr("portcullis._log._core.log", lambda level, sid, msg: lines.append((level, sid, msg)))
    return lines


@contextlib.contextmanager
def dns_serving(zones: dict) -> Iterator:
    """The test DNS server (tests/dns) with `zones`, and pc.dns asking it; the system resolver again after."""
    sys.path.insert(0, str(ROOT / "tests" / "dns"))
    from dns_server import DnsServer
    import portcullis as pc

    with DnsServer(zones) as server:
        pc.dns.configure(f"127.0.0.1:{server.port}", timeout=1.0)
        try:
            yield server
        finally:
            pc.dns.configure("")  # back to the system resolver for the other tests

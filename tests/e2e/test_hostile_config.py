"""Hostile configuration files (issue 7 D and item 10).

Each config of the table goes three ways, and every way must refuse it with
`FILE:LINE: key: what is wrong`, without a crash or a sanitizer report:

  * `portcullis --check-config FILE`: exit 1;
  * `portcullis --config FILE` (start-up): exit 1;
  * a SIGHUP reload of a running daemon: refused and logged, the old
    configuration keeps serving (a mail still goes through).

Also: whatever the file says, a greeting or EHLO reply is never split into
an injected line, and our EHLO upstream is one command.
"""

from __future__ import annotations

import os
import signal
import re
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import HOSTNAME, _toml_value, free_port, sanitized_python_env

DEPTH = 10000  # what crashed toml11 (one recursion per level) before the bound


@dataclass
class Hostile:
    id: str
    want: str  # the problem after "FILE:LINE: " (a regex)
    # Raw TOML values replacing or adding keys of the daemon's tables:
    # {"server": {"hostname": '"mx\\r\\n250 injected"'}}.
    values: dict = field(default_factory=dict)
    extra: str = ""  # appended to the file (its own tables); its line with `marker` is the bad one
    marker: str = ""  # the text on the offending line (default: the first key of `values`)


def deep(n: int, open_: str, close: str, inner: str = "") -> str:
    return open_ * n + inner + close * n


RANGE_DAY = r"is out of range \(want 1 to 86400 seconds\)"
NOT_DOMAIN = r"is not a domain name \(RFC 5321 §4\.1\.2"
NOT_ENDPOINT = r"is not IP:PORT \(want 192\.0\.2\.1:25 or \[2001:db8::1\]:25, port 1-65535; names are not resolved\)"

CASES = [
    # toml11 recursion: bounded before parsing.
    Hostile("deep-array", r"nested more than 32 levels deep", extra=f"[hostile]\ndeep = {deep(DEPTH, '[', ']')}\n",
            marker="deep ="),
    Hostile("deep-inline-table", r"nested more than 32 levels deep",
            extra=f"[hostile]\ndeep = {deep(DEPTH, '{a = ', '}', '1')}\n", marker="deep ="),
    Hostile("deep-dotted-key", r"nested more than 32 levels deep",
            extra="[hostile]\n" + ".".join(["a"] * 100000) + " = 1\n", marker="a.a.a"),
    Hostile("deep-table-header", r"nested more than 32 levels deep",
            extra="[" + ".".join(["a"] * 100000) + "]\nx = 1\n", marker="[a.a.a"),
    # Durations that overflow std::chrono arithmetic (UBSan), or mean nothing.
    Hostile("idle-timeout-overflow", rf"server\.idle_timeout: 9999999999 {RANGE_DAY}",
            {"server": {"idle_timeout": "9999999999"}}),
    Hostile("data-timeout-int64-max", rf"server\.data_timeout: 9223372036854775807 {RANGE_DAY}",
            {"server": {"data_timeout": "9223372036854775807"}}),
    Hostile("upstream-timeout-negative", rf"upstream\.timeout: -1 {RANGE_DAY}", {"upstream": {"timeout": "-1"}}),
    Hostile("policy-timeout-overflow", rf"policy\.timeout: 9999999999 {RANGE_DAY}", {"policy": {"timeout": "9999999999"}}),
    Hostile("failure-window-overflow", rf"auth\.failure_window: 99999999999 {RANGE_DAY}",
            {"auth": {"failure_window": "99999999999"}}),
    Hostile("shutdown-grace-negative", r"server\.shutdown_grace: -5 is out of range \(want 0 to 86400 seconds\)",
            {"server": {"shutdown_grace": "-5"}}),
    # Sizes and counts.
    Hostile("max-recipients-negative", r"server\.max_recipients: -1 is out of range \(want 1 to 100000\)",
            {"server": {"max_recipients": "-1"}}),
    Hostile("max-message-size-huge", r"server\.max_message_size: 9223372036854775807 is out of range",
            {"server": {"max_message_size": "9223372036854775807"}}),
    # Past 64 bits (read as the nearest limit): shown as written, not as that limit.
    Hostile("max-message-size-past-64-bits", r"server\.max_message_size: 99999999999999999999999 is out of range",
            {"server": {"max_message_size": "99999999999999999999999"}}),
    Hostile("idle-timeout-below-64-bits", rf"server\.idle_timeout: -99999999999999999999999 {RANGE_DAY}",
            {"server": {"idle_timeout": "-99999999999999999999999"}}),
    Hostile("max-line-length-below-rfc", r"server\.max_line_length: 100 is out of range \(want 512 to 65536\)",
            {"server": {"max_line_length": "100"}}),
    Hostile("threads-huge", r"server\.threads: 4294967297 is out of range \(want 0 to 1024\)",
            {"server": {"threads": "4294967297"}}),
    Hostile("policy-threads-zero", r"policy\.threads: 0 is out of range \(want 1 to 1024\)", {"policy": {"threads": "0"}}),
    # Injection through names.
    Hostile("hostname-crlf", rf'server\.hostname: "mx\\r\\n250 injected" {NOT_DOMAIN}',
            {"server": {"hostname": r'"mx\r\n250 injected"'}}),
    Hostile("hostname-lf", rf'server\.hostname: "mx\.test\\n" {NOT_DOMAIN}', {"server": {"hostname": r'"mx.test\n"'}}),
    Hostile("hostname-nul", rf'server\.hostname: "mx\\x00\.test" {NOT_DOMAIN}',
            {"server": {"hostname": r'"mx\u0000.test"'}}),
    Hostile("helo-crlf", rf'upstream\.helo: "proxy\\r\\nRCPT TO:<x@evil\.test>" {NOT_DOMAIN}',
            {"upstream": {"helo": r'"proxy\r\nRCPT TO:<x@evil.test>"'}}),
    Hostile("local-domain-crlf", rf'relay\.local_domains: "example\.test\\r\\n" {NOT_DOMAIN}',
            {"relay": {"local_domains": r'["example.test\r\n"]'}}),
    # Addresses that cannot bind.
    Hostile("listen-name", rf'server\.listen: "localhost:3950" {NOT_ENDPOINT}',
            {"server": {"listen": '["localhost:3950"]'}}),
    Hostile("listen-port-0", rf'server\.listen: "127\.0\.0\.1:0" {NOT_ENDPOINT}', {"server": {"listen": '["127.0.0.1:0"]'}}),
    Hostile("listen-twice", r'server\.listen: "127\.0\.0\.1:2500" is listed twice',
            {"server": {"listen": '["127.0.0.1:2500", "127.0.0.1:2500"]'}}),
    Hostile("upstream-url-injection", r'upstream\.url: "smtp://mx\.test\\r\\n:25" has a bad host or port',
            {"upstream": {"url": r'"smtp://mx.test\r\n:25"'}}),
    # Cross-checks: the same at start-up, --check-config and SIGHUP.
    Hostile("listen-tls-without-tls", r"server\.listen_tls: needs a \[tls\] table with cert and key",
            {"server": {"listen_tls": '["127.0.0.1:2465"]'}}),
    Hostile("require-tls-without-tls", r"server\.require_tls: needs a \[tls\] table with cert and key",
            {"server": {"require_tls": "true"}}),
    Hostile("checks-dmarc-alone", r"checks\.dmarc: needs spf = true and dkim = true", {"checks": {"dmarc": "true"}}),
    Hostile("require-auth-without-auth", r"server\.require_auth: needs an \[auth\] table", {"server": {"require_auth": "true"}}),
    # What this version does not do is refused, not silently ignored.
    Hostile("checks-dkim-signatures", r"checks\.dkim_signatures: 0 is out of range", {"checks": {"dkim_signatures": "0"}}),
    Hostile("dkim-sign-selector", r'dkim_sign\.selector: "s 1" is not a selector',
            {"dkim_sign": {"selector": '"s 1"', "domains": '["example.test"]', "key_file": '"dkim.pem"'}}),
    Hostile("metrics-listen", rf'metrics\.listen: "localhost:9325" {NOT_ENDPOINT}', {"metrics": {"listen": '"localhost:9325"'}}),
    Hostile("store-url", r"store\.url: \"ftp://x\" is not \"memory:\"", {"store": {"url": '"ftp://x"'}}),
    Hostile("dns-nameserver", rf'dns\.nameserver: "ns\.example\.test:53" {NOT_ENDPOINT}',
            {"dns": {"nameserver": '"ns.example.test:53"'}}),
    Hostile("dns-cache-size", r"dns\.cache_size: 10 is out of range", {"dns": {"cache_size": "10"}}),
]


def render(tables: dict, case: Hostile) -> tuple[str, int]:
    """The daemon's tables with the case's raw values, then its extra text;
    and the 1-based number of the offending line."""
    merged: dict[str, dict[str, str]] = {t: {k: _toml_value(v) for k, v in kv.items()} for t, kv in tables.items()}
    for t, kv in case.values.items():
        merged.setdefault(t, {}).update(kv)
    lines: list[str] = []
    for t, kv in merged.items():
        lines.append(f"[{t}]")
        lines += [f"{k} = {v}" for k, v in kv.items()]
        lines.append("")
    text = "\n".join(lines) + "\n" + case.extra
    if case.marker:
        marker = case.marker
    else:
        table, kv = next(iter(case.values.items()))
        key = next(iter(kv))
        start = text.splitlines().index(f"[{table}]")
        marker_line = next(i for i, l in enumerate(text.splitlines()) if i > start and l.startswith(f"{key} = "))
        return text, marker_line + 1
    return text, next(i for i, l in enumerate(text.splitlines()) if l.startswith(marker)) + 1


def base_tables(port: int, upstream_url: str) -> dict:
    return {
        "server": {"hostname": HOSTNAME, "listen": [f"127.0.0.1:{port}"], "threads": 2},
        "upstream": {"url": upstream_url, "timeout": 10},
    }


def no_sanitizer_report(text: str) -> None:
    for sign in ("Sanitizer", "runtime error:", "stack-overflow", "Segmentation fault", "terminate called"):
        assert sign not in text, f"{sign!r} in:\n{text[-4000:]}"


def run(portcullis_bin: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    env = dict(os.environ, **sanitized_python_env())
    return subprocess.run([str(portcullis_bin), *args], capture_output=True, text=True, timeout=timeout, env=env,
                          stdin=subprocess.DEVNULL)


def expected_line(path: Path, line: int, case: Hostile) -> re.Pattern:
    return re.compile(rf"^(?:.* error reload: )?{re.escape(str(path))}:{line}: {case.want}", re.M)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_check_config_refuses(portcullis_bin, tmp_path, case):
    cfg = tmp_path / "hostile.toml"
    text, line = render(base_tables(free_port(), "smtp://127.0.0.1:25"), case)
    cfg.write_text(text)
    p = run(portcullis_bin, "--check-config", str(cfg))
    out = p.stdout + p.stderr
    assert p.returncode == 1, f"exit {p.returncode}:\n{out[-4000:]}"
    assert expected_line(cfg, line, case).search(out), f"want {cfg}:{line}: {case.want}\ngot:\n{out[-4000:]}"
    assert "ok" not in p.stdout
    assert "\r" not in out, "a problem line carries a raw CR"
    no_sanitizer_report(out)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_startup_refuses(portcullis_bin, tmp_path, case):
    cfg = tmp_path / "hostile.toml"
    port = free_port()
    text, line = render(base_tables(port, "smtp://127.0.0.1:25"), case)
    cfg.write_text(text)
    p = run(portcullis_bin, "--config", str(cfg))
    out = p.stdout + p.stderr
    assert p.returncode == 1, f"exit {p.returncode}:\n{out[-4000:]}"
    assert expected_line(cfg, line, case).search(out), f"want {cfg}:{line}: {case.want}\ngot:\n{out[-4000:]}"
    no_sanitizer_report(out)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def send_mail(d, name: str) -> None:
    with d.connect() as c:
        r = c.transaction(f"{name}@example.test", ["rcpt@example.test"], f"Subject: {name}\r\n\r\nbody".encode())
        assert (r.code, r.status) == (250, "2.0.0"), f"{name}: {r}"
        c.exchange("QUIT", 221)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_sighup_refuses_and_keeps_serving(start_daemon, aiosmtpd_upstream, case):
    d = start_daemon(aiosmtpd_upstream.url)
    open_session = d.connect()
    text, line = render(d.tables, case)
    d.reload(text=text, expect_ok=False)
    d.wait_log(expected_line(d.config_path, line, case).pattern)
    d.wait_log(r"error reload: keeping the running configuration$")
    assert d.proc.poll() is None, "the daemon died on the reload"
    # The old configuration serves: the session open across the reload and a new one.
    r = open_session.transaction("open@example.test", ["rcpt@example.test"], b"Subject: open\r\n\r\nbody")
    assert (r.code, r.status) == (250, "2.0.0"), str(r)
    open_session.close()
    send_mail(d, "after")
    envs = aiosmtpd_upstream.wait_messages(2)
    assert sorted(e["mail_from"] for e in envs) == ["after@example.test", "open@example.test"]
    assert all(e["helo"] == HOSTNAME for e in envs)
    log = d.log_text()
    no_sanitizer_report(log)
    assert "reloaded; new sessions use it" not in log


# --------------------------------------------------------------------------
# Nothing in the file reaches the wire as an extra line.


def raw_lines_after(sock: socket.socket, first: bytes, settle: float = 0.3) -> list[bytes]:
    """Every CRLF line the server sent (after `first` was sent, if any), read
    until it has been quiet for `settle` seconds."""
    if first:
        sock.sendall(first)
    data = b""
    sock.settimeout(settle)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            if data.endswith(b"\r\n"):
                break
            continue
        if not chunk:
            break
        data += chunk
    assert data.endswith(b"\r\n"), data
    return data[:-2].split(b"\r\n")


def assert_one_reply(lines: list[bytes], code: bytes) -> None:
    """One reply: NNN- lines, then one NNN line, every one with our code and no CR/LF inside."""
    assert lines, "no reply"
    for l in lines[:-1]:
        assert l.startswith(code + b"-"), lines
    assert lines[-1].startswith(code + b" "), lines
    for l in lines:
        assert b"\r" not in l and b"\n" not in l, lines


@pytest.mark.parametrize(
    "hostile",
    [
        {"server": {"hostname": r'"mx\r\n250 injected"'}},
        {"server": {"hostname": r'"mx.test\r\n554 5.0.0 injected"'}},
        {"upstream": {"helo": r'"proxy\r\nVRFY injected"'}},
        {"upstream": {"helo": r'"proxy.test\nMAIL FROM:<evil@example.test>"'}},
    ],
    ids=["hostname-crlf", "hostname-crlf-554", "helo-crlf", "helo-lf"],
)
def test_greeting_and_ehlo_never_carry_an_injected_line(start_daemon, fake_upstream, hostile):
    up = fake_upstream()
    d = start_daemon(up.url, upstream={"helo": "proxy.example.test"})
    text, _ = render(d.tables, Hostile("x", "", hostile))
    d.reload(text=text, expect_ok=False)
    d.wait_log(r"error reload: keeping the running configuration$")

    with socket.create_connection(("127.0.0.1", d.port), timeout=10) as s:
        greeting = raw_lines_after(s, b"")
        assert_one_reply(greeting, b"220")
        assert greeting[0].startswith(f"220 {HOSTNAME} ".encode()), greeting
        ehlo = raw_lines_after(s, b"EHLO client.test\r\n")
        assert_one_reply(ehlo, b"250")
        assert ehlo[0] == f"250-{HOSTNAME} Hello client.test [127.0.0.1]".encode(), ehlo
        s.sendall(b"MAIL FROM:<a@example.test>\r\n")
        assert_one_reply(raw_lines_after(s, b""), b"250")
        s.sendall(b"RCPT TO:<b@example.test>\r\n")
        assert_one_reply(raw_lines_after(s, b""), b"250")
        s.sendall(b"QUIT\r\n")
        assert_one_reply(raw_lines_after(s, b""), b"221")

    # Upstream: our EHLO carries the configured name, one command, nothing injected after it.
    assert up.wait_for(lambda: "RCPT TO:<b@example.test>" in up.commands)
    cmds = up.commands
    ehlos = [c for c in cmds if c.upper().startswith(("EHLO", "HELO"))]
    assert ehlos and all(c == "EHLO proxy.example.test" for c in ehlos), cmds
    assert not any("injected" in c or "evil" in c for c in cmds), cmds
    first_mail = next(i for i, c in enumerate(cmds) if c.startswith("MAIL"))
    assert cmds[:first_mail] == ["EHLO proxy.example.test"], cmds
    mails = [c for c in cmds if c.startswith("MAIL")]
    assert len(mails) == 1 and mails[0].startswith("MAIL FROM:<a@example.test>"), cmds


def test_log_level_applies_at_startup(start_daemon, aiosmtpd_upstream):
    """log.level is honoured, not merely accepted: at "warning" no info line is written."""
    d = start_daemon(aiosmtpd_upstream.url, log={"level": "warning"})
    send_mail(d, "quiet")
    aiosmtpd_upstream.wait_messages(1)
    d.write_config(render(d.tables, CASES[0])[0])  # a refused reload is an error: still logged
    d.signal(signal.SIGHUP)
    d.wait_log(r"error reload: keeping the running configuration$")
    assert not re.search(r"^\S+ info ", d.log_text(), re.M), d.log_text()[-2000:]

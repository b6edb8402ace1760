"""SIGHUP reloads the policy files under traffic (issue 3): no client sees an
error or a dropped connection, new sessions get the new code and config,
sessions open across the reload finish on the old ones, and a policy that
does not load leaves the old one running with the reason in the log. Also
`--check-config` loading the policies."""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import free_port, render_toml, sanitized_python_env, wait_until

TAGGER = """
    import portcullis as pc

    VERSION = "{version}"

    def on_data(tx, message):
        message.add_header("X-Policy-Version", VERSION)
        message.add_header("X-Config-Tag", pc.config["probe"]["tag"])
"""


def tagger(version: str) -> str:
    import textwrap

    return textwrap.dedent(TAGGER.format(version=version))


def tags(content: bytes) -> tuple[str, str]:
    version = re.search(rb"\r\nX-Policy-Version: (\S+)\r\n", content)
    tag = re.search(rb"\r\nX-Config-Tag: (\S+)\r\n", content)
    assert version and tag, content[:400]
    return version.group(1).decode(), tag.group(1).decode()


def seq_of(content: bytes) -> str:
    return re.search(rb"\r\nSubject: (\S+)\r\n", content).group(1).decode()


def send_one(c, name: str) -> None:
    r = c.transaction(f"{name}@example.test", ["r@example.test"], f"Subject: {name}\r\n\r\nbody of {name}".encode())
    assert (r.code, r.status) == (250, "2.0.0"), f"{name}: {r}"


def test_sighup_reload_under_traffic(policy_daemon, aiosmtpd_upstream):
    d = policy_daemon(aiosmtpd_upstream.url, tagger("v1"), probe={"tag": "t1"})
    policy_file: Path = d.policy_files[0]
    stop = threading.Event()
    errors: list[str] = []
    fresh: list[tuple[str, float, float]] = []  # (name, connect started, delivered)
    kept: list[str] = []

    def fresh_connections():
        n = 0
        while not stop.is_set():
            name = f"fresh{n}"
            t0 = time.monotonic()
            try:
                with d.connect() as c:
                    send_one(c, name)
                    c.exchange("QUIT", 221)
                    assert c.closed()
            except Exception as e:
                errors.append(f"{name}: {e!r}")
                return
            fresh.append((name, t0, time.monotonic()))
            n += 1

    def one_long_session():
        n = 0
        try:
            with d.connect("long.test") as c:
                while not stop.is_set():
                    name = f"kept{n}"
                    send_one(c, name)
                    kept.append(name)
                    n += 1
                c.exchange("QUIT", 221)
        except Exception as e:
            errors.append(f"kept{n}: {e!r}")

    idle = d.connect("idle.test")  # open across the reload, sends only afterwards
    workers = [threading.Thread(target=fresh_connections), threading.Thread(target=one_long_session)]
    for w in workers:
        w.start()
    wait_until(lambda: len(fresh) >= 5 and len(kept) >= 5, timeout=10, what="traffic before the reload")
    before_sighup = time.monotonic()
    fresh_before, kept_before = len(fresh), len(kept)
    policy_file.write_text(tagger("v2"))
    d.reload({"probe": {"tag": "t2"}})  # SIGHUP; returns once the reload is logged
    reloaded = time.monotonic()
    wait_until(lambda: sum(t0 > reloaded for _, t0, _ in fresh) >= 5 and len(kept) >= kept_before + 10,
               timeout=10, what="traffic after the reload")
    stop.set()
    for w in workers:
        w.join(10)
    assert not errors, errors
    send_one(idle, "idle")
    idle.exchange("QUIT", 221)
    idle.close()
    with d.connect() as c:
        send_one(c, "after")

    total = len(fresh) + len(kept) + 2
    envs = aiosmtpd_upstream.wait_messages(total)
    assert len(envs) == total
    seen = {seq_of(e["content"]): tags(e["content"]) for e in envs}
    assert len(seen) == total
    # Sessions that began after the reload have the new code and config;
    # sessions that ended before the SIGHUP had the old.
    for name, t0, t1 in fresh:
        if t1 < before_sighup:
            assert seen[name] == ("v1", "t1"), name
        elif t0 > reloaded:
            assert seen[name] == ("v2", "t2"), name
    versions = [seen[name] for name, _, _ in fresh]
    switch = versions.index(("v2", "t2"))
    assert set(versions[:switch]) == {("v1", "t1")} and set(versions[switch:]) == {("v2", "t2")}, versions
    assert switch >= fresh_before
    # Sessions open across the reload finish on the code and config they started with.
    assert {seen[name] for name in kept} == {("v1", "t1")}
    assert seen["idle"] == ("v1", "t1")
    assert seen["after"] == ("v2", "t2")
    log = d.log_text()
    assert not re.search(r"^\S+ (error|critical) ", log, re.M), log[-3000:]
    assert "verdict=delivered" in log and log.count("verdict=delivered") == total


BROKEN = {
    "syntax-error": ("import portcullis as pc\n\ndef on_data(tx, message)\n    pass\n",
                     r"policy0\.py:3: SyntaxError: expected ':'"),
    "raises-at-import": ("import portcullis as pc\nVERSION = 'v2'\nraise RuntimeError('no database')\n",
                         r"policy0\.py:3: RuntimeError: no database"),
    "missing-module": ("import portcullis as pc\nimport no_such_module_for_portcullis\n",
                       r"policy0\.py:2: ModuleNotFoundError: No module named 'no_such_module_for_portcullis'"),
    "bad-hook-signature": ("def on_rcpt(tx):\n    pass\n",
                           r"policy0\.py:1: on_rcpt cannot be called with its 2 argument\(s\) \(tx, rcpt\)"),
}


@pytest.mark.parametrize("broken", list(BROKEN))
def test_broken_policy_on_reload_keeps_the_old_one(policy_daemon, aiosmtpd_upstream, broken):
    d = policy_daemon(aiosmtpd_upstream.url, tagger("v1"), probe={"tag": "t1"})
    policy_file: Path = d.policy_files[0]
    open_session = d.connect("open.test")
    source, problem = BROKEN[broken]
    policy_file.write_text(source)
    d.reload({"probe": {"tag": "t2"}}, expect_ok=False)
    d.wait_log(r"^\S+ error reload: policies did not load, keeping the running ones and configuration: "
               r"(?:.*\n)*?.*" + problem)
    assert not re.search(r"reload: .* reloaded; new sessions use it", d.log_text())
    # Told once, a line each (the engine logged it too, and the daemon's line escaped the newlines).
    assert d.log_text().count("did not load") == 1 and "\\n" not in d.log_text(), d.log_text()
    # The old policy (and config) goes on, for the open session and new ones alike.
    send_one(open_session, "open")
    open_session.close()
    with d.connect() as c:
        send_one(c, "new")
    # Fixed: the next SIGHUP loads it.
    policy_file.write_text(tagger("v3"))
    d.reload({"probe": {"tag": "t3"}})
    with d.connect() as c:
        send_one(c, "fixed")
    envs = aiosmtpd_upstream.wait_messages(3)
    assert {seq_of(e["content"]): tags(e["content"]) for e in envs} == {
        "open": ("v1", "t1"), "new": ("v1", "t1"), "fixed": ("v3", "t3")}
    assert d.proc.poll() is None


# -- --check-config -------------------------------------------------------------------


def check_config(portcullis_bin, tmp_path: Path, source: str) -> subprocess.CompletedProcess:
    policy = tmp_path / "policy0.py"
    policy.write_text(source)
    config = tmp_path / "check.toml"
    config.write_text(render_toml({
        "server": {"hostname": "mx.test", "listen": ["127.0.0.1:2525"]},
        "upstream": {"url": "smtp://127.0.0.1:2526"},
        "policy": {"files": ["policy0.py"]},
    }))
    return subprocess.run([str(portcullis_bin), "--check-config", str(config)], capture_output=True, text=True,
                          timeout=30, cwd=tmp_path, env={**os.environ, **sanitized_python_env()})


@pytest.mark.parametrize("broken", ["syntax-error", "missing-module", "bad-hook-signature"])
def test_check_config_reports_a_broken_policy(portcullis_bin, tmp_path, broken):
    source, problem = BROKEN[broken]
    out = check_config(portcullis_bin, tmp_path, source)
    assert out.returncode == 1, out
    config = re.escape(str(tmp_path / "check.toml"))
    assert re.search(rf"^{config}:\d+: policy\.files: {re.escape(str(tmp_path))}/{problem}$", out.stderr, re.M), \
        out.stderr
    assert out.stdout == ""


def debian_imports() -> tuple[str, str]:
    """Imports of Debian python3-* packages (in /usr/lib/python3/dist-packages): dnspython when installed."""
    probe = subprocess.run(["/usr/bin/python3", "-c", "import dns.resolver"], capture_output=True)
    if probe.returncode == 0:
        return "import dns.resolver\nimport dns.version\n", "dns.version.version"
    return "import email.utils\nimport aiosmtpd\n", "aiosmtpd.__version__"


def test_check_config_loads_a_policy_importing_debian_packages(portcullis_bin, tmp_path):
    imports, version = debian_imports()
    out = check_config(portcullis_bin, tmp_path, imports + "def on_mail(tx, sender):\n    return None\n")
    assert out.returncode == 0, out
    assert out.stdout == f"{tmp_path / 'check.toml'}: ok\n"


def test_policy_importing_debian_packages_runs_in_the_daemon(policy_daemon, aiosmtpd_upstream):
    imports, version = debian_imports()
    d = policy_daemon(aiosmtpd_upstream.url, imports + f"""
import email.utils
import sys

def on_data(tx, message):
    message.add_header("X-Imported", {version})
    message.add_header("X-Python", "%d.%d %s" % (sys.version_info[0], sys.version_info[1], sys.executable))
    message.add_header("X-Parsed", email.utils.parseaddr(message.get("From"))[1])
""")
    with d.connect() as c:
        send_one(c, "imports")
    [env] = aiosmtpd_upstream.wait_messages(1)
    assert re.search(rb"\r\nX-Imported: \d+\.\d+", env["content"])
    assert b"\r\nX-Python: 3.11 " in env["content"]


def test_daemon_does_not_start_with_a_broken_policy(portcullis_bin, tmp_path):
    source, problem = BROKEN["raises-at-import"]
    (tmp_path / "policy0.py").write_text(source)
    config = tmp_path / "start.toml"
    config.write_text(render_toml({
        "server": {"hostname": "mx.test", "listen": [f"127.0.0.1:{free_port()}"]},
        "upstream": {"url": "smtp://127.0.0.1:2526"},
        "policy": {"files": ["policy0.py"]},
    }))
    out = subprocess.run([str(portcullis_bin), "--config", str(config)], capture_output=True, text=True, timeout=30,
                         env={**os.environ, **sanitized_python_env()})
    assert out.returncode == 1, out
    assert re.search(problem, out.stdout + out.stderr), out


def test_a_reload_that_ends_after_a_newer_one_is_dropped(policy_daemon, aiosmtpd_upstream, tmp_path):
    """SIGHUP A loads policies that take a while to import; SIGHUP B, right after, names none and
    is installed at once. When A's policies are in, B stands: A is dropped, not installed over it."""
    import signal

    d = policy_daemon(aiosmtpd_upstream.url, "def on_helo(conn, hostname):\n    return None\n")
    slow, importing = tmp_path / "slow_a.py", tmp_path / "importing"
    slow.write_text(f"import time\nopen({str(importing)!r}, 'w').close()\ntime.sleep(1.5)\nimport portcullis as pc\n"
                    "def on_helo(conn, hostname):\n    return pc.reject('reload A ran')\n")
    d.tables["policy"] = {"files": [str(slow)]}
    d.write_config()
    d.signal(signal.SIGHUP)  # A: importing for 1.5 s
    wait_until(importing.exists, timeout=10, what="reload A to import its policy")  # (it has read the config)
    del d.tables["policy"]
    d.write_config()
    d.signal(signal.SIGHUP)  # B: no policies, installed at once
    d.wait_log(r"reload: a newer reload was installed first; this older one is dropped$", timeout=15)
    with d.connect() as c:
        c.exchange("NOOP", 250)
    assert "reload A ran" not in d.log_text()
    with d.connect(ehlo="x.test") as c:  # (EHLO went through: no hook of A's refused it)
        c.exchange("MAIL FROM:<a@example.test>", 250)


def test_a_reload_warns_that_thread_counts_take_effect_on_restart(policy_daemon, aiosmtpd_upstream):
    """server.threads (the I/O pool), policy.threads (the hook threads, the I/O spares) and
    server.workers are sized at start-up. Each reload compares the file with what runs: the
    settings of start-up (it compared with the last reload's file, and a file set back to what
    runs was warned about)."""
    d = policy_daemon(aiosmtpd_upstream.url, "def on_helo(conn, hostname):\n    return None\n", policy={"threads": 4})
    warned = lambda: d.log_text().count("takes effect on restart")  # noqa: E731
    reloaded = lambda: d.log_text().count("reloaded; new sessions use it")  # noqa: E731
    d.reload({"server": {"threads": 3, "workers": 4}, "policy": {"threads": 5}})
    d.wait_log(r"warning reload: server\.threads changed; that takes effect on restart$")
    d.wait_log(r"warning reload: policy\.threads changed; that takes effect on restart$")
    d.wait_log(r"warning reload: server\.workers changed; that takes effect on restart$")
    wait_until(lambda: warned() == 3, timeout=5, what="the three warnings")
    d.reload({})  # the file still asks for them, and what runs is still start-up's: said again
    wait_until(lambda: warned() == 6, timeout=5, what="the warnings again")
    done = reloaded()
    d.reload({"server": {"threads": 2, "workers": 1}, "policy": {"threads": 4}})  # what runs: nothing to say
    wait_until(lambda: reloaded() > done, timeout=5, what="the reload")
    assert warned() == 6
    assert d.stop() == 0

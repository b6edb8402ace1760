"""server.user: started as root, the daemon binds (a port below 1024 too),
then runs as that user before any policy loads; with workers, the
supervisor keeps only CAP_NET_BIND_SERVICE so that a restarted worker binds
again, and each worker drops even that. Needs root (skipped otherwise)."""

from __future__ import annotations

import http.client
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import textwrap
from pathlib import Path

import pytest

from conftest import Daemon, free_port, render_toml, stop_all, wait_until
from smtp_client import RawClient

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dropping to server.user needs root")

NOBODY = pwd.getpwnam("nobody")
CAP_NET_BIND_SERVICE = 1 << 10

# The policy reports who it runs as: in a reply (RCPT to whoami@) and in a header of relayed mail.
POLICY = """
import os
import portcullis as pc

TAG = "{tag}"

def whoami():
    try:
        os.setuid(0)
        regained = "yes"
    except PermissionError:
        regained = "no"
    return f"uid={{os.getuid()}} euid={{os.geteuid()}} gid={{os.getgid()}} groups={{sorted(os.getgroups())}} root-again={{regained}}"

def on_rcpt(tx, rcpt):
    if rcpt.local == "whoami":
        return pc.reject(whoami(), code=550)

def on_data(tx, message):
    message.add_header("X-Tag", TAG)
    message.add_header("X-Policy-User", whoami())
"""

WANT_WHO = (f"uid={NOBODY.pw_uid} euid={NOBODY.pw_uid} gid={NOBODY.pw_gid} groups={sorted({NOBODY.pw_gid})} "
            f"root-again=no")


def low_port(after: int = 0) -> int:
    """A free port below 1024 (only root or CAP_NET_BIND_SERVICE may bind it), above `after`."""
    for port in range(max(900 + os.getpid() % 100, after + 1), 1024):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip("no free port below 1024")


def proc_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def assert_runs_as_nobody(pid: int, capabilities: int) -> None:
    st = proc_status(pid)
    assert st["Uid"].split() == [str(NOBODY.pw_uid)] * 4, st["Uid"]
    assert st["Gid"].split() == [str(NOBODY.pw_gid)] * 4, st["Gid"]
    assert st["Groups"].split() == [str(NOBODY.pw_gid)], st["Groups"]
    assert int(st["CapEff"], 16) == capabilities, st["CapEff"]
    assert int(st["CapPrm"], 16) == capabilities, st["CapPrm"]
    assert int(st["CapInh"], 16) == 0 and int(st["CapAmb"], 16) == 0


def children(pid: int) -> set[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return {int(p) for p in f.read().split()}


@pytest.fixture
def workdir():
    """A folder nobody can read: pytest's tmp_path (under /tmp/pytest-of-root, mode 0700) is not."""
    d = Path(tempfile.mkdtemp(prefix="portcullis-user-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def user_daemon(portcullis_bin, workdir):
    """user_daemon(upstream_url, workers, **tables) -> Daemon running POLICY as nobody."""
    daemons: list[Daemon] = []

    def start(upstream_url: str, workers: int, also_listen: int, tag: str = "one", metrics: int = 0) -> Daemon:
        wd = workdir / f"daemon{len(daemons)}"
        wd.mkdir()
        wd.chmod(0o755)
        policy = wd / "who.py"
        policy.write_text(textwrap.dedent(POLICY.format(tag=tag)))
        d = Daemon(portcullis_bin, wd, upstream_url,
                   {"server": {"user": "nobody", "workers": workers}, "policy": {"files": [str(policy)]}}, None)
        d.tables["server"]["listen"].append(f"127.0.0.1:{also_listen}")
        if metrics:
            d.tables["metrics"] = {"listen": f"127.0.0.1:{metrics}"}
        d.write_config()
        d.policy = policy
        daemons.append(d)
        return d.start()

    yield start
    stop_all(daemons)


def relay_one(port: int, subject: str) -> None:
    with RawClient("127.0.0.1", port) as c:
        c.expect(220)
        c.cmd("EHLO client.test")
        c.expect(250)
        r = c.transaction("a@example.test", ["b@example.test"], f"Subject: {subject}\r\n\r\nbody".encode())
        assert r.code == 250, r


def whoami(port: int) -> str:
    with RawClient("127.0.0.1", port) as c:
        c.expect(220)
        c.cmd("EHLO client.test")
        c.expect(250)
        c.exchange("MAIL FROM:<a@example.test>", 250)
        c.cmd("RCPT TO:<whoami@example.test>")
        r = c.reply()
        assert r.code == 550, r
        return r.text


def header(content: bytes, name: str) -> str:
    m = re.search(rb"^" + name.encode() + rb": ([^\r\n]*)\r\n", content, re.M)
    assert m, content[:400]
    return m.group(1).decode()


def healthz(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().status
    finally:
        conn.close()


def test_one_process_binds_a_low_port_then_runs_policies_as_the_user(user_daemon, aiosmtpd_upstream):
    low = low_port()
    metrics = low_port(after=low)  # ([metrics] listen is bound with the SMTP ports, before the drop)
    d = user_daemon(aiosmtpd_upstream.url, 1, low, metrics=metrics)
    assert healthz(metrics) == 200
    assert_runs_as_nobody(d.pid, 0)
    assert "policies run as root" not in d.log_text()
    assert whoami(low) == WANT_WHO
    relay_one(low, "as nobody")
    envs = aiosmtpd_upstream.wait_messages(1)
    assert len(envs) == 1, [(e["rcpt_tos"], e["content"][:300]) for e in envs]
    [env] = envs
    assert header(env["content"], "X-Policy-User") == WANT_WHO
    assert header(env["content"], "X-Tag") == "one"
    # A reload, as nobody: the config and the policy read again.
    d.policy.write_text(textwrap.dedent(POLICY.format(tag="two")))
    d.reload()
    relay_one(low, "after the reload")
    env = aiosmtpd_upstream.wait_messages(2)[1]
    assert header(env["content"], "X-Tag") == "two"
    assert header(env["content"], "X-Policy-User") == WANT_WHO
    assert_runs_as_nobody(d.pid, 0)


def test_workers_the_supervisor_keeps_only_the_bind_capability(user_daemon, aiosmtpd_upstream):
    low = low_port()
    metrics = low_port(after=low)
    d = user_daemon(aiosmtpd_upstream.url, 2, low, metrics=metrics)
    d.wait_log(rf"\] info listening on 127\.0\.0\.1:{low}$", count=2)
    d.wait_log(rf"\] info metrics on http://127\.0\.0\.1:{metrics}/metrics$", count=2)
    assert healthz(metrics) == 200
    workers = children(d.pid)
    assert len(workers) == 2
    assert_runs_as_nobody(d.pid, CAP_NET_BIND_SERVICE)
    for pid in workers:
        assert_runs_as_nobody(pid, 0)
    assert whoami(low) == WANT_WHO
    # A reload: the supervisor (as nobody) checks the config and every worker reloads.
    d.policy.write_text(textwrap.dedent(POLICY.format(tag="two")))
    d.reload()
    d.wait_log(r"reload: .* reloaded; new sessions use it", count=2)
    relay_one(low, "after the reload")
    [env] = aiosmtpd_upstream.wait_messages(1)
    assert header(env["content"], "X-Tag") == "two"
    assert header(env["content"], "X-Policy-User") == WANT_WHO
    # A worker killed: the one started in its place binds the low port again (with the supervisor's capability).
    victim = min(workers)
    os.kill(victim, signal.SIGKILL)
    d.wait_log(rf"supervisor: worker \d \(process {victim}\) killed by signal 9")
    again = wait_until(lambda: len(children(d.pid)) == 2 and children(d.pid) != workers and children(d.pid),
                       timeout=10, what="the restarted worker")
    [new] = again - workers
    d.wait_log(rf"\[{new}\] info listening on 127\.0\.0\.1:{low}$")
    d.wait_log(rf"\[{new}\] info metrics on http://127\.0\.0\.1:{metrics}/metrics$")
    assert "cannot listen" not in d.log_text()
    assert_runs_as_nobody(new, 0)
    for _ in range(6):  # whichever worker the kernel picks
        assert whoami(low) == WANT_WHO


def test_unknown_user_fails_start_and_check_config(portcullis_bin, tmp_path):
    cfg = tmp_path / "unknown.toml"
    cfg.write_text(render_toml({"server": {"hostname": "mx.test", "listen": ["127.0.0.1:1"], "user": "no-such-user-pc"},
                                "upstream": {"url": "smtp://127.0.0.1:25"}}))
    want = f'{cfg}:4: server.user: "no-such-user-pc": no such user'
    for flag in ("--config", "--check-config"):
        p = subprocess.run([str(portcullis_bin), flag, str(cfg)], capture_output=True, text=True, timeout=20)
        assert p.returncode == 1, p
        assert want in p.stderr, p.stderr


def as_nobody():
    os.setgroups([])
    os.setgid(NOBODY.pw_gid)
    os.setuid(NOBODY.pw_uid)


def unprivileged_config(workdir: Path, **server) -> Path:
    cfg = workdir / "portcullis.toml"
    cfg.write_text(render_toml({"server": {"hostname": "mx.test", "listen": [f"127.0.0.1:{free_port()}"], "workers": 1,
                                           **server},
                                "upstream": {"url": "smtp://127.0.0.1:25"}}))
    cfg.chmod(0o644)
    return cfg


def line_of(cfg: Path, key: str) -> int:
    return next(i for i, l in enumerate(cfg.read_text().splitlines(), 1) if l.startswith(f"{key} ="))


def test_another_user_when_not_started_as_root_fails_start_and_check_config(portcullis_bin, workdir):
    cfg = unprivileged_config(workdir, user="daemon")
    other = pwd.getpwnam("daemon")
    p = subprocess.run([str(portcullis_bin), "--config", str(cfg)], capture_output=True, text=True, timeout=20,
                       preexec_fn=as_nobody)
    assert p.returncode == 1, p
    problem = (f'{cfg}:{line_of(cfg, "user")}: server.user: "{other.pw_name}" needs the daemon started as root (it '
               f'runs as uid {NOBODY.pw_uid}); start it as root or as that user, or remove server.user')
    assert f"critical cannot start: {problem}" in p.stderr, p.stderr
    # --check-config tells whether this config starts: not for this user (it said "ok" before).
    p = subprocess.run([str(portcullis_bin), "--check-config", str(cfg)], capture_output=True, text=True, timeout=20,
                       preexec_fn=as_nobody)
    assert p.returncode == 1, p.stdout + p.stderr
    assert p.stderr.splitlines() == [problem], p.stderr
    # Checked as root, for a daemon started as root: fine.
    p = subprocess.run([str(portcullis_bin), "--check-config", str(cfg)], capture_output=True, text=True, timeout=20)
    assert p.returncode == 0, p.stdout + p.stderr


@pytest.mark.parametrize("workers", [1, 2])
def test_the_user_the_daemon_runs_as_already_changes_nothing(portcullis_bin, workdir, aiosmtpd_upstream, workers):
    """The unit's User=portcullis with user = "portcullis" in the config: the check passes, and so does start-up."""
    d = Daemon(portcullis_bin, workdir, aiosmtpd_upstream.url, {"server": {"user": "nobody", "workers": workers}}, None)
    d.config_path.chmod(0o644)
    p = subprocess.run([str(portcullis_bin), "--check-config", str(d.config_path)], capture_output=True, text=True,
                       timeout=20, preexec_fn=as_nobody)
    assert p.returncode == 0, p.stdout + p.stderr
    d.preexec = as_nobody
    d.start()
    try:
        d.wait_log(r"info listening on", count=workers)
        assert proc_status(d.pid)["Uid"].split() == [str(NOBODY.pw_uid)] * 4
        with d.connect() as c:
            assert c.transaction("a@example.test", ["b@example.test"], b"Subject: x\r\n\r\nbody").code == 250
        # A reload's check (the supervisor's child, as nobody) passes too.
        d.signal(signal.SIGHUP)
        d.wait_log(r"reload: .* reloaded; new sessions use it", count=workers, timeout=30)
    finally:
        assert d.stop() == 0


def test_an_unwritable_spill_dir_fails_start_check_config_and_reload(portcullis_bin, workdir, aiosmtpd_upstream):
    """Started unprivileged (as the unit starts it): every large message would get 452."""
    spill = workdir / "spill"
    spill.mkdir()
    spill.chmod(0o755)  # root's: nobody cannot make a file in it
    cfg = unprivileged_config(workdir, message_spill_dir=str(spill))
    problem = (f'{cfg}:{line_of(cfg, "message_spill_dir")}: server.message_spill_dir: "{spill}": cannot create a '
               f'file in it (Permission denied); messages above server.message_memory_threshold are stored there')
    for flag in ("--check-config", "--config"):
        p = subprocess.run([str(portcullis_bin), flag, str(cfg)], capture_output=True, text=True, timeout=20,
                           preexec_fn=as_nobody)
        assert p.returncode == 1, p
        assert problem in p.stderr, p.stderr
    # Not set: TMPDIR (else /tmp) is tried the same way.
    p = subprocess.run([str(portcullis_bin), "--check-config", str(unprivileged_config(workdir))], capture_output=True,
                       text=True, timeout=20, preexec_fn=as_nobody, env={**os.environ, "TMPDIR": str(spill)})
    assert p.returncode == 1, p
    assert (f'server.message_spill_dir: not set, and "{spill}": cannot create a file in it (Permission denied)'
            in p.stderr), p.stderr
    # A reload that finds it unwritable is refused, and the daemon keeps the directory it had.
    os.chown(spill, NOBODY.pw_uid, NOBODY.pw_gid)
    d = Daemon(portcullis_bin, workdir, aiosmtpd_upstream.url, {"server": {"message_spill_dir": str(spill), "message_memory_threshold": 0}}, None)
    d.config_path.chmod(0o644)
    d.preexec = as_nobody
    d.start()
    try:
        other = workdir / "spill2"
        other.mkdir()
        other.chmod(0o755)
        d.reload({"server": {"message_spill_dir": str(other)}}, expect_ok=False)
        d.wait_log(rf'error reload: {re.escape(str(d.config_path))}:\d+: server\.message_spill_dir: '
                   rf'"{re.escape(str(other))}": cannot create a file in it \(Permission denied\)')
        d.wait_log(r"error reload: keeping the running configuration$")
        with d.connect() as c:  # stored in the old directory (every message goes to a file)
            assert c.transaction("a@example.test", ["b@example.test"], b"Subject: x\r\n\r\nbody").code == 250
    finally:
        assert d.stop() == 0


def test_files_the_user_cannot_read_fail_start_and_check_config(portcullis_bin, tmp_path):
    """tmp_path is root's alone (0700): run as nobody, a reload could not read the config again."""
    cfg = tmp_path / "private.toml"
    cfg.write_text(render_toml({"server": {"hostname": "mx.test", "listen": [f"127.0.0.1:{free_port()}"],
                                           "user": "nobody", "workers": 1},
                                "upstream": {"url": "smtp://127.0.0.1:25"}}))
    for flag in ("--config", "--check-config"):
        p = subprocess.run([str(portcullis_bin), flag, str(cfg)], capture_output=True, text=True, timeout=20)
        assert p.returncode == 1, p
        assert f"user nobody cannot read {cfg} (Permission denied); a SIGHUP reload reads it again" in p.stderr, \
            p.stderr


def test_policies_as_root_are_warned_about_once(policy_daemon, aiosmtpd_upstream):
    d = policy_daemon(aiosmtpd_upstream.url, "def on_helo(conn, hostname):\n    return None\n")
    d.wait_log(r"listening on")
    assert len(re.findall(r"warning policies run as root; set server\.user$", d.log_text(), re.M)) == 1


@pytest.mark.skipif(not shutil.which("setpriv"), reason="setpriv (util-linux) starts the daemon as the unit does")
@pytest.mark.parametrize("workers", [1, 2])
def test_as_the_unit_starts_it_nobody_with_the_bind_capability(portcullis_bin, workdir, aiosmtpd_upstream, workers):
    """packaging/systemd/portcullis.service: User= and AmbientCapabilities=CAP_NET_BIND_SERVICE, no server.user.
    The processes that run policies keep no capability; a supervisor keeps the one it got."""
    low = low_port()
    policy = workdir / "who.py"
    policy.write_text(textwrap.dedent(POLICY.format(tag="unit")))
    d = Daemon(portcullis_bin, workdir, aiosmtpd_upstream.url,
               {"server": {"workers": workers}, "policy": {"files": [str(policy)]}}, None)
    d.tables["server"]["listen"].append(f"127.0.0.1:{low}")
    d.write_config()
    # As systemd would start it; exec all the way, so that the pid is the daemon's.
    wrapper = workdir / "as-the-unit"
    wrapper.write_text(f"#!/bin/sh\nexec setpriv --reuid={NOBODY.pw_uid} --regid={NOBODY.pw_gid} --init-groups "
                       f"--inh-caps=+net_bind_service --ambient-caps=+net_bind_service {portcullis_bin} \"$@\"\n")
    wrapper.chmod(0o755)
    d.binary = wrapper
    d.start()
    try:
        d.wait_log(rf"info listening on 127\.0\.0\.1:{low}$", count=workers)
        if workers == 1:
            assert_runs_as_nobody(d.pid, 0)
        else:
            assert_runs_as_nobody(d.pid, CAP_NET_BIND_SERVICE)
            for pid in children(d.pid):
                assert_runs_as_nobody(pid, 0)
        assert "policies run as root" not in d.log_text()
        assert whoami(low) == WANT_WHO
    finally:
        stop_all([d])

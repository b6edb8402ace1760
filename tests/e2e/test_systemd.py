"""systemd: the readiness protocol of a Type=notify unit (sd_notify over
NOTIFY_SOCKET, as systemd's manager reads it: only the main process counts),
and packaging/systemd/portcullis.service as `systemd-analyze verify` sees it."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest

from conftest import REPO_ROOT, wait_until

UNIT = REPO_ROOT / "packaging" / "systemd" / "portcullis.service"


class NotifySocket:
    """The manager's end: a datagram socket that records (sender pid, fields) per message."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.messages: list[tuple[int, dict[str, str]]] = []

    def _read(self, timeout: float) -> None:
        self.sock.settimeout(timeout)
        try:
            data, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        except socket.timeout:
            return
        pid = 0
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid, _, _ = struct.unpack("iII", payload[:12])
        fields = dict(line.split("=", 1) for line in data.decode().split("\n") if "=" in line)
        self.messages.append((pid, fields))

    def wait_for(self, key: str, after: int = 0, timeout: float = 10.0) -> int:
        """The index of the first message from `after` on that sets `key`."""
        deadline = time.monotonic() + timeout
        while True:
            for i, (_, fields) in enumerate(self.messages[after:], start=after):
                if key in fields:
                    return i
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {key} in {self.messages[after:]}")
            self._read(min(left, 0.2))

    def drain(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self._read(end - time.monotonic())

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path, monkeypatch):
    s = NotifySocket(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(s.path))
    yield s
    s.close()


POLICY = "def on_helo(conn, hostname):\n    return None\n"


@pytest.mark.parametrize("workers", [1, 2])
def test_ready_reloading_stopping(policy_daemon, aiosmtpd_upstream, notify_socket, workers):
    d = policy_daemon(aiosmtpd_upstream.url, POLICY, server={"workers": workers})
    ready = notify_socket.wait_for("READY")
    assert notify_socket.messages[ready][1]["READY"] == "1"
    # Said once every worker serves: each has logged its listener, and a client gets its banner.
    assert len(re.findall(r"info listening on ", d.log_text())) == workers
    assert notify_socket.messages[ready][1]["STATUS"].startswith(f"serving on 127.0.0.1:{d.port}")
    with d.connect() as c:
        c.exchange("QUIT", 221)

    # A reload that passes: RELOADING=1 (with the time systemd 253 wants), then READY=1 once every worker reloaded.
    d.reload()
    reloading = notify_socket.wait_for("RELOADING", after=ready + 1)
    fields = notify_socket.messages[reloading][1]
    assert fields["RELOADING"] == "1"
    now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert 0 < now_usec - int(fields["MONOTONIC_USEC"]) < 30_000_000
    again = notify_socket.wait_for("READY", after=reloading + 1)
    assert "reloaded" in notify_socket.messages[again][1]["STATUS"]
    assert len(re.findall(r"reload: .* reloaded; new sessions use it$", d.log_text(), re.M)) == workers

    # A reload that is refused: READY=1 too (systemctl reload must not hang), saying so.
    d.reload(text="[server\n", expect_ok=False)
    refused = notify_socket.wait_for("RELOADING", after=again + 1)
    ready_after_refusal = notify_socket.wait_for("READY", after=refused + 1)
    assert "refused" in notify_socket.messages[ready_after_refusal][1]["STATUS"]
    d.write_config()

    d.signal(signal.SIGTERM)
    stopping = notify_socket.wait_for("STOPPING", after=ready_after_refusal + 1)
    assert d.proc.wait(timeout=20) == 0
    notify_socket.drain(0.2)
    # Every message came from the main process (NotifyAccess=main): workers say nothing.
    assert {pid for pid, _ in notify_socket.messages} == {d.pid}
    # READY only where expected: start, after each reload.
    readies = [i for i, (_, f) in enumerate(notify_socket.messages) if "READY" in f]
    assert readies == [ready, again, ready_after_refusal]
    assert stopping > ready_after_refusal


def test_a_reload_the_workers_refuse_is_said_so(policy_daemon, aiosmtpd_upstream, notify_socket, tmp_path):
    """The supervisor's check passes, the workers' own import fails (a policy that refuses only
    there): STATUS says how many workers refused, not "reloaded", and the supervisor logs it."""
    marker = tmp_path / "refuse"
    policy = f"""
        import os

        def _checking():
            with open("/proc/self/cmdline", "rb") as f:
                return b"--check-config" in f.read()

        if os.path.exists({str(marker)!r}) and not _checking():
            raise RuntimeError("this worker refuses the reload")

        def on_helo(conn, hostname):
            return None
    """
    d = policy_daemon(aiosmtpd_upstream.url, policy, server={"workers": 2})
    ready = notify_socket.wait_for("READY")
    marker.touch()
    d.reload(expect_ok=False)
    reloading = notify_socket.wait_for("RELOADING", after=ready + 1)
    again = notify_socket.wait_for("READY", after=reloading + 1)
    status = notify_socket.messages[again][1]["STATUS"]
    assert status.endswith("; reload refused by 2 of 2 workers (see the log)"), status
    d.wait_log(r"error reload: 2 of 2 workers refused \S+ and keep their previous configuration")
    # They serve on, with the policies they had.
    with d.connect() as c:
        c.exchange("QUIT", 221)
    marker.unlink()


def test_a_dropped_older_reload_says_nothing(policy_daemon, aiosmtpd_upstream, notify_socket, tmp_path):
    """SIGHUP A imports slowly, SIGHUP B right after is installed at once: READY=1 is said once, for
    B; A, dropped when its import ends, says nothing (a READY=1 then would report a reload that
    did not happen, as the last word)."""
    d = policy_daemon(aiosmtpd_upstream.url, POLICY)
    ready = notify_socket.wait_for("READY")
    slow, importing = tmp_path / "slow_a.py", tmp_path / "importing"
    slow.write_text(f"import time\nopen({str(importing)!r}, 'w').close()\ntime.sleep(1.5)\n" + POLICY)
    d.tables["policy"] = {"files": [str(slow)]}
    d.write_config()
    d.signal(signal.SIGHUP)  # A
    first = notify_socket.wait_for("RELOADING", after=ready + 1)
    wait_until(importing.exists, timeout=10, what="reload A to import its policy")  # (it has read the config)
    del d.tables["policy"]
    d.write_config()
    d.signal(signal.SIGHUP)  # B
    second = notify_socket.wait_for("RELOADING", after=first + 1)
    d.wait_log(r"reload: a newer reload was installed first; this older one is dropped$", timeout=15)
    notify_socket.drain(0.5)
    readies = [i for i, (_, f) in enumerate(notify_socket.messages) if "READY" in f]
    assert len(readies) == 2 and readies[0] == ready and readies[1] > second, notify_socket.messages
    assert "reloaded" in notify_socket.messages[readies[1]][1]["STATUS"]


def test_workers_a_restarted_worker_shows_in_status(start_daemon, aiosmtpd_upstream, notify_socket):
    d = start_daemon(aiosmtpd_upstream.url, server={"workers": 2})
    ready = notify_socket.wait_for("READY")
    assert notify_socket.messages[ready][1]["STATUS"].endswith("with 2 workers")
    m = re.findall(r"supervisor: worker \d is process (\d+)$", d.log_text(), re.M)
    os.kill(int(m[0]), signal.SIGKILL)
    down = notify_socket.wait_for("STATUS", after=ready + 1)
    assert "with 1 of 2 workers" in notify_socket.messages[down][1]["STATUS"]
    back = notify_socket.wait_for("STATUS", after=down + 1)
    assert notify_socket.messages[back][1]["STATUS"].endswith("with 2 workers")
    assert "READY" not in notify_socket.messages[back][1]


def test_without_notify_socket_nothing_is_sent(start_daemon, aiosmtpd_upstream, monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    d = start_daemon(aiosmtpd_upstream.url)
    with d.connect() as c:
        c.exchange("QUIT", 221)
    assert "sd_notify" not in d.log_text()


def test_the_unit_verifies(portcullis_bin, tmp_path):
    analyze = shutil.which("systemd-analyze")
    if not analyze:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    # verify wants ExecStart's program to exist: the built daemon stands in for /usr/sbin/portcullis.
    text = UNIT.read_text()
    assert "ExecStart=/usr/sbin/portcullis --config /etc/portcullis/portcullis.toml\n" in text
    unit = tmp_path / "portcullis.service"
    unit.write_text(text.replace("ExecStart=/usr/sbin/portcullis ", f"ExecStart={portcullis_bin} "))
    p = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "SYSTEMD_LOG_LEVEL": "notice"})
    assert p.returncode == 0, p.stdout + p.stderr
    # Any complaint about this unit (an unknown key, a bad value) is a warning with its name and line.
    assert "portcullis.service" not in p.stderr, p.stderr
    for key in ("Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "User=portcullis",
                "AmbientCapabilities=CAP_NET_BIND_SERVICE", "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
                "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
                "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX", "Restart=on-failure"):
        assert f"\n{key}\n" in text, key
    # Longer than the drain it waits for: shutdown_grace (30 s) + the supervisor's 15 s margin.
    [stop] = re.findall(r"^TimeoutStopSec=(\d+)$", text, re.M)
    assert int(stop) > 45

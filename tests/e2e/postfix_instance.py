"""A private Postfix instance on a loopback port, with its own config,
queue and log folders under /tmp (Postfix's daemons drop to the postfix user,
so the folders must be reachable by it: pytest's private tmp_path is not).

    pf = PostfixInstance({"smtpd_authorized_xclient_hosts": "127.0.0.0/8"}).start()
    ... pf.port, pf.wait_log(regex) ...
    pf.stop()
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from conftest import free_port, wait_until

POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
MASTER_CF = Path("/usr/share/postfix/master.cf.dist")


def available() -> str | None:
    """Why a private Postfix cannot run here, or None."""
    if not Path(POSTFIX).exists() or not MASTER_CF.exists():
        return "Postfix is not installed"
    if os.geteuid() != 0:
        return "a private Postfix instance needs root"
    try:
        import pwd
        import grp

        pwd.getpwnam("postfix")
        grp.getgrnam("postdrop")
    except KeyError:
        return "no postfix user or postdrop group"
    return None


def _listening(port: int) -> bool:
    want = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as f:
        return any(l.split()[1] == want and l.split()[3] == "0A" for l in f.readlines()[1:])


class PostfixInstance:
    def __init__(self, settings: dict[str, str] | None = None, name: str = "pf"):
        self.dir = Path(tempfile.mkdtemp(prefix=f"portcullis-{name}-", dir="/tmp"))
        self.dir.chmod(0o755)
        self.etc = self.dir / "etc"
        self.maillog = self.dir / "maillog"
        self.port = free_port()
        self.settings = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.dir / "queue"),
            "data_directory": str(self.dir / "data"),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "myhostname": "upstream.test",
            "mydestination": "",
            "relay_domains": "example.test",
            "mynetworks": "127.0.0.1/32",
            "default_transport": "discard",
            "relay_transport": "discard",
            "smtpd_authorized_xclient_hosts": "127.0.0.0/8",
            "smtpd_authorized_xforward_hosts": "127.0.0.0/8",
            "maillog_file": str(self.maillog),
            "maillog_file_prefixes": "/tmp",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "smtputf8_enable": "yes",
            "biff": "no",
            "alias_maps": "",
            "alias_database": "",
        }
        self.settings.update(settings or {})
        self.started = False

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def _write(self) -> None:
        self.etc.mkdir()
        (self.dir / "queue").mkdir()
        data = self.dir / "data"
        data.mkdir()
        shutil.chown(data, "postfix")
        (self.etc / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in self.settings.items()))
        lines = []
        has_postlog = False
        for line in MASTER_CF.read_text().splitlines():
            fields = line.split()
            if line and not line[0].isspace() and not line.startswith("#") and len(fields) >= 8:
                if fields[0] == "smtp" and fields[1] == "inet":
                    line = f"127.0.0.1:{self.port} inet n - n - - smtpd"
                else:
                    if fields[4] == "y":
                        fields[4] = "n"
                    line = " ".join(fields)
                has_postlog = has_postlog or fields[0] == "postlog"
            lines.append(line)
        if not has_postlog:
            lines.append("postlog unix-dgram n - n - 1 postlogd")
        (self.etc / "master.cf").write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 20.0) -> "PostfixInstance":
        self._write()
        out = subprocess.run([POSTFIX, "-c", str(self.etc), "start"], capture_output=True, text=True, timeout=60)
        self.started = True
        try:
            wait_until(lambda: _listening(self.port), timeout=timeout, what="Postfix to listen")
        except AssertionError:
            # postfix prints its fatal messages only to a terminal.
            why = subprocess.run(["script", "-qc", f"{POSTFIX} -c {self.etc} start", "/dev/null"],
                                 capture_output=True, text=True, timeout=60)
            self.stop()
            raise AssertionError(f"Postfix did not start: {out.stdout}{out.stderr}{why.stdout}{why.stderr}"
                                 f"{self.log_text()}") from None
        return self

    def master_pid(self) -> int | None:
        try:
            return int((self.dir / "queue" / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        if not self.started:
            return
        pid = self.master_pid()
        subprocess.run([POSTFIX, "-c", str(self.etc), "stop"], capture_output=True, timeout=60)
        if pid:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
                time.sleep(0.05)
            if Path(f"/proc/{pid}").exists() and self._is_our_master(pid):
                os.kill(pid, signal.SIGKILL)
        self.started = False
        shutil.rmtree(self.dir, ignore_errors=True)

    @staticmethod
    def _is_our_master(pid: int) -> bool:
        """The pid file is this instance's own; still, kill only a Postfix master."""
        try:
            return Path(f"/proc/{pid}/comm").read_text().strip() == "master"
        except OSError:
            return False

    # -- its log ------------------------------------------------------------

    def log_text(self) -> str:
        try:
            return self.maillog.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, pattern: str, timeout: float = 10.0) -> re.Match:
        rx = re.compile(pattern, re.M)
        try:
            return wait_until(lambda: rx.search(self.log_text()), timeout=timeout, what=f"maillog /{pattern}/")
        except AssertionError:
            raise AssertionError(f"no maillog line /{pattern}/ in:\n{self.log_text()[-5000:]}") from None

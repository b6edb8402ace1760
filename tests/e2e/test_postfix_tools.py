"""Postfix's own test tools on both sides: smtp-source as the client and
smtp-sink as the upstream (skipped where Postfix is not installed)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import free_port, wait_until

SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"

pytestmark = pytest.mark.skipif(
    not (Path(SMTP_SINK).exists() and Path(SMTP_SOURCE).exists()), reason="Postfix smtp-sink/smtp-source not installed"
)


def listening(port: int) -> bool:
    want = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as f:
        return any(l.split()[1] == want and l.split()[3] == "0A" for l in f.readlines()[1:])


@pytest.fixture
def smtp_sink():
    # smtp-sink drops to "nobody" when started as root: its dump folder must
    # be reachable by it, which pytest's private tmp_path is not.
    dump = Path(tempfile.mkdtemp(prefix="portcullis-e2e-sink-"))
    dump.chmod(0o777)
    port = free_port()
    proc = subprocess.Popen(
        [SMTP_SINK, "-u", "nobody", "-d", f"{dump}/%Y%m%d%H%M%S.", f"127.0.0.1:{port}", "64"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    wait_until(lambda: listening(port) or proc.poll() is not None, what="smtp-sink to listen")
    assert proc.poll() is None, proc.stderr.read()
    proc.url, proc.dump = f"smtp://127.0.0.1:{port}", dump
    yield proc
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=5)
    shutil.rmtree(dump, ignore_errors=True)


def test_smtp_source_through_proxy_to_smtp_sink(start_daemon, smtp_sink):
    d = start_daemon(smtp_sink.url)
    n = 200
    out = subprocess.run(
        [SMTP_SOURCE, "-s", "4", "-m", str(n), "-l", "3000", "-M", "source.test",
         "-f", "from@example.test", "-t", "to@example.test", f"127.0.0.1:{d.port}"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    files = wait_until(lambda: (lambda fs: fs if len(fs) >= n else None)(list(smtp_sink.dump.iterdir())),
                       timeout=10, what=f"{n} messages at smtp-sink")
    assert len(files) == n
    for f in files:
        text = f.read_bytes()
        head, _, body = text.partition(b"Received: from source.test ([127.0.0.1])")
        # smtp-sink's own dump headers: the envelope we relayed, our EHLO name.
        assert b"X-Helo-Args: mx.test\n" in head
        assert b"X-Mail-Args: <from@example.test>" in head
        assert b"X-Rcpt-Args: <to@example.test>" in head
        assert body.startswith(b"\n\tby mx.test (Portcullis) with SMTP id "), text[:600]  # smtp-source says HELO
        assert body.count(b"Received: ") == 0
    assert d.log_text().count("verdict=delivered") == n

"""What a process a policy starts (os.system, subprocess) gets from the
daemon: no socket of its (every one is close-on-exec), and a signal mask
that lets TERM, INT and HUP in (the daemon's threads block them only until
its handlers are in place; a policy's threads never do)."""

from __future__ import annotations

import re

import pytest

from conftest import free_port, wait_until

# Runs a child in every hook it is given: os.system and a subprocess that
# keeps every inherited descriptor (close_fds=False). Each lists the
# descriptors it inherited into OUT/fds-<how>-<worker pid>-<n>.
FD_POLICY = """
import itertools, os, subprocess
OUT = {out!r}
n = itertools.count()
def run_children():
    os.system(f"ls -l /proc/$$/fd > {{OUT}}/fds-system-{{os.getpid()}}-{{next(n)}} 2>&1")
    with open(f"{{OUT}}/fds-subprocess-{{os.getpid()}}-{{next(n)}}", "w") as f:
        subprocess.run(["/bin/sh", "-c", "ls -l /proc/$$/fd"], close_fds=False, stdout=f, stderr=f)
def on_connect(conn):
    run_children()
async def on_helo(conn, hostname):
    run_children()
"""


@pytest.mark.parametrize("workers", [1, 2])
def test_children_inherit_no_socket(policy_daemon, fake_upstream, tmp_path, workers):
    up = fake_upstream()
    out = tmp_path / "fds"
    out.mkdir()
    mport = free_port()
    d = policy_daemon(up.url, FD_POLICY.format(out=str(out)), server={"workers": workers},
                      metrics={"listen": f"127.0.0.1:{mport}"})
    if workers > 1:
        d.wait_log(r"listening on", count=workers, timeout=15)
    # A first session relays a message: its upstream connection is kept for the next.
    with d.client(timeout=15) as c:
        c.expect(220)
        c.exchange("EHLO one.test", 250)
        c.transaction("a@example.test", ["b@example.test"], b"Subject: x\r\n\r\nhi")
        c.exchange("QUIT", 221)
    # The second one's children run with the listeners, the metrics
    # listener, this client and the kept upstream connection open.
    with d.client(timeout=15) as c:
        c.expect(220)
        c.exchange("EHLO two.test", 250)
        c.exchange("QUIT", 221)
    wait_until(lambda: len(list(out.iterdir())) >= 8, timeout=10, what="the children's listings")
    for listing in sorted(out.iterdir()):
        text = wait_until(lambda: listing.read_text() or None, timeout=5, what=f"{listing.name} written")
        assert "socket:" not in text, f"{listing.name}: a child inherited a socket:\n{text}"


# Starts `sleep 30` at import (the loader), in a plain hook and in an async
# hook, and records each child's blocked signals (SigBlk of /proc/PID/status).
MASK_POLICY = """
import subprocess, threading
OUT = {out!r}
def spawn(where):
    p = subprocess.Popen(["sleep", "30"])
    with open(f"/proc/{{p.pid}}/status") as f:
        blocked = [l for l in f if l.startswith("SigBlk:")][0].split()[1]
    p.kill()
    p.wait()
    with open(OUT, "a") as f:
        f.write(f"{{where}} {{threading.current_thread().name}} {{blocked}}\\n")
spawn("import")
def on_connect(conn):
    spawn("plain")
async def on_helo(conn, hostname):
    spawn("async")
"""


@pytest.mark.parametrize("workers", [1, 2])
def test_children_do_not_block_stop_signals(policy_daemon, fake_upstream, tmp_path, workers):
    up = fake_upstream()
    out = tmp_path / "masks"
    d = policy_daemon(up.url, MASK_POLICY.format(out=str(out)), server={"workers": workers})
    if workers > 1:
        d.wait_log(r"listening on", count=workers, timeout=15)
    with d.client(timeout=15) as c:
        c.expect(220)
        c.exchange("EHLO x.test", 250)
        c.exchange("QUIT", 221)
    wait_until(lambda: out.exists() and {"import", "plain", "async"} <= {l.split()[0] for l in out.read_text().splitlines()},
               timeout=10, what="every child's mask")
    stop_signals = (1 << (1 - 1)) | (1 << (2 - 1)) | (1 << (15 - 1))  # HUP, INT, TERM
    for line in out.read_text().splitlines():
        where, thread, blocked = line.split()
        assert int(blocked, 16) & stop_signals == 0, f"a child started {where} ({thread}) blocks {blocked}"

"""Messages held by the message store (README "How messages are held"): a
big message goes through an unlinked temporary file, byte-exact, without
growing the daemon's memory; many clients sending big messages without the
final dot stay within the memory budget, which comes back when they leave;
and a spill file that cannot be made is 452 4.3.1 for that message only.
"""

from __future__ import annotations

import base64
import hashlib
import os
import random
import socket
import threading

import pytest

from conftest import HOSTNAME, free_port, wait_until

MiB = 1 << 20
SANITIZED = bool(os.environ.get("PORTCULLIS_SANITIZED"))


def vm_hwm_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


def big_message(size: int) -> bytes:
    """A message of about `size` octets, CRLF lines of up to 998 octets, some
    starting with a dot (stuffed on the way in and again on the way out)."""
    rnd = random.Random(size)
    lines = [b"From: a@example.test", b"To: b@example.test", b"Subject: big", b""]
    total = sum(len(l) + 2 for l in lines)
    while total < size:
        line = base64.b64encode(rnd.randbytes(rnd.randrange(0, 700)))
        if rnd.random() < 0.05:
            line = b"." + line
        lines.append(line)
        total += len(line) + 2
    return b"\r\n".join(lines) + b"\r\n"


def stuffed(message: bytes) -> bytes:
    body = message.replace(b"\r\n.", b"\r\n..")
    return b"." + body if body.startswith(b".") else body


def send_measured(d, message: bytes) -> tuple[str, float]:
    """Sends `message` in a session whose first, small message puts what every session costs in
    the baseline; its session id and how much the daemon's peak RSS grew for it (MiB)."""
    with d.connect() as c:
        assert c.transaction("a@example.test", ["b@example.test"], b"Subject: small\r\n\r\nhi").code == 250
        before = vm_hwm_kib(d.pid)
        r = c.transaction("a@example.test", ["b@example.test"], stuffed(message)[:-2])
        assert r.code == 250, r
        after = vm_hwm_kib(d.pid)
        sid = d.session_id(c.local_port)
    growth = (after - before) / 1024
    print(f"VmHWM {before} KiB -> {after} KiB (+{growth:.1f} MiB) for a {len(message) / MiB:.0f} MiB message")
    return sid, growth


@pytest.fixture
def big_upstream():
    """aiosmtpd without its 32 MiB DATA limit."""
    from aiosmtpd.controller import Controller

    from conftest import RecordingHandler

    class Up:
        handler = RecordingHandler()
        port = free_port()
        url = f"smtp://127.0.0.1:{port}"

    up = Up()
    up.controller = Controller(up.handler, hostname="127.0.0.1", port=up.port, data_size_limit=0,
                               server_hostname="aio.upstream")
    up.controller.start()
    yield up
    up.controller.stop()


def test_a_50_mib_message_arrives_byte_exact_without_growing_rss(start_daemon, big_upstream, tmp_path):
    spill = tmp_path / "spill"
    spill.mkdir()
    d = start_daemon(big_upstream.url, log_level="debug",
                     server={"max_message_size": 64 * MiB, "message_spill_dir": str(spill)})
    message = big_message(50 * MiB)
    sid, growth = send_measured(d, message)
    d.wait_log(rf" {sid}: message goes to a temporary file in {spill} at \d+ octets "
               r"\(larger than server.message_memory_threshold\)")
    assert not os.listdir(spill)  # the file had no name
    got = big_upstream.handler.envelopes[-1]["content"]
    head, sep, body = got.partition(b"\r\nFrom: a@example.test\r\n")
    assert head.startswith(b"Received: ") and sep
    assert len(sep[2:] + body) == len(message)
    assert hashlib.sha256(sep[2:] + body).digest() == hashlib.sha256(message).digest()
    if not SANITIZED:  # ASan's quarantine and shadow memory say nothing about ours
        assert growth < 8, f"VmHWM grew by {growth:.1f} MiB for a 50 MiB message"


@pytest.mark.parametrize("threshold", [None, 16 * MiB], ids=["spilled", "in memory"])
def test_a_message_of_lines_starting_with_a_dot_costs_its_size_not_twenty_times_it(start_daemon, big_upstream,
                                                                                   threshold):
    """Every line stuffed on the way out: each used to cost two pieces and an
    iovec (about 48 bytes of bookkeeping for a 3-octet line), so 8 MiB of
    such lines held in memory grew the daemon by some 250 MiB and went out
    100 octets a system call."""
    server = {"max_message_size": 64 * MiB}
    if threshold:
        server["message_memory_threshold"] = threshold
    d = start_daemon(big_upstream.url, server=server)
    message = b"From: a@example.test\r\nSubject: dots\r\n\r\n" + b".\r\n..x\r\n" * (MiB)  # 8 MiB
    _, growth = send_measured(d, message)
    got = big_upstream.handler.envelopes[-1]["content"]
    assert got.endswith(b"\r\n" + message)
    if not SANITIZED:  # (held in memory: the message, and its buffer's growth; was 200 MiB)
        assert growth < 3 * len(message) / MiB + 8, f"VmHWM grew by {growth:.1f} MiB for an 8 MiB message"


@pytest.mark.parametrize("hook", [
    "message.get('Subject')",
    "message.replace_header('Subject', message.get('Subject') + ' [checked]'); message.add_header('X-Tag', 'yes')",
])
def test_a_hook_that_reads_or_edits_fields_of_a_50_mib_message_does_not_read_its_body(
        policy_daemon, big_upstream, tmp_path, hook):
    """The fields are read from the header section alone, and an edit of fields goes back as a
    new header section over the body the daemon holds: the body never enters Python, nor is it
    copied back (the whole file was read into a bytes, then copied three times over)."""
    d = policy_daemon(big_upstream.url, f"""
        def on_data(tx, message):
            {hook}
    """, server={"max_message_size": 64 * MiB})
    message = big_message(50 * MiB)
    _, growth = send_measured(d, message)
    got = big_upstream.handler.envelopes[-1]["content"]
    want_head = b"From: a@example.test\r\nTo: b@example.test\r\nSubject: big\r\n"
    if "replace_header" in hook:
        want_head = b"X-Tag: yes\r\nFrom: a@example.test\r\nTo: b@example.test\r\nSubject: big [checked]\r\n"
    body = message[message.index(b"\r\n\r\n") + 2:]
    assert got.endswith(want_head + body), got[:400]
    if not SANITIZED:
        assert growth < 8, f"VmHWM grew by {growth:.1f} MiB for a 50 MiB message"


def test_a_hook_reading_a_field_of_a_big_message_without_an_empty_line_reads_it_once(policy_daemon, big_upstream):
    """No empty line (the first line that is not a field starts the body): the message is read
    whole, once (not built in pieces and then copied, which took twice its size)."""
    d = policy_daemon(big_upstream.url, """
        def on_data(tx, message):
            message.get('Subject')
    """, server={"max_message_size": 64 * MiB})
    message = b"Subject: big\r\nFrom: a@example.test\r\n" + b"".join(b"c" * 900 + b"\r\n" for _ in range(30 * MiB // 902))
    _, growth = send_measured(d, message)
    assert big_upstream.handler.envelopes[-1]["content"].endswith(message)
    if not SANITIZED:
        assert growth < 45, f"VmHWM grew by {growth:.1f} MiB for a 30 MiB message"


def test_clients_sending_big_messages_without_the_dot_stay_within_the_budget(start_daemon, aiosmtpd_upstream, tmp_path):
    clients, each = 20, 6 * MiB
    spill = tmp_path / "spill"
    spill.mkdir()
    # Each message is under the threshold: only the budget sends them to files.
    d = start_daemon(aiosmtpd_upstream.url, log_level="debug",
                     server={"max_message_size": 16 * MiB, "message_memory_threshold": 8 * MiB,
                             "message_memory_budget": 4 * MiB, "message_spill_dir": str(spill),
                             "max_connections_per_client": clients + 5})
    with d.connect() as c:
        assert c.transaction("a@example.test", ["b@example.test"], b"Subject: warm\r\n\r\nhi").code == 250
    before = vm_hwm_kib(d.pid)
    chunk = (b"x" * 998 + b"\r\n") * 1024
    hogs = []
    for _ in range(clients):
        c = d.connect()
        c.exchange("MAIL FROM:<a@example.test>", 250)
        c.exchange("RCPT TO:<b@example.test>", 250)
        c.exchange("DATA", 354)
        hogs.append(c)

    def send(c):
        for _ in range(each // len(chunk)):
            c.send(chunk)

    threads = [threading.Thread(target=send, args=(c,)) for c in hogs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    d.wait_log(r"message goes to a temporary file .*\(server.message_memory_budget in use by other messages\)",
               count=clients - 1, timeout=20)
    after = vm_hwm_kib(d.pid)
    growth = (after - before) / 1024
    print(f"VmHWM {before} KiB -> {after} KiB (+{growth:.1f} MiB) with {clients} x {each // MiB} MiB unfinished")
    if not SANITIZED:
        # 4 MiB of budget, then per-session buffers; without the budget it would be 120 MiB.
        assert growth < 40, f"VmHWM grew by {growth:.1f} MiB"
    for c in hogs:
        c.close()
    d.wait_log(r"client lost during DATA; nothing delivered", count=clients, timeout=10)
    # The budget came back: a 3 MiB message fits in memory again.
    with d.connect() as c:
        r = c.transaction("a@example.test", ["b@example.test"], stuffed(big_message(3 * MiB))[:-2])
        assert r.code == 250, r
        sid = d.session_id(c.local_port)
    assert not [l for l in d.session_log(sid) if "temporary file" in l], d.session_log(sid)
    assert not os.listdir(spill)


def test_a_spill_file_that_cannot_be_made_is_452_and_the_session_goes_on(start_daemon, aiosmtpd_upstream, tmp_path):
    spill = tmp_path / "spill"
    spill.mkdir()
    d = start_daemon(aiosmtpd_upstream.url, server={"message_memory_threshold": 0, "message_spill_dir": str(spill)})
    spill.rmdir()  # after the config was checked: as if the disk went away
    with d.connect() as c:
        r = c.transaction("a@example.test", ["b@example.test"], b"Subject: x\r\n\r\n" + b"y" * 100000)
        assert (r.code, r.status) == (452, "4.3.1"), r
        sid = d.session_id(c.local_port)
        line = d.wait_log(rf" {sid}: message not stored: cannot create a temporary file in {spill}: "
                          r"No such file or directory$")
        assert line
        spill.mkdir()
        r = c.transaction("a@example.test", ["b@example.test"], b"Subject: again\r\n\r\nok")
        assert r.code == 250, r
    msgs = aiosmtpd_upstream.wait_messages(1)
    assert len(msgs) == 1 and b"Subject: again" in msgs[0]["content"]


def test_a_spill_past_the_file_size_limit_is_452_not_a_dead_daemon(start_daemon, aiosmtpd_upstream, tmp_path):
    """RLIMIT_FSIZE (an operator's ulimit -f): the write that crosses it fails
    (SIGXFSZ is ignored), so the client gets 452 4.3.1 and the daemon serves on."""
    limit = 2 << 20

    def small_files():
        import resource
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    d = start_daemon(aiosmtpd_upstream.url, preexec=small_files,
                     server={"message_memory_threshold": 0, "message_spill_dir": str(tmp_path)})
    with d.connect() as c:
        r = c.transaction("a@example.test", ["b@example.test"], b"Subject: big\r\n\r\n" + b"y" * (3 << 20))
        assert (r.code, r.status) == (452, "4.3.1"), r
        r = c.transaction("a@example.test", ["b@example.test"], b"Subject: small\r\n\r\nok")
        assert r.code == 250, r
    assert d.proc.poll() is None, "the daemon died"
    msgs = aiosmtpd_upstream.wait_messages(1)
    assert len(msgs) == 1 and b"Subject: small" in msgs[0]["content"]


def test_a_policy_reads_and_rewrites_a_message_held_in_a_file(policy_daemon, aiosmtpd_upstream, tmp_path):
    """on_data gets every byte of a spilled message, and its edit goes upstream."""
    d = policy_daemon(aiosmtpd_upstream.url, """
        import hashlib

        def on_data(tx, message):
            raw = message.raw
            message.add_header("X-Len", str(len(raw)))
            message.add_header("X-Sha", hashlib.sha256(raw).hexdigest())
        """, log_level="debug", server={"message_memory_threshold": 4096})
    message = big_message(1 * MiB)
    with d.connect() as c:
        r = c.transaction("a@example.test", ["b@example.test"], stuffed(message)[:-2])
        assert r.code == 250, r
        sid = d.session_id(c.local_port)
    d.wait_log(rf" {sid}: message goes to a temporary file .*\(larger than server.message_memory_threshold\)")
    got = aiosmtpd_upstream.wait_messages(1)[0]["content"]
    assert f"X-Len: {len(message)}\r\n".encode() in got
    assert f"X-Sha: {hashlib.sha256(message).hexdigest()}\r\n".encode() in got
    assert got.endswith(message[message.index(b"\r\n\r\n"):])

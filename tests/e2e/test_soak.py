"""1,000 transactions over fresh connections: every one delivered, and the
daemon's file descriptors and memory do not grow with the number served."""

from __future__ import annotations

import os
import smtplib
import time

TOTAL = 1000
WARMUP = 100
FD_MARGIN = 5
RSS_MARGIN_KIB = 8 * 1024


def send_one(port: int, i: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, local_hostname="soak.test", timeout=10) as s:
        body = f"Subject: soak {i}\r\nX-Seq: {i}\r\n\r\n".encode() + b"soak line\r\n" * (1 + i % 20)
        s.ehlo()
        code, _ = s.mail(f"s{i}@example.test")
        assert code == 250
        code, _ = s.rcpt(f"r{i}@example.test")
        assert code == 250
        code, text = s.data(body)
        assert (code, text) == (250, f"2.0.0 Ok: queued as AIO{i + 1:05d} (aiosmtpd)".encode()), (i, code, text)


def settled(d, upstream, sessions: int) -> tuple[int, int]:
    """fd count and RSS once every session so far has ended."""
    d.wait_log(r"disconnect from \[127\.0\.0\.1\]", count=sessions, timeout=20)
    upstream.wait_messages(sessions, timeout=20)
    # The session's coroutine releases its sockets just after that log line.
    deadline = time.monotonic() + 5
    fds = d.fd_count()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = d.fd_count()
        if now == fds:
            break
        fds = now
    return fds, d.rss_kib()


def test_soak_sequential_transactions(start_daemon, aiosmtpd_upstream):
    d = start_daemon(aiosmtpd_upstream.url)
    t0 = time.monotonic()
    for i in range(WARMUP):
        send_one(d.port, i)
    fds_warm, rss_warm = settled(d, aiosmtpd_upstream, WARMUP)
    for i in range(WARMUP, TOTAL):
        send_one(d.port, i)
    fds_end, rss_end = settled(d, aiosmtpd_upstream, TOTAL)
    elapsed = time.monotonic() - t0

    envs = aiosmtpd_upstream.envelopes
    assert len(envs) == TOTAL
    for i, env in enumerate(envs):
        assert env["mail_from"] == f"s{i}@example.test"
        assert env["rcpt_tos"] == [f"r{i}@example.test"]
        assert f"\r\nX-Seq: {i}\r\n".encode() in env["content"]
        assert env["content"].count(b"soak line\r\n") == 1 + i % 20
    assert fds_end <= fds_warm + FD_MARGIN, f"fd leak: {fds_warm} after {WARMUP}, {fds_end} after {TOTAL}"
    # Under ASan freed memory sits in the quarantine by design: there, leaks
    # show up as LeakSanitizer reports (a non-zero exit), not as RSS.
    if not os.environ.get("PORTCULLIS_SANITIZED"):
        assert rss_end <= rss_warm + RSS_MARGIN_KIB, f"RSS grew: {rss_warm} KiB after {WARMUP}, {rss_end} KiB after {TOTAL}"
    assert d.log_text().count("verdict=delivered") == TOTAL
    print(f"\nsoak: {TOTAL} transactions in {elapsed:.1f}s; fds {fds_warm}->{fds_end}; RSS {rss_warm}->{rss_end} KiB")


def test_concurrent_clients_no_crosstalk(start_daemon, aiosmtpd_upstream):
    """Eight clients at once on a two-thread daemon, two transactions per
    connection: each message arrives with its own envelope and body."""
    import threading

    d = start_daemon(aiosmtpd_upstream.url)
    errors: list[str] = []

    def worker(w: int) -> None:
        try:
            for k in range(15):
                with smtplib.SMTP("127.0.0.1", d.port, local_hostname=f"w{w}.test", timeout=10) as s:
                    for t in range(2):
                        tag = f"w{w}-k{k}-t{t}"
                        s.ehlo() if t == 0 else s.rset()
                        assert s.mail(f"{tag}@from.test")[0] == 250
                        assert s.rcpt(f"{tag}@to.test")[0] == 250
                        code, _ = s.data(f"Subject: {tag}\r\nX-Tag: {tag}\r\n\r\n{tag} body\r\n".encode() * 1)
                        assert code == 250, (tag, code)
        except Exception as e:  # reported below with the worker's name
            errors.append(f"worker {w}: {e!r}")

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    envs = aiosmtpd_upstream.wait_messages(8 * 15 * 2)
    assert len(envs) == 8 * 15 * 2
    for env in envs:
        tag = env["mail_from"].split("@")[0]
        assert env["rcpt_tos"] == [f"{tag}@to.test"]
        assert env["content"].endswith(f"\r\nSubject: {tag}\r\nX-Tag: {tag}\r\n\r\n{tag} body\r\n".encode())
        helo = tag.split("-")[0] + ".test"
        assert env["content"].startswith(f"Received: from {helo} ([127.0.0.1])".encode())
    assert len({e["mail_from"] for e in envs}) == len(envs)

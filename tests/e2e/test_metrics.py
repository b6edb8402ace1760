"""[metrics] listen (issue 11): GET /metrics counts what the traffic did,
summed over every worker whichever one answers the scrape; the policies'
own pc.metrics come with it; GET /healthz says the daemon serves.

The counts are checked against the traffic sent: connections, transactions
by outcome, replies by stage, hook calls and their verdicts (errors
included), upstream round trips and failures, reloads."""

from __future__ import annotations

import http.client
import re
import signal
import subprocess
import time

import pytest

from conftest import free_port, wait_until

POLICY = """
    import portcullis as pc

    checked = pc.metrics.counter("policy_checked_total", "Senders the policy looked at", labels=["domain"])
    sizes = pc.metrics.histogram("policy_subject_length", "Subject lengths", buckets=[5, 50])

    def on_mail(tx, sender):
        checked.labels(domain=sender.domain).inc()
        if sender.local == "boom":
            raise RuntimeError("policy bug")

    def on_rcpt(tx, rcpt):
        if rcpt.local == "nobody":
            return pc.reject("No such user")
        if rcpt.local == "later":
            return pc.tempfail("Greylisted")

    def on_data(tx, message):
        subject = message.get("Subject") or ""
        sizes.observe(len(subject))
        if subject == "discard me":
            return pc.discard()
"""

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def get(port: int, path: str, method: str = "GET") -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path)
        r = conn.getresponse()
        return r.status, r.read().decode()
    finally:
        conn.close()


def scrape(port: int) -> dict[tuple[str, frozenset], float]:
    """Every sample of GET /metrics: (name, labels) -> value."""
    status, text = get(port, "/metrics")
    assert status == 200, text
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        labels = frozenset(LABEL.findall(m.group(2) or ""))
        samples[(m.group(1), labels)] = float(m.group(3))
    return samples


def value(samples, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def start(policy_daemon, upstream, workers: int, **tables):
    port = free_port()
    d = policy_daemon(upstream.url, POLICY, metrics={"listen": f"127.0.0.1:{port}"}, server={"workers": workers},
                      **tables)
    d.metrics_port = port
    wait_until(lambda: _answers(port), timeout=10, what="the metrics listener")
    return d


def _answers(port: int) -> bool:
    try:
        return get(port, "/healthz")[0] == 200
    except OSError:
        return False


@pytest.mark.parametrize("workers", [1, 2])
def test_the_counters_match_the_traffic_whichever_worker_answers(policy_daemon, aiosmtpd_upstream, workers):
    d = start(policy_daemon, aiosmtpd_upstream, workers)
    delivered = 6
    # One connection each: with two workers the kernel spreads them over both.
    for i in range(delivered):
        with d.connect() as c:
            r = c.transaction("ann@example.test", ["bob@example.test"], b"Subject: hello\r\n\r\nbody")
            assert r.code == 250, r
            c.exchange("QUIT", 221)
    with d.connect() as c:
        r = c.transaction("ann@example.test", ["bob@example.test"], b"Subject: discard me\r\n\r\nbody")
        assert r.code == 250, r
        # Every RCPT refused: the transaction is refused, permanently or not.
        c.exchange("MAIL FROM:<ann@example.test>", 250)
        c.exchange("RCPT TO:<nobody@example.test>", 550)
        c.exchange("RSET", 250)
        c.exchange("MAIL FROM:<ann@example.test>", 250)
        c.exchange("RCPT TO:<later@example.test>", 451)
        c.exchange("RSET", 250)
        # A hook that raised: 451 (policy.on_error = "tempfail"), the transaction tempfailed.
        c.exchange("MAIL FROM:<boom@example.org>", 451)
        c.exchange("QUIT", 221)
    with d.connect() as c:
        # Every RCPT refused, then QUIT: counted as the session ends.
        c.exchange("MAIL FROM:<ann@example.test>", 250)
        c.exchange("RCPT TO:<nobody@example.test>", 550)
        c.exchange("QUIT", 221)
    aiosmtpd_upstream.wait_messages(delivered)
    connections = delivered + 2

    def last_counted():
        s = scrape(d.metrics_port)
        # (The open-connections gauge goes down after the session's counts, as its connection is let go.)
        return (value(s, "portcullis_transactions_total", outcome="tempfailed") == 2
                and value(s, "portcullis_transactions_total", outcome="rejected") == 2
                and value(s, "portcullis_connections_open") == 0)

    # The last sessions' counts land as they end; each scrape may be another worker's answer.
    wait_until(last_counted, timeout=30, what="the last transactions to be counted")
    for _ in range(4 * workers):
        s = scrape(d.metrics_port)
        assert value(s, "portcullis_connections_total") == connections
        assert value(s, "portcullis_transactions_total", outcome="delivered") == delivered
        assert value(s, "portcullis_transactions_total", outcome="discarded") == 1
        assert value(s, "portcullis_transactions_total", outcome="rejected") == 2
        assert value(s, "portcullis_transactions_total", outcome="tempfailed") == 2
        assert value(s, "portcullis_replies_total", stage="rcpt", **{"class": "5xx"}) == 2
        assert value(s, "portcullis_replies_total", stage="rcpt", **{"class": "4xx"}) == 1
        assert value(s, "portcullis_replies_total", stage="mail", **{"class": "4xx"}) == 1
        assert value(s, "portcullis_replies_total", stage="data", **{"class": "2xx"}) == delivered + 1
        # Each DATA's 354 too, besides the reply to its dot.
        assert value(s, "portcullis_replies_total", stage="data", **{"class": "3xx"}) == delivered + 1
        policy = str(d.policy_files[0])
        mails = delivered + 5
        assert value(s, "portcullis_hook_duration_seconds_count", policy=policy, hook="on_mail") == mails
        assert value(s, "portcullis_hook_duration_seconds_count", policy=policy, hook="on_rcpt") == delivered + 4
        assert value(s, "portcullis_hook_duration_seconds_bucket", policy=policy, hook="on_rcpt", le="+Inf") == delivered + 4
        assert value(s, "portcullis_verdicts_total", hook="on_mail", verdict="none") == mails - 1
        assert value(s, "portcullis_verdicts_total", hook="on_mail", verdict="error") == 1
        assert value(s, "portcullis_verdicts_total", hook="on_rcpt", verdict="reject") == 2
        assert value(s, "portcullis_verdicts_total", hook="on_rcpt", verdict="tempfail") == 1
        assert value(s, "portcullis_verdicts_total", hook="on_data", verdict="discard") == 1
        assert value(s, "portcullis_verdicts_total", hook="on_data", verdict="none") == delivered
        # Upstream: every delivered message's MAIL, RCPT, DATA and end of data went through it.
        assert value(s, "portcullis_upstream_duration_seconds_count", command="END-OF-DATA") == delivered
        assert value(s, "portcullis_upstream_duration_seconds_count", command="RCPT") == delivered + 1
        assert value(s, "portcullis_upstream_failures_total", kind="unreachable") == 0
        assert value(s, "portcullis_message_size_bytes_count") == delivered + 1
        # The policy's own, from whichever worker ran its hooks.
        assert value(s, "policy_checked_total", domain="example.test") == mails - 1
        assert value(s, "policy_checked_total", domain="example.org") == 1
        assert value(s, "policy_subject_length_count") == delivered + 1
        assert value(s, "policy_subject_length_bucket", le="5") == delivered  # "hello"
        assert value(s, "portcullis_connections_open") == 0
        assert value(s, "portcullis_metrics_dropped_total") == 0
    status, text = get(d.metrics_port, "/metrics")
    for name, kind in [("portcullis_connections_total", "counter"), ("portcullis_transactions_total", "counter"),
                       ("portcullis_hook_duration_seconds", "histogram"), ("portcullis_verdicts_total", "counter"),
                       ("portcullis_upstream_duration_seconds", "histogram")]:
        assert f"# TYPE {name} {kind}\n" in text
    # A reload is counted once for the daemon, however many workers reload.
    d.signal(signal.SIGHUP)  # (the supervisor's check of the config is slow under ASan: waited for below)
    wait_until(lambda: value(scrape(d.metrics_port), "portcullis_reloads_total", outcome="ok") == 1, timeout=30,
               what="the reload")
    assert d.stop() == 0


def test_auth_challenges_are_counted_as_3xx(policy_daemon, aiosmtpd_upstream):
    d = start(policy_daemon, aiosmtpd_upstream, 1, auth={"allow_plaintext": True})
    with d.connect() as c:
        c.exchange("AUTH LOGIN", 334)  # Username:
        c.exchange("YW5u", 334)  # Password:
        c.exchange("*", 501)  # cancelled (RFC 4954 §4)
        c.exchange("QUIT", 221)
    wait_until(lambda: value(scrape(d.metrics_port), "portcullis_connections_open") == 0, timeout=10,
               what="the session to end")
    s = scrape(d.metrics_port)
    assert value(s, "portcullis_replies_total", stage="auth", **{"class": "3xx"}) == 2
    assert value(s, "portcullis_replies_total", stage="auth", **{"class": "5xx"}) == 1
    assert d.stop() == 0


def test_the_refused_login_before_the_goodbye_is_counted(policy_daemon, aiosmtpd_upstream):
    d = start(policy_daemon, aiosmtpd_upstream, 1, auth={"allow_plaintext": True, "max_failures": 1})
    with d.connect() as c:
        c.exchange("AUTH PLAIN !!!", 501)  # not base64: a failed login, the session's last
        c.expect(421, "4.7.0")
    wait_until(lambda: value(scrape(d.metrics_port), "portcullis_connections_open") == 0, timeout=10,
               what="the session to end")
    s = scrape(d.metrics_port)
    assert value(s, "portcullis_replies_total", stage="auth", **{"class": "5xx"}) == 1
    assert value(s, "portcullis_replies_total", stage="auth", **{"class": "4xx"}) == 1
    assert d.stop() == 0


def test_healthz_and_what_else_the_listener_answers(policy_daemon, aiosmtpd_upstream):
    d = start(policy_daemon, aiosmtpd_upstream, 1)
    status, body = get(d.metrics_port, "/healthz")
    assert status == 200 and body.startswith("serving\nupstream: no reply yet")
    with d.connect() as c:
        assert c.transaction("ann@example.test", ["bob@example.test"], b"Subject: x\r\n\r\nbody").code == 250
    status, body = get(d.metrics_port, "/healthz")
    assert status == 200 and re.match(r"serving\nupstream: last reply \d+ s ago\n", body), body
    assert get(d.metrics_port, "/metrics?x=1")[0] == 200
    # The absolute form, as a proxy sends it (RFC 9112 §3.2.2: a server accepts it).
    assert get(d.metrics_port, f"http://127.0.0.1:{d.metrics_port}/metrics")[0] == 200
    assert get(d.metrics_port, f"HTTP://localhost/healthz?x=1")[0] == 200
    assert get(d.metrics_port, "http://localhost")[0] == 404
    assert get(d.metrics_port, "/nothing")[0] == 404
    assert get(d.metrics_port, "/metrics", method="POST")[0] == 405
    assert get(d.metrics_port, "/metrics", method="HEAD") == (200, "")
    # A POST with a body is 405 too (the method is looked at before the body is read).
    conn = http.client.HTTPConnection("127.0.0.1", d.metrics_port, timeout=5)
    conn.request("POST", "/metrics", body=b"x=1")
    assert conn.getresponse().status == 405
    conn.close()
    # HEAD says the length GET's body has (RFC 9110 §9.3.2), and sends none.
    conn = http.client.HTTPConnection("127.0.0.1", d.metrics_port, timeout=5)
    conn.request("HEAD", "/healthz")
    r = conn.getresponse()
    assert r.status == 200 and r.read() == b""
    conn.close()
    assert int(r.getheader("Content-Length")) == len(get(d.metrics_port, "/healthz")[1].encode())
    # Not HTTP at all: refused, and the listener goes on serving.
    import socket
    with socket.create_connection(("127.0.0.1", d.metrics_port), timeout=5) as s:
        s.sendall(b"EHLO x\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 400")
    assert get(d.metrics_port, "/healthz")[0] == 200


def test_idle_metrics_connections_are_capped_and_scrapes_still_get_through(policy_daemon, aiosmtpd_upstream):
    """Connections to the metrics port that say nothing: at most 16 are held (so they cannot take
    the worker's file descriptors from SMTP), each for 2 s at most, and a new one takes the place
    of the oldest still silent: a scrape gets its answer however many idle ones come first."""
    import socket
    d = start(policy_daemon, aiosmtpd_upstream, 1)
    idle = [socket.create_connection(("127.0.0.1", d.metrics_port), timeout=5) for _ in range(16)]
    try:
        time.sleep(0.3)
        for _ in range(3):
            assert get(d.metrics_port, "/healthz")[0] == 200
        d.wait_log(r"warning metrics: 16 connections open; the oldest that has said nothing is closed$")
        assert idle[0].recv(100) == b""  # the oldest, closed for the scrape
        with d.connect() as c:
            c.exchange("NOOP", 250)
        start_wait = time.monotonic()
        assert idle[-1].recv(100) == b""  # and every silent one after 2 s
        assert time.monotonic() - start_wait < 4
    finally:
        for s in idle:
            s.close()


def test_upstream_failures_are_counted(policy_daemon):
    d = start(policy_daemon, type("Down", (), {"url": f"smtp://127.0.0.1:{free_port()}"})(), 1)
    with d.connect() as c:
        c.exchange("MAIL FROM:<ann@example.test>", 451)
    s = scrape(d.metrics_port)
    assert value(s, "portcullis_upstream_failures_total", kind="unreachable") == 1
    assert value(s, "portcullis_transactions_total", outcome="tempfailed") == 1


@pytest.mark.parametrize("listen,why", [
    ("localhost:9325", "is not IP:PORT"),
    ("127.0.0.1:{smtp}", "is an SMTP listener too"),
    ("0.0.0.0:{smtp}", "overlaps the SMTP listener"),
])
def test_a_bad_metrics_listen_is_refused(portcullis_bin, tmp_path, listen, why):
    smtp = free_port()
    cfg = tmp_path / "p.toml"
    cfg.write_text(f'[server]\nlisten = ["127.0.0.1:{smtp}"]\n[upstream]\nurl = "smtp://127.0.0.1:25"\n'
                   f'[metrics]\nlisten = "{listen.format(smtp=smtp)}"\n')
    r = subprocess.run([str(portcullis_bin), "--check-config", str(cfg)], capture_output=True, text=True)
    assert r.returncode == 1 and why in r.stdout + r.stderr, r


def test_a_metrics_port_in_use_stops_start_up(portcullis_bin, tmp_path):
    import socket
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = tmp_path / "p.toml"
        cfg.write_text(f'[server]\nlisten = ["127.0.0.1:{free_port()}"]\n[upstream]\nurl = "smtp://127.0.0.1:25"\n'
                       f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
        r = subprocess.run([str(portcullis_bin), "--config", str(cfg)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1, r
    assert f"cannot listen on 127.0.0.1:{port} ([metrics] listen)" in r.stderr


def test_dns_lookups_are_counted_by_type_and_result(start_daemon, aiosmtpd_upstream):
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dns"))
    from dns_server import DnsServer

    with DnsServer({"upstream.test": [{"A": "127.0.0.1"}]}) as dns:
        port = free_port()
        d = start_daemon(aiosmtpd_upstream.url.replace("127.0.0.1", "upstream.test"),
                         dns={"nameserver": f"127.0.0.1:{dns.port}", "timeout": 1},
                         metrics={"listen": f"127.0.0.1:{port}"})
        wait_until(lambda: _answers(port), timeout=10, what="the metrics listener")
        with d.connect() as c:
            assert c.transaction("ann@example.test", ["bob@example.test"], b"Subject: x\r\n\r\nbody").code == 250
        s = scrape(port)
        assert value(s, "portcullis_dns_lookups_total", type="A", result="ok") >= 1
        assert dns.queries("upstream.test", "A") >= 1
        # A name that does not exist: counted as such.
        d.reload(tables={"upstream": {"url": aiosmtpd_upstream.url.replace("127.0.0.1", "nowhere.test")}})
        with d.connect() as c:
            c.exchange("MAIL FROM:<ann@example.test>", 451)
        s = scrape(port)
        assert value(s, "portcullis_dns_lookups_total", type="A", result="nxdomain") >= 1
        assert value(s, "portcullis_upstream_failures_total", kind="unreachable") == 1


def test_a_get_announcing_a_body_is_answered_at_once_and_a_crowd_is_warned_once(policy_daemon, aiosmtpd_upstream):
    """A GET or HEAD carries no body (RFC 9110 §9.3.1): one that announces one is answered 400 at
    once, not held open waiting for it, so 16 of them cannot keep the scrapes out. A crowd of
    connections past the cap is warned about once in a while, not once per connection."""
    import socket
    d = start(policy_daemon, aiosmtpd_upstream, 1)
    announced = [b"Content-Length: 10\r\n", b"Transfer-Encoding: chunked\r\n"]
    held = []
    try:
        for i in range(16):
            s = socket.create_connection(("127.0.0.1", d.metrics_port), timeout=5)
            method = b"HEAD" if i == 0 else b"GET"
            s.sendall(method + b" /metrics HTTP/1.1\r\nHost: x\r\n" + announced[i % 2] + b"\r\n")
            held.append(s)
        for s in held:
            assert s.recv(100).startswith(b"HTTP/1.1 400 ")  # (not after request_timeout: recv gives up in 5 s)
        for _ in range(3):
            assert get(d.metrics_port, "/healthz")[0] == 200
        # Content-Length: 0 is no body.
        with socket.create_connection(("127.0.0.1", d.metrics_port), timeout=5) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
            assert s.recv(100).startswith(b"HTTP/1.1 200 ")
    finally:
        for s in held:
            s.close()
    idle = [socket.create_connection(("127.0.0.1", d.metrics_port), timeout=5) for _ in range(40)]
    try:
        assert get(d.metrics_port, "/healthz")[0] == 200
        d.wait_log(r"warning metrics: 16 connections open; the oldest that has said nothing is closed$")
        time.sleep(0.5)
        assert len(re.findall(r"warning metrics: 16 connections open", d.log_text())) == 1, d.log_text()[-3000:]
    finally:
        for s in idle:
            s.close()

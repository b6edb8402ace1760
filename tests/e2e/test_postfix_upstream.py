"""A real Postfix as the upstream (a private instance on a loopback port,
started and stopped here): XCLIENT and XFORWARD tell it the real client, so
its logs and its own restrictions see the client and not the proxy; the
proxy fails closed when Postfix will not take XCLIENT; opportunistic and
required STARTTLS to the upstream; Postfix's queue id reaches the client and
the proxy's log."""

from __future__ import annotations

import os
import re
import signal
import sys
import time

from pathlib import Path

import pytest

import postfix_instance
from postfix_instance import PostfixInstance
from sec_helpers import b64, make_cert, sec_daemon, write_users  # noqa: F401  (sec_daemon is a fixture)

NO_POSTFIX = postfix_instance.available()

BODY = b"Subject: to postfix\r\n\r\nthrough the proxy"
QUEUED = re.compile(r"^2\.0\.0 Ok: queued as ([0-9A-Za-z]+)$")


def running_postfix(settings: dict, name: str):
    """A Postfix instance with `settings` for a test or a module (skipped without Postfix), stopped after."""
    if NO_POSTFIX:
        pytest.skip(NO_POSTFIX)
    pf = PostfixInstance(settings, name=name)
    try:
        pf.start()
        yield pf
    finally:
        pf.stop()


@pytest.fixture(scope="module")
def postfix_tls(tmp_path_factory):
    """Postfix that lets 127.0.0.0/8 use XCLIENT/XFORWARD and offers STARTTLS."""
    if NO_POSTFIX:
        pytest.skip(NO_POSTFIX)
    cert, key = make_cert(tmp_path_factory.mktemp("pfcert"), "upstream", ["upstream.test"])
    pf = PostfixInstance({}, name="pf-tls")
    # Postfix reads the key as root before dropping privileges; keep them in its own folder.
    pf.settings.update({
        "smtpd_tls_cert_file": str(pf.dir / "upstream.pem"),
        "smtpd_tls_key_file": str(pf.dir / "upstream.key"),
        "smtpd_tls_security_level": "may",
        "smtpd_tls_loglevel": "1",
    })
    (pf.dir / "upstream.pem").write_bytes(cert.read_bytes())
    (pf.dir / "upstream.key").write_bytes(key.read_bytes())
    (pf.dir / "upstream.key").chmod(0o600)
    try:
        pf.start()
        yield pf
    finally:
        pf.stop()


@pytest.fixture(scope="module")
def postfix_plain():
    """Postfix without TLS that authorizes nobody for XCLIENT or XFORWARD."""
    yield from running_postfix({"smtpd_authorized_xclient_hosts": "", "smtpd_authorized_xforward_hosts": ""},
                               "pf-plain")


@pytest.fixture(scope="module")
def postfix_data_checks():
    """Postfix that refuses DATA for one sender (smtpd_data_restrictions), as a milter or a
    content policy at DATA does: its MAIL and RCPTs stay in force after the refusal."""
    yield from running_postfix({"smtpd_data_restrictions": "check_sender_access inline:{refused@remote.test=REJECT}"},
                               "pf-data")


def deliver(d, source: str, rcpt: str = "user@example.test", helo: str = "client.test") -> str:
    """One message from `source` through the proxy; returns Postfix's queue id."""
    with d.connect(ehlo=helo, source=source) as c:
        sid = d.session_of(c.local_port, ip=source)
        r = c.transaction("sender@remote.test", [rcpt], BODY)
        assert (r.code, r.status) == (250, "2.0.0"), str(r)
        m = QUEUED.match(r.lines[0])
        assert m, f"not Postfix's own 250: {r}"
        c.exchange("QUIT", 221)
    qid = m.group(1)
    # The proxy's summary line names the same queue id.
    d.wait_log(rf"{sid}: tx={sid}\.1 client=\[{re.escape(source)}\] helo={re.escape(helo)} "
               rf"from=<sender@remote\.test> to=<{re.escape(rcpt)}> rejected_rcpts=0 size=\d+ "
               rf"upstream=\"250 2\.0\.0 Ok: queued as {qid}\" queue_id={qid} verdict=delivered$")
    return qid


# --------------------------------------------------------------------------
# XCLIENT


def test_xclient_postfix_sees_the_real_client(sec_daemon, postfix_tls):
    d = sec_daemon(postfix_tls.url, upstream={"client_info": "xclient"})
    qid = deliver(d, "127.0.0.5", helo="real-client.test")
    postfix_tls.wait_log(rf"postfix/smtpd\[\d+\]: {qid}: client=unknown\[127\.0\.0\.5\]$")
    # The queue file went through cleanup and qmgr like any other mail.
    postfix_tls.wait_log(rf"postfix/qmgr\[\d+\]: {qid}: from=<sender@remote\.test>")


def test_xclient_postfix_restrictions_apply_to_the_real_client(sec_daemon, postfix_tls):
    """mynetworks = 127.0.0.1/32: the proxy itself may relay, its client 127.0.0.5 may not."""
    d = sec_daemon(postfix_tls.url, upstream={"client_info": "xclient"})
    with d.connect(ehlo="outsider.test", source="127.0.0.5") as c:
        c.exchange("MAIL FROM:<sender@remote.test>", 250, "2.1.0")
        r = c.exchange("RCPT TO:<victim@foreign.test>", 554, "5.7.1")
        assert r.lines[0] == "5.7.1 <victim@foreign.test>: Relay access denied", str(r)
        c.exchange("RCPT TO:<user@example.test>", 250, "2.1.5")
    postfix_tls.wait_log(r"NOQUEUE: reject: RCPT from unknown\[127\.0\.0\.5\]: 554 5\.7\.1 <victim@foreign\.test>: "
                         r"Relay access denied; from=<sender@remote\.test> to=<victim@foreign\.test> "
                         r"proto=ESMTP helo=<")
    # Without XCLIENT, Postfix sees only the proxy (127.0.0.1, in its mynetworks) and relays for anyone.
    plain = sec_daemon(postfix_tls.url)
    with plain.connect(ehlo="outsider.test", source="127.0.0.5") as c:
        c.exchange("MAIL FROM:<sender@remote.test>", 250, "2.1.0")
        c.exchange("RCPT TO:<victim@foreign.test>", 250, "2.1.5")


def test_xclient_postfix_sees_the_client_helo(sec_daemon, postfix_tls):
    d = sec_daemon(postfix_tls.url, upstream={"client_info": "xclient"})
    with d.connect(ehlo="helo-of-the-client.test", source="127.0.0.5") as c:
        c.exchange("MAIL FROM:<sender@remote.test>", 250, "2.1.0")
        c.exchange("RCPT TO:<victim@helo-check.test>", 554, "5.7.1")
    m = postfix_tls.wait_log(r"NOQUEUE: reject: RCPT from unknown\[127\.0\.0\.5\]: 554 5\.7\.1 "
                             r"<victim@helo-check\.test>: Relay access denied; .* helo=<([^>]*)>$")
    assert m.group(1) == "helo-of-the-client.test"


def test_xclient_postfix_takes_a_helo_name_too_long_as_xtext(sec_daemon, postfix_tls):
    """Postfix refuses XCLIENT (501) for a value over 255 octets as sent: a HELO name of '='s
    (xtext +3D) made every MAIL of that client 451. The HELO attribute is left out, and the
    EHLO after XCLIENT gives Postfix the client's name."""
    d = sec_daemon(postfix_tls.url, upstream={"client_info": "xclient", "pool_size": 0})
    helo = ".".join(["=" * 40] * 4) + ".test"
    with d.connect(ehlo=helo, source="127.0.0.5") as c:
        c.exchange("MAIL FROM:<sender@remote.test>", 250, "2.1.0")
        c.exchange("RCPT TO:<long-helo@helo-check.test>", 554, "5.7.1")
    m = postfix_tls.wait_log(r"NOQUEUE: reject: RCPT from unknown\[127\.0\.0\.5\]: 554 5\.7\.1 "
                             r"<long-helo@helo-check\.test>: Relay access denied; .* helo=<([^>]*)>$")
    assert m.group(1) == helo


def test_xclient_with_proxy_protocol_source(sec_daemon, postfix_tls):
    """The PROXY header's source is what Postfix is told."""
    d = sec_daemon(postfix_tls.url, upstream={"client_info": "xclient"}, server={"proxy_protocol": True})
    with d.client() as c:
        c.send(b"PROXY TCP4 192.0.2.77 127.0.0.1 45000 25\r\n")
        c.expect(220)
        c.exchange("EHLO behind-lb.test", 250)
        r = c.transaction("sender@remote.test", ["user@example.test"], BODY)
        assert (r.code, r.status) == (250, "2.0.0")
        qid = QUEUED.match(r.lines[0]).group(1)
    postfix_tls.wait_log(rf"{qid}: client=unknown\[192\.0\.2\.77\]$")


def test_a_connection_that_no_longer_offers_xclient_is_not_kept(sec_daemon, postfix_tls):
    """After XCLIENT ADDR= of a client outside smtpd_authorized_xclient_hosts Postfix's EHLO offers
    XCLIENT no more: the connection was kept, and each next session logged an error, counted an
    upstream failure and connected again."""
    d = sec_daemon(postfix_tls.url, upstream={"client_info": "xclient"}, server={"proxy_protocol": True})
    for source in ("203.0.113.5", "198.51.100.7", "192.0.2.9"):
        with d.client() as c:
            c.send(f"PROXY TCP4 {source} 127.0.0.1 45000 25\r\n".encode())
            c.expect(220)
            c.exchange("EHLO behind-lb.test", 250)
            r = c.transaction("sender@remote.test", ["user@example.test"], BODY)
            assert (r.code, r.status) == (250, "2.0.0"), str(r)
            qid = QUEUED.match(r.lines[0]).group(1)
            c.exchange("QUIT", 221)
        postfix_tls.wait_log(rf"{qid}: client=unknown\[{re.escape(source)}\]$")
    assert "does not offer XCLIENT" not in d.log_text()


def test_xclient_refused_fails_closed(sec_daemon, postfix_plain):
    d = sec_daemon(postfix_plain.url, upstream={"client_info": "xclient"})
    with d.connect(source="127.0.0.5") as c:
        sid = d.session_of(c.local_port, ip="127.0.0.5")
        r = c.exchange("MAIL FROM:<sender@remote.test>", 451, "4.3.0")
        assert r.raw == b"451 4.3.0 Upstream server error, try again later\r\n"
        # Nothing was relayed as the proxy itself.
        c.exchange("RCPT TO:<user@example.test>", 503, "5.5.1")
    d.wait_log(rf"{sid}: upstream: upstream\.client_info = \"xclient\" but the upstream does not offer XCLIENT to us$")
    assert not re.search(r"\]: [0-9A-F]+: client=", postfix_plain.log_text()), "a message got queued"


def test_xforward_refused_fails_closed(sec_daemon, postfix_plain):
    d = sec_daemon(postfix_plain.url, upstream={"client_info": "xforward"})
    with d.connect(source="127.0.0.5") as c:
        sid = d.session_of(c.local_port, ip="127.0.0.5")
        c.exchange("MAIL FROM:<sender@remote.test>", 451, "4.3.0")
    d.wait_log(rf"{sid}: upstream: upstream\.client_info = \"xforward\" but the upstream does not offer XFORWARD")


# --------------------------------------------------------------------------
# XFORWARD


def test_xforward_postfix_logs_the_original_client(sec_daemon, postfix_tls):
    d = sec_daemon(postfix_tls.url, upstream={"client_info": "xforward"})
    qid = deliver(d, "127.0.0.5", helo="fwd-client.test")
    m = postfix_tls.wait_log(rf"{qid}: client=(\S+)\[127\.0\.0\.1\], orig_client=unknown\[127\.0\.0\.5\]$")
    assert m
    # XFORWARD goes before each MAIL: a second transaction on the same connection is forwarded too.
    with d.connect(ehlo="fwd2.test", source="127.0.0.6") as c:
        qids = []
        for _ in range(2):
            r = c.transaction("sender@remote.test", ["user@example.test"], BODY)
            assert r.code == 250
            qids.append(QUEUED.match(r.lines[0]).group(1))
    for q in qids:
        postfix_tls.wait_log(rf"{q}: client=\S+\[127\.0\.0\.1\], orig_client=unknown\[127\.0\.0\.6\]$")


def test_xforward_postfix_takes_a_client_whose_name_lookup_failed(sec_daemon, postfix_tls):
    """XFORWARD NAME=[TEMPUNAVAIL] is XCLIENT's word only: Postfix refused the command (501 5.5.4
    Bad NAME syntax), and every MAIL of a client whose PTR lookup timed out was 451."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dns"))
    from dns_server import DnsServer

    with DnsServer({"5.0.0.127.in-addr.arpa": ["TIMEOUT"]}) as dns:
        d = sec_daemon(postfix_tls.url, upstream={"client_info": "xforward"},
                       dns={"nameserver": f"127.0.0.1:{dns.port}", "timeout": 1})
        qid = deliver(d, "127.0.0.5", helo="fwd-client.test")
    postfix_tls.wait_log(rf"{qid}: client=\S+\[127\.0\.0\.1\], orig_client=unknown\[127\.0\.0\.5\]$")


# --------------------------------------------------------------------------
# DATA refused


@pytest.mark.parametrize("client_info", ["none", "xclient", "xforward"])
def test_after_postfix_refuses_data_the_next_transaction_goes_through(sec_daemon, postfix_data_checks,
                                                                      client_info):
    """A refused DATA leaves Postfix's transaction open: the proxy ends it before the next MAIL
    (a nested MAIL gets 503 5.5.1 for good), in the same session, after the client's RSET or
    without one, and on the pooled connection in the next session."""
    d = sec_daemon(postfix_data_checks.url, upstream={"client_info": client_info})
    with d.connect(ehlo="client.test", source="127.0.0.5") as c:
        r = c.transaction("refused@remote.test", ["user@example.test"], BODY)
        assert (r.code, r.status) == (554, "5.7.1") and "Access denied" in r.text, str(r)
        r = c.transaction("sender@remote.test", ["user@example.test"], BODY)  # no RSET between
        assert (r.code, r.status) == (250, "2.0.0") and QUEUED.match(r.lines[0]), str(r)
        r = c.transaction("refused@remote.test", ["user@example.test"], BODY)
        assert r.code == 554, str(r)
        c.exchange("RSET", 250)
        r = c.transaction("sender@remote.test", ["user@example.test"], BODY)
        assert (r.code, r.status) == (250, "2.0.0"), str(r)
        r = c.transaction("refused@remote.test", ["user@example.test"], BODY)  # the last word of the session
        assert r.code == 554, str(r)
        c.exchange("QUIT", 221)
    deliver(d, "127.0.0.5")  # (a pooled connection, if the pool kept it)
    log = postfix_data_checks.log_text()
    assert "nested MAIL" not in log and "transaction in progress" not in log


# --------------------------------------------------------------------------
# Postfix's error limits


@pytest.fixture
def postfix_hard_error_limit():
    """Postfix that refuses one recipient and says 421 after its second error (smtpd_hard_error_limit)."""
    yield from running_postfix({"smtpd_recipient_restrictions":
                                "check_recipient_access inline:{nobody@example.test=REJECT}",
                                "smtpd_hard_error_limit": "2"}, "pf-hard")


def test_a_refusal_with_postfix_s_421_behind_it_reaches_the_client_as_it_is(sec_daemon, postfix_hard_error_limit):
    """At its error limit Postfix writes its refusal and "421 ... too many errors" in one go (RFC 5321
    §3.8 allows a 421 any time): the client hears the 554, not a 451 that would turn a refusal into a
    retry; the connection closes, and the next transaction goes on a new one."""
    pf = postfix_hard_error_limit
    d = sec_daemon(pf.url, upstream={"pool_size": 0})
    with d.connect() as c:
        sid = d.session_of(c.local_port)
        c.exchange("MAIL FROM:<alice@remote.test>", 250)
        c.exchange("RCPT TO:<user@example.test>", 250)
        c.exchange("RCPT TO:<nobody@example.test>", 554, "5.7.1")
        r = c.exchange("RCPT TO:<nobody@example.test>", 554, "5.7.1")
        assert "Recipient address rejected" in r.text, str(r)
        c.exchange("DATA", 451, "4.4.1")  # the upstream closed: this transaction cannot go on
        c.exchange("RSET", 250)
        r = c.transaction("alice@remote.test", ["user@example.test"], BODY)
        assert (r.code, r.status) == (250, "2.0.0") and QUEUED.match(r.lines[0]), str(r)
    d.wait_log(rf"{sid}: upstream: 554 5\.7\.1 .* to RCPT, then closing: 421 4\.7\.0 .*too many errors$")
    assert "unsolicited" not in d.log_text()


@pytest.fixture
def postfix_error_sleep():
    """Postfix that refuses one sender and, past 2 errors on a connection, waits 2 s before each reply."""
    yield from running_postfix({"smtpd_sender_restrictions": "check_sender_access inline:{spam@bad.test=REJECT}",
                                "smtpd_delay_reject": "no", "smtpd_soft_error_limit": "2",
                                "smtpd_hard_error_limit": "5", "smtpd_error_sleep_time": "2s"}, "pf-errs")


@pytest.mark.parametrize("client_info", ["none", "xclient"])
def test_a_kept_connection_carries_no_refusals_to_the_next_client(sec_daemon, postfix_error_sleep, client_info):
    """Postfix counts the errors of a connection until a message is delivered on it (XCLIENT does not
    reset them): a connection that got refusals is not kept, so a client after four refused ones is
    served at once, not delayed for their errors (or, past smtpd_hard_error_limit, sent away)."""
    pf = postfix_error_sleep
    d = sec_daemon(pf.url, upstream={"client_info": client_info})
    for i in range(4):
        with d.connect(ehlo=f"spammer{i}.test") as c:
            sid = d.session_of(c.local_port)
            c.exchange("MAIL FROM:<spam@bad.test>", 554, "5.7.1")
            c.exchange("QUIT", 221)
        d.wait_log(rf"{sid}: disconnect from ")
    with d.connect(ehlo="legit.test") as c:
        t0 = time.monotonic()
        r = c.transaction("alice@remote.test", ["user@example.test"], BODY)
        took = time.monotonic() - t0
        assert (r.code, r.status) == (250, "2.0.0") and QUEUED.match(r.lines[0]), str(r)
    assert took < 1.5, f"the legitimate client waited {took:.1f} s for the refusals of others"


@pytest.fixture
def postfix_short_timeout():
    """Postfix that ends a session idle for 3 s (smtpd_timeout; 300 s by default, 10 s under stress)."""
    yield from running_postfix({"smtpd_timeout": "3s"}, "pf-idle")


@pytest.mark.parametrize("client_info", ["none", "xclient"])
def test_a_client_slower_than_postfix_s_timeout_still_delivers(sec_daemon, postfix_short_timeout, client_info):
    """MAIL and RCPT go upstream as the client sends them; the upstream transaction then waits while
    the client sends its message (5 s here, well within server.data_timeout). Postfix gives up on it
    after smtpd_timeout ("421 4.4.2 ... Error: timeout exceeded"): nothing of the message has gone,
    so the proxy gives the transaction again on a new connection. The message is queued once."""
    pf = postfix_short_timeout
    d = sec_daemon(pf.url, upstream={"client_info": client_info})
    with d.connect(source="127.0.0.5", timeout=30) as c:
        sid = d.session_of(c.local_port, ip="127.0.0.5")
        c.exchange("MAIL FROM:<alice@remote.test>", 250)
        c.exchange("RCPT TO:<user@example.test>", 250)
        c.exchange("DATA", 354)
        for i in range(5):  # a slow link: steady progress, 1 s a line
            c.send(b"X-Line: %d\r\n" % i)
            time.sleep(1)
        c.send(b"Subject: slow\r\n\r\nbody\r\n.\r\n")
        r = c.reply()
        assert (r.code, r.status) == (250, "2.0.0") and QUEUED.match(r.lines[0]), str(r)
        qid = QUEUED.match(r.lines[0]).group(1)
    d.wait_log(rf"{sid}: upstream: closing while the transaction waited for the client: 421 4\.4\.2 .*timeout "
               rf"exceeded$")
    pf.wait_log(rf"postfix/smtpd\[\d+\]: timeout after RCPT from ")
    if client_info == "xclient":
        pf.wait_log(rf"postfix/smtpd\[\d+\]: {qid}: client=unknown\[127\.0\.0\.5\]$")
    pf.wait_log(rf"postfix/qmgr\[\d+\]: {qid}: from=<alice@remote\.test>")
    time.sleep(0.5)
    assert len(re.findall(r"postfix/qmgr\[\d+\]: \w+: from=<alice@remote\.test>", pf.log_text())) == 1  # queued once


@pytest.fixture(scope="module")
def postfix_helo_checks():
    """Postfix that judges the HELO name at once (smtpd_delay_reject = no) and refuses bad.test for
    good, and refuses one recipient (its reject line names the protocol the client spoke)."""
    yield from running_postfix({"smtpd_delay_reject": "no", "smtpd_helo_required": "yes",
                                "smtpd_helo_restrictions": "check_helo_access inline:{bad.test=REJECT}",
                                "smtpd_recipient_restrictions": "check_recipient_access inline:{refused@example.test=REJECT}"},
                               "pf-helo")


def test_postfix_refusing_the_clients_helo_name_after_xclient_is_heard_as_it_is(sec_daemon, postfix_helo_checks):
    """The EHLO after XCLIENT speaks for the client: Postfix's permanent refusal of its name
    reached the client as 451 4.4.1 (it retried for days), after a pointless HELO."""
    d = sec_daemon(postfix_helo_checks.url, upstream={"client_info": "xclient"})
    with d.connect(ehlo="bad.test") as c:
        sid = d.session_of(c.local_port)
        r = c.exchange("MAIL FROM:<sender@remote.test>", 554, "5.7.1")
        assert "Helo command rejected" in r.text, str(r)
    d.wait_log(rf"{sid}: upstream: the client's HELO name refused: 554 5\.7\.1 ")
    deliver(d, "127.0.0.1", helo="good.test")  # another name is served


def test_a_client_that_said_helo_sends_several_messages_on_one_connection(sec_daemon, postfix_tls):
    """The HELO after XCLIENT lists no extensions: they were dropped, and the next MAIL found no
    XCLIENT offered (an error, the connection dropped, a new one)."""
    d = sec_daemon(postfix_tls.url, upstream={"client_info": "xclient"})
    with d.connect(ehlo=None) as c:
        c.exchange("HELO old.client.test", 250)
        for _ in range(3):
            r = c.transaction("sender@remote.test", ["user@example.test"], BODY)
            assert (r.code, r.status) == (250, "2.0.0"), str(r)
        c.exchange("QUIT", 221)
    assert "does not offer XCLIENT" not in d.log_text()


def test_a_client_that_said_helo_is_smtp_to_postfix_after_xclient(sec_daemon, postfix_helo_checks):
    """XCLIENT PROTO=SMTP was overwritten by the proxy's own EHLO after it: Postfix recorded ESMTP."""
    d = sec_daemon(postfix_helo_checks.url, upstream={"client_info": "xclient", "pool_size": 0})
    with d.connect(ehlo=None) as c:
        c.exchange("HELO old.client.test", 250)
        c.exchange("MAIL FROM:<sender@remote.test>", 250)
        c.exchange("RCPT TO:<refused@example.test>", 554)
    postfix_helo_checks.wait_log(r"reject: RCPT from \S+: 554 5\.7\.1 <refused@example\.test>: Recipient address "
                                 r"rejected: Access denied; .*proto=SMTP helo=<old\.client\.test>")


# --------------------------------------------------------------------------
# STARTTLS to the upstream


def test_opportunistic_starttls_to_postfix(sec_daemon, postfix_tls):
    d = sec_daemon(postfix_tls.url, upstream={"starttls": "opportunistic", "client_info": "xclient"})
    before = len(re.findall(r"Anonymous TLS connection established from", postfix_tls.log_text()))
    qid = deliver(d, "127.0.0.5")
    postfix_tls.wait_log(r"Anonymous TLS connection established from \S+\[127\.0\.0\.1\]: TLSv1\.3 with cipher ")
    assert len(re.findall(r"Anonymous TLS connection established from", postfix_tls.log_text())) > before
    # The queued message came in over TLS (Postfix's own Received would say ESMTPS; its log says the
    # session used TLS before XCLIENT).
    postfix_tls.wait_log(rf"{qid}: client=unknown\[127\.0\.0\.5\]$")


def test_required_starttls_to_postfix_with_tls(sec_daemon, postfix_tls):
    d = sec_daemon(postfix_tls.url, upstream={"starttls": "required"})
    deliver(d, "127.0.0.1")


def test_required_starttls_to_postfix_without_tls(sec_daemon, postfix_plain):
    d = sec_daemon(postfix_plain.url, upstream={"starttls": "required"})
    with d.connect() as c:
        sid = d.session_of(c.local_port)
        r = c.exchange("MAIL FROM:<sender@remote.test>", 451, "4.7.5")
        assert r.raw == b"451 4.7.5 Upstream server TLS failure, try again later\r\n"
    d.wait_log(rf"{sid}: upstream: STARTTLS required but not offered$")


def test_opportunistic_without_tls_goes_in_clear(sec_daemon, postfix_plain):
    d = sec_daemon(postfix_plain.url, upstream={"starttls": "opportunistic"})
    qid = deliver(d, "127.0.0.1")
    postfix_plain.wait_log(rf"{qid}: client=localhost\[127\.0\.0\.1\]$|{qid}: client=\S+\[127\.0\.0\.1\]$")


def test_verified_starttls_to_postfix(sec_daemon, postfix_tls):
    d = sec_daemon(postfix_tls.url, upstream={"tls_verify": True, "tls_name": "upstream.test",
                                              "tls_ca_file": str(postfix_tls.dir / "upstream.pem")})
    deliver(d, "127.0.0.1")


def test_tls_verify_never_falls_back_to_clear_text(sec_daemon, postfix_tls, postfix_plain):
    """tls_verify is Postfix's "verify" level: TLS is mandatory. A certificate that fails the
    check, or an upstream (or a man in the middle) that stops offering STARTTLS, got the mail
    in clear with the default starttls = "opportunistic": worse than not verifying at all."""
    for pf, log in ((postfix_tls, r"upstream: TLS handshake with upstream\.test failed: .*certificate verify failed"),
                    (postfix_plain, r"upstream: STARTTLS with tls_verify but not offered$")):
        d = sec_daemon(pf.url, upstream={"tls_verify": True, "tls_name": "upstream.test"})  # (the system's CAs)
        queued_before = len(re.findall(r"from=<sender@remote\.test>", pf.log_text()))
        with d.connect() as c:
            sid = d.session_of(c.local_port)
            r = c.exchange("MAIL FROM:<sender@remote.test>", 451, "4.7.5")
            assert r.text == "Upstream server TLS failure, try again later"
        d.wait_log(rf"{sid}: {log}")
        assert "retrying without TLS" not in d.log_text()
        time.sleep(0.5)  # (Postfix logs a queued message at once)
        assert len(re.findall(r"from=<sender@remote\.test>", pf.log_text())) == queued_before, "it went in clear"


# --------------------------------------------------------------------------
# Clients may not speak for themselves


def test_client_xclient_xforward_never_forwarded(sec_daemon, postfix_tls):
    d = sec_daemon(postfix_tls.url, upstream={"client_info": "xclient"})
    with d.connect(source="127.0.0.5") as c:
        c.exchange("XCLIENT ADDR=127.0.0.1", 502, "5.5.1")
        c.exchange("XFORWARD ADDR=127.0.0.1", 502, "5.5.1")
        c.exchange("MAIL FROM:<sender@remote.test>", 250)
        c.exchange("XCLIENT ADDR=127.0.0.1 NAME=localhost", 502, "5.5.1")
        # Postfix still sees 127.0.0.5, so relaying stays refused.
        c.exchange("RCPT TO:<victim@foreign.test>", 554, "5.7.1")


# --------------------------------------------------------------------------
# The exact XCLIENT / XFORWARD commands (a scripted upstream records them)

FAKE_EHLO = ("250-fake.upstream\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-{ext}\r\n250 SIZE 1000000")


def test_xclient_command_on_the_wire(sec_daemon, fake_upstream, tmp_path):
    up = fake_upstream({"EHLO": FAKE_EHLO.format(ext="XCLIENT NAME ADDR PORT PROTO HELO LOGIN DESTADDR"),
                        "XCLIENT": "220 fake.upstream ESMTP (after XCLIENT)"})
    users = write_users(tmp_path / "users", {"we+ird=user": "Pass-Word-1"})
    d = sec_daemon(up.url, upstream={"client_info": "xclient"},
                   auth={"users_file": str(users), "allow_plaintext": True})
    with d.connect(ehlo="weird=helo+name.test", source="127.0.0.5") as c:
        port = c.local_port
        c.exchange("AUTH PLAIN " + b64("\0we+ird=user\0Pass-Word-1"), 235)
        r = c.transaction("a@example.test", ["b@example.test"], BODY)
        assert r.code == 250
    cmds = up.commands
    assert cmds[0] == "EHLO mx.test"
    # Only attributes the upstream named, xtext-encoded ("+" and "=" as +2B and +3D).
    assert cmds[1] == (f"XCLIENT NAME=[UNAVAILABLE] ADDR=127.0.0.5 PORT={port} PROTO=ESMTP "
                       f"HELO=weird+3Dhelo+2Bname.test LOGIN=we+2Bird+3Duser")
    assert cmds[2].startswith("EHLO ")
    assert cmds[3] == "MAIL FROM:<a@example.test>"


def test_attributes_past_512_octets_go_in_several_commands(sec_daemon, fake_upstream, tmp_path):
    """One line of them all went over SMTP's 512 octets with a long HELO name and login:
    XCLIENT_README asks for several commands, each within the limit; NAME and ADDR last
    (see test_a_client_outside_postfixs_xclient_hosts_may_need_two_commands)."""
    up = fake_upstream({"EHLO": FAKE_EHLO.format(ext="XCLIENT NAME ADDR PORT PROTO HELO LOGIN"),
                        "XCLIENT": "220 fake.upstream ESMTP"})
    login = "u" + "=" * 80
    users = write_users(tmp_path / "users", {login: "Pass-Word-1"})
    d = sec_daemon(up.url, upstream={"client_info": "xclient"},
                   auth={"users_file": str(users), "allow_plaintext": True})
    helo = "=" * 60 + "." + "=" * 20 + ".test"
    with d.connect(ehlo=helo, source="127.0.0.5") as c:
        port = c.local_port
        c.exchange("AUTH PLAIN " + b64(f"\0{login}\0Pass-Word-1"), 235)
        assert c.transaction("a@example.test", ["b@example.test"], BODY).code == 250
    sent = [x for x in up.commands if x.startswith("XCLIENT")]
    encoded_helo = "+3D" * 60 + "." + "+3D" * 20 + ".test"
    assert sent == [f"XCLIENT PORT={port} PROTO=ESMTP HELO={encoded_helo}",
                    "XCLIENT LOGIN=u" + "+3D" * 80 + " NAME=[UNAVAILABLE] ADDR=127.0.0.5"]
    assert all(len(x) + 2 <= 512 for x in sent)


def test_a_client_outside_postfixs_xclient_hosts_may_need_two_commands(sec_daemon, postfix_tls, tmp_path):
    """A long HELO name and a long login take two XCLIENT commands. Postfix holds the second
    to the rights of the client the first named (smtpd_authorized_xclient_hosts): with NAME
    and ADDR in the first, a client behind a load balancer had the second refused, and every
    MAIL of it was 451."""
    login = "u" * 200
    users = write_users(tmp_path / "users", {login: "Pass-Word-1"})
    d = sec_daemon(postfix_tls.url, upstream={"client_info": "xclient", "pool_size": 0},
                   server={"proxy_protocol": True}, auth={"users_file": str(users), "allow_plaintext": True})
    helo = ".".join(["h" * 60] * 4) + ".test"  # 249 octets
    with d.client() as c:
        c.send(b"PROXY TCP4 192.0.2.12 127.0.0.1 45000 25\r\n")
        c.expect(220)
        c.exchange(f"EHLO {helo}", 250)
        c.exchange("AUTH PLAIN " + b64(f"\0{login}\0Pass-Word-1"), 235)
        r = c.transaction("sender@remote.test", ["user@example.test"], BODY)
        assert (r.code, r.status) == (250, "2.0.0"), str(r)
        qid = QUEUED.match(r.lines[0]).group(1)
    postfix_tls.wait_log(rf"{qid}: client=unknown\[192\.0\.2\.12\]$")


@pytest.mark.parametrize("verb", ["XCLIENT", "XFORWARD"])
def test_values_over_255_octets_as_xtext_are_not_sent(sec_daemon, fake_upstream, tmp_path, verb):
    """Postfix refuses the whole command (501 5.5.4 attribute value too long) for one such value:
    every MAIL of the client was 451. A HELO is left out (the EHLO after XCLIENT names the
    client); a LOGIN goes as [UNAVAILABLE], never left out (the last client's would stand)."""
    up = fake_upstream({"EHLO": FAKE_EHLO.format(ext=f"{verb} ADDR HELO LOGIN"),
                        "XCLIENT": "220 fake.upstream ESMTP", "XFORWARD": "250 2.0.0 Ok"})
    login = "u" + "=" * 90
    users = write_users(tmp_path / "users", {login: "Pass-Word-1"})
    d = sec_daemon(up.url, upstream={"client_info": verb.lower()},
                   auth={"users_file": str(users), "allow_plaintext": True})
    helo = ".".join(["=" * 40] * 3) + ".test"  # 126 octets, 368 as xtext
    with d.connect(ehlo=helo, source="127.0.0.5") as c:
        c.exchange("AUTH PLAIN " + b64(f"\0{login}\0Pass-Word-1"), 235)
        assert c.transaction("a@example.test", ["b@example.test"], BODY).code == 250
    sent = [x for x in up.commands if x.startswith(verb)]
    assert sent == [f"{verb} ADDR=127.0.0.5" + (" LOGIN=[UNAVAILABLE]" if verb == "XCLIENT" else "")]
    if verb == "XCLIENT":
        assert up.commands[up.commands.index(sent[0]) + 1] == f"EHLO {helo}"


CLIENT_NAMES = {
    "77.2.0.192.in-addr.arpa": [{"PTR": "mail.client.example.test."}],
    "mail.client.example.test": [{"A": "192.0.2.77"}],
    "78.2.0.192.in-addr.arpa": [{"PTR": "liar.example.test"}],  # its name does not lead back to it
    "liar.example.test": [{"A": "192.0.2.99"}],
    "80.2.0.192.in-addr.arpa": ["TIMEOUT"],
    "81.2.0.192.in-addr.arpa": [{"PTR": "-mail.client.example.test"}],  # no host name: Postfix would refuse it
    "-mail.client.example.test": [{"A": "192.0.2.81"}],
}


@pytest.mark.parametrize("verb", ["XCLIENT", "XFORWARD"])
def test_the_client_s_name_is_its_forward_confirmed_ptr_name(sec_daemon, fake_upstream, verb):
    """NAME was always [UNAVAILABLE] ("the lookup failed for good"): Postfix then refused every
    client under reject_unknown_client_hostname, those with a good reverse name too."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dns"))
    from dns_server import DnsServer

    up = fake_upstream({"EHLO": FAKE_EHLO.format(ext=f"{verb} NAME ADDR"), "XCLIENT": "220 fake.upstream ESMTP",
                        "XFORWARD": "250 2.0.0 Ok"})
    with DnsServer(CLIENT_NAMES) as dns:
        d = sec_daemon(up.url, upstream={"client_info": verb.lower(), "pool_size": 0},
                       server={"proxy_protocol": True}, dns={"nameserver": f"127.0.0.1:{dns.port}", "timeout": 1})
        # (XFORWARD's NAME takes no [TEMPUNAVAIL]: Postfix refuses the command, 501 5.5.4)
        want = {"192.0.2.77": "mail.client.example.test", "192.0.2.78": "[UNAVAILABLE]",
                "192.0.2.79": "[UNAVAILABLE]", "192.0.2.80": "[TEMPUNAVAIL]" if verb == "XCLIENT" else "[UNAVAILABLE]",
                "192.0.2.81": "[UNAVAILABLE]"}
        for source, name in want.items():
            with d.client() as c:
                c.send(f"PROXY TCP4 {source} 127.0.0.1 45000 25\r\n".encode())
                c.expect(220)
                c.exchange("EHLO client.test", 250)
                assert c.transaction("a@example.test", ["b@example.test"], BODY).code == 250
            sent = [cmd for cmd in up.commands if cmd.startswith(verb)]
            assert sent[-1] == f"{verb} NAME={name} ADDR={source}", sent


def test_xclient_only_advertised_attributes(sec_daemon, fake_upstream):
    up = fake_upstream({"EHLO": FAKE_EHLO.format(ext="XCLIENT ADDR HELO"), "XCLIENT": "220 fake.upstream ESMTP"})
    d = sec_daemon(up.url, upstream={"client_info": "xclient"})
    with d.connect(ehlo="c.test", source="127.0.0.5") as c:
        c.exchange("MAIL FROM:<a@example.test>", 250)
    assert up.commands[1] == "XCLIENT ADDR=127.0.0.5 HELO=c.test"


def test_xclient_without_helo_names_each_client_in_the_ehlo_after_it(sec_daemon, fake_upstream):
    """An upstream whose XCLIENT takes no HELO hears the client's name in our EHLO after XCLIENT:
    the next client on the kept connection, from the same address with another name, gets its
    own XCLIENT and EHLO (the same attributes, another name)."""
    up = fake_upstream({"EHLO": FAKE_EHLO.format(ext="XCLIENT ADDR LOGIN"), "XCLIENT": "220 fake.upstream ESMTP"})
    d = sec_daemon(up.url, log_level="debug", upstream={"client_info": "xclient"})
    for name in ("first-client.test", "second-client.test", "second-client.test"):
        with d.connect(ehlo=name, source="127.0.0.5") as c:
            sid = d.session_of(c.local_port, ip="127.0.0.5")
            r = c.transaction("a@example.test", ["b@example.test"], b"Subject: x\r\n\r\nbody")
            assert r.code == 250, str(r)
            c.exchange("QUIT", 221)
        d.wait_log(rf"{sid}: upstream: connection kept for the next session$")
    assert len(up.connections) == 1
    said = [x for x in up.commands if x.startswith(("XCLIENT", "EHLO"))]
    assert said == ["EHLO mx.test", "XCLIENT ADDR=127.0.0.5 LOGIN=[UNAVAILABLE]", "EHLO first-client.test",
                    "XCLIENT ADDR=127.0.0.5 LOGIN=[UNAVAILABLE]", "EHLO second-client.test"]  # the third: nothing new


def test_xclient_refused_by_upstream_fails_closed(sec_daemon, fake_upstream):
    up = fake_upstream({"EHLO": FAKE_EHLO.format(ext="XCLIENT ADDR HELO"),
                        "XCLIENT": "550 5.7.0 insufficient authorization"})
    d = sec_daemon(up.url, upstream={"client_info": "xclient"})
    with d.connect(source="127.0.0.5") as c:
        sid = d.session_of(c.local_port, ip="127.0.0.5")
        c.exchange("MAIL FROM:<a@example.test>", 451, "4.3.0")
    assert not [x for x in up.commands if x.startswith("MAIL")]
    d.wait_log(rf"{sid}: upstream: XCLIENT refused: 550 5\.7\.0 insufficient authorization$")


def test_xforward_command_on_the_wire(sec_daemon, fake_upstream):
    up = fake_upstream({"EHLO": FAKE_EHLO.format(ext="XFORWARD NAME ADDR PROTO HELO SOURCE PORT IDENT"),
                        "XFORWARD": "250 2.0.0 Ok"})
    d = sec_daemon(up.url, upstream={"client_info": "xforward"})
    with d.connect(ehlo="fwd.test", source="127.0.0.5") as c:
        port = c.local_port
        for _ in range(2):
            r = c.transaction("a@example.test", ["b@example.test"], BODY)
            assert r.code == 250
    xf = f"XFORWARD NAME=[UNAVAILABLE] ADDR=127.0.0.5 PORT={port} PROTO=ESMTP HELO=fwd.test"
    cmds = up.commands
    assert [i for i, x in enumerate(cmds) if x.startswith("XFORWARD")] == \
        [i - 1 for i, x in enumerate(cmds) if x.startswith("MAIL")], cmds
    assert [x for x in cmds if x.startswith("XFORWARD")] == [xf, xf]


# --------------------------------------------------------------------------
# Found while running these tests: SIGTERM as clients leave in a transaction


def test_sigterm_as_clients_leave_mid_transaction(sec_daemon, fake_upstream):
    up = fake_upstream()
    for attempt in range(12):
        d = sec_daemon(up.url, server={"shutdown_grace": 2, "max_connections_per_client": 300})
        clients = []
        for _ in range(100):
            c = d.connect()
            c.exchange("MAIL FROM:<sender@remote.test>", 250, "2.1.0")
            clients.append(c)
        # SIGTERM, and every client leaves at that very moment (a session in a transaction is let finish).
        os.kill(d.pid, signal.SIGTERM)
        for c in clients:
            c.sock.close()
        d.proc.wait(timeout=20)
        late = [l for l in d.log_text().splitlines() if "grace period over" in l]
        assert not late, f"attempt {attempt}: sessions whose client had left were still there: {late}"

"""Each verdict's exact reply line at each stage that allows it, through the
built daemon (docs/policy-api.md, "Verdicts"): reject and tempfail with the
policy's own code, status and text (554/421 at connect), accept(text)
replacing the upstream's text, discard and redirect at RCPT, discard at the
end of DATA, and a verdict a stage does not allow giving 451 4.3.0.

The policy is tests/e2e/policies/verdicts.py: the config names the verdict
expression for each stage; at RCPT only the recipient "decided@..." gets it.
"""

from __future__ import annotations

import re

import pytest

from conftest import POLICY_DIR

VERDICTS = POLICY_DIR / "verdicts.py"
POLICY_FAILURE = "Temporary policy failure, try again later"
RECEIVED = re.compile(rb"Received: from \S+ \(\[127\.0\.0\.1\]\)\r\n\tby mx\.test \(Portcullis\) with \w+ id [0-9A-F]{12}\.\d+"
                      rb"(?:\r\n\tfor <[^>]*>)?; [^\r\n]+\r\n")
MESSAGE = b"Subject: verdicts\r\n\r\nbody\r\n"


def exact(r, code: int, status: str, text: str) -> None:
    assert (r.code, r.status, r.text) == (code, status, text), f"got {r}"


def start(policy_daemon, upstream, **verdicts):
    return policy_daemon(upstream.url, VERDICTS, verdicts=verdicts)


def send_message(c, message: bytes = MESSAGE):
    c.exchange("DATA", 354)
    c.send(message + b".\r\n")
    return c.reply()


# -- connect ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "expression,code,status,text",
    [
        ("pc.reject('Go away')", 554, "5.7.1", "Go away"),
        # RFC 5321 §3.1: a refused greeting is 554 whatever the code asked for, but RFC 7504's 521.
        ("pc.reject('No service here', code=521, status='5.3.2')", 521, "5.3.2", "No service here"),
        ("pc.reject('No service here', code=553, status='5.7.1')", 554, "5.7.1", "No service here"),
        ("pc.tempfail('Too busy')", 421, "4.7.1", "Too busy"),
        ("pc.tempfail('Come back later', code=450, status='4.3.2')", 421, "4.3.2", "Come back later"),
    ],
    ids=["reject", "reject-521", "reject-553", "tempfail", "tempfail-450"],
)
def test_connect_refused(policy_daemon, aiosmtpd_upstream, expression, code, status, text):
    d = start(policy_daemon, aiosmtpd_upstream, connect=expression)
    with d.client() as c:
        r = c.reply()
        exact(r, code, status, text)
        assert r.raw == f"{code} {status} {text}\r\n".encode()
        assert c.closed()
    with d.client() as c:  # and again for the next client: nothing is left over
        exact(c.reply(), code, status, text)
    assert aiosmtpd_upstream.handler.sessions == 0


@pytest.mark.parametrize(
    "expression,greeting", [("pc.accept('Welcome, friend')", "mx.test Welcome, friend"),
                            ("pc.accept()", "mx.test ESMTP Portcullis")], ids=["text", "plain"])
def test_connect_accept(policy_daemon, aiosmtpd_upstream, expression, greeting):
    d = start(policy_daemon, aiosmtpd_upstream, connect=expression)
    with d.client() as c:
        r = c.reply()
        assert r.raw == f"220 {greeting}\r\n".encode()
        c.exchange("EHLO client.test", 250)
        exact(c.transaction("a@example.test", ["b@example.test"], b"Subject: hi\r\n\r\nx"), 250, "2.0.0",
              "Ok: queued as AIO00001 (aiosmtpd)")
    aiosmtpd_upstream.wait_messages(1)


# -- helo ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "expression,code,status,text",
    [
        ("pc.reject('Bad HELO', code=504, status='5.5.2')", 504, "5.5.2", "Bad HELO"),
        ("pc.reject('Not you')", 550, "5.7.1", "Not you"),
        ("pc.tempfail('HELO later', code=450, status='4.7.1')", 450, "4.7.1", "HELO later"),
    ],
    ids=["reject-504", "reject", "tempfail"],
)
def test_helo_refused(policy_daemon, aiosmtpd_upstream, expression, code, status, text):
    d = start(policy_daemon, aiosmtpd_upstream, helo=expression)
    with d.connect(ehlo=None) as c:
        for command in ("EHLO client.test", "HELO client.test"):
            c.cmd(command)
            r = c.reply()
            assert r.raw == f"{code} {status} {text}\r\n".encode()
        # The refused name was not taken: still no HELO.
        exact(c.exchange("MAIL FROM:<a@example.test>", 503), 503, "5.5.1", "Send EHLO or HELO first")
    assert aiosmtpd_upstream.handler.mails == []


def test_helo_accept_text_leaves_the_reply_alone(policy_daemon, aiosmtpd_upstream):
    d = start(policy_daemon, aiosmtpd_upstream, helo="pc.accept('Hello there')")
    with d.connect(ehlo=None) as c:
        c.cmd("EHLO client.test")
        assert re.fullmatch(rb"250-mx\.test Hello client\.test \[127\.0\.0\.1\]\r\n250-PIPELINING\r\n"
                            rb"250-SIZE \d+\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 ENHANCEDSTATUSCODES\r\n", c.reply().raw)
        c.cmd("HELO client.test")
        assert c.reply().raw == b"250 mx.test\r\n"


# -- mail ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "expression,code,status,text",
    [
        ("pc.reject('Sender refused', code=553, status='5.1.8')", 553, "5.1.8", "Sender refused"),
        ("pc.reject('Blocked')", 550, "5.7.1", "Blocked"),
        ("pc.tempfail('Greylisted, try again', code=450, status='4.2.0')", 450, "4.2.0", "Greylisted, try again"),
        ("pc.tempfail('Later')", 451, "4.7.1", "Later"),
    ],
    ids=["reject-553", "reject", "tempfail-450", "tempfail"],
)
def test_mail_refused(policy_daemon, aiosmtpd_upstream, expression, code, status, text):
    d = start(policy_daemon, aiosmtpd_upstream, mail=expression)
    with d.connect() as c:
        c.cmd("MAIL FROM:<a@example.test> SIZE=10")
        r = c.reply()
        assert r.raw == f"{code} {status} {text}\r\n".encode()
        # No transaction was started, and nothing went upstream.
        exact(c.exchange("RCPT TO:<b@example.test>", 503), 503, "5.5.1", "Need MAIL before RCPT")
        c.exchange("NOOP", 250, "2.0.0")
    assert aiosmtpd_upstream.handler.mails == []


@pytest.mark.parametrize(
    "expression,text", [("pc.accept('Sender welcome')", "Sender welcome"), ("pc.accept()", "Sender ok (aiosmtpd)")],
    ids=["text", "plain"])
def test_mail_accept(policy_daemon, aiosmtpd_upstream, expression, text):
    d = start(policy_daemon, aiosmtpd_upstream, mail=expression)
    with d.connect() as c:
        c.cmd("MAIL FROM:<a@example.test>")
        assert c.reply().raw == f"250 2.1.0 {text}\r\n".encode()
        c.exchange("RCPT TO:<b@example.test>", 250, "2.1.5")
        exact(send_message(c), 250, "2.0.0", "Ok: queued as AIO00001 (aiosmtpd)")
    [env] = aiosmtpd_upstream.wait_messages(1)
    assert (env["mail_from"], env["rcpt_tos"]) == ("a@example.test", ["b@example.test"])


# -- rcpt ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "expression,code,status,text",
    [
        ("pc.reject('No such user', code=550, status='5.1.1')", 550, "5.1.1", "No such user"),
        ("pc.reject('Relay denied', code=554, status='5.7.1')", 554, "5.7.1", "Relay denied"),
        ("pc.tempfail('Mailbox busy', code=450, status='4.2.1')", 450, "4.2.1", "Mailbox busy"),
        ("pc.tempfail('Over quota, later', code=452, status='4.2.2')", 452, "4.2.2", "Over quota, later"),
    ],
    ids=["reject-550", "reject-554", "tempfail-450", "tempfail-452"],
)
def test_rcpt_refused(policy_daemon, aiosmtpd_upstream, expression, code, status, text):
    d = start(policy_daemon, aiosmtpd_upstream, rcpt=expression)
    with d.connect() as c:
        c.exchange("MAIL FROM:<a@example.test>", 250, "2.1.0")
        c.exchange("RCPT TO:<first@example.test>", 250, "2.1.5")
        c.cmd("RCPT TO:<decided@example.test>")
        assert c.reply().raw == f"{code} {status} {text}\r\n".encode()
        c.exchange("RCPT TO:<last@example.test>", 250, "2.1.5")
        exact(send_message(c), 250, "2.0.0", "Ok: queued as AIO00001 (aiosmtpd)")
    [env] = aiosmtpd_upstream.wait_messages(1)
    assert env["rcpt_tos"] == ["first@example.test", "last@example.test"]
    assert [a for a, _ in aiosmtpd_upstream.handler.rcpts] == ["first@example.test", "last@example.test"]


@pytest.mark.parametrize(
    "expression,text", [("pc.accept('Recipient welcome')", "Recipient welcome"),
                        ("pc.accept()", "Recipient ok (aiosmtpd)")], ids=["text", "plain"])
def test_rcpt_accept(policy_daemon, aiosmtpd_upstream, expression, text):
    d = start(policy_daemon, aiosmtpd_upstream, rcpt=expression)
    with d.connect() as c:
        c.exchange("MAIL FROM:<a@example.test>", 250, "2.1.0")
        c.cmd("RCPT TO:<decided@example.test>")
        assert c.reply().raw == f"250 2.1.5 {text}\r\n".encode()
        c.cmd("RCPT TO:<other@example.test>")
        assert c.reply().raw == b"250 2.1.5 Recipient ok (aiosmtpd)\r\n"
        exact(send_message(c), 250, "2.0.0", "Ok: queued as AIO00001 (aiosmtpd)")
    [env] = aiosmtpd_upstream.wait_messages(1)
    assert env["rcpt_tos"] == ["decided@example.test", "other@example.test"]


def test_rcpt_discard(policy_daemon, aiosmtpd_upstream):
    d = start(policy_daemon, aiosmtpd_upstream, rcpt="pc.discard()")
    with d.connect() as c:
        sid = d.session_id(c.local_port)
        c.exchange("MAIL FROM:<a@example.test>", 250, "2.1.0")
        c.exchange("RCPT TO:<first@example.test>", 250, "2.1.5")
        c.cmd("RCPT TO:<decided@example.test>")
        assert c.reply().raw == b"250 2.1.5 Ok\r\n"
        c.exchange("RCPT TO:<last@example.test>", 250, "2.1.5")
        exact(send_message(c), 250, "2.0.0", "Ok: queued as AIO00001 (aiosmtpd)")
    [env] = aiosmtpd_upstream.wait_messages(1)
    assert env["rcpt_tos"] == ["first@example.test", "last@example.test"]
    # The upstream never heard of the discarded recipient.
    assert [a for a, _ in aiosmtpd_upstream.handler.rcpts] == ["first@example.test", "last@example.test"]
    assert b"decided@" not in env["content"]
    d.wait_log(rf"{sid}: RCPT TO:<decided@example\.test> discarded by policy$")


def test_rcpt_discard_of_every_recipient_delivers_nothing(policy_daemon, aiosmtpd_upstream):
    d = start(policy_daemon, aiosmtpd_upstream, rcpt="pc.discard()")
    with d.connect() as c:
        c.exchange("MAIL FROM:<a@example.test>", 250, "2.1.0")
        c.cmd("RCPT TO:<decided@example.test>")
        assert c.reply().raw == b"250 2.1.5 Ok\r\n"
        exact(send_message(c), 250, "2.0.0", "Ok: discarded")
        # The session goes on normally.
        exact(c.transaction("a@example.test", ["other@example.test"], b"Subject: next\r\n\r\nx"), 250, "2.0.0",
              "Ok: queued as AIO00001 (aiosmtpd)")
    [env] = aiosmtpd_upstream.wait_messages(1)
    assert env["rcpt_tos"] == ["other@example.test"]
    assert "decided@example.test" not in [a for a, _ in aiosmtpd_upstream.handler.rcpts]


def test_rcpt_redirect_delivers_to_the_targets_instead(policy_daemon, aiosmtpd_upstream):
    d = start(policy_daemon, aiosmtpd_upstream, rcpt="pc.redirect('t1@example.test', 't2@other.test')")
    with d.connect() as c:
        sid = d.session_id(c.local_port)
        c.exchange("MAIL FROM:<a@example.test>", 250, "2.1.0")
        c.exchange("RCPT TO:<first@example.test>", 250, "2.1.5")
        c.exchange("RCPT TO:<decided@example.test>", 250, "2.1.5")
        c.exchange("RCPT TO:<last@example.test>", 250, "2.1.5")
        exact(send_message(c), 250, "2.0.0", "Ok: queued as AIO00001 (aiosmtpd)")
    [env] = aiosmtpd_upstream.wait_messages(1)
    assert env["rcpt_tos"] == ["first@example.test", "t1@example.test", "t2@other.test", "last@example.test"]
    # The upstream saw exactly the targets, never the redirected recipient.
    assert [a for a, _ in aiosmtpd_upstream.handler.rcpts] == env["rcpt_tos"]
    d.wait_log(rf"{sid}: RCPT TO:<decided@example\.test> redirected by policy$")


def test_rcpt_redirect_reply_is_ok(policy_daemon, aiosmtpd_upstream):
    """docs/policy-api.md, Verdicts: redirect -> the client gets `250 2.1.5 Ok`."""
    d = start(policy_daemon, aiosmtpd_upstream, rcpt="pc.redirect('t1@example.test')")
    with d.connect() as c:
        c.exchange("MAIL FROM:<a@example.test>", 250, "2.1.0")
        c.cmd("RCPT TO:<decided@example.test>")
        assert c.reply().raw == b"250 2.1.5 Ok\r\n"


def test_rcpt_redirect_to_a_recipient_already_there_delivers_once(policy_daemon, aiosmtpd_upstream):
    d = start(policy_daemon, aiosmtpd_upstream, rcpt="pc.redirect('first@example.test', 'new@example.test')")
    with d.connect() as c:
        c.exchange("MAIL FROM:<a@example.test>", 250, "2.1.0")
        c.exchange("RCPT TO:<first@example.test>", 250, "2.1.5")
        c.exchange("RCPT TO:<decided@example.test>", 250, "2.1.5")
        exact(send_message(c), 250, "2.0.0", "Ok: queued as AIO00001 (aiosmtpd)")
    [env] = aiosmtpd_upstream.wait_messages(1)
    assert env["rcpt_tos"] == ["first@example.test", "new@example.test"]
    assert [a for a, _ in aiosmtpd_upstream.handler.rcpts] == ["first@example.test", "new@example.test"]


# -- data ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "expression,code,status,text",
    [
        ("pc.reject('Spam refused', code=554, status='5.7.0')", 554, "5.7.0", "Spam refused"),
        ("pc.reject('Virus found: EICAR')", 550, "5.7.1", "Virus found: EICAR"),
        ("pc.tempfail('Scanner busy')", 451, "4.7.1", "Scanner busy"),
        ("pc.tempfail('Try later', code=452, status='4.3.1')", 452, "4.3.1", "Try later"),
    ],
    ids=["reject-554", "reject", "tempfail", "tempfail-452"],
)
def test_data_refused(policy_daemon, aiosmtpd_upstream, expression, code, status, text):
    d = start(policy_daemon, aiosmtpd_upstream, data=expression)
    with d.connect() as c:
        sid = d.session_id(c.local_port)
        c.exchange("MAIL FROM:<a@example.test>", 250, "2.1.0")
        c.exchange("RCPT TO:<b@example.test>", 250, "2.1.5")
        r = send_message(c)
        assert r.raw == f"{code} {status} {text}\r\n".encode()
        # The transaction is over: a new one may start.
        c.exchange("MAIL FROM:<a@example.test>", 250, "2.1.0")
        c.exchange("QUIT", 221)
    verdict, kind = ("rejected", "reject") if code >= 500 else ("tempfail", "tempfail")
    d.wait_log(rf"{sid}: tx={sid}\.1 .* upstream=\"{code} {status} {re.escape(text)}\" queue_id=\S* verdict={verdict} "
               rf"policy=\"data {kind} by {re.escape(str(d.policy_files[0]))}\"$")
    assert aiosmtpd_upstream.envelopes == [] and aiosmtpd_upstream.handler.n == 0


@pytest.mark.parametrize(
    "expression,text", [("pc.accept('Queued by policy')", "Queued by policy"),
                        ("pc.accept()", "Ok: queued as AIO00001 (aiosmtpd)")], ids=["text", "plain"])
def test_data_accept(policy_daemon, aiosmtpd_upstream, expression, text):
    d = start(policy_daemon, aiosmtpd_upstream, data=expression)
    with d.connect() as c:
        c.exchange("MAIL FROM:<a@example.test>", 250, "2.1.0")
        c.exchange("RCPT TO:<b@example.test>", 250, "2.1.5")
        assert send_message(c).raw == f"250 2.0.0 {text}\r\n".encode()
    [env] = aiosmtpd_upstream.wait_messages(1)
    assert RECEIVED.sub(b"", env["content"], count=1) == MESSAGE


def test_data_accept_text_does_not_hide_an_upstream_refusal(policy_daemon, fake_upstream):
    up = fake_upstream({"DOT": "554 5.6.0 Content refused (fake)"})
    d = policy_daemon(up.url, VERDICTS, verdicts={"data": "pc.accept('All good')", "rcpt": "pc.accept('Fine')"})
    with d.connect() as c:
        c.exchange("MAIL FROM:<a@example.test>", 250, "2.1.0")
        c.cmd("RCPT TO:<decided@example.test>")
        assert c.reply().raw == b"250 2.1.5 Fine\r\n"
        assert send_message(c).raw == b"554 5.6.0 Content refused (fake)\r\n"


def test_data_discard(policy_daemon, aiosmtpd_upstream):
    d = start(policy_daemon, aiosmtpd_upstream, data="pc.discard()")
    with d.connect() as c:
        sid = d.session_id(c.local_port)
        c.exchange("MAIL FROM:<a@example.test>", 250, "2.1.0")
        c.exchange("RCPT TO:<b@example.test>", 250, "2.1.5")
        c.exchange("RCPT TO:<c@example.test>", 250, "2.1.5")
        assert send_message(c).raw == b"250 2.0.0 Ok: discarded\r\n"
        c.exchange("QUIT", 221)
    d.wait_log(rf"{sid}: message discarded by policy$")
    d.wait_log(rf"{sid}: disconnect from")
    assert aiosmtpd_upstream.envelopes == [] and aiosmtpd_upstream.handler.n == 0


# -- verdicts a stage does not allow ------------------------------------------------


@pytest.mark.parametrize(
    "stage,expression,complaint",
    [
        ("helo", "pc.discard()", "returned discard(), which only on_rcpt and on_data may return"),
        ("helo", "pc.redirect('x@example.test')", "returned redirect('x@example.test'), which only on_rcpt may return"),
        ("mail", "pc.discard()", "returned discard(), which only on_rcpt and on_data may return"),
        ("mail", "pc.redirect('x@example.test')", "returned redirect('x@example.test'), which only on_rcpt may return"),
        ("data", "pc.redirect('x@example.test')", "returned redirect('x@example.test'), which only on_rcpt may return"),
        ("mail", "'yes'", "returned 'yes'; it must return None or a verdict"),
        ("rcpt", "True", "returned True; it must return None or a verdict"),
        ("data", "250", "returned 250; it must return None or a verdict"),
    ],
    ids=["helo-discard", "helo-redirect", "mail-discard", "mail-redirect", "data-redirect", "mail-str", "rcpt-bool",
         "data-int"],
)
def test_verdict_not_allowed_at_the_stage(policy_daemon, aiosmtpd_upstream, stage, expression, complaint):
    d = start(policy_daemon, aiosmtpd_upstream, **{stage: expression})
    with d.connect(ehlo=None) as c:
        sid = d.session_id(c.local_port)
        c.cmd("EHLO client.test")
        r = c.reply()
        if stage == "helo":
            exact(r, 451, "4.3.0", POLICY_FAILURE)
            c.exchange("HELO client.test", 451, "4.3.0")
        else:
            assert r.code == 250
            c.cmd("MAIL FROM:<a@example.test>")
            r = c.reply()
            if stage == "mail":
                exact(r, 451, "4.3.0", POLICY_FAILURE)
            else:
                c.cmd("RCPT TO:<decided@example.test>")
                r = c.reply()
                if stage == "rcpt":
                    exact(r, 451, "4.3.0", POLICY_FAILURE)
                else:
                    exact(send_message(c), 451, "4.3.0", POLICY_FAILURE)
        c.exchange("NOOP", 250, "2.0.0")  # the session lives on
    d.wait_log(rf"^\S+ error {sid}: on_{stage} in {re.escape(str(VERDICTS))} {re.escape(complaint)}")
    assert aiosmtpd_upstream.envelopes == []


@pytest.mark.parametrize("expression", ["pc.discard()", "pc.redirect('x@example.test')", "42"])
def test_verdict_not_allowed_at_connect(policy_daemon, aiosmtpd_upstream, expression):
    d = start(policy_daemon, aiosmtpd_upstream, connect=expression)
    with d.client() as c:
        assert c.reply().raw == f"421 4.3.0 {POLICY_FAILURE}\r\n".encode()
        assert c.closed()


def test_rcpt_redirect_to_a_recipient_in_another_domain_case_delivers_once(policy_daemon, aiosmtpd_upstream):
    d = start(policy_daemon, aiosmtpd_upstream, rcpt="pc.redirect('first@EXAMPLE.test')")
    with d.connect() as c:
        c.exchange("MAIL FROM:<a@example.test>", 250, "2.1.0")
        c.exchange("RCPT TO:<first@example.test>", 250, "2.1.5")
        c.exchange("RCPT TO:<decided@example.test>", 250, "2.1.5")
        exact(send_message(c), 250, "2.0.0", "Ok: queued as AIO00001 (aiosmtpd)")
    [env] = aiosmtpd_upstream.wait_messages(1)
    assert [r.lower() for r in env["rcpt_tos"]] == ["first@example.test"]


def test_rcpt_redirect_with_a_target_the_upstream_refuses(policy_daemon, fake_upstream):
    """The client gets the upstream's refusal; the target the upstream took is
    not delivered either (the envelope is redone before DATA)."""
    up = fake_upstream({"RCPT t2@other.test": "550 5.1.1 No t2 here (fake)"})
    d = policy_daemon(up.url, VERDICTS, verdicts={"rcpt": "pc.redirect('t1@example.test', 't2@other.test')"})
    with d.connect() as c:
        c.exchange("MAIL FROM:<a@example.test>", 250, "2.1.0")
        c.exchange("RCPT TO:<first@example.test>", 250, "2.1.5")
        c.cmd("RCPT TO:<decided@example.test>")
        assert c.reply().raw == b"550 5.1.1 No t2 here (fake)\r\n"
        r = send_message(c)
        assert (r.code, r.status) == (250, "2.0.0"), r
        c.exchange("QUIT", 221)
    [m] = up.messages
    assert (m.mail_from, m.rcpt_tos) == ("a@example.test", ["first@example.test"])

"""The transaction's summary line (issue 11): one per transaction, however it
ends, naming each verdict a policy gave with the policy file whose hook gave
it (`policy="..."`, last), in text and in JSON."""

from __future__ import annotations

import json
import re

ROUTER = """
    import portcullis as pc

    def on_rcpt(tx, rcpt):
        if rcpt.local == "alias":
            return pc.redirect("one@example.test", "two@example.test")
        if rcpt.local == "nobody":
            return pc.reject("No such user", code=550, status="5.1.1")
        if rcpt.local == "busy":
            return pc.tempfail("Mailbox busy")
"""

FILTER = """
    import portcullis as pc

    def on_data(tx, message):
        if "discard me" in (message.get("Subject") or ""):
            return pc.discard()
        if "break me" in (message.get("Subject") or ""):
            raise RuntimeError("the filter broke")
"""


def summaries(d, sid: str) -> list[str]:
    return [l for l in d.log_text().splitlines() if f"{sid}: tx={sid}." in l]


def test_each_verdict_is_named_with_the_policy_file_that_gave_it(policy_daemon, aiosmtpd_upstream):
    d = policy_daemon(aiosmtpd_upstream.url, ROUTER, FILTER)
    router, filter_ = (str(p) for p in d.policy_files)
    with d.connect() as c:
        sid = d.session_id(c.local_port)
        c.exchange("MAIL FROM:<ann@example.test>", 250)
        c.exchange("RCPT TO:<alias@example.test>", 250)
        c.exchange("RCPT TO:<nobody@example.test>", 550, "5.1.1")
        c.exchange("RCPT TO:<plain@example.test>", 250)
        c.exchange("DATA", 354)
        c.send(b"Subject: discard me\r\n\r\nbody\r\n.\r\n")
        assert c.reply().code == 250
        c.exchange("QUIT", 221)
    d.wait_log(rf"{sid}: tx={sid}\.1 .* verdict=discarded policy=")
    (line,) = summaries(d, sid)
    assert line.endswith(
        f'verdict=discarded policy="rcpt <alias@example.test> redirect by {router}; '
        f'rcpt <nobody@example.test> reject by {router}; data discard by {filter_}"'), line
    # The refusal's own line names the file too.
    d.wait_log(rf"{sid}: RCPT TO:<nobody@example\.test> refused by policy \({re.escape(router)}\): 550 5\.1\.1")


def test_a_failed_hook_is_named_and_no_policy_no_field(policy_daemon, aiosmtpd_upstream):
    d = policy_daemon(aiosmtpd_upstream.url, FILTER)
    (filter_,) = (str(p) for p in d.policy_files)
    with d.connect() as c:
        sid = d.session_id(c.local_port)
        r = c.transaction("ann@example.test", ["bob@example.test"], b"Subject: break me\r\n\r\nbody")
        assert (r.code, r.status) == (451, "4.3.0"), r
        r = c.transaction("ann@example.test", ["bob@example.test"], b"Subject: fine\r\n\r\nbody")
        assert r.code == 250, r
        c.exchange("QUIT", 221)
    d.wait_log(rf"{sid}: tx={sid}\.2 .* verdict=delivered$")
    first, second = summaries(d, sid)
    assert first.endswith(f'verdict=tempfail policy="data error by {filter_}"'), first
    assert second.endswith("verdict=delivered"), second  # no hook said anything: no policy field


def test_a_transaction_that_ends_before_data_has_its_summary_too(policy_daemon, aiosmtpd_upstream):
    d = policy_daemon(aiosmtpd_upstream.url, ROUTER)
    (router,) = (str(p) for p in d.policy_files)
    with d.connect() as c:
        sid = d.session_id(c.local_port)
        # Every RCPT refused, one of them for now: tempfail, then RSET.
        c.exchange("MAIL FROM:<ann@example.test>", 250)
        c.exchange("RCPT TO:<busy@example.test>", 451)
        c.exchange("RCPT TO:<nobody@example.test>", 550)
        c.exchange("RSET", 250)
        # Every RCPT refused for good, then QUIT.
        c.exchange("MAIL FROM:<ann@example.test>", 250)
        c.exchange("RCPT TO:<nobody@example.test>", 550)
        c.exchange("QUIT", 221)
    d.wait_log(rf"{sid}: tx={sid}\.2 ")
    first, second = summaries(d, sid)
    assert re.search(r" to= rejected_rcpts=2 size=0 upstream=\"\" queue_id=- verdict=tempfail "
                     rf'policy="rcpt <busy@example.test> tempfail by {re.escape(router)}; '
                     rf'rcpt <nobody@example.test> reject by {re.escape(router)}"$', first), first
    assert second.endswith(f'verdict=rejected policy="rcpt <nobody@example.test> reject by {router}"'), second
    # A transaction given up with recipients accepted: abandoned.
    with d.connect() as c:
        sid = d.session_id(c.local_port)
        c.exchange("MAIL FROM:<ann@example.test>", 250)
        c.exchange("RCPT TO:<plain@example.test>", 250)
        c.exchange("QUIT", 221)
    d.wait_log(rf"{sid}: tx={sid}\.1 .* to=<plain@example\.test> .* verdict=abandoned$")
    assert aiosmtpd_upstream.envelopes == []


def test_the_policy_field_in_json(policy_daemon, aiosmtpd_upstream):
    d = policy_daemon(aiosmtpd_upstream.url, ROUTER, FILTER, log={"format": "json"})
    router = str(d.policy_files[0])
    with d.connect() as c:
        r = c.transaction("ann@example.test", ["alias@example.test"], b"Subject: hello\r\n\r\nbody")
        assert r.code == 250, r
        c.exchange("QUIT", 221)
    d.wait_log(r'"verdict":"delivered"')
    (s,) = [r for r in map(json.loads, d.log_text().splitlines()) if r.get("verdict") == "delivered"]
    assert s["policy"] == f"rcpt <alias@example.test> redirect by {router}"
    assert s["to"] == "<one@example.test>,<two@example.test>"


def test_the_verdicts_noted_are_bounded(policy_daemon, aiosmtpd_upstream):
    """Refused RCPTs are bounded by server.max_errors (up to 1000), not server.max_recipients: the
    summary notes 50 verdicts, then '...'."""
    d = policy_daemon(aiosmtpd_upstream.url, ROUTER, server={"max_errors": 100})
    with d.connect() as c:
        sid = d.session_id(c.local_port)
        c.exchange("MAIL FROM:<ann@example.test>", 250)
        for _ in range(60):
            c.exchange("RCPT TO:<nobody@example.test>", 550)
        c.exchange("QUIT", 221)
    d.wait_log(rf"{sid}: tx={sid}\.1 .* verdict=rejected ")
    (line,) = summaries(d, sid)
    said = line.split(' policy="', 1)[1]
    # At most 50 noted, and the field at most 4,000 characters (then "..."): it still closes.
    assert said.endswith('..."') and len(said) <= 4000 + len('..."'), said
    assert 20 <= said.count("rcpt <nobody@example.test> reject by ") <= 50, said


def test_every_refused_rcpt_counts_in_rejected_rcpts(start_daemon, aiosmtpd_upstream):
    """Only refusals by a policy or the upstream were counted: the relay guard's 554 (the most
    common refusal of an MX), a bad address's 501 and a limit's 452 left rejected_rcpts=0."""
    d = start_daemon(aiosmtpd_upstream.url, server={"max_recipients": 2},
                     relay={"local_domains": ["example.test"]})
    with d.connect() as c:
        sid = d.session_id(c.local_port)
        c.exchange("MAIL FROM:<ann@example.org>", 250)
        c.exchange("RCPT TO:<someone@elsewhere.example>", 554, "5.7.1")
        c.exchange("RCPT TO:<bad address@example.test>", 501)
        c.exchange("RCPT TO:<one@example.test>", 250)
        c.exchange("RCPT TO:<two@example.test>", 250)
        r = c.exchange("RCPT TO:<three@example.test>", 452)
        c.exchange("DATA", 354)
        c.send(b"Subject: counted\r\n\r\nbody\r\n.\r\n")
        assert c.reply().code == 250
        c.exchange("QUIT", 221)
    d.wait_log(rf"{sid}: tx={sid}\.1 .* rejected_rcpts=3 .* verdict=delivered$")

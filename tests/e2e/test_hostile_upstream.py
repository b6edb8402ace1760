"""A hostile (or broken) upstream, scripted with the fake upstream: replies
that do not fit the command they answer (RFC 5321 §4.3.2), bytes sent while
nothing is owed (the proxy relays in lock step, one command at a time),
reply lines over 512 octets (§4.5.3.1.5) and 8-bit or control characters in
reply text (§4.2).

In every row the client
- never gets a 250 for mail the upstream did not take, and gets one when it did
  (nothing lost, nothing doubled);
- never gets a 354 except as the answer to its own DATA;
- gets 451 4.3.0 at the step where the upstream went out of step;
- never gets a reply line over 512 octets or outside printable US-ASCII;
and the next transaction, in the same session and in a new one, works on a
fresh upstream connection."""

from __future__ import annotations

import re
import time

import pytest

from conftest import wait_until
from fake_upstream import DEFAULTS
from sec_helpers import make_cert
from tls_fake_upstream import TlsFakeUpstream

R1, R2 = "r1@example.test", "r2@example.test"
FAILING_BODY = b"Subject: under test\r\n\r\nFAILING-TX"
MAX_LINE = 512  # RFC 5321 §4.5.3.1.5, CRLF included
CUT = 500  # the longest text a line with a 5-character status keeps: 512 - "ddd-" - "x.y.z " - CRLF
NONSENSE = (451, "4.3.0")

LONG = "x" * 600
EHLO_PLUS = DEFAULTS["EHLO"] + "\r\n354 surprise"


# (id, script, the step that gets 451 4.3.0 or None, what the client gets there
#  otherwise, the log line, the upstream connection is dropped, pause after RCPT)
# Steps: MAIL, RCPT1, RCPT2, DATA (the proxy's own 354), DOT (the message's final reply).
CASES = [
    # Replies out of place.
    ("extra-354-after-rcpt", {f"RCPT {R1}": ["250 2.1.5 ok\r\n354 go ahead"]}, "RCPT1", None,
     r"upstream: unsolicited data after the reply to RCPT", True, 0),
    ("extra-354-after-rcpt-later-segment", {f"RCPT {R2}": [{"send": "250 2.1.5 ok", "then": "354 go ahead",
                                                             "delay": 0.1}]}, "DOT", None,
     r"upstream: unsolicited data from the upstream before DATA", True, 0.5),
    ("354-to-mail", {"MAIL": ["354 go ahead"]}, "MAIL", None,
     r"upstream: a 354 reply does not answer MAIL \(RFC 5321 §4\.3\.2\): 354 go ahead", True, 0),
    ("221-to-rcpt", {f"RCPT {R2}": ["221 2.0.0 bye"]}, "RCPT2", None,
     r"upstream: a 221 reply does not answer RCPT", True, 0),
    ("251-to-mail", {"MAIL": ["251 2.1.0 ok"]}, "MAIL", None, r"upstream: a 251 reply does not answer MAIL", True, 0),
    ("354-to-the-dot", {"DOT": ["354 go ahead again"]}, "DOT", None,
     r"upstream: a 354 reply does not answer end of data", True, 0),
    ("250-to-data", {"DATA": ["250 2.0.0 what"]}, "DOT", None, r"upstream: a 250 reply does not answer DATA", True, 0),
    ("220-to-ehlo", {"EHLO": ["220 fake.upstream again"]}, "MAIL", None,
     r"upstream: a 220 reply does not answer EHLO", True, 0),
    ("greeting-250", {"GREETING": ["250 fake.upstream"]}, "MAIL", None,
     r"upstream: a 250 reply does not answer greeting", True, 0),
    # 1xx: no such reply in SMTP (§4.2.1).
    ("1xx-to-rcpt", {f"RCPT {R1}": ["150 wait"]}, "RCPT1", None, r"upstream: malformed reply to RCPT: 150 wait", True, 0),
    ("1xx-to-data", {"DATA": ["150 go"]}, "DOT", None, r"upstream: malformed reply to DATA: 150 go", True, 0),
    ("1xx-then-250-to-the-dot", {"DOT": ["150 working\r\n250 2.0.0 Ok"]}, "DOT", None,
     r"upstream: malformed reply to end of data: 150 working", True, 0),
    # Garbage continuation and code changes inside a reply.
    ("garbage-continuation", {f"RCPT {R1}": ["250-2.1.5 ok\r\ngarbage"]}, "RCPT1", None,
     r"upstream: malformed reply to RCPT: garbage", True, 0),
    # (A code change makes the last line's code the reply's: here one out of place.)
    ("code-change-in-continuation", {"MAIL": ["250-2.1.0 ok\r\n354 go"]}, "MAIL", None,
     r"upstream: a 354 reply does not answer MAIL", True, 0),
    # Unsolicited bytes after a complete reply.
    ("unsolicited-after-greeting", {"GREETING": ["220 fake.upstream ESMTP\r\n250 2.1.0 early"]}, "MAIL", None,
     r"upstream: unsolicited data after the reply to greeting", True, 0),
    ("unsolicited-after-ehlo", {"EHLO": [EHLO_PLUS]}, "MAIL", None,
     r"upstream: unsolicited data after the reply to EHLO", True, 0),
    ("unsolicited-after-mail", {"MAIL": ["250 2.1.0 ok\r\n250 2.1.5 in advance"]}, "MAIL", None,
     r"upstream: unsolicited data after the reply to MAIL", True, 0),
    ("unsolicited-after-data", {"DATA": ["354 go\r\n354 again"]}, "DOT", None,
     r"upstream: unsolicited data after the reply to DATA", True, 0),
    ("unsolicited-after-rcpt-bytes", {f"RCPT {R2}": [b"250 2.1.5 ok\r\nxyz"]}, "RCPT2", None,
     r"upstream: unsolicited data after the reply to RCPT", True, 0),
    # A refusal, then one whole 421 in the same write (Postfix at smtpd_hard_error_limit; RFC 5321
    # §3.8): the client hears the refusal, a 5xx as a 5xx, and the connection closes. Anything else
    # behind a reply stays out of step.
    ("refusal-then-421", {f"RCPT {R2}": [
        "550 5.1.1 no such user\r\n421 4.7.0 fake.upstream Error: too many errors|close"]}, None,
     {"RCPT2": (550, "5.1.1", "no such user"), "DATA": (451, "4.4.1", "Upstream connection lost, try again later")},
     r"upstream: 550 5\.1\.1 no such user to RCPT, then closing: 421 4\.7\.0 fake\.upstream Error: too many errors$",
     True, 0),
    ("refusal-then-multiline-421", {"MAIL": [
        "554 5.7.1 sender refused\r\n421-4.7.0 fake.upstream\r\n421 4.7.0 Error: too many errors|close"]}, None,
     {"MAIL": (554, "5.7.1", "sender refused")},
     r"upstream: 554 5\.7\.1 sender refused to MAIL, then closing: 421 4\.7\.0 fake\.upstream / Error: too many "
     r"errors$", True, 0),
    ("refusal-then-421-then-more", {f"RCPT {R2}": ["550 5.1.1 no\r\n421 4.7.0 bye\r\n250 2.1.5 more"]}, "RCPT2", None,
     r"upstream: unsolicited data after the reply to RCPT", True, 0),
    ("refusal-then-half-a-421", {f"RCPT {R2}": [b"550 5.1.1 no\r\n421 4.7.0 by"]}, "RCPT2", None,
     r"upstream: unsolicited data after the reply to RCPT", True, 0),
    ("refusal-then-another-refusal", {f"RCPT {R2}": ["550 5.1.1 no\r\n550 5.1.1 no again"]}, "RCPT2", None,
     r"upstream: unsolicited data after the reply to RCPT", True, 0),
    ("success-then-421", {"MAIL": ["250 2.1.0 ok\r\n421 4.7.0 bye"]}, "MAIL", None,
     r"upstream: unsolicited data after the reply to MAIL", True, 0),
    # After the dot's 250 the message is the upstream's: the client hears the
    # 250 (a 451 would make it send the message twice); the connection goes.
    ("unsolicited-after-the-dots-250", {"DOT": ["250 2.0.0 Ok: queued as Q1\r\n250 2.0.0 again"]}, None,
     {"DOT": (250, "2.0.0", "Ok: queued as Q1")},
     r"upstream: unsolicited data after the 250 to end of data \(the message is queued upstream\)", True, 0),
    # A reply to the dot that goes wrong after its first line said 250: the message is queued
    # upstream, so the client hears that first line (a 451 would make it send the message again).
    ("over-4096-octet-250-to-the-dot", {"DOT": ["250 2.0.0 Ok: queued as LONG1 " + "x" * 5000]}, None,
     {"DOT": (250, "2.0.0", ("Ok: queued as LONG1 " + "x" * 5000)[:CUT])},
     r"upstream: over-long reply line after the 250 to end of data \(the message is queued upstream\): the client "
     r"gets its first line, 250 2\.0\.0 Ok: queued as LONG1 x+(\.\.\.)?; dropping the connection", True, 0),
    ("120-line-250-to-the-dot", {"DOT": ["\r\n".join(["250-2.0.0 line"] * 120 + ["250 2.0.0 Ok: queued as MANY1"])]},
     None, {"DOT": (250, "2.0.0", "line")},
     r"upstream: more than 100 reply lines after the 250 to end of data \(the message is queued upstream\)", True, 0),
    ("garbage-after-a-250-line-to-the-dot", {"DOT": ["250-2.0.0 Ok: queued as G1\r\ngarbage"]}, None,
     {"DOT": (250, "2.0.0", "Ok: queued as G1")},
     r"upstream: malformed reply line garbage after the 250 to end of data", True, 0),
    ("lost-after-a-250-line-to-the-dot", {"DOT": ["250-2.0.0 Ok: queued as C1|close"]}, None,
     {"DOT": (250, "2.0.0", "Ok: queued as C1")},
     r"upstream: connection lost in the reply after the 250 to end of data", True, 0),
    # ... but not one that never said 250.
    ("over-4096-octet-554-to-the-dot", {"DOT": ["554 5.7.1 " + "x" * 5000]}, "DOT", None,
     r"upstream: over-long reply line to end of data", True, 0),
    ("over-4096-octet-250-to-rcpt", {f"RCPT {R1}": ["250 2.1.5 " + "x" * 5000]}, "RCPT1", None,
     r"upstream: over-long reply line to RCPT", True, 0),
    # Over-long lines and 8-bit or control characters: the reply stands, its text is made fit.
    ("600-octet-rcpt-reply", {f"RCPT {R1}": ["250 2.1.5 " + LONG]}, None, {"RCPT1": (250, "2.1.5", "x" * CUT)},
     None, False, 0),
    ("600-octet-multiline-refusal", {"DOT": ["554-5.7.1 " + LONG + "\r\n554 5.7.1 " + "y" * 700]}, None,
     {"DOT": (554, "5.7.1", "x" * CUT)}, None, False, 0),
    ("600-octet-reply-without-status", {"MAIL": ["250 " + LONG]}, None, {"MAIL": (250, "2.1.0", "x" * CUT)},
     None, False, 0),
    ("8-bit-utf8-reply-text", {"DOT": ["250 2.0.0 Ok: queued as Grüße"]}, None,
     {"DOT": (250, "2.0.0", "Ok: queued as Gr????e")}, None, False, 0),
    ("8-bit-raw-reply-text", {f"RCPT {R2}": [b"550 5.1.1 \xff\xfe no such user\r\n"]}, None,
     {"RCPT2": (550, "5.1.1", "?? no such user")}, None, False, 0),
    ("control-characters-in-reply-text", {"MAIL": ["250 2.1.0 ok\x1b[2J\x07\tdone"]}, None,
     {"MAIL": (250, "2.1.0", "ok?[2J? done")}, None, False, 0),
    ("nul-in-reply-text", {"DOT": [b"554 5.6.0 bad\x00 content\r\n"]}, None, {"DOT": (554, "5.6.0", "bad? content")},
     None, False, 0),
]


def check_line_limits(r) -> None:
    for line in r.raw.split(b"\r\n")[:-1]:
        assert len(line) + 2 <= MAX_LINE, f"reply line of {len(line) + 2} octets: {line[:60]!r}..."
        assert all(0x20 <= b < 0x7F for b in line), f"not printable US-ASCII: {line!r}"


def run_transaction(c, pause: float) -> dict:
    """MAIL, RCPT x2, DATA, message, as a client would: it stops at the first
    refusal (and says RSET). Returns step -> reply."""
    got = {}
    steps = [("MAIL", "MAIL FROM:<a@example.test>"), ("RCPT1", f"RCPT TO:<{R1}>"), ("RCPT2", f"RCPT TO:<{R2}>"),
             ("DATA", "DATA")]
    for step, line in steps:
        c.cmd(line)
        r = c.reply()
        got[step] = r
        check_line_limits(r)
        # A 354 answers DATA and nothing else.
        assert r.code != 354 or step == "DATA", f"354 out of place at {step}: {r}"
        if step == "RCPT2" and pause:
            time.sleep(pause)  # a late segment of the upstream's has time to arrive
        if step.startswith("RCPT") and r.code >= 400:
            continue  # one refused recipient; the other may still go
        if r.code >= 400 or (step == "DATA" and r.code != 354):
            return got
    c.send(FAILING_BODY + b"\r\n.\r\n")
    r = c.reply()
    got["DOT"] = r
    check_line_limits(r)
    assert r.code != 354, f"354 to the message's end: {r}"
    return got


def follow_up(c, tag: str):
    r = c.transaction("a@example.test", [R1], b"Subject: " + tag.encode() + b"\r\n\r\nfollow-up")
    assert (r.code, r.status) == (250, "2.0.0"), str(r)


@pytest.mark.parametrize("script,fails_at,want,log,drops,pause", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_upstream(start_daemon, fake_upstream, script, fails_at, want, log, drops, pause):
    up = fake_upstream(script)
    d = start_daemon(up.url, upstream={"timeout": 2})
    with d.connect() as c:
        sid = d.session_id(c.local_port)
        got = run_transaction(c, pause)
        assert up.stages_hit, "the scripted behaviour never fired"
        if fails_at:
            r = got.get(fails_at)
            assert r is not None, f"never reached {fails_at}: {got}"
            assert (r.code, r.status) == NONSENSE, f"{fails_at}: want 451 4.3.0, got {r}"
            assert r.text == "Upstream server error, try again later"
        for step, w in (want or {}).items():
            r = got[step]
            assert (r.code, r.status, r.text) == w, f"{step}: want {w}, got {r}"
        # Nothing lost, nothing doubled: the client has a 250 exactly when the upstream took the message.
        # (The fake records a message before it replies to its dot.)
        taken = [m for m in up.messages if b"FAILING-TX" in m.content]
        dot = got.get("DOT")
        assert (dot is not None and dot.code == 250) == bool(taken), f"client got {dot}, upstream took {len(taken)}"
        assert len(taken) <= 1
        # The same session goes on, on a fresh upstream connection when the old one was out of step.
        before = len(up.connections)
        c.exchange("RSET", 250, "2.0.0")
        follow_up(c, "same-session")
        assert up.wait_for(lambda: any(b"same-session" in m.content for m in up.messages))
        assert len(up.connections) == (2 if drops else 1), f"{len(up.connections)} upstream connections (was {before})"
        if drops:
            assert "MAIL FROM:<a@example.test>" in up.connections[1].commands
        c.exchange("QUIT", 221, "2.0.0")
    if log:
        d.wait_log(rf"{sid}: {log}")
    # A new client is served normally.
    with d.connect() as c2:
        follow_up(c2, "new-session")
    assert up.wait_for(lambda: any(b"new-session" in m.content for m in up.messages))


@pytest.mark.parametrize("step,reply,want", [
    ("DOT", "250-2.0.0 Ok: queued as M1\r\n550 5.7.1 refused after all", 550),
    ("DOT", "550-5.7.1 refused\r\n250 2.0.0 Ok: queued as M2", 250),
    ("RCPT", "550-5.1.1 unknown\r\n250 2.1.5 Ok", 250),
    ("RCPT", "250-2.1.5 Ok\r\n450 4.2.0 try later", 450),
], ids=["250-then-550-to-the-dot", "550-then-250-to-the-dot", "550-then-250-to-rcpt", "250-then-450-to-rcpt"])
def test_a_reply_whose_lines_give_different_codes_is_its_last_lines(start_daemon, fake_upstream, step, reply, want):
    """RFC 5321 §4.2.1 has every line of a reply carry one code. When an
    upstream breaks that, its last line decides, as in Postfix's own SMTP
    client: the client hears what it would have heard talking to the upstream
    directly (taking the first line instead told "250" of a refused message)."""
    up = fake_upstream({step: [reply]})
    d = start_daemon(up.url, upstream={"timeout": 2})
    with d.connect() as c:
        sid = d.session_id(c.local_port)
        c.exchange("MAIL FROM:<a@example.test>", 250, "2.1.0")
        if step == "RCPT":
            c.cmd(f"RCPT TO:<{R1}>")
            r = c.reply()
            assert r.code == want, str(r)
            # One code on every line the client gets.
            assert [line[:3] for line in r.raw.decode().split("\r\n")[:-1]] == [str(want)] * 2, r.raw
        else:
            c.exchange(f"RCPT TO:<{R1}>", 250, "2.1.5")
            c.exchange("DATA", 354)
            c.send(FAILING_BODY + b"\r\n.\r\n")
            r = c.reply()
            assert r.code == want, str(r)
        d.wait_log(rf"{sid}: upstream: the lines of its reply to {'RCPT' if step == 'RCPT' else 'end of data'} give "
                   rf"different codes \(RFC 5321 §4\.2\.1\); the last line's is taken: {want} ")
        # Well-formed all the same: the connection goes on.
        c.exchange("RSET", 250, "2.0.0")
        follow_up(c, "after-mixed-codes")
    assert up.wait_for(lambda: any(b"after-mixed-codes" in m.content for m in up.messages))
    assert len(up.connections) == 1


@pytest.mark.parametrize("step", ["RCPT", "DOT"])
def test_a_reply_dripped_a_line_at_a_time_has_one_timeout_in_all(start_daemon, fake_upstream, step):
    """RFC 5321 §4.5.3.2's timeouts are per reply: each line restarted the
    wait, so a reply could take 100 timeouts (1,000 minutes of
    data_done_timeout, long past the client's own wait for the final dot's
    reply: it sent the message again while the upstream queued it)."""
    code = "250" if step == "RCPT" else "451"
    lines = [f"{code}-{i} slowly" for i in range(5)] + [f"{code} done"]
    up = fake_upstream({step: [{"drip": lines, "every": 0.5}]})
    d = start_daemon(up.url, upstream={"timeout": 1, "data_done_timeout": 1})
    with d.connect() as c:
        sid = d.session_id(c.local_port)
        c.exchange("MAIL FROM:<a@example.test>", 250, "2.1.0")
        start = time.monotonic()
        if step == "RCPT":
            c.cmd(f"RCPT TO:<{R1}>")
        else:
            c.exchange(f"RCPT TO:<{R1}>", 250, "2.1.5")
            c.exchange("DATA", 354)
            start = time.monotonic()
            c.send(FAILING_BODY + b"\r\n.\r\n")
        r = c.reply()
        took = time.monotonic() - start
        assert (r.code, r.status) == (451, "4.4.1"), str(r)
        assert took < 2, took  # (all six lines: 2.5 s)
    d.wait_log(rf"{sid}: upstream: .*timed out waiting for the (rest of the )?reply")


def test_a_reply_while_the_message_goes_out_is_never_the_final_one(start_daemon, fake_upstream):
    """A reply comes after the dot (RFC 5321 §4.1.1.4). One said while a large message went out was
    read as the final reply: "250 early", and the client got it for a message the upstream then
    refused. Now the dot never goes (the upstream drops what it got) and the client gets 451 4.3.0."""
    up = fake_upstream({"BODY": ["250 2.0.0 early"], "DOT": ["554 5.7.1 refused after all"]})
    d = start_daemon(up.url, upstream={"timeout": 2})
    with d.connect() as c:
        sid = d.session_id(c.local_port)
        c.exchange("MAIL FROM:<a@example.test>", 250, "2.1.0")
        c.exchange(f"RCPT TO:<{R1}>", 250, "2.1.5")
        c.exchange("DATA", 354)
        c.send(FAILING_BODY + b"\r\n" + (b"x" * 998 + b"\r\n") * 6000 + b".\r\n")  # 6 MB: many slices
        r = c.reply(timeout=30)
        assert (r.code, r.status) == NONSENSE, str(r)
    assert not up.messages
    d.wait_log(rf"{sid}: upstream: spoke before the end of the message \(out of step\)")


def test_late_354_never_becomes_the_final_reply(start_daemon, fake_upstream):
    """The issue's reproduction: RCPT answered with "250 ok" and then "354 go".
    The stray 354 must not pass for DATA's go-ahead (the client would get the
    real 354 as its final reply while the upstream queues the message)."""
    up = fake_upstream({"RCPT": [{"send": "250 2.1.5 ok", "then": "354 go ahead", "delay": 0.05}]})
    d = start_daemon(up.url, upstream={"timeout": 2})
    with d.connect() as c:
        c.exchange("MAIL FROM:<a@example.test>", 250, "2.1.0")
        c.exchange(f"RCPT TO:<{R1}>", 250, "2.1.5")
        time.sleep(0.3)
        c.exchange("DATA", 354)
        c.send(FAILING_BODY + b"\r\n.\r\n")
        r = c.reply()
        assert (r.code, r.status) == NONSENSE, str(r)
    time.sleep(0.2)
    assert not [m for m in up.messages if b"FAILING-TX" in m.content]
    assert "DATA" not in up.connections[0].commands


def test_reply_lines_within_limits_pass_unchanged(start_daemon, fake_upstream):
    """The sanitising touches nothing that already fits: a line of exactly 512 octets stays as it is."""
    text = "y" * (MAX_LINE - len("250 2.1.5 ") - 2)
    up = fake_upstream({f"RCPT {R1}": [f"250 2.1.5 {text}"]})
    d = start_daemon(up.url)
    with d.connect() as c:
        c.exchange("MAIL FROM:<a@example.test>", 250, "2.1.0")
        r = c.exchange(f"RCPT TO:<{R1}>", 250, "2.1.5")
        assert r.text == text
        assert re.fullmatch(rb"250 2\.1\.5 y+\r\n", r.raw)


# -- under TLS: replies in TLS records of their own, behind the one the proxy read ----------
# (Only TLS holds such a record: neither our buffer nor a look at the socket sees it.)


def _tls_upstream(tmp_path, **kw) -> TlsFakeUpstream:
    cert, key = make_cert(tmp_path / "upstream-cert", "upstream", ["tls.fake"])
    return TlsFakeUpstream(str(cert), str(key), **kw)


@pytest.mark.parametrize("ciphers", ["ECDHE-ECDSA-AES128-SHA256", "ECDHE-ECDSA-AES256-SHA"])
def test_an_upstream_of_cbc_suites_alone_gets_tls(start_daemon, tmp_path, ciphers):
    """Our client offered the server side's AEAD-only list: no shared suite, and opportunistic
    STARTTLS then went on in clear (here, smtps: no mail at all). Postfix's client offers these."""
    up = _tls_upstream(tmp_path, ciphers=ciphers)
    try:
        d = start_daemon(up.url, upstream={"timeout": 2})
        with d.connect() as c:
            r = c.transaction("a@example.test", [R1], b"Subject: cbc\r\n\r\nbody")
            assert (r.code, r.status) == (250, "2.0.0"), str(r)
        assert len(up.messages) == 1
    finally:
        up.stop()


def test_sni_names_a_host_never_an_address(start_daemon, tmp_path):
    """RFC 6066 §3: no IP literal in SNI (an smtps://127.0.0.1 url sent "127.0.0.1")."""
    up = _tls_upstream(tmp_path)
    try:
        for tls_name, want in ((None, None), ("tls.fake", "tls.fake")):
            d = start_daemon(up.url, upstream={"timeout": 2, **({"tls_name": tls_name} if tls_name else {})})
            with d.connect() as c:
                r = c.transaction("a@example.test", [R1], b"Subject: sni\r\n\r\nbody")
                assert r.code == 250, str(r)
            assert up.server_names[-1] == want, up.server_names
    finally:
        up.stop()


def test_a_reply_behind_the_final_250_in_a_tls_record_of_its_own_reaches_no_later_client(start_daemon, tmp_path):
    up = _tls_upstream(tmp_path, after={"DOT": ["250 2.0.0 stale, unasked"]})
    try:
        d = start_daemon(up.url, upstream={"timeout": 2})
        with d.connect() as c:
            sid = d.session_id(c.local_port)
            r = c.transaction("a@example.test", [R1], FAILING_BODY)
            assert (r.code, r.status) == (250, "2.0.0") and len(up.messages) == 1, str(r)  # taken: its 250 stands
            c.exchange("QUIT", 221)
        d.wait_log(rf"{sid}: upstream: unsolicited data after the 250 to end of data")
        with d.connect() as c:  # on a fresh upstream connection, every reply its own
            c.exchange("MAIL FROM:<b@example.test>", 250, "2.1.0")
            c.exchange("RCPT TO:<reject-me@example.test>", 550, "5.1.1")
            c.exchange(f"RCPT TO:<{R2}>", 250, "2.1.5")
            c.exchange("DATA", 354)
            c.send(b"Subject: second\r\n\r\nbody\r\n.\r\n")
            r = c.reply()
            assert (r.code, r.status, r.text) == (250, "2.0.0", "Ok: queued as TLS2"), str(r)
        assert len(up.commands) == 2
    finally:
        up.stop()


@pytest.mark.parametrize("later", [0, 0.1], ids=["same-write", "later-segment"])
def test_a_354_behind_rcpt_s_reply_in_a_tls_record_of_its_own_never_sends_the_message(start_daemon, tmp_path,
                                                                                        later):
    up = _tls_upstream(tmp_path, after={f"RCPT {R2}": ["354 go ahead (unasked)"]}, later=later)  # DATA is next
    try:
        d = start_daemon(up.url, upstream={"timeout": 2})
        with d.connect() as c:
            got = run_transaction(c, pause=0.3)
            failed = [step for step, r in got.items() if (r.code, r.status) == NONSENSE]
            assert failed, f"no 451 4.3.0 at any step: {got}"
            assert "DOT" not in got or got["DOT"].code != 250, str(got)
            assert not [m for m in up.messages if b"FAILING-TX" in m]  # the message never went
            c.exchange("RSET", 250, "2.0.0")
            follow_up(c, "same-session")
        assert any(b"same-session" in m for m in up.messages) and len(up.commands) == 2
    finally:
        up.stop()


def test_the_proxy_ends_a_tls_upstream_connection_with_close_notify(start_daemon, tmp_path):
    """After the upstream's 221 the proxy sends its close_notify (RFC 8446 §6.1) and awaits the
    upstream's: a session's own connection, and one the pool kept and closes when idle."""
    up = _tls_upstream(tmp_path)
    try:
        d = start_daemon(up.url, upstream={"pool_size": 0})
        with d.connect() as c:
            assert c.transaction("a@example.test", [R1], b"Subject: t\r\n\r\nx").code == 250
            c.exchange("QUIT", 221)
        wait_until(lambda: up.goodbyes, timeout=10, what="the upstream's QUIT")
        assert up.goodbyes == ["close_notify"]
        d2 = start_daemon(up.url, upstream={"pool_idle_timeout": 1})
        with d2.connect() as c:
            assert c.transaction("a@example.test", [R1], b"Subject: t\r\n\r\nx").code == 250
            c.exchange("QUIT", 221)
        wait_until(lambda: len(up.goodbyes) == 2, timeout=10, what="the pooled connection's QUIT")
        assert up.goodbyes == ["close_notify", "close_notify"]
    finally:
        up.stop()


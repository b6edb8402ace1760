"""Rewrites by Python policies as the upstream (aiosmtpd) sees them, byte for
byte (docs/policy-api.md, "Rewriting" and pc.Message): the sender rewritten
before and after MAIL went upstream (the upstream transaction is redone
before DATA: one message, the final envelope), recipients added and removed,
and header and body edits that leave every untouched byte as it was."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import content_without_received, exact, wait_until



def send(c, sender: str, rcpts: list[str], message: bytes, mail_params: str = ""):
    """One transaction with exact bytes: `message` is sent dot-stuffed and must end in CRLF."""
    c.exchange(f"MAIL FROM:<{sender}>{mail_params}", 250, "2.1.0")
    for r in rcpts:
        c.exchange(f"RCPT TO:<{r}>", 250, "2.1.5")
    c.exchange("DATA", 354)
    c.send(message.replace(b"\r\n.", b"\r\n..") + b".\r\n")
    return c.reply()


MESSAGE = b"Subject: rewrite me\r\nFrom: Ann <ann@example.test>\r\n\r\nHello\r\n"


# -- the envelope ----------------------------------------------------------------


def test_sender_rewritten_in_on_mail_goes_upstream_once(policy_daemon, aiosmtpd_upstream):
    d = policy_daemon(aiosmtpd_upstream.url, """
        def on_mail(tx, sender):
            tx.sender = f"bounces+{sender.local}@rewritten.test"
    """)
    with d.connect() as c:
        exact(send(c, "ann@example.test", ["bob@example.test"], MESSAGE, " BODY=8BITMIME"), 250, "2.0.0",
              "Ok: queued as AIO00001 (aiosmtpd)")
    [env] = aiosmtpd_upstream.wait_messages(1)
    assert (env["mail_from"], env["rcpt_tos"]) == ("bounces+ann@rewritten.test", ["bob@example.test"])
    assert env["mail_options"] == ["BODY=8BITMIME"]
    assert aiosmtpd_upstream.handler.mails == [("bounces+ann@rewritten.test", ["BODY=8BITMIME"])]
    assert content_without_received(env["content"]) == MESSAGE


def test_a_redirect_past_max_recipients_is_refused_for_good(policy_daemon, aiosmtpd_upstream):
    """An alias list longer than server.max_recipients: the same at every try, so 550 5.5.3,
    not a 451 the client retried until the message bounced days later."""
    d = policy_daemon(aiosmtpd_upstream.url, """
        import portcullis as pc
        def on_rcpt(tx, rcpt):
            if rcpt.local == "everyone":
                return pc.redirect(*[f"member{i}@example.test" for i in range(5)])
    """, server={"max_recipients": 4})
    with d.connect() as c:
        sid = d.session_id(c.local_port)
        c.exchange("MAIL FROM:<ann@example.test>", 250, "2.1.0")
        c.exchange("RCPT TO:<everyone@example.test>", 550, "5.5.3", "Too many recipients")
        c.exchange("RCPT TO:<bob@example.test>", 250, "2.1.5")
    d.wait_log(rf"{sid}: policy error in on_rcpt: redirect to 5 addresses; server\.max_recipients is 4$")


@pytest.mark.parametrize("stage", ["rcpt", "data"])
@pytest.mark.parametrize("new_sender,upstream_sees", [("srs0=x@rewritten.test", "srs0=x@rewritten.test"),
                                                      ("", "<>")], ids=["address", "null"])
def test_sender_rewritten_after_mail_went_upstream(policy_daemon, aiosmtpd_upstream, stage, new_sender,
                                                   upstream_sees):
    hook = "on_rcpt(tx, rcpt)" if stage == "rcpt" else "on_data(tx, message)"
    d = policy_daemon(aiosmtpd_upstream.url, f"""
        def {hook}:
            tx.sender = {new_sender!r}
    """)
    with d.connect() as c:
        sid = d.session_id(c.local_port)
        exact(send(c, "ann@example.test", ["bob@example.test", "cy@example.test"], MESSAGE, " BODY=8BITMIME"),
              250, "2.0.0", "Ok: queued as AIO00001 (aiosmtpd)")
        c.exchange("QUIT", 221)
    [env] = aiosmtpd_upstream.wait_messages(1)
    # One message, with the final envelope.
    assert (env["mail_from"], env["rcpt_tos"]) == (upstream_sees, ["bob@example.test", "cy@example.test"])
    assert env["mail_options"] == ["BODY=8BITMIME"]
    assert content_without_received(env["content"]) == MESSAGE
    # The first MAIL went upstream as the client gave it; the transaction was redone before DATA.
    assert [m for m, _ in aiosmtpd_upstream.handler.mails] == ["ann@example.test", upstream_sees]
    assert [r for r, _ in aiosmtpd_upstream.handler.rcpts] == ["bob@example.test", "cy@example.test"] * 2
    d.wait_log(rf"{sid}: envelope rewritten by policy: from=<{re.escape(new_sender)}> "
               rf"to=<bob@example\.test>,<cy@example\.test>; redoing the upstream transaction$")
    assert len(aiosmtpd_upstream.envelopes) == 1


def test_recipients_added_and_removed_in_on_data(policy_daemon, aiosmtpd_upstream):
    d = policy_daemon(aiosmtpd_upstream.url, """
        import portcullis as pc

        def on_data(tx, message):
            tx.recipients.remove(pc.Address("bob@example.test"))
            tx.recipients.append("added@other.test")
            tx.recipients.insert(0, pc.Address("first@other.test"))
    """)
    with d.connect() as c:
        exact(send(c, "ann@example.test", ["bob@example.test", "cy@example.test"], MESSAGE), 250, "2.0.0",
              "Ok: queued as AIO00001 (aiosmtpd)")
    [env] = aiosmtpd_upstream.wait_messages(1)
    assert (env["mail_from"], env["rcpt_tos"]) == ("ann@example.test",
                                                   ["first@other.test", "cy@example.test", "added@other.test"])
    assert content_without_received(env["content"]) == MESSAGE
    assert len(aiosmtpd_upstream.envelopes) == 1


def test_recipients_replaced_in_on_data(policy_daemon, aiosmtpd_upstream):
    d = policy_daemon(aiosmtpd_upstream.url, """
        def on_data(tx, message):
            tx.recipients = ["only@other.test"]
    """)
    with d.connect() as c:
        exact(send(c, "ann@example.test", ["bob@example.test", "cy@example.test"], MESSAGE), 250, "2.0.0",
              "Ok: queued as AIO00001 (aiosmtpd)")
    [env] = aiosmtpd_upstream.wait_messages(1)
    assert env["rcpt_tos"] == ["only@other.test"]
    # Our trace field names the final recipient, not the ones the client gave.
    assert re.match(rb"Received: [^;]*\r\n\tfor <only@other\.test>; ", env["content"])
    assert [r for r, _ in aiosmtpd_upstream.handler.rcpts] == ["bob@example.test", "cy@example.test",
                                                                 "only@other.test"]


def test_recipient_added_in_on_rcpt_and_on_mail(policy_daemon, aiosmtpd_upstream):
    """A copy to an archive (on_mail) and to a supervisor for one recipient (on_rcpt)."""
    d = policy_daemon(aiosmtpd_upstream.url, """
        def on_mail(tx, sender):
            tx.recipients.append("archive@example.test")

        def on_rcpt(tx, rcpt):
            if rcpt.local == "trainee":
                tx.recipients += ["supervisor@example.test"]
    """)
    with d.connect() as c:
        exact(send(c, "ann@example.test", ["bob@example.test", "trainee@example.test"], MESSAGE), 250, "2.0.0",
              "Ok: queued as AIO00001 (aiosmtpd)")
    [env] = aiosmtpd_upstream.wait_messages(1)
    assert env["rcpt_tos"] == ["archive@example.test", "bob@example.test", "supervisor@example.test",
                               "trainee@example.test"]
    assert len(aiosmtpd_upstream.envelopes) == 1


# -- the message -----------------------------------------------------------------

# Folded fields (with spaces and tabs), odd spacing, 8-bit octets that are
# not UTF-8, repeated fields, a dot-stuffed body line and no trailing blank line.
RICH = (
    b"Received: from relay.example.test by mx.example.test; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    b"DKIM-Signature: v=1; a=rsa-sha256; d=example.test; s=sel;\r\n"
    b"\th=from:subject:date; bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=;\r\n"
    b"        b=dGVzdA==\r\n"
    b"Subject:   a folded\r\n   subject  line  \r\n"
    b"X-Remove: one\r\n"
    b"From: Ann <ann@example.test>\r\n"
    b"X-Remove: two\r\n"
    b"X-Replace: old value\r\n"
    b"X-8bit: caf\xc3\xa9 \xff\xfe raw\r\n"
    b"x-replace: second stays\r\n"
    b"To: bob@example.test\r\n"
    b"\r\n"
    b"First line\r\n"
    b".leading dot\r\n"
    b"\r\n"
    b"Last line\r\n"
)


def test_header_edits_keep_untouched_fields_byte_for_byte(policy_daemon, aiosmtpd_upstream):
    d = policy_daemon(aiosmtpd_upstream.url, """
        def on_data(tx, message):
            removed = message.remove_header("x-REMOVE")
            message.replace_header("X-Replace", "new value")
            message.add_header("X-Removed-Count", str(removed))
            message.add_header("X-Copy-8bit", message.get("X-8bit"))
            message.replace_header("X-Absent", "added at the top")
    """)
    with d.connect() as c:
        exact(send(c, "ann@example.test", ["bob@example.test"], RICH), 250, "2.0.0",
              "Ok: queued as AIO00001 (aiosmtpd)")
    [env] = aiosmtpd_upstream.wait_messages(1)
    assert content_without_received(env["content"]) == (
        b"X-Absent: added at the top\r\n"
        # Generated outside SMTPUTF8: an RFC 2047 encoded-word (issue 7, item 11).
        b"X-Copy-8bit: =?unknown-8bit?b?Y2Fmw6kg//4=?= raw\r\n"
        b"X-Removed-Count: 2\r\n"
        b"Received: from relay.example.test by mx.example.test; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
        b"DKIM-Signature: v=1; a=rsa-sha256; d=example.test; s=sel;\r\n"
        b"\th=from:subject:date; bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=;\r\n"
        b"        b=dGVzdA==\r\n"
        b"Subject:   a folded\r\n   subject  line  \r\n"
        b"From: Ann <ann@example.test>\r\n"
        b"X-Replace: new value\r\n"
        b"X-8bit: caf\xc3\xa9 \xff\xfe raw\r\n"
        b"x-replace: second stays\r\n"
        b"To: bob@example.test\r\n"
        b"\r\n"
        b"First line\r\n"
        b".leading dot\r\n"
        b"\r\n"
        b"Last line\r\n"
    )


def test_reading_the_message_changes_nothing(policy_daemon, aiosmtpd_upstream):
    d = policy_daemon(aiosmtpd_upstream.url, """
        def on_data(tx, message):
            message.headers, message.get_all("x-remove"), message.body, message.raw, message.as_email()
            message.remove_header("X-Not-There")
    """)
    with d.connect() as c:
        exact(send(c, "ann@example.test", ["bob@example.test"], RICH), 250, "2.0.0",
              "Ok: queued as AIO00001 (aiosmtpd)")
    [env] = aiosmtpd_upstream.wait_messages(1)
    assert content_without_received(env["content"]) == RICH


def test_generated_header_is_folded(policy_daemon, aiosmtpd_upstream):
    words = " ".join(f"word{i:03d}" for i in range(40))
    d = policy_daemon(aiosmtpd_upstream.url, f"""
        def on_data(tx, message):
            message.add_header("X-Long", {words!r})
    """)
    with d.connect() as c:
        exact(send(c, "ann@example.test", ["bob@example.test"], MESSAGE), 250, "2.0.0",
              "Ok: queued as AIO00001 (aiosmtpd)")
    [env] = aiosmtpd_upstream.wait_messages(1)
    rest = content_without_received(env["content"])
    assert rest.endswith(b"\r\n" + MESSAGE)
    added = rest[: -len(MESSAGE)]
    lines = added.split(b"\r\n")[:-1]
    assert len(lines) > 1 and all(len(line) <= 78 for line in lines)
    assert all(line.startswith(b" ") for line in lines[1:])
    assert added.replace(b"\r\n ", b" ") == b"X-Long: " + words.encode() + b"\r\n"


def test_body_rewrite_is_normalised_and_dot_stuffed(policy_daemon, aiosmtpd_upstream, fake_upstream):
    """A new body with LF, CR and CRLF line ends, a lone "." line and an SMTP
    command after it: the upstream gets CRLF lines, the "." line
    dot-stuffed, and the whole body as one message."""
    policy = """
        def on_data(tx, message):
            message.body = b"new body\\n.\\nMAIL FROM:<evil@example.test>\\r..two\\r\\n.three\\nno final newline"
            message.replace_header("Subject", "rewritten")
    """
    expected = (b"Subject: rewritten\r\nFrom: Ann <ann@example.test>\r\n\r\n"
                b"new body\r\n.\r\nMAIL FROM:<evil@example.test>\r\n..two\r\n.three\r\nno final newline\r\n")
    d = policy_daemon(aiosmtpd_upstream.url, policy)
    with d.connect() as c:
        exact(send(c, "ann@example.test", ["bob@example.test"], MESSAGE), 250, "2.0.0",
              "Ok: queued as AIO00001 (aiosmtpd)")
    [env] = aiosmtpd_upstream.wait_messages(1)
    assert content_without_received(env["content"]) == expected
    assert aiosmtpd_upstream.handler.mails == [("ann@example.test", [])]
    # On the wire: dot-stuffed, one message, nothing after the final dot.
    up = fake_upstream()
    d2 = policy_daemon(up.url, policy, upstream={"pool_size": 0})  # its upstream dialogue down to QUIT: no pooling
    with d2.connect() as c:
        r = send(c, "ann@example.test", ["bob@example.test"], MESSAGE)
        assert r.code == 250 and r.status == "2.0.0"
        c.exchange("QUIT", 221)
    [m] = up.messages
    assert content_without_received(m.content) == expected
    assert m.wire.endswith(b"\r\n..\r\nMAIL FROM:<evil@example.test>\r\n...two\r\n..three\r\nno final newline\r\n")
    wait_until(lambda: up.connections[0].received.endswith(b"QUIT\r\n"), what="QUIT upstream")
    assert up.connections[0].received.endswith(m.wire + b".\r\nQUIT\r\n")


def test_a_stray_line_in_the_header_section_becomes_body(policy_daemon, aiosmtpd_upstream):
    d = policy_daemon(aiosmtpd_upstream.url, """
        def on_data(tx, message):
            message.add_header("X-Added", "1")
    """)
    message = b"Subject: x\r\nnot a header line\r\nX-Later: y\r\n\r\nbody\r\n"
    with d.connect() as c:
        exact(send(c, "ann@example.test", ["bob@example.test"], message), 250, "2.0.0",
              "Ok: queued as AIO00001 (aiosmtpd)")
    [env] = aiosmtpd_upstream.wait_messages(1)
    assert content_without_received(env["content"]) == (
        b"X-Added: 1\r\nSubject: x\r\n\r\nnot a header line\r\nX-Later: y\r\n\r\nbody\r\n")


def test_a_field_in_obsolete_syntax_stays_in_the_header(policy_daemon, aiosmtpd_upstream):
    """RFC 5322 §4.5: "Subject : x" (white space before the colon) is a field that §4 says MUST
    be accepted: an edit must not end the header section above it, pushing To, MIME-Version and
    Content-Type into the body."""
    d = policy_daemon(aiosmtpd_upstream.url, """
        def on_data(tx, message):
            message.replace_header("X-Tag", "1")
    """)
    message = (b"From: a@example.test\r\nSubject : hello\r\nTo: bob@example.test\r\nMIME-Version: 1.0\r\n"
               b"Content-Type: text/html\r\n\r\n<b>hi</b>\r\n")
    with d.connect() as c:
        r = send(c, "ann@example.test", ["bob@example.test"], message)
    exact(r, 250, "2.0.0", "Ok: queued as AIO00001 (aiosmtpd)")
    [env] = aiosmtpd_upstream.wait_messages(1)
    assert content_without_received(env["content"]) == b"X-Tag: 1\r\n" + message


# -- the text of the message (edit_text, append_text) ------------------------------


def _mime_parts(raw: bytes) -> list[str]:
    import email
    import email.policy

    return [p.get_content_type() for p in email.message_from_bytes(raw, policy=email.policy.default).walk()]


def test_a_footer_does_not_turn_text_into_a_part_the_attachment_policy_never_saw(policy_daemon, aiosmtpd_upstream):
    """A quoted-printable text part whose text decodes to "--BB" and an executable's header: the
    attachment policy (first) sees text; the footer (after it) must not re-encode that line as
    a real delimiter (RFC 2046 §5.1.1), which would give the upstream an x-msdownload part."""
    root = Path(__file__).resolve().parents[2]
    d = policy_daemon(aiosmtpd_upstream.url, root / "policies" / "attachments.py", """
        def on_data(tx, message):
            message.append_text("-- scanned by Portcullis")
    """, attachments={})
    message = (b"From: a@example.test\r\nTo: bob@example.test\r\nSubject: hi\r\nMIME-Version: 1.0\r\n"
               b'Content-Type: multipart/mixed; boundary="BB"\r\n\r\n'
               b"--BB\r\nContent-Type: text/plain; charset=us-ascii\r\nContent-Transfer-Encoding: quoted-printable\r\n"
               b"\r\nHello\r\n=2D=2DBB\r\nContent-Type: application/x-msdownload\r\n"
               b"Content-Transfer-Encoding: base64\r\n\r\nTVqQAAMAAAAEAAAA//8AALgAAAAA\r\n--BB--\r\n")
    with d.connect() as c:
        exact(send(c, "ann@example.test", ["bob@example.test"], message), 250, "2.0.0",
              "Ok: queued as AIO00001 (aiosmtpd)")
    [env] = aiosmtpd_upstream.wait_messages(1)
    got = content_without_received(env["content"])
    assert _mime_parts(got) == _mime_parts(message) == ["multipart/mixed", "text/plain"]
    assert [line for line in got.split(b"\r\n") if line.startswith(b"--BB")] == [b"--BB", b"--BB--"]
    assert got.endswith(b"\r\n=2D-BB\r\nContent-Type: application/x-msdownload\r\n"
                        b"Content-Transfer-Encoding: base64\r\n\r\nTVqQAAMAAAAEAAAA//8AALgAAAAA\r\n"
                        b"=2D- scanned by Portcullis\r\n--BB--\r\n")


def test_footers_keep_the_text_they_are_added_to(policy_daemon, aiosmtpd_upstream):
    """8-bit octets that are not in the part's charset (Latin-1 sent as us-ascii) stay as they came;
    the HTML footer goes before </body> whatever lower() would make of the text before it; a
    part's Content-Type given a charset stays within 998 octets a line (RFC 5322 §2.1.1)."""
    d = policy_daemon(aiosmtpd_upstream.url, """
        def on_data(tx, message):
            message.append_text("-- footer", html="<p>FOOTER</p>")
    """)
    latin1 = (b"Subject: one\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: 8bit\r\n"
              b"\r\nCaf\xe9 cr\xe8me br\xfbl\xe9e\r\n")
    html = ("Subject: two\r\nMIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n"
            "Content-Transfer-Encoding: 8bit\r\n\r\n<html><body>\u0130stanbul \u0130zmir</body></html>\r\n").encode()
    with d.connect() as c:
        for message in (latin1, html):
            exact(send(c, "ann@example.test", ["bob@example.test"], message, " BODY=8BITMIME"), 250, "2.0.0",
                  f"Ok: queued as AIO0000{1 if message is latin1 else 2} (aiosmtpd)")
    first, second = (content_without_received(env["content"]) for env in aiosmtpd_upstream.wait_messages(2))
    assert first == latin1 + b"-- footer\r\n"
    assert second == html.replace(b"</body>", b"<p>FOOTER</p></body>")


def test_a_part_content_type_given_a_charset_is_folded(policy_daemon, aiosmtpd_upstream):
    d = policy_daemon(aiosmtpd_upstream.url, """
        def on_data(tx, message):
            message.append_text("Gr\u00fc\u00dfe")
    """)
    params = b"".join(b';\r\n x-p%d="%s"' % (i, bytes([97 + i]) * 150) for i in range(8))
    message = (b"Subject: hi\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"BB\"\r\n\r\n"
               b"--BB\r\nContent-Type: text/plain; charset=us-ascii" + params + b"\r\n\r\nHello\r\n--BB--\r\n")
    with d.connect() as c:
        exact(send(c, "ann@example.test", ["bob@example.test"], message), 250, "2.0.0",
              "Ok: queued as AIO00001 (aiosmtpd)")
    [env] = aiosmtpd_upstream.wait_messages(1)
    got = env["content"]
    assert max(len(line) for line in got.split(b"\r\n")) <= 998
    assert b'charset="utf-8"' in got and all(b'x-p%d="%s"' % (i, bytes([97 + i]) * 150) in got for i in range(8))
    assert got.endswith(b"\r\n\r\nHello\r\nGr=C3=BC=C3=9Fe\r\n--BB--\r\n")


# -- what a stage's outcome does to its rewrites -----------------------------------


def test_rewrites_of_a_refusing_stage_apply_those_of_a_failing_stage_do_not(policy_daemon, aiosmtpd_upstream):
    """docs/policy-api.md: rewrites made in a stage that then rejects are
    applied; when a stage fails (a hook raises), none of its rewrites are -
    not even those of an earlier policy in the same stage."""
    first = """
        def on_rcpt(tx, rcpt):
            if rcpt.local == "refused":
                tx.sender = "from-refused@rewritten.test"
            if rcpt.local == "boom":
                tx.sender = "from-boom@rewritten.test"
                tx.recipients.append("from-boom@rewritten.test")
    """
    second = """
        import portcullis as pc

        def on_rcpt(tx, rcpt):
            if rcpt.local == "refused":
                return pc.reject("Refused", code=550, status="5.1.1")
            if rcpt.local == "boom":
                raise RuntimeError("boom")
    """
    d = policy_daemon(aiosmtpd_upstream.url, first, second)
    with d.connect() as c:
        c.exchange("MAIL FROM:<ann@example.test>", 250, "2.1.0")
        exact(c.exchange("RCPT TO:<refused@example.test>", 550), 550, "5.1.1", "Refused")
        exact(c.exchange("RCPT TO:<boom@example.test>", 451), 451, "4.3.0", "Temporary policy failure, try again later")
        c.exchange("RCPT TO:<bob@example.test>", 250, "2.1.5")
        c.exchange("DATA", 354)
        c.send(MESSAGE + b".\r\n")
        exact(c.reply(), 250, "2.0.0", "Ok: queued as AIO00001 (aiosmtpd)")
    [env] = aiosmtpd_upstream.wait_messages(1)
    assert (env["mail_from"], env["rcpt_tos"]) == ("from-refused@rewritten.test", ["bob@example.test"])


def test_rewritten_recipient_refused_by_the_upstream_answers_data(policy_daemon, fake_upstream):
    up = fake_upstream({"RCPT added@other.test": "550 5.1.1 No such user here (fake)"})
    d = policy_daemon(up.url, """
        def on_data(tx, message):
            tx.recipients.append("added@other.test")
    """)
    with d.connect() as c:
        r = send(c, "ann@example.test", ["bob@example.test"], MESSAGE)
        assert r.raw == b"550 5.1.1 No such user here (fake)\r\n"
        c.exchange("QUIT", 221)
    assert up.messages == []


def test_recipient_appended_twice_is_delivered_once(policy_daemon, aiosmtpd_upstream):
    d = policy_daemon(aiosmtpd_upstream.url, """
        def on_data(tx, message):
            tx.recipients.append("bob@example.test")
    """)
    with d.connect() as c:
        exact(send(c, "ann@example.test", ["bob@example.test", "cy@example.test"], MESSAGE), 250, "2.0.0",
              "Ok: queued as AIO00001 (aiosmtpd)")
    [env] = aiosmtpd_upstream.wait_messages(1)
    assert env["rcpt_tos"] == ["bob@example.test", "cy@example.test"]


def test_a_rewritten_recipient_is_checked_by_the_next_policy_and_delivered(policy_daemon, aiosmtpd_upstream):
    renames = """
        import portcullis as pc
        def on_rcpt(tx, rcpt):
            if rcpt.domain == "old.test":
                return pc.rewrite(f"{rcpt.local}@new.test")
        """
    users = """
        import portcullis as pc
        async def on_rcpt(tx, rcpt):
            if rcpt.domain == "new.test" and rcpt.local != "alice":
                return pc.reject(f"<{rcpt}>: no such user", code=550, status="5.1.1")
        """
    d = policy_daemon(aiosmtpd_upstream.url, renames, users)
    with d.connect() as c:
        c.exchange("MAIL FROM:<a@example.com>", 250)
        c.exchange("RCPT TO:<nobody@old.test>", 550, "5.1.1", "<nobody@new.test>: no such user")
        c.exchange("RCPT TO:<alice@old.test>", 250)
        c.exchange("DATA", 354)
        c.send(b"Subject: x\r\n\r\nbody\r\n.\r\n")
        c.expect(250)
    assert aiosmtpd_upstream.wait_messages(1)[0]["rcpt_tos"] == ["alice@new.test"]

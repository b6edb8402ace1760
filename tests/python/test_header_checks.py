"""policies/header_checks.py through the testing harness: every action,
flags, negation, groups, and errors with their line."""

from __future__ import annotations

from pathlib import Path

import pytest

from portcullis.testing import Harness, PolicyLoadError

POLICY = Path(__file__).resolve().parents[2] / "policies" / "header_checks.py"
RULES = r"""
# spam words
/^Subject:.*viagra/                 REJECT 5.7.1 No pharmacy spam here
/^Subject:.*lottery/                REJECT
/^Subject:.*later please/           DEFER 4.7.0 Come back tomorrow
/^X-Mailer: BulkMailer/             DISCARD bulk
/^X-Spam-Flag:/                     IGNORE
/^Received: from internal\.example/ IGNORE
/^Subject: (.*)\[SPAM\]\s*$/        REPLACE Subject: $1
/^From:.*@partner\.example/         PREPEND X-Partner: yes
/^X-Case: Exact/i                   WARN case-sensitive match
/^X-Path: a\/b/                     WARN slash in the regex
!/^(From|To|Subject|Date|Message-ID|Received|X-.*):/
                                    REJECT 5.7.0 Header not allowed
"""


def harness(tmp_path: Path, rules: str = RULES) -> Harness:
    (tmp_path / "header_checks").write_text(rules)
    (tmp_path / "portcullis.toml").write_text("")
    return Harness([POLICY], config_path=tmp_path / "portcullis.toml", config={"header_checks": {"file": "header_checks"}})


def send(h: Harness, headers: str):
    s = h.connect(helo="client.example")
    s.mail("a@example.com")
    s.rcpt("b@example.test")
    reply = s.data(headers + "\r\nbody\r\n")
    return reply, (s.delivered[-1] if s.delivered else None)


BASE = "From: a@example.com\r\nTo: b@example.test\r\nDate: Wed, 02 Dec 2026 12:00:00 +0000\r\n"


def test_reject_defer_and_discard(tmp_path):
    with harness(tmp_path) as h:
        assert send(h, BASE + "Subject: cheap VIAGRA\r\n")[0] == (550, "5.7.1", "No pharmacy spam here")
        assert send(h, BASE + "Subject: lottery win\r\n")[0] == (550, "5.7.1", "Message content rejected")
        assert send(h, BASE + "Subject: later please\r\n")[0] == (451, "4.7.0", "Come back tomorrow")
        reply, delivered = send(h, BASE + "X-Mailer: BulkMailer 3\r\n")
        assert reply.code == 250 and delivered is None
        assert any("discard X-Mailer (header_checks line 6): bulk" in line.message for line in h.logs)


def test_ignore_replace_prepend_edit_only_the_matching_field(tmp_path):
    with harness(tmp_path) as h:
        headers = ("Received: from internal.example by mx\r\nReceived: from outside.example by mx\r\n" + BASE +
                   "Subject: Hello [SPAM]\r\nX-Spam-Flag: YES\r\n")
        reply, delivered = send(h, headers)
        assert reply.code == 250
        assert delivered.message.count(b"Received:") == 1 and b"from outside.example" in delivered.message
        assert b"X-Spam-Flag" not in delivered.message
        assert b"\r\nSubject: Hello \r\n" in delivered.message
        reply, delivered = send(h, BASE.replace("a@example.com", "x@partner.example") + "Subject: hi\r\n")
        assert b"X-Partner: yes\r\nFrom: x@partner.example\r\n" in delivered.message


def test_flags_warn_and_negation_with_groups(tmp_path):
    with harness(tmp_path) as h:
        send(h, BASE + "X-Case: exact\r\nSubject: a\r\n")
        assert not any("case-sensitive" in line.message for line in h.logs)  # the i flag makes it case-sensitive
        send(h, BASE + "X-Case: Exact\r\nX-Path: a/b\r\nSubject: a\r\n")
        assert any("warning X-Case (header_checks line 11): case-sensitive match" in l.message for l in h.logs)
        assert any("slash in the regex" in l.message for l in h.logs)
        assert send(h, BASE + "Reply-To: c@example.com\r\nSubject: a\r\n")[0] == (550, "5.7.0", "Header not allowed")


@pytest.mark.parametrize("rules,line,why", [
    ("/ok/ DUNNO\n/unclosed REJECT\n", 2, "not closed"),
    ("/a(/ REJECT\n", 1, "bad regex"),
    ("/a/q REJECT\n", 1, "unknown flag"),
    ("/a/ HOLD\n", 1, "unknown action 'HOLD'"),
    ("/a/ REPLACE no colon here\n", 1, "needs a header field"),
    ("  /a/ REJECT\n", 1, "continuation"),
    ("a REJECT\n", 1, "starts with /regex/"),
    ("!/a/ REJECT no $1\n", 1, "no groups"),
])
def test_errors_say_which_line(tmp_path, rules, line, why):
    with pytest.raises(PolicyLoadError, match=f"line {line}: .*{why}"):
        harness(tmp_path, rules)

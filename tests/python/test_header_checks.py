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


def test_a_reject_with_a_4xx_status_and_every_defer_are_temporary(tmp_path, caplog):
    # Postfix's cleanup_act: REJECT 4.x.x defers (451, that status); DEFER is class 4 whatever it is given.
    rules = ("/^Subject:.*maybe/   REJECT 4.7.1 Try again later\n"
             "/^Subject:.*defer5/  DEFER 5.7.1 Blocked\n"
             "/^Subject:.*ok2/     REJECT 2.0.0 Odd\n"
             "/^Subject:.*plain/   DEFER\n"
             "/^Subject:.*hard/    REJECT 5.7.2 Hard\n")
    with harness(tmp_path, rules) as h:
        assert send(h, BASE + "Subject: maybe spam\r\n")[0] == (451, "4.7.1", "Try again later")
        assert send(h, BASE + "Subject: defer5\r\n")[0] == (451, "4.7.1", "Blocked")
        assert send(h, BASE + "Subject: ok2\r\n")[0] == (451, "4.0.0", "Odd")
        assert send(h, BASE + "Subject: plain\r\n")[0] == (451, "4.7.1", "Message content deferred")
        assert send(h, BASE + "Subject: hard\r\n")[0] == (550, "5.7.2", "Hard")
    warned = [r.getMessage() for r in caplog.records if "as Postfix makes it" in r.getMessage()]  # at load
    assert len(warned) == 2 and "line 2: DEFER 5.7.1" in warned[0] and "line 3: REJECT 2.0.0" in warned[1]
    # A status with no text after it is a status too (it read as the text "4.7.1" of a 550).
    rules = "/^Subject:.*bare4/  REJECT 4.7.1\n/^Subject:.*bare5/  DEFER 5.7.1\n"
    with harness(tmp_path, rules) as h:
        assert send(h, BASE + "Subject: bare4\r\n")[0] == (451, "4.7.1", "Message content rejected")
        assert send(h, BASE + "Subject: bare5\r\n")[0] == (451, "4.7.1", "Message content deferred")


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


@pytest.mark.parametrize("rules,why", [
    ("/^Subject: (.*)SPAM/  REPLACE Subject: $2\n", r"\$2 is out of range: the regex has 1 group"),
    ("/^Subject: (.*)SPAM/  REJECT ${3} and $(1)\n", r"\$\{3\} is out of range"),
    ("/^Subject: (.*)SPAM/  REJECT $0\n", r"\$0 is out of range"),
    ("/^Subject: (.*)SPAM/  REJECT $1x\n", r"\$1x is not a group number"),
    ("/^Subject: (.*)SPAM/  REJECT ${1\n", r"an unclosed \$\{"),
])
def test_a_group_the_regex_does_not_have_is_refused_at_load(tmp_path, rules, why):
    # Postfix refuses an out-of-range $number at load; it used to load and then fail every matching message
    with pytest.raises(PolicyLoadError, match=f"line 1: {why}"):
        harness(tmp_path, rules)


def test_groups_dollars_and_an_unmatched_group(tmp_path):
    rules = ("/^Subject: (a)?(.*)SPAM$/  REJECT [$1] [${2}] [$(2)] costs $$5\n"
             "/^X-(1)(2)(3)(4)(5)(6)(7)(8)(9)(10)(11)(12):/ REJECT twelve $12 ${1}2\n")
    with harness(tmp_path, rules) as h:
        assert send(h, BASE + "Subject: hello SPAM\r\n")[0] == (550, "5.7.1", "[] [hello ] [hello ] costs $5")
        assert send(h, BASE + "X-123456789101112: x\r\n")[0].text == "twelve 12 12"


def test_postfix_table_syntax(tmp_path):
    # tabs and runs of blanks between the fields, any delimiter, "! /x/", pcre_table(5) flags, POSIX classes
    rules = ("/^Subject:.*tabbed/\tREJECT\t5.7.1\tTab separated\n"
             "|^X-Path: a/b|   REJECT   bar delimited\n"
             "%^X-Pct: a\\%b%  REJECT percent delimited, escaped inside\n"
             "/^X-Dot: a.b$/s  REJECT s flag\n"
             "/Anchored/A  REJECT anchored\n"
             "/^X-Greedy: (a+)/U  REJECT ungreedy [$1]\n"
             "/^X-Lazy: (a+?)/U  REJECT lazy under U [$1]\n"
             "/^X-Ends: a$/EX  REJECT no effect flags\n"
             "/^X-Class: [[:digit:]]+[[:space:]][^[:alpha:]]$/  REJECT posix classes\n"
             "! /^(From|To|Date|Subject|X-.*):/ REJECT 5.7.0 Header not allowed\n")
    with harness(tmp_path, rules) as h:
        assert send(h, BASE + "Subject: tabbed\r\n")[0] == (550, "5.7.1", "Tab separated")
        assert send(h, BASE + "X-Path: a/b\r\n")[0].text == "bar delimited"
        assert send(h, BASE + "X-Pct: a%b\r\n")[0].text == "percent delimited, escaped inside"
        assert send(h, BASE + "Reply-To: c@example.com\r\n")[0] == (550, "5.7.0", "Header not allowed")
        assert send(h, BASE + "X-Dot: axb\r\n")[0].text == "s flag"
        assert send(h, BASE + "X-Anchored: 1\r\n")[0].code == 250  # not at the start of the field
        assert send(h, "Anchored: 1\r\n" + BASE)[0].text == "anchored"
        assert send(h, BASE + "X-Greedy: aaa\r\n")[0].text == "ungreedy [a]"
        assert send(h, BASE + "X-Lazy: aaa\r\n")[0].text == "lazy under U [aaa]"
        assert send(h, BASE + "X-Ends: a\r\n")[0].text == "no effect flags"
        assert send(h, BASE + "X-Class: 42 !\r\n")[0].text == "posix classes"
        assert send(h, BASE + "X-Class: 42 z\r\n")[0].code == 250


def test_if_endif_blocks_nest(tmp_path):
    rules = ("if /^Subject:/\n"
             "/viagra/  REJECT spam subject\n"
             "IF !/urgent/\n"
             "/money/  REJECT money without urgency\n"
             "endif\n"
             "/^Subject: (.*) now$/  REPLACE Subject: $1\n"
             "ENDIF\n"
             "/viagra/  WARN viagra elsewhere\n")
    with harness(tmp_path, rules) as h:
        assert send(h, BASE + "Subject: viagra\r\n")[0].text == "spam subject"
        assert send(h, BASE + "Subject: money\r\n")[0].text == "money without urgency"
        assert send(h, BASE + "Subject: urgent money\r\n")[0].code == 250
        reply, delivered = send(h, BASE + "Subject: act now\r\nX-Note: viagra\r\n")
        assert reply.code == 250 and b"\r\nSubject: act\r\n" in delivered.message
        assert any("warning X-Note (header_checks line 8): viagra elsewhere" in l.message for l in h.logs)


@pytest.mark.parametrize("rules,line,why", [
    ("if /a/\n/b/ REJECT\n", 1, "an if without its endif"),
    ("/b/ REJECT\nendif\n", 2, "an endif without its if"),
    ("if /a/\n  /b/ REJECT\nendif\n", 1, "text after the if's regex"),
    ("endif x\n", 1, "text after endif"),
    ("/a/U$ REJECT\n", 1, r"unknown flag '\$'"),
    ("/a+/Ux REJECT\n", 1, "U flag cannot be combined with x"),
    ("/[[:alpah:]]/ REJECT\n", 1, r"\[:alpah:\] is not supported"),
    ("!\n", 1, "no /regex/ after the !"),
    ("|abc REJECT\n", 1, r"not closed \(no second '\|'\)"),
])
def test_block_and_flag_errors_say_which_line(tmp_path, rules, line, why):
    with pytest.raises(PolicyLoadError, match=f"line {line}: .*{why}"):
        harness(tmp_path, rules)

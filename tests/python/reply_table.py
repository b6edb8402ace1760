"""One table of expected replies, run against portcullis.testing's Harness
(tests/python/test_reply_table.py) and the built daemon
(tests/e2e/test_reply_table.py), so that the two cannot drift (issue 7).

Each case is a policy, a dialogue and, for every step, the exact reply the
client gets when the upstream accepts everything with the words the harness
simulates (MAIL ``250 2.1.0 Ok``, RCPT ``250 2.1.5 Ok``, end of data
``250 2.0.0 Ok``); ``delivered`` is what reaches the upstream. The replies
are those docs/policy-api.md and CONTRACT.md promise.
"""

from __future__ import annotations

import base64
import textwrap
from dataclasses import dataclass, field

#: What the upstream answers, for the daemon's fake upstream: the harness's words.
UPSTREAM_SCRIPT = {
    "MAIL": "250 2.1.0 Ok",
    "RCPT": "250 2.1.5 Ok",
    "DOT": "250 2.0.0 Ok",
    "RSET": "250 2.0.0 Ok",
}
HOSTNAME = "mx.test"
POLICY_FAILURE = (451, "4.3.0", "Temporary policy failure, try again later")
TOO_MANY = (550, "5.5.3", "Too many recipients")  # a rewrite past max_recipients: the same at every try
# A message a policy edited past max_message_size: so again at every try, refused for good.
TOO_BIG = (552, "5.3.4", "Message size exceeds fixed maximum message size")
MESSAGE = b"Subject: table\r\n\r\nbody\r\n"


@dataclass(frozen=True)
class Step:
    """A client command and the reply it gets. ``command``: ``CONNECT`` (the
    greeting), ``EHLO name``, ``AUTH PLAIN user password``, ``MAIL FROM:<a>``,
    ``RCPT TO:<a>``, ``DATA`` (with ``message``), ``RSET`` or ``QUIT``.
    ``text`` None: not compared (the EHLO extension list is the daemon's)."""

    command: str
    code: int
    status: str = ""
    text: str | None = None
    message: bytes = MESSAGE


@dataclass(frozen=True)
class Case:
    name: str
    policy: str
    steps: tuple[Step, ...]
    #: (sender, recipients) of each message the upstream gets, in order.
    delivered: tuple[tuple[str, tuple[str, ...]], ...] = ()
    #: Tables the daemon needs besides [policy] (AUTH without TLS, for one); the harness's config.
    tables: dict = field(default_factory=dict)
    #: The daemon does not do this yet: why, and where the fix belongs.
    daemon_xfail: str | None = None

    @property
    def source(self) -> str:
        return "import portcullis as pc\n\n" + textwrap.dedent(self.policy)


def auth_plain(user: str, password: str) -> str:
    """The AUTH PLAIN command line for user/password (RFC 4616 §2)."""
    return "AUTH PLAIN " + base64.b64encode(f"\0{user}\0{password}".encode()).decode()


HELLO = Step("CONNECT", 220, "", f"{HOSTNAME} ESMTP Portcullis")
EHLO = Step("EHLO client.test", 250)
AUTH_TABLES = {"auth": {"allow_plaintext": True}}
LIMITS = {"server": {"max_recipients": 2, "max_message_size": 1000}}


def _auth_case(name: str, verdict: str, reply: tuple[int, str, str], daemon_xfail: str | None = None) -> Case:
    return Case(name, f"""
        def on_auth(conn, mechanism, username, password):
            return {verdict}
        """, (HELLO, EHLO, Step("AUTH PLAIN alice secret", *reply)), tables=AUTH_TABLES, daemon_xfail=daemon_xfail)


CASES: list[Case] = [
    Case("no-opinion", "def on_mail(tx, sender): return None\n", (
        HELLO, EHLO,
        Step("MAIL FROM:<ann@example.test>", 250, "2.1.0", "Ok"),
        Step("RCPT TO:<bob@example.test>", 250, "2.1.5", "Ok"),
        Step("DATA", 250, "2.0.0", "Ok"),
        Step("QUIT", 221, "2.0.0", f"{HOSTNAME} Bye"),
    ), delivered=(("ann@example.test", ("bob@example.test",)),)),
    Case("connect-reject", """
        def on_connect(conn):
            return pc.reject("Go away", code=550, status="5.7.1")
        """, (Step("CONNECT", 554, "5.7.1", "Go away"),)),
    # RFC 7504's 521 ("does not accept mail") is a greeting's too: given, it is kept.
    Case("connect-reject-521", """
        def on_connect(conn):
            return pc.reject("No mail here", code=521, status="5.3.2")
        """, (Step("CONNECT", 521, "5.3.2", "No mail here"),)),
    Case("connect-tempfail", """
        def on_connect(conn):
            return pc.tempfail("Busy", code=451, status="4.7.1")
        """, (Step("CONNECT", 421, "4.7.1", "Busy"),)),
    Case("connect-accept-text", """
        def on_connect(conn):
            return pc.accept("Welcome")
        """, (Step("CONNECT", 220, "", f"{HOSTNAME} Welcome"),)),
    Case("helo-reject", """
        def on_helo(conn, hostname):
            return pc.reject("Bad HELO", code=550, status="5.7.1")
        """, (HELLO, Step("EHLO client.test", 550, "5.7.1", "Bad HELO"),)),
    _auth_case("auth-true", "True", (235, "2.7.0", "Authentication successful")),
    _auth_case("auth-false", "False", (535, "5.7.8", "Authentication credentials invalid")),
    _auth_case("auth-reject", 'pc.reject("Not today", code=535, status="5.7.8")', (535, "5.7.8", "Not today")),
    _auth_case("auth-tempfail", 'pc.tempfail("Directory down", code=454, status="4.7.0")',
               (454, "4.7.0", "Directory down")),
    # docs/policy-api.md: "True or accept(...) authenticates the client (235 2.7.0, or your text)".
    _auth_case("auth-accept-text", 'pc.accept("Welcome aboard")', (235, "2.7.0", "Welcome aboard")),
    _auth_case("auth-none", "None", (535, "5.7.8", "Authentication credentials invalid")),
    Case("mail-reject", """
        def on_mail(tx, sender):
            return pc.reject("Sender refused", code=553, status="5.7.1")
        """, (HELLO, EHLO, Step("MAIL FROM:<ann@example.test>", 553, "5.7.1", "Sender refused"),
              Step("RCPT TO:<bob@example.test>", 503, "5.5.1", None))),
    Case("mail-accept-text", """
        def on_mail(tx, sender):
            return pc.accept("Fine by me")
        """, (HELLO, EHLO, Step("MAIL FROM:<ann@example.test>", 250, "2.1.0", "Fine by me"))),
    Case("rcpt-tempfail-then-next", """
        def on_rcpt(tx, rcpt):
            if rcpt.local == "grey":
                return pc.tempfail("Greylisted", code=450, status="4.2.0")
        """, (HELLO, EHLO,
              Step("MAIL FROM:<ann@example.test>", 250, "2.1.0", "Ok"),
              Step("RCPT TO:<grey@example.test>", 450, "4.2.0", "Greylisted"),
              Step("RCPT TO:<bob@example.test>", 250, "2.1.5", "Ok"),
              Step("DATA", 250, "2.0.0", "Ok")),
         delivered=(("ann@example.test", ("bob@example.test",)),)),
    Case("rcpt-discard", """
        def on_rcpt(tx, rcpt):
            if rcpt.local == "void":
                return pc.discard()
        """, (HELLO, EHLO,
              Step("MAIL FROM:<ann@example.test>", 250, "2.1.0", "Ok"),
              Step("RCPT TO:<void@example.test>", 250, "2.1.5", "Ok"),
              Step("RCPT TO:<bob@example.test>", 250, "2.1.5", "Ok"),
              Step("DATA", 250, "2.0.0", "Ok")),
         delivered=(("ann@example.test", ("bob@example.test",)),)),
    # A mailbox is delivered once: the domain compares without case (RFC 5321 §2.4),
    # among the redirect's own targets and against the recipients already there.
    Case("redirect-once", """
        def on_rcpt(tx, rcpt):
            if rcpt.local == "team":
                return pc.redirect("ann@EXAMPLE.test", "bob@example.test", "bob@Example.Test")
        """, (HELLO, EHLO,
              Step("MAIL FROM:<zed@example.test>", 250, "2.1.0", "Ok"),
              Step("RCPT TO:<ann@example.test>", 250, "2.1.5", "Ok"),
              Step("RCPT TO:<team@example.test>", 250, "2.1.5", "Ok"),
              Step("RCPT TO:<BOB@example.test>", 250, "2.1.5", "Ok"),
              Step("DATA", 250, "2.0.0", "Ok")),
         delivered=(("zed@example.test", ("ann@example.test", "bob@example.test", "BOB@example.test")),)),
    Case("redirect-accept-text-not-shown", """
        def on_rcpt(tx, rcpt):
            return pc.redirect("ann@example.test")
        """, (HELLO, EHLO,
              Step("MAIL FROM:<zed@example.test>", 250, "2.1.0", "Ok"),
              Step("RCPT TO:<x@example.test>", 250, "2.1.5", "Ok"),
              Step("RCPT TO:<y@example.test>", 250, "2.1.5", "Ok"),
              Step("DATA", 250, "2.0.0", "Ok")),
         delivered=(("zed@example.test", ("ann@example.test",)),)),
    # A first line that continues nothing: refused before any policy (the policies would read it
    # as the body's start, the upstream as a continuation of our Received:).
    Case("data-first-line-white-space", """
        def on_data(tx, message):
            return pc.accept()
        """, (HELLO, EHLO,
              Step("MAIL FROM:<ann@example.test>", 250, "2.1.0", "Ok"),
              Step("RCPT TO:<bob@example.test>", 250, "2.1.5", "Ok"),
              Step("DATA", 550, "5.6.0", "Message refused: its first line starts with white space",
                   message=b" x\r\nSubject: hidden\r\n\r\nbody\r\n"))),
    Case("data-discard", """
        def on_data(tx, message):
            return pc.discard()
        """, (HELLO, EHLO,
              Step("MAIL FROM:<ann@example.test>", 250, "2.1.0", "Ok"),
              Step("RCPT TO:<bob@example.test>", 250, "2.1.5", "Ok"),
              Step("DATA", 250, "2.0.0", "Ok: discarded"))),
    Case("data-accept-text", """
        def on_data(tx, message):
            return pc.accept("Thanks")
        """, (HELLO, EHLO,
              Step("MAIL FROM:<ann@example.test>", 250, "2.1.0", "Ok"),
              Step("RCPT TO:<bob@example.test>", 250, "2.1.5", "Ok"),
              Step("DATA", 250, "2.0.0", "Thanks")),
         delivered=(("ann@example.test", ("bob@example.test",)),)),
    Case("data-raises", """
        def on_data(tx, message):
            raise RuntimeError("boom")
        """, (HELLO, EHLO,
              Step("MAIL FROM:<ann@example.test>", 250, "2.1.0", "Ok"),
              Step("RCPT TO:<bob@example.test>", 250, "2.1.5", "Ok"),
              Step("DATA", *POLICY_FAILURE),
              Step("RSET", 250, "2.0.0", "Ok"))),
    Case("rewrites-deliver-once", """
        def on_data(tx, message):
            tx.sender = "new@example.test"
            tx.recipients = ["c@example.test", "c@EXAMPLE.TEST", "d@example.test"]
        """, (HELLO, EHLO,
              Step("MAIL FROM:<ann@example.test>", 250, "2.1.0", "Ok"),
              Step("RCPT TO:<bob@example.test>", 250, "2.1.5", "Ok"),
              Step("DATA", 250, "2.0.0", "Ok")),
         delivered=(("new@example.test", ("c@example.test", "d@example.test")),)),
    # server.max_recipients counts accepted RCPTs (discarded ones too) and the mailboxes to
    # deliver to; a rewrite past it is a policy error, and one past max_message_size too, both refused for good.
    Case("rcpt-discarded-count-toward-max-recipients", """
        def on_rcpt(tx, rcpt):
            if rcpt.local.startswith("void"):
                return pc.discard()
        """, (HELLO, EHLO,
              Step("MAIL FROM:<ann@example.test>", 250, "2.1.0", "Ok"),
              Step("RCPT TO:<void1@example.test>", 250, "2.1.5", "Ok"),
              Step("RCPT TO:<void2@example.test>", 250, "2.1.5", "Ok"),
              Step("RCPT TO:<bob@example.test>", 452, "4.5.3", "Too many recipients")), tables=LIMITS),
    Case("rcpt-redirect-targets-pass-max-recipients", """
        def on_rcpt(tx, rcpt):
            if rcpt.local == "team":
                return pc.redirect("t1@example.test", "t2@example.test")
        """, (HELLO, EHLO,
              Step("MAIL FROM:<zed@example.test>", 250, "2.1.0", "Ok"),
              Step("RCPT TO:<ann@example.test>", 250, "2.1.5", "Ok"),
              Step("RCPT TO:<team@example.test>", 452, "4.5.3", "Too many recipients"),
              Step("DATA", 250, "2.0.0", "Ok")),
         delivered=(("zed@example.test", ("ann@example.test",)),), tables=LIMITS),
    Case("rcpt-redirect-past-max-recipients", """
        def on_rcpt(tx, rcpt):
            if rcpt.local == "team":
                return pc.redirect("t1@example.test", "t2@example.test", "t3@example.test")
        """, (HELLO, EHLO,
              Step("MAIL FROM:<zed@example.test>", 250, "2.1.0", "Ok"),
              Step("RCPT TO:<team@example.test>", *TOO_MANY),
              Step("RCPT TO:<ann@example.test>", 250, "2.1.5", "Ok"),
              Step("DATA", 250, "2.0.0", "Ok")),
         delivered=(("zed@example.test", ("ann@example.test",)),), tables=LIMITS),
    Case("rcpt-recipients-grown-past-max", """
        def on_rcpt(tx, rcpt):
            if rcpt.local == "grow":
                tx.recipients.extend(["g1@example.test", "g2@example.test", "g3@example.test"])
        """, (HELLO, EHLO,
              Step("MAIL FROM:<zed@example.test>", 250, "2.1.0", "Ok"),
              Step("RCPT TO:<grow@example.test>", *TOO_MANY),
              Step("RCPT TO:<ann@example.test>", 250, "2.1.5", "Ok"),
              Step("DATA", 250, "2.0.0", "Ok")),
         delivered=(("zed@example.test", ("ann@example.test",)),), tables=LIMITS),
    Case("data-message-past-max-message-size", """
        def on_data(tx, message):
            message.body = b"zzzzzzzzz\\r\\n" * 100  # 1100 octets, in lines of 11
        """, (HELLO, EHLO,
              Step("MAIL FROM:<ann@example.test>", 250, "2.1.0", "Ok"),
              Step("RCPT TO:<bob@example.test>", 250, "2.1.5", "Ok"),
              Step("DATA", *TOO_BIG)), tables=LIMITS),
    # [relay]: a client neither authenticated nor trusted sends only to local_domains,
    # decided before the policy hears of the recipient.
    Case("relay-access-denied", """
        def on_rcpt(tx, rcpt):
            if rcpt.domain.lower() != "example.test":  # never asked: the guard refused it first
                return pc.accept("Asked")
        """, (HELLO, EHLO,
              Step("MAIL FROM:<ann@example.test>", 250, "2.1.0", "Ok"),
              Step("RCPT TO:<x@other.test>", 554, "5.7.1", "Relay access denied"),
              Step("RCPT TO:<bob@EXAMPLE.test>", 250, "2.1.5", "Ok"),
              Step("DATA", 250, "2.0.0", "Ok")),
         delivered=(("ann@example.test", ("bob@EXAMPLE.test",)),),
         tables={"relay": {"local_domains": ["example.test"]}}),
]

IDS = [c.name for c in CASES]

"""Attempts by a policy to put malformed or injected bytes on the wire are
refused with 451 4.3.0 and nothing is delivered (issue 3, "Safety of
rewrites"): header names and values with CR/LF/NUL (ValueError inside the
hook), reply texts with CR/LF, codes of the wrong class, invalid rewritten
addresses. Where a policy gets past the Python checks (forging a frozen
verdict or an Address, or disabling the Python validators) the daemon's own
C++ re-validation must still refuse.

Most cases leave no state behind, so they share one daemon (module scope):
its policy holds one function per case, picked by the sender "caseN@...".
"""

from __future__ import annotations

import re
import textwrap

import pytest

from conftest import AiosmtpdUpstream, Daemon, sanitized_python_env

POLICY_FAILURE = "Temporary policy failure, try again later"
MESSAGE = b"Subject: injection\r\nFrom: Ann <ann@example.test>\r\n\r\nHello\r\n"
ARGS = {"mail": "tx, sender", "rcpt": "tx, rcpt", "data": "tx, message"}

# Logged for a hook that raised ValueError, and for a refusal by the C++ re-validation.
RAISED = (r"^\S+ error SID: on_STAGE in \S+ raised an exception:\n\S+ error SID: Traceback \(most recent call last\):\n"
          r"(?:.*\n)*?\S+ error SID: ValueError: ")
CPP = r"^\S+ error SID: policy error in on_STAGE: "


def exact(r, code: int, status: str, text: str) -> None:
    assert (r.code, r.status, r.text) == (code, status, text), f"got {r}"


# (id, stage, hook body, log pattern)
CASES: list[tuple[str, str, str, str]] = []


def case(group: str, stage: str, body: str, log: str, name: str):
    CASES.append((f"{group}-{name}", stage, textwrap.dedent(body).strip(), log))


# -- header names and values: ValueError inside the hook ----------------------------------

for name, call in [
    ("value-crlf", "message.add_header('X-Evil', 'a\\r\\nBcc: victim@example.test')"),
    ("value-lf", "message.add_header('X-Evil', 'a\\nBcc: victim@example.test')"),
    ("value-cr", "message.add_header('X-Evil', 'a\\rb')"),
    ("value-nul", "message.add_header('X-Evil', 'a\\x00b')"),
    ("name-crlf", "message.add_header('X-Evil\\r\\nBcc', 'victim@example.test')"),
    ("name-field", "message.add_header('Bcc: victim@example.test\\r\\nX-Evil', 'x')"),
    ("name-space", "message.add_header('X Evil', 'x')"),
    ("name-colon", "message.add_header('X-Evil:', 'x')"),
    ("name-empty", "message.add_header('', 'x')"),
    # Lone surrogates are how 8-bit octets travel; these would be CR LF.
    ("value-surrogate-crlf", "message.add_header('X-Evil', 'a\\udc0d\\udc0aBcc: victim@example.test')"),
    ("replace-value-crlf", "message.replace_header('Subject', 'x\\r\\n\\r\\nInjected body')"),
    ("replace-name-lf", "message.replace_header('Subject\\n', 'x')"),
    ("body-nul", "message.body = b'body with a NUL \\x00'"),
]:
    case("header", "data", call, RAISED, name)

# -- verdicts: ValueError where the verdict is made ---------------------------------------

for name, stage, verdict in [
    ("reject-crlf", "mail", "pc.reject('No\\r\\n250 2.0.0 Ok')"),
    ("reject-crlf", "rcpt", "pc.reject('No\\r\\n250 2.0.0 Ok')"),
    ("reject-crlf", "data", "pc.reject('No\\r\\n250 2.0.0 Ok')"),
    ("tempfail-lf", "rcpt", "pc.tempfail('Later\\n250 2.1.5 Ok')"),
    ("reject-nul", "rcpt", "pc.reject('NUL\\x00')"),
    ("accept-crlf", "data", "pc.accept('Fine\\r\\n554 5.0.0 Forged')"),
    ("reject-2xx", "mail", "pc.reject('ok', code=250, status='2.0.0')"),
    ("reject-2xx", "rcpt", "pc.reject('ok', code=250, status='2.0.0')"),
    ("reject-2xx", "data", "pc.reject('ok', code=250, status='2.0.0')"),
    ("reject-2xx-5status", "rcpt", "pc.reject('ok', code=250)"),
    ("tempfail-5xx", "rcpt", "pc.tempfail('later', code=550, status='5.7.1')"),
    ("reject-4status", "rcpt", "pc.reject('mixed', code=550, status='4.7.1')"),
    ("reject-599", "rcpt", "pc.reject('bad code', code=599)"),
    ("reject-too-long", "rcpt", "pc.reject('x' * 600)"),
]:
    case("verdict", stage, f"return {verdict}", RAISED, f"{stage}-{name}")

# -- verdicts forged past the Python checks: the C++ re-validation refuses ------------------

FORGE = """
    v = {verdict}
    for name, value in {changes}.items():
        object.__setattr__(v, name, value)
    return v
"""
for name, verdict, changes in [
    ("reject-250", "pc.reject('No')", {"code": 250, "status": "2.0.0"}),
    ("reject-250-5status", "pc.reject('No')", {"code": 250}),
    ("reject-crlf", "pc.reject('No')", {"text": "No\r\n250 2.0.0 Ok"}),
    ("reject-nul", "pc.reject('No')", {"text": "No\x00"}),
    ("reject-4status", "pc.reject('No')", {"status": "4.7.1"}),
    ("reject-short-status", "pc.reject('No')", {"status": "5.7"}),
    ("tempfail-550", "pc.tempfail('Later')", {"code": 550}),
    ("tempfail-4510", "pc.tempfail('Later')", {"code": 4510}),
    ("accept-crlf", "pc.accept('Fine')", {"text": "Fine\r\n554 5.0.0 Forged"}),
    ("accept-as-reject", "pc.accept()", {"kind": "reject"}),
    ("redirect-nowhere", "pc.redirect('ok@example.test')", {"addresses": ()}),
    # Code with a second digit over 5 (RFC 5321 §4.2.1); a line over 512 octets (§4.5.3.1.5).
    ("reject-599", "pc.reject('No')", {"code": 599}),
    ("reject-line-522-octets", "pc.reject('No')", {"text": "x" * 510}),
]:
    case("forged-verdict", "rcpt", FORGE.format(verdict=verdict, changes=changes),
         CPP + r"(invalid|redirect without)", name)

# -- addresses ---------------------------------------------------------------------------

for name, stage, body in [
    ("sender-syntax", "mail", "tx.sender = 'not an address'"),
    ("sender-crlf", "mail", "tx.sender = 'a@example.test>\\r\\nRCPT TO:<victim@example.test'"),
    ("sender-postmaster", "mail", "tx.sender = 'Postmaster'"),
    ("rcpt-double-at", "rcpt", "tx.recipients.append('two@@example.test')"),
    ("rcpt-brackets", "rcpt", "tx.recipients = ['ok@example.test', '<victim@example.test>']"),
    ("rcpt-null", "rcpt", "tx.recipients.append('')"),
    ("redirect-crlf", "rcpt", "return pc.redirect('victim@example.test\\r\\nDATA')"),
    ("sender-local-too-long", "data", "tx.sender = 'x' * 65 + '@example.test'"),
    ("rcpt-space", "data", "tx.recipients.insert(0, 'a b@example.test')"),
]:
    case("address", stage, body, RAISED, name)

# Address objects forged past their parser: the C++ re-validation refuses.
for name, stage, body, what in [
    ("sender-crlf", "mail", """
        a = pc.Address("ann@example.test")
        a._domain = "example.test>\\r\\nRCPT TO:<victim@example.test"
        tx.sender = a
     """, "invalid sender from policy"),
    ("recipient-two-ats", "data", """
        a = pc.Address("bob@example.test")
        a._local = "bob@victim"
        tx.recipients.append(a)
     """, "invalid recipient from policy"),
    ("redirect-crlf", "rcpt", """
        a = pc.Address("bob@example.test")
        a._domain = "example.test\\r\\nRCPT TO:<victim@example.test>"
        return pc.redirect(a)
     """, "invalid redirect address"),
]:
    case("forged-address", stage, body, CPP + what + ": ", name)


def shared_policy() -> str:
    out = ["import portcullis as pc", "", "STAGES = {}", "CASES = {}", ""]
    for n, (_, stage, body, _) in enumerate(CASES):
        out += [f"def case{n}({ARGS[stage]}):", textwrap.indent(body, "    "), "",
                f"STAGES[{n}] = {stage!r}", f"CASES[{n}] = case{n}", ""]
    out.append(textwrap.dedent("""
        def pick(tx, stage):
            local = tx.sender.local
            if local.startswith("case") and STAGES[int(local[4:])] == stage:
                return CASES[int(local[4:])]

        def on_mail(tx, sender):
            if f := pick(tx, "mail"):
                return f(tx, sender)

        def on_rcpt(tx, rcpt):
            if f := pick(tx, "rcpt"):
                return f(tx, rcpt)

        def on_data(tx, message):
            if f := pick(tx, "data"):
                return f(tx, message)
    """))
    return "\n".join(out)


@pytest.fixture(scope="module")
def shared(portcullis_bin, tmp_path_factory):
    """One upstream and one daemon running every case of CASES."""
    upstream = AiosmtpdUpstream()
    upstream.controller.start()
    workdir = tmp_path_factory.mktemp("injection")
    policy = workdir / "cases.py"
    policy.write_text(shared_policy())
    with pytest.MonkeyPatch.context() as mp:
        for name, value in sanitized_python_env().items():
            mp.setenv(name, value)
        d = Daemon(portcullis_bin, workdir, upstream.url, {"policy": {"files": [str(policy)]}}, None).start()
    yield d, upstream
    rc = d.stop()
    upstream.controller.stop()
    assert rc == 0, d.log_text()[-4000:]


def run_to(c, stage: str, sender: str):
    """MAIL, RCPT, DATA up to `stage`; returns the reply at that stage."""
    c.cmd(f"MAIL FROM:<{sender}>")
    r = c.reply()
    if stage == "mail":
        return r
    assert r.code == 250, r
    c.cmd("RCPT TO:<bob@example.test>")
    r = c.reply()
    if stage == "rcpt":
        return r
    assert r.code == 250, r
    c.exchange("DATA", 354)
    c.send(MESSAGE + b".\r\n")
    return c.reply()




@pytest.mark.parametrize(
    "n", [pytest.param(n, id=c[0]) for n, c in enumerate(CASES)])
def test_refused_with_451_and_nothing_delivered(shared, n):
    d, upstream = shared
    _, stage, _, log = CASES[n]
    delivered_before = len(upstream.envelopes)
    with d.connect() as c:
        sid = d.session_id(c.local_port)
        r = run_to(c, stage, f"case{n}@example.test")
        assert r.raw == f"451 4.3.0 {POLICY_FAILURE}\r\n".encode()
        # The session lives on.
        c.exchange("RSET", 250, "2.0.0")
        c.exchange("QUIT", 221)
    d.wait_log(rf"{sid}: disconnect from")
    d.wait_log(log.replace("SID", sid).replace("STAGE", stage))
    assert len(upstream.envelopes) == delivered_before
    assert not any("victim" in r for r, _ in upstream.handler.rcpts)
    assert d.proc.poll() is None


# -- cases with a daemon of their own ---------------------------------------------------


def hook(name: str, body: str) -> str:
    return ("import portcullis as pc\nimport _portcullis_core\n\n"
            f"def {name}({ARGS[name[3:]]}):\n" + textwrap.indent(textwrap.dedent(body).strip(), "    ") + "\n")


def test_a_policy_that_catches_the_value_error_delivers_the_clean_message(policy_daemon, aiosmtpd_upstream):
    d = policy_daemon(aiosmtpd_upstream.url, hook("on_data", """
        try:
            message.add_header("X-Evil", "a\\r\\nBcc: victim@example.test")
        except ValueError as e:
            message.add_header("X-Refused", type(e).__name__)
    """))
    with d.connect() as c:
        exact(run_to(c, "data", "ann@example.test"), 250, "2.0.0", "Ok: queued as AIO00001 (aiosmtpd)")
    [env] = aiosmtpd_upstream.wait_messages(1)
    assert env["content"].endswith(b"\r\nX-Refused: ValueError\r\n" + MESSAGE)
    assert b"victim" not in env["content"] and env["rcpt_tos"] == ["bob@example.test"]


@pytest.mark.parametrize(
    "body,problem",
    [
        # A header value with a bare LF, past disabled Python validators.
        ("""
            _portcullis_core.check_header_value = lambda value: None
            _portcullis_core.check_message = lambda raw: None
            message.add_header("X-Evil", "a\\nBcc: victim@example.test")
         """, "bare"),
        # A body with a bare CR, set behind the property's back.
        ("""
            _portcullis_core.check_message = lambda raw: None
            message.add_header("X-Ok", "1")
            message.headers  # parsed now: the body is read from its slot
            message._body = b"line\\rMAIL FROM:<evil@example.test>\\r\\n"
            message._body_set = True  # (else the body as received goes, under the new header section)
         """, "bare"),
        ("""
            _portcullis_core.check_message = lambda raw: None
            message.add_header("X-Ok", "1")
            message.headers  # parsed now: the body is read from its slot
            message._body = b"NUL \\x00 here\\r\\n"
            message._body_set = True
         """, "NUL"),
        # A new header section over the body as received (message_keep_from), forged.
        ("""
            _portcullis_core.check_message = lambda raw: None
            message.add_header("X-Ok", "1")
            message.headers  # parsed now: a change of fields alone goes as a new header section
            message._fields[0].raw = b"X-Ok: 1\\nBcc: victim@example.test\\r\\n"
         """, "bare"),
        # ... or kept from elsewhere than where the body as received starts, or without its empty line.
        ("""
            message.add_header("X-Ok", "1")
            message.headers
            message._body_start -= 1
         """, "the body it keeps does not start where the received one does"),
        ("""
            message.add_header("X-Ok", "1")
            message.headers
            message._body_start += 2
         """, "the body it keeps does not start where the received one does"),
        ("""
            message.add_header("X-Ok", "1")
            message.headers
            type(message)._head_parts = lambda self, fields_as=None: [b"X-Ok: 1\\r\\n"]
         """, "its header section does not end with an empty line"),
        # Fields for the top of the message (the daemon puts them above its own copy), forged
        # in the bytes it reads them from.
        ("""
            message.add_header("X-Ok", "1")
            message._prepended[0].raw = b"X-Ok: 1\\r\\n\\r\\nInjected: body\\r\\n"
         """, "an empty line"),
        ("""
            message.add_header("X-Ok", "1")
            message._prepended[0].raw = b"X-Ok: 1"
         """, "does not end with CRLF"),
    ],
    ids=["header-bare-lf", "body-bare-cr", "body-nul", "head-bare-lf", "keep-from-before", "keep-from-after",
         "head-no-empty-line", "top-empty-line", "top-no-crlf"],
)
def test_cpp_refuses_a_malformed_message_past_python(policy_daemon, aiosmtpd_upstream, body, problem):
    """These disable the interpreter-wide Python validators: a daemon each."""
    d = policy_daemon(aiosmtpd_upstream.url, hook("on_data", body))
    with d.connect() as c:
        sid = d.session_id(c.local_port)
        assert run_to(c, "data", "ann@example.test").raw == f"451 4.3.0 {POLICY_FAILURE}\r\n".encode()
        c.exchange("QUIT", 221)
    d.wait_log(rf"^\S+ error {sid}: policy error in on_data: invalid message from policy: .*{problem}")
    assert aiosmtpd_upstream.envelopes == []


def test_non_ascii_rewrite_needs_smtputf8(policy_daemon, aiosmtpd_upstream):
    """An internationalised address from a policy may only go upstream in an SMTPUTF8 transaction."""
    d = policy_daemon(aiosmtpd_upstream.url, """
        import portcullis as pc

        def on_mail(tx, sender):
            tx.sender = "用户@例子.test"

        def on_rcpt(tx, rcpt):
            return pc.redirect("пример@example.test")
    """)
    with d.connect() as c:
        sid = d.session_id(c.local_port)
        exact(c.exchange("MAIL FROM:<ann@example.test>", 451), 451, "4.3.0", POLICY_FAILURE)
        c.exchange("MAIL FROM:<ann@example.test> SMTPUTF8", 250, "2.1.0")
        c.exchange("RCPT TO:<bob@example.test>", 250, "2.1.5")
        c.exchange("DATA", 354)
        c.send(MESSAGE + b".\r\n")
        exact(c.reply(), 250, "2.0.0", "Ok: queued as AIO00001 (aiosmtpd)")
    d.wait_log(rf"^\S+ error {sid}: policy error in on_mail: invalid sender from policy: 用户@例子\.test$")
    [env] = aiosmtpd_upstream.wait_messages(1)
    assert (env["mail_from"], env["rcpt_tos"], env["smtp_utf8"]) == ("用户@例子.test", ["пример@example.test"], True)

"""AUTH (RFC 4954) PLAIN (RFC 4616) and LOGIN against `[auth] users_file`
(crypt(3) hashes made at test time) and the on_auth hook: offered only over
TLS unless allow_plaintext, every parsing edge case, one reply for unknown
user and wrong password, per-session and per-address failure limits,
credentials never logged, submission mode (require_auth)."""

from __future__ import annotations

import base64

import shutil
import smtplib
import subprocess
import threading
import warnings

import pytest

from conftest import json_lines
from sec_helpers import (  # noqa: F401  (certs, sec_daemon are fixtures)
    b64,
    certs,
    client_context,
    recorder_tables,
    sec_daemon,
    wait_record,
    write_users,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import crypt

ALICE_PW = "Wonderland-7f3kQ"
BOB_PW = "Builder-9q2zX"
CAROL_PW = "Carol-bcrypt-55"
INVALID = b"535 5.7.8 Authentication credentials invalid\r\n"
BODY = b"Subject: auth\r\n\r\nauthenticated"


def plain(authcid: str, password: str, authzid: str = "") -> str:
    return b64(f"{authzid}\0{authcid}\0{password}")


@pytest.fixture
def users_file(tmp_path):
    path = write_users(tmp_path / "users.txt", {"alice": ALICE_PW, "bob": BOB_PW})
    if crypt.METHOD_BLOWFISH in crypt.methods:  # bcrypt $2b$, where libcrypt has it
        with path.open("a") as f:
            f.write(f"carol:{crypt.crypt(CAROL_PW, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=1 << 5))}\n")
    return path


@pytest.fixture
def auth_daemon(sec_daemon, aiosmtpd_upstream, certs, users_file):
    """auth_daemon(auth={...}, server={...}, log_level=None, **tables): TLS + users file."""

    def start(auth=None, server=None, log_level=None, **tables):
        cert, key = certs["mx"]
        return sec_daemon(aiosmtpd_upstream.url, log_level=log_level,
                          tls={"cert": str(cert), "key": str(key)},
                          auth={"users_file": str(users_file), **(auth or {})},
                          server=server or {}, **tables)

    return start


def ehlo_keywords(reply) -> list[str]:
    return reply.lines[1:]


# --------------------------------------------------------------------------
# Offered only over TLS


def test_auth_offered_only_after_starttls(auth_daemon):
    d = auth_daemon()
    with d.client() as c:
        c.expect(220)
        r = c.exchange("EHLO clear.test", 250)
        assert not [l for l in ehlo_keywords(r) if l.upper().startswith("AUTH")], r.lines
        c.exchange("AUTH PLAIN " + plain("alice", ALICE_PW), 538, "5.7.11",
                   "Encryption required for requested authentication mechanism")
        c.exchange("AUTH LOGIN", 538, "5.7.11")
        # AUTH= belongs to the extension (RFC 4954 §5): not offered here, so not taken either.
        c.exchange("MAIL FROM:<alice@example.test> AUTH=<>", 555, "5.5.4")
        c.starttls()
        r = c.exchange("EHLO tls.test", 250)
        assert "AUTH PLAIN LOGIN" in ehlo_keywords(r), r.lines
        c.exchange("AUTH PLAIN " + plain("alice", ALICE_PW), 235, "2.7.0", "Authentication successful")
        # Once authenticated, AUTH is no longer offered, and a second AUTH is a bad sequence.
        r = c.exchange("EHLO tls.test", 250)
        assert "AUTH PLAIN LOGIN" not in ehlo_keywords(r)
        c.exchange("AUTH PLAIN " + plain("bob", BOB_PW), 503, "5.5.1", "Already authenticated")


def test_allow_plaintext_offers_auth_in_clear(auth_daemon, aiosmtpd_upstream):
    d = auth_daemon(auth={"allow_plaintext": True})
    with d.connect() as c:
        r = c.exchange("EHLO clear.test", 250)
        assert "AUTH PLAIN LOGIN" in ehlo_keywords(r)
        assert "STARTTLS" in ehlo_keywords(r)
        c.exchange("AUTH PLAIN " + plain("alice", ALICE_PW), 235, "2.7.0")
        r = c.transaction("alice@example.test", ["x@example.test"], BODY)
        assert (r.code, r.status) == (250, "2.0.0")
    [env] = aiosmtpd_upstream.wait_messages(1)
    # Authenticated in clear: ESMTPA (RFC 3848), not ESMTPSA.
    assert b"(Portcullis) with ESMTPA id " in env["content"].split(b"\r\n\r\n")[0]


def test_auth_without_auth_table_502(sec_daemon, aiosmtpd_upstream, certs):
    cert, key = certs["mx"]
    d = sec_daemon(aiosmtpd_upstream.url, tls={"cert": str(cert), "key": str(key)})
    c = d.tls_connect()
    r = c.exchange("EHLO x.test", 250)
    assert not [l for l in ehlo_keywords(r) if l.startswith("AUTH")]
    c.exchange("AUTH PLAIN " + plain("alice", ALICE_PW), 502, "5.5.1")
    c.close()


# --------------------------------------------------------------------------
# The mechanisms


def test_plain_with_initial_response_received_esmtpsa(auth_daemon, aiosmtpd_upstream, tmp_path):
    tables, record = recorder_tables(tmp_path)
    d = auth_daemon(**tables)
    with d.tls_connect() as c:
        sid = d.session_of(c.local_port)
        c.exchange("AUTH PLAIN " + plain("alice", ALICE_PW), 235, "2.7.0", "Authentication successful")
        r = c.transaction("alice@example.test", ["x@example.test"], BODY)
        assert (r.code, r.status) == (250, "2.0.0")
        c.exchange("QUIT", 221)
    [env] = aiosmtpd_upstream.wait_messages(1)
    head = env["content"].split(b"\r\n\r\n")[0]
    assert b"(Portcullis) with ESMTPSA id " in head, head
    [mail] = wait_record(record, "mail")
    assert (mail["auth_user"], mail["tls"]) == ("alice", True)
    d.wait_log(rf"{sid}: AUTH PLAIN as alice$")


def test_plain_empty_initial_response_then_challenge(auth_daemon):
    d = auth_daemon()
    with d.tls_connect() as c:
        r = c.exchange("AUTH PLAIN", 334)
        assert r.raw == b"334 \r\n"
        c.exchange(plain("bob", BOB_PW), 235, "2.7.0")
    # "=" is a zero-length initial response (RFC 4954 §4): an empty PLAIN message is malformed.
    with d.tls_connect() as c:
        c.exchange("AUTH PLAIN =", 501, "5.5.2")
        # and an empty response to the challenge too.
        c.exchange("AUTH PLAIN", 334)
        c.exchange("", 501, "5.5.2")


def test_login(auth_daemon, aiosmtpd_upstream):
    d = auth_daemon()
    with d.tls_connect() as c:
        r = c.exchange("AUTH LOGIN", 334)
        assert r.raw == b"334 VXNlcm5hbWU6\r\n"  # "Username:"
        r = c.exchange(b64("alice"), 334)
        assert r.raw == b"334 UGFzc3dvcmQ6\r\n"  # "Password:"
        c.exchange(b64(ALICE_PW), 235, "2.7.0", "Authentication successful")
        r = c.transaction("alice@example.test", ["x@example.test"], BODY)
        assert (r.code, r.status) == (250, "2.0.0")
    # LOGIN with the user name as initial response (as Outlook sends it).
    with d.tls_connect() as c:
        r = c.exchange("AUTH LOGIN " + b64("bob"), 334)
        assert r.raw == b"334 UGFzc3dvcmQ6\r\n"
        c.exchange(b64(BOB_PW), 235, "2.7.0")
    # Lower-case mechanism names are the same mechanisms.
    with d.tls_connect() as c:
        c.exchange("auth plain " + plain("alice", ALICE_PW), 235, "2.7.0")
    [env] = aiosmtpd_upstream.wait_messages(1)
    assert b" with ESMTPSA id " in env["content"]
    d.wait_log(r": AUTH LOGIN as alice$")
    d.wait_log(r": AUTH LOGIN as bob$")


def test_smtplib_login_over_implicit_tls(sec_daemon, aiosmtpd_upstream, certs, users_file):
    cert, key = certs["mx"]
    d = sec_daemon(aiosmtpd_upstream.url, tls_port=True, tls={"cert": str(cert), "key": str(key)},
                   auth={"users_file": str(users_file)}, server={"require_auth": True})
    s = smtplib.SMTP_SSL("127.0.0.1", d.tls_port, local_hostname="smtplib.test", timeout=10, context=client_context())
    s.ehlo()
    assert s.esmtp_features["auth"] == " PLAIN LOGIN"
    assert s.login("alice", ALICE_PW) == (235, b"2.7.0 Authentication successful")
    assert s.sendmail("alice@example.test", ["x@example.test"], BODY) == {}
    s.quit()
    s = smtplib.SMTP_SSL("127.0.0.1", d.tls_port, local_hostname="smtplib.test", timeout=10, context=client_context())
    with pytest.raises(smtplib.SMTPAuthenticationError) as e:
        s.login("alice", BOB_PW)
    assert (e.value.smtp_code, e.value.smtp_error) == (535, b"5.7.8 Authentication credentials invalid")
    s.close()
    [env] = aiosmtpd_upstream.wait_messages(1)
    assert b" with ESMTPSA id " in env["content"]


@pytest.mark.skipif(not shutil.which("swaks"), reason="swaks not installed")
@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_swaks_starttls_auth(auth_daemon, aiosmtpd_upstream, mechanism):
    d = auth_daemon(server={"require_auth": True})
    out = subprocess.run(
        ["swaks", "--server", "127.0.0.1", "--port", str(d.port), "--tls", "--auth", mechanism,
         "--auth-user", "bob", "--auth-password", BOB_PW, "--helo", "swaks.test", "--from", "bob@example.test",
         "--to", "far@away.test", "--data", "Subject: swaks auth\n\nbody", "--timeout", "10"],
        capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "<~  235 2.7.0 Authentication successful" in out.stdout
    assert "<~  250 2.0.0 Ok: queued as AIO00001 (aiosmtpd)" in out.stdout
    [env] = aiosmtpd_upstream.wait_messages(1)
    assert env["rcpt_tos"] == ["far@away.test"]


def test_other_crypt_schemes(auth_daemon):
    if crypt.METHOD_BLOWFISH not in crypt.methods:
        pytest.skip("no bcrypt in this libcrypt")
    d = auth_daemon()
    with d.tls_connect() as c:
        c.exchange("AUTH PLAIN " + plain("carol", CAROL_PW), 235, "2.7.0")
    with d.tls_connect() as c:
        c.exchange("AUTH PLAIN " + plain("carol", CAROL_PW + "x"), 535, "5.7.8")


# --------------------------------------------------------------------------
# Edge cases: every one answered exactly


PLAIN_CASES = [
    # (id, decoded PLAIN message, code, status)
    ("one NUL", f"alice\0{ALICE_PW}", 501, "5.5.2"),
    ("no NUL", f"alice{ALICE_PW}", 501, "5.5.2"),
    ("three NULs", f"\0alice\0{ALICE_PW}\0", 501, "5.5.2"),
    ("three NULs, NUL inside password", "\0alice\0Wonder\0land", 501, "5.5.2"),
    ("empty authcid", f"\0\0{ALICE_PW}", 501, "5.5.2"),
    ("empty password", "\0alice\0", 501, "5.5.2"),
    ("authzid != authcid", f"bob\0alice\0{ALICE_PW}", 535, "5.7.8"),
    ("authzid == authcid", f"alice\0alice\0{ALICE_PW}", 235, "2.7.0"),
    ("no authzid", f"\0alice\0{ALICE_PW}", 235, "2.7.0"),
    ("authcid of 256 octets", "\0" + "a" * 256 + f"\0{ALICE_PW}", 501, "5.5.2"),
    ("password bad UTF-8", "\0alice\0\udcff", 501, "5.5.2"),
]


@pytest.mark.parametrize("message,code,status", [c[1:] for c in PLAIN_CASES], ids=[c[0] for c in PLAIN_CASES])
def test_plain_message_edge_cases(auth_daemon, message, code, status):
    d = auth_daemon()
    data = message.encode("utf-8", "surrogateescape")
    for how in ("initial", "challenge"):
        with d.tls_connect() as c:
            if how == "initial":
                r = c.exchange("AUTH PLAIN " + b64(data), code, status)
            else:
                c.exchange("AUTH PLAIN", 334)
                r = c.exchange(b64(data), code, status)
            if code == 535:
                assert r.raw == INVALID
            if code == 235:
                c.exchange("MAIL FROM:<alice@example.test>", 250, "2.1.0")


def test_login_edge_cases(auth_daemon):
    d = auth_daemon()
    with d.tls_connect() as c:
        c.exchange("AUTH LOGIN", 334)
        c.exchange("", 501, "5.5.2")  # empty user name
        c.exchange("AUTH LOGIN", 334)
        c.exchange(b64("alice"), 334)
        c.exchange("", 501, "5.5.2")  # empty password
    with d.tls_connect() as c:
        c.exchange("AUTH LOGIN", 334)
        c.exchange(b64("ali\0ce"), 501, "5.5.2")  # NUL in the user name
        c.exchange("AUTH LOGIN " + b64("alice"), 334)
        r = c.exchange(b64(ALICE_PW + "!"), 535, "5.7.8")
        assert r.raw == INVALID


def test_a_timeout_during_an_auth_exchange_is_logged(auth_daemon):
    d = auth_daemon(server={"idle_timeout": 1})
    with d.tls_connect() as c:
        sid = d.session_of(c.local_port, timeout=5)
        c.exchange("AUTH LOGIN", 334)
        c.expect(421, "4.4.2", timeout=5)
    d.wait_log(rf"{sid}: timeout during AUTH$")


def test_cancel_with_star(auth_daemon):
    d = auth_daemon()
    with d.tls_connect() as c:
        sid = d.session_of(c.local_port, timeout=5)
        c.exchange("AUTH PLAIN", 334)
        c.exchange("*", 501, "5.0.0", "Authentication cancelled")
        c.exchange("AUTH LOGIN", 334)
        c.exchange("*", 501, "5.0.0")
        c.exchange("AUTH LOGIN", 334)
        c.exchange(b64("alice"), 334)
        c.exchange("*", 501, "5.0.0")
        # Cancelling is not a failed login: the session is not closed after three.
        c.exchange("AUTH PLAIN " + plain("alice", ALICE_PW), 235, "2.7.0")
    d.wait_log(rf"{sid}: AUTH failed: cancelled$", count=3)


def test_bad_base64(auth_daemon):
    d = auth_daemon()
    with d.tls_connect() as c:
        c.exchange("AUTH PLAIN not*base64", 501, "5.5.2", "Cannot Base64-decode client response")
        c.exchange("AUTH PLAIN", 334)
        c.exchange("%%%%", 501, "5.5.2")
    with d.tls_connect() as c:
        c.exchange("AUTH LOGIN", 334)
        c.exchange("YWxpY2U", 501, "5.5.2")  # "alice" without its padding
        c.exchange("AUTH PLAIN " + plain("alice", ALICE_PW) + "==", 501, "5.5.2")


def test_syntax_and_unknown_mechanism(auth_daemon):
    d = auth_daemon()
    with d.tls_connect() as c:
        c.exchange("AUTH CRAM-MD5", 504, "5.5.4", "Unrecognized authentication type")
        c.exchange("AUTH GSSAPI " + b64("x"), 504, "5.5.4")
        c.exchange("AUTH", 501, "5.5.4")
        c.exchange("AUTH PLAIN " + plain("alice", ALICE_PW) + " extra", 501, "5.5.4")
        # None of those is a failed login.
        c.exchange("AUTH PLAIN " + plain("alice", ALICE_PW), 235, "2.7.0")


def test_auth_sequence_errors(auth_daemon, aiosmtpd_upstream):
    d = auth_daemon()
    # Before EHLO (after STARTTLS the earlier EHLO is forgotten).
    with d.connect() as c:
        c.starttls()
        c.exchange("AUTH PLAIN " + plain("alice", ALICE_PW), 503, "5.5.1")
        c.exchange("EHLO again.test", 250)
        # In a transaction.
        c.exchange("MAIL FROM:<a@example.test>", 250, "2.1.0")
        c.exchange("AUTH PLAIN " + plain("alice", ALICE_PW), 503, "5.5.1",
                   "AUTH not allowed during a mail transaction")
        c.exchange("RSET", 250)
        c.exchange("AUTH PLAIN " + plain("alice", ALICE_PW), 235, "2.7.0")
        # Twice.
        c.exchange("AUTH PLAIN " + plain("alice", ALICE_PW), 503, "5.5.1", "Already authenticated")
        c.exchange("AUTH LOGIN", 503, "5.5.1")


def test_auth_line_too_long(auth_daemon):
    d = auth_daemon()
    with d.tls_connect() as c:
        # An AUTH command line over 12288 octets: its initial response is too long
        # (RFC 4954 §4, §6: 500 5.5.6, as the exchange's own lines get), not 5.5.2.
        c.exchange("AUTH PLAIN " + "QUFB" * 4000, 500, "5.5.6", "Authentication Exchange line is too long")
        c.exchange("NOOP " + "x" * 13000, 500, "5.5.2", "Line too long")
        c.exchange("NOOP", 250)
        c.exchange("AUTH PLAIN " + plain("alice", ALICE_PW) + "QUFB" * 2000, 501, "5.5.2")  # long, within limit
        c.exchange("AUTH PLAIN", 334)
        c.exchange("QUFB" * 4000, 500, "5.5.6", "Authentication Exchange line is too long")
        c.exchange("NOOP", 250)
        c.exchange("AUTH PLAIN " + plain("alice", ALICE_PW), 235, "2.7.0")


def test_auth_exchange_lines_end_with_crlf(auth_daemon):
    """An answer to a 334 ending in a bare LF, or holding a bare CR or a NUL, is refused as a
    command line is (RFC 5321 §2.3.8: CRLF ends lines), not taken for credentials."""
    d = auth_daemon()
    with d.tls_connect() as c:
        for bad in (b"\n", b"\r\r\n", b"\x00\r\n"):
            c.exchange("AUTH LOGIN", 334)
            c.send(base64.b64encode(b"alice") + bad)
            r = c.reply()
            assert (r.code, r.status) == (500, "5.5.2") and "CRLF" in r.text, str(r)
        c.exchange("AUTH LOGIN", 334)
        c.exchange(base64.b64encode(b"alice").decode(), 334)
        c.send(base64.b64encode(ALICE_PW.encode()) + b"\n")
        r = c.reply()
        assert (r.code, r.status) == (500, "5.5.2"), str(r)
        c.exchange("AUTH PLAIN " + plain("alice", ALICE_PW), 235, "2.7.0")  # the same exchange, with CRLF


def test_unknown_user_and_wrong_password_same_reply(auth_daemon):
    d = auth_daemon(auth={"max_failures": 10})
    raws = []
    with d.tls_connect() as c:
        raws.append(c.exchange("AUTH PLAIN " + plain("nosuchuser", ALICE_PW), 535, "5.7.8").raw)
        raws.append(c.exchange("AUTH PLAIN " + plain("alice", BOB_PW), 535, "5.7.8").raw)
        c.exchange("AUTH LOGIN", 334)
        c.exchange(b64("nosuchuser"), 334)
        raws.append(c.exchange(b64("whatever"), 535, "5.7.8").raw)
        c.exchange("AUTH LOGIN", 334)
        c.exchange(b64("bob"), 334)
        raws.append(c.exchange(b64(ALICE_PW), 535, "5.7.8").raw)
    assert raws == [INVALID] * 4


def test_credentials_never_logged(auth_daemon, aiosmtpd_upstream, tmp_path):
    # With an on_auth hook too, so the password travels to Python and back.
    tables, _ = recorder_tables(tmp_path, """
def on_auth(conn, mechanism, username, password):
    pc.log.info("on_auth saw %s via %s", username, mechanism)
    return None
""")
    d = auth_daemon(auth={"max_failures": 20}, log_level="debug", **tables)
    secrets = {ALICE_PW, BOB_PW, "Guess-Nr-1-zz", "Guess-Nr-2-zz"}
    with d.tls_connect() as c:
        c.exchange("AUTH PLAIN " + plain("alice", "Guess-Nr-1-zz"), 535)
        c.exchange("AUTH PLAIN", 334)
        c.exchange(plain("nosuchuser", BOB_PW), 535)
        c.exchange("AUTH LOGIN", 334)
        c.exchange(b64("bob"), 334)
        c.exchange(b64("Guess-Nr-2-zz"), 535)
        c.exchange("AUTH PLAIN " + plain("alice", ALICE_PW, "bob"), 535)  # authzid mismatch
        c.exchange("AUTH LOGIN " + b64("bob"), 334)
        c.exchange(b64(BOB_PW), 235)
        r = c.transaction("bob@example.test", ["x@example.test"], BODY)
        assert r.code == 250
        c.exchange("QUIT", 221)
    d.wait_log(r"disconnect from")
    log = d.log_text()
    assert "<- AUTH" in log  # debug logging was on: the command name is logged ...
    for s in secrets:
        for form in (s, b64(s), b64(s)[:-4]):
            assert form not in log, f"{form!r} is in the log"
    for blob in (plain("alice", "Guess-Nr-1-zz"), plain("nosuchuser", BOB_PW), plain("alice", ALICE_PW, "bob")):
        assert blob not in log
    # ... and who tried is logged (the user name only).
    assert "AUTH PLAIN as alice refused: 535 5.7.8" in log
    assert "AUTH LOGIN as bob" in log
    assert "on_auth saw bob via LOGIN" in log


def test_credentials_pipelined_behind_a_refused_auth_never_logged(auth_daemon):
    """A client that pipelines its base64 credentials behind an AUTH we refuse
    (538 without TLS, 504, 503 once logged in) has them read as commands:
    debug logging shows such a line's length, never its text."""
    d = auth_daemon(log_level="debug")
    user, secret = b64("alice"), b64("S3cr3t-pass-Zq")
    with d.connect() as c:  # in clear: AUTH is refused 538
        c.send(f"AUTH LOGIN\r\n{user}\r\n{secret}\r\n")
        c.expect(538, "5.7.11")
        c.expect(500, "5.5.1")
        c.expect(500, "5.5.1")
    with d.tls_connect() as c:
        c.send(f"AUTH CRAM-MD5\r\n{secret}\r\nNOOP\r\n{b64('other-secret-Kx')}\r\nXYZZY plugh\r\n")
        c.expect(504)
        c.expect(500, "5.5.1")
        c.expect(250)
        c.expect(500, "5.5.1")
        c.expect(500, "5.5.1")
        c.exchange("AUTH PLAIN " + plain("alice", ALICE_PW), 235)
        c.send(f"AUTH LOGIN\r\n{secret}\r\n")
        c.expect(503)
        c.expect(500, "5.5.1")
    d.wait_log(r"disconnect from", count=2)
    log = d.log_text()
    for form in (secret, secret[:8], user, b64("other-secret-Kx")[:8], ALICE_PW):
        assert form not in log, f"{form!r} is in the log"
    assert log.count("<- a line that is no command, 20 octets (not shown: it follows a refused AUTH)") == 3, log
    assert "<- a line that is no command, 8 octets (not shown: it follows a refused AUTH)" in log  # the user
    assert "<- NOOP" in log
    # Away from an AUTH, a line that is no command shows its first characters and its length only.
    assert "<- a line that is no command, 20 octets, starting b3Ro..." in log
    assert "<- a line that is no command, 11 octets, starting XYZZ..." in log
    assert "plugh" not in log


# --------------------------------------------------------------------------
# Brute force


def test_max_failures_per_session(auth_daemon):
    d = auth_daemon()  # max_failures = 3 by default
    with d.tls_connect() as c:
        sid = d.session_of(c.local_port)
        c.exchange("AUTH PLAIN " + plain("alice", "wrong-1"), 535, "5.7.8")
        c.exchange("AUTH PLAIN " + plain("alice", "wrong-2"), 535, "5.7.8")
        c.cmd("AUTH PLAIN " + plain("alice", "wrong-3"))
        r = c.expect(535, "5.7.8")
        assert r.raw == INVALID
        c.expect(421, "4.7.0", "Too many failed logins, closing connection")
        assert c.closed()
    d.wait_log(rf"{sid}: 3 failed logins in this session; closing")


def test_malformed_responses_count_as_failures(auth_daemon):
    d = auth_daemon(auth={"max_failures": 2})
    with d.tls_connect() as c:
        c.exchange("AUTH PLAIN " + b64("alice\0x"), 501, "5.5.2")
        c.cmd("AUTH PLAIN not-base64!")
        c.expect(501, "5.5.2")
        c.expect(421, "4.7.0")
        assert c.closed()


def test_max_failures_per_client_across_connections(auth_daemon):
    d = auth_daemon(auth={"max_failures": 10, "max_failures_per_client": 3})
    for i in range(3):
        with d.tls_connect() as c:
            c.exchange("AUTH PLAIN " + plain("alice", f"wrong-{i}"), 535, "5.7.8")
    # The fourth connection from the same address: even the right password is refused.
    with d.tls_connect() as c:
        sid = d.session_of(c.local_port)
        c.cmd("AUTH PLAIN " + plain("alice", ALICE_PW))
        c.expect(421, "4.7.0", "Too many failed logins, try again later")
        assert c.closed()
    d.wait_log(rf"{sid}: too many failed logins from this address; closing")
    # Another address is not affected.
    with d.tls_connect(source="127.0.0.2") as c:
        c.exchange("AUTH PLAIN " + plain("alice", ALICE_PW), 235, "2.7.0")


def test_max_failures_per_client_holds_for_parallel_sessions(auth_daemon, tmp_path):
    """Sessions in parallel cannot each get a guess past max_failures_per_client:
    an attempt counts against the limit from before its password check (a slow
    bcrypt here, so all of them are in flight at once), not from its 535."""
    if crypt.METHOD_BLOWFISH not in crypt.methods:
        pytest.skip("libcrypt without bcrypt")
    users = tmp_path / "slow-users.txt"
    users.write_text(f"alice:{crypt.crypt(ALICE_PW, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=1 << 10))}\n")
    d = auth_daemon(auth={"users_file": str(users), "max_failures": 3, "max_failures_per_client": 5})
    clients = [d.tls_connect() for _ in range(20)]
    barrier = threading.Barrier(len(clients))
    codes: list[int] = []

    def guess(i, c):
        barrier.wait()
        c.cmd("AUTH PLAIN " + plain("alice", f"wrong-{i}"))
        codes.append(c.reply().code)

    threads = [threading.Thread(target=guess, args=(i, c)) for i, c in enumerate(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for c in clients:
        c.close()
    assert len(codes) == 20
    assert codes.count(535) == 5, codes
    assert codes.count(421) == 15, codes
    # A right password is refused too, now, and a success does not use up the limit elsewhere.
    with d.tls_connect() as c:
        c.cmd("AUTH PLAIN " + plain("alice", ALICE_PW))
        c.expect(421, "4.7.0", "Too many failed logins, try again later")
    with d.tls_connect(source="127.0.0.2") as c:
        c.exchange("AUTH PLAIN " + plain("alice", ALICE_PW), 235, "2.7.0")
    for _ in range(6):
        with d.tls_connect(source="127.0.0.3") as c:
            c.exchange("AUTH PLAIN " + plain("alice", ALICE_PW), 235, "2.7.0")


def test_a_users_file_that_mixes_costs_is_warned_about(auth_daemon, portcullis_bin, tmp_path):
    """Every login computes a hash of each cost in the file (so an unknown
    user is not answered faster than a user with a rarer, slower hash): said
    at load and by --check-config, which still passes."""
    if crypt.METHOD_BLOWFISH not in crypt.methods:
        pytest.skip("libcrypt without bcrypt")
    users = tmp_path / "mixed-users.txt"
    users.write_text(f"alice:{crypt.crypt(ALICE_PW, crypt.mksalt(crypt.METHOD_SHA512))}\n"
                     f"admin:{crypt.crypt(BOB_PW, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=1 << 6))}\n")
    d = auth_daemon(auth={"users_file": str(users)})
    d.wait_log(r"warning .*mixed-users\.txt: 2 hash schemes or costs \(\$6\$ \(alice\), \$2b\$06\$ \(admin\)\): "
               r".*every login computes a hash of each")
    with d.tls_connect() as c:
        c.exchange("AUTH PLAIN " + plain("admin", BOB_PW), 235, "2.7.0")
    with d.tls_connect() as c:
        c.exchange("AUTH PLAIN " + plain("alice", ALICE_PW), 235, "2.7.0")
    with d.tls_connect() as c:
        c.exchange("AUTH PLAIN " + plain("nobody", ALICE_PW), 535, "5.7.8")
    p = subprocess.run([str(portcullis_bin), "--check-config", str(d.config_path)], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout == f"{d.config_path}: ok\n"
    assert "mixed-users.txt: 2 hash schemes or costs" in p.stderr, p.stderr


# --------------------------------------------------------------------------
# The on_auth hook


ON_AUTH = """
import portcullis as pc

def on_auth(conn, mechanism, username, password):
    _rec("auth", conn, mechanism=mechanism, username=username, password_ok=password == "hook-pass")
    if username == "hookuser":
        return password == "hook-pass"
    if username == "alice":
        return False            # the users file would say yes
    if username == "busy":
        return pc.tempfail("Try again later", code=454, status="4.7.0")
    if username == "banned":
        return pc.reject("You are banned", code=535, status="5.7.8")
    return None                 # the users file decides
"""


def test_on_auth_hook(auth_daemon, aiosmtpd_upstream, tmp_path):
    tables, record = recorder_tables(tmp_path, ON_AUTH)
    d = auth_daemon(auth={"max_failures": 20, "max_failures_per_client": 50}, **tables)
    with d.tls_connect() as c:
        c.exchange("AUTH PLAIN " + plain("hookuser", "hook-pass"), 235, "2.7.0")  # not in the users file
        r = c.transaction("hookuser@example.test", ["x@example.test"], BODY)
        assert r.code == 250
    with d.tls_connect() as c:
        c.exchange("AUTH PLAIN " + plain("hookuser", "nope"), 535, "5.7.8")
        r = c.exchange("AUTH PLAIN " + plain("alice", ALICE_PW), 535, "5.7.8")
        assert r.raw == INVALID
        c.exchange("AUTH PLAIN " + plain("busy", "x"), 454, "4.7.0", "Try again later")
        c.exchange("AUTH PLAIN " + plain("banned", "x"), 535, "5.7.8", "You are banned")
        c.exchange("AUTH LOGIN", 334)
        c.exchange(b64("bob"), 334)
        c.exchange(b64(BOB_PW), 235, "2.7.0")  # None: the users file decides
    auths = wait_record(record, "auth", 6)
    assert [(a["mechanism"], a["username"]) for a in auths] == [
        ("PLAIN", "hookuser"), ("PLAIN", "hookuser"), ("PLAIN", "alice"), ("PLAIN", "busy"), ("PLAIN", "banned"),
        ("LOGIN", "bob")]
    assert auths[0]["password_ok"] and not auths[1]["password_ok"]
    assert all(a["tls"] for a in auths) and all(a["auth_user"] is None for a in auths)
    [mail] = [e for e in json_lines(record) if e["hook"] == "mail"]
    assert mail["auth_user"] == "hookuser"


def test_on_auth_hook_errors_never_authenticate(auth_daemon, tmp_path):
    broken = """
def on_auth(conn, mechanism, username, password):
    raise RuntimeError("the hook is broken")
"""
    tables, _ = recorder_tables(tmp_path, broken)
    # tempfail: a broken hook gives 451 4.3.0 whatever the password
    d = auth_daemon(**tables)
    with d.tls_connect() as c:
        sid = d.session_of(c.local_port)
        c.exchange("AUTH PLAIN " + plain("alice", ALICE_PW), 451, "4.3.0")
    d.wait_log(rf"{sid}: policy error in on_auth")
    # accept: the users file decides; a broken hook never lets a wrong password in
    tables, _ = recorder_tables(tmp_path, broken)
    d = auth_daemon(policy={**tables["policy"], "on_error": "accept"}, probe=tables["probe"])
    with d.tls_connect() as c:
        r = c.exchange("AUTH PLAIN " + plain("alice", "not-the-password"), 535, "5.7.8")
        assert r.raw == INVALID
        c.exchange("AUTH PLAIN " + plain("nosuchuser", "x"), 535, "5.7.8")
        c.exchange("AUTH PLAIN " + plain("alice", ALICE_PW), 235, "2.7.0")


# --------------------------------------------------------------------------
# Submission: require_auth


def test_require_auth_submission(auth_daemon, aiosmtpd_upstream):
    d = auth_daemon(server={"require_auth": True})
    with d.tls_connect() as c:
        c.exchange("MAIL FROM:<alice@example.test>", 530, "5.7.0", "Authentication required")
        c.exchange("AUTH PLAIN " + plain("alice", ALICE_PW), 235, "2.7.0")
        r = c.transaction("alice@example.test", ["someone@elsewhere.test"], BODY)
        assert (r.code, r.status) == (250, "2.0.0")
    [env] = aiosmtpd_upstream.wait_messages(1)
    assert env["rcpt_tos"] == ["someone@elsewhere.test"]
    assert b" with ESMTPSA id " in env["content"]
    assert aiosmtpd_upstream.handler.mails == [("alice@example.test", [])]


def test_mail_auth_parameter_accepted(auth_daemon, aiosmtpd_upstream):
    d = auth_daemon(server={"require_auth": True})
    with d.tls_connect() as c:
        c.exchange("AUTH PLAIN " + plain("alice", ALICE_PW), 235, "2.7.0")
        c.exchange("MAIL FROM:<alice@example.test> AUTH=<>", 250, "2.1.0")
        c.exchange("RCPT TO:<x@example.test>", 250, "2.1.5")
        c.exchange("RSET", 250)
        c.exchange("MAIL FROM:<alice@example.test> AUTH=alice@example.test", 250, "2.1.0")


def test_require_auth_login_forgotten_after_starttls(auth_daemon, aiosmtpd_upstream):
    d = auth_daemon(server={"require_auth": True}, auth={"allow_plaintext": True})
    with d.connect() as c:
        c.exchange("AUTH PLAIN " + plain("alice", ALICE_PW), 235, "2.7.0")
        c.starttls()
        c.exchange("EHLO again.test", 250)
        # RFC 3207 §4.2: the login before TLS is forgotten too.
        c.exchange("MAIL FROM:<alice@example.test>", 530, "5.7.0")
        c.exchange("AUTH PLAIN " + plain("alice", ALICE_PW), 235, "2.7.0")
        c.exchange("MAIL FROM:<alice@example.test>", 250, "2.1.0")


def test_users_file_reloaded_on_sighup(auth_daemon, users_file):
    d = auth_daemon()
    with d.tls_connect() as c:
        c.exchange("AUTH PLAIN " + plain("alice", ALICE_PW), 235)
    write_users(users_file, {"alice": "Renewed-Pass-11"})
    d.reload()
    with d.tls_connect() as c:
        c.exchange("AUTH PLAIN " + plain("alice", ALICE_PW), 535, "5.7.8")
        c.exchange("AUTH PLAIN " + plain("alice", "Renewed-Pass-11"), 235, "2.7.0")

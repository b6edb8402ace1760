"""TLS on the client side: STARTTLS (RFC 3207) on `listen` and implicit TLS
(RFC 8314) on `listen_tls`, with smtplib, swaks and raw sockets; the
CVE-2011-0411 injection guard; protocol versions; SNI; SIGHUP reload of the
certificates; require_tls; TLS details in Received and for policies."""

from __future__ import annotations

import re
import shutil
import smtplib
import socket
import ssl
import subprocess

import pytest

from conftest import wait_until
from sec_helpers import (  # noqa: F401  (certs, sec_daemon are fixtures)
    Client,
    cert_der,
    certs,
    client_context,
    make_cert,
    recorder_tables,
    sec_daemon,
    wait_record,
)

BODY = b"Subject: tls\r\n\r\nover TLS\r\n"
RECEIVED_TLS = re.compile(
    rb"^Received: from (\S+) \(\[127\.0\.0\.1\]\)\r\n"
    rb"\t\(using (TLSv1\.[23]) with cipher ([A-Z0-9_-]+) \((\d+)/(\d+) bits\)\)\r\n"
    rb"\tby mx\.test \(Portcullis\) with (ESMTPS) id \w+\.\d+\r\n"
)


def tls_tables(certs, **server):
    cert, key = certs["mx"]
    return {"tls": {"cert": str(cert), "key": str(key)}, "server": server}


@pytest.fixture
def tls_daemon(sec_daemon, aiosmtpd_upstream, certs):
    def start(log_level=None, tls_port=True, server=None, **tables):
        t = tls_tables(certs, **(server or {}))
        t.update(tables)
        return sec_daemon(aiosmtpd_upstream.url, log_level=log_level, tls_port=tls_port, **t)

    return start


def ehlo_keywords(reply) -> list[str]:
    return [l.split(" ")[0].upper() for l in reply.lines[1:]]


# --------------------------------------------------------------------------
# STARTTLS and implicit TLS with ordinary clients


def test_smtplib_starttls(tls_daemon, aiosmtpd_upstream):
    d = tls_daemon()
    s = smtplib.SMTP("127.0.0.1", d.port, local_hostname="smtplib.test", timeout=10)
    code, text = s.ehlo()
    assert code == 250 and s.has_extn("starttls")
    code, text = s.starttls(context=client_context())
    assert (code, text) == (220, b"2.0.0 Ready to start TLS")
    assert s.sock.version() in ("TLSv1.2", "TLSv1.3")
    code, _ = s.ehlo()
    assert code == 250
    assert not s.has_extn("starttls"), "STARTTLS is offered again after TLS"
    assert s.sendmail("a@example.test", ["b@example.test"], BODY) == {}
    s.quit()
    [env] = aiosmtpd_upstream.wait_messages(1)
    m = RECEIVED_TLS.match(env["content"])
    assert m, env["content"][:400]
    assert m.group(1) == b"smtplib.test"
    assert m.group(2).decode() == "TLSv1.3"
    assert m.group(6) == b"ESMTPS"
    assert env["content"].endswith(BODY)
    d.wait_log(r"TLS established: TLSv1\.3 with TLS_\w+ \(\d+ bits\)")


def test_smtplib_implicit_tls(tls_daemon, aiosmtpd_upstream):
    d = tls_daemon()
    s = smtplib.SMTP_SSL("127.0.0.1", d.tls_port, local_hostname="ssl.test", timeout=10, context=client_context())
    code, _ = s.ehlo()
    assert code == 250
    assert not s.has_extn("starttls"), "STARTTLS offered on an implicit-TLS connection"
    code, text = s.docmd("STARTTLS")
    assert (code, text) == (554, b"5.5.1 TLS already active")
    assert s.sendmail("a@example.test", ["b@example.test"], BODY) == {}
    s.quit()
    [env] = aiosmtpd_upstream.wait_messages(1)
    m = RECEIVED_TLS.match(env["content"])
    assert m, env["content"][:400]
    assert m.group(1) == b"ssl.test" and m.group(6) == b"ESMTPS"
    d.wait_log(r"connect from \[127\.0\.0\.1\]:\d+ \(implicit TLS\)$")


@pytest.mark.parametrize("ending", ["QUIT", "idle timeout"])
def test_the_daemon_ends_tls_with_close_notify(tls_daemon, ending):
    """After 221 (QUIT) and after 421 (a timeout), the client reads a close_notify (RFC 8446 §6.1),
    not a bare TCP close: it can tell our end from a cut connection."""
    d = tls_daemon(server={"idle_timeout": 1})
    ctx = client_context()
    ctx.options &= ~ssl.OP_IGNORE_UNEXPECTED_EOF  # (a bare close raises, as OpenSSL 3 clients see it)
    raw = socket.create_connection(("127.0.0.1", d.tls_port), timeout=10)
    with ctx.wrap_socket(raw, server_hostname="mx.test", suppress_ragged_eofs=False) as s:
        s.sendall(b"EHLO client.test\r\n" + (b"QUIT\r\n" if ending == "QUIT" else b""))
        got = b""
        while chunk := s.recv(4096):  # b"": the close_notify; SSLEOFError: a bare close
            got += chunk
    assert got.endswith(b"221 2.0.0 mx.test Bye\r\n" if ending == "QUIT" else b"\r\n"), got[-100:]
    if ending != "QUIT":
        assert b"\r\n421 4.4.2 " in got, got[-200:]


def test_a_connection_refused_on_the_implicit_tls_port_gets_its_421_inside_tls(tls_daemon):
    """Over a per-client limit, a client of the implicit-TLS port reads the 421 after its handshake
    (RFC 8314 §3), not clear text its handshake would take for a broken record."""
    d = tls_daemon(server={"max_connections_per_client": 1})
    ctx = client_context()
    first = ctx.wrap_socket(socket.create_connection(("127.0.0.1", d.tls_port), timeout=10), server_hostname="mx.test")
    try:
        assert first.recv(100).startswith(b"220 ")
        with ctx.wrap_socket(socket.create_connection(("127.0.0.1", d.tls_port), timeout=10),
                             server_hostname="mx.test") as second:
            got = b""
            while chunk := second.recv(4096):
                got += chunk
        assert got == b"421 4.7.0 mx.test too many connections from your address, try again later\r\n", got
    finally:
        first.close()


def test_refusals_on_the_implicit_tls_port_are_bounded(tls_daemon):
    """A flood of connections that say nothing, past the limits, on the implicit-TLS port: at
    most 32 refusals wait for a handshake at once (the rest are closed with no word), each at
    most 2 s, so they cannot take the daemon's file descriptors from the clients it serves."""
    import os
    import time
    d = tls_daemon(server={"max_connections": 1})
    held = socket.create_connection(("127.0.0.1", d.port), timeout=10)
    try:
        assert held.recv(100).startswith(b"220 ")
        fds = lambda: len(os.listdir(f"/proc/{d.pid}/fd"))  # noqa: E731
        before = fds()
        flood = [socket.create_connection(("127.0.0.1", d.tls_port), timeout=10) for _ in range(100)]
        time.sleep(0.5)
        assert fds() - before <= 32 + 2, fds() - before
        wait_until(lambda: fds() <= before, timeout=6, what="the refusals to end")
        for s in flood:
            s.close()
    finally:
        held.close()


def test_tls12_with_intermediate_cipher(tls_daemon, aiosmtpd_upstream):
    d = tls_daemon()
    ctx = client_context(maximum=ssl.TLSVersion.TLSv1_2)
    with d.connect() as c:
        c.starttls(ctx)
        assert c.sock.version() == "TLSv1.2"
        cipher = c.sock.cipher()[0]
        assert cipher.startswith("ECDHE-") and ("GCM" in cipher or "CHACHA20" in cipher), cipher
        c.exchange("EHLO tls12.test", 250)
        r = c.transaction("a@example.test", ["b@example.test"], b"Subject: 1.2\r\n\r\nx")
        assert (r.code, r.status) == (250, "2.0.0")
        c.exchange("QUIT", 221, "2.0.0")
    [env] = aiosmtpd_upstream.wait_messages(1)
    m = RECEIVED_TLS.match(env["content"])
    assert m, env["content"][:400]
    assert m.group(2) == b"TLSv1.2" and m.group(3).decode() == cipher


@pytest.mark.skipif(not shutil.which("swaks"), reason="swaks not installed")
def test_swaks_starttls_and_tls_on_connect(tls_daemon, aiosmtpd_upstream):
    d = tls_daemon()
    common = ["swaks", "--server", "127.0.0.1", "--helo", "swaks.test", "--from", "s@example.test",
              "--to", "r@example.test", "--data", "Subject: swaks tls\n\nbody", "--timeout", "10"]
    out = subprocess.run(common + ["--port", str(d.port), "--tls"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "<-  220 2.0.0 Ready to start TLS" in out.stdout
    assert re.search(r"=== TLS started with cipher TLSv1\.3:", out.stdout), out.stdout
    assert "<~  250 2.0.0 Ok: queued as AIO00001 (aiosmtpd)" in out.stdout
    out = subprocess.run(common + ["--port", str(d.tls_port), "--tlsc"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "<~  220 mx.test ESMTP Portcullis" in out.stdout
    assert "<~  250 2.0.0 Ok: queued as AIO00002 (aiosmtpd)" in out.stdout
    envs = aiosmtpd_upstream.wait_messages(2)
    for env in envs:
        m = RECEIVED_TLS.match(env["content"])
        assert m and m.group(6) == b"ESMTPS", env["content"][:400]


# --------------------------------------------------------------------------
# RFC 3207 state rules


def test_ehlo_after_starttls_no_longer_offers_it_and_second_starttls_554(tls_daemon):
    d = tls_daemon(tls_port=False)
    with d.client() as c:
        c.expect(220)
        r = c.exchange("EHLO before.test", 250)
        assert "STARTTLS" in ehlo_keywords(r)
        c.starttls()
        r = c.exchange("EHLO after.test", 250)
        assert "STARTTLS" not in ehlo_keywords(r)
        assert r.lines[0] == "mx.test Hello after.test [127.0.0.1]"
        c.exchange("STARTTLS", 554, "5.5.1", "TLS already active")
        c.exchange("QUIT", 221, "2.0.0")


def test_state_is_forgotten_after_starttls(tls_daemon, aiosmtpd_upstream):
    d = tls_daemon(tls_port=False)
    with d.connect(ehlo="before.test") as c:
        c.starttls()
        # RFC 3207 §4.2: the EHLO before TLS is forgotten.
        c.exchange("MAIL FROM:<a@example.test>", 503, "5.5.1", "Send EHLO or HELO first")
        c.exchange("EHLO after.test", 250)
        r = c.transaction("a@example.test", ["b@example.test"], b"Subject: s\r\n\r\nx")
        assert (r.code, r.status) == (250, "2.0.0")
    [env] = aiosmtpd_upstream.wait_messages(1)
    assert RECEIVED_TLS.match(env["content"]).group(1) == b"after.test"


def test_starttls_in_a_transaction_refused(tls_daemon, aiosmtpd_upstream):
    d = tls_daemon(tls_port=False)
    with d.connect() as c:
        c.exchange("MAIL FROM:<a@example.test>", 250, "2.1.0")
        c.exchange("STARTTLS", 503, "5.5.1")
        c.exchange("STARTTLS now", 501, "5.5.4")


def test_starttls_without_tls_configured_502(sec_daemon, aiosmtpd_upstream):
    d = sec_daemon(aiosmtpd_upstream.url)
    with d.connect() as c:
        r = c.exchange("EHLO again.test", 250)
        assert "STARTTLS" not in ehlo_keywords(r)
        c.exchange("STARTTLS", 502, "5.5.1")


def test_require_tls(tls_daemon, aiosmtpd_upstream):
    d = tls_daemon(server={"require_tls": True})
    with d.connect() as c:
        c.exchange("MAIL FROM:<a@example.test>", 530, "5.7.0", "Must issue a STARTTLS command first")
        c.starttls()
        c.exchange("EHLO secure.test", 250)
        r = c.transaction("a@example.test", ["b@example.test"], b"Subject: r\r\n\r\nx")
        assert (r.code, r.status) == (250, "2.0.0")
    # Implicit TLS counts as TLS.
    with d.tls_client() as c:
        c.expect(220)
        c.exchange("EHLO implicit.test", 250)
        c.exchange("MAIL FROM:<a@example.test>", 250, "2.1.0")
    assert len(aiosmtpd_upstream.handler.mails) == 2


# --------------------------------------------------------------------------
# CVE-2011-0411: plaintext pipelined behind STARTTLS


def test_starttls_command_injection_is_discarded(tls_daemon, aiosmtpd_upstream):
    d = tls_daemon(tls_port=False)
    c = d.connect(ehlo="inject.test")
    sid = d.session_of(c.local_port)
    injected = b"RSET\r\nMAIL FROM:<x@y>\r\n"
    c.send(b"STARTTLS\r\n" + injected)
    r = c.expect(220, "2.0.0")
    assert r.raw == b"220 2.0.0 Ready to start TLS\r\n"
    assert not c.buf, f"more than the 220 before TLS: {bytes(c.buf)!r}"
    c.wrap(client_context())
    c.cmd("EHLO after.test")
    r = c.reply()
    # The first reply in TLS is the EHLO's: nothing for the injected RSET/MAIL.
    assert r.code == 250 and r.lines[0] == "mx.test Hello after.test [127.0.0.1]", str(r)
    c.exchange("NOOP", 250, "2.0.0")
    # The injected MAIL never happened: a MAIL now is the first, and succeeds.
    c.exchange("MAIL FROM:<a@example.test>", 250, "2.1.0")
    c.exchange("QUIT", 221, "2.0.0")
    assert c.closed()
    c.close()
    d.wait_log(rf"{sid}: discarded {len(injected)} bytes pipelined behind STARTTLS \(possible command injection\)")
    assert [m[0] for m in aiosmtpd_upstream.handler.mails] == ["a@example.test"], "the injected MAIL went upstream"


# --------------------------------------------------------------------------
# Protocol versions, client certificates, broken handshakes


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # ssl.TLSVersion.TLSv1/TLSv1_1
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1], ids=["TLSv1.0", "TLSv1.1"])
def test_old_tls_versions_refused(tls_daemon, version):
    d = tls_daemon()
    ctx = client_context(minimum=version, maximum=version)
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    # STARTTLS
    with d.connect() as c:
        sid = d.session_of(c.local_port)
        with pytest.raises(ssl.SSLError) as e:
            c.starttls(ctx)
        # The server's alert, not a client that could not offer the version.
        assert "PROTOCOL_VERSION" in str(e.value).upper() or "UNSUPPORTED_PROTOCOL" in str(e.value).upper(), e.value
    d.wait_log(rf"{sid}: TLS handshake failed: .*(unsupported protocol|version)")
    # implicit TLS
    with pytest.raises(ssl.SSLError) as e:
        d.tls_client(ctx=ctx)
    assert "PROTOCOL_VERSION" in str(e.value).upper() or "UNSUPPORTED_PROTOCOL" in str(e.value).upper(), e.value
    # Still serving.
    with d.connect() as c:
        c.starttls()
        assert c.sock.version() == "TLSv1.3"


@pytest.mark.parametrize("flag,version", [("-tls1", None), ("-tls1_1", None), ("-tls1_2", "TLSv1.2"),
                                          ("-tls1_3", "TLSv1.3")])
def test_openssl_s_client_versions_and_no_certificate_request(tls_daemon, flag, version):
    d = tls_daemon(tls_port=False)
    out = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{d.port}", "-starttls", "smtp", flag, "-msg",
         "-cipher", "DEFAULT:@SECLEVEL=0", "-servername", "mx.test", "-ign_eof"],
        input=b"QUIT\r\n", capture_output=True, timeout=20,
    )
    text = out.stdout.decode("latin-1") + out.stderr.decode("latin-1")
    assert re.search(r">>> TLS 1\.\d, Handshake \[length \w+\], ClientHello", text), text
    if version is None:
        # The ClientHello went out and the server answered with alert 70 (protocol_version).
        assert out.returncode != 0, text
        assert "alert protocol version" in text and "SSL alert number 70" in text, text
        assert "ServerHello" not in text
        d.wait_log(r": TLS handshake failed: unsupported protocol")
    else:
        assert f"New, {version}, Cipher is " in text, text
        assert "<<< TLS 1.3, Handshake" in text or "<<< TLS 1.2, Handshake" in text
        assert "ServerHello" in text
        # No CertificateRequest: the server never asks for a client certificate.
        assert "CertificateRequest" not in text, text
        # ... and the client sent none.
        assert not re.search(r"^>>> .*Handshake \[length \w+\], Certificate$", text, re.M), text
        assert re.search(r"^<<< .*Handshake \[length \w+\], Certificate$", text, re.M), text
        # The session went on in TLS: QUIT answered. (s_client exits 1 because the daemon closes
        # TCP without a TLS close_notify: "unexpected eof while reading".)
        assert "221 2.0.0 mx.test Bye" in text, text


def test_no_client_certificate_needed(tls_daemon, aiosmtpd_upstream):
    d = tls_daemon()
    ctx = client_context()
    # A context with no certificate at all; the handshake and a delivery succeed.
    with d.tls_client(ctx=ctx) as c:
        assert c.sock.getpeercert(binary_form=True)
        c.expect(220)
        c.exchange("EHLO nocert.test", 250)
        r = c.transaction("a@example.test", ["b@example.test"], b"Subject: c\r\n\r\nx")
        assert (r.code, r.status) == (250, "2.0.0")


def test_broken_handshake_is_logged_and_daemon_keeps_serving(tls_daemon):
    d = tls_daemon()
    with d.connect() as c:
        sid = d.session_of(c.local_port)
        c.exchange("STARTTLS", 220, "2.0.0")
        c.send(b"this is not a TLS ClientHello\r\n" * 4)
        assert c.closed(), "the connection stays open after a broken handshake"
    d.wait_log(rf"{sid}: TLS handshake failed: ")
    # Implicit TLS port: garbage instead of a ClientHello.
    with Client(d.tls_port) as c:
        c.send(b"EHLO plain.test\r\n")
        assert c.closed()
    d.wait_log(r"TLS handshake failed: ", count=2)
    # A client that connects and leaves without a handshake.
    socket.create_connection(("127.0.0.1", d.tls_port), timeout=5).close()
    d.wait_log(r"TLS handshake failed: ", count=3)
    assert d.proc.poll() is None
    with d.connect() as c:
        c.starttls()
        c.exchange("EHLO fine.test", 250)
    with d.tls_client() as c:
        c.expect(220)
        c.exchange("QUIT", 221, "2.0.0")


# --------------------------------------------------------------------------
# SNI and reloading


def test_sni_picks_the_certificate(sec_daemon, aiosmtpd_upstream, certs):
    (mx_cert, mx_key), (other_cert, other_key) = certs["mx"], certs["other"]
    d = sec_daemon(aiosmtpd_upstream.url, tls_port=True,
                   tls={"cert": str(mx_cert), "key": str(mx_key),
                        "certificates": [{"cert": str(other_cert), "key": str(other_key)}]})
    cases = [("mx.test", mx_cert), ("other.test", other_cert), ("www.other.test", other_cert),
             ("unknown.test", mx_cert), (None, mx_cert)]
    for name, want in cases:
        with d.connect() as c:
            c.starttls(server_hostname=name)
            assert c.sock.getpeercert(binary_form=True) == cert_der(want), f"STARTTLS SNI {name}"
            c.exchange("EHLO sni.test", 250)
        with d.tls_client(server_hostname=name) as c:
            assert c.sock.getpeercert(binary_form=True) == cert_der(want), f"implicit TLS SNI {name}"
            c.expect(220)


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_a_session_resumes_only_under_the_certificate_it_was_made_with(sec_daemon, aiosmtpd_upstream, certs,
                                                                        version):
    """RFC 6066 §3: a server MUST NOT resume a session asked for with another name. A session
    made with mx.test's certificate was resumed asking for other.test (and the other way round):
    the client got no certificate for the name it asked, and none was checked."""
    (mx_cert, mx_key), (other_cert, other_key) = certs["mx"], certs["other"]
    d = sec_daemon(aiosmtpd_upstream.url, tls_port=True,
                   tls={"cert": str(mx_cert), "key": str(mx_key),
                        "certificates": [{"cert": str(other_cert), "key": str(other_key)}]})
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    context.minimum_version = context.maximum_version = version

    def greeted(name, session=None):
        """(the certificate, whether the session was resumed, the session) of one connection."""
        with context.wrap_socket(socket.create_connection(("127.0.0.1", d.tls_port), timeout=5),
                                 server_hostname=name, session=session) as t:
            reader = t.makefile("rb")
            assert reader.readline().startswith(b"220 ")  # (TLS 1.3: the tickets come with it)
            t.sendall(b"QUIT\r\n")
            assert reader.readline().startswith(b"221 ")
            return t.getpeercert(binary_form=True), t.session_reused, t.session

    for first, then, want in (("mx.test", "other.test", other_cert), ("other.test", "mx.test", mx_cert),
                              # the same certificate, another name (or none): a full handshake too
                              ("other.test", "www.other.test", other_cert), ("mx.test", None, mx_cert),
                              (None, "mx.test", mx_cert)):
        made, reused, session = greeted(first)
        assert not reused
        assert greeted(first, session)[:2] == (made, True)  # resumed under its own certificate and name
        assert greeted(then, session)[:2] == (cert_der(want), False), f"{first} -> {then}"


def test_the_name_that_chose_the_certificate_is_acknowledged(sec_daemon, aiosmtpd_upstream, certs):
    """RFC 6066 §3: a server that used the name to choose its certificate says so with an
    empty server_name in its hello; none for a name no certificate covers."""
    (mx_cert, mx_key), (other_cert, other_key) = certs["mx"], certs["other"]
    d = sec_daemon(aiosmtpd_upstream.url, tls_port=True,
                   tls={"cert": str(mx_cert), "key": str(mx_key),
                        "certificates": [{"cert": str(other_cert), "key": str(other_key)}]})
    for version in ("-tls1_2", "-tls1_3"):
        for name, acknowledged in (("other.test", True), ("mx.test", True), ("unknown.test", False)):
            out = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{d.tls_port}", version,
                                  "-servername", name, "-tlsextdebug", "-ign_eof"],
                                 input=b"QUIT\r\n", capture_output=True, timeout=20)
            text = out.stdout.decode("latin-1") + out.stderr.decode("latin-1")
            assert ('TLS server extension "server name"' in text) == acknowledged, (version, name, text)


def test_sighup_reloads_certificates(sec_daemon, aiosmtpd_upstream, tmp_path):
    live = tmp_path / "live"
    old_cert, old_key = make_cert(tmp_path / "old", "mx", ["mx.test"])
    new_cert, new_key = make_cert(tmp_path / "new", "mx", ["mx.test"])
    live.mkdir()
    cert, key = live / "cert.pem", live / "key.pem"
    shutil.copy(old_cert, cert)
    shutil.copy(old_key, key)
    d = sec_daemon(aiosmtpd_upstream.url, tls_port=True, tls={"cert": str(cert), "key": str(key)})
    held = d.connect()
    held.starttls()
    assert held.sock.getpeercert(binary_form=True) == cert_der(old_cert)
    with d.tls_client() as c:
        assert c.sock.getpeercert(binary_form=True) == cert_der(old_cert)
    shutil.copy(new_cert, cert)
    shutil.copy(new_key, key)
    d.reload()
    for _ in range(2):
        with d.connect() as c:
            c.starttls()
            assert c.sock.getpeercert(binary_form=True) == cert_der(new_cert)
        with d.tls_client() as c:
            assert c.sock.getpeercert(binary_form=True) == cert_der(new_cert)
            c.expect(220)
    # The connection made before the reload goes on.
    held.exchange("EHLO held.test", 250)
    held.exchange("QUIT", 221, "2.0.0")
    held.close()


def test_sighup_with_a_broken_key_keeps_the_old_certificate(sec_daemon, aiosmtpd_upstream, tmp_path):
    old_cert, old_key = make_cert(tmp_path / "old", "mx", ["mx.test"])
    other_cert, other_key = make_cert(tmp_path / "other", "mx", ["mx.test"])
    live = tmp_path / "live"
    live.mkdir()
    cert, key = live / "cert.pem", live / "key.pem"
    shutil.copy(old_cert, cert)
    shutil.copy(old_key, key)
    d = sec_daemon(aiosmtpd_upstream.url, tls={"cert": str(cert), "key": str(key)})
    shutil.copy(other_cert, cert)  # a certificate that does not match the key
    d.reload(expect_ok=False)
    d.wait_log(r"reload: .*key\.pem: .*; keeping the running configuration")
    with d.connect() as c:
        c.starttls()
        assert c.sock.getpeercert(binary_form=True) == cert_der(old_cert)


def test_mismatched_key_is_reported_clearly(portcullis_bin, tmp_path, certs):
    cert, _ = certs["mx"]
    _, other_key = certs["other"]
    cfg = tmp_path / "bad.toml"
    cfg.write_text(f'[server]\nhostname = "mx.test"\nlisten = ["127.0.0.1:2525"]\n'
                   f'[upstream]\nurl = "smtp://127.0.0.1:25"\n[tls]\ncert = "{cert}"\nkey = "{other_key}"\n')
    out = subprocess.run([str(portcullis_bin), "--check-config", str(cfg)], capture_output=True, text=True, timeout=20)
    assert out.returncode == 1
    text = out.stdout + out.stderr
    assert str(other_key) in text
    assert "unknown error" not in text and re.search(r"does not match|mismatch", text), text


# --------------------------------------------------------------------------
# Policies see TLS


def test_policy_sees_tls(sec_daemon, aiosmtpd_upstream, certs, tmp_path):
    tables, record = recorder_tables(tmp_path)
    cert, key = certs["mx"]
    d = sec_daemon(aiosmtpd_upstream.url, tls_port=True, tls={"cert": str(cert), "key": str(key)}, **tables)
    with d.connect(ehlo="clear.test") as c:
        c.exchange("MAIL FROM:<clear@example.test>", 250)
        c.exchange("RSET", 250)
        c.starttls(client_context(maximum=ssl.TLSVersion.TLSv1_2))
        cipher12 = c.sock.cipher()[0]
        c.exchange("EHLO starttls.test", 250)
        c.exchange("MAIL FROM:<starttls@example.test>", 250)
    with d.tls_client() as c:
        cipher13 = c.sock.cipher()[0]
        c.expect(220)
        c.exchange("EHLO implicit.test", 250)
        c.exchange("MAIL FROM:<implicit@example.test>", 250)
    mails = {e["sender"]: e for e in wait_record(record, "mail", 3)}
    clear, starttls, implicit = mails["clear@example.test"], mails["starttls@example.test"], mails["implicit@example.test"]
    assert (clear["tls"], clear["tls_version"], clear["tls_cipher"]) == (False, None, None)
    assert (starttls["tls"], starttls["tls_version"], starttls["tls_cipher"]) == (True, "TLSv1.2", cipher12)
    assert (implicit["tls"], implicit["tls_version"], implicit["tls_cipher"]) == (True, "TLSv1.3", cipher13)
    connects = wait_record(record, "connect", 2)
    # on_connect runs after the implicit TLS handshake.
    assert sorted(e["tls"] for e in connects) == [False, True]

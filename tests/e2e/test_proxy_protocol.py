"""The PROXY protocol (server.proxy_protocol = true): v1 and v2 headers from
proxy_trusted peers make the header's source the client everywhere (EHLO
reply, Received, the log, policies); untrusted peers, malformed headers and
plain SMTP are closed without a greeting; LOCAL/UNKNOWN keep the peer."""

from __future__ import annotations

import re
import signal
import socket
import ssl
import struct

import pytest

from sec_helpers import Client, certs, client_context, recorder_tables, sec_daemon, wait_record  # noqa: F401

SIG = b"\r\n\r\n\x00\r\nQUIT\n"
BODY = b"Subject: proxied\r\n\r\nvia a load balancer"


def v1(src: str, dst: str, sport: int, dport: int) -> bytes:
    family = "TCP6" if ":" in src else "TCP4"
    return f"PROXY {family} {src} {dst} {sport} {dport}\r\n".encode()


def v2(src: str | None = None, dst: str | None = None, sport: int = 0, dport: int = 0, tlvs: bytes = b"",
       local: bool = False) -> bytes:
    if local:
        return SIG + bytes([0x20, 0x00]) + struct.pack("!H", len(tlvs)) + tlvs
    if ":" in src:
        fam, addrs = 0x21, socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
    else:
        fam, addrs = 0x11, socket.inet_aton(src) + socket.inet_aton(dst)
    payload = addrs + struct.pack("!HH", sport, dport) + tlvs
    return SIG + bytes([0x21, fam]) + struct.pack("!H", len(payload)) + payload


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + struct.pack("!H", len(value)) + value


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def v2_with_crc(src: str, dst: str, sport: int, dport: int, corrupt: bool = False) -> bytes:
    """A v2 header with a PP2_TYPE_CRC32C TLV (spec §2.2.5): CRC of the header with the field zeroed."""
    blank = v2(src, dst, sport, dport, tlvs=tlv(0x03, bytes(4)))
    crc = crc32c(blank) ^ (1 if corrupt else 0)
    return blank[:-4] + struct.pack("!I", crc)


CASES = {
    "v1-TCP4": (v1("192.0.2.10", "127.0.0.1", 40000, 25), "192.0.2.10", "[192.0.2.10]", 40000),
    "v1-TCP6": (v1("2001:db8::25", "2001:db8::1", 40001, 25), "2001:db8::25", "[IPv6:2001:db8::25]", 40001),
    "v2-TCP4": (v2("198.51.100.7", "127.0.0.1", 40002, 25), "198.51.100.7", "[198.51.100.7]", 40002),
    "v2-TCP6": (v2("2001:db8:0:1::7", "2001:db8::1", 40003, 587), "2001:db8:0:1::7", "[IPv6:2001:db8:0:1::7]",
                40003),
    "v2-TCP4-TLVs": (v2("203.0.113.5", "127.0.0.1", 40004, 25, tlvs=tlv(0x02, b"mx.test") + tlv(0x05, b"uid-1")),
                     "203.0.113.5", "[203.0.113.5]", 40004),
    "v2-TCP4-CRC32C": (v2_with_crc("203.0.113.6", "127.0.0.1", 40005, 25), "203.0.113.6", "[203.0.113.6]", 40005),
}


@pytest.fixture
def proxied(sec_daemon, aiosmtpd_upstream):
    def start(**server):
        return sec_daemon(aiosmtpd_upstream.url, server={"proxy_protocol": True, **server})

    return start


@pytest.mark.parametrize("case", list(CASES))
def test_trusted_header_source_is_the_client(sec_daemon, aiosmtpd_upstream, tmp_path, case):
    header, ip, literal, port = CASES[case]
    tables, record = recorder_tables(tmp_path)
    d = sec_daemon(aiosmtpd_upstream.url, server={"proxy_protocol": True}, **tables)
    with d.client() as c:
        sid = d.session_of(c.local_port)
        c.send(header)
        c.expect(220, text="mx.test ESMTP Portcullis")
        r = c.exchange("EHLO client.test", 250)
        assert r.lines[0] == f"mx.test Hello client.test {literal}"
        r = c.transaction("a@example.test", ["b@example.test"], BODY)
        assert (r.code, r.status) == (250, "2.0.0")
        c.exchange("QUIT", 221, "2.0.0")
    [env] = aiosmtpd_upstream.wait_messages(1)
    assert env["content"].startswith(f"Received: from client.test ({literal})\r\n".encode()), env["content"][:200]
    version, lit = case[1], re.escape(literal)
    d.wait_log(rf"{sid}: PROXY v{version}: client {lit}:{port} via \[127\.0\.0\.1\]$")
    d.wait_log(rf"{sid}: tx={sid}\.1 client={lit} helo=client\.test from=<a@example\.test> ")
    d.wait_log(rf"{sid}: disconnect from {lit} ")
    entries = wait_record(record, "mail")
    connect = wait_record(record, "connect")[0]
    for e in (connect, entries[0]):
        assert (e["client_ip"], e["client_port"]) == (ip, port)


def test_v2_local_and_v1_unknown_keep_the_peer(proxied, aiosmtpd_upstream):
    d = proxied()
    for header in (v2(local=True), v2(local=True, tlvs=tlv(0x04, b"noop")), b"PROXY UNKNOWN\r\n",
                   b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n"):
        with d.client(source="127.0.0.3") as c:
            c.send(header)
            c.expect(220)
            r = c.exchange("EHLO local.test", 250)
            assert r.lines[0] == "mx.test Hello local.test [127.0.0.3]", header
    log = d.log_text()
    assert "PROXY v" not in log  # nothing to report: the peer stays the client


def test_header_then_implicit_tls(sec_daemon, aiosmtpd_upstream, certs):
    cert, key = certs["mx"]
    d = sec_daemon(aiosmtpd_upstream.url, tls_port=True, server={"proxy_protocol": True},
                   tls={"cert": str(cert), "key": str(key)})
    # implicit TLS: the header comes before the TLS handshake
    with Client(d.tls_port) as c:
        sid = d.session_of(c.local_port)
        c.send(v2("192.0.2.44", "127.0.0.1", 41000, 465))
        # The ClientHello only once the header has been read on its own (the same segment: below).
        d.wait_log(rf"{sid}: PROXY v2: client \[192\.0\.2\.44\]:41000 via \[127\.0\.0\.1\]$")
        c.wrap(client_context())
        c.expect(220)
        r = c.exchange("EHLO tls.test", 250)
        assert r.lines[0] == "mx.test Hello tls.test [192.0.2.44]"
    # and STARTTLS after the header
    with d.client() as c:
        c.send(v1("192.0.2.45", "127.0.0.1", 41001, 25))
        c.expect(220)
        c.exchange("EHLO clear.test", 250)
        c.starttls()
        r = c.exchange("EHLO tls.test", 250)
        assert r.lines[0] == "mx.test Hello tls.test [192.0.2.45]"
        r = c.transaction("a@example.test", ["b@example.test"], BODY)
        assert r.code == 250
    [env] = aiosmtpd_upstream.wait_messages(1)
    assert env["content"].startswith(b"Received: from tls.test ([192.0.2.45])\r\n\t(using TLSv1.3 with cipher ")


def bio_handshake(sock: socket.socket, first: bytes, hostname: str = "mx.test"):
    """A TLS client over `sock` whose ClientHello goes out in the same write as `first`."""
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client_context().wrap_bio(inc, out, server_hostname=hostname)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    sock.sendall(first + out.read())
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            pending = out.read()
            if pending:
                sock.sendall(pending)
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("closed during the TLS handshake")
            inc.write(data)
    pending = out.read()
    if pending:
        sock.sendall(pending)
    return tls, inc


def test_header_and_client_hello_in_one_segment(sec_daemon, aiosmtpd_upstream, certs):
    """HAProxy's send-proxy may put the header and the client's first bytes in one segment: the
    ClientHello must stay for the handshake (it used to stall until idle_timeout)."""
    cert, key = certs["mx"]
    d = sec_daemon(aiosmtpd_upstream.url, tls_port=True, server={"proxy_protocol": True, "idle_timeout": 2},
                   tls={"cert": str(cert), "key": str(key)})
    with socket.create_connection(("127.0.0.1", d.tls_port), timeout=6) as sock:
        tls, inc = bio_handshake(sock, v1("192.0.2.44", "127.0.0.1", 41000, 465))
        assert tls.version() == "TLSv1.3"
        data = b""
        while not data.endswith(b"\r\n"):
            try:
                data += tls.read(4096)
            except ssl.SSLWantReadError:
                chunk = sock.recv(65536)
                assert chunk, "closed before the greeting"
                inc.write(chunk)
        assert data == b"220 mx.test ESMTP Portcullis\r\n"


def test_untrusted_peer_closed_without_greeting(proxied):
    d = proxied(proxy_trusted=["10.0.0.0/8", "2001:db8::/32"])
    for header in (v1("192.0.2.10", "127.0.0.1", 40000, 25), v2("192.0.2.10", "127.0.0.1", 40000, 25), b""):
        with d.client() as c:
            sid = d.session_of(c.local_port)
            if header:
                c.send(header)
            assert c.closed(), "an untrusted peer got a greeting"
        d.wait_log(rf"{sid}: \[127\.0\.0\.1\] is not in server\.proxy_trusted but server\.proxy_protocol is on; "
                   rf"closing$")
    assert "PROXY v" not in d.log_text()


def test_trusted_by_exact_address(proxied):
    d = proxied(proxy_trusted=["127.0.0.6"])
    with d.client(source="127.0.0.6") as c:
        c.send(v1("192.0.2.66", "127.0.0.1", 40000, 25))
        c.expect(220)
        r = c.exchange("EHLO t.test", 250)
        assert r.lines[0].endswith("[192.0.2.66]")
    with d.client(source="127.0.0.1") as c:
        c.send(v1("192.0.2.66", "127.0.0.1", 40000, 25))
        assert c.closed()


MALFORMED = {
    "plain SMTP": b"EHLO client.test\r\n",
    "v1 bad address": b"PROXY TCP4 300.1.2.3 127.0.0.1 40000 25\r\n",
    "v1 family mismatch": b"PROXY TCP4 2001:db8::1 127.0.0.1 40000 25\r\n",
    "v1 double space": b"PROXY TCP4  192.0.2.1 127.0.0.1 40000 25\r\n",
    "v1 port too big": b"PROXY TCP4 192.0.2.1 127.0.0.1 70000 25\r\n",
    "v1 bare LF": b"PROXY TCP4 192.0.2.1 127.0.0.1 40000 25\n",
    "v1 too long": b"PROXY TCP4 " + b"1" * 120 + b"\r\n",
    "v2 bad version": SIG + b"\x31\x11\x00\x0c" + bytes(12),
    "v2 bad command": SIG + b"\x2f\x11\x00\x0c" + bytes(12),
    "v2 short address block": SIG + b"\x21\x11\x00\x04" + bytes(4),
    "v2 TLV overrunning": v2("192.0.2.1", "127.0.0.1", 1, 25, tlvs=b"\x02\x00\x10ab"),
    "v2 CRC32C wrong": v2_with_crc("192.0.2.1", "127.0.0.1", 1, 25, corrupt=True),
    "TLS ClientHello": b"\x16\x03\x01\x00\xc8\x01\x00\x00\xc4\x03\x03" + bytes(32),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_header_closed_without_greeting(proxied, name):
    d = proxied()
    with d.client() as c:
        sid = d.session_of(c.local_port)
        c.send(MALFORMED[name])
        assert c.closed(), f"{name}: not closed"
    d.wait_log(rf"{sid}: invalid PROXY header \(.+\); closing$")
    # still serving
    with d.client() as c:
        c.send(v1("192.0.2.1", "127.0.0.1", 1, 25))
        c.expect(220)


def test_silent_plain_smtp_client_gets_no_greeting(proxied):
    """A plain SMTP client waits for the banner: it never comes, and the
    connection ends at the idle timeout."""
    d = proxied(idle_timeout=1)
    with d.client() as c:
        sid = d.session_of(c.local_port)
        assert c.closed(timeout=5)
    d.wait_log(rf"{sid}: no PROXY header before the connection ended or timed out$")


def test_a_peer_that_closes_within_the_header_is_let_go_at_once(proxied):
    """Part of a header, then FIN: the rest never comes. The session ends at once, not at the
    idle timeout (a peek sees the same bytes for ever, never the FIN behind them)."""
    import socket
    import time
    d = proxied(idle_timeout=30)
    with d.client() as c:
        sid = d.session_of(c.local_port)
        c.send(v1("192.0.2.1", "127.0.0.1", 1, 25)[:12])
        started = time.monotonic()
        c.sock.shutdown(socket.SHUT_WR)
        assert c.closed(timeout=10)
        assert time.monotonic() - started < 5
    d.wait_log(rf"{sid}: the connection ended within the PROXY header$")


def test_header_split_across_writes(proxied):
    d = proxied()
    header = v2("2001:db8::99", "2001:db8::1", 40100, 25)
    with d.client() as c:
        for i in range(0, len(header), 7):
            c.send(header[i:i + 7])
        c.expect(220)
        r = c.exchange("EHLO split.test", 250)
        assert r.lines[0] == "mx.test Hello split.test [IPv6:2001:db8::99]"
    with d.client() as c:
        h = v1("192.0.2.98", "127.0.0.1", 40101, 25)
        c.send(h[:10])
        c.send(h[10:])
        c.expect(220)
        assert c.exchange("EHLO split.test", 250).lines[0].endswith("[192.0.2.98]")


def test_a_stop_closes_a_connection_that_has_not_sent_its_header_at_once(proxied):
    """Nothing of it has begun: it does not hold the stop for server.shutdown_grace (it did, 30 s)."""
    d = proxied(shutdown_grace=20)
    waiting = socket.create_connection(("127.0.0.1", d.port))
    d.wait_log(r"connect from \[127\.0\.0\.1\]")
    d.signal(signal.SIGTERM)
    d.wait_log(r"info [0-9A-F]{12}: stopping: no PROXY header yet; closing$")
    assert d.proc.wait(timeout=5) == 0
    assert waiting.recv(100) == b""
    waiting.close()


def test_a_refusal_on_an_implicit_tls_port_behind_a_load_balancer_is_a_421_in_tls(sec_daemon, aiosmtpd_upstream,
                                                                                   certs):
    """The 421 goes inside TLS (RFC 8314 §3), after the PROXY header is taken off: the handshake
    read the header as a broken record, and the client heard a TLS error, not that it may retry."""
    cert, key = certs["mx"]
    d = sec_daemon(aiosmtpd_upstream.url, tls_port=True, server={"proxy_protocol": True, "max_connections": 1},
                   tls={"cert": str(cert), "key": str(key)})
    with Client(d.tls_port) as first:
        first.send(v1("192.0.2.50", "127.0.0.1", 41000, 465))
        first.wrap(client_context())
        first.expect(220)
        with socket.create_connection(("127.0.0.1", d.tls_port)) as raw:
            tls, inc = bio_handshake(raw, v1("192.0.2.51", "127.0.0.1", 41001, 465))
            data = b""
            while b"\r\n" not in data:
                try:
                    data += tls.read(4096)
                except ssl.SSLWantReadError:
                    got = raw.recv(65536)
                    assert got, f"closed before the 421: {data!r}"
                    inc.write(got)
            assert data.startswith(b"421 4.7.0 mx.test too many connections, try again later\r\n"), data

"""The open-relay guard ([relay] local_domains, trusted_networks): an
unauthenticated client outside the trusted networks may send only to the
local domains; anything else gets 554 5.7.1 before the policy or the
upstream hear of it; routing tricks never count as local."""

from __future__ import annotations

import pytest

from conftest import json_lines
from sec_helpers import b64, recorder_tables, sec_daemon, write_users  # noqa: F401

PW = "Relay-Pass-42x"


def rcpts_seen(up) -> list[str]:
    with up.handler.lock:
        return [r for r, _ in up.handler.rcpts]


def guard(sec_daemon, up, trusted=None, **tables):
    relay = {"local_domains": ["example.test", "Second.Example"]}
    if trusted is not None:
        relay["trusted_networks"] = trusted
    return sec_daemon(up.url, relay=relay, **tables)


def test_foreign_domain_refused_local_accepted(sec_daemon, aiosmtpd_upstream, tmp_path):
    tables, record = recorder_tables(tmp_path)
    d = guard(sec_daemon, aiosmtpd_upstream, **tables)
    with d.connect() as c:
        sid = d.session_of(c.local_port)
        c.exchange("MAIL FROM:<someone@remote.test>", 250, "2.1.0")
        r = c.exchange("RCPT TO:<victim@foreign.test>", 554, "5.7.1", "Relay access denied")
        assert r.raw == b"554 5.7.1 Relay access denied\r\n"
        c.exchange("RCPT TO:<alice@example.test>", 250, "2.1.5", "Recipient ok (aiosmtpd)")
        c.exchange("RCPT TO:<bob@EXAMPLE.TEST>", 250, "2.1.5")  # domains are case-insensitive
        c.exchange("RCPT TO:<carol@second.example>", 250, "2.1.5")
        c.exchange("RCPT TO:<x@sub.example.test>", 554, "5.7.1")  # a subdomain is another domain
        c.exchange("RCPT TO:<x@example.test.foreign.test>", 554, "5.7.1")
        c.exchange("DATA", 354)
        c.send(b"Subject: relay\r\n\r\nlocal only\r\n.\r\n")
        c.expect(250, "2.0.0")
    [env] = aiosmtpd_upstream.wait_messages(1)
    assert env["rcpt_tos"] == ["alice@example.test", "bob@EXAMPLE.TEST", "carol@second.example"]
    assert rcpts_seen(aiosmtpd_upstream) == env["rcpt_tos"], "a refused RCPT reached the upstream"
    d.wait_log(rf"{sid}: RCPT TO:<victim@foreign\.test> refused: relay access denied$")
    # ... and the policy never heard of it either.
    assert [e["rcpt"] for e in json_lines(record) if e["hook"] == "rcpt"] == env["rcpt_tos"]
    d.wait_log(r"relay: anyone may send to example\.test, Second\.Example; other domains need AUTH$")


ROUTING_TRICKS = [
    "user%foreign.test@example.test",
    "a!b@example.test",
    "foreign.test!user@example.test",
    '"u@foreign.test"@example.test',
    '"u%foreign.test"@example.test',
    "@route.test:u@foreign.test",
    "@example.test:u@foreign.test",
    "@a.test,@example.test:u@foreign.test",
]


@pytest.mark.parametrize("rcpt", ROUTING_TRICKS)
def test_routing_tricks_never_relay(sec_daemon, aiosmtpd_upstream, rcpt):
    d = guard(sec_daemon, aiosmtpd_upstream)
    with d.connect() as c:
        c.exchange("MAIL FROM:<a@remote.test>", 250)
        c.exchange(f"RCPT TO:<{rcpt}>", 554, "5.7.1", "Relay access denied")
        c.exchange("RCPT TO:<ok@example.test>", 250, "2.1.5")
    assert rcpts_seen(aiosmtpd_upstream) == ["ok@example.test"]


def test_source_route_to_local_counts_as_local(sec_daemon, aiosmtpd_upstream):
    d = guard(sec_daemon, aiosmtpd_upstream)
    with d.connect() as c:
        c.exchange("MAIL FROM:<a@remote.test>", 250)
        # RFC 5321 §4.1.1.3: the route is ignored; u@example.test is local.
        c.exchange("RCPT TO:<@route.test:u@example.test>", 250, "2.1.5")
        c.exchange("RCPT TO:<Postmaster>", 250, "2.1.5")
    assert rcpts_seen(aiosmtpd_upstream)[0] == "u@example.test"


def test_authenticated_client_relays(sec_daemon, aiosmtpd_upstream, tmp_path):
    users = write_users(tmp_path / "users", {"alice": PW})
    d = guard(sec_daemon, aiosmtpd_upstream, auth={"users_file": str(users), "allow_plaintext": True})
    with d.connect() as c:
        c.exchange("MAIL FROM:<alice@example.test>", 250)
        c.exchange("RCPT TO:<friend@foreign.test>", 554, "5.7.1")
        c.exchange("RSET", 250)
        c.exchange("AUTH PLAIN " + b64(f"\0alice\0{PW}"), 235, "2.7.0")
        c.exchange("MAIL FROM:<alice@example.test>", 250)
        c.exchange("RCPT TO:<friend@foreign.test>", 250, "2.1.5")
        c.exchange("RCPT TO:<user%elsewhere.test@example.test>", 250, "2.1.5")  # the upstream's business now
        c.exchange("DATA", 354)
        c.send(b"Subject: auth relay\r\n\r\nx\r\n.\r\n")
        c.expect(250, "2.0.0")
    [env] = aiosmtpd_upstream.wait_messages(1)
    assert env["rcpt_tos"] == ["friend@foreign.test", "user%elsewhere.test@example.test"]


def test_trusted_network_relays(sec_daemon, aiosmtpd_upstream):
    d = guard(sec_daemon, aiosmtpd_upstream, trusted=["127.0.0.7/32"])
    d.wait_log(r"relay: anyone may send to example\.test, Second\.Example; other domains need AUTH "
               r"or a client in 127\.0\.0\.7/32$")
    with d.connect(source="127.0.0.7") as c:
        c.exchange("MAIL FROM:<app@remote.test>", 250)
        c.exchange("RCPT TO:<x@foreign.test>", 250, "2.1.5")
        c.exchange("DATA", 354)
        c.send(b"Subject: trusted\r\n\r\nx\r\n.\r\n")
        c.expect(250, "2.0.0")
    for source in ("127.0.0.1", "127.0.0.8"):
        with d.connect(source=source) as c:
            c.exchange("MAIL FROM:<app@remote.test>", 250)
            c.exchange("RCPT TO:<y@foreign.test>", 554, "5.7.1")
    assert rcpts_seen(aiosmtpd_upstream) == ["x@foreign.test"]


def test_without_relay_table_the_upstream_decides(sec_daemon, aiosmtpd_upstream):
    d = sec_daemon(aiosmtpd_upstream.url)
    d.wait_log(r"info no \[relay\] table: the upstream decides who may relay$")
    with d.connect() as c:
        c.exchange("MAIL FROM:<a@remote.test>", 250)
        c.exchange("RCPT TO:<x@foreign.test>", 250, "2.1.5", "Recipient ok (aiosmtpd)")
        c.exchange("RCPT TO:<user%foreign.test@example.test>", 250, "2.1.5")
    assert rcpts_seen(aiosmtpd_upstream) == ["x@foreign.test", "user%foreign.test@example.test"]


def test_proxy_protocol_source_decides_trust(sec_daemon, aiosmtpd_upstream):
    """Behind a load balancer the header's source, not the balancer, is the client."""
    d = guard(sec_daemon, aiosmtpd_upstream, trusted=["127.0.0.0/8"], server={"proxy_protocol": True})
    with d.client() as c:
        c.send(b"PROXY TCP4 192.0.2.10 127.0.0.1 40000 25\r\n")
        c.expect(220)
        c.exchange("EHLO lb.test", 250)
        c.exchange("MAIL FROM:<a@remote.test>", 250)
        c.exchange("RCPT TO:<x@foreign.test>", 554, "5.7.1")
    with d.client() as c:
        c.send(b"PROXY TCP4 127.0.0.9 127.0.0.1 40000 25\r\n")
        c.expect(220)
        c.exchange("EHLO lb.test", 250)
        c.exchange("MAIL FROM:<a@remote.test>", 250)
        c.exchange("RCPT TO:<y@foreign.test>", 250, "2.1.5")
    assert rcpts_seen(aiosmtpd_upstream) == ["y@foreign.test"]


def test_a_u_label_domain_under_smtputf8_is_local(sec_daemon, aiosmtpd_upstream):
    """SMTPUTF8 (RFC 6531 §3.2) lets a recipient's domain come in U-labels:
    it is compared with local_domains in A-labels (libidn2), so x@exämple.test
    is as local as x@xn--exmple-cua.test; a domain that does not convert to
    A-labels is nobody's and still refused."""
    d = sec_daemon(aiosmtpd_upstream.url, relay={"local_domains": ["xn--exmple-cua.test"]})
    with d.connect() as c:
        c.exchange("MAIL FROM:<a@remote.test> SMTPUTF8", 250)
        c.exchange("RCPT TO:<x@exämple.test>", 250, "2.1.5")
        c.exchange("RCPT TO:<y@EXÄMPLE.test>", 250, "2.1.5")  # case-insensitive, U-labels too
        c.exchange("RCPT TO:<z@xn--exmple-cua.test>", 250, "2.1.5")
        c.exchange("RCPT TO:<w@exämple.test.foreign.test>", 554, "5.7.1", "Relay access denied")
        c.exchange("RCPT TO:<v@\u2603.test>", 554, "5.7.1", "Relay access denied")  # not IDNA2008: no A-label
        c.exchange("RCPT TO:<u@exampel.test>", 554, "5.7.1")
    assert rcpts_seen(aiosmtpd_upstream) == ["x@exämple.test", "y@EXÄMPLE.test", "z@xn--exmple-cua.test"]

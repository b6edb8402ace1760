"""policies/dnsbl.py through the daemon: client addresses from PROXY
headers, the lists served by a real DNS server on loopback (tests/dns),
looked up through the daemon's own resolver ([dns] nameserver)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dns"))
from dns_server import DnsServer  # noqa: E402

POLICY = Path(__file__).resolve().parents[2] / "policies" / "dnsbl.py"
ZONES = {"5.113.0.203.bl.test": [{"A": "127.0.0.2"}], "7.113.0.203.bl.test": [{"A": "127.0.0.2"}],
         "7.113.0.203.wl.test": [{"A": "127.0.10.1"}], "*.slow.test": ["TIMEOUT"]}
BODY = b"Subject: hi\r\n\r\nhello"


@pytest.fixture
def dnsbl_daemon(policy_daemon, aiosmtpd_upstream):
    with DnsServer(ZONES) as server:
        def start(**dnsbl):
            return policy_daemon(aiosmtpd_upstream.url, POLICY, server={"proxy_protocol": True},
                                 dns={"nameserver": f"127.0.0.1:{server.port}", "timeout": 1},
                                 dnsbl={"zones": {"bl.test": 2, "wl.test": -5, "slow.test": 1}, "threshold": 2,
                                        **dnsbl})
        yield start


def session(d, client: str):
    c = d.client()
    c.send(f"PROXY TCP4 {client} 127.0.0.1 40000 25\r\n".encode())
    return c


def test_listed_clients_are_refused_at_rcpt_others_pass(dnsbl_daemon, aiosmtpd_upstream):
    d = dnsbl_daemon()
    with session(d, "203.0.113.5") as c:
        c.expect(220)
        c.exchange("EHLO client.example", 250)
        c.exchange("MAIL FROM:<a@origin.example>", 250)
        r = c.exchange("RCPT TO:<b@example.test>", 554, "5.7.1")
        assert r.text == "Service unavailable; client [203.0.113.5] blocked using bl.test"
    for client in ("203.0.113.7", "198.51.100.1"):  # allow-listed too; not listed (slow.test times out)
        with session(d, client) as c:
            c.expect(220)
            c.exchange("EHLO client.example", 250)
            assert c.transaction("a@origin.example", ["b@example.test"], BODY).code == 250
    assert len(aiosmtpd_upstream.wait_messages(2)) == 2
    d.wait_log(r"dnsbl: client \[203\.0\.113\.5\] scores 2 ")
    d.wait_log(r"dnsbl: slow\.test did not answer")


def test_reject_at_connect(dnsbl_daemon):
    d = dnsbl_daemon(reject_at="connect")
    with session(d, "203.0.113.5") as c:
        c.expect(554, "5.7.1")


@pytest.mark.parametrize("on_error, first", [("accept", 250), ("tempfail", 451)])
def test_a_rcpt_timed_out_does_not_cancel_the_lookup(policy_daemon, aiosmtpd_upstream, on_error, first):
    # The list answers after 2 s, the hook is given 1: the first RCPT times
    # out, its hook is cancelled, and the lookup it was waiting on must live
    # on for the next RCPT (it was cancelled with it: every later RCPT of the
    # connection failed, so with on_error = "accept" a listed client got all
    # its recipients through).
    with DnsServer({"5.113.0.203.zen.test": [{"A": "127.0.0.2"}, {"DELAY": 2}]}) as server:
        d = policy_daemon(aiosmtpd_upstream.url, POLICY, server={"proxy_protocol": True},
                          policy={"timeout": 1, "on_error": on_error},
                          dns={"nameserver": f"127.0.0.1:{server.port}", "timeout": 5},
                          dnsbl={"zones": {"zen.test": 2}, "threshold": 2})
        with session(d, "203.0.113.5") as c:
            c.expect(220)
            c.exchange("HELO client.example", 250)
            c.exchange("MAIL FROM:<a@origin.example>", 250)
            c.exchange("RCPT TO:<b0@example.test>", first)
            time.sleep(1.5)  # the answer is in 2 s after connect
            for i in (1, 2):
                c.exchange(f"RCPT TO:<b{i}@example.test>", 554, "5.7.1")
        d.wait_log(r"dnsbl: client \[203\.0\.113\.5\] scores 2 ")

"""The upstream given by name is looked up through the daemon's own resolver
([dns] nameserver and timeout, its cache), as the checks and pc.dns are: a
real DNS server on loopback answers for the name. And pc.dns's resolver, where
nothing else needs one, lives across reloads with its cache and its lookups."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dns"))
from conftest import wait_until  # noqa: E402
from dns_server import DnsServer  # noqa: E402


@pytest.fixture
def dns_server():
    zones = {"upstream.test": [{"A": "127.0.0.1"}], "v6only.test": [{"AAAA": "::1"}],
             "slow.test": ["TIMEOUT"], "listed.test": [{"A": "127.0.0.2"}],
             "late.test": [{"A": "127.0.0.2"}, {"DELAY": 1.5}]}
    with DnsServer(zones) as server:
        yield server


def named(url: str, host: str) -> str:
    return url.replace("127.0.0.1", host)


def test_the_upstream_name_is_resolved_by_our_dns(start_daemon, aiosmtpd_upstream, dns_server):
    d = start_daemon(named(aiosmtpd_upstream.url, "upstream.test"),
                     dns={"nameserver": f"127.0.0.1:{dns_server.port}", "timeout": 1})
    with d.connect() as c:
        r = c.transaction("alice@example.test", ["bob@example.net"], b"Subject: by name\r\n\r\nHello")
    assert r.code == 250, str(r)
    assert aiosmtpd_upstream.wait_messages(1)
    assert dns_server.queries("upstream.test", "A") >= 1


@pytest.mark.parametrize("host,why", [("nowhere.test", "no such name, or no address"),
                                      ("slow.test", "timeout")])
def test_a_name_that_does_not_resolve_is_a_temporary_failure(start_daemon, aiosmtpd_upstream, dns_server, host, why):
    d = start_daemon(named(aiosmtpd_upstream.url, host), dns={"nameserver": f"127.0.0.1:{dns_server.port}", "timeout": 1})
    with d.connect() as c:
        c.cmd("MAIL FROM:<alice@example.test>")
        r = c.reply()
    assert (r.code, r.status) == (451, "4.4.1"), str(r)
    d.wait_log(rf"upstream: cannot resolve {host}: {why}")


# What pc.dns answers an async hook, as the reply's text.
RESOLVING_POLICY = """
import portcullis as pc

async def on_mail(tx, sender):
    try:
        found = await pc.dns.resolve(sender.domain, "A")
    except pc.dns.Error as e:
        return pc.tempfail(f"dns={type(e).__name__} {e}")
    return pc.tempfail("dns=" + ",".join(found))
"""


def pc_dns_daemon(policy_daemon, dns_server, tmp_path):
    """No [checks], a maildir upstream: only pc.dns asks (policies/dnsbl.py's setup). The daemon,
    and a MAIL whose reply text says what the policy's lookup found."""
    maildir = tmp_path / "Maildir"
    for sub in ("new", "cur", "tmp"):
        (maildir / sub).mkdir(parents=True)
    d = policy_daemon(f"maildir:{maildir}", RESOLVING_POLICY,
                      dns={"nameserver": f"127.0.0.1:{dns_server.port}", "timeout": 5})

    def mail_from(domain: str) -> str:
        with d.connect() as c:
            c.cmd(f"MAIL FROM:<a@{domain}>")
            return c.reply().text

    return d, mail_from


def lookup_in_flight(dns_server, mail_from) -> tuple[threading.Thread, dict]:
    """A MAIL whose lookup (late.test, answered slowly) has started; its reply text lands in ["late"]."""
    got: dict = {}
    in_flight = threading.Thread(target=lambda: got.setdefault("late", mail_from("late.test")))
    in_flight.start()
    wait_until(lambda: dns_server.queries("late.test", "A") > 0, what="the slow lookup to start")
    return in_flight, got


def test_a_reload_keeps_the_resolver_pc_dns_alone_uses(policy_daemon, dns_server, tmp_path):
    # A SIGHUP with the same [dns] keeps pc.dns's resolver: a lookup in flight is answered (it
    # was "the resolver stopped", which a DNSBL reads as "not listed"), and the cache stays.
    d, mail_from = pc_dns_daemon(policy_daemon, dns_server, tmp_path)
    assert mail_from("listed.test") == "dns=127.0.0.2"
    asked = dns_server.queries("listed.test", "A")
    in_flight, got = lookup_in_flight(dns_server, mail_from)
    d.reload()  # the same config
    in_flight.join(10)
    assert got.get("late") == "dns=127.0.0.2"
    assert mail_from("listed.test") == "dns=127.0.0.2"
    assert dns_server.queries("listed.test", "A") == asked  # from the cache kept


def test_a_reload_with_another_dns_lets_lookups_in_flight_finish(policy_daemon, dns_server, tmp_path):
    d, mail_from = pc_dns_daemon(policy_daemon, dns_server, tmp_path)
    assert mail_from("listed.test") == "dns=127.0.0.2"
    in_flight, got = lookup_in_flight(dns_server, mail_from)
    d.reload({"dns": {"timeout": 4}})  # a new resolver for new lookups; the old one answers its own
    in_flight.join(10)
    assert got.get("late") == "dns=127.0.0.2"
    asked = dns_server.queries("listed.test", "A")
    assert mail_from("listed.test") == "dns=127.0.0.2"
    assert dns_server.queries("listed.test", "A") == asked + 1  # a new resolver, a new cache

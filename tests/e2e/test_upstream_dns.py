"""The upstream given by name is looked up through the daemon's own resolver
([dns] nameserver and timeout, its cache), as the checks and pc.dns are: a
real DNS server on loopback answers for the name."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dns"))
from dns_server import DnsServer  # noqa: E402


@pytest.fixture
def dns_server():
    zones = {"upstream.test": [{"A": "127.0.0.1"}], "v6only.test": [{"AAAA": "::1"}],
             "slow.test": ["TIMEOUT"]}
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

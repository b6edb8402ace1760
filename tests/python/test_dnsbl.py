"""policies/dnsbl.py through the testing harness, against a real DNS server
on loopback (tests/dns/dns_server.py) reached through pc.dns. Through the
daemon: tests/e2e/test_dnsbl.py."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dns"))
from conftest import dns_serving  # noqa: E402
from dns_server import DnsServer  # noqa: E402

import portcullis as pc  # noqa: E402
from portcullis.testing import Harness, PolicyLoadError  # noqa: E402

POLICY = Path(__file__).resolve().parents[2] / "policies" / "dnsbl.py"
V6 = "2001:db8::5"
V6_NAME = ".".join(reversed("20010db8000000000000000000000005"))
ZONES = {
    "5.113.0.203.bl.test": [{"A": "127.0.0.2"}],
    "5.113.0.203.other.test": [{"A": "127.0.0.10"}],
    "6.113.0.203.bl.test": [{"A": "127.0.0.4"}],
    "7.113.0.203.bl.test": [{"A": "127.0.0.2"}],
    "7.113.0.203.wl.test": [{"A": "127.0.10.1"}],
    "8.113.0.203.bl.test": [{"A": "127.255.255.254"}],  # the list refuses the query
    "9.113.0.203.bl.test": [{"A": "192.0.2.1"}],        # not a listing: outside 127/8
    "10.113.0.203.bl.test": [{"A": "127.0.0.2"}],
    "10.113.0.203.wl.test": [{"A": "127.0.0.255"}],     # dnswl.org: the resolver is over its limit
    "11.113.0.203.bl.test": [{"A": "127.0.0.3"}],
    "11.113.0.203.wl.test": [{"A": "127.0.0.255"}],
    f"{V6_NAME}.bl.test": [{"A": "127.0.0.2"}],
    "*.slow.test": ["TIMEOUT"],
}


@pytest.fixture(scope="module")
def dns_server() -> Iterator[DnsServer]:
    with dns_serving(ZONES) as server:
        yield server


def harness(**table) -> Harness:
    settings = {"zones": {"bl.test": 2, "bl.test=127.0.0.4": 1, "other.test": 1, "wl.test": -5}, "threshold": 2,
                **table}
    return Harness([POLICY], config={"dnsbl": settings})


def rcpt(h: Harness, ip: str, **kw):
    s = h.connect(client_ip=ip, helo="client.example", **kw)
    s.mail("a@example.com")
    return s.rcpt("b@example.test")


def test_listed_clients_are_refused_with_the_zones_named(dns_server):
    with harness() as h:
        assert rcpt(h, "203.0.113.5") == (
            554, "5.7.1", "Service unavailable; client [203.0.113.5] blocked using bl.test, other.test")
        assert rcpt(h, V6)[:2] == (554, "5.7.1")
        assert any("scores 3" in line.message for line in h.logs)


def test_weights_answers_allow_lists_and_list_errors(dns_server):
    with harness() as h:
        assert rcpt(h, "203.0.113.6")[:2] == (554, "5.7.1")  # any bl.test answer (2) and its 127.0.0.4 (1)
    with harness(zones={"bl.test=127.0.0.4": 1, "other.test": 1}) as h:
        assert rcpt(h, "203.0.113.6").code == 250   # 1 < 2
        assert rcpt(h, "203.0.113.5").code == 250   # only other.test: 1
    with harness() as h:
        assert rcpt(h, "203.0.113.7").code == 250   # listed, but on the allow list too: 2 - 5
        assert rcpt(h, "203.0.113.8").code == 250   # the list's error code counts for nothing
        assert any("refused the query" in line.message for line in h.logs)
        assert rcpt(h, "203.0.113.9").code == 250
        assert rcpt(h, "198.51.100.1").code == 250  # NXDOMAIN everywhere


def test_an_allow_lists_over_the_limit_answer_is_no_allowance(dns_server):
    # 127.0.0.255 from dnswl.org is "your resolver is over its limit": it counted
    # as an allow-list hit (-5), and every client on bl.test passed.
    with harness() as h:
        assert rcpt(h, "203.0.113.10")[:2] == (554, "5.7.1")
        assert any("wl.test refused the query (its error code 127.0.0.255)" in line.message for line in h.logs)
    # A block list's 127.0.0.255 is a listing unless error_answers says otherwise.
    with harness(zones={"bl.test": 2, "wl.test": -5}, error_answers={"bl.test": ["127.0.0.3"]}) as h:
        assert rcpt(h, "203.0.113.11").code == 250  # bl.test's own error code: not counted
        assert rcpt(h, "203.0.113.10")[:2] == (554, "5.7.1")
        assert any("bl.test refused the query (its error code 127.0.0.3)" in line.message for line in h.logs)


def test_a_zone_that_times_out_counts_for_nothing(dns_server):
    with harness(zones={"slow.test": 5, "bl.test": 2}) as h:
        assert rcpt(h, "203.0.113.5")[:2] == (554, "5.7.1")
        assert rcpt(h, "198.51.100.2").code == 250
        assert any("slow.test did not answer" in line.message for line in h.logs)


def test_exemptions_and_reject_at_connect(dns_server):
    with harness(networks=["203.0.113.0/24"]) as h:
        assert rcpt(h, "203.0.113.5").code == 250
    with harness() as h:
        assert rcpt(h, "203.0.113.5", auth_user="alice").code == 250
        assert rcpt(h, "fe80::1%eth0").code == 250  # on our own link: not looked up (its scope broke the name)
        assert rcpt(h, "169.254.0.5").code == 250
    with harness(reject_at="connect") as h:
        assert h.connect(client_ip="203.0.113.5").greeting[:2] == (554, "5.7.1")
        assert h.connect(client_ip="198.51.100.3").greeting.code == 220


@pytest.mark.parametrize("table,why", [
    ({"zones": {}}, "zones: required"), ({"zones": {"bl.test": "x"}}, "must be a number"),
    ({"zones": {"bl.test=nope": 1}}, "want zone=127"), ({"threshold": 0}, "threshold"),
    ({"reject_at": "data"}, "reject_at"), ({"colour": 1}, "unknown key"),
    ({"error_answers": {"nope.test": ["127.0.0.3"]}}, "error_answers: 'nope.test' is not one of the zones"),
    ({"error_answers": {"bl.test": ["x"]}}, "error_answers: 'bl.test': 'x' is not 127"),
    ({"error_answers": {"bl.test": "127.0.0.3"}}, "want a list"),
])
def test_settings_are_checked(table, why):
    with pytest.raises(PolicyLoadError, match=why):
        harness(**table)

"""The test DNS server, checked with independent clients (dnspython, pydns,
pyspf), and the openspf RFC 7208 suite run through pyspf against it."""

import json
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver
import pytest
from dnslib import QTYPE, DNSHeader, DNSRecord

from dns_server import (CHARACTER_STRING_MAX_OCTETS, CLASSIC_UDP_PAYLOAD,
                        DEFAULT_TTL, DnsServer, ZoneError)
from reference_spf import available_backends, reference_spf
from spf_suite import SUITE_CASE_COUNT, all_cases, load_suite

HERE = Path(__file__).resolve().parent
SERVER_SCRIPT = HERE / "dns_server.py"

# Loopback answers take milliseconds: this only bounds TIMEOUT names.
SHORT_TIMEOUT = 0.3
# Per pyspf lookup in the suite run; six cases wait for it once each.
SUITE_LOOKUP_TIMEOUT = 0.5
# The count for pyspf on this suite is 202 of 203.
SUITE_MIN_PASSES = 200
CLI_START_SECONDS = 10

LONG_TXT = "v=DKIM1; k=rsa; p=" + "A" * 600        # three character-strings

ZONES = {
    "example.com": [
        {"TXT": "v=spf1 ip4:192.0.2.0/24 -all"},
        {"A": "192.0.2.1"},
        {"AAAA": "2001:db8::1"},
        {"MX": [10, "mx.example.com"]},
    ],
    "mx.example.com": [{"A": "192.0.2.25"}],
    "1.2.0.192.in-addr.arpa": [{"PTR": "example.com"}],
    "alias.example.com": [{"CNAME": "example.com"}],
    "spf99.example.com": [{"SPF": "v=spf1 -all"}],
    "deep.ent.example.com": [{"A": "192.0.2.7"}],
    "long.example.com": [{"TXT": LONG_TXT}],
    "split.example.com": [{"TXT": ["v=spf1 ", "-all"]}],
    "slow.example.com": ["TIMEOUT"],
    "txtonly-slow.example.com": [{"TXT": "v=spf1 -all"}, "TIMEOUT"],
    "broken.example.com": ["SERVFAIL"],
    "late.example.com": [{"A": "192.0.2.5"}, {"DELAY": 0.5}],
    "*.wild.example.com": [{"A": "192.0.2.99"}],
    "host.wild.example.com": [{"TXT": "not a wildcard"}],
    "x.sub.wild.example.com": [{"A": "192.0.2.98"}],
}


@pytest.fixture
def server():
    with DnsServer(ZONES) as running:
        yield running


def resolver_at(port, lifetime=2.0):
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = port
    resolver.lifetime = lifetime
    resolver.timeout = lifetime
    return resolver


def ask(port, name, rdtype, tcp=False, **make_query_args):
    """One raw query and its reply, as dnspython parses it."""
    query = dns.message.make_query(name, rdtype, **make_query_args)
    if tcp:
        return dns.query.tcp(query, "127.0.0.1", port=port, timeout=2)
    return dns.query.udp(query, "127.0.0.1", port=port, timeout=2,
                         raise_on_truncation=False)


def udp_exchange(port, packet, timeout=2.0):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(packet, ("127.0.0.1", port))
        return sock.recv(65535)


def raw_query(labels, qtype=QTYPE.A, query_id=4242):
    """A query packet with the given labels, however malformed: dnslib and
    dnspython both refuse to encode over-long names, so the question is
    written out here (RFC 1035 section 4.1.2)."""
    header = DNSHeader(id=query_id, q=1, rd=1)
    record = DNSRecord(header)
    packet = bytearray(record.pack())
    for label in labels:
        packet += bytes([len(label)]) + label
    packet += b"\x00" + struct.pack("!HH", qtype, 1)
    return bytes(packet)


# -- answers ---------------------------------------------------------------

def test_udp_and_tcp_are_served_on_one_port(server):
    resolver = resolver_at(server.port)
    for tcp in (False, True):
        answer = resolver.resolve("example.com", "TXT", tcp=tcp)
        assert [b"".join(r.strings) for r in answer] == [
            b"v=spf1 ip4:192.0.2.0/24 -all"]
    assert server.queries("example.com", "TXT", "udp") == 1
    assert server.queries("example.com", "TXT", "tcp") == 1


def test_record_types(server):
    resolver = resolver_at(server.port)
    assert [r.address for r in resolver.resolve("example.com", "A")] == [
        "192.0.2.1"]
    assert [r.address for r in resolver.resolve("example.com", "AAAA")] == [
        "2001:db8::1"]
    assert [(r.preference, r.exchange.to_text())
            for r in resolver.resolve("example.com", "MX")] == [
        (10, "mx.example.com.")]
    assert [r.target.to_text()
            for r in resolver.resolve("1.2.0.192.in-addr.arpa", "PTR")] == [
        "example.com."]
    spf = resolver.resolve("spf99.example.com", "SPF")
    assert [b"".join(r.strings) for r in spf] == [b"v=spf1 -all"]
    split = resolver.resolve("split.example.com", "TXT")
    assert [r.strings for r in split] == [(b"v=spf1 ", b"-all")]


def test_cname_is_followed_in_the_same_reply(server):
    reply = ask(server.port, "alias.example.com", "A")
    assert [(rrset.name.to_text(), dns.rdatatype.to_text(rrset.rdtype))
            for rrset in reply.answer] == [
        ("alias.example.com.", "CNAME"), ("example.com.", "A")]
    answer = resolver_at(server.port).resolve("alias.example.com", "A")
    assert [r.address for r in answer] == ["192.0.2.1"]
    assert answer.canonical_name.to_text() == "example.com."


def test_names_are_case_insensitive_and_the_question_is_echoed(server):
    reply = ask(server.port, "ExAmPlE.CoM", "A")
    assert reply.rcode() == dns.rcode.NOERROR
    # dnspython compares names case-insensitively: look at the labels.
    assert reply.answer[0].name.labels[:2] == (b"ExAmPlE", b"CoM")
    assert server.queries("EXAMPLE.COM.", "A") == 1


def test_nodata_and_nxdomain(server):
    resolver = resolver_at(server.port)
    with pytest.raises(dns.resolver.NoAnswer):
        resolver.resolve("mx.example.com", "TXT")
    with pytest.raises(dns.resolver.NXDOMAIN):
        resolver.resolve("nowhere.example.com", "TXT")
    # An empty non-terminal exists: NODATA, not NXDOMAIN (RFC 8020).
    with pytest.raises(dns.resolver.NoAnswer):
        resolver.resolve("ent.example.com", "A")
    for name, rcode in (("mx.example.com", dns.rcode.NOERROR),
                        ("nowhere.example.com", dns.rcode.NXDOMAIN)):
        reply = ask(server.port, name, "TXT")
        assert reply.rcode() == rcode
        assert reply.answer == []
        assert [dns.rdatatype.to_text(r.rdtype) for r in reply.authority] == [
            "SOA"]


def test_negative_answers_without_an_soa():
    with DnsServer(ZONES, negative_soa=False) as running:
        for name, rcode in (("mx.example.com", dns.rcode.NOERROR),
                            ("nowhere.example.com", dns.rcode.NXDOMAIN)):
            reply = ask(running.port, name, "TXT")
            assert reply.rcode() == rcode
            assert reply.answer == [] and reply.authority == []


def test_a_delayed_name_answers_late_and_others_meanwhile(server):
    got = {}
    started = time.monotonic()
    late = threading.Thread(target=lambda: got.setdefault(
        "late", ask(server.port, "late.example.com", "A")))
    late.start()
    assert ask(server.port, "example.com", "A").answer  # not held up
    assert time.monotonic() - started < 0.4
    late.join()
    assert time.monotonic() - started >= 0.5
    assert [str(r) for r in got["late"].answer[0]] == ["192.0.2.5"]


def test_wildcard(server):
    resolver = resolver_at(server.port)
    for name in ("any.wild.example.com", "a.b.wild.example.com"):
        answer = resolver.resolve(name, "A")
        assert [r.address for r in answer] == ["192.0.2.99"]
        assert answer.rrset.name.to_text() == name + "."
    # Never for a name that exists, nor below another closest encloser
    # (RFC 4592 section 3.3.1).
    with pytest.raises(dns.resolver.NoAnswer):
        resolver.resolve("host.wild.example.com", "A")
    with pytest.raises(dns.resolver.NXDOMAIN):
        resolver.resolve("y.sub.wild.example.com", "A")


def test_ttl_default_and_per_zone_set(server):
    answer = resolver_at(server.port).resolve("example.com", "A")
    assert answer.rrset.ttl == DEFAULT_TTL
    server.set_zones({"example.com": [{"A": "192.0.2.1"}]}, ttl=60)
    answer = resolver_at(server.port).resolve("example.com", "A")
    assert answer.rrset.ttl == 60


def test_zones_are_replaced_at_run_time(server):
    resolver = resolver_at(server.port)
    server.set_zones({"other.example": [{"TXT": "new"}]})
    assert [r.strings for r in resolver.resolve("other.example", "TXT")] == [
        (b"new",)]
    with pytest.raises(dns.resolver.NXDOMAIN):
        resolver.resolve("example.com", "TXT")


def test_zone_changes_while_serving_are_safe(server):
    zone_sets = [{"flip.example": [{"A": "192.0.2.%d" % n}]} for n in (1, 2)]
    seen, errors = set(), []

    def query_loop():
        resolver = resolver_at(server.port)
        try:
            for _ in range(40):
                seen.add(resolver.resolve("flip.example", "A")[0].address)
        except Exception as error:          # reported by the assert below
            errors.append(error)

    server.set_zones(zone_sets[0])
    threads = [threading.Thread(target=query_loop) for _ in range(4)]
    for thread in threads:
        thread.start()
    for n in range(40):
        server.set_zones(zone_sets[n % 2])
    for thread in threads:
        thread.join()
    assert errors == []
    assert seen <= {"192.0.2.1", "192.0.2.2"}
    assert server.queries("flip.example", "A") == 160


# -- failures ----------------------------------------------------------------

@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_timeout_name_never_answers(server, tcp):
    resolver = resolver_at(server.port, lifetime=SHORT_TIMEOUT)
    started = time.monotonic()
    with pytest.raises(dns.exception.Timeout):
        resolver.resolve("slow.example.com", "TXT", tcp=tcp)
    assert time.monotonic() - started >= SHORT_TIMEOUT
    assert server.queries("slow.example.com", "TXT") >= 1
    # The server goes on answering other names.
    assert resolver_at(server.port).resolve("example.com", "A")


def test_timeout_applies_to_the_types_a_name_lacks(server):
    resolver = resolver_at(server.port, lifetime=SHORT_TIMEOUT)
    answer = resolver.resolve("txtonly-slow.example.com", "TXT")
    assert [r.strings for r in answer] == [(b"v=spf1 -all",)]
    with pytest.raises(dns.exception.Timeout):
        resolver.resolve("txtonly-slow.example.com", "SPF")


def test_servfail(server):
    assert ask(server.port, "broken.example.com", "A").rcode() == \
        dns.rcode.SERVFAIL
    with pytest.raises(dns.resolver.NoNameservers):
        resolver_at(server.port).resolve("broken.example.com", "A")


def test_malformed_names_get_formerr_and_the_server_lives_on(server):
    cases = {
        "label of 64 octets": [b"a" * 64, b"example", b"com"],
        "name of 255 octets": [b"b" * 63] * 4,
    }
    for what, labels in cases.items():
        reply = DNSRecord.parse(udp_exchange(server.port, raw_query(labels)))
        assert reply.header.id == 4242, what
        assert reply.header.rcode == 1, what        # FORMERR
    # Garbage after a query's header: FORMERR.  A response (QR=1) or a
    # packet shorter than a header: no reply at all.
    reply = DNSRecord.parse(udp_exchange(server.port,
                                         b"\x12\x34\x00\x00" + b"\xff" * 36))
    assert (reply.header.id, reply.header.rcode) == (0x1234, 1)
    for junk in (b"\xff" * 40, b"\x01\x02"):
        with pytest.raises(socket.timeout):
            udp_exchange(server.port, junk, timeout=SHORT_TIMEOUT)
    assert resolver_at(server.port).resolve("example.com", "A")


def test_bad_zone_data_is_refused():
    for zonedata in ({"x.example": [{"A": "not an address"}]},
                     {"x.example": [{"HINFO": "x"}]},
                     {"x.example": ["SOMETIMES"]},
                     {"x.example": {"A": "192.0.2.1"}}):
        with pytest.raises(ZoneError):
            DnsServer(zonedata)


# -- size limits ---------------------------------------------------------

def test_long_txt_is_split_into_character_strings(server):
    reply = ask(server.port, "long.example.com", "TXT", tcp=True)
    (rdata,) = reply.answer[0]
    assert [len(s) for s in rdata.strings] == [
        CHARACTER_STRING_MAX_OCTETS, CHARACTER_STRING_MAX_OCTETS,
        len(LONG_TXT) - 2 * CHARACTER_STRING_MAX_OCTETS]
    assert b"".join(rdata.strings) == LONG_TXT.encode()


def test_udp_truncation_makes_dnspython_retry_over_tcp(server):
    reply = ask(server.port, "long.example.com", "TXT")
    assert reply.flags & dns.flags.TC
    assert reply.answer == []
    assert reply.question[0].name.to_text() == "long.example.com."

    server.reset_queries()
    answer = resolver_at(server.port).resolve("long.example.com", "TXT")
    assert b"".join(answer[0].strings) == LONG_TXT.encode()
    assert server.queries("long.example.com", "TXT", "udp") == 1
    assert server.queries("long.example.com", "TXT", "tcp") == 1


def test_edns_payload_size_sets_the_udp_limit(server):
    plain = ask(server.port, "long.example.com", "TXT")
    assert len(plain.to_wire()) <= CLASSIC_UDP_PAYLOAD
    assert plain.flags & dns.flags.TC
    small = ask(server.port, "long.example.com", "TXT", use_edns=0,
                payload=600)
    assert small.flags & dns.flags.TC
    assert small.edns == 0
    large = ask(server.port, "long.example.com", "TXT", use_edns=0,
                payload=1232)
    assert not large.flags & dns.flags.TC
    assert b"".join(large.answer[0][0].strings) == LONG_TXT.encode()
    assert large.edns == 0


# -- query counts ----------------------------------------------------------

def test_query_counts_and_reset(server):
    resolver = resolver_at(server.port)
    for _ in range(3):
        resolver.resolve("example.com", "A")
    resolver.resolve("example.com", "MX")
    assert server.queries("example.com", "A") == 3
    assert server.queries("Example.COM.", "a") == 3
    assert server.queries("example.com", "MX") == 1
    assert server.queries("example.com") == 4
    assert server.query_log()[("example.com", "A", "udp")] == 3
    server.reset_queries()
    assert server.queries("example.com") == 0


# -- another client, and the program ------------------------------------------

def test_pydns_client(server):
    import DNS
    request = DNS.DnsRequest("example.com", qtype="TXT",
                             server=["127.0.0.1"], port=server.port,
                             timeout=2)
    reply = request.req()
    assert reply.header["status"] == "NOERROR"
    assert [a["data"] for a in reply.answers] == [
        [b"v=spf1 ip4:192.0.2.0/24 -all"]]
    nx = DNS.DnsRequest("nowhere.example.com", qtype="A",
                        server=["127.0.0.1"], port=server.port,
                        timeout=2).req()
    assert nx.header["status"] == "NXDOMAIN"


def test_command_line_server(tmp_path):
    zones = tmp_path / "zones.json"
    zones.write_text(json.dumps({"ttl": 30, "zonedata": ZONES}))
    process = subprocess.Popen(
        [sys.executable, str(SERVER_SCRIPT), "--zones", str(zones)],
        stdout=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([process.stdout], [], [],
                                    CLI_START_SECONDS)
        assert ready, "no PORT line"
        word, port = process.stdout.readline().split()
        assert word == "PORT"
        port = int(port)
        resolver = resolver_at(port)
        answer = resolver.resolve("example.com", "A")
        assert answer.rrset.ttl == 30
        assert resolver.resolve("example.com", "A", tcp=True)

        zones.write_text(json.dumps({"reloaded.example": [{"A": "192.0.2.5"}]}))
        process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + CLI_START_SECONDS
        while time.monotonic() < deadline:
            try:
                resolver.resolve("reloaded.example", "A")
                break
            except dns.resolver.NXDOMAIN:
                time.sleep(0.05)
        else:
            pytest.fail("SIGHUP did not reload the zones")

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=CLI_START_SECONDS) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()


# -- the openspf RFC 7208 suite --------------------------------------------

@pytest.fixture(scope="module")
def suite():
    return load_suite()


def test_suite_loads_every_case(suite):
    cases = all_cases(suite)
    assert len(cases) == SUITE_CASE_COUNT == 203
    assert len(suite) == 16
    assert len({case.name for _, case in cases}) == len(cases)
    case = next(case for _, case in cases if case.name == "nolocalpart")
    assert (case.host, case.helo, case.mailfrom) == (
        "1.2.3.4", "mail.example.net", "@example.net")
    assert case.results == ("fail",)
    assert case.explanation == "postmaster"
    assert case.spec == "4.3/2"
    assert all(case.results for _, case in cases)


def test_suite_zone_conventions(suite):
    record_lookup = next(s for s in suite if s.description == "Record lookup")
    served = record_lookup.served_zonedata()
    # {"TXT": "NONE"} means no TXT record, and stops SPF -> TXT doubling.
    assert served["spfonly.example.net"] == [{"SPF": "v=spf1 -all"}]
    assert served["txttimeout.example.net"] == [{"SPF": "v=spf1 -all"},
                                                 "TIMEOUT"]
    doubled = next(s for s in suite if s.description == "ALL mechanism syntax")
    for name, entries in doubled.served_zonedata().items():
        spf = [e["SPF"] for e in entries if "SPF" in e]
        txt = [e["TXT"] for e in entries if "TXT" in e]
        assert txt == spf, name


def test_reference_spf_resolves_at_the_server(server):
    result, _ = reference_spf(server.port, "192.0.2.3", "mail.example.com",
                              "user@example.com")
    assert result == "pass"
    assert server.queries("example.com", "TXT") == 1
    result, _ = reference_spf(server.port, "198.51.100.1", "mail.example.com",
                              "user@example.com")
    assert result == "fail"
    result, _ = reference_spf(server.port, "192.0.2.3", "mail.example.com",
                              "user@nowhere.example.com")
    assert result == "none"
    result, _ = reference_spf(server.port, "192.0.2.3", "mail.example.com",
                              "user@slow.example.com", timeout=SHORT_TIMEOUT)
    assert result == "temperror"


@pytest.mark.parametrize("backend", available_backends())
def test_pyspf_passes_the_rfc7208_suite(suite, backend):
    """Each scenario's zone data served by one server, each case checked
    by pyspf with the suite's options (testspf.py: DEFAULT explanation)."""
    passed, failures = 0, []
    with DnsServer() as server:
        for scenario in suite:
            server.set_zones(scenario.served_zonedata())
            server.reset_queries()
            for case in scenario.cases:
                result, explanation = reference_spf(
                    server.port, case.host, case.helo, case.mailfrom,
                    timeout=SUITE_LOOKUP_TIMEOUT, strict=case.strict,
                    default_explanation="DEFAULT", backend=backend)
                if case.accepts(result, explanation):
                    passed += 1
                else:
                    failures.append(
                        "%s (%s, RFC 7208 %s): want %s%s, got %s (%s)" % (
                            case.name, scenario.description, case.spec,
                            "/".join(case.results),
                            "" if case.explanation is None
                            else " %r" % case.explanation,
                            result, explanation))
            # Proof that pyspf asked our server, not the system's resolver.
            assert sum(server.query_log().values()) > 0, scenario.description
    print("\npyspf (%s): %d of %d RFC 7208 cases pass" % (
        backend, passed, SUITE_CASE_COUNT))
    for failure in failures:
        print("  FAIL " + failure)
    assert passed + len(failures) == SUITE_CASE_COUNT
    assert passed >= SUITE_MIN_PASSES, "\n".join(failures)

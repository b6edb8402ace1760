"""pc.dns against a real DNS server on loopback (tests/dns/dns_server.py)."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dns"))
from conftest import dns_serving  # noqa: E402
from dns_server import DnsServer  # noqa: E402

import portcullis as pc  # noqa: E402

ZONES = {
    "mail.example.test": [{"A": "192.0.2.10"}, {"AAAA": "2001:db8::10"}],
    "example.test": [{"MX": [20, "mx2.example.test"]}, {"MX": [10, "mx1.example.test"]},
                     {"TXT": ["v=spf1 ", "-all"]}, {"TXT": "second record"}],
    "10.2.0.192.in-addr.arpa": [{"PTR": "mail.example.test"}],
    # Each test times out on a name of its own: once unbound gave up on a
    # name it answers SERVFAIL (Failure) for it for a while, without asking.
    "slow.example.test": ["TIMEOUT"],
    "slow2.example.test": ["TIMEOUT"],
    "slow3.example.test": ["TIMEOUT"],
    "broken.example.test": ["SERVFAIL"],
}


@pytest.fixture(scope="module")
def dns_server() -> Iterator[DnsServer]:
    with dns_serving(ZONES) as server:
        yield server


def test_plain_lookups_return_each_type_as_policies_use_it(dns_server: DnsServer) -> None:
    assert pc.dns.resolve_sync("mail.example.test", "A") == ["192.0.2.10"]
    assert pc.dns.resolve_sync("mail.example.test", "aaaa") == ["2001:db8::10"]
    assert pc.dns.resolve_sync("example.test", "MX") == [(10, "mx1.example.test"), (20, "mx2.example.test")]
    assert sorted(pc.dns.resolve_sync("example.test", "TXT")) == ["second record", "v=spf1 -all"]
    assert pc.dns.resolve_sync("10.2.0.192.in-addr.arpa", "PTR") == ["mail.example.test"]
    assert pc.dns.resolve_sync("example.test", "A") == []  # the name exists, without A records


def test_failures_are_exceptions_naming_the_lookup(dns_server: DnsServer) -> None:
    with pytest.raises(pc.dns.NXDOMAIN) as nx:
        pc.dns.resolve_sync("nothing.example.test", "A")
    assert (nx.value.name, nx.value.type) == ("nothing.example.test", "A")
    with pytest.raises(pc.dns.NXDOMAIN):
        pc.dns.resolve_sync("a" * 64 + ".example.test", "TXT")  # a name that cannot exist
    started = time.monotonic()
    with pytest.raises(pc.dns.Timeout):
        pc.dns.resolve_sync("slow.example.test", "TXT")
    assert time.monotonic() - started < 3
    with pytest.raises(pc.dns.Failure):
        pc.dns.resolve_sync("broken.example.test", "TXT")
    assert issubclass(pc.dns.Timeout, pc.dns.Error) and issubclass(pc.dns.NXDOMAIN, pc.dns.Error)
    with pytest.raises(ValueError):
        pc.dns.resolve_sync("example.test", "SRV")


def test_async_lookups_run_side_by_side_without_blocking_the_loop(dns_server: DnsServer) -> None:
    async def main() -> tuple[list[object], float]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        tick = asyncio.create_task(ticker())
        results = await asyncio.gather(
            pc.dns.resolve("mail.example.test", "A"),
            pc.dns.resolve("example.test", "MX"),
            pc.dns.resolve("slow2.example.test", "TXT"),
            pc.dns.resolve("nothing.example.test", "A"),
            return_exceptions=True,
        )
        tick.cancel()
        return results, ticks

    results, ticks = asyncio.run(main())
    assert results[0] == ["192.0.2.10"]
    assert results[1] == [(10, "mx1.example.test"), (20, "mx2.example.test")]
    assert isinstance(results[2], pc.dns.Timeout)
    assert isinstance(results[3], pc.dns.NXDOMAIN)
    assert ticks > 20  # the loop ran on while the timeout lookup waited


def test_a_name_with_a_backslash_is_no_name_not_an_escape(dns_server: DnsServer) -> None:
    # libunbound read "\\." as a dot inside a label and "\\000" as a NUL: the name asked was
    # not the one written, and the length check counted another.
    for name in ("mail\\.example.test", "mail\\000.example.test", "mail.example.test\\"):
        with pytest.raises(pc.dns.NXDOMAIN):
            pc.dns.resolve_sync(name, "A")
    assert pc.dns.resolve_sync("mail.example.test", "A") == ["192.0.2.10"]


def test_a_cancelled_lookup_leaves_nothing_behind(dns_server: DnsServer) -> None:
    async def main() -> list[str]:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(pc.dns.resolve("slow3.example.test", "TXT"), 0.05)
        await asyncio.sleep(1.2)  # its answer (a timeout) arrives and is dropped
        return await pc.dns.resolve("mail.example.test", "A")

    assert asyncio.run(main()) == ["192.0.2.10"]
    assert not pc.dns._waiting


def test_loops_on_several_threads_get_their_own_answers(dns_server: DnsServer) -> None:
    got: dict[int, object] = {}

    def run(i: int) -> None:
        name = "mail.example.test" if i % 2 else "10.2.0.192.in-addr.arpa"
        kind = "A" if i % 2 else "PTR"
        got[i] = asyncio.run(pc.dns.resolve(name, kind))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == {i: (["192.0.2.10"] if i % 2 else ["mail.example.test"]) for i in range(6)}


def test_answers_come_from_the_cache_within_their_ttl(dns_server: DnsServer) -> None:
    before = dns_server.queries("mail.example.test", "A")
    for _ in range(5):
        assert pc.dns.resolve_sync("mail.example.test", "A") == ["192.0.2.10"]
    assert dns_server.queries("mail.example.test", "A") == before  # asked once, in the first test


@pytest.mark.parametrize("evil", [["SERVFAIL", {"DELAY": 2.5}], ["TIMEOUT"]], ids=["late", "never"])
def test_names_the_nameserver_answers_late_or_never_cost_no_other_lookup(evil: list) -> None:
    # A sender picks names whose zone's servers are dead (SPF, DKIM d= and s=, DMARC): the
    # nameserver (a recursive one) answers SERVFAIL after its own timeout, past ours, or not
    # at all. Their queries stay out past our timeout; 20 at once took unbound's few ports,
    # and every other lookup waited, unsent, and failed, for minutes after (README: a
    # nameserver that stops answering costs each lookup its timeout; here it answers the
    # other names at once).
    zones = {f"evil{i}.attacker.test": evil for i in range(400)}
    zones.update({f"good{i}.example.test": [{"A": "192.0.2.1"}] for i in range(40)})
    with dns_serving(zones):
        names = iter(range(400))
        lock = threading.Lock()
        stop = time.monotonic() + 5

        def attack() -> None:
            while time.monotonic() < stop:
                with lock:
                    i = next(names, None)
                if i is None:
                    return
                with pytest.raises(pc.dns.Error):
                    pc.dns.resolve_sync(f"evil{i}.attacker.test", "A")

        attackers = [threading.Thread(target=attack) for _ in range(20)]
        for t in attackers:
            t.start()
        during = []
        while time.monotonic() < stop - 1:
            during.append(pc.dns.resolve_sync(f"good{len(during)}.example.test", "A"))
            time.sleep(0.2)
        for t in attackers:
            t.join()
        after = [pc.dns.resolve_sync(f"good{30 + i}.example.test", "A") for i in range(5)]
        assert during == [["192.0.2.1"]] * len(during) and after == [["192.0.2.1"]] * 5

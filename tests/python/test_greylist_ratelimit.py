"""policies/greylist.py and policies/ratelimit.py through the testing
harness, on the memory store. Two daemons sharing one Redis:
tests/e2e/test_greylist_ratelimit.py."""

from __future__ import annotations

import hashlib
import itertools
import time
import tomllib
from pathlib import Path

import pytest

import portcullis as pc
from portcullis.testing import Harness, PolicyLoadError

POLICIES = Path(__file__).resolve().parents[2] / "policies"
_networks = itertools.count(1)


def fresh_net() -> str:
    """A client address in a /24 no earlier test used (the memory store lives as long as the process)."""
    n = next(_networks)
    return f"10.{n // 256}.{n % 256}.7"


def attempt(h: Harness, client: str, sender: str, rcpt: str, **kw):
    s = h.connect(client_ip=client, helo="client.example", **kw)
    assert s.mail(sender, **({"spf": kw.pop("spf")} if "spf" in kw else {})).code == 250
    return s, s.rcpt(rcpt)


# -- greylisting


NOW = [1_800_000_000.0]  # the harness's clock (pc.now()): tests move it instead of sleeping


def greylist(**table) -> Harness:
    return Harness([POLICIES / "greylist.py"], config={"greylist": {"delay": 1, **table}}, clock=lambda: NOW[0])


def test_a_new_triplet_waits_then_passes_and_is_remembered():
    with greylist() as h:
        net = fresh_net()
        _, r = attempt(h, net, "a@example.com", "b@example.test")
        assert r == (451, "4.7.1", "Greylisted, try again in 1 seconds")
        _, r = attempt(h, net, "a@example.com", "b@example.test")
        assert r[:2] == (451, "4.7.1")  # too early
        NOW[0] += 1.1
        neighbour = net.rsplit(".", 1)[0] + ".99"  # the same /24: a pool of outbound servers
        _, r = attempt(h, neighbour, "A+tag@Example.COM", "B@example.test")
        assert r.code == 250
        _, r = attempt(h, net, "a@example.com", "b@example.test")
        assert r.code == 250  # known now
        _, r = attempt(h, net, "a@example.com", "c@example.test")
        assert r[:2] == (451, "4.7.1")  # another recipient is another triplet


def test_exemptions():
    net = fresh_net()
    with greylist(networks=[net.rsplit(".", 1)[0] + ".0/24"]) as h:
        assert attempt(h, net, "a@example.com", "b@example.test")[1].code == 250
    with greylist() as h:
        assert attempt(h, fresh_net(), "a@example.com", "b@example.test", auth_user="alice")[1].code == 250
    with greylist(skip_spf_pass=True) as h:
        net = fresh_net()
        s = h.connect(client_ip=net, helo="client.example")
        s.mail("a@example.com", spf="pass")
        assert s.rcpt("b@example.test").code == 250
        s.rset()
        s.mail("a@example.com", spf="softfail")
        assert s.rcpt("b@example.test")[:2] == (451, "4.7.1")


def test_dkim_pass_decides_at_the_end_of_data():
    with greylist(skip_dkim_pass=True) as h:
        net = fresh_net()
        s = h.connect(client_ip=net, helo="client.example")
        s.mail("a@example.com")
        assert s.rcpt("b@example.test").code == 250
        assert s.data("Subject: x\r\n\r\nbody\r\n")[:2] == (451, "4.7.1")
        s.mail("a@example.com")
        assert s.rcpt("c@example.test").code == 250
        assert s.data("Subject: x\r\n\r\nbody\r\n", dkim=[("pass", "example.com", "s1")]).code == 250
        # That triplet is known now: no DKIM needed next time.
        s.mail("a@example.com")
        s.rcpt("c@example.test")
        assert s.data("Subject: x\r\n\r\nbody\r\n").code == 250


def test_every_spelling_of_a_mailbox_is_one_triplet():
    with greylist() as h:
        net = fresh_net()
        _, r = attempt(h, net, '"alice"@example.com', "bob@bücher.example")
        assert r[:2] == (451, "4.7.1")
        NOW[0] += 1.1
        # Quoted or not, escaped or not, +extension on the unquoted local part, U- or A-label domain.
        _, r = attempt(h, net, '"al\\ice+news"@EXAMPLE.com', "Bob@xn--bcher-kva.example")
        assert r.code == 250
        _, r = attempt(h, net, "alice@example.com", '"bob"@BÜCHER.example')
        assert r.code == 250


def test_a_local_part_starting_with_plus_is_not_an_extension():
    # "+a@o" was cut to "@o": every such sender of a domain shared one triplet.
    with greylist() as h:
        net = fresh_net()
        assert attempt(h, net, "+a@example.com", "b@example.test")[1][:2] == (451, "4.7.1")
        NOW[0] += 1.1
        assert attempt(h, net, "+a@example.com", "b@example.test")[1].code == 250
        assert attempt(h, net, "+b@example.com", "b@example.test")[1][:2] == (451, "4.7.1")
        assert attempt(h, net, "+a+x@example.com", "b@example.test")[1][:2] == (451, "4.7.1")


def test_the_extension_is_cut_at_the_sites_recipient_delimiter():
    """greylist.py cut only "+": with [aliases] recipient_delimiter = "-" (ratelimit.py and
    senders.py cut at "-"), alice-news@ was a triplet of its own. Its own key wins."""
    config = {"greylist": {"delay": 1}, "aliases": {"recipient_delimiter": "-"}}
    with Harness([POLICIES / "greylist.py"], config=config, clock=lambda: NOW[0]) as h:
        net = fresh_net()
        assert attempt(h, net, "alice-news@example.com", "b@example.test")[1][:2] == (451, "4.7.1")
        NOW[0] += 1.1
        assert attempt(h, net, "alice-digest@example.com", "b@example.test")[1].code == 250
        # Postfix's split_addr keeps list addresses whole: owner-list@ is not owner@.
        assert attempt(h, net, "owner-list@example.com", "b@example.test")[1][:2] == (451, "4.7.1")
    with greylist(recipient_delimiter="") as h:  # "": no extension at all
        net = fresh_net()
        assert attempt(h, net, "alice+a@example.com", "b@example.test")[1][:2] == (451, "4.7.1")
        NOW[0] += 1.1
        assert attempt(h, net, "alice+b@example.com", "b@example.test")[1][:2] == (451, "4.7.1")


def test_plain_addresses_keep_the_keys_stored_before_canonical_keys():
    """An upgrade must not greylist every known triplet again: a plain address gives the key of the
    earlier versions (the network, the lowercased sender without +extension and recipient, hashed)."""
    with greylist() as h:
        net = fresh_net()
        network = net.rsplit(".", 1)[0] + ".0/24"
        triplet = "\0".join((network, "a@example.com", "b@example.test"))
        pc.store.set_sync("greylist:" + hashlib.sha256(triplet.encode()).hexdigest()[:32], "ok", ttl=3600)
        _, r = attempt(h, net, "A+list@Example.COM", "B@example.test")
        assert r.code == 250


def forwarding(tmp_path, files: list[str], **tables) -> Harness:
    """The policies ``files`` names, aliases.py among them (examples/forwarding has greylist.py
    first): forwarded RCPTs get an SRS sender, one that changes every day."""
    (tmp_path / "virtual").write_text("a@example.net a@elsewhere.example\nb@example.net b@elsewhere.example\n")
    (tmp_path / "portcullis.toml").write_text("")
    config = {"aliases": {"file": "virtual", "local_domains": ["example.net"], "srs_secret": "s3cret",
                          "srs_domain": "srs.example.net"}, **tables}
    return Harness([POLICIES / f for f in files], config_path=tmp_path / "portcullis.toml", config=config,
                   clock=lambda: NOW[0])


@pytest.mark.parametrize("files", [["greylist.py", "aliases.py"], ["aliases.py", "greylist.py"]])
def test_the_srs_sender_of_a_forwarded_rcpt_is_not_the_triplets_sender(tmp_path, files):
    with forwarding(tmp_path, files, greylist={"delay": 300}) as h:
        net = fresh_net()
        for n in range(3):  # the first attempt, a retry 6 minutes on, and the next day's mail
            s = h.connect(client_ip=net, helo="mta.origin.example")
            s.mail("eve@origin.example")
            replies = [s.rcpt("a@example.net"), s.rcpt("b@example.net")]
            expected = [451, 451] if n == 0 else [250, 250]
            assert [r.code for r in replies] == expected, (n, replies)
            if n == 1:
                assert s.data("Subject: hi\r\n\r\nhello\r\n").code == 250
                assert s.delivered[-1].sender.startswith("SRS0=")  # the forwarding did happen
            NOW[0] += 360 if n == 0 else 86400


def test_greylist_and_ratelimit_go_before_aliases_which_redirects_for_good(tmp_path):
    # aliases.py answers a list with pc.redirect, final by the contract: listed after it, greylisting
    # and rate limits never saw team@. The docs and the examples list them before it.
    text = (POLICIES.parent / "docs" / "aliases.md").read_text()
    files = tomllib.loads(text.split("## Enabling it", 1)[1].split("```toml", 1)[1].split("```", 1)[0])["policy"]["files"]
    configs = [POLICIES.parent / "docs" / "aliases.md"] + sorted((POLICIES.parent / "examples").glob("*/*.toml"))
    for where, listed in [(configs[0], files)] + [(c, tomllib.loads(c.read_text()).get("policy", {}).get("files", []))
                                                  for c in configs[1:]]:
        names = [Path(f).name for f in listed]
        if "aliases.py" in names:
            assert all(names.index(p) < names.index("aliases.py") for p in ("greylist.py", "ratelimit.py")
                       if p in names), (where, names)
    assert "greylist.py" in [Path(f).name for f in files]
    (tmp_path / "virtual").write_text("a@example.net a@example.net\nb@example.net b@example.net\n"
                                      "team@example.net a@example.net, b@example.net\n")
    (tmp_path / "portcullis.toml").write_text("")
    config = {"aliases": {"file": "virtual", "local_domains": ["example.net"]}, "greylist": {"delay": 1},
              "ratelimit": {"window": 60, "recipients_per_client": 1}}
    with Harness([POLICIES / f for f in ("greylist.py", "ratelimit.py", "aliases.py")],
                 config_path=tmp_path / "portcullis.toml", config=config, clock=lambda: NOW[0]) as h:
        net = fresh_net()
        assert attempt(h, net, "spam@spam.example", "team@example.net")[1][:2] == (451, "4.7.1")  # greylisted
        NOW[0] += 1.1
        s, r = attempt(h, net, "spam@spam.example", "team@example.net")
        assert r.code == 250
        assert s.rcpt("team@example.net")[:2] == (450, "4.7.1")  # counted: one recipient per client


@pytest.mark.parametrize("table,why", [({"delay": -1}, "delay"), ({"colour": 1}, "unknown key"),
                                       ({"networks": ["10.0.0.0/33"]}, "networks"), ({"skip_spf_pass": 1}, "true or false")])
def test_greylist_settings_are_checked(table, why):
    with pytest.raises(PolicyLoadError, match=why):
        greylist(**table)


# -- rate limits


def ratelimit(**table) -> Harness:
    NOW[0] = 1_800_000_000.0  # the start of a window (a multiple of every window the tests use)
    return Harness([POLICIES / "ratelimit.py"], config={"ratelimit": table}, clock=lambda: NOW[0])


def test_messages_per_client_and_the_retry_hint():
    with ratelimit(window=60, messages_per_client=3) as h:
        ip = fresh_net()
        for _ in range(3):
            assert h.connect(client_ip=ip, helo="c.example").mail("a@example.com").code == 250
        r = h.connect(client_ip=ip, helo="c.example").mail("a@example.com")
        assert r[:2] == (450, "4.7.1")
        assert r.text.startswith(f"Rate limit reached for client {ip} (3 messages per 60 s); try again in ")
        assert 1 <= int(r.text.split("try again in ")[1].split()[0]) <= 2 * 60  # (into the next window)
        r2 = h.connect(client_ip=ip, helo="c.example").mail("a@example.com")
        assert r2[:2] == (450, "4.7.1")  # refused attempts do not count, and do not unblock either
        assert h.connect(client_ip=fresh_net(), helo="c.example").mail("a@example.com").code == 250


# The hint is the moment the next attempt passes, not a second before: when
# enough of the previous window has slid out, in this window or (if this one
# alone is over the limit) in the next.
@pytest.mark.parametrize("start,sent_before", [(0, 0), (30, 0), (10, 3), (50, 2)])
def test_the_retry_hint_is_when_the_next_attempt_passes(start, sent_before):
    with ratelimit(window=60, messages_per_client=3) as h:
        ip = fresh_net()
        mail = lambda: h.connect(client_ip=ip, helo="c.example").mail("a@example.com")  # noqa: E731
        NOW[0] -= 60 - start  # sent_before in the window before, at its start
        for _ in range(sent_before):
            assert mail().code == 250
        NOW[0] += 60 - start + start
        while (r := mail()).code == 250:
            pass
        hint = int(r.text.split("try again in ")[1].split()[0])
        NOW[0] += hint - 1
        assert mail().code == 450, hint
        NOW[0] += 1
        assert mail().code == 250, hint


def test_recipients_per_login_and_per_sender():
    with ratelimit(window=60, recipients_per_login=2, recipients_per_sender=3) as h:
        ip = fresh_net()
        s = h.connect(client_ip=ip, helo="c.example", auth_user="Alice")
        s.mail("alice@example.test")
        assert [s.rcpt(f"r{i}@example.net").code for i in range(3)] == [250, 250, 450]
        assert "login Alice" in s.rcpt("x@example.net").text
        # Another login, same sender: the sender's own limit (3) is the one left.
        s = h.connect(client_ip=ip, helo="c.example", auth_user="bob")
        s.mail("Alice@example.test")
        assert s.rcpt("r9@example.net").code == 250
        r = s.rcpt("r10@example.net")
        assert r[:2] == (450, "4.7.1") and "sender <alice@example.test>" in r.text
        s.rset()
        s.mail("")  # <> has no sender limit
        assert s.rcpt("postmaster@example.net").code == 250


def test_every_spelling_of_a_sender_counts_against_one_limit():
    with ratelimit(window=60, messages_per_sender=2) as h:
        mail = lambda sender: h.connect(client_ip=fresh_net(), helo="c.example").mail(sender)  # noqa: E731
        assert mail("alice@bücher.example").code == 250
        assert mail('"alice"@xn--bcher-kva.example').code == 250
        r = mail('"al\\ice"@BÜCHER.example')
        assert r[:2] == (450, "4.7.1") and "sender <alice@xn--bcher-kva.example>" in r.text
        # A local part that needs its quotes is named with them.
        replies = [mail('"john smith"@example.test'), mail('"john\\ smith"@Example.test'),
                   mail('"John Smith"@example.test')]
        assert [r.code for r in replies] == [250, 250, 450]
        assert 'sender <"john smith"@example.test>' in replies[2].text


def test_extensions_of_a_sender_count_against_its_mailboxs_limit():
    with ratelimit(window=60, messages_per_sender=2) as h:
        n = next(_networks)  # counters outlive a test: a sender of its own
        mail = lambda sender: h.connect(client_ip=fresh_net(), helo="c.example").mail(sender)  # noqa: E731
        replies = [mail(f"alice{n}+1@example.com"), mail(f"Alice{n}+2@example.com"), mail(f"alice{n}@example.com")]
        assert [r.code for r in replies] == [250, 250, 450]
        assert f"sender <alice{n}@example.com>" in replies[2].text
        assert mail(f"+alice{n}@example.com").code == 250  # a delimiter in first place is no extension
    # The delimiter is [aliases]'s unless [ratelimit] sets its own.
    config = {"ratelimit": {"window": 60, "messages_per_sender": 1}, "aliases": {"recipient_delimiter": "-"}}
    with Harness([POLICIES / "ratelimit.py"], config=config, clock=lambda: NOW[0]) as h:
        mail = lambda sender: h.connect(client_ip=fresh_net(), helo="c.example").mail(sender).code  # noqa: E731
        assert [mail(f"bob{n}-a@example.com"), mail(f"bob{n}-b@example.com"), mail(f"bob{n}+c@example.com")] \
            == [250, 450, 250]
    config["ratelimit"]["recipient_delimiter"] = "+"
    with Harness([POLICIES / "ratelimit.py"], config=config, clock=lambda: NOW[0]) as h:
        assert [mail(f"carol{n}+a@example.com"), mail(f"carol{n}+b@example.com"), mail(f"carol{n}-c@example.com")] \
            == [250, 450, 250]


@pytest.mark.parametrize("files", [["ratelimit.py", "aliases.py"], ["aliases.py", "ratelimit.py"]])
def test_the_srs_sender_of_a_forwarded_rcpt_counts_as_the_senders(tmp_path, files):
    with forwarding(tmp_path, files, ratelimit={"window": 60, "recipients_per_sender": 2}) as h:
        sender = f"eve{next(_networks)}@origin.example"  # counters outlive a test: a sender of its own
        s = h.connect(client_ip=fresh_net(), helo="mta.origin.example")
        s.mail(sender)
        replies = [s.rcpt("a@example.net"), s.rcpt("b@example.net"), s.rcpt("x@other.example")]
        assert [r.code for r in replies] == [250, 250, 450]
        assert f"sender <{sender}>" in replies[2].text


def test_every_counter_write_carries_the_windows_time_to_live(monkeypatch):
    # A refused attempt's refund (by=-1) too: a counter evicted from a full memory store
    # between the count and the refund is made again by it, and without a ttl it lived
    # forever (at -1: one more attempt past the limit, and a key never evicted).
    calls = []
    real_incr = pc.store.incr

    async def recording_incr(key, ttl=None, *, by=1):
        calls.append((by, ttl))
        return await real_incr(key, ttl, by=by)

    monkeypatch.setattr(pc.store, "incr", recording_incr)
    with ratelimit(window=60, messages_per_client=1) as h:
        ip = fresh_net()
        assert [h.connect(client_ip=ip, helo="c.example").mail("a@example.com").code for _ in range(2)] == [250, 450]
    assert [by for by, _ in calls] == [1, 1, -1]
    assert all(ttl == 2 * 60 + 60 for _, ttl in calls)


def test_the_window_slides():
    with ratelimit(window=2, messages_per_client=2) as h:
        ip = fresh_net()
        mail = lambda: h.connect(client_ip=ip, helo="c.example").mail("a@example.com").code  # noqa: E731
        assert [mail(), mail(), mail()] == [250, 250, 450]
        NOW[0] += 1  # half a window on: still this window's 2
        assert mail() == 450
        NOW[0] += 2  # the next window, halfway: the last one's 2 weigh 1, so one more fits
        assert [mail(), mail()] == [250, 450]
        NOW[0] += 4  # two whole windows on, nothing counts
        assert [mail(), mail(), mail()] == [250, 250, 450]


def test_exempt_networks_and_ipv6_networks():
    with ratelimit(window=60, messages_per_client=1, networks=["192.0.2.0/24"]) as h:
        assert [h.connect(client_ip="192.0.2.9", helo="c").mail("a@example.com").code for _ in range(3)] == [250] * 3
        base = f"2001:db8:{next(_networks):x}::"
        assert h.connect(client_ip=base + "1", helo="c").mail("a@example.com").code == 250
        assert h.connect(client_ip=base + "2", helo="c").mail("a@example.com").code == 450  # the same /64


@pytest.mark.parametrize("table,why", [({"window": 0}, "window"), ({"messages_per_client": -1}, "messages_per_client"),
                                       ({"colour": 1}, "unknown key"), ({"networks": ["x"]}, "networks"),
                                       ({"recipient_delimiter": 1}, "recipient_delimiter")])
def test_ratelimit_settings_are_checked(table, why):
    with pytest.raises(PolicyLoadError, match=why):
        ratelimit(**table)

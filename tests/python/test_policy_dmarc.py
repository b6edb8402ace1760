"""policies/dmarc.py with the testing harness: what it does with each
tx.dmarc (the daemon's own evaluation is tested end to end in
tests/e2e/test_dmarc.py), and its [dmarc] options."""

from __future__ import annotations

from pathlib import Path

import pytest

import portcullis as pc
from portcullis.testing import Harness, PolicyLoadError

POLICY = Path(__file__).resolve().parents[2] / "policies" / "dmarc.py"
MESSAGE = "From: alice@example.test\r\nTo: bob@example.net\r\nSubject: hi\r\n\r\nHello\r\n"
HEADER = "X-Portcullis-Quarantine"


def dmarc(result="fail", policy="reject", disposition=None, domain="example.test", **more):
    return pc.DmarcResult(result, domain, policy, disposition if disposition is not None else policy,
                          domain, 100, False, False, **more)


def unusable_from():
    """What the daemon reports for a From with no domain to evaluate."""
    return pc.DmarcResult("permerror", "", None, None, "", 100, False, False, (), True)


def deliver(h: Harness, result: pc.DmarcResult | None, message: str = MESSAGE, auth_user=None, arc=None):
    s = h.connect(helo="client.example.test", auth_user=auth_user)
    s.mail("a@example.test")
    s.rcpt("bob@example.net")
    reply = s.data(message, dmarc=result, arc=arc)
    return reply, (s.delivered[-1] if s.delivered else None)


def test_reject_quarantine_and_what_passes():
    h = Harness([POLICY])
    reply, _ = deliver(h, dmarc("fail", "reject"))
    assert reply[:2] == (550, "5.7.1") and "DMARC policy of example.test" in reply.text
    reply, delivered = deliver(h, dmarc("fail", "quarantine"))
    assert reply.code == 250
    assert delivered.as_email()[HEADER] == "DMARC policy of example.test (p=quarantine)"
    for result in (dmarc("pass", "reject", "none"), dmarc("none", None), dmarc("permerror", None),
                   dmarc("fail", "none"), dmarc("temperror", None), None):
        reply, delivered = deliver(h, result)
        assert reply.code == 250, result
        assert HEADER not in delivered.as_email(), result


def test_a_temperror_of_a_domain_whose_policy_is_known_is_deferred():
    # An aligned SPF or DKIM check failed on DNS: it may pass when tried again (never refused for
    # good), and it must not let a forger through who can make such a lookup time out.
    h = Harness([POLICY])
    for policy in ("reject", "quarantine"):
        reply, _ = deliver(h, dmarc("temperror", policy, "none"))
        assert reply[:2] == (451, "4.7.5") and "example.test" in reply.text, policy
    assert deliver(h, dmarc("temperror", "none", "none"))[0].code == 250  # nothing to enforce
    assert deliver(Harness([POLICY], config={"dmarc": {"reject": "none"}}), dmarc("temperror", "reject", "none"))[0].code == 250


def test_a_forged_mark_is_removed():
    h = Harness([POLICY])
    forged = f"{HEADER}: no\r\n{HEADER}: really\r\n" + MESSAGE
    _, delivered = deliver(h, dmarc("pass", "reject", "none"), forged)
    assert HEADER not in delivered.as_email()
    _, delivered = deliver(h, dmarc("fail", "quarantine"), forged)
    assert delivered.as_email().get_all(HEADER) == ["DMARC policy of example.test (p=quarantine)"]


def test_pct_is_honoured_unless_told_otherwise():
    sampled_out = dmarc("fail", "reject", "quarantine")
    reply, delivered = deliver(Harness([POLICY]), sampled_out)
    assert reply.code == 250 and HEADER in delivered.as_email()
    reply, _ = deliver(Harness([POLICY], config={"dmarc": {"honour_pct": False}}), sampled_out)
    assert reply.code == 550


def test_options():
    h = Harness([POLICY], config={"dmarc": {"reject": "none", "quarantine": "reject", "temperror": "tempfail",
                                            "skip_domains": ["Lists.Example.test"], "quarantine_header": "X-Q"}})
    assert deliver(h, dmarc("fail", "reject"))[0].code == 250
    assert deliver(h, dmarc("fail", "quarantine"))[0].code == 550
    assert deliver(h, dmarc("temperror", None))[0][:2] == (451, "4.7.5")
    # A policy fetched that would not act on a failure: nothing to wait for (it said "could not be fetched").
    assert deliver(h, dmarc("temperror", "none", "none"))[0].code == 250
    assert deliver(h, dmarc("temperror", "reject", "none"))[0].code == 250  # (reject = "none" here)
    assert deliver(h, dmarc("fail", "quarantine", domain="lists.example.test"))[0].code == 250
    h = Harness([POLICY], config={"dmarc": {"quarantine_header": "X-Q"}})
    assert deliver(h, dmarc("fail", "quarantine"))[1].as_email()["X-Q"].startswith("DMARC policy")


def test_authenticated_senders_are_not_enforced_unless_told():
    assert deliver(Harness([POLICY]), dmarc("fail", "reject"), auth_user="alice")[0].code == 250
    h = Harness([POLICY], config={"dmarc": {"skip_authenticated": False}})
    assert deliver(h, dmarc("fail", "reject"), auth_user="alice")[0].code == 550


def test_a_trusted_forwarders_arc_chain_excuses_a_failure():
    h = Harness([POLICY], config={"dmarc": {"trusted_forwarders": ["Lists.Example.net"]}})
    by_list = pc.ArcResult("pass", 1, ("lists.example.net",))
    vouched = dmarc("fail", "reject", arc_aligned=True)
    assert deliver(h, vouched, arc=by_list)[0].code == 250
    assert any("excused" in line.message for line in h.logs)
    # A chain that fails, or one sealed by others only, excuses nothing.
    assert deliver(h, vouched, arc=pc.ArcResult("fail", 1, ("lists.example.net",)))[0].code == 550
    assert deliver(h, vouched, arc=pc.ArcResult("pass", 1, ("other.test",)))[0].code == 550
    assert deliver(Harness([POLICY]), vouched, arc=by_list)[0].code == 550


def test_only_the_newest_seal_of_a_trusted_forwarder_excuses():
    """A seal covers only the ARC fields (RFC 8617 §5.2 validates the newest message signature alone): an
    older set of the list's is anyone's to copy from mail the list once sent them onto a forgery, under a
    set of their own. Only the newest sealer handed the message over."""
    h = Harness([POLICY], config={"dmarc": {"trusted_forwarders": ["lists.example.net"]}})
    vouched = dmarc("fail", "reject", arc_aligned=True)
    replayed = pc.ArcResult("pass", 2, ("lists.example.net", "evil.test"))
    assert deliver(h, vouched, arc=replayed)[0][:2] == (550, "5.7.1")
    relayed_on = pc.ArcResult("pass", 2, ("other.test", "lists.example.net"))
    assert deliver(h, vouched, arc=relayed_on)[0].code == 250


def test_a_trusted_forwarder_vouches_only_for_what_it_found_authenticated():
    """The list's own findings, in its ARC-Authentication-Results (tx.dmarc.arc_aligned), must show the From
    domain authenticated when the list got it: else the list relayed a forgery, and its seal says so."""
    h = Harness([POLICY], config={"dmarc": {"trusted_forwarders": ["lists.example.net"]}})
    by_list = pc.ArcResult("pass", 1, ("lists.example.net",))
    reply, _ = deliver(h, dmarc("fail", "reject"), arc=by_list)
    assert reply[:2] == (550, "5.7.1")
    assert any("not excused" in line.message for line in h.logs)


def test_a_from_with_no_domain_to_check_is_refused_unless_told():
    """No From field, one that does not parse, too many domains...: outside DMARC, so a forgery could make
    its From so. `unusable_from` decides, rejecting by default; a broken DMARC record stays unenforced."""
    reply, _ = deliver(Harness([POLICY]), unusable_from())
    assert reply[:2] == (550, "5.7.1") and "From" in reply.text, reply
    reply, delivered = deliver(Harness([POLICY], config={"dmarc": {"unusable_from": "quarantine"}}), unusable_from())
    assert reply.code == 250
    assert delivered.as_email()[HEADER] == "DMARC: no usable From domain"
    reply, delivered = deliver(Harness([POLICY], config={"dmarc": {"unusable_from": "none"}}), unusable_from())
    assert reply.code == 250 and HEADER not in delivered.as_email()
    assert deliver(Harness([POLICY]), unusable_from(), auth_user="alice")[0].code == 250
    assert deliver(Harness([POLICY]), dmarc("permerror", None))[0].code == 250


def test_several_from_domains_are_skipped_only_when_all_are_listed():
    """The daemon reports the strictest failure among a From's domains; skip_domains must not let a listed
    one carry an unlisted one through."""
    h = Harness([POLICY], config={"dmarc": {"skip_domains": ["partner.test"]}})
    both = dmarc("fail", "reject", domain="partner.test", from_domains=("partner.test", "paypal.test"))
    assert deliver(h, both)[0].code == 550
    listed = dmarc("fail", "reject", domain="partner.test", from_domains=("partner.test", "xn--prtner-bua.test"))
    h = Harness([POLICY], config={"dmarc": {"skip_domains": ["partner.test", "pärtner.test"]}})
    assert deliver(h, listed)[0].code == 250


@pytest.mark.parametrize("listed,reported", [("bücher.example", "xn--bcher-kva.example"),
                                              ("XN--BCHER-KVA.example.", "bücher.example"),
                                              ("Bücher.Example", "BÜCHER.example")])
def test_domains_match_in_u_labels_and_a_labels(listed, reported):
    """An internationalized name is one name in U-labels and in A-labels: a list entry matches the
    domain the DMARC result or the ARC chain reports, in either form."""
    h = Harness([POLICY], config={"dmarc": {"skip_domains": [listed]}})
    assert deliver(h, dmarc("fail", "reject", domain=reported))[0].code == 250
    assert deliver(h, dmarc("fail", "reject", domain="other.example"))[0].code == 550
    h = Harness([POLICY], config={"dmarc": {"trusted_forwarders": ["lists." + listed]}})
    vouched = dmarc("fail", "reject", arc_aligned=True)
    assert deliver(h, vouched, arc=pc.ArcResult("pass", 1, ("lists." + reported,)))[0].code == 250
    assert deliver(h, vouched, arc=pc.ArcResult("pass", 1, ("lists.other.example",)))[0].code == 550


@pytest.mark.parametrize("table", [{"trusted_forwarders": "lists.test"}, {"rejet": "none"}, {"reject": "bounce"}, {"temperror": "reject"},
                                   {"unusable_from": "accept"},
                                   {"honour_pct": "yes"}, {"quarantine_header": "X Bad"},
                                   {"skip_domains": "example.test"}])
def test_a_bad_table_stops_the_policy_loading(table):
    with pytest.raises(PolicyLoadError):
        Harness([POLICY], config={"dmarc": table})

"""DMARC ([checks] dmarc, RFC 7489) through the daemon: SPF records, DKIM
keys and DMARC policies served by a real DNS server on loopback, mail
signed by dkimpy, PROXY headers giving each connection the client address
under test. tx.dmarc is reported by a policy and compared, case by case,
with an independent implementation (authheaders, the DMARC of dkimpy's
authors) on the same DNS; policies/dmarc.py enforces it."""

from __future__ import annotations

import re
import sys
import threading
import time
from pathlib import Path

import pytest
from authheaders import check_dmarc
from authres import DKIMAuthenticationResult, SPFAuthenticationResult

from conftest import HOSTNAME
from dkim_helpers import make_keys, sign, txt_lookup

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dns"))
from dns_server import DnsServer  # noqa: E402

DMARC_POLICY = Path(__file__).resolve().parents[2] / "policies" / "dmarc.py"

# Reports what the checks found in a 451 after the data (nothing is relayed).
REPORTER = """
import portcullis as pc

def on_data(tx, message):
    d = tx.dmarc
    if d is None:
        return pc.tempfail("dmarc=unset")
    return pc.tempfail(f"dmarc={d.result} from={d.domain or '-'} p={d.policy} dis={d.disposition} "
                       f"org={d.org_domain or '-'} spf={tx.spf.result}:{int(d.spf_aligned)} "
                       f"dkim={','.join(s.result + ':' + s.domain for s in tx.dkim) or '-'}:{int(d.dkim_aligned)} "
                       f"authors={','.join(d.from_domains) or '-'} unusable={int(d.unusable_from)}")
"""

CLIENT = "192.0.2.7"         # permitted by the SPF records below
STRANGER = "198.51.100.1"    # permitted by none


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    return make_keys(tmp_path_factory.mktemp("dmarc"))


def zones(keys: dict) -> dict:
    spf = [{"TXT": "v=spf1 ip4:192.0.2.0/24 -all"}]
    key = [{"TXT": keys["rsa_record"]}]
    return {
        "example.co.uk": spf,
        "bounces.example.co.uk": spf,
        "_dmarc.example.co.uk": [{"TXT": "v=DMARC1; p=reject; sp=quarantine; rua=mailto:dmarc@example.co.uk"}],
        "rsa._domainkey.example.co.uk": key,
        "other.co.uk": spf,  # no DMARC record
        "rsa._domainkey.other.co.uk": key,
        "strict.co.uk": spf,
        "bounces.strict.co.uk": spf,
        "_dmarc.strict.co.uk": [{"TXT": "v=DMARC1; p=reject; aspf=s; adkim=s"}],
        "quarantine.co.uk": [{"TXT": "v=spf1 -all"}],
        "_dmarc.quarantine.co.uk": [{"TXT": "v=DMARC1; p=quarantine"}],
        "pct.co.uk": [{"TXT": "v=spf1 -all"}],
        "_dmarc.pct.co.uk": [{"TXT": "v=DMARC1; p=reject; pct=0"}],
        "_dmarc.slow.co.uk": ["TIMEOUT"],
        "_dmarc.slow2.co.uk": ["TIMEOUT"],
        "spfslow.co.uk": ["TIMEOUT"],  # its SPF record never comes
        "_dmarc.spfslow.co.uk": [{"TXT": "v=DMARC1; p=reject"}],
        "_dmarc.broken.co.uk": [{"TXT": "v=DMARC1; rua=mailto:dmarc@broken.co.uk"}],  # no p=
        "xn--exmple-cua.co.uk": spf,  # exämple.co.uk, as DNS has it
        "_dmarc.xn--exmple-cua.co.uk": [{"TXT": "v=DMARC1; p=reject"}],
    }


@pytest.fixture
def dns_server(keys):
    with DnsServer(zones(keys)) as server:
        yield server


@pytest.fixture
def dmarc_daemon(policy_daemon, aiosmtpd_upstream, dns_server):
    def start(*policies, **tables):
        return policy_daemon(
            aiosmtpd_upstream.url, *(policies or (REPORTER,)),
            server={"proxy_protocol": True, **tables.pop("server", {})},
            checks={"spf": True, "dkim": True, "dmarc": True, **tables.pop("checks", {})},
            dns={"nameserver": f"127.0.0.1:{dns_server.port}", "timeout": 1}, **tables)

    return start


def message(author: str, subject: str = "DMARC test") -> bytes:
    return (f"From: Alice <{author}>\r\nTo: bob@example.net\r\nSubject: {subject}\r\n"
            "Date: Wed, 02 Dec 2026 12:00:00 +0000\r\nMessage-ID: <dmarc-test@example.test>\r\n\r\n"
            "Hello Bob.\r\n").encode()


def send(d, client: str, mail_from: str, body: bytes):
    """One transaction from `client` (a PROXY header); the reply after the data."""
    with d.client() as c:
        c.send(f"PROXY TCP4 {client} 127.0.0.1 40000 25\r\n".encode())
        c.expect(220)
        c.exchange("EHLO client.example.test", 250)
        return c.transaction(mail_from, ["bob@example.net"], body.rstrip(b"\r\n"))


def dmarc_of(d, client: str, mail_from: str, body: bytes) -> dict[str, str]:
    r = send(d, client, mail_from, body)
    assert r.code == 451 and r.text.startswith("dmarc="), str(r)
    return dict(field.split("=", 1) for field in r.text.split())


# (name, client, MAIL FROM, From, signer's d= or None, expected result, p, disposition)
CASES = [
    ("spf-aligned-relaxed", CLIENT, "a@bounces.example.co.uk", "alice@example.co.uk", None, "pass", "reject", "none"),
    ("dkim-aligned", STRANGER, "a@other.co.uk", "alice@example.co.uk", "example.co.uk", "pass", "reject", "none"),
    ("nothing-aligned", CLIENT, "a@other.co.uk", "alice@example.co.uk", None, "fail", "reject", "reject"),
    ("third-party-signature", STRANGER, "a@other.co.uk", "alice@example.co.uk", "other.co.uk", "fail", "reject", "reject"),
    ("no-record", CLIENT, "a@example.co.uk", "bob@other.co.uk", None, "none", "None", "None"),
    ("strict-spf", CLIENT, "a@bounces.strict.co.uk", "alice@strict.co.uk", None, "fail", "reject", "reject"),
    ("strict-same-name", CLIENT, "a@strict.co.uk", "alice@strict.co.uk", None, "pass", "reject", "none"),
    ("subdomain-sp", STRANGER, "a@news.example.co.uk", "alice@news.example.co.uk", None, "fail", "quarantine",
     "quarantine"),
    ("quarantine", CLIENT, "a@quarantine.co.uk", "alice@quarantine.co.uk", None, "fail", "quarantine", "quarantine"),
    ("pct-0", CLIENT, "a@pct.co.uk", "alice@pct.co.uk", None, "fail", "reject", "quarantine"),
]


# From domains whose own record has sp=: authheaders' policy for them is that sp=.
# (The domains are under a suffix the Public Suffix List names, co.uk: for a TLD it does not
# list, such as .test, authheaders' list library gives the TLD as every domain's organizational
# domain, and so aligns all of them; libpsl applies the list's "*" default rule.)
REFERENCE_SP_QUIRK = {"example.co.uk": "quarantine"}


def reference_dmarc(port: int, body: bytes, spf: str, mail_from: str, dkim: tuple[str, str] | None):
    """authheaders' DMARC on the same message, SPF and DKIM results and DNS: (result, policy)."""
    txt = txt_lookup(port)

    def dnsfunc(name, timeout=5):
        answer = txt(name)
        return answer.decode() if answer else None

    spf_result = SPFAuthenticationResult(result=spf, smtp_mailfrom=mail_from)
    dkim_result = DKIMAuthenticationResult(result=dkim[0], header_d=dkim[1]) if dkim else None
    r = check_dmarc(body, spf_result=spf_result, dkim_result=dkim_result, dnsfunc=dnsfunc)
    return r.result, getattr(r, "policy", None)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_results_agree_with_an_independent_implementation(dmarc_daemon, dns_server, keys, case):
    name, client, mail_from, author, signer, result, policy, disposition = case
    body = message(author)
    if signer:
        body = sign(body, keys, domain=signer)
    d = dmarc_daemon()
    got = dmarc_of(d, client, mail_from, body)
    assert (got["dmarc"], got["p"], got["dis"]) == (result, policy, disposition), got
    assert got["from"] == author.split("@")[1]
    spf = got["spf"].split(":")[0]
    dkim = None
    if got["dkim"] != "-:0":
        first = got["dkim"].rsplit(":", 1)[0].split(",")[0]
        dkim = tuple(first.split(":"))
    ref_result, ref_policy = reference_dmarc(dns_server.port, body, spf, mail_from, dkim)
    assert ref_result == result, (name, ref_result, got)
    if result != "none":
        # authheaders applies sp= to the From domain's own record too; RFC 7489 §6.3 makes sp= the
        # policy for subdomains, found at the organizational domain (as test_the_subdomain_policy shows).
        assert ref_policy == REFERENCE_SP_QUIRK.get(got["from"], policy), (name, ref_policy, got)


def test_dns_trouble_is_temperror_and_a_record_without_p_is_p_none_when_it_asks_for_reports(dmarc_daemon):
    d = dmarc_daemon()
    started = time.monotonic()
    got = dmarc_of(d, CLIENT, "a@example.co.uk", message("alice@slow.co.uk"))
    assert got["dmarc"] == "temperror", got
    assert time.monotonic() - started < 5
    # RFC 7489 §6.6.3 step 6 (it was permerror, and a broken record's p=reject went unenforced).
    got = dmarc_of(d, CLIENT, "a@example.co.uk", message("alice@broken.co.uk"))
    assert (got["dmarc"], got["p"]) == ("fail", "none"), got


def test_an_aligned_check_that_failed_on_dns_is_temperror_and_deferred_not_refused(dmarc_daemon):
    """It may pass when tried again: not the domain's p=reject for good (a 550
    bounced mail its sender would have got through), nor let through (a
    forger who can make an SPF lookup time out would be): 451 4.7.5."""
    got = dmarc_of(dmarc_daemon(), CLIENT, "a@spfslow.co.uk", message("alice@spfslow.co.uk"))
    assert (got["dmarc"], got["p"], got["dis"], got["spf"]) == ("temperror", "reject", "none", "temperror:0"), got
    r = send(dmarc_daemon(DMARC_POLICY), CLIENT, "a@spfslow.co.uk", message("alice@spfslow.co.uk"))
    assert (r.code, r.status) == (451, "4.7.5"), str(r)


def test_several_authors_lookups_never_hold_the_io_thread(dmarc_daemon):
    """A check is first tried on the I/O thread from cached answers only; the
    policy lookups of several author domains ran on threads of their own,
    which waited for DNS while the I/O thread waited for them: every session
    of the worker stood still (a second, here)."""
    d = dmarc_daemon(server={"threads": 1})
    other = d.client()
    other.send(f"PROXY TCP4 {CLIENT} 127.0.0.1 40001 25\r\n".encode())
    other.expect(220)
    done = threading.Event()
    waited = []

    def meanwhile():
        while not done.is_set():
            started = time.monotonic()
            other.exchange("NOOP", 250)
            waited.append(time.monotonic() - started)
            time.sleep(0.02)

    watcher = threading.Thread(target=meanwhile)
    watcher.start()
    try:
        body = message("alice@slow.co.uk").replace(b"From: Alice <alice@slow.co.uk>",
                                                  b"From: alice@slow.co.uk, bob@slow2.co.uk")
        got = dmarc_of(d, CLIENT, "a@example.co.uk", body)
    finally:
        done.set()
        watcher.join()
    assert got["dmarc"] == "temperror", got
    assert max(waited) < 0.5, f"a session waited {max(waited):.2f} s for a NOOP"
    other.close()


def send_smtputf8(d, client: str, mail_from: str, body: bytes):
    """As send(), with MAIL FROM's SMTPUTF8 (RFC 6531): the From field may then name U-labels."""
    with d.client() as c:
        c.send(f"PROXY TCP4 {client} 127.0.0.1 40000 25\r\n".encode())
        c.expect(220)
        c.exchange("EHLO client.example.test", 250)
        c.exchange(f"MAIL FROM:<{mail_from}> SMTPUTF8", 250)
        c.exchange("RCPT TO:<bob@example.net>", 250)
        c.exchange("DATA", 354)
        c.send(body.rstrip(b"\r\n") + b"\r\n.\r\n")
        return c.reply()


def test_an_internationalized_from_domain_is_looked_up_and_aligned_as_a_labels(dmarc_daemon):
    # RFC 7489 §6.6.3, RFC 8616 §4-5: _dmarc.<A-labels>, and alignment with the
    # A-labels SPF and DKIM use. As UTF-8 the lookup found nothing: dmarc=none,
    # and the domain's p=reject was never applied.
    d = dmarc_daemon()
    for author in ("alice@exämple.co.uk", "alice@EXÄMPLE.co.uk", "alice@xn--exmple-cua.co.uk"):
        r = send_smtputf8(d, CLIENT, "a@xn--exmple-cua.co.uk", message(author))
        assert r.code == 451 and r.text.startswith("dmarc="), str(r)
        got = dict(field.split("=", 1) for field in r.text.split())
        assert (got["dmarc"], got["from"], got["p"], got["spf"]) == (
            "pass", "xn--exmple-cua.co.uk", "reject", "pass:1"), (author, got)
    r = send_smtputf8(d, CLIENT, "a@xn--exmple-cua.co.uk", message("alice@ex♥mple.co.uk"))  # not IDNA2008
    assert r.text.startswith("dmarc=permerror "), str(r)
    d.wait_log(r"[0-9A-F]{12}: dmarc=pass header\.from=xn--exmple-cua\.co\.uk p=reject dis=none$")

    enforcing = dmarc_daemon(DMARC_POLICY)
    r = send_smtputf8(enforcing, STRANGER, "a@other.co.uk", message("alice@exämple.co.uk"))
    assert (r.code, r.status) == (550, "5.7.1"), str(r)


def test_every_from_domain_is_evaluated_and_no_usable_one_is_permerror(dmarc_daemon):
    """RFC 7489 §6.6.1: with several author domains, each is evaluated and the strictest failure is the
    result; a From with none to evaluate is permerror (unusable_from)."""
    d = dmarc_daemon()
    two_domains = message("alice@example.co.uk").replace(b"From: Alice <alice@example.co.uk>",
                                                         b"From: alice@example.co.uk, mallory@quarantine.co.uk")
    got = dmarc_of(d, CLIENT, "a@example.co.uk", two_domains)  # SPF passes for example.co.uk alone
    assert (got["dmarc"], got["from"], got["p"], got["authors"], got["unusable"]) == (
        "fail", "quarantine.co.uk", "quarantine", "example.co.uk,quarantine.co.uk", "0"), got
    two_fields = b"From: mallory@other.co.uk\r\n" + message("alice@example.co.uk")
    got = dmarc_of(d, STRANGER, "a@other.co.uk", two_fields)
    assert (got["dmarc"], got["from"], got["p"], got["authors"]) == (
        "fail", "example.co.uk", "reject", "other.co.uk,example.co.uk"), got
    # Each author passing, or having no record: what the strictest says (none), never fail.
    got = dmarc_of(d, CLIENT, "a@example.co.uk", two_fields)
    assert (got["dmarc"], got["from"]) == ("none", "other.co.uk"), got
    no_from = re.sub(rb"From: [^\r]*\r\n", b"", message("alice@example.co.uk"))
    got = dmarc_of(d, CLIENT, "a@example.co.uk", no_from)
    assert (got["dmarc"], got["from"], got["authors"], got["unusable"]) == ("permerror", "-", "-", "1"), got
    got = dmarc_of(d, CLIENT, "a@example.co.uk", message("alice@broken.co.uk"))
    assert (got["dmarc"], got["unusable"]) == ("fail", "0"), got  # (no p=, but rua=: p=none)
    d.wait_log(r"[0-9A-F]{12}: dmarc=permerror header\.from=- \(no From field\)$")


# A p=reject domain's forgery, From written so that a single-domain check gave up (permerror, which
# policies/dmarc.py leaves alone): each got through. Now each is evaluated, or refused as unusable.
FORGED_FROMS = {
    "a second mailbox": (b"Alice <alice@example.co.uk>, <x@other.co.uk>", "DMARC policy of example.co.uk"),
    "a second mailbox first": (b"<x@other.co.uk>, Alice <alice@example.co.uk>", "DMARC policy of example.co.uk"),
    "a group": (b"Team: x@other.co.uk, alice@example.co.uk;", "DMARC policy of example.co.uk"),
    "a second From field": (b"Alice <alice@example.co.uk>\r\nFrom: x@other.co.uk", "DMARC policy of example.co.uk"),
    "a root dot": (b"Alice <alice@example.co.uk.>", "DMARC policy of example.co.uk"),
    "an unclosed comment": (b"Alice <alice@example.co.uk> (", "no domain to check"),
    "words after the address": (b'"Alice" <alice@example.co.uk> x', "no domain to check"),
    "an address literal beside": (b"alice@example.co.uk, x@[192.0.2.1]", "no domain to check"),
    "nine domains": (b"alice@example.co.uk, " + b", ".join(b"x@d%d.other.co.uk" % i for i in range(8)),
                     "no domain to check"),
}


@pytest.mark.parametrize("name", FORGED_FROMS)
def test_a_forgery_cannot_hide_behind_its_from_field(dmarc_daemon, name):
    d = dmarc_daemon(DMARC_POLICY)
    from_value, reason = FORGED_FROMS[name]
    forged = message("alice@example.co.uk").replace(b"Alice <alice@example.co.uk>", from_value, 1)
    r = send(d, STRANGER, "a@other.co.uk", forged)
    assert (r.code, r.status) == (550, "5.7.1") and reason in r.text, (name, str(r))


def test_mail_of_several_authors_that_authenticates_is_delivered(dmarc_daemon):
    d = dmarc_daemon(DMARC_POLICY)
    both = message("alice@example.co.uk").replace(b"From: Alice <alice@example.co.uk>",
                                                  b"From: Alice <alice@example.co.uk>, Bob <bob@other.co.uk>")
    assert send(d, CLIENT, "a@bounces.example.co.uk", both).code == 250
    no_from = re.sub(rb"From: [^\r]*\r\n", b"", message("alice@example.co.uk"))
    assert send(dmarc_daemon(DMARC_POLICY, dmarc={"unusable_from": "none"}), CLIENT, "a@example.co.uk",
                no_from).code == 250


def test_the_policy_enforces_reject_and_quarantine(dmarc_daemon, aiosmtpd_upstream):
    d = dmarc_daemon(DMARC_POLICY, checks={"authentication_results": True})
    r = send(d, CLIENT, "a@other.co.uk", message("alice@example.co.uk"))
    assert (r.code, r.status) == (550, "5.7.1") and "DMARC policy of example.co.uk" in r.text, str(r)
    # A forged quarantine mark is removed; a failing p=quarantine message gets ours.
    forged = b"X-Portcullis-Quarantine: no\r\n" + message("alice@quarantine.co.uk")
    r = send(d, CLIENT, "a@quarantine.co.uk", forged)
    assert r.code == 250, str(r)
    ok = send(d, CLIENT, "a@bounces.example.co.uk", message("alice@example.co.uk", "passes"))
    assert ok.code == 250, str(ok)
    quarantined, passed = aiosmtpd_upstream.wait_messages(2)
    head = quarantined["content"].split(b"\r\n\r\n", 1)[0].decode()
    assert head.count("X-Portcullis-Quarantine:") == 1
    assert "X-Portcullis-Quarantine: DMARC policy of quarantine.co.uk (p=quarantine)" in head
    assert (f"Authentication-Results: {HOSTNAME};\r\n\tspf=fail smtp.mailfrom=quarantine.co.uk;\r\n\tdkim=none;\r\n"
            "\tdmarc=fail (p=quarantine dis=quarantine) header.from=quarantine.co.uk;\r\n"
            "\tarc=none\r\n") in head, head  # ([checks] arc left out: it goes with dkim)
    head = passed["content"].split(b"\r\n\r\n", 1)[0].decode()
    assert "X-Portcullis-Quarantine" not in head
    assert "\tdmarc=pass (p=reject dis=none) header.from=example.co.uk;\r\n" in head, head
    d.wait_log(r"[0-9A-F]{12}: dmarc=fail header\.from=example\.co\.uk p=reject dis=reject$")


def test_the_policy_options(dmarc_daemon, aiosmtpd_upstream):
    d = dmarc_daemon(DMARC_POLICY, dmarc={"reject": "quarantine", "temperror": "tempfail",
                                          "skip_domains": ["strict.co.uk"]})
    r = send(d, CLIENT, "a@other.co.uk", message("alice@example.co.uk"))
    assert r.code == 250, str(r)  # p=reject handled as quarantine
    r = send(d, CLIENT, "a@bounces.strict.co.uk", message("alice@strict.co.uk"))
    assert r.code == 250, str(r)  # skipped domain
    r = send(d, CLIENT, "a@example.co.uk", message("alice@slow.co.uk"))
    assert (r.code, r.status) == (451, "4.7.5"), str(r)
    first, second = aiosmtpd_upstream.wait_messages(2)
    assert b"X-Portcullis-Quarantine: DMARC policy of example.co.uk (p=reject)" in first["content"]
    assert b"X-Portcullis-Quarantine" not in second["content"]



def test_each_lookup_is_counted_once_whichever_thread_checks(dmarc_daemon, keys):
    """The message checks are first tried from cached answers only; an attempt that misses one (here
    the DKIM key) is thrown away and redone on the checker's threads, and the answers it used (the
    DMARC record, cached by the first message) are not counted twice in the metrics."""
    from conftest import free_port, wait_until
    from test_metrics import _answers, scrape

    port = free_port()
    d = dmarc_daemon(metrics={"listen": f"127.0.0.1:{port}"}, server={"workers": 1})
    wait_until(lambda: _answers(port), timeout=10, what="the metrics listener")

    def txt_lookups() -> float:
        return sum(v for (name, labels), v in scrape(port).items()
                   if name == "portcullis_dns_lookups_total" and ("type", "TXT") in labels)

    dmarc_of(d, STRANGER, "a@other.co.uk", message("alice@example.co.uk"))  # SPF and DMARC records cached
    before = txt_lookups()
    signed = sign(message("alice@example.co.uk"), keys, "rsa", "rsa", domain="example.co.uk")
    assert dmarc_of(d, STRANGER, "a@other.co.uk", signed)["dmarc"] == "pass"
    # other.co.uk's SPF record, the key (not cached: the attempt missed), _dmarc.example.co.uk: once each.
    assert txt_lookups() - before == 3

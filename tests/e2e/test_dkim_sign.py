"""DKIM signing of outbound mail ([dkim_sign], RFC 6376, RSA and Ed25519 of
RFC 8463) through the daemon: what the upstream gets is verified by an
independent implementation (dkimpy), the keys' public halves served by a
real DNS server on loopback; who is signed for, what a policy may choose,
and that the signature covers the message as the upstream gets it."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
from pathlib import Path

import dkim
import pytest

from dkim_helpers import make_keys, opendkim_results, txt_lookup

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dns"))
from dns_server import DnsServer  # noqa: E402

MESSAGE = (b"From: Alice <alice@example.test>\r\n"
           b"To: Bob <bob@example.net>\r\n"
           b"Subject: signed on the way out: a colon,  and  runs of spaces\r\n"
           b"Date: Wed, 02 Dec 2026 12:00:00 +0000\r\n"
           b"Message-ID: <sign-test@example.test>\r\n"
           b"MIME-Version: 1.0\r\n"
           b"Content-Type: text/plain; charset=utf-8\r\n"
           b"\r\n"
           b"Hello Bob,\r\n"
           b". a line that starts with a dot\r\n"
           b"and trailing blank lines\r\n\r\n\r\n")


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("sign")
    k = make_keys(d)
    ed = d / "ed25519.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(ed)], check=True, capture_output=True)
    spki = subprocess.run(["openssl", "pkey", "-in", str(ed), "-pubout", "-outform", "DER"], check=True,
                          capture_output=True).stdout
    k["ed_file"] = ed
    k["ed_record"] = "v=DKIM1; k=ed25519; p=" + base64.b64encode(spki[-32:]).decode()  # the raw key (RFC 8463 §4.2)
    small = d / "rsa512.pem"
    subprocess.run(["openssl", "genrsa", "-out", str(small), "512"], check=True, capture_output=True)
    k["small_file"] = small
    ec = d / "ec.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(ec)],
                   check=True, capture_output=True)
    k["ec_file"] = ec
    return k


def key_zones(keys) -> dict:
    return {
        "rsa._domainkey.example.test": [{"TXT": keys["rsa_record"]}],
        "rsa._domainkey.other.test": [{"TXT": keys["rsa_record"]}],
        "ed._domainkey.example.test": [{"TXT": keys["ed_record"]}],
        "ed._domainkey.third.test": [{"TXT": keys["ed_record"]}],
        "rsa._domainkey.xn--bcher-kva.test": [{"TXT": keys["rsa_record"]}],
    }


@pytest.fixture
def dns_server(keys):
    with DnsServer(key_zones(keys)) as server:
        yield server


@pytest.fixture
def signing_daemon(policy_daemon, start_daemon, aiosmtpd_upstream, keys):
    def start(*policies, key: str = "rsa_file", selector: str = "rsa", **tables):
        sign = {"domains": ["example.test", "other.test"], "selector": selector, "key_file": str(keys[key]),
                **tables.pop("dkim_sign", {})}
        if policies:
            return policy_daemon(aiosmtpd_upstream.url, *policies, dkim_sign=sign, **tables)
        return start_daemon(aiosmtpd_upstream.url, dkim_sign=sign, **tables)

    return start


def signature_tags(content: bytes) -> dict[str, str]:
    head = content.split(b"\r\n\r\n", 1)[0].decode()
    field = head.split("DKIM-Signature:", 1)[1].split("\r\nAuthentication-Results:", 1)[0].split("\r\nReceived:", 1)[0]
    tags = {}
    for part in "".join(field.split()).split(";"):
        if "=" in part:
            k, v = part.split("=", 1)
            tags[k] = v
    return tags


def verifies(content: bytes, port: int) -> bool:
    return bool(dkim.verify(content, dnsfunc=txt_lookup(port)))


def deliver(d, aiosmtpd_upstream, message: bytes = MESSAGE, sender: str = "alice@example.test", proxy_from=None,
            expect: int = 250):
    """One transaction (from `proxy_from` with a PROXY header); what the upstream got, or None."""
    before = len(aiosmtpd_upstream.envelopes)
    with d.client() as c:
        if proxy_from:
            c.send(f"PROXY TCP4 {proxy_from} 127.0.0.1 40000 25\r\n".encode())
        c.expect(220)
        c.exchange("EHLO client.example.test", 250)
        stuffed = message.replace(b"\r\n.", b"\r\n..")
        r = c.transaction(sender, ["bob@example.net"], stuffed[:-2] if stuffed.endswith(b"\r\n") else stuffed)
    assert r.code == expect, str(r)
    if expect != 250:
        return None
    return aiosmtpd_upstream.wait_messages(before + 1)[-1]["content"]


def test_rsa_signatures_verify_elsewhere(signing_daemon, aiosmtpd_upstream, dns_server):
    d = signing_daemon()
    content = deliver(d, aiosmtpd_upstream)
    assert content.startswith(b"DKIM-Signature: ")
    tags = signature_tags(content)
    assert (tags["a"], tags["d"], tags["s"], tags["c"]) == ("rsa-sha256", "example.test", "rsa", "relaxed/relaxed")
    signed = tags["h"].lower().split(":")
    assert signed.count("from") == 2  # oversigned
    assert {"to", "subject", "date", "message-id", "mime-version", "content-type"} <= set(signed)
    assert "received" not in signed
    assert verifies(content, dns_server.port)
    d.wait_log(r"[0-9A-F]{12}: DKIM signed d=example\.test s=rsa$")
    # A From added on the way, or a changed body, breaks it.
    assert not verifies(b"From: mallory@evil.test\r\n" + content, dns_server.port)
    assert not verifies(content.replace(b"Hello Bob", b"Hello Eve"), dns_server.port)
    # The signer's thread has its name (top -H, perf).
    assert "pc-sign" in thread_names(d)


@pytest.mark.parametrize("server", [{"message_memory_threshold": 1048576}, {"message_memory_threshold": 0}],
                         ids=["in memory", "spilled"])
def test_large_and_spilled_messages_are_signed_too(signing_daemon, aiosmtpd_upstream, dns_server, server):
    # A message of 350 KB, in memory or read from its file (the signer hashes it as it streams).
    d = signing_daemon(server=server)
    big = MESSAGE + b"more text, line after line\r\n" * 12_000
    content = deliver(d, aiosmtpd_upstream, big)
    assert len(content) > 300_000
    assert verifies(content, dns_server.port)
    small = deliver(d, aiosmtpd_upstream)
    assert verifies(small, dns_server.port)


def thread_names(d):
    return {open(f"/proc/{d.pid}/task/{t}/comm").read().strip() for t in os.listdir(f"/proc/{d.pid}/task")}


def test_ed25519_signatures_verify_elsewhere(signing_daemon, aiosmtpd_upstream, dns_server):
    d = signing_daemon(key="ed_file", selector="ed")
    content = deliver(d, aiosmtpd_upstream)
    assert signature_tags(content)["a"] == "ed25519-sha256"
    assert verifies(content, dns_server.port)
    # A small message is signed on the session's thread (cheaper than the hop to
    # the signer's threads, which name themselves when they first work); a
    # large one on the signer's threads.
    assert "pc-sign" not in thread_names(d)
    big = deliver(d, aiosmtpd_upstream, MESSAGE + b"more text, line after line\r\n" * 3_000)
    assert len(big) > 64 * 1024 and signature_tags(big)["a"] == "ed25519-sha256"
    assert verifies(big, dns_server.port)
    assert "pc-sign" in thread_names(d)


def test_the_signature_covers_every_policy_edit(signing_daemon, aiosmtpd_upstream, dns_server):
    edit = """
def on_data(tx, message):
    message.replace_header("Subject", "[checked] " + message.get("Subject"))
    message.add_header("X-Checked", "yes")
    message.body = message.body + b"-- \\r\\nfooter added by policy\\r\\n"
"""
    d = signing_daemon(edit, checks={"authentication_results": True})
    content = deliver(d, aiosmtpd_upstream)
    assert b"Subject: [checked] signed on the way out" in content and b"footer added by policy" in content
    assert verifies(content, dns_server.port)


def test_who_is_signed_for(signing_daemon, aiosmtpd_upstream, dns_server):
    d = signing_daemon(server={"proxy_protocol": True, "proxy_trusted": ["127.0.0.0/8"]})
    # Not a trusted network, not authenticated: never our signature, even for our From domain.
    content = deliver(d, aiosmtpd_upstream, proxy_from="198.51.100.1")
    assert b"DKIM-Signature" not in content
    # A trusted client, From a domain that is not ours: not signed, and the log says why.
    foreign = MESSAGE.replace(b"alice@example.test", b"alice@foreign.test")
    content = deliver(d, aiosmtpd_upstream, foreign, proxy_from="127.0.0.2")
    assert b"DKIM-Signature" not in content
    d.wait_log(r"not DKIM signed: the From domain foreign\.test is not one of \[dkim_sign\] domains$")
    # The second domain signs as itself; a subdomain only with subdomains = true.
    other = MESSAGE.replace(b"alice@example.test", b"alice@other.test")
    assert signature_tags(deliver(d, aiosmtpd_upstream, other, proxy_from="127.0.0.2"))["d"] == "other.test"
    sub = MESSAGE.replace(b"alice@example.test", b"alice@news.example.test")
    assert b"DKIM-Signature" not in deliver(d, aiosmtpd_upstream, sub, proxy_from="127.0.0.2")
    d.reload({"dkim_sign": {"subdomains": True}})
    content = deliver(d, aiosmtpd_upstream, sub, proxy_from="127.0.0.2")
    assert signature_tags(content)["d"] == "example.test" and verifies(content, dns_server.port)


def test_a_signature_over_many_fields_keeps_its_lines_short(signing_daemon, aiosmtpd_upstream, dns_server):
    # 400 To fields signed made an h= line of 4 KB (RFC 5322 §2.1.1: 998 at most): the upstream refused it.
    d = signing_daemon()
    many = MESSAGE.replace(b"To: Bob <bob@example.net>\r\n",
                           b"".join(b"To: r%d@example.net\r\n" % i for i in range(400)))
    content = deliver(d, aiosmtpd_upstream, many)
    head = content.split(b"\r\n\r\n", 1)[0]
    assert max(len(line) for line in head.split(b"\r\n")) <= 78 + 2
    assert signature_tags(content)["h"].lower().split(":").count("to") == 400
    assert verifies(content, dns_server.port)


def test_an_internationalized_from_domain_is_signed_as_its_a_labels(signing_daemon, aiosmtpd_upstream, dns_server):
    # [dkim_sign] domains are in A-labels (a U-label there is refused); the From's U-labels were
    # compared as they were written, and such mail was never signed.
    d = signing_daemon(dkim_sign={"domains": ["xn--bcher-kva.test"]})
    message = MESSAGE.replace(b"alice@example.test", "alice@bücher.test".encode())
    with d.client() as c:
        c.expect(220)
        c.exchange("EHLO client.example.test", 250)
        c.exchange("MAIL FROM:<alice@xn--bcher-kva.test> SMTPUTF8", 250)
        c.exchange("RCPT TO:<bob@example.net>", 250)
        c.exchange("DATA", 354)
        c.send(message + b".\r\n")
        c.expect(250)
    content = aiosmtpd_upstream.wait_messages(1)[-1]["content"]
    assert signature_tags(content)["d"] == "xn--bcher-kva.test"
    assert verifies(content, dns_server.port)


@pytest.mark.parametrize("policy,want", [
    ("def on_mail(tx, sender):\n    tx.dkim_sign = False\n", None),
    ("def on_rcpt(tx, rcpt):\n    tx.dkim_sign = 'other.test'\n", "other.test"),
])
def test_a_choice_made_before_on_data_holds_without_an_on_data_hook(signing_daemon, aiosmtpd_upstream, dns_server,
                                                                     policy, want):
    # The choice came back only with the data stage's result, whose job went only to an on_data hook.
    d = signing_daemon(policy)
    content = deliver(d, aiosmtpd_upstream)
    assert signature_tags(content).get("d") == want if want else b"DKIM-Signature" not in content


def test_arc_seal_false_in_on_mail_holds_without_an_on_data_hook(policy_daemon, aiosmtpd_upstream, dns_server, keys):
    d = policy_daemon(aiosmtpd_upstream.url, "def on_mail(tx, sender):\n    tx.arc_seal = False\n",
                      checks={"arc": True, "authentication_results": True},
                      dns={"nameserver": f"127.0.0.1:{dns_server.port}", "timeout": 1},
                      arc_seal={"domain": "example.test", "selector": "rsa", "key_file": str(keys["rsa_file"])})
    assert b"ARC-Seal" not in deliver(d, aiosmtpd_upstream)


def test_a_policy_chooses_per_message(signing_daemon, aiosmtpd_upstream, dns_server):
    choose = """
import portcullis as pc

def on_data(tx, message):
    subject = message.get("Subject") or ""
    if "no-sign" in subject:
        tx.dkim_sign = False
    elif "as-other" in subject:
        tx.dkim_sign = "Other.Test"
    elif "as-stranger" in subject:
        tx.dkim_sign = "stranger.test"
"""
    d = signing_daemon(choose, server={"proxy_protocol": True, "proxy_trusted": ["127.0.0.0/8"]})
    content = deliver(d, aiosmtpd_upstream, MESSAGE.replace(b"Subject: signed", b"Subject: no-sign"),
                      proxy_from="127.0.0.2")
    assert b"DKIM-Signature" not in content
    # Chosen by the policy: signed whoever the client (here an untrusted one) and whatever the From.
    content = deliver(d, aiosmtpd_upstream, MESSAGE.replace(b"Subject: signed", b"Subject: as-other"),
                      proxy_from="198.51.100.1")
    assert signature_tags(content)["d"] == "other.test" and verifies(content, dns_server.port)
    # A domain without a key: the message does not go unsigned, the client tries again.
    deliver(d, aiosmtpd_upstream, MESSAGE.replace(b"Subject: signed", b"Subject: as-stranger"), proxy_from="127.0.0.2",
            expect=451)
    d.wait_log(r"policy asked to sign as stranger\.test, which is not one of \[dkim_sign\] domains$")


def test_several_keys_sign_side_by_side(signing_daemon, aiosmtpd_upstream, dns_server, keys):
    # example.test signed with RSA and Ed25519 (RFC 8463 §1), other.test and third.test each with a key of its own;
    # a policy that chooses a domain chooses its keys.
    choose = """
def on_data(tx, message):
    if "as-third" in (message.get("Subject") or ""):
        tx.dkim_sign = "third.test"
"""
    d = signing_daemon(choose, dkim_sign={"domains": ["example.test"], "keys": [
        {"domains": ["example.test", "third.test"], "selector": "ed", "key_file": str(keys["ed_file"])},
        {"domains": ["other.test"], "selector": "rsa", "key_file": str(keys["rsa_file"])}]})

    def signatures(content):
        head = content.split(b"\r\n\r\n", 1)[0]
        count = head.count(b"DKIM-Signature:")
        signer = dkim.DKIM(content)
        assert all(signer.verify(idx=i, dnsfunc=txt_lookup(dns_server.port)) for i in range(count)), content
        return [(tags["a"], tags["d"], tags["s"]) for tags in
                (signature_tags(b"DKIM-Signature:" + f.split(b"\r\n\r\n")[0]) for f in head.split(b"DKIM-Signature:")[1:])]

    content = deliver(d, aiosmtpd_upstream)
    assert signatures(content) == [("rsa-sha256", "example.test", "rsa"), ("ed25519-sha256", "example.test", "ed")]
    d.wait_log(r"[0-9A-F]{12}: DKIM signed d=example\.test s=rsa$")
    d.wait_log(r"[0-9A-F]{12}: DKIM signed d=example\.test s=ed$")
    other = MESSAGE.replace(b"alice@example.test", b"alice@other.test")
    assert signatures(deliver(d, aiosmtpd_upstream, other)) == [("rsa-sha256", "other.test", "rsa")]
    chosen = MESSAGE.replace(b"Subject: signed", b"Subject: as-third")
    assert signatures(deliver(d, aiosmtpd_upstream, chosen)) == [("ed25519-sha256", "third.test", "ed")]


def test_a_rotated_key_is_used_after_sighup(signing_daemon, aiosmtpd_upstream, dns_server, keys):
    d = signing_daemon()
    assert signature_tags(deliver(d, aiosmtpd_upstream))["s"] == "rsa"
    d.reload({"dkim_sign": {"selector": "ed", "key_file": str(keys["ed_file"])}})
    content = deliver(d, aiosmtpd_upstream)
    assert (signature_tags(content)["s"], signature_tags(content)["a"]) == ("ed", "ed25519-sha256")
    assert verifies(content, dns_server.port)
    # A key that cannot be used is refused at reload; the old generation goes on signing.
    d.reload({"dkim_sign": {"key_file": str(keys["small_file"])}}, expect_ok=False)
    d.wait_log(r"rsa512\.pem: an RSA key of 512 bits; RFC 8301 wants at least 1024")
    assert signature_tags(deliver(d, aiosmtpd_upstream))["s"] == "ed"


@pytest.mark.parametrize("key,error", [
    ("small_file", r"an RSA key of 512 bits"),
    ("ec_file", r"neither an RSA nor an Ed25519 key"),
    ("missing", r"cannot be read"),
    ("not_pem", r"no PEM private key"),
])
def test_an_unusable_key_stops_start_up(portcullis_bin, tmp_path, keys, key, error):
    paths = {"missing": tmp_path / "nothing.pem", "not_pem": tmp_path / "text.pem"}
    paths["not_pem"].write_text("not a key\n")
    path = paths.get(key) or keys[key]
    config = tmp_path / "portcullis.toml"
    config.write_text('[server]\nlisten = ["127.0.0.1:2599"]\nhostname = "mx.example.test"\n'
                      '[upstream]\nurl = "smtp://127.0.0.1:2598"\n'
                      f'[dkim_sign]\ndomains = ["example.test"]\nselector = "s"\nkey_file = "{path}"\n')
    for mode in ("--check-config", "--config"):
        r = subprocess.run([str(portcullis_bin), mode, str(config)], capture_output=True, text=True, timeout=30)
        assert r.returncode != 0
        assert re.search(error, r.stderr), (mode, r.stderr)


VERIFIER = """
import portcullis as pc

def on_data(tx, message):
    return pc.tempfail("dkim=" + ",".join(f"{s.result}:{s.domain}" for s in tx.dkim or []))
"""


@pytest.mark.parametrize("key,selector", [("rsa_file", "rsa"), ("ed_file", "ed")])
def test_opendkim_verifies_our_signatures_too(signing_daemon, policy_daemon, aiosmtpd_upstream, dns_server, key,
                                              selector, keys, portcullis_bin, tmp_path):
    """What we sign passes dkimpy, OpenDKIM and our own verifier (a second daemon's [checks] dkim), whatever
    the body."""
    d = signing_daemon(key=key, selector=selector)
    verifier = policy_daemon(aiosmtpd_upstream.url, VERIFIER, checks={"dkim": True},
                             dns={"nameserver": f"127.0.0.1:{dns_server.port}", "timeout": 1})
    head = MESSAGE.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
    bodies = [b"", b"\r\n\r\n", b"one line without spaces\r\n", b"  leading, \t inner\t and trailing  \t\r\n",
              b"x" * 990 + b"\r\n", b"\r\n\r\nafter empty lines\r\n\r\n\r\n", b"\xc3\xa9t\xc3\xa9 8-bit\r\n"]
    for body in bodies:
        content = deliver(d, aiosmtpd_upstream, head + body)
        assert verifies(content, dns_server.port), body
        assert opendkim_results(content, key_zones(keys), portcullis_bin, tmp_path) == ["pass"], body
        with verifier.connect() as c:
            r = c.transaction("alice@example.test", ["bob@example.net"],
                              content.replace(b"\r\n.", b"\r\n..")[:-2] if content.endswith(b"\r\n") else content)
        assert r.text == "dkim=pass:example.test", (body, str(r))

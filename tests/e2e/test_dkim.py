"""DKIM verification ([checks] dkim, RFC 6376 and RFC 8463) through the
daemon: messages signed by an independent implementation (dkimpy), keys
served by a real DNS server on loopback, tx.dkim reported by a policy, and
every result compared with dkimpy's own verification on the same DNS."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from conftest import HOSTNAME
from dkim_helpers import dkimpy_results, make_keys, sign

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dns"))
from dns_server import DnsServer  # noqa: E402

# Reports tx.dkim in a 451 after the data (nothing is relayed), or lets it all through.
REPORTER = """
import portcullis as pc

def on_data(tx, message):
    if pc.config.get("probe", {}).get("deliver"):
        return None
    if tx.dkim is None:
        return pc.tempfail("dkim=unset")
    # Runs of the same result as "result:domain:selector*count" (a reply line holds 512 octets).
    runs = []
    for s in tx.dkim:
        text = f"{s.result}:{s.domain}:{s.selector[:40]}"
        if runs and runs[-1][0] == text:
            runs[-1][1] += 1
        else:
            runs.append([text, 1])
    return pc.tempfail("dkim=" + (",".join(t if n == 1 else f"{t}*{n}" for t, n in runs) or "-"))
"""

MESSAGE = (b"From: Alice <alice@example.test>\r\n"
           b"To: Bob <bob@example.net>\r\n"
           b"Subject: DKIM test\r\n"
           b"Date: Tue, 01 Dec 2026 12:00:00 +0000\r\n"
           b"Message-ID: <dkim-test@example.test>\r\n"
           b"\r\n"
           b"Hello Bob,\r\n"
           b"this message is signed.\r\n")


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    return make_keys(tmp_path_factory.mktemp("dkim"))


@pytest.fixture
def dns_server(keys):
    zones = {
        "rsa._domainkey.example.test": [{"TXT": keys["rsa_record"]}],
        "ed._domainkey.example.test": [{"TXT": keys["ed25519_record"]}],
        "revoked._domainkey.example.test": [{"TXT": "v=DKIM1; k=rsa; p="}],
        "slow._domainkey.example.test": ["TIMEOUT"],
        "example.test": [{"A": "192.0.2.1"}],
    }
    with DnsServer(zones) as server:
        yield server


@pytest.fixture
def dkim_daemon(policy_daemon, aiosmtpd_upstream, dns_server):
    def start(deliver: bool = False, **tables):
        return policy_daemon(aiosmtpd_upstream.url, REPORTER, probe={"deliver": deliver},
                             checks={"dkim": True, **tables.pop("checks", {})},
                             dns={"nameserver": f"127.0.0.1:{dns_server.port}", "timeout": 1}, **tables)

    return start


def dkim_of(d, message: bytes) -> str:
    with d.connect() as c:
        r = c.transaction("alice@example.test", ["bob@example.net"], message)
    assert r.code == 451 and r.text.startswith("dkim="), str(r)
    return r.text[len("dkim="):]


def test_signatures_dkimpy_made_verify(dkim_daemon, keys, dns_server):
    d = dkim_daemon()
    rsa = sign(MESSAGE, keys)
    assert dkim_of(d, rsa) == "pass:example.test:rsa"
    ed = sign(MESSAGE, keys, "ed", "ed25519")
    assert dkim_of(d, ed) == "pass:example.test:ed"
    both = sign(sign(MESSAGE, keys, "ed", "ed25519"), keys)
    assert dkim_of(d, both) == "pass:example.test:rsa,pass:example.test:ed"
    for m in (rsa, ed, both):
        assert all(dkimpy_results(m, dns_server.port))


def test_a_changed_body_or_header_fails(dkim_daemon, keys, dns_server):
    d = dkim_daemon()
    signed = sign(MESSAGE, keys)
    body_changed = signed.replace(b"is signed", b"IS SIGNED")
    header_changed = signed.replace(b"Subject: DKIM test", b"Subject: DKIM test, forwarded")
    assert dkim_of(d, body_changed) == "fail:example.test:rsa"
    assert dkim_of(d, header_changed) == "fail:example.test:rsa"
    assert dkimpy_results(body_changed, dns_server.port) == [False]
    assert dkimpy_results(header_changed, dns_server.port) == [False]


def test_key_trouble_is_permerror_or_temperror(dkim_daemon, keys):
    d = dkim_daemon()
    assert dkim_of(d, sign(MESSAGE, keys, "missing")) == "permerror:example.test:missing"
    assert dkim_of(d, sign(MESSAGE, keys, "revoked")) == "permerror:example.test:revoked"
    started = time.monotonic()
    assert dkim_of(d, sign(MESSAGE, keys, "slow")) == "temperror:example.test:slow"
    assert time.monotonic() - started < 5


def test_an_unsigned_message_has_no_signatures(dkim_daemon):
    d = dkim_daemon()
    assert dkim_of(d, MESSAGE) == "-"


def test_many_signatures_are_bounded(dkim_daemon, keys):
    d = dkim_daemon(checks={"dkim_signatures": 3})
    one = sign(MESSAGE, keys)
    header = one.split(b"\r\nFrom:", 1)[0] + b"\r\n"
    hostile = header * 199 + one  # 200 signatures, the same one
    started = time.monotonic()
    assert dkim_of(d, hostile) == "pass:example.test:rsa*3,neutral:example.test:rsa*197"
    assert time.monotonic() - started < 10


def test_authentication_results_carry_each_signature(dkim_daemon, keys, aiosmtpd_upstream):
    d = dkim_daemon(deliver=True, checks={"authentication_results": True})
    with d.connect() as c:
        r = c.transaction("alice@example.test", ["bob@example.net"], sign(sign(MESSAGE, keys, "missing"), keys))
        assert r.code == 250, str(r)
    [env] = aiosmtpd_upstream.wait_messages(1)
    head = env["content"].split(b"\r\nReceived: ", 1)[0].decode()
    assert head == (f"Authentication-Results: {HOSTNAME};\r\n"
                    "\tdkim=pass header.d=example.test header.s=rsa;\r\n"
                    "\tdkim=permerror reason=\"key not found in DNS\" header.d=example.test header.s=missing"), head
    d.wait_log(r"[0-9A-F]{12}: dkim=pass d=example\.test s=rsa$")
    d.wait_log(r"[0-9A-F]{12}: dkim=permerror d=example\.test s=missing \(key not found in DNS\)$")


def test_a_message_of_header_fields_only_verifies(dkim_daemon, keys, dns_server):
    """No empty line and no body (RFC 5322 §3.5 allows it): the fields end the message."""
    header_only = MESSAGE.split(b"\r\n\r\n", 1)[0] + b"\r\n"
    signed = sign(header_only, keys)
    assert b"\r\n\r\n" not in signed
    assert dkimpy_results(signed, dns_server.port) == [True]
    d = dkim_daemon()
    assert dkim_of(d, signed[:-2]) == "pass:example.test:rsa"  # (the client adds the final CRLF)
    tampered = signed.replace(b"Subject: DKIM test", b"Subject: DKIM test!")
    assert dkim_of(d, tampered[:-2]) == "fail:example.test:rsa"


def test_a_40_kb_tag_is_bounded(dkim_daemon, keys, dns_server):
    """A signature with a 40 KB unknown tag (and one with a 40 KB selector): answered at once, no crash."""
    d = dkim_daemon()
    signed = sign(MESSAGE, keys)
    big_tag = signed.replace(b"DKIM-Signature: v=1;", b"DKIM-Signature: v=1; x-junk=" + b"A" * 40_000 + b";", 1)
    started = time.monotonic()
    result = dkim_of(d, big_tag)
    assert result.split(":")[0] in ("fail", "permerror"), result  # the tag is signed: changing it breaks the hash
    big_selector = signed.replace(b"s=rsa;", b"s=" + b"s" * 40_000 + b";", 1)
    assert dkim_of(d, big_selector) == "permerror:example.test:" + "s" * 40  # no DNS name can hold it
    assert time.monotonic() - started < 5

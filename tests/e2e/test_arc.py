"""ARC (RFC 8617) through the daemon: chains made by an independent
implementation (dkimpy) verified on arrival ([checks] arc, tx.arc and
Authentication-Results), and the daemon's own seal ([arc_seal]) verified by
dkimpy on what the upstream got; keys served by a real DNS server on
loopback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dkim
import pytest

from conftest import HOSTNAME
from dkim_helpers import make_keys, sign, txt_lookup

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dns"))
from dns_server import DnsServer  # noqa: E402

# Reports tx.arc in a 451 after the data, or lets it all through.
REPORTER = """
import portcullis as pc

def on_data(tx, message):
    if pc.config.get("probe", {}).get("deliver"):
        return None
    if tx.arc is None:
        return pc.tempfail("arc=unset")
    return pc.tempfail(f"arc={tx.arc.result} i={tx.arc.instances} by={','.join(tx.arc.sealers) or '-'}")
"""

MESSAGE = (b"From: Alice <alice@example.test>\r\nTo: list@lists.test\r\nSubject: ARC test\r\n"
           b"Date: Wed, 02 Dec 2026 12:00:00 +0000\r\nMessage-ID: <arc-test@example.test>\r\n\r\n"
           b"Hello list.\r\n")


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    return make_keys(tmp_path_factory.mktemp("arc"))


@pytest.fixture
def dns_server(keys):
    record = [{"TXT": keys["rsa_record"]}]
    zones = {"rsa._domainkey.example.test": record, "arc._domainkey.lists.test": record,
             "seal._domainkey.mx.test": record, "slow._domainkey.lists.test": ["TIMEOUT"],
             "_dmarc.example.test": [{"TXT": "v=DMARC1; p=reject"}], "arc._domainkey.evil.test": record}
    with DnsServer(zones) as server:
        yield server


def forwarded(message: bytes, keys: dict, hops: int = 1, selector: str = "arc", by: bytes = b"lists.test",
              found: bytes = b"dkim=pass header.d=example.test", headers: list[bytes] | None = None) -> bytes:
    """The message as a mailing list (lists.test) forwards it: authenticated (`found`), then ARC sealed by
    dkimpy (its message signature over `headers`, by default dkimpy's choice)."""
    for _ in range(hops):
        has_chain = b"ARC-Seal:" in message
        ar = b"Authentication-Results: " + by + b"; " + found + (b"; arc=pass\r\n" if has_chain else b"\r\n")
        message = ar + message
        options = {"include_headers": headers} if headers else {}
        message = b"".join(dkim.arc_sign(message, selector.encode(), by, keys["rsa"], by, **options)) + message
    return message


@pytest.fixture
def arc_daemon(policy_daemon, aiosmtpd_upstream, dns_server):
    def start(deliver: bool = False, **tables):
        return policy_daemon(aiosmtpd_upstream.url, REPORTER, probe={"deliver": deliver},
                             checks={"arc": True, **tables.pop("checks", {})},
                             dns={"nameserver": f"127.0.0.1:{dns_server.port}", "timeout": 1}, **tables)

    return start


def write_no_seal(d) -> Path:
    path = d.policy_files[0].parent / "no_seal.py"
    path.write_text("def on_data(tx, message):\n    tx.arc_seal = False\n")
    return path


def arc_of(d, message: bytes) -> str:
    with d.connect() as c:
        r = c.transaction("alice@example.test", ["bob@example.net"], message[:-2])
    assert r.code == 451 and r.text.startswith("arc="), str(r)
    return r.text


def test_chains_dkimpy_made_verify(arc_daemon, keys, dns_server):
    d = arc_daemon()
    signed = sign(MESSAGE, keys)
    one, two = forwarded(signed, keys), forwarded(signed, keys, hops=2)
    assert dkim.arc_verify(two, dnsfunc=txt_lookup(dns_server.port))[0] == dkim.CV_Pass
    assert arc_of(d, MESSAGE) == "arc=none i=0 by=-"
    assert arc_of(d, one) == "arc=pass i=1 by=lists.test"
    assert arc_of(d, two) == "arc=pass i=2 by=lists.test,lists.test"
    d.wait_log(r"[0-9A-F]{12}: arc=pass \(i=2 by lists\.test, lists\.test\)$")
    # A body changed after the last seal, a seal removed, a key that does not answer: fail.
    assert arc_of(d, two.replace(b"Hello list.", b"Hello all.")).startswith("arc=fail")
    without_newest_seal = two.split(b"\r\nARC-Message-Signature: i=2", 1)
    assert arc_of(d, b"ARC-Message-Signature: i=2" + without_newest_seal[1]).startswith("arc=fail")
    assert arc_of(d, forwarded(signed, keys, selector="slow")).startswith("arc=fail")


def test_the_contract_s_checks_set_tx_arc(policy_daemon, aiosmtpd_upstream, dns_server, keys):
    """CONTRACT.md sets tx.arc before on_data and names no [checks] key for it: with its checks
    (spf, dkim, dmarc, authentication_results) tx.arc was None, and a policy reading
    tx.arc.result failed every message (451 4.3.0). Left out, arc goes with dkim."""
    d = policy_daemon(aiosmtpd_upstream.url, REPORTER,
                      checks={"spf": True, "dkim": True, "dmarc": True, "authentication_results": True},
                      dns={"nameserver": f"127.0.0.1:{dns_server.port}", "timeout": 1})
    signed = sign(MESSAGE, keys)
    assert arc_of(d, MESSAGE) == "arc=none i=0 by=-"
    assert arc_of(d, forwarded(signed, keys)) == "arc=pass i=1 by=lists.test"


def forwarded_after_a_change(message: bytes, keys: dict) -> bytes:
    """Sealed by the list, changed on the way (a footer), then sealed again by a relay: the newest message
    signature holds, the older one does not; the chain passes (RFC 8617 §5.2 checks the newest only)."""
    once = forwarded(message, keys).replace(b"Hello list.", b"Hello list.\r\n-- \r\nfooter")
    return forwarded(once, keys, selector="arc")


def split_fields(message: bytes) -> tuple[list[bytes], bytes]:
    """The header fields (each with its folding and CRLF) and the body."""
    head, body = message.split(b"\r\n\r\n", 1)
    fields: list[bytes] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            fields[-1] += line + b"\r\n"
        else:
            fields.append(line + b"\r\n")
    return fields, body


def arc_set(fields: list[bytes], instance: int) -> list[bytes]:
    return [f for f in fields if f.lower().startswith(b"arc-") and f"i={instance};".encode() in f[:40]]


def chain_variants(two: bytes, one: bytes, keys: dict) -> dict[str, bytes]:
    """A 2-set chain dkimpy made, changed the ways mail changes and the ways a forger would."""
    fields, body = split_fields(two)
    set1, set2 = arc_set(fields, 1), arc_set(fields, 2)
    others = [f for f in fields if f not in set1 + set2]

    def joined(*groups: list[bytes]) -> bytes:
        return b"".join(f for g in groups for f in g) + b"\r\n" + body

    return {
        "as made": two,
        "one set": one,
        "unsigned field added on top": b"Received: from relay.test by mx.test\r\n" + two,
        "body changed": two.replace(b"Hello list.", b"Hello all."),
        "signed field changed": two.replace(b"Subject: ARC test", b"Subject: ARC test!"),
        "signed field recased and respaced": two.replace(b"Subject: ARC test", b"SUBJECT:   ARC   test"),
        "body respaced": two.replace(b"Hello list.", b"Hello   list.  "),
        "older results changed": two.replace(b"i=1; lists.test; dkim=pass", b"i=1; lists.test; dkim=fail"),
        "newest results changed": two.replace(b"i=2; lists.test; dkim=pass", b"i=2; lists.test; dkim=fail"),
        "newest seal removed": joined(set2[1:], set1, others),
        "newest message signature removed": joined(set2[:1], set2[2:], set1, others),
        "cv=none at 2": two.replace(b"i=2; cv=pass", b"i=2; cv=none"),
        "cv=fail at 2": two.replace(b"i=2; cv=pass", b"i=2; cv=fail"),
        "set 1 twice": joined(set2, set1, set1, others),
        "set 1 above set 2": joined(set1, set2, others),
        "sets below the other fields": joined(others, set2, set1),
        "changed between the hops": forwarded_after_a_change(sign(MESSAGE, keys), keys),
        "instance 51": two.replace(b"ARC-Seal: i=2;", b"ARC-Seal: i=51;"),
        "seal with h=": two.replace(b"i=2; cv=pass;", b"i=2; cv=pass; h=from;"),
        "no chain": sign(MESSAGE, keys),
    }


# Where the daemon and dkimpy part, on purpose: the variant, the daemon's result, and why.
DKIMPY_DIFFERS = {
    # RFC 8617 §5.1.1: a seal hashes the sets "in increasing instance order", wherever their fields stand;
    # dkimpy picks them by position (DKIM's bottom-up choice of fields), so sets moved around fail there.
    "set 1 above set 2": "pass",
}


def test_results_agree_with_dkimpy(arc_daemon, keys, dns_server):
    """Every variant's result through the daemon is dkimpy's (pass, fail, or none without ARC fields),
    except the differences listed in DKIMPY_DIFFERS with their reasons."""
    d = arc_daemon()
    txt = txt_lookup(dns_server.port)
    signed = sign(MESSAGE, keys)
    variants = chain_variants(forwarded(signed, keys, hops=2), forwarded(signed, keys), keys)
    for name, message in variants.items():
        cv, _, comment = dkim.arc_verify(message, dnsfunc=txt)
        dkimpy_says = {dkim.CV_Pass: "pass", dkim.CV_None: "none"}.get(cv, "fail")
        expected = DKIMPY_DIFFERS.get(name, dkimpy_says)
        if name in DKIMPY_DIFFERS:
            assert dkimpy_says != expected, f"{name}: dkimpy now agrees ({dkimpy_says}); drop it from DKIMPY_DIFFERS"
        ours = arc_of(d, message).split(" ", 1)[0]
        assert ours == f"arc={expected}", f"{name}: dkimpy says {dkimpy_says} ({comment}), the daemon {ours}"


def test_a_message_over_16_mib_is_validated_and_sealed(arc_daemon, keys, dns_server, aiosmtpd_upstream):
    """Validated and sealed as it streams by (dkimpy held whole messages in memory and skipped these)."""
    d = arc_daemon(deliver=True, checks={"authentication_results": True},
                   arc_seal={"domain": "mx.test", "selector": "seal", "key_file": str(keys["rsa_file"])})
    line = b"0123456789" * 7 + b"\r\n"
    big = MESSAGE + line * (17 * 1024 * 1024 // len(line))
    with d.connect() as c:
        r = c.transaction("alice@example.test", ["bob@example.net"], forwarded(sign(big, keys), keys)[:-2])
    assert r.code == 250, str(r)
    d.wait_log(r"[0-9A-F]{12}: arc=pass \(i=1 by lists\.test\)$")
    content = aiosmtpd_upstream.wait_messages(1)[-1]["content"]
    assert len(content) > 17 * 1024 * 1024
    assert content.startswith(b"ARC-Seal: i=2; cv=pass"), content[:200]
    cv, results, comment = dkim.arc_verify(content, dnsfunc=txt_lookup(dns_server.port))
    assert cv == dkim.CV_Pass and len(results) == 2, comment


def test_our_seal_verifies_elsewhere(arc_daemon, keys, dns_server, aiosmtpd_upstream):
    d = arc_daemon(deliver=True, checks={"authentication_results": True, "dkim": True},
                   arc_seal={"domain": "mx.test", "selector": "seal", "key_file": str(keys["rsa_file"])})
    txt = txt_lookup(dns_server.port)
    for message, instance in ((sign(MESSAGE, keys), 1), (forwarded(sign(MESSAGE, keys), keys), 2)):
        with d.connect() as c:
            r = c.transaction("alice@example.test", ["bob@example.net"], message[:-2])
        assert r.code == 250, str(r)
        content = aiosmtpd_upstream.wait_messages(instance)[-1]["content"]
        assert content.startswith(f"ARC-Seal: i={instance}; cv={'none' if instance == 1 else 'pass'}".encode()), content[:200]
        cv, results, comment = dkim.arc_verify(content, dnsfunc=txt)
        assert cv == dkim.CV_Pass, comment
        assert len(results) == instance
        # Our ARC-Authentication-Results carries what we found.
        aar = content.split(b"ARC-Authentication-Results: ", 1)[1].split(b"\r\n", 1)[0]
        assert aar.startswith(f"i={instance}; {HOSTNAME};".encode()), aar
        head = content.split(b"\r\n\r\n", 1)[0].decode()
        assert f"\tarc={'none' if instance == 1 else 'pass'}" in head, head
    d.wait_log(r"[0-9A-F]{12}: ARC sealed d=mx\.test s=seal$")
    # A policy may send a message without our seal.
    d.reload({"policy": {"files": [str(d.policy_files[0]), str(write_no_seal(d))]}})
    with d.connect() as c:
        r = c.transaction("alice@example.test", ["bob@example.net"], sign(MESSAGE, keys)[:-2])
    assert r.code == 250, str(r)
    assert b"ARC-Seal" not in aiosmtpd_upstream.wait_messages(3)[-1]["content"]
    # A change after the seal breaks it.
    assert dkim.arc_verify(content.replace(b"Hello list.", b"Hello all."), dnsfunc=txt)[0] == dkim.CV_Fail


def test_sealing_needs_the_chain_checked_and_reported(portcullis_bin, tmp_path, keys):
    config = tmp_path / "portcullis.toml"
    key = keys["rsa_file"]
    config.write_text('[server]\nlisten = ["127.0.0.1:2599"]\nhostname = "mx.test"\n'
                      '[upstream]\nurl = "smtp://127.0.0.1:2598"\n'
                      f'[arc_seal]\ndomain = "mx.test"\nselector = "seal"\nkey_file = "{key}"\n')
    r = subprocess.run([str(portcullis_bin), "--check-config", str(config)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert "arc_seal.domain: needs [checks] arc = true and authentication_results = true" in r.stderr, r.stderr


def test_check_config_loads_the_sealing_key(portcullis_bin, tmp_path):
    config = tmp_path / "portcullis.toml"
    (tmp_path / "not-a-key.pem").write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    config.write_text('[server]\nlisten = ["127.0.0.1:2599"]\nhostname = "mx.test"\n'
                      '[upstream]\nurl = "smtp://127.0.0.1:2598"\n[checks]\narc = true\nauthentication_results = true\n'
                      '[dns]\nnameserver = "127.0.0.1:53"\n'
                      '[arc_seal]\ndomain = "mx.test"\nselector = "seal"\nkey_file = "not-a-key.pem"\n')
    r = subprocess.run([str(portcullis_bin), "--check-config", str(config)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1, r
    assert "arc_seal" in r.stderr and "not-a-key.pem" in r.stderr, r.stderr


DMARC_POLICY = Path(__file__).resolve().parents[2] / "policies" / "dmarc.py"


def test_a_trusted_forwarder_excuses_only_what_it_handed_over_authenticated(policy_daemon, aiosmtpd_upstream,
                                                                             dns_server, keys):
    """policies/dmarc.py's trusted_forwarders: a DMARC failure (example.test, p=reject) is excused when
    the chain passes, its newest set is the list's, and the list found the message authenticated. A seal
    covers the ARC fields alone (RFC 8617 §5.2 checks the newest message signature only): an older set
    of the list's, copied from mail the list once sent the forger, excused any forgery sealed on top."""
    d = policy_daemon(aiosmtpd_upstream.url, DMARC_POLICY,
                      checks={"spf": True, "dkim": True, "dmarc": True, "arc": True},
                      dmarc={"trusted_forwarders": ["lists.test"]},
                      dns={"nameserver": f"127.0.0.1:{dns_server.port}", "timeout": 1})
    txt = txt_lookup(dns_server.port)

    def send(message: bytes):
        assert dkim.arc_verify(message, dnsfunc=txt)[0] in (dkim.CV_Pass, dkim.CV_Fail)
        with d.connect() as c:
            return c.transaction("m@evil.test", ["bob@example.net"], message[:-2])

    # The list verified Alice's signature, added its footer (breaking it), and sealed: excused.
    footed = sign(MESSAGE, keys).replace(b"Hello list.", b"Hello list.\r\n-- \r\nlist footer")
    r = send(forwarded(footed, keys))
    assert r.code == 250, str(r)
    d.wait_log(r"DMARC: fail for example\.test excused: ARC chain sealed last by lists\.test")

    # The forger's own mail through the list, rewritten as Alice's, sealed again by the forger.
    own = MESSAGE.replace(b"From: Alice <alice@example.test>", b"From: Mallory <m@evil.test>")
    by_list = forwarded(own, keys, found=b"dkim=pass header.d=evil.test")
    phish = by_list.replace(b"From: Mallory <m@evil.test>", b"From: Alice <alice@example.test>").replace(
        b"Hello list.", b"Log in at http://evil.test/")
    replayed = forwarded(phish, keys, by=b"evil.test", found=b"dkim=none")
    assert dkim.arc_verify(replayed, dnsfunc=txt)[0] == dkim.CV_Pass
    r = send(replayed)
    assert (r.code, r.status) == (550, "5.7.1"), str(r)

    # A forgery the list relayed as it got it: its seal is the list's, its results say nothing passed.
    relayed = forwarded(MESSAGE, keys, found=b"dkim=none; spf=fail smtp.mailfrom=m@evil.test")
    r = send(relayed)
    assert (r.code, r.status) == (550, "5.7.1"), str(r)
    d.wait_log(r"DMARC: fail for example\.test not excused: lists\.test sealed it, but its results show no pass")

    # The forger's mail through the list, a From of Alice's put on top of the list's signed one: the
    # list's message signature takes the bottom one (RFC 6376 §5.4.2; dkimpy takes the top one and
    # fails the chain), so the chain passes, but the list found only the forger's domain authenticated.
    own_by_list = forwarded(own, keys, found=b"dkim=pass header.d=evil.test", headers=[b"from", b"to", b"subject"])
    with d.connect() as c:
        r = c.transaction("m@evil.test", ["bob@example.net"], b"From: Alice <alice@example.test>\r\n" + own_by_list[:-2])
    assert (r.code, r.status) == (550, "5.7.1"), str(r)
    d.wait_log(r"[0-9A-F]{12}: arc=pass \(i=1 by lists\.test\)$", count=3)
    d.wait_log(r"DMARC: fail for example\.test not excused: lists\.test sealed it", count=2)


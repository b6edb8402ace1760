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
             "seal._domainkey.mx.test": record, "slow._domainkey.lists.test": ["TIMEOUT"]}
    with DnsServer(zones) as server:
        yield server


def forwarded(message: bytes, keys: dict, hops: int = 1, selector: str = "arc") -> bytes:
    """The message as a mailing list (lists.test) forwards it: authenticated, then ARC sealed by dkimpy."""
    for _ in range(hops):
        has_chain = b"ARC-Seal:" in message
        ar = b"Authentication-Results: lists.test; dkim=pass header.d=example.test" + (
            b"; arc=pass\r\n" if has_chain else b"\r\n")
        message = ar + message
        message = b"".join(dkim.arc_sign(message, selector.encode(), b"lists.test", keys["rsa"], b"lists.test")) + message
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

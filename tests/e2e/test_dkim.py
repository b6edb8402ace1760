"""DKIM verification ([checks] dkim, RFC 6376 and RFC 8463) through the
daemon: messages signed by an independent implementation (dkimpy), keys
served by a real DNS server on loopback, tx.dkim reported by a policy, and
every result compared with dkimpy's own verification on the same DNS."""

from __future__ import annotations

import base64
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import HOSTNAME
import dkim
from dkim_helpers import dkimpy_results, make_keys, opendkim_results, sign

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


@pytest.fixture(scope="module")
def small_key(tmp_path_factory):
    """A 512-bit RSA key (RFC 8301 wants 1024 at least) and its record."""
    path = tmp_path_factory.mktemp("small") / "small.pem"
    subprocess.run(["openssl", "genrsa", "-out", str(path), "512"], check=True, capture_output=True)
    der = subprocess.run(["openssl", "rsa", "-in", str(path), "-pubout", "-outform", "DER"], check=True,
                         capture_output=True).stdout
    return path.read_bytes(), "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()


# Ed25519's identity point as a public key (small order, RFC 8032 §5.1.7), and the
# signature (R the identity, S zero) that a check without the small-order test
# accepts for every message under that key: OpenSSL 3.0's; not libsodium's.
IDENTITY_KEY = base64.b64encode(bytes([1]) + bytes(31)).decode()
UNIVERSAL_SIGNATURE = base64.b64encode(bytes([1]) + bytes(63))


def key_zones(keys, small_key) -> dict:
    """Selectors of example.test with good, odd and broken keys."""
    rsa_p = keys["rsa_record"].split("p=", 1)[1]
    return {
        "rsa._domainkey.example.test": [{"TXT": keys["rsa_record"]}],
        "ed._domainkey.example.test": [{"TXT": keys["ed25519_record"]}],
        "revoked._domainkey.example.test": [{"TXT": "v=DKIM1; k=rsa; p="}],
        "slow._domainkey.example.test": ["TIMEOUT"],
        "small._domainkey.example.test": [{"TXT": small_key[1]}],
        "strict._domainkey.example.test": [{"TXT": f"v=DKIM1; t=s; p={rsa_p}"}],
        "testing._domainkey.example.test": [{"TXT": f"v=DKIM1; t=y; p={rsa_p}"}],
        "email._domainkey.example.test": [{"TXT": f"v=DKIM1; h=sha1:sha256; s=email; p={rsa_p}"}],
        "sha1only._domainkey.example.test": [{"TXT": f"v=DKIM1; h=sha1; p={rsa_p}"}],
        "service._domainkey.example.test": [{"TXT": f"v=DKIM1; s=tlsrpt; p={rsa_p}"}],
        "edtype._domainkey.example.test": [{"TXT": f"v=DKIM1; k=ed25519; p={rsa_p}"}],
        "weak._domainkey.example.test": [{"TXT": f"v=DKIM1; k=ed25519; p={IDENTITY_KEY}"}],
        "version._domainkey.example.test": [{"TXT": f"v=DKIM2; p={rsa_p}"}],
        "garbage._domainkey.example.test": [{"TXT": "v=DKIM1; p=QUJDRA=="}],
        "nokey._domainkey.example.test": [{"TXT": "v=spf1 -all"}],
        "example.test": [{"A": "192.0.2.1"}],
    }


@pytest.fixture
def dns_server(keys, small_key):
    with DnsServer(key_zones(keys, small_key)) as server:
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
    assert dkim_of(d, hostile) == "pass:example.test:rsa*3,neutral::"  # the 197 others: one entry, no name
    assert time.monotonic() - started < 10
    d.wait_log(r"[0-9A-F]{12}: dkim=neutral d= s= \(197 more signatures not evaluated \(limit 3\)\)$")


def test_signatures_past_the_limit_cost_one_result_downstream(policy_daemon, aiosmtpd_upstream, dns_server):
    """20,000 signature fields (620 KB): each was a result, a log line, a metric, an
    Authentication-Results entry we added (an 18 MB header for 200,000) and a policy object.
    Now the limit's and one counting the rest, its reason in RFC 8601 syntax."""
    counter = "import portcullis as pc\n\ndef on_data(tx, message):\n    pc.log.info('policy got %d dkim results', len(tx.dkim))\n"
    d = policy_daemon(aiosmtpd_upstream.url, counter, checks={"dkim": True, "authentication_results": True},
                      dns={"nameserver": f"127.0.0.1:{dns_server.port}", "timeout": 1})
    hostile = b"DKIM-Signature: d=a.test; s=s\r\n" * 20_000 + MESSAGE
    with d.connect() as c:
        r = c.transaction("alice@example.test", ["bob@example.net"], hostile)
    assert r.code == 250, str(r)
    content = aiosmtpd_upstream.wait_messages(1)[-1]["content"]
    ours = content.split(b"\r\nReceived: ", 1)[0].decode()
    assert ours.startswith(f"Authentication-Results: {HOSTNAME};"), ours[:200]
    assert ours.count("dkim=") == 6, ours[:2000]  # (and arc=none: [checks] arc goes with dkim)
    assert ours.endswith('\tdkim=neutral reason="19995 more signatures not evaluated (limit 5)";\r\n\tarc=none'), ours[-300:]
    assert len(ours) < 2000
    d.wait_log(r"policy got 6 dkim results")
    assert d.log_text().count("dkim=") < 20


def test_authentication_results_carry_each_signature(dkim_daemon, keys, aiosmtpd_upstream):
    d = dkim_daemon(deliver=True, checks={"authentication_results": True})
    with d.connect() as c:
        r = c.transaction("alice@example.test", ["bob@example.net"], sign(sign(MESSAGE, keys, "missing"), keys))
        assert r.code == 250, str(r)
    [env] = aiosmtpd_upstream.wait_messages(1)
    head = env["content"].split(b"\r\nReceived: ", 1)[0].decode()
    assert head == (f"Authentication-Results: {HOSTNAME};\r\n"
                    "\tdkim=pass header.d=example.test header.s=rsa;\r\n"
                    "\tdkim=permerror reason=\"key not found in DNS\" header.d=example.test header.s=missing;\r\n"
                    "\tarc=none"), head  # ([checks] arc left out: it goes with dkim)
    d.wait_log(r"[0-9A-F]{12}: dkim=pass d=example\.test s=rsa$")
    d.wait_log(r"[0-9A-F]{12}: dkim=permerror d=example\.test s=missing \(key not found in DNS\)$")


def high_water_mib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
    raise AssertionError("no VmHWM")


def test_a_large_header_section_is_not_held_in_memory(dkim_daemon, keys):
    """Four messages at once, each 30 MiB of header fields: the DKIM and ARC verifiers read (and
    keep) at most 1 MiB of a header section, and give up past it (dkim=permerror, arc=fail). They
    held it whole, several times over, outside the message memory budget: 4 x 38 MiB of header
    took the daemon's RSS to 436 MiB, where the same bytes in the bodies cost it 30 MiB."""
    d = dkim_daemon(checks={"arc": True}, server={"max_message_size": 40 * 1024 * 1024})
    pad = b"X-Pad: " + b"a" * 390 + b"\r\n"
    message = sign(MESSAGE, keys).replace(b"\r\n\r\n", b"\r\n" + pad * (30 * 2**20 // len(pad)) + b"\r\n\r\n", 1)
    before = high_water_mib(d.proc.pid)
    results = []

    def send():
        results.append(dkim_of(d, message))

    threads = [threading.Thread(target=send) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    grown = high_water_mib(d.proc.pid) - before
    assert grown < 64, f"the daemon's RSS grew by {grown} MiB"
    assert results == ["permerror::"] * 4, results
    d.wait_log(r"[0-9A-F]{12}: dkim=permerror d= s= \(header section too large \(over 1024 KiB\): not verified\)$",
               count=4)
    d.wait_log(r"[0-9A-F]{12}: arc=fail \(header section too large \(over 1024 KiB\): not validated\)$", count=4)


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


def test_an_h_tag_naming_a_long_header_field_by_field_is_bounded(dkim_daemon):
    """h= names 60,000 fields over a header of 60,000 (under 1 MB a sender controls, the body
    hash right, any published key, b= junk): found by name, not by a scan of the header per
    name (which took minutes), for DKIM-Signature and ARC-Message-Signature alike."""
    d = dkim_daemon(checks={"arc": True})
    body = b"body\r\n"
    bh = base64.b64encode(__import__("hashlib").sha256(body).digest()).decode()
    n = 60_000
    names = ":\r\n\t".join(":".join(["y"] * 100) for _ in range(n // 100))  # folded: lines of 200 octets
    tags = f"a=rsa-sha256; c=relaxed/simple; d=example.test; s=rsa; h=from:{names}; bh={bh}; b=AAAA"
    fields = (f"DKIM-Signature: v=1; {tags}\r\n"
              f"ARC-Seal: i=1; a=rsa-sha256; cv=none; d=example.test; s=rsa; b=AAAA\r\n"
              f"ARC-Message-Signature: i=1; {tags}\r\n"
              f"ARC-Authentication-Results: i=1; example.test; none\r\n").encode()
    message = fields + b"From: a@example.test\r\n" + b"y: z\r\n" * n + b"\r\n" + body
    started = time.monotonic()
    assert dkim_of(d, message) == "fail:example.test:rsa"
    assert time.monotonic() - started < 5


def dkim_corpus(keys, small_key) -> dict[str, bytes]:
    """Messages dkimpy signed every way, then changed the ways mail changes on its travels, and signatures
    that are broken or odd: name -> message."""
    def signed(message=MESSAGE, selector="rsa", canon=("relaxed", "simple"), algorithm="rsa-sha256", key=None,
               headers=(b"from", b"to", b"subject", b"date", b"message-id"), **options):
        if key is None:
            key = keys["ed25519"] if algorithm == "ed25519-sha256" else keys["rsa"]
        field = dkim.sign(message, selector.encode(), b"example.test", key, signature_algorithm=algorithm.encode(),
                          canonicalize=tuple(c.encode() for c in canon), include_headers=list(headers), **options)
        return field + message

    corpus = {}
    for hc in ("simple", "relaxed"):
        for bc in ("simple", "relaxed"):
            base = signed(canon=(hc, bc))
            corpus[f"{hc}/{bc}"] = base
            corpus[f"{hc}/{bc} body spaces changed"] = base.replace(b"this message is", b"this  message is ")
            corpus[f"{hc}/{bc} empty lines added at the end"] = base + b"\r\n\r\n"
            corpus[f"{hc}/{bc} body changed"] = base.replace(b"Hello", b"Hallo")
            corpus[f"{hc}/{bc} header refolded"] = base.replace(b"Subject: DKIM test", b"Subject:  DKIM\r\n\ttest")
            corpus[f"{hc}/{bc} header name case"] = base.replace(b"Subject:", b"SUBJECT:")
            corpus[f"{hc}/{bc} unsigned field added"] = base.replace(b"Subject:", b"X-Added: yes\r\nSubject:")
            corpus[f"{hc}/{bc} b= refolded"] = re.sub(rb"b=([A-Za-z0-9+/]{20})", rb"b=\1\r\n \t ", base, count=1)
            corpus[f"{hc}/{bc} signature field renamed in case"] = base.replace(b"DKIM-Signature:", b"dkim-signature:", 1)
    corpus["ed25519 relaxed"] = signed(algorithm="ed25519-sha256", selector="ed", canon=("relaxed", "relaxed"))
    corpus["ed25519 simple"] = signed(algorithm="ed25519-sha256", selector="ed", canon=("simple", "simple"))
    corpus["ed25519 body changed"] = corpus["ed25519 relaxed"].replace(b"Hello", b"Hallo")
    weak = signed(algorithm="ed25519-sha256", selector="weak", canon=("relaxed", "relaxed"))
    b_value = re.search(rb";\s*b=", weak).end()
    field_end = re.search(rb"\r\n(?![ \t])", weak).start()  # (b= is dkimpy's last tag)
    corpus["ed25519 small-order key"] = weak[:b_value] + UNIVERSAL_SIGNATURE + weak[field_end:]
    corpus["colon and spaces in a value"] = signed(MESSAGE.replace(b"Subject: DKIM test", b"Subject: Re:  a : b  c"),
                                                   canon=("relaxed", "relaxed"))
    corpus["8-bit header and body"] = signed(MESSAGE.replace(b"Bob,", b"B\xc3\xb6b,").replace(b"DKIM test", b"\xc3\xa9t\xc3\xa9"))
    corpus["no body"] = signed(MESSAGE.split(b"\r\n\r\n")[0] + b"\r\n\r\n", canon=("simple", "simple"))
    corpus["repeated field signed bottom up"] = signed(
        MESSAGE.replace(b"Subject:", b"Cc: one@example.net\r\nCc: two@example.net\r\nSubject:"),
        headers=(b"from", b"cc", b"cc", b"cc"))
    corpus["repeated field reordered"] = corpus["repeated field signed bottom up"].replace(
        b"Cc: one@example.net\r\nCc: two@example.net", b"Cc: two@example.net\r\nCc: one@example.net")
    corpus["length limit, text appended"] = signed(length=True) + b"appended by a list\r\n"
    corpus["length limit past the body"] = signed(length=True).replace(b"this message is signed.\r\n", b"")
    corpus["identity in a subdomain"] = signed(identity=b"alice@news.example.test")
    corpus["identity in a subdomain, strict key"] = signed(selector="strict", identity=b"alice@news.example.test")
    corpus["identity, strict key"] = signed(selector="strict", identity=b"alice@example.test")
    corpus["testing key"] = signed(selector="testing")
    corpus["key for email"] = signed(selector="email")
    corpus["key for sha1 only"] = signed(selector="sha1only")
    corpus["key for another service"] = signed(selector="service")
    corpus["key of the other type"] = signed(selector="edtype")
    corpus["unknown key version"] = signed(selector="version")
    corpus["garbage key"] = signed(selector="garbage")
    corpus["not a key record"] = signed(selector="nokey")
    corpus["no key"] = signed(selector="missing")
    corpus["revoked key"] = signed(selector="revoked")
    corpus["512-bit key"] = signed(selector="small", key=small_key[0])
    corpus["rsa-sha1"] = signed(algorithm="rsa-sha1")
    corpus["v=2"] = corpus["relaxed/simple"].replace(b"v=1;", b"v=2;", 1)
    corpus["tag twice"] = corpus["relaxed/simple"].replace(b"v=1;", b"v=1; v=1;", 1)
    corpus["unknown tag added"] = corpus["relaxed/simple"].replace(b"v=1;", b"v=1; zz=top;", 1)
    corpus["no From in h="] = corpus["relaxed/simple"].replace(b"h=from : to", b"h=to", 1)
    corpus["i= outside d="] = corpus["relaxed/simple"].replace(b"i=@example.test", b"i=@example.net", 1)
    corpus["unknown canonicalization"] = corpus["relaxed/simple"].replace(b"c=relaxed/simple", b"c=loose/simple", 1)
    corpus["q= other"] = corpus["relaxed/simple"].replace(b"q=dns/txt", b"q=http", 1)
    corpus["bh= not base64"] = re.sub(rb"bh=[^;]+;", b"bh=%%%%;", corpus["relaxed/simple"], count=1)
    corpus["three signatures"] = signed(signed(signed(selector="missing"), selector="ed",
                                               algorithm="ed25519-sha256"))
    corpus["second signature broken"] = signed(corpus["relaxed/simple"].replace(b"Hello", b"Hallo"), selector="ed",
                                               algorithm="ed25519-sha256", canon=("relaxed", "relaxed"))
    return corpus


# Where we differ from an implementation on purpose: corpus name -> (ours, the other's).
DKIMPY_DIFFERS = {
    "rsa-sha1": ("permerror", True),  # RFC 8301 §3.1: rsa-sha1 signatures are not valid
    "identity in a subdomain, strict key": ("permerror", True),  # RFC 6376 §3.6.1 t=s: dkimpy ignores it
    "key for sha1 only": ("permerror", True),  # §3.6.1 h=: the key does not allow sha256
}
OPENDKIM_DIFFERS = {
    "rsa-sha1": ("permerror", "pass"),  # RFC 8301 §3.1
    "key of the other type": ("permerror", "pass"),  # §6.1.2: a key that does not suit k= is a PERMFAIL
    "tag twice": ("permerror", "fail"),  # §3.2: a tag named twice makes the whole tag-list invalid
    "bh= not base64": ("permerror", "fail"),  # §6.1.1: a malformed signature is a PERMFAIL
    # RFC 8032 §5.1.7 with the small-order checks (libsodium's, dkimpy's): OpenSSL's check passes the
    # signature that suits every message under the identity key.
    "ed25519 small-order key": ("fail", "pass"),
}


def test_results_agree_with_dkimpy_and_opendkim(dkim_daemon, keys, small_key, dns_server, portcullis_bin, tmp_path):
    """Every message of the corpus: the daemon's result for each signature is dkimpy's verdict and OpenDKIM's
    result on the same keys, but for the differences listed above (each with its reason)."""
    d = dkim_daemon()
    zones = key_zones(keys, small_key)
    disagreements = []
    for name, message in dkim_corpus(keys, small_key).items():
        ours = [r.split(":")[0] for r in re.sub(r"\*(\d+)", "", dkim_of(d, message)).split(",")]
        theirs = dkimpy_results(message, dns_server.port)
        opendkim = opendkim_results(message, zones, portcullis_bin, tmp_path)
        expected_dkimpy = [r == "pass" for r in ours]
        expected_opendkim = list(ours)
        if name in DKIMPY_DIFFERS:
            expected_dkimpy[0] = DKIMPY_DIFFERS[name][1]
        if name in OPENDKIM_DIFFERS:
            expected_opendkim[0] = OPENDKIM_DIFFERS[name][1]
        known = DKIMPY_DIFFERS.get(name, OPENDKIM_DIFFERS.get(name, (None,)))[0]
        if theirs != expected_dkimpy or opendkim != expected_opendkim or known not in (None, ours[0]):
            disagreements.append(f"{name}: ours {ours}, dkimpy {theirs}, OpenDKIM {opendkim}")
    assert not disagreements, "\n".join(disagreements)


def test_a_key_that_waits_for_dns_never_holds_up_the_io_thread(dkim_daemon, keys):
    """Verification is tried on the session's own I/O thread from cached keys only; a key that must
    be waited for sends it to the checker's threads, and another session on the same (only) I/O
    thread is answered meanwhile. A second verification, from the cache, agrees with the first."""
    d = dkim_daemon(server={"threads": 1, "workers": 1})
    waited = []
    slow = threading.Thread(target=lambda: waited.append(dkim_of(d, sign(MESSAGE, keys, "slow"))))
    slow.start()
    time.sleep(0.3)  # its key lookup is waiting (1 s timeout)
    started = time.monotonic()
    with d.connect() as c:
        c.exchange("NOOP", 250)
    assert time.monotonic() - started < 0.5
    slow.join()
    assert waited == ["temperror:example.test:slow"]
    signed = sign(MESSAGE, keys)
    assert dkim_of(d, signed) == dkim_of(d, signed) == "pass:example.test:rsa"

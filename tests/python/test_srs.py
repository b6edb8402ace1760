"""portcullis.srs: the forms libsrs2 makes, rotation, expiry, forgery, and
interoperability with a real postsrsd (Debian's), both ways."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from helpers.postsrsd import DOMAIN, SECRET, running_postsrsd
from portcullis import Address
from portcullis.srs import SRS, SRSError, is_srs

DAY = 86400
# 2026-12-02 12:00 UTC: day 20789, stamp "JV" (20789 % 1024 = 309 = 9*32 + 21).
NOW = 20789 * DAY + 12 * 3600


def make(secrets=("s3cret",), now=NOW, **kw) -> SRS:
    clock = [now]
    srs = SRS(list(secrets), "fwd.example.test", clock=lambda: clock[0], **kw)
    srs.clock = clock  # the tests move it
    return srs


def test_srs0_has_the_libsrs2_form():
    address = make().forward("alice@example.com")
    local, _, domain = address.rpartition("@")
    tag, hash_, stamp, orig_domain, orig_local = local.split("=")
    assert (tag, stamp, orig_domain, orig_local, domain) == ("SRS0", "JV", "example.com", "alice", "fwd.example.test")
    assert len(hash_) == 4


def test_the_hash_is_keyed_lowercased_hmac_sha1():
    # Computed independently: base64(HMAC-SHA1("s3cret", "jv" + "example.com" + "alice"))[:4].
    import base64, hashlib, hmac
    want = base64.b64encode(hmac.new(b"s3cret", b"jvexample.comalice", hashlib.sha1).digest()).decode()[:4]
    assert make().forward("alice@example.com") == f"SRS0={want}=JV=example.com=alice@fwd.example.test"
    # The hash covers the lowercased parts; the address keeps its case.
    upper = make().forward("ALICE@Example.COM")
    assert upper.split("=")[1] == want and upper.endswith("=Example.COM=ALICE@fwd.example.test")


def test_reverse_gives_the_original_and_survives_case_folding():
    srs = make()
    address = srs.forward("Bob.Smith+tag@example.org")
    assert srs.reverse(address) == "Bob.Smith+tag@example.org"
    assert srs.reverse(address.lower()) == "bob.smith+tag@example.org"
    assert srs.reverse(address.upper()).lower() == "bob.smith+tag@example.org"


def test_a_local_part_with_equals_signs_round_trips():
    srs = make()
    assert srs.reverse(srs.forward("a=b=c@d.test")) == "a=b=c@d.test"


def test_our_own_domain_is_not_rewritten_unless_asked():
    assert make().forward("x@FWD.example.test") == "x@FWD.example.test"
    assert make(always_rewrite=True).forward("x@fwd.example.test").startswith("SRS0=")


def test_srs1_wraps_another_forwarders_srs0_and_reverses_to_it():
    ours = make()
    theirs = SRS("other secret", "hop1.test", clock=lambda: NOW)
    hop1 = theirs.forward("alice@example.com")
    assert hop1.startswith("SRS0=") and hop1.endswith("@hop1.test")
    srs1 = ours.forward(hop1)
    rest = hop1.rpartition("@")[0][4:]  # "=HASH=TT=example.com=alice"
    assert srs1.startswith("SRS1=") and srs1.endswith(f"=hop1.test={rest}@fwd.example.test")
    back = ours.reverse(srs1)
    assert back == hop1 and theirs.reverse(back) == "alice@example.com"
    # An SRS1 forwarded again keeps the first hop: no growth per hop.
    srs1_again = SRS("third", "hop3.test", clock=lambda: NOW).forward(srs1)
    assert srs1_again.startswith("SRS1=") and f"=hop1.test={rest}@hop3.test" in srs1_again


def test_expired_and_future_stamps_are_refused():
    srs = make(max_age=21)
    address = srs.forward("alice@example.com")
    srs.clock[0] = NOW + 21 * DAY
    assert srs.reverse(address) == "alice@example.com"
    srs.clock[0] = NOW + 22 * DAY
    with pytest.raises(SRSError, match="expired"):
        srs.reverse(address)
    srs.clock[0] = NOW - 2 * DAY  # made "in the future": wraps to ~1022 days old
    with pytest.raises(SRSError, match="expired"):
        srs.reverse(address)


def test_stamps_wrap_every_1024_days():
    srs = make()
    address = srs.forward("alice@example.com")
    srs.clock[0] = NOW + 1024 * DAY + 3 * DAY
    assert srs.reverse(address) == "alice@example.com"


def test_forged_hashes_and_other_secrets_are_refused():
    srs = make()
    address = srs.forward("alice@example.com")
    tag, hash_, rest = address.split("=", 2)
    forged = f"{tag}={'AAAA' if hash_ != 'AAAA' else 'BBBB'}={rest}"
    with pytest.raises(SRSError, match="not ours"):
        srs.reverse(forged)
    # Same hash, another original: the hash covers the address.
    with pytest.raises(SRSError, match="not ours"):
        srs.reverse(address.replace("=alice@", "=mallory@"))
    with pytest.raises(SRSError, match="not ours"):
        make(secrets=["another"]).reverse(address)


def test_secrets_rotate_new_first_old_still_verifies():
    old = make(secrets=["old"]).forward("alice@example.com")
    rotated = make(secrets=["new", "old"])
    assert rotated.reverse(old) == "alice@example.com"
    assert rotated.forward("alice@example.com") == make(secrets=["new"]).forward("alice@example.com")


def test_short_hashes_are_refused_and_long_ones_cut():
    srs = make()
    tag, hash_, rest = srs.forward("alice@example.com").split("=", 2)
    with pytest.raises(SRSError, match="too short"):
        srs.reverse(f"{tag}={hash_[:3]}={rest}")
    assert srs.reverse(f"{tag}={hash_}XYZ={rest}") == "alice@example.com"
    lenient = make(hash_min=3)
    assert lenient.reverse(f"{tag}={hash_[:3]}={rest}") == "alice@example.com"


def test_the_url_safe_alphabet_of_postsrsd_2_is_accepted():
    srs = make()
    for sender in (f"user{i}@example.com" for i in range(200)):
        address = srs.forward(sender)
        if "+" in address.split("=")[1] or "/" in address.split("=")[1]:
            safe = address.replace("+", "-", 1) if "+" in address.split("=")[1] else address.replace("/", "_", 1)
            assert srs.reverse(safe) == sender
            return
    pytest.fail("no hash with + or / in 200 tries")


@pytest.mark.parametrize("bad", [
    "alice@example.com", "SRS0@fwd.example.test", "SRS0=@fwd.example.test", "SRS0=abcd=JV=example.com@fwd.example.test",
    "SRS0=abcd=J!=example.com=alice@fwd.example.test", "SRS1=abcd=hop1.test@fwd.example.test",
    "SRS1=abcd@fwd.example.test", "SRS2=abcd=JV=a=b@fwd.example.test", "SRS0xabcd=JV=a=b@fwd.example.test",
])
def test_malformed_addresses_are_refused(bad):
    with pytest.raises(SRSError):
        make().reverse(bad)


def test_is_srs_and_the_separators():
    assert is_srs("SRS0=a=b=c=d@x") and is_srs("srs1+a=b=c@x") and is_srs("SRS0-a=b=c=d")
    assert not is_srs("SRS0@x") and not is_srs("SRS3=a@x") and not is_srs("alice@x")
    plus = make(separator="+")
    address = plus.forward("alice@example.com")
    assert address.startswith("SRS0+") and plus.reverse(address) == "alice@example.com"


@pytest.mark.parametrize("kw", [
    {"secrets": []}, {"secrets": [""]}, {"domain": ""}, {"domain": "a@b"}, {"separator": "x"},
    {"hash_length": 0}, {"hash_length": 28}, {"hash_min": 5}, {"max_age": 1024},
])
def test_bad_settings_are_refused(kw):
    args = {"secrets": ["s"], "domain": "fwd.example.test", **kw}
    with pytest.raises(ValueError):
        SRS(args.pop("secrets"), args.pop("domain"), **args)


def test_an_address_without_a_domain_is_not_forwarded():
    with pytest.raises(SRSError):
        make().forward("postmaster")
    with pytest.raises(SRSError):
        make().forward("")


def test_a_hash_outside_the_base64_alphabet_is_refused_not_a_crash():
    # An SMTPUTF8 client may put anything there; compare_digest() raised TypeError for non-ASCII text.
    srs = make()
    _, _, rest = srs.forward("alice@example.com").split("=", 2)
    for hash_ in ("\u00e9123", "ab\u00e7d", "a b!"):
        with pytest.raises(SRSError, match="malformed"):
            srs.reverse(f"SRS0={hash_}={rest}")
        with pytest.raises(SRSError, match="malformed"):
            srs.reverse(f"SRS1={hash_}=hop.test==abcd={rest}")


def test_a_quoted_sender_is_rewritten_unquoted_and_quoted_again():
    srs = make()
    made = srs.forward('"john smith"@example.com')
    local, _, domain = made.rpartition("@")
    assert local.startswith('"SRS0=') and local.endswith('=JV=example.com=john smith"') and domain == "fwd.example.test"
    # The hash is over the unquoted form, as postsrsd makes it from what Postfix hands it.
    import base64, hashlib, hmac
    want = base64.b64encode(hmac.new(b"s3cret", b"jvexample.comjohn smith", hashlib.sha1).digest()).decode()[:4]
    assert made == f'"SRS0={want}=JV=example.com=john smith"@fwd.example.test'
    assert srs.reverse(made) == '"john smith"@example.com'
    # Quotes that were not needed are gone: the same mailbox, the same SRS address.
    assert srs.forward('"alice"@example.com') == srs.forward("alice@example.com")
    assert srs.forward('"al\\ice"@example.com') == srs.forward("alice@example.com")
    weird = '"a\\"b\\\\c"@example.com'  # the mailbox a"b\c
    assert srs.reverse(srs.forward(weird)) == weird
    assert Address(srs.forward(weird))


def test_an_address_literal_sender_is_rewritten_into_a_valid_address():
    srs = make()
    made = srs.forward("user@[192.0.2.1]")
    assert made.startswith('"SRS0=') and made.endswith('=JV=[192.0.2.1]=user"@fwd.example.test')
    assert Address(made) and srs.reverse(made) == "user@[192.0.2.1]"
    srs1 = srs.forward('"SRS0=abcd=AB=[192.0.2.1]=user"@hop1.test')
    assert srs1.startswith('"SRS1=') and Address(srs1)
    assert srs.reverse(srs1) == '"SRS0=abcd=AB=[192.0.2.1]=user"@hop1.test'


def test_a_sender_too_long_for_an_srs_address_is_refused_with_srserror():
    # RFC 5321 §4.5.3.1.1: 64 octets of local part. ESPs' VERP senders are long.
    srs = make()
    long_sender = "0100018d2f3c4b5a-6e7f8a9b-1c2d-4e3f-a5b6-c7d8e9f0a1b2-000000@amazonses.com"
    with pytest.raises(SRSError, match="would not be a valid address .*RFC 5321 allows 64"):
        srs.forward(long_sender)
    with pytest.raises(SRSError, match="would not be a valid address"):
        srs.forward("SRS0=abcd=AB=ex.com=" + "u" * 40 + "@other-forwarder.example")  # as SRS1
    # The longest that fits: "SRS0=HHHH=TT=" (13) + domain + "=" + local = 64 octets.
    fits = "a" * (64 - 13 - len("example.com") - 1) + "@example.com"
    made = srs.forward(fits)
    assert len(made.rpartition("@")[0]) == 64 and srs.reverse(made) == fits
    with pytest.raises(SRSError):
        srs.forward("a" + fits)


def test_an_srs_address_standing_for_an_invalid_one_is_refused():
    # Hashed correctly (we sign anything), but the original it names is no address.
    srs = make()
    stamp = srs.forward("a@b.test").split("=")[2]
    bad_local = "x" * 70
    hash_ = srs._hash(stamp, "example.com", bad_local)
    with pytest.raises(SRSError, match="not a valid address"):
        srs.reverse(f"SRS0={hash_}={stamp}=example.com={bad_local}@fwd.example.test")


# -- interoperability with postsrsd (Debian's postsrsd: libsrs2's code)


@pytest.fixture
def postsrsd(tmp_path: Path):
    with running_postsrsd(tmp_path) as p:
        yield p


SENDERS = ["alice@example.com", "Bob.Smith@Example.ORG", "x=y@d.test", "a.b-c_d@sub.example.net",
           "SRS0=abcd=AB=orig.test=user@hop1.test"] + [f"user{i}@host{i}.example" for i in range(40)]


def test_postsrsd_reads_what_we_make_and_we_read_what_it_makes(postsrsd):
    ours = SRS(SECRET, DOMAIN)  # the real clock, as postsrsd's
    for sender in SENDERS:
        made = ours.forward(sender)
        assert postsrsd.forward(sender) == (200, made), sender  # byte for byte the same address
        assert postsrsd.reverse(made) == (200, ours.reverse(made)), made
        assert ours.reverse(made) == sender  # (an SRS0 sender made an SRS1, which reverses to it)
    # Case folded on the way back (a hash with letters of both cases).
    assert postsrsd.reverse(ours.forward("alice@example.com").lower())[0] == 200


def test_postsrsd_makes_the_same_address_for_a_sender_that_needs_quotes(postsrsd):
    # Postfix hands postsrsd the unquoted form (tcp_table(5) encodes a blank as %20) and
    # quotes what it gets back: the address we make, byte for byte.
    ours = SRS(SECRET, DOMAIN)
    for sender, internal in (('"john smith"@example.com', "john%20smith@example.com"),
                             ("user@[192.0.2.1]", "user@[192.0.2.1]")):
        code, theirs = postsrsd.forward(internal)
        local, _, domain = ours.forward(sender).rpartition("@")
        assert code == 200 and theirs == f"{local[1:-1].replace(' ', '%20')}@{domain}"
        assert postsrsd.reverse(theirs) == (200, internal)


def test_postsrsd_refuses_what_we_refuse(postsrsd):
    ours = SRS(SECRET, DOMAIN)
    made = ours.forward("alice@example.com")
    for bad in (made.replace("=alice@", "=mallory@"), SRS("other", DOMAIN).forward("alice@example.com")):
        assert postsrsd.reverse(bad)[0] == 500
        with pytest.raises(SRSError):
            ours.reverse(bad)
    # An expired one: made 30 days ago by both (ours with the clock set back).
    old = SRS(SECRET, DOMAIN, clock=lambda: time.time() - 30 * DAY).forward("alice@example.com")
    assert postsrsd.reverse(old)[0] == 500
    with pytest.raises(SRSError, match="expired"):
        ours.reverse(old)

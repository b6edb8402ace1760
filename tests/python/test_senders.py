"""portcullis.senders and policies/senders.py through the testing harness:
ownership by login, extension and domain entries, logins that are
addresses, aliases owned through their expansion, unauthenticated clients
and trusted networks. End to end: tests/e2e/test_senders.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from portcullis.maps import MapError
from portcullis.senders import SenderLogins
from portcullis.testing import Harness, PolicyLoadError

POLICY = Path(__file__).resolve().parents[2] / "policies" / "senders.py"
SENDERS = ("alice@example.test   alice\n"
           "sales@example.test   alice, Bob\n"
           "@example.org         carol\n")
ALIASES = ("alice@example.test alice@example.test\n"
           "team@example.test alice@example.test, bob@example.test\n"
           "@example.test catchall@example.test\n")


def test_owners_by_address_extension_and_domain(tmp_path):
    (tmp_path / "senders").write_text(SENDERS)
    t = SenderLogins.read(tmp_path / "senders", login_is_address=True)
    assert t.owners("Alice@Example.TEST") == {"alice"}
    assert t.owners("alice+lists@example.test") == {"alice"}
    assert t.owners("sales@example.test") == {"alice", "bob"}
    assert t.owners("anyone@example.org") == {"carol"}
    assert t.owners("nobody@example.test") == set()
    assert t.owns("BOB", "sales@example.test") and not t.owns("bob", "alice@example.test")
    assert t.owns("dave@example.net", "dave@example.net") and t.owns("dave@example.net", "dave+x@example.net")
    assert not SenderLogins.read(tmp_path / "senders").owns("dave@example.net", "dave@example.net")  # the default


def test_the_tables_in_the_docs_say_what_the_text_says(tmp_path):
    # A "# ..." after a value is no comment: its words were read as logins ("every" owned example.org).
    from test_aliases import doc_blocks
    blocks = doc_blocks("senders.md")
    [table] = blocks["The table"]
    (tmp_path / "senders").write_text(table)
    t = SenderLogins.read(tmp_path / "senders")
    assert t.table == {"alice@example.test": {"alice"}, "sales@example.test": {"alice", "bob"},
                       "@example.org": {"carol"}}
    aliases, senders = blocks["Worked example: submission for example.test"]
    (tmp_path / "senders").write_text(senders)
    (tmp_path / "aliases").write_text(aliases)
    config = {"senders": {"file": "senders", "owns_aliases": True},
              "aliases": {"file": "aliases", "local_domains": ["example.test"]}}
    (tmp_path / "portcullis.toml").write_text("")
    with Harness([POLICY], config_path=tmp_path / "portcullis.toml", config=config) as h:
        for login, sender, code in (("alice", "alice@example.test", 250), ("alice", "alice+news@example.test", 250),
                                    ("alice", "team@example.test", 250), ("bob", "sales@example.test", 250),
                                    ("bob", "alice@example.test", 553), ("bob", "bob@gmail.example", 553),
                                    (None, "alice@example.test", 553), (None, "someone@elsewhere.example", 250)):
            assert mail(h, sender, login).code == code, (login, sender)


def test_a_key_without_a_domain_is_refused(tmp_path):
    (tmp_path / "senders").write_text("alice alice\n")
    with pytest.raises(MapError, match="line 1: 'alice': want address@domain"):
        SenderLogins.read(tmp_path / "senders")


def harness(tmp_path: Path, senders: dict | None = None, aliases: dict | None = None, relay: dict | None = None):
    (tmp_path / "senders").write_text(SENDERS)
    (tmp_path / "aliases").write_text(ALIASES)
    config = {"senders": {"file": "senders", **(senders or {})},
              "aliases": {"file": "aliases", "local_domains": ["example.test"], **(aliases or {})}}
    if relay is not None:
        config["relay"] = relay
    (tmp_path / "portcullis.toml").write_text("")
    return Harness([POLICY], config_path=tmp_path / "portcullis.toml", config=config)


def mail(h: Harness, sender: str, auth_user: str | None = None, client_ip: str = "192.0.2.1"):
    return h.connect(client_ip=client_ip, helo="client.example", auth_user=auth_user).mail(sender)


def test_an_authenticated_client_sends_only_as_what_it_owns(tmp_path):
    with harness(tmp_path) as h:
        assert mail(h, "alice@example.test", "alice").code == 250
        assert mail(h, "alice+news@example.test", "alice").code == 250
        assert mail(h, "sales@example.test", "bob").code == 250
        assert mail(h, "x@example.org", "carol").code == 250
        assert mail(h, "", "bob").code == 250  # bounces
        assert mail(h, "alice@example.test", "bob") == (
            553, "5.7.1", "<alice@example.test>: Sender address rejected: not owned by user bob")
        assert mail(h, "someone@gmail.example", "bob")[:2] == (553, "5.7.1")  # unlisted: not bob's either
        assert mail(h, "dave@example.net", "dave@example.net")[:2] == (553, "5.7.1")  # the contract: listed only
        assert mail(h, "team@example.test", "alice")[:2] == (553, "5.7.1")  # aliases not honoured unless asked


def test_a_login_owns_the_aliases_that_expand_to_its_address_when_asked(tmp_path):
    with harness(tmp_path, senders={"owns_aliases": True, "login_is_address": True}) as h:
        assert mail(h, "team@example.test", "alice").code == 250
        assert mail(h, "team@example.test", "bob@example.test").code == 250  # a login that is an address
        assert mail(h, "team@example.test", "carol")[:2] == (553, "5.7.1")
        # The catch-all does not count: it would give the whole domain away.
        assert mail(h, "random@example.test", "catchall@example.test")[:2] == (553, "5.7.1")


def test_the_aliases_speak_only_for_senders_the_table_does_not_list(tmp_path):
    # First match, as smtpd_sender_login_maps: the assistant gets copies of ceo@'s mail, yet the
    # table says ceo@ is ceo's alone.
    (tmp_path / "senders").write_text("ceo@example.test ceo\nassistant@example.test assistant\n@example.org carol\n")
    (tmp_path / "aliases").write_text("ceo@example.test ceo@example.test, assistant@example.test\n"
                                      "assistant@example.test assistant@example.test\n"
                                      "team@example.test ceo@example.test, assistant@example.test\n"
                                      "sales@example.org assistant@example.test\n")
    (tmp_path / "portcullis.toml").write_text("")
    config = {"senders": {"file": "senders", "owns_aliases": True},
              "aliases": {"file": "aliases", "local_domains": ["example.test"]}}
    with Harness([POLICY], config_path=tmp_path / "portcullis.toml", config=config) as h:
        assert mail(h, "ceo@example.test", "assistant")[:2] == (553, "5.7.1")
        assert mail(h, "ceo+x@example.test", "assistant")[:2] == (553, "5.7.1")  # listed without its extension
        assert mail(h, "ceo@example.test", "ceo").code == 250
        assert mail(h, "team@example.test", "assistant").code == 250  # no line: its expansion decides
        assert mail(h, "team@example.test", "ceo").code == 250
        assert mail(h, "sales@example.org", "assistant")[:2] == (553, "5.7.1")  # listed by its @domain: carol's
        assert mail(h, "sales@example.org", "carol").code == 250


def test_an_unauthenticated_client_may_not_use_local_or_owned_senders(tmp_path):
    with harness(tmp_path) as h:
        assert mail(h, "alice@example.test") == (
            553, "5.7.1", "<alice@example.test>: Sender address rejected: not logged in")
        assert mail(h, "x@example.org")[:2] == (553, "5.7.1")  # owned by carol, though not local
        assert mail(h, "stranger@example.com").code == 250  # inbound mail from elsewhere
        assert mail(h, "").code == 250


def test_without_local_domains_every_domain_the_alias_table_takes_as_local_is_local(tmp_path):
    # docs/aliases.md: the domains named in the file (keys, catch-alls, "domain -") and srs_domain are local too.
    (tmp_path / "senders").write_text(SENDERS)
    (tmp_path / "aliases").write_text("alice@example.test alice@example.test\nceo@example.com boss@example.test\n"
                                      "@example.net alice@example.test\nexample.info -\n")
    (tmp_path / "portcullis.toml").write_text("")
    aliases = {"file": "aliases", "local_domains": ["example.test"], "srs_secret": "s", "srs_domain": "fwd.example.test"}
    config = {"senders": {"file": "senders"}, "aliases": aliases}
    with Harness([POLICY], config_path=tmp_path / "portcullis.toml", config=config) as h:
        for sender in ("alice@example.test", "ceo@example.com", "any@example.net", "x@example.info",
                       "postmaster@fwd.example.test"):
            assert mail(h, sender) == (553, "5.7.1", f"<{sender}>: Sender address rejected: not logged in"), sender
        assert mail(h, "stranger@elsewhere.example").code == 250
    # [senders] local_domains set: those domains alone.
    config["senders"]["local_domains"] = ["example.info"]
    with Harness([POLICY], config_path=tmp_path / "portcullis.toml", config=config) as h:
        assert mail(h, "x@example.info")[:2] == (553, "5.7.1")
        assert mail(h, "ceo@example.com").code == 250
        assert mail(h, "alice@example.test")[:2] == (553, "5.7.1")  # listed in the senders table


def test_a_quoted_local_part_is_the_same_sender(tmp_path):
    # RFC 5321 §4.1.2: "ceo"@ and ceo@ are one mailbox; Postfix unquotes before the lookup.
    (tmp_path / "senders").write_text('ceo@partner.example ceo\n"Boss"@partner.example boss\n')
    t = SenderLogins.read(tmp_path / "senders", login_is_address=True)
    for spelling in ('"ceo"@partner.example', '"c\\eo"@Partner.Example', '"CEO"@partner.example'):
        assert t.owners(spelling) == {"ceo"}, spelling
    assert t.owners("boss@partner.example") == {"boss"}  # a key written quoted is the same key
    assert t.owns("alice@example.test", '"alice"@example.test') and t.owns('"alice"@example.test', "alice@example.test")
    with harness(tmp_path) as h:
        for spelling in ('"alice"@example.test', '"al\\ice"@example.test', '"sales"@example.test'):
            assert mail(h, spelling) == (
                553, "5.7.1", f"<{spelling}>: Sender address rejected: not logged in"), spelling
            assert mail(h, spelling, "alice").code == 250, spelling
        assert mail(h, '"x"@example.org')[:2] == (553, "5.7.1")  # carol's domain
        assert mail(h, '"alice"@example.test', "bob")[:2] == (553, "5.7.1")


def test_an_internationalized_domain_is_one_domain_in_u_labels_and_a_labels(tmp_path):
    (tmp_path / "senders").write_text("ceo@b\u00fccher.example ceo\n")
    t = SenderLogins.read(tmp_path / "senders")
    assert t.owners("ceo@xn--bcher-kva.example") == {"ceo"} and t.owners("ceo@B\u00dcCHER.example") == {"ceo"}
    for listed, used in (("b\u00fccher.example", "boss@xn--bcher-kva.example"),
                         ("xn--bcher-kva.example", "boss@b\u00fccher.example"),
                         ("XN--BCHER-KVA.example", "boss@b\u00fccher.example")):
        with harness(tmp_path, senders={"local_domains": [listed]}) as h:
            s = h.connect(client_ip="192.0.2.1", helo="client.example")
            assert s.mail(used, params={"SMTPUTF8": None})[:2] == (553, "5.7.1"), (listed, used)


def test_trusted_networks_need_no_login(tmp_path):
    with harness(tmp_path, relay={"trusted_networks": ["10.0.0.0/8", "2001:db8::/32"]}) as h:
        assert mail(h, "alice@example.test", client_ip="10.1.2.3").code == 250
        assert mail(h, "alice@example.test", client_ip="::ffff:10.1.2.3").code == 250
        assert mail(h, "alice@example.test", client_ip="2001:db8::1").code == 250
        assert mail(h, "alice@example.test", client_ip="192.0.2.1")[:2] == (553, "5.7.1")
        # AUTH still decides for a trusted client that logged in.
        assert mail(h, "alice@example.test", "bob", client_ip="10.1.2.3")[:2] == (553, "5.7.1")
    with harness(tmp_path, senders={"trusted_networks": ["192.0.2.0/24"]}) as h:
        assert mail(h, "alice@example.test").code == 250
    # Written IPv4-mapped, as the daemon's relay guard reads it: the IPv4 network it holds.
    with harness(tmp_path, relay={"trusted_networks": ["::ffff:10.0.0.0/8", "::ffff:192.0.2.1"]}) as h:
        assert mail(h, "alice@example.test", client_ip="10.1.2.3").code == 250
        assert mail(h, "alice@example.test", client_ip="192.0.2.1").code == 250
        assert mail(h, "alice@example.test", client_ip="192.0.2.2")[:2] == (553, "5.7.1")


def test_a_local_domain_ending_in_a_wide_dot_is_the_local_domain(tmp_path):
    # UTS #46 maps U+3002 and U+FF0E to a dot: "example.test\u3002" is example.test (the relay
    # guard said so), but was another domain to the table, and an unauthenticated client sent
    # as alice@ past this policy.
    with harness(tmp_path) as h:
        for spelling in ("alice@example.test\u3002", "alice@example\uff0etest\uff0e"):
            s = h.connect(client_ip="192.0.2.1", helo="client.example")
            assert s.mail(spelling, params={"SMTPUTF8": None})[:2] == (553, "5.7.1"), spelling


def test_a_login_with_odd_characters_is_shown_safely(tmp_path):
    with harness(tmp_path) as h:
        r = mail(h, "alice@example.test", "bob\x1b[31m\u00e9")
        assert r[:2] == (553, "5.7.1") and r.text.endswith("not owned by user bob?[31m?")


@pytest.mark.parametrize("senders,aliases,why", [
    ({"colour": "red"}, None, "unknown key"),
    ({"owns_aliases": "yes"}, None, "owns_aliases: want true or false"),
    ({"trusted_networks": ["10.0.0.0/33"]}, None, "trusted_networks"),
    ({"file": "", "login_is_address": False}, None, "no login owns anything"),
    ({"file": "missing"}, None, "cannot read it"),
])
def test_bad_settings_do_not_load(tmp_path, senders, aliases, why):
    with pytest.raises(PolicyLoadError, match=why):
        harness(tmp_path, senders=senders, aliases=aliases)


def test_owns_aliases_needs_an_alias_file(tmp_path):
    (tmp_path / "senders").write_text(SENDERS)
    with pytest.raises(PolicyLoadError, match="needs \\[aliases\\] file"):
        Harness([POLICY], config={"senders": {"file": str(tmp_path / "senders"), "owns_aliases": True}})

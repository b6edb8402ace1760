"""portcullis.maps (Postfix table files), portcullis.aliases (virtual(5)
expansion) and policies/aliases.py through the testing harness. The daemon
end to end, with a real upstream and postsrsd: tests/e2e/test_aliases.py."""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from portcullis.aliases import AliasError, AliasTable, split_extension
from portcullis.maps import MapError, read_map
from portcullis.srs import SRS
from portcullis.testing import Harness, PolicyLoadError

POLICY = Path(__file__).resolve().parents[2] / "policies" / "aliases.py"
SECRET = "alias-test-secret"


def table_of(tmp_path: Path, text: str, **settings) -> AliasTable:
    path = tmp_path / "virtual"
    path.write_text(text)
    settings.setdefault("local_domains", ["example.test"])
    return AliasTable.read(path, **settings)


# -- maps


def test_map_lines_comments_continuations_and_duplicates(tmp_path):
    path = tmp_path / "map"
    path.write_text(
        "# comment\n"
        "\n"
        "Alice@Example.TEST   Alice.Smith@example.test\n"
        "team@example.test a@example.test,b@example.test ,\n"
        "   c@example.net\n"
        "\t  # a comment inside a continuation is skipped\n"
        "\td@example.net\n"
        "team@example.test  other@example.test\n")
    m = read_map(path)
    assert list(m.entries) == ["alice@example.test", "team@example.test"]
    assert m.entries["alice@example.test"].values == ("Alice.Smith@example.test",)  # values keep their case
    assert m.entries["team@example.test"].values == ("a@example.test", "b@example.test", "c@example.net",
                                                     "d@example.net")
    assert m.entries["team@example.test"].line == 4
    assert [(d.key, d.line) for d in m.duplicates] == [("team@example.test", 8)]  # the first one wins


def test_map_values_split_at_commas_and_blanks_but_not_in_quotes(tmp_path):
    path = tmp_path / "map"
    path.write_text('team@example.test  "john smith"@example.test, bob@example.test,"a, b"@example.net\n'
                    '  "c\\"d"@example.net   "x y"z@example.net\n')
    assert read_map(path).entries["team@example.test"].values == (
        '"john smith"@example.test', "bob@example.test", '"a, b"@example.net', '"c\\"d"@example.net',
        '"x y"z@example.net')


def test_quoted_targets_load_and_get_the_extension_inside_the_quotes(tmp_path):
    t = table_of(tmp_path, 'team@example.test  "john smith"@example.net, bob@example.net\n')
    assert t.expand("team@example.test") == ['"john smith"@example.net', "bob@example.net"]
    assert t.expand("team+x@example.test") == ['"john smith+x"@example.net', "bob+x@example.net"]
    with pytest.raises(MapError, match="line 1: .*is not an address"):
        table_of(tmp_path, 'team@example.test  "john smith@example.net, bob@example.net\n')  # left open


@pytest.mark.parametrize("text,line,why", [
    ("ok@example.test a@example.test\nbad@example.test ,,,\n", 2, "has no value"),
])
def test_map_errors_say_where(tmp_path, text, line, why):
    path = tmp_path / "map"
    path.write_text(text)
    with pytest.raises(MapError, match=why) as e:
        read_map(path)
    assert e.value.line == line and str(e.value).startswith(f"{path}, line {line}: ")


POSTMAP_CASES = (
    '"john smith"@example.test   js@x.example\n'  # a quoted key with a blank: one key
    '"a b"\\ c@example.test v@x.example\n'
    'lonely@example.test\n'  # no value: postmap warns and skips it, so do we
    '"open@example.test x@x.example\n'  # a quote left open: no key, skipped
    'bob@example.test  bob@x.example\n'
    '\vcc@x.example\n'  # starts with a (vertical tab) blank: a continuation of bob's
    'a\u3000b@example.test wide@x.example\n'  # Postfix's blanks are ASCII's: U+3000 is in the key
    'nb\u00a0sp@example.test nbsp@x.example\n'
)


def test_keys_as_postmap_finds_them_and_lines_it_skips(tmp_path, caplog):
    path = tmp_path / "map"
    path.write_text("  starts@example.test with blanks\n" + POSTMAP_CASES)
    with caplog.at_level(logging.WARNING, logger="portcullis.policy.maps"):
        m = read_map(path)
    assert {k: e.values for k, e in m.entries.items()} == {
        '"john smith"@example.test': ("js@x.example",), '"a b"\\ c@example.test': ("v@x.example",),
        "bob@example.test": ("bob@x.example", "cc@x.example"), "a\u3000b@example.test": ("wide@x.example",),
        "nb\u00a0sp@example.test": ("nbsp@x.example",)}
    assert [r.getMessage().split(": ")[0] for r in caplog.records] == [f"{path}, line {n}" for n in (1, 4, 5)]
    assert "skipped, as postmap does" in caplog.text


@pytest.mark.skipif(not shutil.which("postmap"), reason="postfix's postmap is not installed")
def test_keys_agree_with_postmap(tmp_path):
    path = tmp_path / "map"
    path.write_text(POSTMAP_CASES)
    (tmp_path / "main.cf").write_text("compatibility_level = 3.6\n")
    ours = read_map(path).entries
    for key in ('"john smith"@example.test', '"a b"\\ c@example.test', "lonely@example.test",
                '"open@example.test', "bob@example.test", "a\u3000b@example.test", "nb\u00a0sp@example.test"):
        p = subprocess.run(["postmap", "-c", str(tmp_path), "-q", key, f"texthash:{path}"],
                           capture_output=True, text=True)
        # (postmap keeps a continuation's own blank, here a vertical tab: compared item by item)
        assert (" ".join(p.stdout.split()) or None) == (" ".join(ours[key].values) if key in ours else None), key


def test_map_that_cannot_be_read_or_is_not_utf8(tmp_path):
    with pytest.raises(MapError, match="cannot read it"):
        read_map(tmp_path / "missing")
    (tmp_path / "latin1").write_bytes(b"a@example.test b@example.test\nc@example.test caf\xe9@example.test\n")
    with pytest.raises(MapError, match="line 2: not UTF-8"):
        read_map(tmp_path / "latin1")


# -- the table


def test_exact_catchall_and_unknown(tmp_path):
    t = table_of(tmp_path, "info@example.test alice@example.test\n@other.test postmaster@example.test\n")
    assert t.expand("info@example.test") == ["alice@example.test"]
    assert t.expand("INFO@Example.Test") == ["alice@example.test"]  # keys are case-insensitive
    assert t.expand("anyone@other.test") == ["postmaster@example.test"]
    assert t.expand("nobody@example.test") is None
    assert t.is_local("example.test") and t.is_local("OTHER.test") and not t.is_local("example.net")


def test_an_exact_entry_beats_the_catchall_and_the_extension_is_tried_before_it(tmp_path):
    t = table_of(tmp_path, "alice@example.test alice@example.test\n@example.test catchall@example.test\n")
    assert t.expand("alice@example.test") == ["alice@example.test"]
    assert t.expand("alice+news@example.test") == ["alice+news@example.test"]  # alice@, tag put back
    # A catch-all's targets get no extension: Postfix hands it back for a user@domain match only.
    assert t.expand("bob+news@example.test") == ["catchall@example.test"]
    assert t.expand("alice+news@example.test") == ["alice+news@example.test"]
    assert t.expand("catchall@example.test") == ["catchall@example.test"]  # the catch-all's own mailbox


def test_the_delimiter_and_extension_propagation_are_settings(tmp_path):
    text = "alice@example.test alice.smith@example.test, alice@example.net\n"
    assert table_of(tmp_path, text).expand("alice+x@example.test") == [
        "alice.smith+x@example.test", "alice+x@example.net"]
    assert table_of(tmp_path, text, propagate_extension=False).expand("alice+x@example.test") == [
        "alice.smith@example.test", "alice@example.net"]
    assert table_of(tmp_path, text, recipient_delimiter="").expand("alice+x@example.test") is None
    assert table_of(tmp_path, text, recipient_delimiter="-+").expand("alice-x@example.test") == [
        "alice.smith-x@example.test", "alice-x@example.net"]
    # Through a catch-all, the extension is dropped; matched by the base further down, it comes back.
    t = table_of(tmp_path, "@example.net bob@elsewhere.example\ncarol@example.net carol@elsewhere.example\n"
                           "@example.org carol@example.net\n", local_domains=["example.net", "example.org"])
    assert t.expand("x+y@example.net") == ["bob@elsewhere.example"]
    assert t.expand("carol+y@example.net") == ["carol+y@elsewhere.example"]
    assert t.expand("x+y@example.org") == ["carol@elsewhere.example"]
    # An exact entry with the extension wins over the base.
    t = table_of(tmp_path, text + "alice+x@example.test other@example.test\n")
    assert t.expand("alice+x@example.test") == ["other@example.test"]


@pytest.mark.parametrize("local,delimiters,want", [
    ("alice+tag", "+", ("alice", "+tag")),
    ("alice-a+b", "+-", ("alice", "-a+b")),  # the first delimiter, whichever it is
    ("+alice", "+", ("+alice", "")),
    ("-x+y", "+-", ("-x+y", "")),  # a delimiter in first place: no split at all, as split_addr
    ("owner-list", "-", ("owner-list", "")),  # Postfix never splits these when '-' is a delimiter
    ("Owner-List", "+-", ("Owner-List", "")),
    ("list-request", "-", ("list-request", "")),
    ("list-request", "+", ("list-request", "")),
    ("list-request+x", "+", ("list-request", "+x")),  # '-' no delimiter: the usual rule
    ("owner-list+x", "+", ("owner-list", "+x")),
    ("-request", "-", ("-request", "")),
    ("a-request", "-", ("a-request", "")),
    ("MAILER-DAEMON", "-", ("MAILER-DAEMON", "")),  # nor these, whatever the delimiter
    ("double-bounce", "-", ("double-bounce", "")),
    ("postmaster", "s", ("postmaster", "")),
    ("bob", "", ("bob", "")),
])
def test_the_extension_is_split_as_postfix_split_addr_does(local, delimiters, want):
    assert split_extension(local, delimiters) == want


def test_list_addresses_are_not_split_on_a_dash(tmp_path):
    (tmp_path / "virtual").write_text("list@example.test ann@example.net, ben@example.net\n"
                                      "owner@example.test boss@example.net\n@example.test catchall@example.test\n")
    (tmp_path / "portcullis.toml").write_text("")
    config = {"aliases": {"file": "virtual", "local_domains": ["example.test"], "recipient_delimiter": "+-"}}
    with Harness([POLICY], config_path=tmp_path / "portcullis.toml", config=config) as h:
        for rcpt, want in (("list-request@example.test", ("catchall@example.test",)),
                           ("owner-list@example.test", ("catchall@example.test",)),
                           ("-x+y@example.test", ("catchall@example.test",)),
                           ("list-x@example.test", ("ann-x@example.net", "ben-x@example.net"))):
            s = h.connect(client_ip="192.0.2.1", helo="c.example")
            s.mail("x@example.com")
            assert s.rcpt(rcpt).code == 250, rcpt
            assert s.data("Subject: t\r\n\r\nx\r\n").code == 250
            assert s.delivered[-1].recipients == want, rcpt


def test_an_at_domain_target_is_the_same_user_in_that_domain(tmp_path):
    # virtual(5): a result "@otherdomain" becomes the same user in otherdomain (first address only).
    t = table_of(tmp_path, "alice@example.com alice@example.com\n@example.net @example.com\n"
                           "bob@example.org @example.com, archive@example.com\n", local_domains=["example.com"])
    assert t.expand("alice@example.net") == ["alice@example.com"]
    assert t.expand("Zed+x@example.net") == ["Zed+x@example.com"]  # a catch-all: the whole local part
    assert t.expand("Alice+x@example.net") == ["alice+x@example.com"]  # then alice@example.com's entry
    assert t.expand('"john smith"@example.net') == ['"john smith"@example.com']
    assert t.expand("bob@example.org") == ["bob@example.com", "archive@example.com"]
    # Matched without its extension: the user without it, then the extension back on every target.
    assert t.expand("bob+x@example.org") == ["bob+x@example.com", "archive+x@example.com"]
    t = table_of(tmp_path, "bob@example.org @example.com\n", propagate_extension=False)
    assert t.expand("bob+x@example.org") == ["bob@example.com"]
    # Loops through it are loops.
    t = table_of(tmp_path, "bob@example.org @example.com\nbob@example.com @example.org\n")
    assert t.loops == [["bob@example.org", "bob@example.com", "bob@example.org"]]
    for text, why in (("a@example.org b@example.com, @example.com\n", "must be the first"),
                      ("a@example.org @\n", "no domain after the @"), ("@example.org @nodot\n", "no domain")):
        with pytest.raises(MapError, match=why):
            table_of(tmp_path, text)


def test_a_domain_alias_through_the_policy(tmp_path):
    (tmp_path / "virtual").write_text("alice@example.com alice@example.com\n@example.net @example.com\n")
    (tmp_path / "portcullis.toml").write_text("")
    config = {"aliases": {"file": "virtual", "local_domains": ["example.com"]}}
    with Harness([POLICY], config_path=tmp_path / "portcullis.toml", config=config) as h:
        s = h.connect(client_ip="192.0.2.1", helo="c.example")
        s.mail("x@example.org")
        assert s.rcpt("alice+news@example.net").code == 250
        assert s.rcpt("nobody@example.net").code == 250  # example.com's server decides on it
        assert s.rcpt("nobody@example.com")[:2] == (550, "5.1.1")
        assert s.data("Subject: t\r\n\r\nx\r\n").code == 250
        assert s.delivered[-1].recipients == ("alice+news@example.com", "nobody@example.com")


def test_recursion_self_reference_and_duplicates(tmp_path):
    t = table_of(tmp_path,
                 "all@example.test sales@example.test, dev@example.test, boss@example.test\n"
                 "sales@example.test alice@example.test, bob@example.test\n"
                 "dev@example.test bob@example.test, carol@example.net\n"
                 "bob@example.test bob@example.test, bob@backup.example.net\n"
                 "Boss@example.test Boss@example.test\n")
    assert t.expand("all@example.test") == ["alice@example.test", "bob@example.test", "bob@backup.example.net",
                                            "carol@example.net", "Boss@example.test"]
    assert t.loops == []


def test_a_quoted_local_part_is_the_same_mailbox(tmp_path):
    # RFC 5321 §4.1.2: "alice"@ is alice@ (Postfix unquotes before every lookup).
    t = table_of(tmp_path, "alice@example.test alice.smith@example.test\n"
                           '"Bob"@example.test bob@example.net\n'
                           "team@example.test alice@example.test, \"alice\"@example.test, bob@example.test\n")
    assert t.expand('"alice"@example.test') == ["alice.smith@example.test"]
    assert t.expand('"al\\ice"@example.test') == ["alice.smith@example.test"]
    assert t.expand('"alice+x"@example.test') == ["alice.smith+x@example.test"]
    assert t.expand("bob@example.test") == ["bob@example.net"]  # a key written quoted is the same key
    assert t.expand("team@example.test") == ["alice.smith@example.test", "bob@example.net"]  # once each
    assert t.lookup('"team"@example.test')[0] == "team@example.test"
    # A loop through a quoted spelling is a loop.
    t = table_of(tmp_path, 'a@example.test "b"@example.test\nb@example.test "a"@example.test\n')
    assert t.loops == [["a@example.test", "b@example.test", "a@example.test"]]


def test_an_internationalized_domain_is_one_domain_in_u_labels_and_a_labels(tmp_path):
    t = table_of(tmp_path, "info@b\u00fccher.example alice@example.test\n", local_domains=["xn--caf-dma.example"])
    assert t.is_local("xn--bcher-kva.example") and t.is_local("B\u00fccher.Example.")
    assert t.is_local("caf\u00e9.example") and not t.is_local("cafe.example")
    assert t.expand("info@xn--bcher-kva.example") == ["alice@example.test"]
    assert t.expand("Info@B\u00dcCHER.example") == ["alice@example.test"]


def test_loops_are_found_when_read_and_when_expanded(tmp_path):
    t = table_of(tmp_path, "a@example.test b@example.test\nb@example.test c@example.test, a@example.test\n"
                           "c@example.test c@example.test\n")
    assert t.loops == [["a@example.test", "b@example.test", "a@example.test"]]
    with pytest.raises(AliasError, match="alias loop: a@example.test -> b@example.test -> a@example.test"):
        t.expand("a@example.test")
    # Through catch-alls only (not an exact loop): found at RCPT.
    t = table_of(tmp_path, "@example.test x@other.test\n@other.test y@example.test\n")
    assert t.loops == []
    with pytest.raises(AliasError, match="alias loop"):
        t.expand("q@example.test")


def test_an_address_that_expands_into_itself_is_final_when_met_again(tmp_path):
    # Postfix's cleanup_map1n lets an address expand into itself once, and stops there: alice and
    # bob, each keeping a mailbox and copying the other, is no loop.
    t = table_of(tmp_path, "alice@example.test alice@example.test, bob@example.test\n"
                           "bob@example.test bob@example.test, alice@example.test\n")
    assert t.loops == []
    assert t.expand("alice@example.test") == ["alice@example.test", "bob@example.test"]
    assert t.expand("bob+x@example.test") == ["bob+x@example.test", "alice+x@example.test"]
    # The way round stops at an address that copied itself: a -> b -> b, a is b alone, as in Postfix.
    t = table_of(tmp_path, "a@example.test b@example.test\nb@example.test b@example.test, a@example.test\n"
                           "x@example.test a@example.test, c@example.test\nc@example.test c@example.test, x@example.test\n")
    assert t.loops == []
    assert t.expand("a@example.test") == ["b@example.test"]
    assert t.expand("x@example.test") == ["b@example.test", "c@example.test"]
    # With no address copying itself on the way round it is a loop, as before.
    t = table_of(tmp_path, "a@example.test a@example.test, b@example.test\nb@example.test c@example.test\n"
                           "c@example.test b@example.test\n")
    assert t.loops == [["b@example.test", "c@example.test", "b@example.test"]]
    with pytest.raises(AliasError, match="alias loop: a@example.test -> b@example.test -> c@example.test -> b@"):
        t.expand("a@example.test")


def test_the_policy_loads_mutual_copies_and_delivers_each_once(tmp_path):
    (tmp_path / "virtual").write_text("alice@example.test alice@example.test, bob@example.test\n"
                                      "bob@example.test bob@example.test, alice@example.test\n")
    (tmp_path / "portcullis.toml").write_text("")
    config = {"aliases": {"file": "virtual", "local_domains": ["example.test"]}}
    with Harness([POLICY], config_path=tmp_path / "portcullis.toml", config=config) as h:
        s = h.connect(client_ip="192.0.2.1", helo="c.example")
        s.mail("x@example.com")
        assert s.rcpt("alice@example.test").code == 250 and s.rcpt("bob@example.test").code == 250
        assert s.data("Subject: t\r\n\r\nx\r\n").code == 250
        assert s.delivered[-1].recipients == ("alice@example.test", "bob@example.test")


def test_shared_sub_groups_are_expanded_once_not_once_a_path(tmp_path):
    # a0 -> a1, b1; b0 -> a1, b1; ... : 2 ** depth paths to the bottom, 2 final addresses.
    depth = 18
    lines = "".join(f"{g}{i}@example.test a{i + 1}@example.test, b{i + 1}@example.test\n"
                    for i in range(depth) for g in "ab")
    lines += f"a{depth}@example.test x@example.net, shared@example.test\nb{depth}@example.test y@example.net\n"
    lines += "shared@example.test a1@example.test\n"  # back up the diamond, off its own path: a loop
    t = table_of(tmp_path, lines)
    lookups = []
    real = t.lookup
    t.lookup = lambda address, use_catchall=True: lookups.append(address) or real(address, use_catchall)
    with pytest.raises(AliasError, match="alias loop: a0@example.test -> a1@example.test -> .* -> a1@example.test"):
        t.expand("a0@example.test")
    t = table_of(tmp_path, lines.replace("shared@example.test a1@", "shared@example.test z@"))
    lookups.clear()
    real = t.lookup
    t.lookup = lambda address, use_catchall=True: lookups.append(address) or real(address, use_catchall)
    assert t.expand("a0@example.test") == ["x@example.net", "z@example.test", "y@example.net"]
    assert len(lookups) <= 2 * depth + 6, len(lookups)  # each address once (was 2 ** depth: 3 s of CPU at 20)


def test_depth_and_fan_out_bounds(tmp_path):
    chain = "".join(f"l{i}@example.test l{i + 1}@example.test\n" for i in range(30))
    t = table_of(tmp_path, chain, max_depth=20)
    with pytest.raises(AliasError, match="deeper than 20"):
        t.expand("l0@example.test")
    assert table_of(tmp_path, chain, max_depth=40).expand("l0@example.test") == ["l30@example.test"]
    fan = "list@example.test " + ", ".join(f"m{i}@example.net" for i in range(50)) + "\n"
    with pytest.raises(AliasError, match="more than 10"):
        table_of(tmp_path, fan, max_targets=10).expand("list@example.test")
    assert len(table_of(tmp_path, fan).expand("list@example.test")) == 50


@pytest.mark.parametrize("line,why", [
    ("alice alice@example.test", "neither user@domain"),
    ("alice@example.test x..y@example.test", "not an address"),
    ("alice@example.test bob", "has no domain"),
    ("@ x@example.test", "no domain after the @"),
    ("@localhost x@example.test", "no domain after the @"),
])
def test_table_errors_say_where(tmp_path, line, why):
    with pytest.raises(MapError, match=why) as e:
        table_of(tmp_path, "ok@example.test ok@example.test\n" + line + "\n")
    assert e.value.line == 2


def test_a_key_listed_twice_keeps_its_first_entry(tmp_path):
    t = table_of(tmp_path, "a@example.test b@example.test\nc@example.test c@example.test\na@example.test x@example.test\n")
    assert t.expand("a@example.test") == ["b@example.test"] and t.duplicates == [("a@example.test", 3)]


def test_a_bare_domain_declares_a_local_domain(tmp_path):
    t = table_of(tmp_path, "virtual.test anything\nsales@virtual.test alice@example.test\n", local_domains=[])
    assert t.is_local("virtual.test") and t.expand("sales@virtual.test") == ["alice@example.test"]
    assert t.expand("nobody@virtual.test") is None


def test_a_large_table_reads_fast_and_looks_up_in_constant_time(tmp_path):
    lines = "".join(f"user{i}@example.test mailbox{i}@example.test, user{i}@example.net\n" for i in range(100_000))
    start = time.process_time()
    t = table_of(tmp_path, lines)
    read_cpu = time.process_time() - start
    assert len(t) == 100_000 and t.loops == []
    assert read_cpu < 30  # (a bound against pathologies, not a benchmark: bench/ measures)
    assert t.expand("user99999@example.test") == ["mailbox99999@example.test", "user99999@example.net"]


def doc_blocks(name: str) -> dict[str, list[str]]:
    """The plain ``` blocks (no language: table files) of docs/NAME, by the "## " section they are in."""
    blocks: dict[str, list[str]] = {}
    section, block, language = "", None, ""
    for line in (Path(__file__).resolve().parents[2] / "docs" / name).read_text().splitlines(keepends=True):
        if block is not None:
            if line.startswith("```"):
                if not language:
                    blocks.setdefault(section, []).append("".join(block))
                block = None
            else:
                block.append(line)
        elif line.startswith("## "):
            section = line[3:].strip()
        elif line.startswith("```"):
            block, language = [], line[3:].strip()
    return blocks


def test_the_alias_files_in_the_docs_load_and_do_what_they_say(tmp_path):
    # The daemon refused to start on the example: its "# ..." after values were read as targets.
    blocks = doc_blocks("aliases.md")
    [example] = blocks["The alias file"]
    t = table_of(tmp_path, example)
    assert t.loops == [] and t.duplicates == []
    assert t.expand("info@example.test") == ["alice@example.test", "bob@example.test", "carol@partner.example"]
    assert t.expand("anyone@example.net") == ["alice@example.test"]
    assert t.expand("old-name+x@example.test") == ["alice+x@example.test"]
    assert t.is_local("example.org") and t.expand("x@example.org") is None
    assert t.expand("team@example.com") == ["alice@example.test", "bob@example.test", "carol@partner.example"]
    assert t.expand("bob+x@example.com") == ["bob+x@example.test"]
    [worked] = blocks["Worked example: a domain that forwards"]
    t = table_of(tmp_path, worked)
    assert t.expand("team@example.test") == ["alice@example.test", "bob@example.test", "carol@partner.example"]
    assert t.expand("alice+news@example.test") == ["alice+news@example.test"]
    assert t.expand("dave@example.test") == ["dave@new-job.example"] and t.expand("zed@example.test") is None


def test_a_hash_after_a_value_is_named_as_no_comment(tmp_path):
    with pytest.raises(MapError, match="line 1: '#' is not an address: a '#' after a value is not a comment"):
        table_of(tmp_path, "a@example.test b@example.test   # b's\n")


# -- the policy


def harness(tmp_path: Path, aliases: str, **table) -> Harness:
    (tmp_path / "virtual").write_text(aliases)
    settings = {"file": "virtual", "local_domains": ["example.test"], **table}
    config = tmp_path / "portcullis.toml"
    config.write_text("")
    return Harness([POLICY], config_path=config, config={"aliases": settings})


ALIASES = ("alice@example.test alice@example.test\n"
           "bob@example.test bob@example.test\n"
           "team@example.test alice@example.test, bob@example.test, carol@example.net\n"
           "fwd@example.test someone@example.org\n"
           "@catchall.test alice@example.test\n"
           "catchall.test -\n")


def test_the_policy_expands_refuses_and_leaves_others_alone(tmp_path):
    with harness(tmp_path, ALIASES) as h:
        s = h.connect(helo="client.example")
        s.mail("sender@example.com")
        assert s.rcpt("team@example.test").code == 250
        assert s.rcpt("alice@example.test").code == 250  # already there: delivered once
        assert s.rcpt("nobody@example.test") == (
            550, "5.1.1", "<nobody@example.test>: Recipient address rejected: User unknown")
        assert s.rcpt("x@catchall.test").code == 250
        assert s.rcpt("stranger@elsewhere.example").code == 250  # not ours: the next policy and the upstream
        assert s.data("Subject: hi\r\n\r\nhello\r\n").code == 250
        [d] = s.delivered
        assert d.sender == "sender@example.com"  # no SRS configured
        assert d.recipients == ("alice@example.test", "bob@example.test", "carol@example.net",
                                "stranger@elsewhere.example")


def test_forwarded_mail_gets_an_srs_sender_and_its_bounce_goes_home(tmp_path):
    with harness(tmp_path, ALIASES, srs_secret=SECRET, srs_domain="fwd.example.test") as h:
        s = h.connect(helo="client.example")
        s.mail("Sender@Example.COM")
        assert s.rcpt("fwd@example.test").code == 250
        s.data("Subject: hi\r\n\r\nhello\r\n")
        [d] = s.delivered
        srs = SRS(SECRET, "fwd.example.test")
        assert d.sender == srs.forward("Sender@Example.COM") and d.recipients == ("someone@example.org",)
        # The bounce: <> to the SRS address reaches the original sender.
        s.mail("")
        assert s.rcpt(d.sender).code == 250
        s.data("Subject: bounce\r\n\r\nundeliverable\r\n")
        assert s.delivered[-1].recipients == ("Sender@Example.COM",) and s.delivered[-1].sender == ""
        # Forged, or wrong secret: refused.
        s.mail("")
        forged = SRS("guess", "fwd.example.test").forward("victim@example.com")
        assert s.rcpt(forged) == (550, "5.1.1",
                                  f"<{forged}>: Recipient address rejected: invalid or expired SRS address")


def test_a_sender_too_long_for_srs_is_forwarded_as_it_is_with_a_warning(tmp_path):
    # Its SRS form would pass 64 octets of local part: tx.sender refused it and every RCPT got 451.
    long_sender = "0100018d2f3c4b5a-6e7f8a9b-1c2d-4e3f-a5b6-c7d8e9f0a1b2-000000@amazonses.com"
    medium = "newsletter-bounces-12345678@mail.marketing-example.com"
    with harness(tmp_path, ALIASES, srs_secret=SECRET, srs_domain="fwd.example.test") as h:
        for sender in (long_sender, medium):
            s = h.connect(helo="client.example")
            s.mail(sender)
            assert s.rcpt("fwd@example.test").code == 250
            assert s.rcpt("team@example.test").code == 250  # forwarded again: warned once
            assert s.data("Subject: hi\r\n\r\nhello\r\n").code == 250
            assert s.delivered[-1].sender == sender
            warnings = [line.message for line in h.logs if "not SRS" in line.message and sender in line.message]
            assert len(warnings) == 1 and "64" in warnings[0], warnings
        assert not any(line.level >= logging.ERROR for line in h.logs)


def test_a_reply_to_an_srs_address_goes_on_with_an_srs_sender(tmp_path):
    # A reply (a vacation message, a challenge) is not a bounce: it goes on to the original
    # sender's domain with its own sender, which SPF there refused. Rewritten, as Postfix with
    # postsrsd rewrites every sender it forwards.
    srs = SRS(SECRET, "fwd.example.test")
    made = srs.forward("orig@origin.example")
    with harness(tmp_path, ALIASES, srs_secret=SECRET, srs_domain="fwd.example.test") as h:
        s = h.connect(helo="client.example")
        s.mail("autoreply@remote.example")
        assert s.rcpt(made).code == 250
        s.data("Subject: away\r\n\r\nback monday\r\n")
        [d] = s.delivered
        assert d.recipients == ("orig@origin.example",) and d.sender == srs.forward("autoreply@remote.example")
        s.mail("alice@example.test")  # a local sender: our SPF covers it
        assert s.rcpt(made).code == 250
        s.data("Subject: away\r\n\r\nback monday\r\n")
        assert s.delivered[-1].sender == "alice@example.test"


def test_senders_that_need_quotes_or_an_address_literal_get_a_valid_srs_sender(tmp_path):
    srs = SRS(SECRET, "fwd.example.test")
    with harness(tmp_path, ALIASES, srs_secret=SECRET, srs_domain="fwd.example.test") as h:
        for sender in ('"john smith"@example.com', "user@[192.0.2.1]", '"a@b"@origin.example'):
            s = h.connect(helo="client.example")
            s.mail(sender)
            assert s.rcpt("fwd@example.test").code == 250
            s.data("Subject: hi\r\n\r\nhello\r\n")
            made = s.delivered[-1].sender
            assert made == srs.forward(sender) and made.startswith('"SRS0=')
            # Its bounce comes home, quotes and all.
            s.mail("")
            assert s.rcpt(made).code == 250
            s.data("Subject: bounce\r\n\r\nundeliverable\r\n")
            assert s.delivered[-1].recipients == (sender,)


def test_a_non_ascii_srs_hash_is_refused_not_deferred(tmp_path):
    stamp = SRS(SECRET, "fwd.example.test").forward("alice@example.com").split("=")[2]
    forged = f"SRS0=\u00e9123={stamp}=example.com=alice@fwd.example.test"
    with harness(tmp_path, ALIASES, srs_secret=SECRET, srs_domain="fwd.example.test") as h:
        s = h.connect(helo="client.example")
        s.mail("", params={"SMTPUTF8": None})
        assert s.rcpt(forged) == (550, "5.1.1",
                                  f"<{forged}>: Recipient address rejected: invalid or expired SRS address")


def test_the_policy_finds_a_quoted_recipient_and_leaves_its_own_mailbox_alone(tmp_path):
    with harness(tmp_path, ALIASES) as h:
        s = h.connect(helo="client.example")
        s.mail("sender@example.com")
        for rcpt in ('"alice"@example.test', '"team"@example.test', '"t\\eam"@example.test'):
            assert s.rcpt(rcpt).code == 250, rcpt
        assert s.rcpt('"nobody"@example.test')[:2] == (550, "5.1.1")
        s.data("Subject: hi\r\n\r\nhello\r\n")
        # alice's own mailbox, spelt as the table does: one recipient with her address from the team.
        assert s.delivered[-1].recipients == ("alice@example.test", "bob@example.test", "carol@example.net")


def test_an_expired_srs_address_is_refused(tmp_path):
    old = SRS(SECRET, "fwd.example.test", clock=lambda: time.time() - 30 * 86400).forward("a@example.com")
    with harness(tmp_path, ALIASES, srs_secret=SECRET, srs_domain="fwd.example.test") as h:
        s = h.connect(helo="client.example")
        s.mail("")
        assert s.rcpt(old)[:2] == (550, "5.1.1")
        assert any("expired" in line.message for line in h.logs)


def test_no_srs_for_local_senders_null_senders_or_local_targets(tmp_path):
    with harness(tmp_path, ALIASES, srs_secret=SECRET, srs_domain="fwd.example.test") as h:
        for sender, rcpt, want in (("alice@example.test", "fwd@example.test", "alice@example.test"),
                                   ("", "fwd@example.test", ""),
                                   ("x@example.com", "alice@example.test", "x@example.com")):
            s = h.connect(helo="client.example")
            s.mail(sender)
            s.rcpt(rcpt)
            s.data("Subject: hi\r\n\r\nhello\r\n")
            assert s.delivered[-1].sender == want, (sender, rcpt)


def test_a_loop_through_catchalls_tempfails(tmp_path):
    with harness(tmp_path, "@example.test x@other.test\n@other.test y@example.test\n") as h:
        s = h.connect(helo="client.example")
        s.mail("a@example.com")
        assert s.rcpt("q@example.test") == (451, "4.3.0", "<q@example.test>: alias expansion failed; try again later")
        assert any("alias loop" in line.message for line in h.logs)


def test_a_loop_in_the_file_is_told_and_bounded_where_met(tmp_path, caplog):
    """CONTRACT.md: "loops and depth are bounded". A loop among exact entries kept the daemon
    from starting; it is a warning with its lines, and a recipient that meets it waits (451)."""
    with harness(tmp_path, "a@example.test b@example.test\nb@example.test a@example.test\n"
                           "c@example.test d@example.test\n") as h:
        assert any("alias loop: a@example.test (line 1) -> b@example.test (line 2) -> a@example.test" in m
                   for m in caplog.messages), caplog.messages
        s = h.connect(helo="client.example")
        s.mail("x@example.com")
        assert s.rcpt("a@example.test") == (451, "4.3.0", "<a@example.test>: alias expansion failed; try again later")
        assert s.rcpt("c@example.test")[0] == 250
        s.data("Subject: hi\r\n\r\nhello\r\n")
        assert s.delivered[-1].recipients == ("d@example.test",)


def test_a_bad_table_or_setting_does_not_load(tmp_path):
    with pytest.raises(PolicyLoadError, match="virtual, line 2: 'bad' is neither"):
        harness(tmp_path, "ok@example.test ok@example.test\nbad x@example.test\n")
    for table, why in (({"file": "virtual", "colour": 1}, "unknown key"), ({}, "file: the alias file is required"),
                       ({"file": "virtual", "srs_secret": "x"}, "srs_domain: required"),
                       ({"file": "virtual", "srs_domain": "f.test"}, "no srs_secret"),
                       ({"file": "virtual", "max_depth": 0}, "max_depth")):
        (tmp_path / "virtual").write_text(ALIASES)
        with pytest.raises(PolicyLoadError, match=why):
            Harness([POLICY], config={"aliases": table})


def test_the_secret_may_come_from_a_postsrsd_secret_file(tmp_path):
    # Each line a secret as it stands (postsrsd strips only the line ending): "new-secret "
    # with its blank, or the addresses of the two stop matching.
    (tmp_path / "srs.secret").write_text(f"new-secret \r\n\n{SECRET}\n")
    old = SRS(SECRET, "fwd.example.test").forward("a@example.com")
    with harness(tmp_path, ALIASES, srs_secret_file="srs.secret", srs_domain="fwd.example.test") as h:
        s = h.connect(helo="client.example")
        s.mail("x@example.com")
        s.rcpt("fwd@example.test")
        s.data("Subject: hi\r\n\r\nhello\r\n")
        assert s.delivered[-1].sender == SRS("new-secret ", "fwd.example.test").forward("x@example.com")
        s.mail("")
        assert s.rcpt(old).code == 250  # the old secret still verifies


def test_a_reload_reads_the_file_again(tmp_path):
    with harness(tmp_path, ALIASES) as h:
        s = h.connect(helo="client.example")
        s.mail("a@example.com")
        assert s.rcpt("new@example.test").code == 550
        (tmp_path / "virtual").write_text(ALIASES + "new@example.test alice@example.test\n")
        h.reload()
        s = h.connect(helo="client.example")
        s.mail("a@example.com")
        assert s.rcpt("new@example.test").code == 250

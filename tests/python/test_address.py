import pytest

import portcullis as pc
from portcullis import AddressList


def test_parses_local_and_domain():
    a = pc.Address("alice@example.test")
    assert (a.local, a.domain, str(a)) == ("alice", "example.test", "alice@example.test")
    assert a.params == {}
    assert repr(a) == "Address('alice@example.test')"


@pytest.mark.parametrize(
    "text",
    ["alice", "alice@", "@example.test", "<alice@example.test>", "a b@example.test", "alice@example.test\r\n",
     "alice@exa mple.test", "a.@example.test", "x" * 65 + "@example.test", "alice@example.test.", "Al <a@b.c>",
     "alice@example.test\x00"],
)
def test_bad_syntax_raises_value_error(text):
    with pytest.raises(ValueError):
        pc.Address(text)


def test_non_str_raises_type_error():
    with pytest.raises(TypeError):
        pc.Address(42)  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ['"john doe"@example.test', "user@[192.0.2.1]", "user@[IPv6:2001:db8::1]",
                                  "jörg@bücher.example"])
def test_valid_forms(text):
    assert str(pc.Address(text)) == text


def test_null_sender():
    a = pc.Address("")
    assert str(a) == "" and a.local == "" and a.domain == ""
    assert a.is_null and not a
    assert pc.Address("a@b.example")


def test_postmaster_is_a_recipient_without_domain():
    a = pc.Address("Postmaster")
    assert str(a) == "Postmaster" and a.domain == "" and a.is_postmaster
    assert a == pc.Address("postmaster")


def test_params_are_keyed_upper_case_and_copied():
    a = pc.Address("a@b.example", {"size": "1000", "SMTPUTF8": None})
    assert a.params == {"SIZE": "1000", "SMTPUTF8": None}
    a.params["SIZE"] = "1"
    assert a.params["SIZE"] == "1000"
    assert "params=" in repr(a)


@pytest.mark.parametrize("params", [{"bad key": "x"}, {"SIZE": "a b"}, {"X": "a=b"}, {"X": "\r\n"}, {"X": 5}])
def test_bad_params_raise(params):
    with pytest.raises(ValueError):
        pc.Address("a@b.example", params)


def test_equality_and_hash_on_the_address():
    a = pc.Address("Alice@Example.TEST", {"SIZE": "1"})
    b = pc.Address("Alice@example.test")
    assert a == b and hash(a) == hash(b)
    assert pc.Address("alice@example.test") != a  # the local part is case-sensitive
    assert a != "Alice@example.test"  # never equal to a str: compare str(a)
    assert len({a, b}) == 1


def test_copy_keeps_params_unless_given():
    a = pc.Address("a@b.example", {"SIZE": "5"})
    assert pc.Address(a).params == {"SIZE": "5"}
    assert pc.Address(a, {}).params == {}


def test_address_list_checks_everything_going_in():
    rcpts = AddressList(["a@b.example"])
    rcpts.append("c@d.example")
    rcpts.insert(0, pc.Address("e@f.example"))
    rcpts.extend(["g@h.example"])
    rcpts += ["i@j.example"]
    rcpts[0] = "k@l.example"
    rcpts[1:2] = ["m@n.example"]
    assert all(isinstance(r, pc.Address) for r in rcpts)
    assert [str(r) for r in rcpts] == ["k@l.example", "m@n.example", "c@d.example", "g@h.example", "i@j.example"]
    for bad in (lambda: rcpts.append("nope"), lambda: rcpts.append(""), lambda: rcpts.insert(0, "x@"),
                lambda: rcpts.extend(["ok@x.example", "bad"]), lambda: rcpts.__setitem__(0, "a\r\n@b"),
                lambda: rcpts.__setitem__(slice(0, 1), ["bad"])):
        with pytest.raises(ValueError):
            bad()
    assert len(rcpts) == 5


def test_table_keys_put_a_domain_in_the_a_labels_the_daemon_checks_with():
    # IDNA 2008 as the daemon's SPF and DMARC take it (libidn2): straße.de and strasse.de are
    # two domains, and a U-label name matches its own A-label spelling.
    from portcullis._address import canonical_domain, mailbox_key

    assert canonical_domain("straße.de") == "xn--strae-oqa.de" == canonical_domain("XN--STRAE-OQA.de.")
    assert canonical_domain("strasse.de") == "strasse.de"
    assert canonical_domain("Bücher.Example.") == "xn--bcher-kva.example"
    assert mailbox_key('"CEO"@straße.de') != mailbox_key("ceo@strasse.de")
    assert mailbox_key('"CEO"@straße.de') == mailbox_key("ceo@xn--strae-oqa.de")
    assert canonical_domain("[192.0.2.1]") == "[192.0.2.1]"
    assert canonical_domain("a\u200db.example") == "a\u200db.example"  # refused by IDNA 2008: only itself
    # A full-width or ideographic dot at the end maps to a dot (UTS #46): the same domain.
    assert canonical_domain("example.test\u3002") == canonical_domain("example\uff0etest\uff0e") == "example.test"

import dataclasses

import pytest

import portcullis as pc


def test_defaults():
    assert pc.accept() == pc.Verdict("accept")
    r = pc.reject("No thanks")
    assert (r.kind, r.code, r.status, r.text) == ("reject", 550, "5.7.1", "No thanks")
    t = pc.tempfail("Later")
    assert (t.kind, t.code, t.status, t.text) == ("tempfail", 451, "4.7.1", "Later")
    assert pc.discard().kind == "discard"
    assert pc.accept("Fine").text == "Fine"


def test_custom_codes():
    assert pc.reject("No such user", code=550, status="5.1.1").status == "5.1.1"
    assert pc.reject("Sender refused", 553, "5.7.1").code == 553
    assert pc.tempfail("Greylisted", code=450, status="4.2.0").code == 450


def test_verdicts_are_immutable_values():
    v = pc.reject("x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        v.code = 250  # type: ignore[misc]
    assert v == pc.reject("x") and hash(v) == hash(pc.reject("x"))
    assert repr(v) == "reject('x', code=550, status='5.7.1')"


@pytest.mark.parametrize(
    "make",
    [
        lambda: pc.reject("x", code=250),
        lambda: pc.reject("x", code=450, status="4.7.1"),
        lambda: pc.reject("x", code=550, status="4.7.1"),
        lambda: pc.reject("x", code=560),
        lambda: pc.reject("x", code=5500),
        lambda: pc.reject("x", code="550"),  # type: ignore[arg-type]
        lambda: pc.reject("x", code=True),  # type: ignore[arg-type]
        lambda: pc.reject("x", status="5.7"),
        lambda: pc.reject("x", status="5.7.1234"),
        lambda: pc.reject("x", status="2.0.0"),
        lambda: pc.reject(""),
        lambda: pc.reject("   "),
        lambda: pc.reject(None),  # type: ignore[arg-type]
        lambda: pc.tempfail("x", code=550),
        lambda: pc.tempfail("x", code=451, status="5.7.1"),
        lambda: pc.tempfail("x", code=399),
    ],
)
def test_invalid_codes_refused(make):
    with pytest.raises(ValueError):
        make()


@pytest.mark.parametrize("text", ["a\r\nb", "a\nb", "a\rb", "a\x00b", "bell\x07", "x" * 600, "tab\there", "\ud800"])
def test_unsafe_text_refused(text):
    with pytest.raises(ValueError):
        pc.reject(text)
    with pytest.raises(ValueError):
        pc.tempfail(text)
    with pytest.raises(ValueError):
        pc.accept(text)


def test_text_bound_is_the_reply_line():
    # RFC 5321 §4.5.3.1.5: 512 octets with code, status and CRLF.
    longest = "x" * (512 - len("550 5.7.1 ") - 2)
    assert pc.reject(longest).text == longest
    with pytest.raises(ValueError):
        pc.reject(longest + "x")


def test_utf8_text_is_allowed():
    assert pc.reject("Nachricht ungültig").text == "Nachricht ungültig"


def test_redirect():
    v = pc.redirect("a@b.example", pc.Address("c@d.example"))
    assert [str(a) for a in v.addresses] == ["a@b.example", "c@d.example"]
    assert repr(v) == "redirect('a@b.example', 'c@d.example')"
    with pytest.raises(ValueError):
        pc.redirect()
    with pytest.raises(ValueError):
        pc.redirect("not an address")
    with pytest.raises(ValueError):
        pc.redirect("")


def test_direct_construction_is_validated_too():
    with pytest.raises(ValueError):
        pc.Verdict("reject", code=250, status="2.0.0", text="x")
    with pytest.raises(ValueError):
        pc.Verdict("bounce")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        pc.Verdict("discard", text="x")
    with pytest.raises(ValueError):
        pc.Verdict("accept", code=250)
    with pytest.raises(ValueError):
        pc.Verdict("redirect")
    with pytest.raises(ValueError):
        pc.Verdict("accept", addresses=(pc.Address("a@b.example"),))


def test_stages_allowed():
    assert pc.discard().allowed_at("rcpt") and pc.discard().allowed_at("data")
    assert not pc.discard().allowed_at("mail")
    assert pc.redirect("a@b.example").allowed_at("rcpt") and not pc.redirect("a@b.example").allowed_at("data")
    for stage in ("connect", "helo", "auth", "mail", "rcpt", "data"):
        assert pc.accept().allowed_at(stage) and pc.reject("x").allowed_at(stage)

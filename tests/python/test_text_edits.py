"""pc.Message.edit_text / append_text on MIME structures a footer policy must not break: text that
decodes to a multipart delimiter, </body> after text whose lower() is longer, octets not valid in
their charset, part headers that would grow past 998 octets (RFC 5322 §2.1.1)."""

from __future__ import annotations

import email
import email.policy
import quopri

import pytest

import portcullis as pc
from portcullis import _mime

HEAD = b"From: a@b.test\r\nTo: c@d.test\r\nSubject: hi\r\nMIME-Version: 1.0\r\n"
SMUGGLED = b"--BB\r\nContent-Type: application/x-msdownload\r\nContent-Transfer-Encoding: base64\r\n\r\nTVqQAAMAAAAE\r\n"


def parts(raw: bytes) -> list[str]:
    return [p.get_content_type() for p in email.message_from_bytes(raw, policy=email.policy.default).walk()]


def texts(raw: bytes) -> list[str]:
    return [p.get_content().replace("\r\n", "\n")
            for p in email.message_from_bytes(raw, policy=email.policy.default).walk()
            if p.get_content_maintype() == "text"]


def lines_starting(raw: bytes, prefix: bytes) -> list[bytes]:
    return [line for line in raw.split(b"\r\n") if line.startswith(prefix)]


def mixed(encoding: bytes, body: bytes, boundary: bytes = b"BB") -> bytes:
    return (HEAD + b'Content-Type: multipart/mixed; boundary="' + boundary + b'"\r\n\r\n'
            b"--" + boundary + b"\r\nContent-Type: text/plain; charset=us-ascii\r\n"
            b"Content-Transfer-Encoding: " + encoding + b"\r\n\r\n" + body + b"\r\n--" + boundary + b"--\r\n")


# -- 1. no delimiter line in a part encoded again (RFC 2046 §5.1.1) ---------------------------------


def test_quoted_printable_text_that_decodes_to_the_boundary_stays_text():
    # The part as every policy reads it: one text part, whose text holds a "--BB" line.
    raw = mixed(b"quoted-printable", b"Hello\r\n=2D=2DBB\r\nContent-Type: application/x-msdownload\r\n"
                                     b"Content-Transfer-Encoding: base64\r\n\r\nTVqQAAMAAAAE")
    assert parts(raw) == ["multipart/mixed", "text/plain"]
    m = pc.Message(raw)
    assert m.append_text("-- scanned by Portcullis") == 1
    out = m.raw
    assert parts(out) == ["multipart/mixed", "text/plain"]  # no application/x-msdownload part appears
    assert lines_starting(out, b"--BB") == [b"--BB", b"--BB--"]
    assert b"\r\n=2D-BB\r\n" in out and b"\r\n=2D- scanned by Portcullis" in out
    assert texts(out) == [texts(raw)[0] + "\n-- scanned by Portcullis"]


@pytest.mark.parametrize("encoding", [b"7bit", b"8bit", b"binary", b"base64", b"quoted-printable"])
def test_an_edit_that_adds_a_delimiter_line_does_not_make_a_part(encoding):
    body = b"SGVsbG8=" if encoding == b"base64" else b"Hello"
    raw = mixed(encoding, body)
    m = pc.Message(raw)
    assert m.edit_text(lambda ctype, text: text + "\n" + SMUGGLED.decode().replace("\r\n", "\n")) == 1
    out = m.raw
    assert parts(out) == ["multipart/mixed", "text/plain"]
    assert lines_starting(out, b"--BB") == [b"--BB", b"--BB--"]
    assert texts(out)[0].rstrip("\n").endswith("--BB\nContent-Type: application/x-msdownload\n"
                                               "Content-Transfer-Encoding: base64\n\nTVqQAAMAAAAE")


def test_a_delimiter_of_an_outer_multipart_is_not_made_either():
    raw = (HEAD + b'Content-Type: multipart/mixed; boundary="OUT"\r\n\r\n'
           b'--OUT\r\nContent-Type: multipart/alternative; boundary="IN"\r\n\r\n'
           b"--IN\r\nContent-Type: text/plain\r\n\r\nHello\r\n--IN--\r\n"
           b"--OUT\r\nContent-Type: application/pdf\r\n\r\nJVBERi0=\r\n--OUT--\r\n")
    m = pc.Message(raw)
    m.append_text("--OUT\nContent-Type: application/x-msdownload\n\nTVqQ\n--IN--")
    out = m.raw
    assert parts(out) == parts(raw) == ["multipart/mixed", "multipart/alternative", "text/plain", "application/pdf"]
    assert lines_starting(out, b"--OUT") == [b"--OUT", b"--OUT", b"--OUT--"]
    assert lines_starting(out, b"--IN") == [b"--IN", b"--IN--"]


def test_a_soft_line_break_does_not_start_a_line_with_the_boundary():
    # quoted-printable breaks a long line at 76 characters: "--BB" would start the next one.
    raw = mixed(b"quoted-printable", b"Hello")
    m = pc.Message(raw)
    m.edit_text(lambda ctype, text: text + "\n" + "x" * 75 + "--BB\nContent-Type: application/x-msdownload")
    out = m.raw
    assert parts(out) == ["multipart/mixed", "text/plain"]
    assert lines_starting(out, b"--BB") == [b"--BB", b"--BB--"]
    assert all(len(line) <= 76 for line in out.split(b"\r\n"))


def test_quoted_printable_never_starts_a_line_with_two_dashes_and_decodes_back():
    import random

    rng = random.Random(5)
    for _ in range(3000):
        data = bytes(rng.choice(b"-=x \t\n\xe9B") for _ in range(rng.randrange(0, 400)))
        encoded = _mime._quoted_printable(data)
        assert quopri.decodestring(encoded) == data
        assert all(len(line) <= 76 and not line.startswith(b"--") for line in encoded.split(b"\n")), encoded


def test_the_encoded_part_is_checked_for_delimiter_lines(monkeypatch):
    # Should an encoding ever let one through, the edit is refused rather than sent.
    monkeypatch.setattr(_mime, "_quoted_printable", quopri.encodestring)
    m = pc.Message(mixed(b"quoted-printable", b"Hello"))
    with pytest.raises(ValueError, match="delimiter"):
        m.append_text("--BB\nContent-Type: application/x-msdownload")


# -- 2. </body> found in the text as it is -------------------------------------------------------


@pytest.mark.parametrize("before", ["\u0130stanbul \u0130zmir \u0130stanbul", "plain", "\u0130" * 10])
def test_the_html_footer_goes_before_the_last_body_end_tag(before):
    html = f"<html><body><!-- </body> -->{before}</BODY ></html>\r\n"
    m = pc.Message(b"Subject: x\r\nMIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n"
                   b"Content-Transfer-Encoding: 8bit\r\n\r\n" + html.encode())
    assert m.append_text("footer", html="<p>FOOTER</p>") == 1
    assert m.body.decode() == f"<html><body><!-- </body> -->{before}<p>FOOTER</p></BODY ></html>\r\n"


# -- 3. octets not valid in the declared charset kept --------------------------------------------


def single(content_type: bytes, encoding: bytes, body: bytes) -> pc.Message:
    return pc.Message(b"Subject: x\r\nMIME-Version: 1.0\r\nContent-Type: " + content_type +
                      b"\r\nContent-Transfer-Encoding: " + encoding + b"\r\n\r\n" + body)


@pytest.mark.parametrize("content_type", [b"text/plain", b"text/plain; charset=us-ascii", b"text/plain; charset=utf-8"])
def test_8bit_octets_not_in_the_charset_are_kept(content_type):
    m = single(content_type, b"8bit", b"Caf\xe9 cr\xe8me br\xfbl\xe9e\r\n")
    assert m.append_text("-- footer") == 1
    assert m.body == b"Caf\xe9 cr\xe8me br\xfbl\xe9e\r\n-- footer\r\n"
    assert m.get("Content-Type") == content_type.decode()  # the charset it came with


def test_8bit_octets_in_a_7bit_part_are_kept_in_quoted_printable():
    m = single(b"text/plain", b"7bit", b"Caf\xe9\r\n")
    m.append_text("ok")
    assert m.get("Content-Transfer-Encoding") == "quoted-printable"
    assert m.body == b"Caf=E9\r\nok\r\n"
    assert m.get("Content-Type") == "text/plain"


def test_what_the_charset_cannot_hold_next_to_octets_it_does_not_either():
    # The original's octets are no UTF-8: the charset stays, the added text is written as it can be.
    plain = single(b"text/plain; charset=us-ascii", b"8bit", b"Caf\xe9\r\n")
    plain.append_text("Gr\u00fc\u00dfe")
    assert plain.body == b"Caf\xe9\r\nGr??e\r\n" and plain.get("Content-Type") == "text/plain; charset=us-ascii"
    html = single(b"text/html; charset=us-ascii", b"8bit", b"<body>Caf\xe9</body>\r\n")
    html.append_text("x", html="<p>Gr\u00fc\u00dfe</p>")
    assert html.body == b"<body>Caf\xe9<p>Gr&#252;&#223;e</p></body>\r\n"
    # The original's octets are UTF-8 (labelled us-ascii): said so, every octet kept.
    utf8 = single(b"text/plain; charset=us-ascii", b"8bit", b"Caf\xc3\xa9\r\n")
    utf8.append_text("Gr\u00fc\u00dfe")
    assert utf8.body == b"Caf\xc3\xa9\r\nGr\xc3\xbc\xc3\x9fe\r\n"
    assert utf8.get("Content-Type") == 'text/plain; charset="utf-8"'


def test_the_text_shows_such_octets_as_surrogates_and_a_quoted_printable_part_keeps_them():
    m = single(b"text/plain; charset=us-ascii", b"quoted-printable", b"Caf=E9 =FF\r\n")
    seen = []
    m.edit_text(lambda ctype, text: seen.append(text) or text.replace("Caf", "Cafe"))
    assert seen == ["Caf\udce9 \udcff\n"]
    assert m.body == b"Cafe=E9 =FF\r\n"


# -- 4. a part's header lines stay within 998 octets ---------------------------------------------


def test_a_rewritten_part_content_type_is_folded():
    params = "".join(f';\r\n x-p{i}="{chr(97 + i) * 150}"' for i in range(8))
    raw = (HEAD + b'Content-Type: multipart/mixed; boundary="BB"\r\n\r\n'
           b"--BB\r\nContent-Type: text/plain; charset=us-ascii" + params.encode() + b"\r\n\r\nHello\r\n--BB--\r\n")
    m = pc.Message(raw)
    assert m.append_text("Gr\u00fc\u00dfe") == 1
    out = m.raw
    assert max(len(line) for line in out.split(b"\r\n")) <= 998
    [part] = [p for p in email.message_from_bytes(out, policy=email.policy.default).walk()][1:]
    assert part.get_content_charset() == "utf-8"
    assert [part.get_param(f"x-p{i}") for i in range(8)] == [chr(97 + i) * 150 for i in range(8)]
    assert part.get_content().replace("\r\n", "\n") == "Hello\nGr\u00fc\u00dfe"


def test_a_new_body_with_a_part_header_line_over_998_octets_is_refused():
    raw = HEAD + b'Content-Type: multipart/mixed; boundary="BB"\r\n\r\n--BB\r\n\r\nHello\r\n--BB--\r\n'
    m = pc.Message(raw)
    with pytest.raises(ValueError, match="998"):
        m.body = b"--BB\r\nContent-Type: text/plain; x=" + b"a" * 1000 + b"\r\n\r\nHello\r\n--BB--\r\n"
    # A line the client sent that long is its own: an edit elsewhere in the body is let through.
    long_line = b"Content-Type: application/pdf; x=" + b"a" * 1000
    raw = (HEAD + b'Content-Type: multipart/mixed; boundary="BB"\r\n\r\n--BB\r\n\r\nHello\r\n'
           b"--BB\r\n" + long_line + b"\r\n\r\nJVBERi0=\r\n--BB--\r\n")
    m = pc.Message(raw)
    assert m.append_text("footer") == 1
    assert long_line in m._checked_raw()


# -- 5. nesting: no recursion per level ---------------------------------------------------------------


def nested(depth: int) -> bytes:
    """A text part under ``depth`` multiparts nested one in the other, a text part beside each."""
    head = HEAD + b"Content-Type: multipart/mixed; boundary=b0\r\n\r\n"
    opening = b"".join(b"--b%d\r\nContent-Type: text/plain\r\n\r\nlevel %d\r\n"
                       b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (i, i, i, i + 1)
                       for i in range(depth))
    closing = b"".join(b"\r\n--b%d--" % i for i in range(depth - 1, -1, -1))
    return head + opening + b"--b%d\r\nContent-Type: text/plain\r\n\r\ninnermost\r\n--b%d--" % (depth, depth) + closing + b"\r\n"


def test_a_thousand_and_more_nested_multiparts_are_edited_in_the_message_s_order():
    # Some 90 KB: a walk that recursed per level raised RecursionError past about 1,000 levels.
    depth = 1500
    message = pc.Message(nested(depth))
    seen = []
    assert message.edit_text(lambda ctype, text: seen.append(text.strip()) or None) == 0
    assert seen == [f"level {i}" for i in range(depth)] + ["innermost"]
    assert message.append_text("footer") == depth + 1
    raw = message.raw
    assert raw.count(b"footer") == depth + 1
    assert b"level 0\r\nfooter\r\n--b0\r\n" in raw and b"innermost\r\nfooter\r\n--b1500--" in raw
    assert raw.replace(b"\r\nfooter", b"") == nested(depth)  # nothing else moved

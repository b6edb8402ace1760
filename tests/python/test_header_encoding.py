"""Generated header values outside SMTPUTF8: RFC 2047 encoded-words (issue 7, item 11).

A value a hook adds or replaces that is not ASCII goes out as encoded-words
unless the transaction is SMTPUTF8 (RFC 6532 allows UTF-8 there); fields the
hook did not touch stay byte for byte.
"""

import email.header
import email.parser
import email.policy

import pytest
from enginehelp import ask, job, run, tx

import portcullis as pc
from portcullis._engine import EngineHost
from portcullis._message import ENCODED_WORD_LIMIT, FOLD_SOFT_LIMIT, encode_words

# {value, the header line(s) without SMTPUTF8}
ENCODED = [
    ("Grüße vom Proxy", b"X-Note: =?utf-8?b?R3LDvMOfZQ==?= vom Proxy\r\n"),
    ("plain ASCII stays", b"X-Note: plain ASCII stays\r\n"),
    ("Jürgen Müller <j@example.test>", b"X-Note: =?utf-8?b?SsO8cmdlbiBNw7xsbGVy?= <j@example.test>\r\n"),
    ("ü  ü\tend ü", b"X-Note: =?utf-8?b?w7wgIMO8?=\tend =?utf-8?b?w7w=?=\r\n"),
    ("x" * 100 + "ü", b"X-Note: =?utf-8?q?" + b"x" * 58 + b"?=\r\n =?utf-8?q?" + b"x" * 42 + b"=C3=BC?=\r\n"),
    # Text that readers would decode is encoded too, inside a non-ASCII value.
    ("=?utf-8?q?x?= ü", b"X-Note: =?utf-8?b?PT91dGYtOD9xP3g/PSDDvA==?=\r\n"),
    # Octets read from an 8-bit field (surrogates) are labelled unknown-8bit.
    ("caf\udce9 ok", b"X-Note: =?unknown-8bit?q?caf=E9?= ok\r\n"),
]


@pytest.mark.parametrize("value, want", ENCODED)
def test_generated_values_are_encoded_without_smtputf8(value, want):
    m = pc.Message(b"Subject: hi\r\n\r\nbody\r\n")
    m.add_header("X-Note", value)
    raw = m.raw
    assert raw == want + b"Subject: hi\r\n\r\nbody\r\n"
    assert raw.isascii()
    assert m.get("X-Note") == value  # the hook reads back what it set


@pytest.mark.parametrize("value, want", ENCODED)
def test_generated_values_stay_utf8_in_smtputf8_transactions(value, want):
    m = pc.Message(b"Subject: hi\r\n\r\nbody\r\n", smtputf8=True)
    m.replace_header("Subject", value)
    assert m.raw.startswith(b"Subject: " + value.encode("utf-8", "surrogateescape")[:40])


@pytest.mark.parametrize("value", [v for v, _ in ENCODED if not v.startswith("caf")] + [
    "a " + "Grüße " * 30 + "end", "ü" * 200, "Ünïcödé " * 40])
def test_encoded_words_decode_to_the_value_and_fit_the_lines(value):
    m = pc.Message(b"\r\n")
    m.add_header("Subject", value)
    header = m.raw.split(b"\r\n\r\n")[0]
    for line in header.split(b"\r\n"):
        assert len(line) <= FOLD_SOFT_LIMIT, line
    for word in header.replace(b"\r\n", b"").split():
        if word.startswith(b"=?"):
            assert len(word) <= ENCODED_WORD_LIMIT
    parsed = email.parser.BytesParser(policy=email.policy.default).parsebytes(m.raw)
    assert parsed["Subject"] == value
    unfolded = header.replace(b"\r\n", b"").decode("ascii")[len("Subject: "):]
    assert str(email.header.make_header(email.header.decode_header(unfolded))) == value


def test_untouched_fields_keep_their_octets():
    raw = "Subject: Grüße\r\nX-Old: caf\xe9\r\n\r\nbody\r\n".encode("latin-1").replace(
        "Grüße".encode("latin-1"), "Grüße".encode())
    m = pc.Message(raw)
    m.add_header("X-New", "neu")
    assert m.raw == b"X-New: neu\r\n" + raw


def test_each_encoded_word_holds_whole_characters():
    for word in encode_words("€" * 40).split():
        assert email.header.decode_header(word)[0][0].decode("utf-8")  # would raise on a split character


def test_injection_is_still_refused_before_encoding():
    m = pc.Message(b"\r\n")
    with pytest.raises(ValueError):
        m.add_header("X-Evil", "ü\r\nBcc: victim@example.test")


@pytest.mark.parametrize("smtputf8, want", [
    (False, b"X-Note: =?utf-8?b?R3LDvMOfZQ==?= vom Proxy\r\n"),
    (True, "X-Note: Grüße vom Proxy\r\n".encode()),
])
def test_the_engine_encodes_per_the_transaction(policy_file, smtputf8, want):
    f = policy_file("""
        def on_data(tx, message):
            message.add_header("X-Note", "Grüße vom Proxy")
            tx.data["seen"] = (tx.smtputf8, tx.body_8bit)
    """)
    host = EngineHost([f], timeout=2)
    snapshot = tx(options={"smtputf8": smtputf8, "body_8bit": True})
    r = run(ask(host, job("data", tx_snapshot=snapshot, message=b"Subject: hi\r\n\r\nbody\r\n")))
    assert r["error"] is None
    # Only the field goes back: the daemon puts it on top of the message it holds.
    assert r["message"] is None and r["message_prefix"] == want
    assert host._sessions["S1"].tx.data["seen"] == (smtputf8, True)
    host.close()


def test_a_job_without_options_is_not_smtputf8(policy_file):
    f = policy_file("""
        def on_data(tx, message):
            message.add_header("X-Note", "é")
    """)
    host = EngineHost([f], timeout=2)
    r = run(ask(host, job("data", tx_snapshot=tx(), message=b"\r\n")))
    assert r["message_prefix"] == b"X-Note: =?utf-8?b?w6k=?=\r\n"
    host.close()


def test_the_harness_tells_the_hooks_what_mail_said(policy_file):
    f = policy_file("""
        def on_data(tx, message):
            message.add_header("X-Note", "Grüße")
    """)
    from portcullis.testing import Harness

    with Harness([f]) as h:
        s = h.connect(helo="client.example")
        s.mail("a@example.test")
        s.rcpt("b@example.test")
        assert s.data(b"\r\n").code == 250
        s.mail("a@example.test", params={"SMTPUTF8": None, "BODY": "8BITMIME"})
        s.rcpt("b@example.test")
        assert s.data(b"\r\n").code == 250
        assert [d.message for d in s.delivered] == [b"X-Note: =?utf-8?b?R3LDvMOfZQ==?=\r\n\r\n",
                                                    "X-Note: Grüße\r\n\r\n".encode()]

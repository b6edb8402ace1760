"""portcullis._arc, the daemon's ARC engine (dkimpy), without a daemon: what it
makes of messages without a chain, of broken sets, and its time budget (the
e2e tests verify real chains with keys in DNS, tests/e2e/test_arc.py)."""

from __future__ import annotations

import subprocess

import dkim
import pytest

from portcullis import _arc

MESSAGE = (b"From: alice@example.test\r\nTo: list@lists.test\r\nSubject: arc\r\n"
           b"Date: Wed, 02 Dec 2026 12:00:00 +0000\r\n\r\nHello\r\n")


@pytest.fixture(scope="module")
def sealed(tmp_path_factory):
    key = tmp_path_factory.mktemp("arc") / "k.pem"
    subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True)
    m = b"Authentication-Results: lists.test; dkim=none\r\n" + MESSAGE
    return b"".join(dkim.arc_sign(m, b"s", b"lists.test", key.read_bytes(), b"lists.test")) + m


def test_no_chain_is_none():
    assert _arc.verify(MESSAGE)[:2] == ("none", 0)


def test_broken_sets_fail_without_raising():
    assert _arc.verify(b"ARC-Seal: i=1; garbage\r\n" + MESSAGE)[0] == "fail"
    assert _arc.verify(b"ARC-Seal: i=51; cv=none\r\n" + MESSAGE)[0] == "fail"


def test_key_lookups_stop_at_the_time_budget(sealed, monkeypatch):
    monkeypatch.setattr(_arc, "TIME_BUDGET", -1.0)
    result, _, why, _ = _arc.verify(sealed)
    assert result == "fail"
    assert "budget" in why

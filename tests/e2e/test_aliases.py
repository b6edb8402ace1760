"""policies/aliases.py through the daemon, a real upstream (aiosmtpd) and a
real postsrsd: fan-out to local and external targets with an SRS sender
upstream, bounces home through SRS (ours and postsrsd's), forged and expired
SRS refused, catch-all, plus-addressing, loops, and SIGHUP reloading the file."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from conftest import render_toml, sanitized_python_env
from helpers.postsrsd import DOMAIN, SECRET, running_postsrsd

POLICY = Path(__file__).resolve().parents[2] / "policies" / "aliases.py"
ALIASES = """\
# the team, one of them outside
team@example.test   alice@example.test, bob@example.test,
                    carol@partner.example
alice@example.test  alice@example.test
bob@example.test    bob@example.test
info@example.test   team@example.test
@catchall.test      alice@example.test
"""
MESSAGE = b"From: sender@origin.example\r\nTo: team@example.test\r\nSubject: hello\r\n\r\nHi."


def srs0(local: str, domain: str, days_ago: int = 0, secret: str = SECRET) -> str:
    """An SRS0 address computed here, independently of the code under test (libsrs2's recipe)."""
    day = int(time.time() // 86400) - days_ago
    chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
    stamp = chars[(day >> 5) & 31] + chars[day & 31]
    mac = hmac.new(secret.encode(), (stamp + domain + local).lower().encode(), hashlib.sha1).digest()
    return f"SRS0={base64.b64encode(mac).decode()[:4]}={stamp}={domain}={local}@{DOMAIN}"


@pytest.fixture
def postsrsd(tmp_path):
    with running_postsrsd(tmp_path) as p:
        yield p


@pytest.fixture
def aliases_daemon(policy_daemon, aiosmtpd_upstream, tmp_path):
    def start(aliases: str = ALIASES, **settings):
        path = tmp_path / "virtual"
        path.write_text(aliases)
        table = {"file": str(path), "local_domains": ["example.test"], "srs_secret": SECRET, "srs_domain": DOMAIN,
                 **settings}
        d = policy_daemon(aiosmtpd_upstream.url, POLICY, aliases=table)
        d.aliases_path = path
        return d

    return start


def test_fan_out_to_local_and_external_targets_with_an_srs_sender(aliases_daemon, aiosmtpd_upstream, postsrsd):
    d = aliases_daemon()
    with d.connect() as c:
        r = c.transaction("sender@origin.example", ["info@example.test"], MESSAGE)
        assert r.code == 250
    [env] = aiosmtpd_upstream.wait_messages(1)
    assert env["rcpt_tos"] == ["alice@example.test", "bob@example.test", "carol@partner.example"]
    sender = env["mail_from"]
    assert re.fullmatch(rf"SRS0=[A-Za-z0-9+/]{{4}}=[A-Z2-7]{{2}}=origin\.example=sender@{re.escape(DOMAIN)}", sender)
    # postsrsd, with the same secret, reads our SRS address back to the original.
    assert postsrsd.reverse(sender) == (200, "sender@origin.example")


def test_a_bounce_to_an_srs_address_reaches_the_original_sender(aliases_daemon, aiosmtpd_upstream, postsrsd):
    d = aliases_daemon()
    made_by_postsrsd = postsrsd.forward("Original.Sender@origin.example")[1]
    for n, srs_address in enumerate((srs0("sender", "origin.example"), made_by_postsrsd), 1):
        with d.connect() as c:
            assert c.transaction("", [srs_address], b"Subject: Undelivered Mail\r\n\r\nbounce").code == 250
        env = aiosmtpd_upstream.wait_messages(n)[-1]
        assert env["mail_from"] == "<>"  # (aiosmtpd's way of saying null)
        assert env["rcpt_tos"] == [["sender@origin.example", "Original.Sender@origin.example"][n - 1]]


def test_forged_and_expired_srs_addresses_are_refused(aliases_daemon, aiosmtpd_upstream):
    d = aliases_daemon()
    for bad in (srs0("sender", "origin.example", secret="not the secret"),
                srs0("sender", "origin.example", days_ago=30),
                srs0("sender", "origin.example").replace("=sender@", "=victim@")):
        with d.connect() as c:
            c.exchange("MAIL FROM:<>", 250)
            c.exchange(f"RCPT TO:<{bad}>", 550, "5.1.1")
    assert re.search(r"aliases: RCPT <SRS0=\S+> refused: .*expired", d.log_text())
    assert aiosmtpd_upstream.envelopes == []


def test_catchall_plus_addressing_and_unknown_users(aliases_daemon, aiosmtpd_upstream):
    d = aliases_daemon()
    with d.connect() as c:
        c.exchange("MAIL FROM:<sender@origin.example>", 250)
        c.exchange("RCPT TO:<anyone@catchall.test>", 250)
        c.exchange("RCPT TO:<bob+lists@example.test>", 250)
        r = c.exchange("RCPT TO:<nobody@example.test>", 550, "5.1.1")
        assert "User unknown" in r.text
        c.exchange("RCPT TO:<someone@elsewhere.example>", 250)  # not ours: the upstream decides
        c.exchange("DATA", 354)
        c.send(MESSAGE + b"\r\n.\r\n")
        c.expect(250)
    [env] = aiosmtpd_upstream.wait_messages(1)
    assert env["rcpt_tos"] == ["alice@example.test", "bob+lists@example.test", "someone@elsewhere.example"]
    assert env["mail_from"] == "sender@origin.example"  # every target local but the unknown domain: no SRS


def test_a_loop_in_the_file_is_a_warning_and_bounded_where_met(portcullis_bin, tmp_path):
    """CONTRACT.md: "loops and depth are bounded". The daemon refused to start on one."""
    (tmp_path / "virtual").write_text("a@example.test b@example.test\nb@example.test a@example.test\n")
    config = tmp_path / "portcullis.toml"
    config.write_text(render_toml({
        "server": {"listen": ["127.0.0.1:2599"], "hostname": "mx.test"},
        "upstream": {"url": "smtp://127.0.0.1:2598"},
        "policy": {"files": [str(POLICY)]},
        "aliases": {"file": "virtual", "local_domains": ["example.test"]},  # relative to the config file
    }))
    env = {**os.environ, **sanitized_python_env()}
    r = subprocess.run([str(portcullis_bin), "--check-config", str(config)], capture_output=True, text=True,
                       timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    assert re.search(r"virtual: alias loop: a@example\.test \(line 1\) -> b@example\.test \(line 2\) "
                     r"-> a@example\.test", r.stderr), r.stderr


def test_a_loop_in_the_file_tempfails_its_recipients(aliases_daemon, aiosmtpd_upstream):
    d = aliases_daemon("a@example.test b@example.test\nb@example.test a@example.test\nalice@example.test alice@example.test\n")
    d.wait_log(r"alias loop: a@example\.test \(line 1\) -> b@example\.test \(line 2\) -> a@example\.test")
    with d.connect() as c:
        c.exchange("MAIL FROM:<sender@origin.example>", 250)
        c.exchange("RCPT TO:<a@example.test>", 451, "4.3.0")
        c.exchange("RCPT TO:<alice@example.test>", 250)


def test_a_loop_met_through_catchalls_tempfails(aliases_daemon, aiosmtpd_upstream):
    d = aliases_daemon("@example.test x@loop.test\n@loop.test y@example.test\n")
    with d.connect() as c:
        c.exchange("MAIL FROM:<sender@origin.example>", 250)
        c.exchange("RCPT TO:<q@example.test>", 451, "4.3.0")
    d.wait_log(r"aliases: RCPT <q@example\.test> deferred: alias loop")


def test_sighup_reads_the_file_again_and_a_broken_file_keeps_the_old_table(aliases_daemon, aiosmtpd_upstream):
    d = aliases_daemon()
    with d.connect() as c:
        c.exchange("MAIL FROM:<sender@origin.example>", 250)
        c.exchange("RCPT TO:<new@example.test>", 550, "5.1.1")
    d.aliases_path.write_text(ALIASES + "new@example.test alice@example.test\n")
    d.reload()
    with d.connect() as c:
        assert c.transaction("sender@origin.example", ["new@example.test"], MESSAGE).code == 250
    assert aiosmtpd_upstream.wait_messages(1)[0]["rcpt_tos"] == ["alice@example.test"]
    # A key with no value is skipped with a warning, as postmap does: the rest loads.
    d.aliases_path.write_text(ALIASES + "new@example.test alice@example.test\nlonely@example.test\n")
    d.reload()
    d.wait_log(r"line \d+: expected format: key whitespace value: 'lonely@example\.test' skipped, as postmap does")
    d.aliases_path.write_text(ALIASES + "broken-line-without-value@example.test ,,,\n")
    d.reload(expect_ok=False)
    d.wait_log(r"has no value")
    with d.connect() as c:  # the old table still answers
        c.exchange("MAIL FROM:<sender@origin.example>", 250)
        c.exchange("RCPT TO:<new@example.test>", 250)


def test_long_quoted_and_literal_senders_are_forwarded_and_their_bounces_come_home(aliases_daemon,
                                                                                  aiosmtpd_upstream):
    d = aliases_daemon(ALIASES + "fwd@example.test  someone@example.org\n")
    # Too long for SRS (over 64 octets of local part once rewritten): forwarded as it is, with a warning,
    # where every RCPT got 451 until the sender's queue gave up.
    long_sender = "newsletter-bounces-12345678@mail.marketing-example.com"
    senders = (long_sender, '"john smith"@origin.example', "user@[192.0.2.1]")
    for sender in senders:
        with d.connect() as c:
            assert c.transaction(sender, ["fwd@example.test"], MESSAGE).code == 250
    envs = aiosmtpd_upstream.wait_messages(3)
    assert envs[0]["mail_from"] == long_sender
    d.wait_log(r"aliases: forwarding to <fwd@example\.test> with the sender <newsletter-bounces-12345678@"
               r"mail\.marketing-example\.com> as it is, not SRS: .*64")
    made = [env["mail_from"] for env in envs[1:]]
    assert re.fullmatch(rf'"SRS0=[A-Za-z0-9+/]{{4}}=[A-Z2-7]{{2}}=origin\.example=john smith"@{re.escape(DOMAIN)}',
                        made[0])
    assert re.fullmatch(rf'"SRS0=[A-Za-z0-9+/]{{4}}=[A-Z2-7]{{2}}=\[192\.0\.2\.1\]=user"@{re.escape(DOMAIN)}', made[1])
    for n, (srs_address, sender) in enumerate(zip(made, senders[1:]), 4):
        with d.connect() as c:
            assert c.transaction("", [srs_address], b"Subject: Undelivered Mail\r\n\r\nbounce").code == 250
        assert aiosmtpd_upstream.wait_messages(n)[-1]["rcpt_tos"] == [sender]
    assert "Traceback" not in d.log_text()


def test_a_non_ascii_srs_hash_is_refused_and_a_quoted_recipient_found(aliases_daemon, aiosmtpd_upstream):
    d = aliases_daemon()
    forged = srs0("sender", "origin.example").split("=", 2)
    forged = f"SRS0=\u00e9123={forged[2]}"
    with d.connect() as c:
        c.exchange("MAIL FROM:<> SMTPUTF8", 250)
        c.exchange(f"RCPT TO:<{forged}>", 550, "5.1.1")  # was 451 and a TypeError in the log
        c.exchange("RSET", 250)
        c.exchange("MAIL FROM:<sender@origin.example>", 250)
        c.exchange('RCPT TO:<"alice"@example.test>', 250)  # the same mailbox as alice@ (RFC 5321 §4.1.2)
        c.exchange('RCPT TO:<"nobody"@example.test>', 550, "5.1.1")
    assert "Traceback" not in d.log_text()

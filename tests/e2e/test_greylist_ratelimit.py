"""policies/greylist.py and policies/ratelimit.py on two daemons that share
one real Redis: what one daemon has seen, the other knows; a limit per
client address holds across both, not twice over. And greylisting before
aliases.py's forwarding, as examples/forwarding has it: the SRS sender of a
forwarded RCPT is not what the next RCPT is greylisted on."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from helpers.redis_server import running_redis

POLICIES = Path(__file__).resolve().parents[2] / "policies"
BODY = b"Subject: hi\r\n\r\nhello"


@pytest.fixture
def redis_url(tmp_path):
    with running_redis(tmp_path) as url:
        yield url


def pair(policy_daemon, upstream, redis_url, policy: str, **tables):
    store = {"url": redis_url, "prefix": "e2e:"}
    return [policy_daemon(upstream.url, POLICIES / policy, store=store, **tables) for _ in range(2)]


def test_a_triplet_greylisted_by_one_daemon_passes_on_the_other_after_the_delay(
        policy_daemon, aiosmtpd_upstream, redis_url):
    delay = 4  # seconds: room for a slow (sanitized) daemon to ask the other one "too early" within it
    a, b = pair(policy_daemon, aiosmtpd_upstream, redis_url, "greylist.py", greylist={"delay": delay})
    first = time.monotonic()
    with a.connect() as c:
        c.exchange("MAIL FROM:<sender@origin.example>", 250)
        c.exchange("RCPT TO:<rcpt@example.test>", 451, "4.7.1")
    with b.connect() as c:  # too early on the other daemon too
        c.exchange("MAIL FROM:<sender@origin.example>", 250)
        c.exchange("RCPT TO:<rcpt@example.test>", 451, "4.7.1")
    assert time.monotonic() - first < delay, "too slow to test 'too early'"
    time.sleep(max(0.0, first + delay + 0.3 - time.monotonic()))
    with b.connect() as c:
        assert c.transaction("sender@origin.example", ["rcpt@example.test"], BODY).code == 250
    with a.connect() as c:  # known to both from now on
        assert c.transaction("sender@origin.example", ["rcpt@example.test"], BODY).code == 250
    assert len(aiosmtpd_upstream.wait_messages(2)) == 2


def test_a_client_limit_holds_across_both_daemons(policy_daemon, aiosmtpd_upstream, redis_url):
    a, b = pair(policy_daemon, aiosmtpd_upstream, redis_url, "ratelimit.py",
                ratelimit={"window": 600, "messages_per_client": 3})
    replies = []
    for d in (a, b, a, b, a):
        with d.connect() as c:
            c.cmd("MAIL FROM:<sender@origin.example>")
            replies.append(c.reply())
    assert [r.code for r in replies] == [250, 250, 250, 450, 450]
    assert replies[3].status == "4.7.1" and "Rate limit reached for client 127.0.0.1" in replies[3].text


def test_greylisting_before_forwarding_keys_every_rcpt_on_the_senders_address(
        policy_daemon, aiosmtpd_upstream, tmp_path):
    delay = 2
    virtual = tmp_path / "virtual"
    virtual.write_text("a@example.net a@elsewhere.example\nb@example.net b@elsewhere.example\n")
    d = policy_daemon(aiosmtpd_upstream.url, POLICIES / "greylist.py", POLICIES / "aliases.py",
                      greylist={"delay": delay},
                      aliases={"file": str(virtual), "local_domains": ["example.net"], "srs_secret": "s3cret",
                               "srs_domain": "srs.example.net"})
    first = time.monotonic()
    with d.connect() as c:
        c.exchange("MAIL FROM:<sender@origin.example>", 250)
        c.exchange("RCPT TO:<a@example.net>", 451, "4.7.1")
        c.exchange("RCPT TO:<b@example.net>", 451, "4.7.1")
    time.sleep(max(0.0, first + delay + 0.3 - time.monotonic()))
    with d.connect() as c:  # the retry: a is forwarded (an SRS sender from now on), and b passes too
        assert c.transaction("sender@origin.example", ["a@example.net", "b@example.net"], BODY).code == 250
    [env] = aiosmtpd_upstream.wait_messages(1)
    assert env["rcpt_tos"] == ["a@elsewhere.example", "b@elsewhere.example"]
    assert env["mail_from"].startswith("SRS0=") and env["mail_from"].endswith("@srs.example.net")

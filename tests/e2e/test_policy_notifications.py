"""on_delivered through the daemon: told the upstream's final reply with the
envelope as delivered (a 250, or the upstream's refusal), never for a
message a policy or the proxy refused; a hook that fails changes nothing."""

from __future__ import annotations

from conftest import json_lines as records
from conftest import wait_until

NOTIFIED = """
import json
import portcullis as pc

def on_data(tx, message):
    if b"refuse me" in message.body:
        return pc.reject("not this one", code=550, status="5.7.1")
    tx.recipients.append("added@example.test")

async def on_delivered(tx, reply):
    with open({record!r}, "a") as f:
        f.write(json.dumps([str(tx.sender), [str(r) for r in tx.recipients], reply.code, reply.status,
                            reply.text, reply.delivered]) + "\\n")
    if "boom" in str(tx.sender):
        raise RuntimeError("a notification that fails")
"""


def test_on_delivered_is_told_the_upstreams_final_reply(policy_daemon, aiosmtpd_upstream, tmp_path):
    record = tmp_path / "delivered.jsonl"
    d = policy_daemon(aiosmtpd_upstream.url, NOTIFIED.replace("{record!r}", repr(str(record))))
    with d.connect() as c:
        assert c.transaction("a@example.com", ["b@example.test"], b"Subject: 1\r\n\r\nhello").code == 250
        assert c.transaction("a@example.com", ["b@example.test"], b"Subject: 2\r\n\r\nrefuse me").code == 550
        assert c.transaction("boom@example.com", ["b@example.test"], b"Subject: 3\r\n\r\nhello").code == 250
    # (A delivered message's 250 goes out before on_delivered runs: the last one may still be running.)
    wait_until(lambda: record.exists() and len(records(record)) == 2, 5, what="on_delivered told of both deliveries")
    [first, third] = records(record)
    assert first[:2] == ["a@example.com", ["b@example.test", "added@example.test"]]  # as delivered
    assert first[2:4] == [250, "2.0.0"] and "queued as AIO" in first[4] and first[5] is True
    assert third[0] == "boom@example.com"
    d.wait_log(r"on_delivered in \S+ raised an exception")
    assert len(aiosmtpd_upstream.wait_messages(2)) == 2


def test_an_upstream_refusal_is_told_too(policy_daemon, fake_upstream, tmp_path):
    record = tmp_path / "delivered.jsonl"
    up = fake_upstream({"DOT": "554 5.6.0 Content refused (fake)"})
    d = policy_daemon(up.url, NOTIFIED.replace("{record!r}", repr(str(record))))
    with d.connect() as c:
        r = c.transaction("a@example.com", ["b@example.test"], b"Subject: 1\r\n\r\nhello")
        assert (r.code, r.status) == (554, "5.6.0")
    [told] = records(record)
    assert told[2:] == [554, "5.6.0", "Content refused (fake)", False]


def test_on_reset_is_told_when_each_transaction_ends(policy_daemon, aiosmtpd_upstream, tmp_path):
    record = tmp_path / "reset.jsonl"
    d = policy_daemon(aiosmtpd_upstream.url, f"""
import json
def on_reset(tx):
    with open({str(record)!r}, "a") as f:
        f.write(json.dumps([str(tx.sender), [str(r) for r in tx.recipients]]) + "\\n")
""")
    with d.connect() as c:
        assert c.transaction("a@example.com", ["b@example.test"], b"Subject: 1\r\n\r\nhello").code == 250
        c.exchange("MAIL FROM:<c@example.com>", 250)
        c.exchange("RSET", 250)
        c.exchange("RSET", 250)  # no transaction: not told
        c.exchange("MAIL FROM:<d@example.com>", 250)
        c.exchange("EHLO again.test", 250)
    assert records(record) == [["a@example.com", ["b@example.test"]], ["c@example.com", []], ["d@example.com", []]]

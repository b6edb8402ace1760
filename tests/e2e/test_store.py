"""pc.store through the daemon: the memory store shared by two worker
processes, and two daemons sharing one real Redis. A counter bumped at every
connection must hand out each number once, whichever process (or daemon)
served the connection."""

from __future__ import annotations

import pytest

from helpers.redis_server import running_redis
from test_workers import WORKERS, worker_of, worker_pids

COUNTER = """
import portcullis as pc

async def on_helo(conn, hostname):
    n = await pc.store.incr("connections", ttl=3600)
    conn.data["n"] = n

def on_mail(tx, sender):
    return pc.reject(f"number {tx.conn.data['n']} {pc.store.incr_sync('mails')}", code=550, status="5.7.1")
"""


def numbers(d, count: int) -> tuple[list[int], list[int], set[int]]:
    """`count` connections: the connection numbers, the mail numbers, and the pids that served them."""
    conns, mails, pids = [], [], set()
    for _ in range(count):
        with d.connect() as c:
            r = c.exchange("MAIL FROM:<a@example.test>", 550, "5.7.1")
            _, conn_n, mail_n = r.text.split()
            conns.append(int(conn_n))
            mails.append(int(mail_n))
            if d.tables["server"].get("workers", 1) > 1:
                pids.add(worker_of(d, c.local_port))
    return conns, mails, pids


def test_the_memory_store_is_shared_by_the_workers(policy_daemon, aiosmtpd_upstream):
    d = policy_daemon(aiosmtpd_upstream.url, COUNTER, server=WORKERS)
    both = worker_pids(d)
    conns, mails, pids = numbers(d, 30)
    assert pids == both, "the kernel sent every connection to one worker: nothing shown"
    assert sorted(conns) == list(range(1, 31)) and sorted(mails) == list(range(1, 31))


@pytest.fixture
def redis_url(tmp_path):
    with running_redis(tmp_path) as url:
        yield url


def test_two_daemons_share_one_redis(policy_daemon, aiosmtpd_upstream, redis_url):
    store = {"url": redis_url, "prefix": "e2e:"}
    first = policy_daemon(aiosmtpd_upstream.url, COUNTER, store=store)
    second = policy_daemon(aiosmtpd_upstream.url, COUNTER, store=store)
    a = numbers(first, 10)
    b = numbers(second, 10)
    c = numbers(first, 5)
    assert sorted(a[0] + b[0] + c[0]) == list(range(1, 26))
    assert b[0] == list(range(11, 21))


def test_a_store_that_does_not_answer_fails_the_hook_not_the_daemon(policy_daemon, aiosmtpd_upstream):
    d = policy_daemon(aiosmtpd_upstream.url, COUNTER, store={"url": "redis://127.0.0.1:1/0", "timeout": 1})
    with d.client() as c:  # the HELO hook fails: [policy] on_error = "tempfail"
        c.expect(220)
        c.exchange("EHLO client.test", 451, "4.3.0")
    d.wait_log(r"pc\.store: Redis: ConnectionError")

"""Benchmark policy: a hook at every stage that decides nothing, half sync, half async.

Measures what the policy engine itself costs per message (a job to the
policy thread and back at each stage), not what a real policy does.
"""
import portcullis as pc


def on_connect(conn):
    return None


async def on_helo(conn, hostname):
    return None


def on_mail(tx, sender):
    return None


async def on_rcpt(tx, rcpt):
    return None


def on_data(tx, message):
    message.add_header("X-Bench", "1")
    return None

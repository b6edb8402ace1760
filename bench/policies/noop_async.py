"""Benchmark policy: an `async def` hook at every stage that decides nothing."""


async def on_connect(conn):
    return None


async def on_helo(conn, hostname):
    return None


async def on_mail(tx, sender):
    return None


async def on_rcpt(tx, rcpt):
    return None


async def on_data(tx, message):
    return None


async def on_disconnect(conn):
    return None

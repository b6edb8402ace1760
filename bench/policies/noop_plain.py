"""Benchmark policy: a plain (non-async) hook at every stage that decides nothing."""


def on_connect(conn):
    return None


def on_helo(conn, hostname):
    return None


def on_mail(tx, sender):
    return None


def on_rcpt(tx, rcpt):
    return None


def on_data(tx, message):
    return None


def on_disconnect(conn):
    return None

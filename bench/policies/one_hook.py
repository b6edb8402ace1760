"""Benchmark policy: one plain hook (on_rcpt) that decides nothing: what a small policy pays."""


def on_rcpt(tx, rcpt):
    return None

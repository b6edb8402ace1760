"""The full-stack bench case's policy: one header rewrite at end of data (the message is edited, so the daemon
relays the policy's copy, which the DKIM signature then covers)."""


def on_data(tx, message):
    message.add_header("X-Bench-Checked", f"spf={tx.spf.result if tx.spf else '-'}")

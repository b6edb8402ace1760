"""Returns the verdict the config names for each stage: pc.config["verdicts"]
maps a stage (connect, helo, mail, rcpt, data) to a Python expression
evaluated with `pc` in scope, e.g. "pc.reject('No', code=553, status='5.1.8')".

At rcpt the verdict applies only to recipients whose local part is
"decided"; every other recipient gets None (the upstream decides), so a
test can see the others delivered alongside.
"""

import portcullis as pc

VERDICTS = pc.config.get("verdicts", {})


def _verdict(stage):
    expression = VERDICTS.get(stage)
    return None if expression is None else eval(expression, {"pc": pc})


def on_connect(conn):
    return _verdict("connect")


def on_helo(conn, hostname):
    return _verdict("helo")


def on_mail(tx, sender):
    return _verdict("mail")


def on_rcpt(tx, rcpt):
    if rcpt.local == "decided":
        return _verdict("rcpt")
    return None


def on_data(tx, message):
    return _verdict("data")

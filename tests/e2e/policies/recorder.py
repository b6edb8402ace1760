"""Records every hook call, with what the hook was given, as JSON lines in
the file named by pc.config["probe"]["record"]. Every hook returns None (no
opinion), so the upstream decides everything.

Each hook also counts itself in conn.data and tx.data and records both, so
a test can see what persists from one hook to the next. on_helo and on_rcpt
are async, the others plain: both kinds get the same arguments.
"""

import json
import threading

import portcullis as pc

RECORD = pc.config["probe"]["record"]
_lock = threading.Lock()


def _conn(conn):
    return {
        "type": type(conn).__name__,
        "is_connection": isinstance(conn, pc.Connection),
        "id": conn.id,
        "client_ip": conn.client_ip,
        "client_port": conn.client_port,
        "helo": conn.helo,
        "tls": conn.tls,
        "auth_user": conn.auth_user,
    }


def _tx(tx):
    return {
        "is_transaction": isinstance(tx, pc.Transaction),
        "id": tx.id,
        "conn": _conn(tx.conn),
        "sender": str(tx.sender),
        "recipients": [str(r) for r in tx.recipients],
        "recipients_are_addresses": all(isinstance(r, pc.Address) for r in tx.recipients),
        "spf": repr(tx.spf),
        "dkim": repr(tx.dkim),
        "dmarc": repr(tx.dmarc),
    }


def _address(a):
    return {"is_address": isinstance(a, pc.Address), "str": str(a), "local": a.local, "domain": a.domain,
            "params": a.params, "is_null": a.is_null}


def _record(hook, conn, tx=None, **fields):
    conn.data.setdefault("hooks", []).append(hook)
    entry = {"hook": hook, "conn_data": list(conn.data["hooks"])}
    if tx is not None:
        tx.data.setdefault("hooks", []).append(hook)
        entry["tx_data"] = list(tx.data["hooks"])
        entry["tx"] = _tx(tx)
    entry["conn"] = _conn(conn)
    entry.update(fields)
    line = json.dumps(entry) + "\n"
    with _lock, open(RECORD, "a") as f:
        f.write(line)


def on_connect(conn):
    _record("connect", conn)


async def on_helo(conn, hostname):
    _record("helo", conn, hostname=hostname, hostname_type=type(hostname).__name__)


def on_mail(tx, sender):
    _record("mail", tx.conn, tx, sender=_address(sender), sender_is_tx_sender=sender == tx.sender)


async def on_rcpt(tx, rcpt):
    _record("rcpt", tx.conn, tx, rcpt=_address(rcpt))


def on_data(tx, message):
    _record(
        "data", tx.conn, tx,
        is_message=isinstance(message, pc.Message),
        raw=message.raw.decode("latin-1"),
        headers=message.headers,
        body=message.body.decode("latin-1"),
        subject=message.get("subject"),
        email_subject=str(message.as_email()["Subject"]),
    )


def on_disconnect(conn):
    _record("disconnect", conn)

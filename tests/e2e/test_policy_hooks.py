"""Python policy hooks through the built daemon: each hook runs at its stage
with the right arguments, conn.data and tx.data persist as documented, and
two policy files are asked in order with the first verdict that is not None
deciding (docs/policy-api.md, "Hooks" and "Hook order")."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import POLICY_DIR, complete_text, content_without_received, exact, json_lines, wait_until

RECORDER = POLICY_DIR / "recorder.py"


def records(path: Path, until: str = "disconnect", count: int = 1) -> list[dict]:
    """The recorder's entries, once `count` entries of hook `until` are there."""

    def read():
        entries = json_lines(path)
        return entries if sum(e["hook"] == until for e in entries) >= count else None

    return wait_until(read, timeout=5, what=f"{count} {until} record(s)")


def test_each_hook_runs_at_its_stage_with_its_arguments(policy_daemon, aiosmtpd_upstream, tmp_path):
    record = tmp_path / "record.jsonl"
    d = policy_daemon(aiosmtpd_upstream.url, RECORDER, probe={"record": str(record)})
    # A message with dot-stuffed lines and more than one read's worth of bytes:
    # on_data gets it once, whole and unstuffed.
    message = (b"Subject: hooks\r\nFrom: A <a@example.test>\r\nX-Folded: one\r\n\ttwo\r\n\r\n"
               b"first line\r\n.leading dot\r\n..two dots\r\n" + b"y" * 900 + b"\r\n" + (b"z" * 78 + b"\r\n.\r\n") * 1000
               + b"last\r\n")
    stuffed = message.replace(b"\r\n.", b"\r\n..")
    with d.client() as c:
        exact(c.reply(), 220, "", "mx.test ESMTP Portcullis")
        port = c.local_port
        sid = d.session_id(port)
        c.exchange("EHLO client.test", 250)
        exact(c.exchange("MAIL FROM:<a@example.test> SIZE=80000 BODY=8BITMIME", 250), 250, "2.1.0",
              "Sender ok (aiosmtpd)")
        exact(c.exchange("RCPT TO:<b@example.test>", 250), 250, "2.1.5", "Recipient ok (aiosmtpd)")
        exact(c.exchange("RCPT TO:<c@Example.TEST>", 250), 250, "2.1.5", "Recipient ok (aiosmtpd)")
        c.exchange("DATA", 354)
        c.send(stuffed + b".\r\n")
        exact(c.reply(), 250, "2.0.0", "Ok: queued as AIO00001 (aiosmtpd)")
        c.exchange("QUIT", 221)
        assert c.closed()
    entries = records(record)
    assert [e["hook"] for e in entries] == ["connect", "helo", "mail", "rcpt", "rcpt", "data", "disconnect"]
    connect, helo, mail, rcpt1, rcpt2, data, disconnect = entries

    conn = {"type": "Connection", "is_connection": True, "id": sid, "client_ip": "127.0.0.1",
            "client_port": port, "helo": None, "tls": False, "auth_user": None}
    assert connect["conn"] == conn
    # In on_helo conn.helo is still the previous one; the new one is the argument.
    assert helo["conn"] == conn
    assert (helo["hostname"], helo["hostname_type"]) == ("client.test", "str")
    conn_after_helo = {**conn, "helo": "client.test"}
    for e in (mail, rcpt1, rcpt2, data, disconnect):
        assert e["conn"] == conn_after_helo, e["hook"]

    assert mail["sender"] == {"is_address": True, "str": "a@example.test", "local": "a", "domain": "example.test",
                              "params": {"SIZE": "80000", "BODY": "8BITMIME"}, "is_null": False}
    assert mail["sender_is_tx_sender"] is True
    tx = {"is_transaction": True, "id": f"{sid}.1", "conn": conn_after_helo, "sender": "a@example.test",
          "recipients": [], "recipients_are_addresses": True, "spf": "None", "dkim": "None", "dmarc": "None"}
    assert mail["tx"] == tx
    # on_rcpt once per RCPT; tx.recipients holds those accepted so far.
    assert rcpt1["rcpt"] == {"is_address": True, "str": "b@example.test", "local": "b", "domain": "example.test",
                             "params": {}, "is_null": False}
    assert rcpt1["tx"] == tx
    assert rcpt2["rcpt"]["str"] == "c@Example.TEST"
    assert rcpt2["tx"] == {**tx, "recipients": ["b@example.test"]}
    assert data["tx"] == {**tx, "recipients": ["b@example.test", "c@Example.TEST"]}
    assert data["is_message"] is True
    assert data["raw"].encode("latin-1") == message
    assert data["body"].encode("latin-1") == message.split(b"\r\n\r\n", 1)[1]
    assert data["headers"] == [["Subject", "hooks"], ["From", "A <a@example.test>"], ["X-Folded", "one\ttwo"]]
    assert (data["subject"], data["email_subject"]) == ("hooks", "hooks")
    # conn.data lives for the connection, tx.data for the transaction.
    assert disconnect["conn_data"] == ["connect", "helo", "mail", "rcpt", "rcpt", "data", "disconnect"]
    assert data["tx_data"] == ["mail", "rcpt", "rcpt", "data"]

    [env] = aiosmtpd_upstream.wait_messages(1)
    assert (env["mail_from"], env["rcpt_tos"]) == ("a@example.test", ["b@example.test", "c@Example.TEST"])
    assert content_without_received(env["content"]) == message


def test_conn_data_and_tx_data_across_transactions(policy_daemon, aiosmtpd_upstream, tmp_path):
    """conn.data persists for the whole connection; tx.data starts afresh at
    every MAIL (after RSET, after a delivered message, after a new EHLO)."""
    record = tmp_path / "record.jsonl"
    d = policy_daemon(aiosmtpd_upstream.url, RECORDER, probe={"record": str(record)})
    with d.connect() as c:
        sid = d.session_id(c.local_port)
        c.exchange("MAIL FROM:<one@example.test>", 250, "2.1.0")
        c.exchange("RCPT TO:<r@example.test>", 250, "2.1.5")
        c.exchange("RSET", 250, "2.0.0")
        r = c.transaction("two@example.test", ["r@example.test"], b"Subject: two\r\n\r\nsecond")
        exact(r, 250, "2.0.0", "Ok: queued as AIO00001 (aiosmtpd)")
        c.exchange("MAIL FROM:<three@example.test>", 250, "2.1.0")
        c.exchange("EHLO again.test", 250)
        r = c.transaction("four@example.test", ["r@example.test"], b"Subject: four\r\n\r\nfourth")
        exact(r, 250, "2.0.0", "Ok: queued as AIO00002 (aiosmtpd)")
        c.exchange("QUIT", 221)
    entries = records(record)
    hooks = [e["hook"] for e in entries]
    assert hooks == ["connect", "helo", "mail", "rcpt", "mail", "rcpt", "data", "mail", "helo", "mail", "rcpt",
                     "data", "disconnect"]
    by_tx = {}
    for e in entries:
        if "tx" in e:
            by_tx.setdefault(e["tx"]["id"], []).append(e)
    # Every MAIL is a new transaction with a fresh tx.data.
    assert list(by_tx) == [f"{sid}.{n}" for n in (1, 2, 3, 4)]
    assert [e["tx_data"] for e in by_tx[f"{sid}.1"]] == [["mail"], ["mail", "rcpt"]]
    assert [e["tx_data"] for e in by_tx[f"{sid}.2"]] == [["mail"], ["mail", "rcpt"], ["mail", "rcpt", "data"]]
    assert [e["tx_data"] for e in by_tx[f"{sid}.3"]] == [["mail"]]
    assert [e["tx_data"] for e in by_tx[f"{sid}.4"]] == [["mail"], ["mail", "rcpt"], ["mail", "rcpt", "data"]]
    assert [e["tx"]["sender"] for e in by_tx[f"{sid}.4"]] == ["four@example.test"] * 3
    # conn.data keeps growing across all of them.
    assert entries[-1]["conn_data"] == hooks
    assert entries[8]["conn"]["helo"] == "client.test" and entries[8]["hostname"] == "again.test"
    assert entries[9]["conn"]["helo"] == "again.test"
    one, two = aiosmtpd_upstream.wait_messages(2)
    assert (one["mail_from"], two["mail_from"]) == ("two@example.test", "four@example.test")


def test_on_disconnect_runs_when_the_client_just_leaves(policy_daemon, aiosmtpd_upstream, tmp_path):
    record = tmp_path / "record.jsonl"
    d = policy_daemon(aiosmtpd_upstream.url, RECORDER, probe={"record": str(record)})
    c = d.connect()
    sid = d.session_id(c.local_port)
    c.exchange("MAIL FROM:<a@example.test>", 250, "2.1.0")
    c.exchange("RCPT TO:<b@example.test>", 250, "2.1.5")
    c.close()  # no QUIT, in the middle of a transaction
    entries = records(record)
    assert [e["hook"] for e in entries] == ["connect", "helo", "mail", "rcpt", "disconnect"]
    assert entries[-1]["conn"]["id"] == sid
    d.wait_log(rf"{sid}: disconnect from \[127\.0\.0\.1\]")
    assert aiosmtpd_upstream.envelopes == []


ORDER_A = """
    import portcullis as pc

    def note(text):
        with open(pc.config["probe"]["record"], "a") as f:
            f.write(text + "\\n")

    def on_connect(conn):
        note("A connect")

    def on_mail(tx, sender):
        note(f"A mail {sender}")
        if sender.local == "a-accepts":
            return pc.accept("A accepted the sender")
        if sender.local == "rewrite":
            tx.sender = "rewritten@example.test"  # and no opinion: B decides, and sees the rewrite

    def on_rcpt(tx, rcpt):
        note(f"A rcpt {rcpt}")
        if rcpt.local == "a-rejects":
            return pc.reject("A says no", code=550, status="5.7.1")
        return None

    def on_data(tx, message):
        note("A data")
        message.add_header("X-A", "1")
"""

ORDER_B = """
    import portcullis as pc

    def note(text):
        with open(pc.config["probe"]["record"], "a") as f:
            f.write(text + "\\n")

    async def on_mail(tx, sender):
        note(f"B mail {sender} tx.sender={tx.sender}")
        if sender.local == "b-rejects":
            return pc.reject("B refuses the sender", code=553, status="5.7.1")

    def on_rcpt(tx, rcpt):
        note(f"B rcpt {rcpt}")
        if rcpt.local in ("a-rejects", "b-rejects"):
            return pc.reject("B says no", code=551, status="5.7.2")

    def on_data(tx, message):
        note(f"B data X-A={message.get('X-A')}")
        message.add_header("X-B", "2")

    def on_disconnect(conn):
        note("B disconnect")
"""


def test_two_policies_in_order_first_verdict_wins(policy_daemon, aiosmtpd_upstream, tmp_path):
    record = tmp_path / "notes.txt"
    d = policy_daemon(aiosmtpd_upstream.url, ORDER_A, ORDER_B, probe={"record": str(record)})
    with d.connect() as c:
        # B decides when A has no opinion.
        exact(c.exchange("MAIL FROM:<b-rejects@example.test>", 553), 553, "5.7.1", "B refuses the sender")
        # A's accept decides: B is not asked; the upstream's 250 with A's text.
        exact(c.exchange("MAIL FROM:<a-accepts@example.test>", 250), 250, "2.1.0", "A accepted the sender")
        exact(c.exchange("RCPT TO:<a-rejects@example.test>", 550), 550, "5.7.1", "A says no")
        exact(c.exchange("RCPT TO:<b-rejects@example.test>", 551), 551, "5.7.2", "B says no")
        exact(c.exchange("RCPT TO:<ok@example.test>", 250), 250, "2.1.5", "Recipient ok (aiosmtpd)")
        c.exchange("DATA", 354)
        c.send(b"Subject: order\r\n\r\nbody\r\n.\r\n")
        exact(c.reply(), 250, "2.0.0", "Ok: queued as AIO00001 (aiosmtpd)")
        # Every policy is asked again at the next stage; a rewrite by A (returning None) is seen by B.
        r = c.transaction("rewrite@example.test", ["ok2@example.test"], b"Subject: two\r\n\r\nbody")
        exact(r, 250, "2.0.0", "Ok: queued as AIO00002 (aiosmtpd)")
        c.exchange("QUIT", 221)
    wait_until(lambda: "B disconnect\n" in complete_text(record), what="B's on_disconnect")
    assert complete_text(record).splitlines() == [
        "A connect",
        "A mail b-rejects@example.test",
        "B mail b-rejects@example.test tx.sender=b-rejects@example.test",
        "A mail a-accepts@example.test",
        "A rcpt a-rejects@example.test",
        "A rcpt b-rejects@example.test",
        "B rcpt b-rejects@example.test",
        "A rcpt ok@example.test",
        "B rcpt ok@example.test",
        "A data",
        "B data X-A=1",
        "A mail rewrite@example.test",
        "B mail rewrite@example.test tx.sender=rewritten@example.test",
        "A rcpt ok2@example.test",
        "B rcpt ok2@example.test",
        "A data",
        "B data X-A=1",
        "B disconnect",
    ]
    one, two = aiosmtpd_upstream.wait_messages(2)
    assert (one["mail_from"], one["rcpt_tos"]) == ("a-accepts@example.test", ["ok@example.test"])
    # Rewrites accumulate: A's X-A, then B's X-B on top of it.
    assert content_without_received(one["content"]) == b"X-B: 2\r\nX-A: 1\r\nSubject: order\r\n\r\nbody\r\n"
    assert (two["mail_from"], two["rcpt_tos"]) == ("rewritten@example.test", ["ok2@example.test"])
    # Only the rejected MAIL never went upstream; the rewritten sender went as rewritten.
    assert [m for m, _ in aiosmtpd_upstream.handler.mails] == ["a-accepts@example.test", "rewritten@example.test"]


def test_pc_log_lines_carry_the_session_id(policy_daemon, aiosmtpd_upstream):
    d = policy_daemon(aiosmtpd_upstream.url, """
        import asyncio
        import portcullis as pc

        pc.log.info("loading with tag %s", pc.config["probe"]["tag"])

        async def on_helo(conn, hostname):
            await asyncio.sleep(0)
            pc.log.info("async helo %s from %s:%d", hostname, conn.client_ip, conn.client_port)

        def on_mail(tx, sender):
            pc.log.warning("plain mail %s in %s", sender, tx.id)
    """, probe={"tag": "t-42"})
    d.wait_log(r" info policy: loading with tag t-42$")
    with d.connect("logging.test") as c:
        port = c.local_port
        sid = d.session_id(port)
        c.exchange("MAIL FROM:<a@example.test>", 250, "2.1.0")
    d.wait_log(rf"^\S+ info {sid}: async helo logging\.test from 127\.0\.0\.1:{port}$")
    d.wait_log(rf"^\S+ warning {sid}: plain mail a@example\.test in {sid}\.1$")


def test_pipelined_commands_with_async_hooks_get_their_replies_in_order(policy_daemon, aiosmtpd_upstream):
    d = policy_daemon(aiosmtpd_upstream.url, """
        import asyncio
        import portcullis as pc

        async def on_rcpt(tx, rcpt):
            await asyncio.sleep(0.05)
            if rcpt.local == "no":
                return pc.reject(f"not {rcpt}", code=550, status="5.1.1")
            tx.data.setdefault("order", []).append(rcpt.local)

        def on_data(tx, message):
            message.add_header("X-Order", " ".join(tx.data["order"]))
    """)
    with d.connect() as c:
        c.send(b"MAIL FROM:<a@example.test>\r\nRCPT TO:<r1@example.test>\r\nRCPT TO:<no@example.test>\r\n"
               b"RCPT TO:<r2@example.test>\r\nRCPT TO:<r3@example.test>\r\nDATA\r\n")
        replies = [c.reply().raw for _ in range(6)]
        assert replies == [
            b"250 2.1.0 Sender ok (aiosmtpd)\r\n",
            b"250 2.1.5 Recipient ok (aiosmtpd)\r\n",
            b"550 5.1.1 not no@example.test\r\n",
            b"250 2.1.5 Recipient ok (aiosmtpd)\r\n",
            b"250 2.1.5 Recipient ok (aiosmtpd)\r\n",
            b"354 End data with <CR><LF>.<CR><LF>\r\n",
        ]
        c.send(b"Subject: pipelined\r\n\r\nbody\r\n.\r\n")
        exact(c.reply(), 250, "2.0.0", "Ok: queued as AIO00001 (aiosmtpd)")
    [env] = aiosmtpd_upstream.wait_messages(1)
    assert env["rcpt_tos"] == ["r1@example.test", "r2@example.test", "r3@example.test"]
    assert content_without_received(env["content"]) == b"X-Order: r1 r2 r3\r\nSubject: pipelined\r\n\r\nbody\r\n"


def test_async_stages_each_in_a_context_of_its_own_whatever_task_they_share_or_cancel(policy_daemon,
                                                                                      aiosmtpd_upstream):
    # Stages whose hooks never wait share one task, left waiting between them
    # (docs/policy-engine.md); each still runs in a contextvars context of its
    # own, a stage that waits keeps a task to itself, and a hook that cancels
    # the tasks earlier stages ran in costs nobody their mail (a task a hook
    # kept ended with its stage: it was not passed on to run another).
    d = policy_daemon(aiosmtpd_upstream.url, """
        import asyncio
        import contextvars
        import portcullis as pc

        seen = contextvars.ContextVar("seen", default=None)
        tasks = []

        async def on_helo(conn, hostname):
            conn.data["helo saw"] = seen.get()
            seen.set(hostname)
            tasks.append(asyncio.current_task())

        async def on_mail(tx, sender):
            tx.data["mail saw"] = seen.get()
            seen.set(str(sender))
            if sender.local == "wait":
                await asyncio.sleep(0.05)
                tx.data["mail saw after waiting"] = seen.get()
            if sender.local == "cancel":
                for task in tasks:
                    if task is not asyncio.current_task():
                        task.cancel()
                tasks.clear()

        async def on_rcpt(tx, rcpt):
            saw = [tx.conn.data["helo saw"], tx.data["mail saw"], seen.get()]
            if tx.data.get("mail saw after waiting", str(tx.sender)) != str(tx.sender) or any(saw):
                return pc.reject(f"a stage saw another stage's variable: {saw}", code=550, status="5.7.0")
    """)
    senders = ["a", "wait", "a", "cancel", "wait", "cancel", "a"]
    for n, who in enumerate(senders):
        with d.connect() as c:
            c.exchange(f"MAIL FROM:<{who}@example.test>", 250, "2.1.0")
            exact(c.exchange(f"RCPT TO:<r{n}@example.test>", 250), 250, "2.1.5", "Recipient ok (aiosmtpd)")
            c.exchange("DATA", 354)
            c.send(b"Subject: shared tasks\r\n\r\nbody\r\n.\r\n")
            assert c.reply().code == 250
    envelopes = aiosmtpd_upstream.wait_messages(len(senders))
    assert sorted(e["rcpt_tos"][0] for e in envelopes) == sorted(f"r{n}@example.test" for n in range(len(senders)))
    log = d.log_text()
    assert " error " not in log and "destroyed but it is pending" not in log and "Traceback" not in log

"""[log] format = "json": every line the daemon writes is one JSON object
with its time, level, session and the event's key=value words as fields
(issue 11), in one process and under a supervisor with workers; nothing a
client or a policy writes can break a record or forge another."""

from __future__ import annotations

import json
import re

import pytest

POLICY = """
    import portcullis as pc

    def on_mail(tx, sender):
        pc.log.info("checking %s\\n2026-12-02T00:00:00.000Z critical forged", sender)
"""


def records(d) -> list[dict]:
    lines = d.log_text().splitlines()
    assert lines
    out = []
    for line in lines:
        r = json.loads(line)  # every line, not only ours
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", r["time"]), r
        assert r["level"] in ("trace", "debug", "info", "warning", "error", "critical"), r
        assert isinstance(r["msg"], str)
        out.append(r)
    return out


@pytest.mark.parametrize("workers", [1, 2])
def test_every_line_is_a_json_record_with_the_transactions_fields(policy_daemon, aiosmtpd_upstream, workers):
    d = policy_daemon(aiosmtpd_upstream.url, POLICY, log={"format": "json"}, server={"workers": workers})
    with d.connect() as c:
        r = c.transaction("ann@example.test", ["bob@example.test"], b"Subject: json\r\n\r\nbody")
        assert r.code == 250, r
        c.exchange("QUIT", 221)
    d.wait_log(r'"verdict":"delivered"')
    recs = records(d)
    summary = [r for r in recs if r.get("verdict") == "delivered"]
    assert len(summary) == 1
    s = summary[0]
    assert re.fullmatch(r"[0-9A-F]{12}", s["session"])
    assert s["tx"].startswith(s["session"] + ".")
    assert s["client"] == "[127.0.0.1]"
    assert s["from"] == "<ann@example.test>"
    assert s["to"] == "<bob@example.test>"
    assert s["queue_id"] and s["upstream"].startswith("250")
    assert s["level"] == "info"
    # The policy's line: its session, and the line feed it wrote stays inside the record.
    (checked,) = [r for r in recs if r["msg"].startswith("checking ")]
    assert checked["session"] == s["session"]
    assert checked["msg"] == "checking ann@example.test\n2026-12-02T00:00:00.000Z critical forged"
    assert not any(r["level"] == "critical" for r in recs)
    # Every line of the session says where it stands: its client and stage (and transaction, in one).
    ours = [r for r in recs if r.get("session") == s["session"] and r is not checked]
    assert ours and all(r["client"] == "[127.0.0.1]" and r["stage"] for r in ours), ours
    (connect,) = [r for r in ours if r["msg"].startswith("connect from")]
    assert connect["stage"] == "connected" and "tx" not in connect
    assert s["stage"] == "data"
    # Under a supervisor every line says which process wrote it.
    if workers > 1:
        assert all("pid" in r for r in recs if "session" in r), recs
        assert isinstance(s["pid"], int)


def test_check_config_accepts_json(portcullis_bin, tmp_path):
    import subprocess

    cfg = tmp_path / "p.toml"
    cfg.write_text('[server]\nhostname = "mx.test"\nlisten = ["127.0.0.1:2525"]\n'
                   '[upstream]\nurl = "smtp://127.0.0.1:25"\n[log]\nformat = "json"\nlevel = "info"\n')
    p = subprocess.run([str(portcullis_bin), "--check-config", str(cfg)], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    assert p.stdout == f"{cfg}: ok\n"


FORGED_SENDER = '"a> verdict=delivered queue_id=Q1 to=<boss@local.test> x"@example.test'


def test_a_senders_quoted_local_part_sets_no_field(start_daemon, aiosmtpd_upstream):
    """A quoted local part that reads like the rest of a summary line stays in
    its own field (its space, quote and angle brackets escaped), in text and in
    JSON: the record's verdict, to and queue_id are the transaction's."""
    d = start_daemon(aiosmtpd_upstream.url, log={"format": "json"}, relay={"local_domains": ["local.test"]})
    with d.connect() as c:
        c.exchange(f"MAIL FROM:<{FORGED_SENDER}>", 250)
        c.exchange("RCPT TO:<v@foreign.test>", 554, "5.7.1")
        c.exchange("QUIT", 221)
    d.wait_log(r'"tx":"[0-9A-F]{12}\.1"[^\n]*"verdict"')
    (s,) = [r for r in records(d) if "verdict" in r]
    assert s["verdict"] == "rejected", s
    assert s["to"] == "", s
    assert s["queue_id"] == "-", s
    assert s["helo"] == "client.test", s
    assert s["from"] == r"<\x22a\x3e\x20verdict=delivered\x20queue_id=Q1\x20to=\x3cboss@local.test\x3e\x20x\x22@example.test>", s
    assert s["msg"].count("verdict=") == 1 + s["msg"].count(r"\x20verdict=")


def test_a_senders_quoted_local_part_in_a_text_summary(start_daemon, aiosmtpd_upstream):
    d = start_daemon(aiosmtpd_upstream.url)
    with d.connect() as c:
        r = c.transaction(FORGED_SENDER, ["bob@example.test"], b"Subject: q\r\n\r\nbody")
        assert r.code == 250, r
        c.exchange("QUIT", 221)
    (m,) = d.wait_log(r"tx=\S+ client=\S+ helo=\S+ from=(\S+) to=(\S+) rejected_rcpts=0 size=\d+ upstream=\"[^\"]*\" "
                      r"queue_id=\S+ verdict=delivered$")
    assert m.group(1) == r"<\x22a\x3e\x20verdict=delivered\x20queue_id=Q1\x20to=\x3cboss@local.test\x3e\x20x\x22@example.test>"
    assert m.group(2) == "<bob@example.test>"

"""The reply table (tests/python/reply_table.py) against the built daemon,
with an upstream that answers in the harness's words; the same table runs
against portcullis.testing's Harness in tests/python/test_reply_table.py,
so the two cannot drift (issue 7)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))

from reply_table import CASES, IDS, UPSTREAM_SCRIPT, Case, auth_plain  # noqa: E402


def play(c, step):
    if step.command == "CONNECT":
        return c.reply()
    if step.command.startswith("AUTH "):
        mechanism, user, password = step.command.split(" ")[1:]
        assert mechanism == "PLAIN"
        c.cmd(auth_plain(user, password))
        return c.reply()
    c.cmd(step.command)
    r = c.reply()
    if step.command == "DATA" and r.code == 354:
        c.send(step.message + b".\r\n")
        r = c.reply()
    return r


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_reply_table_on_the_daemon(case: Case, policy_daemon, fake_upstream, request):
    if case.daemon_xfail:
        request.applymarker(pytest.mark.xfail(reason=case.daemon_xfail, strict=True))
    upstream = fake_upstream(dict(UPSTREAM_SCRIPT))
    d = policy_daemon(upstream.url, case.source, **case.tables)
    with d.client() as c:
        for step in case.steps:
            r = play(c, step)
            got = (r.code, r.status, r.text if step.text is not None else None)
            assert got == (step.code, step.status, step.text), f"{step.command}: {r}"
    if case.delivered:
        upstream.wait_for(lambda: len(upstream.messages) >= len(case.delivered))
    assert tuple((m.mail_from, tuple(m.rcpt_tos)) for m in upstream.messages) == case.delivered

"""The reply table (reply_table.py) against portcullis.testing's Harness; the
same table runs against the built daemon in tests/e2e/test_reply_table.py."""

import pytest
from reply_table import CASES, IDS, Case

from portcullis.testing import Harness


def play(session, step):
    verb = step.command.split(" ", 1)[0]
    arg = step.command[len(verb) + 1:]
    if verb == "EHLO":
        return session.ehlo(arg)
    if verb == "AUTH":
        mechanism, user, password = arg.split(" ")
        return session.auth(user, password, mechanism)
    if verb == "MAIL":
        return session.mail(arg.removeprefix("FROM:<").removesuffix(">"))
    if verb == "RCPT":
        return session.rcpt(arg.removeprefix("TO:<").removesuffix(">"))
    if verb == "DATA":
        return session.data(step.message)
    if verb == "RSET":
        return session.rset()
    if verb == "QUIT":
        return session.quit()
    raise AssertionError(f"no such step: {step.command}")


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_reply_table_on_the_harness(case: Case, tmp_path):
    policy = tmp_path / "policy.py"
    policy.write_text(case.source)
    with Harness([policy], config=case.tables, hostname="mx.test") as h:
        session = h.connect()
        for step in case.steps:
            reply = session.greeting if step.command == "CONNECT" else play(session, step)
            got = (reply.code, reply.status, reply.text if step.text is not None else None)
            assert got == (step.code, step.status, step.text), step.command
        assert tuple((d.sender, d.recipients) for d in h.deliveries) == case.delivered

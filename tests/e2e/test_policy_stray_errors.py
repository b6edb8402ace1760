"""What no policy code catches reaches the daemon's log as log records: an
exception raised in a policy object's __del__ (Python's "Exception ignored
in", via sys.unraisablehook) and a "coroutine ... was never awaited"
RuntimeWarning (warnings.showwarning), each one record tagged with the
session whose hook was running; never bare lines on stderr without a
timestamp or session id."""

from __future__ import annotations

import re

POLICY = """
    class Doomed:
        def __del__(self):
            raise RuntimeError("in __del__")

    async def forgotten():
        pass

    def on_mail(tx, sender):
        forgotten()

    async def on_rcpt(tx, rcpt):
        Doomed()
"""

# Every line the daemon writes: a timestamp and a level first.
LOG_LINE = re.compile(r"^\S+ (?:debug|info|warning|error|critical) ")


def test_an_exception_in_del_and_a_coroutine_never_awaited_are_log_records(policy_daemon, aiosmtpd_upstream):
    d = policy_daemon(aiosmtpd_upstream.url, POLICY)
    path = re.escape(str(d.policy_files[0]))
    with d.connect() as c:
        sid = d.session_id(c.local_port)
        c.exchange("MAIL FROM:<ann@example.test>", 250)
        c.exchange("RCPT TO:<bob@example.test>", 250)
        c.exchange("QUIT", 221)
    d.wait_log(rf"^\S+ warning {sid}: {path}:10: RuntimeWarning: coroutine 'forgotten' was never awaited\n"
               rf"\S+ warning {sid}:   forgotten\(\)$")
    d.wait_log(rf"^\S+ error {sid}: Exception ignored in: <function Doomed\.__del__ at 0x[0-9a-f]+>\n"
               rf"\S+ error {sid}: Traceback \(most recent call last\):\n"
               rf"\S+ error {sid}:   File \"{path}\", line 4, in __del__\n"
               rf"(?:\S+ error {sid}: .*\n)*?"
               rf"\S+ error {sid}: RuntimeError: in __del__$")
    assert d.stop() == 0
    bare = [line for line in d.log_text().splitlines() if not LOG_LINE.match(line)]
    assert bare == []

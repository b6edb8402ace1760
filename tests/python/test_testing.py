"""portcullis.testing.Harness: scripted dialogues through the engine, replies as the daemon gives them."""

import threading
from pathlib import Path

import pytest

from portcullis.testing import Delivery, Harness, PolicyLoadError, Reply, SessionClosed

MSG = b"Subject: hello\r\nFrom: a@example.test\r\n\r\nHi there\r\n"


@pytest.fixture
def harness(policy_file):
    made = []

    def make(source="", **kw):
        h = Harness([policy_file(source)], **kw)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


def test_default_dialogue(harness):
    h = harness()
    s = h.connect(client_ip="198.51.100.7")
    assert s.greeting == (220, "", "mx.example.test ESMTP Portcullis")
    ehlo = s.ehlo("client.example")
    assert ehlo.code == 250 and ehlo.text.split("\n") == [
        "mx.example.test Hello client.example [198.51.100.7]", "PIPELINING", "SIZE 52428800", "8BITMIME",
        "SMTPUTF8", "ENHANCEDSTATUSCODES"]
    assert s.mail("a@example.test") == (250, "2.1.0", "Ok")
    assert s.rcpt("b@example.test") == (250, "2.1.5", "Ok")
    assert s.rcpt("c@example.test") == (250, "2.1.5", "Ok")
    assert s.data(MSG) == (250, "2.0.0", "Ok")
    assert s.delivered == [Delivery("a@example.test", ("b@example.test", "c@example.test"), MSG)]
    assert h.deliveries == s.delivered
    assert s.noop() == (250, "2.0.0", "Ok") and s.rset() == (250, "2.0.0", "Ok")
    assert s.quit() == (221, "2.0.0", "mx.example.test Bye")
    assert s.closed
    with pytest.raises(SessionClosed):
        s.mail("a@example.test")
    assert str(Reply(250, "2.1.0", "Ok")) == "250 2.1.0 Ok"


def test_sequence_and_syntax_replies_are_the_daemons(harness):
    s = harness().connect()
    assert s.mail("a@example.test") == (503, "5.5.1", "Send EHLO or HELO first")
    assert s.ehlo("") == (501, "5.5.4", "Syntax: EHLO hostname")
    assert s.helo("bad host") == (501, "5.5.2", "Invalid hostname")
    assert s.helo("client.example") == (250, "", "mx.example.test")
    assert s.rcpt("b@example.test") == (503, "5.5.1", "Need MAIL before RCPT")
    assert s.data(MSG) == (503, "5.5.1", "Need MAIL before DATA")
    assert s.mail("not an address") == (501, "5.1.7", "Bad sender address syntax")
    assert s.mail("") == (250, "2.1.0", "Ok")
    assert s.mail("a@example.test") == (503, "5.5.1", "Nested MAIL command")
    assert s.rcpt("bad") == (501, "5.1.3", "Bad recipient address syntax")
    assert s.data(MSG) == (554, "5.5.1", "No valid recipients")
    assert s.rcpt("Postmaster") == (250, "2.1.5", "Ok")
    assert s.data(b"Subject: x\r\n\r\nnul \x00\r\n") == (550, "5.6.0", "Message refused: NUL byte in message")
    assert s.delivered == []


def test_verdict_replies_are_exact(harness):
    h = harness("""
        import portcullis as pc
        def on_mail(tx, sender):
            if sender.local == "spammer":
                return pc.reject("Go away", code=553, status="5.7.1")
            if sender.local == "grey":
                return pc.tempfail("Greylisted, try again", code=450, status="4.2.0")
            if sender.local == "vip":
                return pc.accept("Welcome, VIP")
        def on_rcpt(tx, rcpt):
            if rcpt.local == "nobody":
                return pc.reject("No such user", status="5.1.1")
        def on_data(tx, message):
            if message.get("Subject") == "spam":
                return pc.reject("Looks like spam", code=554, status="5.7.1")
            return pc.accept("Queued, thanks")
    """)
    s = h.connect(helo="client.example")
    assert s.mail("spammer@example.test") == (553, "5.7.1", "Go away")
    assert s.mail("grey@example.test") == (450, "4.2.0", "Greylisted, try again")
    assert s.mail("vip@example.test") == (250, "2.1.0", "Welcome, VIP")
    assert s.rcpt("nobody@example.test") == (550, "5.1.1", "No such user")
    assert s.rcpt("b@example.test") == (250, "2.1.5", "Ok")
    assert s.data(b"Subject: spam\r\n\r\nbuy\r\n") == (554, "5.7.1", "Looks like spam")
    assert s.delivered == []
    s.mail("a@example.test")
    s.rcpt("b@example.test")
    assert s.data(MSG) == (250, "2.0.0", "Queued, thanks")
    assert len(s.delivered) == 1


def test_connect_refusal_closes_the_session(harness):
    h = harness("""
        import portcullis as pc
        def on_connect(conn):
            if conn.client_ip == "203.0.113.1":
                return pc.reject("You are listed")
            if conn.client_ip == "203.0.113.2":
                return pc.tempfail("Too busy")
            return pc.accept("Hi there")
    """)
    s = h.connect(client_ip="203.0.113.1", helo="x.example")
    assert s.greeting == (554, "5.7.1", "You are listed") and s.closed  # RFC 5321 §3.1: 554
    with pytest.raises(SessionClosed):
        s.ehlo("x.example")
    assert h.connect(client_ip="203.0.113.2").greeting == (421, "4.7.1", "Too busy")
    assert h.connect().greeting == (220, "", "mx.example.test Hi there")


def test_helo_refusal(harness):
    h = harness("""
        import portcullis as pc
        def on_helo(conn, hostname):
            if hostname == "localhost":
                return pc.reject("Liar", code=550, status="5.7.1")
    """)
    s = h.connect()
    assert s.ehlo("localhost") == (550, "5.7.1", "Liar")
    assert s.mail("a@example.test") == (503, "5.5.1", "Send EHLO or HELO first")
    assert s.ehlo("good.example").code == 250


def test_discard_and_redirect(harness):
    h = harness("""
        import portcullis as pc
        def on_rcpt(tx, rcpt):
            if rcpt.local == "blackhole":
                return pc.discard()
            if rcpt.local == "team":
                return pc.redirect("ann@example.test", "bob@example.test")
    """)
    s = h.connect(helo="c.example")
    s.mail("a@example.test")
    assert s.rcpt("blackhole@example.test") == (250, "2.1.5", "Ok")
    assert s.rcpt("team@example.test") == (250, "2.1.5", "Ok")
    assert s.rcpt("bob@example.test") == (250, "2.1.5", "Ok")  # already a target: delivered once
    assert s.data(MSG) == (250, "2.0.0", "Ok")
    assert s.delivered[0].recipients == ("ann@example.test", "bob@example.test")
    # only discarded recipients: DATA goes through, nothing is delivered
    s.mail("a@example.test")
    s.rcpt("blackhole@example.test")
    assert s.data(MSG) == (250, "2.0.0", "Ok: discarded")
    assert len(s.delivered) == 1


def test_discard_at_data(harness):
    h = harness("import portcullis as pc\ndef on_data(tx, message): return pc.discard()\n")
    s = h.connect(helo="c.example")
    s.mail("a@example.test")
    s.rcpt("b@example.test")
    assert s.data(MSG) == (250, "2.0.0", "Ok: discarded")
    assert h.deliveries == []


def test_rewrites_across_stages_reach_the_delivery(harness):
    h = harness("""
        import portcullis as pc
        def on_mail(tx, sender):
            tx.sender = "bounces+" + sender.local + "@lists.example.test"
        def on_rcpt(tx, rcpt):
            assert str(tx.sender).startswith("bounces+")  # the mail stage's rewrite is in force
            if rcpt.local == "archive":
                tx.recipients.append("copy@archive.example.test")
        def on_data(tx, message):
            tx.recipients.remove(pc.Address("drop@example.test"))
            message.add_header("X-List", "yes")
            message.replace_header("Subject", "[list] " + message.get("Subject"))
    """)
    s = h.connect(helo="c.example")
    s.mail("alice@example.test")
    s.rcpt("archive@example.test")
    s.rcpt("drop@example.test")
    assert s.data(MSG) == (250, "2.0.0", "Ok")
    d = s.delivered[0]
    assert d.sender == "bounces+alice@lists.example.test"
    assert d.recipients == ("copy@archive.example.test", "archive@example.test")
    assert d.message == b"X-List: yes\r\nSubject: [list] hello\r\nFrom: a@example.test\r\n\r\nHi there\r\n"
    assert d.as_email()["Subject"] == "[list] hello"


def test_errors_tempfail_by_default(harness):
    h = harness("""
        import time
        def on_mail(tx, sender):
            if sender.local == "crash":
                raise RuntimeError("bug in policy")
            if sender.local == "hang":
                time.sleep(0.5)
        async def on_data(tx, message):
            return "not a verdict"
    """, timeout=0.1)
    s = h.connect(helo="c.example")
    assert s.mail("crash@example.test") == (451, "4.3.0", "Temporary policy failure, try again later")
    assert s.mail("hang@example.test") == (451, "4.3.0", "Temporary policy failure, try again later")
    assert s.mail("fine@example.test").code == 250  # the session lives on
    s.rcpt("b@example.test")
    assert s.data(MSG) == (451, "4.3.0", "Temporary policy failure, try again later")
    assert s.delivered == []
    errors = [line for line in h.logs if line.level >= 40]
    assert len(errors) == 3 and all(line.session_id == s.id for line in errors)
    assert "RuntimeError: bug in policy" in errors[0].message
    assert "policy.timeout" in errors[1].message
    assert "returned 'not a verdict'" in errors[2].message


def test_an_async_hook_that_answers_past_the_timeout_fails_as_a_plain_one_does(harness):
    # A step that blocks (a synchronous call in an async def) past policy.timeout cannot be
    # cancelled: its answer, whatever it is, comes too late, as a plain hook's would.
    h = harness("""
        import asyncio, time
        import portcullis as pc
        async def on_mail(tx, sender):
            if sender.local == "waits":
                await asyncio.sleep(0)
            if sender.local != "quick":
                time.sleep(0.3)
            if sender.local == "none":
                return None
            return pc.reject("a verdict too late", code=550, status="5.7.1")
    """, timeout=0.1)
    s = h.connect(helo="c.example")
    for local in ("blocks", "waits", "none"):  # in its first step; in its last; no verdict
        assert s.mail(f"{local}@example.test") == (451, "4.3.0", "Temporary policy failure, try again later"), local
        assert "ran past policy.timeout (0.1 s); its answer came too late" in h.logs[-1].message, local
    assert s.mail("quick@example.test") == (550, "5.7.1", "a verdict too late")


def test_on_error_accept_proceeds_without_the_rewrites(harness):
    h = harness("""
        def on_mail(tx, sender):
            tx.sender = "rewritten@example.test"
            raise RuntimeError("oops")
    """, on_error="accept")
    s = h.connect(helo="c.example")
    assert s.mail("a@example.test") == (250, "2.1.0", "Ok")
    s.rcpt("b@example.test")
    s.data(MSG)
    assert s.delivered[0].sender == "a@example.test"


BREAKS_ITS_TASK = """
    import asyncio
    async def on_mail(tx, sender):
        if sender.local.startswith("later-"):
            await asyncio.sleep(0)  # past its first step
        what = sender.local.removeprefix("later-")
        if what == "genexit":
            raise GeneratorExit("the hook's own")
        if what == "cancel":
            asyncio.current_task().cancel()
            await asyncio.sleep(0)
        if what == "cancel-and-return":  # takes effect once the task waits or ends: not a failure
            asyncio.current_task().cancel()
"""
BLOCKLIST = """
    import portcullis as pc
    async def on_mail(tx, sender):
        return pc.reject("blocked by the second policy", code=553, status="5.7.1")
"""
# The same after a wait of its own: a cancel the hook before it left pending landed here,
# blaming this hook (its CancelledError, logged as its failure).
BLOCKLIST_AFTER_A_WAIT = """
    import asyncio
    import portcullis as pc
    async def on_mail(tx, sender):
        await asyncio.sleep(0)
        return pc.reject("blocked by the second policy", code=553, status="5.7.1")
"""


@pytest.mark.parametrize("on_error", ["accept", "tempfail"])
@pytest.mark.parametrize("what", ["genexit", "later-genexit", "cancel", "later-cancel", "cancel-and-return",
                                  "later-cancel-and-return"])
@pytest.mark.parametrize("second", [BLOCKLIST, BLOCKLIST_AFTER_A_WAIT], ids=["second", "second-waits"])
def test_a_hook_that_raises_generator_exit_or_cancels_its_own_task_fails_as_any_other(policy_file, on_error, what,
                                                                                        second):
    # Whatever a hook raises is its failure (the engine's own close or cancel of the task is
    # not): logged with its traceback, and with on_error = "accept" the policies after it decide.
    with Harness([policy_file(BREAKS_ITS_TASK), policy_file(second)], on_error=on_error) as h:
        s = h.connect(helo="c.example")
        reply = s.mail(f"{what}@example.test")
        errors = [line.message for line in h.logs if line.level >= 40]
        if what.endswith("cancel-and-return"):
            assert reply == (553, "5.7.1", "blocked by the second policy") and errors == []
            return
        if on_error == "accept":
            assert reply == (553, "5.7.1", "blocked by the second policy")
        else:
            assert reply == (451, "4.3.0", "Temporary policy failure, try again later")
        assert len(errors) == 1 and errors[0].startswith("on_mail in ") and "raised an exception:" in errors[0]
        assert "Traceback (most recent call last):" in errors[0] and "in on_mail" in errors[0]
        assert ("GeneratorExit: the hook's own" if "genexit" in what else "CancelledError") in errors[0]
        assert s.mail("ok@example.test") == (553, "5.7.1", "blocked by the second policy")  # the session goes on


def test_a_hook_that_stops_the_loop_or_interrupts_it_is_ignored_as_by_the_daemon(harness):
    # The harness runs the daemon's loop the daemon's way: on a loop of asyncio's own, stop()
    # (or a KeyboardInterrupt out of a callback) stopped it, and the harness hung for good.
    h = harness("""
        import asyncio
        async def on_mail(tx, sender):
            if sender.local == "stop":
                asyncio.get_running_loop().stop()
            if sender.local == "interrupt":
                def interrupt():
                    raise KeyboardInterrupt
                asyncio.get_running_loop().call_soon(interrupt)
    """)
    replies = []
    for local in ("stop", "interrupt", "ok"):
        asking = threading.Thread(target=lambda: replies.append(h.connect(helo="c.example").mail(f"{local}@example.test")),
                                  daemon=True)
        asking.start()
        asking.join(5)
        assert not asking.is_alive(), f"the harness hung after {local}"
    assert [r.code for r in replies] == [250, 250, 250]
    messages = [line.message for line in h.logs]
    assert any("called stop() on the policy engine's event loop: ignored" in m for m in messages)
    assert any("event loop went on after KeyboardInterrupt out of a callback" in m for m in messages)


def test_connect_error_gives_421(harness):
    h = harness("def on_connect(conn): raise ValueError('x')\n")
    assert h.connect().greeting == (421, "4.3.0", "Temporary policy failure, try again later")


def test_auth(harness):
    h = harness("""
        import portcullis as pc
        USERS = {"alice": "secret"}
        def on_auth(conn, mechanism, username, password):
            if username == "locked":
                return pc.tempfail("Account locked", code=454, status="4.7.0")
            return USERS.get(username) == password if username in USERS else None
        def on_mail(tx, sender):
            if tx.conn.auth_user is None:
                return pc.reject("Authenticate first", code=530, status="5.7.0")
    """)
    s = h.connect()
    assert s.auth("alice", "secret") == (503, "5.5.1", "Send EHLO first")
    s.ehlo("c.example")
    assert s.mail("alice@example.test") == (530, "5.7.0", "Authenticate first")
    assert s.auth("alice", "wrong") == (535, "5.7.8", "Authentication credentials invalid")
    assert s.auth("mallory", "x") == (535, "5.7.8", "Authentication credentials invalid")
    assert s.auth("locked", "x") == (454, "4.7.0", "Account locked")
    assert s.auth("alice", "secret") == (235, "2.7.0", "Authentication successful")
    assert s.auth("alice", "secret") == (503, "5.5.1", "Already authenticated")
    assert s.mail("alice@example.test").code == 250
    # a connection can start authenticated (and with TLS)
    s2 = h.connect(helo="c.example", tls=True, auth_user="bob")
    assert s2.mail("bob@example.test").code == 250


def test_connection_data_and_state(harness):
    h = harness("""
        import portcullis as pc
        def on_connect(conn):
            conn.data["mails"] = 0
        def on_mail(tx, sender):
            tx.conn.data["mails"] += 1
            return pc.accept(f"{tx.conn.helo} tls={tx.conn.tls} port={tx.conn.client_port}")
    """)
    s = h.connect(helo="c.example", tls=True, client_port=1234)
    assert s.mail("a@example.test") == (250, "2.1.0", "c.example tls=True port=1234")
    s.rset()
    s.mail("a@example.test")
    assert s.conn.data == {"mails": 2}
    s.quit()
    assert s.conn is None


def test_disconnect_runs_on_quit_close_and_harness_close(harness):
    h = harness("""
        import portcullis as pc
        def on_disconnect(conn):
            pc.log.info("bye %s", conn.id)
    """)
    a, b, c = h.connect(), h.connect(), h.connect()
    a.quit()
    b.close()
    h.close()
    assert sorted(line.message for line in h.logs) == [f"bye {a.id}", f"bye {b.id}", f"bye {c.id}"]


def test_message_line_ends_are_normalised(harness):
    h = harness()
    s = h.connect(helo="c.example")
    s.mail("a@example.test")
    s.rcpt("b@example.test")
    s.data("Subject: é\n\nline one\nline two")
    assert s.delivered[0].message == "Subject: é\r\n\r\nline one\r\nline two\r\n".encode()


def test_config_and_hostname_from_a_config_file(tmp_path):
    (tmp_path / "rules.py").write_text(
        "import portcullis as pc\n"
        "BLOCKED = set(pc.config['rules']['blocked'])\n"
        "def on_mail(tx, sender):\n"
        "    if sender.domain in BLOCKED:\n"
        "        return pc.reject('Blocked domain')\n")
    conf = tmp_path / "portcullis.toml"
    conf.write_text('[server]\nhostname = "mx.test.example"\n\n[policy]\nfiles = ["rules.py"]\ntimeout = 3\n\n'
                    '[rules]\nblocked = ["spam.example"]\n')
    with Harness(config_path=conf) as h:
        assert h.config["rules"]["blocked"] == ["spam.example"]
        assert h.host.engine.timeout == 3
        s = h.connect(helo="c.example")
        assert s.greeting.text.startswith("mx.test.example ")
        assert s.mail("x@spam.example") == (550, "5.7.1", "Blocked domain")
    with Harness(config_path=conf, config={"rules": {"blocked": []}}) as h:
        assert h.connect(helo="c.example").mail("x@spam.example").code == 250


def test_broken_policy_raises_at_construction(policy_file):
    with pytest.raises(PolicyLoadError) as e:
        Harness([policy_file("def on_connect(conn):\n    return pc.accept(\n")])
    assert ":2: SyntaxError" in str(e.value) or ":3: SyntaxError" in str(e.value)


def test_reload_in_the_harness(policy_file, tmp_path):
    path = tmp_path / "v.py"
    path.write_text("import portcullis as pc\ndef on_mail(tx, s): return pc.accept('v1')\n")
    with Harness([path]) as h:
        old = h.connect(helo="c.example")
        path.write_text("import portcullis as pc\ndef on_mail(tx, s): return pc.accept('v2')\n")
        h.reload()
        new = h.connect(helo="c.example")
        assert old.mail("a@example.test").text == "v1"
        assert new.mail("a@example.test").text == "v2"
        path.write_text("this is not python\n")
        with pytest.raises(PolicyLoadError):
            h.reload()
        assert h.connect(helo="c.example").mail("a@example.test").text == "v2"


def test_max_recipients(harness):
    h = harness(config={"server": {"max_recipients": 2}})
    s = h.connect(helo="c.example")
    s.mail("a@example.test")
    s.rcpt("b@example.test")
    s.rcpt("c@example.test")
    assert s.rcpt("d@example.test") == (452, "4.5.3", "Too many recipients")


LIMITS_POLICY = """
    import portcullis as pc
    def on_mail(tx, sender):
        if sender.local == "grow":
            tx.recipients = ["g1@example.test", "g2@example.test", "g3@example.test"]
    def on_rcpt(tx, rcpt):
        if rcpt.local.startswith("void"):
            return pc.discard()
        if rcpt.local == "two":
            return pc.redirect("t1@example.test", "t2@example.test")
        if rcpt.local == "three":
            return pc.redirect("t1@example.test", "t2@example.test", "t3@example.test")
        if rcpt.local == "grow":
            tx.recipients.extend(["g1@example.test", "g2@example.test", "g3@example.test"])
    def on_data(tx, message):
        subject = message.get("Subject")
        if subject == "big body":
            message.body = (b"z" * 98 + b"\\r\\n") * 12
        if subject == "big field":
            message.add_header("X-Filler", "filler " * 150)  # fields on top: the body is kept
        if subject == "grow":
            tx.recipients = ["g1@example.test", "g2@example.test", "g3@example.test"]
"""
POLICY_FAILURE = (451, "4.3.0", "Temporary policy failure, try again later")


def test_discarded_and_redirected_rcpts_count_toward_max_recipients(harness):
    # The daemon counts accepted RCPTs (discarded ones too) and the mailboxes to deliver to.
    h = harness(LIMITS_POLICY, config={"server": {"max_recipients": 2}})
    s = h.connect(helo="c.example")
    s.mail("a@example.test")
    assert s.rcpt("void1@example.test") == (250, "2.1.5", "Ok")
    assert s.rcpt("void2@example.test") == (250, "2.1.5", "Ok")
    assert s.rcpt("b@example.test") == (452, "4.5.3", "Too many recipients")
    s.rset()
    s.mail("a@example.test")
    assert s.rcpt("b@example.test") == (250, "2.1.5", "Ok")
    assert s.rcpt("two@example.test") == (452, "4.5.3", "Too many recipients")  # 1 + 2 targets
    assert s.rcpt("t1@example.test") == (250, "2.1.5", "Ok")
    assert s.data(MSG) == (250, "2.0.0", "Ok")
    assert s.delivered[0].recipients == ("b@example.test", "t1@example.test")


TOO_MANY = (550, "5.5.3", "Too many recipients")


def test_rewrites_past_max_recipients_are_a_policy_error_refused_for_good(harness):
    # As many at every try (an alias list longer than the limit): a 451 had the client retry
    # until the message bounced, days later.
    h = harness(LIMITS_POLICY, config={"server": {"max_recipients": 2}})
    s = h.connect(helo="c.example")
    assert s.mail("grow@example.test") == TOO_MANY
    s.mail("a@example.test")
    assert s.rcpt("three@example.test") == TOO_MANY
    assert s.rcpt("grow@example.test") == TOO_MANY
    assert s.rcpt("b@example.test") == (250, "2.1.5", "Ok")  # none of the failed stages' rewrites stayed
    assert s.data(b"Subject: grow\r\n\r\nhi\r\n") == TOO_MANY
    assert h.deliveries == []
    errors = [line.message for line in h.logs if line.level >= 40 and line.session_id == s.id]
    assert errors == ["policy error in on_mail: policy set 3 recipients; server.max_recipients is 2",
                      "policy error in on_rcpt: redirect to 3 addresses; server.max_recipients is 2",
                      "policy error in on_rcpt: policy set 3 recipients; server.max_recipients is 2",
                      "policy error in on_data: policy set 3 recipients; server.max_recipients is 2"]


def test_rewrites_past_max_recipients_with_on_error_accept(harness):
    h = harness(LIMITS_POLICY, config={"server": {"max_recipients": 2}}, on_error="accept")
    s = h.connect(helo="c.example")
    s.mail("a@example.test")
    assert s.rcpt("three@example.test") == (250, "2.1.5", "Ok")  # as if the hook said nothing
    assert s.rcpt("grow@example.test") == (250, "2.1.5", "Ok")
    assert s.data(MSG) == (250, "2.0.0", "Ok")
    assert s.delivered[0].recipients == ("three@example.test", "grow@example.test")


def test_a_message_rewritten_past_max_message_size_is_a_policy_error_refused_for_good(harness):
    # (Edited so at every try: a 451 had the client retry it until it bounced.)
    h = harness(LIMITS_POLICY, config={"server": {"max_message_size": 1000}})
    s = h.connect(helo="c.example")
    for subject, size in (("big body", 1221), ("big field", 1114)):
        s.mail("a@example.test")
        s.rcpt("b@example.test")
        assert s.data(f"Subject: {subject}\r\n\r\nhi\r\n") == (552, "5.3.4", "Message size exceeds fixed maximum message size")
        assert h.logs[-1].message == (f"policy error in on_data: the message from policy has {size} octets; "
                                      "server.max_message_size is 1000")
    s.mail("a@example.test")
    s.rcpt("b@example.test")
    assert s.data(b"Subject: small\r\n\r\nhi\r\n") == (250, "2.0.0", "Ok")
    assert len(h.deliveries) == 1


def test_relay_guard(harness):
    h = harness("""
        import portcullis as pc
        def on_rcpt(tx, rcpt):
            pc.log.info("asked about %s", rcpt)
    """, config={"relay": {"local_domains": ["Example.TEST."], "trusted_networks": ["198.51.100.0/24", "::ffff:203.0.113.5"]}})
    denied = (554, "5.7.1", "Relay access denied")
    s = h.connect(client_ip="192.0.2.1", helo="c.example")
    s.mail("a@elsewhere.test")
    assert s.rcpt("x@other.test") == denied
    assert s.rcpt("x@example.test") == (250, "2.1.5", "Ok")
    assert s.rcpt("Y@EXAMPLE.test") == (250, "2.1.5", "Ok")
    assert s.rcpt("Postmaster") == (250, "2.1.5", "Ok")  # RFC 5321 §4.1.1.3
    for routed in ("u%other.test@example.test", "a!b@example.test", '"u@other.test"@example.test'):
        assert s.rcpt(routed) == denied
    assert [line.message for line in h.logs if line.session_id == s.id] == [
        "asked about x@example.test", "asked about Y@EXAMPLE.test", "asked about Postmaster"]
    for trusted in (h.connect(client_ip="198.51.100.9", helo="c.example"),
                    h.connect(client_ip="::ffff:198.51.100.9", helo="c.example"),
                    h.connect(client_ip="203.0.113.5", helo="c.example"),
                    h.connect(helo="c.example", auth_user="alice")):
        trusted.mail("a@example.test")
        assert trusted.rcpt("x@other.test") == (250, "2.1.5", "Ok")
    # Without [relay] the upstream decides (the harness's takes everything).
    s = harness().connect(helo="c.example")
    s.mail("a@example.test")
    assert s.rcpt("x@other.test") == (250, "2.1.5", "Ok")


def test_the_harness_hands_hooks_the_checks_a_test_chooses(policy_file) -> None:
    from portcullis.testing import Harness

    path = policy_file("""
        import portcullis as pc

        def on_mail(tx, sender):
            if tx.spf is not None and tx.spf.result == "fail":
                return pc.reject("SPF says no", code=550, status="5.7.23")

        def on_data(tx, message):
            if tx.dkim and tx.dkim[0].result != "pass":
                return pc.reject(f"DKIM {tx.dkim[0].result} for {tx.dkim[0].domain}", code=550, status="5.7.20")
        """)
    with Harness([path]) as h:
        s = h.connect(helo="client.example")
        assert s.mail("a@example.com", spf="fail") == (550, "5.7.23", "SPF says no")
        assert s.mail("a@example.com", spf="pass").code == 250
        assert s.rcpt("b@example.test").code == 250
        assert s.data(b"Subject: x\r\n\r\nbody\r\n", dkim=[("fail", "example.com", "s1")]) == (
            550, "5.7.20", "DKIM fail for example.com")
        s.rset()
        assert s.mail("a@example.com").code == 250
        assert s.rcpt("b@example.test").code == 250
        assert s.data(b"Subject: x\r\n\r\nbody\r\n").code == 250  # tx.dkim None: unchecked


def test_a_policy_finds_its_files_relative_to_the_config_file(tmp_path, monkeypatch) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "words.txt").write_text("spam\n")
    (tmp_path / "etc" / "policy.py").write_text(
        "import portcullis as pc\n"
        "WORDS = pc.path(pc.config['demo']['file']).read_text().split()\n"
        "FOLDER = pc.config_dir\n"
        "def on_helo(conn, hostname):\n"
        "    if hostname in WORDS and pc.path('words.txt').parent == pc.config_dir == FOLDER:\n"
        "        return pc.reject('no', code=550, status='5.7.1')\n")
    config = tmp_path / "etc" / "portcullis.toml"
    config.write_text('[policy]\nfiles = ["policy.py"]\n[demo]\nfile = "words.txt"\n')
    monkeypatch.chdir(tmp_path)  # elsewhere: the config's folder counts, not the current one
    with Harness(config_path=config) as h:
        assert h.connect().ehlo("spam") == (550, "5.7.1", "no")
        import portcullis as pc
        assert pc.config_dir == tmp_path / "etc"  # outside a hook: the harness's engine
        assert str(pc.path("/abs/file")) == "/abs/file"  # absolute paths stay as they are


def test_a_rewrite_is_seen_by_the_policies_after_it(policy_file) -> None:
    renames = policy_file("""
        import portcullis as pc
        def on_rcpt(tx, rcpt):
            if rcpt.domain == "old.test":
                return pc.rewrite(f"{rcpt.local}@new.test")
        """)
    users = policy_file("""
        import portcullis as pc
        def on_rcpt(tx, rcpt):
            if rcpt.domain == "new.test" and rcpt.local not in ("alice", "bob"):
                return pc.reject(f"<{rcpt}>: no such user", code=550, status="5.1.1")
            if rcpt.local == "bob":
                return pc.accept("bob is welcome")
        """)
    with Harness([renames, users]) as h:
        s = h.connect(helo="client.example")
        s.mail("a@example.com")
        assert s.rcpt("nobody@old.test") == (550, "5.1.1", "<nobody@new.test>: no such user")
        assert s.rcpt("alice@old.test").code == 250
        assert s.rcpt("bob@old.test").code == 250
        assert s.rcpt("carol@other.test").code == 250
        s.data("Subject: x\r\n\r\nbody\r\n")
        assert s.delivered[0].recipients == ("alice@new.test", "bob@new.test", "carol@other.test")
    # Chained rewrites, and one refused at the wrong stage.
    chain = policy_file("""
        import portcullis as pc
        def on_rcpt(tx, rcpt):
            if rcpt.domain == "new.test":
                return pc.rewrite(f"{rcpt.local}@newest.test")
        def on_mail(tx, sender):
            if sender.local == "wrong":
                return pc.rewrite("x@example.test")
        """)
    with Harness([renames, chain]) as h:
        s = h.connect(helo="client.example")
        assert s.mail("wrong@example.com")[:2] == (451, "4.3.0")
        s.mail("a@example.com")
        s.rcpt("dave@old.test")
        s.data("Subject: x\r\n\r\nbody\r\n")
        assert s.delivered[0].recipients == ("dave@newest.test",)


def test_on_unload_runs_when_a_generation_is_retired(policy_file, tmp_path) -> None:
    record = tmp_path / "unloads.txt"
    path = policy_file(f"""
        import portcullis as pc
        GENERATION = pc.config["demo"]["name"]
        def on_helo(conn, hostname):
            return None
        def on_unload():
            with open({str(record)!r}, "a") as f:
                f.write(GENERATION + " " + pc.config["demo"]["name"] + "\\n")
        """)
    broken = policy_file("""
        def on_unload(extra):
            pass
        """)
    with pytest.raises(PolicyLoadError, match="on_unload must be a function without arguments"):
        Harness([broken])
    h = Harness([path], config={"demo": {"name": "first"}})
    s = h.connect(helo="client.example")  # a session still on the first generation
    h.reload(config={"demo": {"name": "second"}})
    assert not record.exists()  # its session is still open
    s.quit()
    assert record.read_text() == "first first\n"  # its own config, not the new one
    h.close()
    assert record.read_text() == "first first\nsecond second\n"


def test_on_delivered_is_told_what_was_delivered(policy_file) -> None:
    path = policy_file("""
        import portcullis as pc
        SEEN = []
        def on_rcpt(tx, rcpt):
            if rcpt.local == "gone":
                return pc.discard()
        def on_delivered(tx, reply):
            SEEN.append((str(tx.sender), [str(r) for r in tx.recipients], reply.code, reply.delivered))
            return pc.reject("ignored", code=550, status="5.7.1")  # a notification decides nothing
        def on_helo(conn, hostname):
            if hostname == "report":
                return pc.reject(repr(SEEN), code=550, status="5.7.1")
        """)
    with Harness([path]) as h:
        s = h.connect(helo="client.example")
        s.mail("a@example.com")
        s.rcpt("b@example.test")
        s.rcpt("gone@example.test")
        assert s.data("Subject: x\r\n\r\nbody\r\n").code == 250
        s.mail("a@example.com")
        s.rcpt("gone@example.test")
        assert s.data("Subject: x\r\n\r\nbody\r\n") == (250, "2.0.0", "Ok: discarded")  # nothing delivered: not told
        assert h.connect().ehlo("report").text == "[('a@example.com', ['b@example.test'], 250, True)]"


def test_relative_names_are_the_test_files_and_modules_are_reachable(tmp_path, monkeypatch) -> None:
    here = Path(__file__).resolve().parent
    policy = here / "_relative_policy_for_test.py"
    policy.write_text("COUNT = 0\ndef on_helo(conn, hostname):\n    global COUNT\n    COUNT += 1\n")
    try:
        monkeypatch.chdir(tmp_path)  # elsewhere: the test file's folder counts
        with Harness(["_relative_policy_for_test.py"]) as h:
            h.connect(helo="a.example")
            module = h.module("_relative_policy_for_test.py")
            assert module.COUNT == 1
            with pytest.raises(KeyError):
                h.module("nothing.py")
    finally:
        policy.unlink()
    import portcullis
    assert portcullis.PolicyLoadError is PolicyLoadError


def test_on_reset_is_told_whenever_a_transaction_ends(policy_file) -> None:
    path = policy_file("""
        import portcullis as pc
        ENDED = []
        def on_reset(tx):
            ENDED.append((str(tx.sender), [str(r) for r in tx.recipients]))
        def on_data(tx, message):
            if b"refuse" in message.body:
                return pc.reject("no", code=550, status="5.7.1")
        def on_helo(conn, hostname):
            if hostname == "report":
                return pc.reject(repr(ENDED), code=550, status="5.7.1")
        """)
    with Harness([path]) as h:
        s = h.connect(helo="client.example")
        s.mail("a@example.com"); s.rcpt("b@example.test"); s.data("Subject: x\r\n\r\nok\r\n")      # delivered
        s.mail("c@example.com"); s.rcpt("d@example.test"); s.data("Subject: x\r\n\r\nrefuse\r\n")  # refused
        s.mail("e@example.com"); s.rset()                                                       # RSET
        s.mail("f@example.com"); s.ehlo("again.example")                                         # a new EHLO
        s.rset()  # no transaction: nothing to tell
        assert h.connect().ehlo("report").text == repr([
            ("a@example.com", ["b@example.test"]), ("c@example.com", ["d@example.test"]), ("e@example.com", []),
            ("f@example.com", [])])

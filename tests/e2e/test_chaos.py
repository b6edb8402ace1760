"""Everything at once: sessions doing every kind of thing a real client or a
broken one does (plain and async hooks that accept, suspend, refuse, raise
and hang past policy.timeout; clients that pipeline, send junk and oversize
lines, and drop the connection after MAIL or halfway through DATA), while
the config is reloaded again and again. Each kind is tested alone elsewhere;
here they interleave on the same threads, the same event loop and the same
engine generations, which is where a use-after-free, a stale session state
or a crash on reload shows. Under ASan/UBSan (the second e2e run of
scripts/test.sh) any memory error fails the daemon's exit at teardown.

The same crowd is also stopped with SIGTERM midway, and sent against an
upstream that refuses, tempfails, drops or stalls chosen transactions at
MAIL, RCPT or the final dot while other sessions share its pooled
connections.

What must hold: every message that got 250 after its dot arrived exactly
once, with the recipients its session had accepted; nothing else arrived
(a session dropped halfway, or whose upstream failed, delivers nothing);
every reply was the one its command deserved; the daemon kept serving,
logged nothing critical, and exited 0."""

from __future__ import annotations

import collections
import random
import re
import signal
import threading
import time

import pytest

from conftest import wait_until, write_atomically

CHAOS_POLICY = """
import asyncio
import time

import portcullis as pc

async def on_mail(tx, sender):
    local = sender.local
    if local.startswith("await"):
        await asyncio.sleep(0.005)
    elif local.startswith("araise"):
        raise RuntimeError("chaos: an async hook raised")
    elif local.startswith("ahang"):
        await asyncio.sleep(30)  # past policy.timeout: cancelled, 451
    return None

def on_rcpt(tx, rcpt):
    local = rcpt.local
    if local.startswith("refuse"):
        return pc.reject("chaos: refused", code=550, status="5.7.1")
    if local.startswith("raise"):
        raise ValueError("chaos: a plain hook raised")
    if local.startswith("phang"):
        time.sleep(1.5)  # past policy.timeout: 451 at once, the thread runs on
    return None

async def on_data(tx, message):
    message.add_header("X-Generation", pc.config["probe"]["tag"])
    if tx.sender.local.startswith("await"):
        await asyncio.sleep(0.002)
"""

POLICY_ERROR = (451, "4.3.0")
DURATION = 3.0  # seconds of traffic and reloads, for each daemon shape
RELOADS = 10  # at least, whatever the time they take
CLIENTS = 12  # at least one per scenario
KEEPING = "reload: keeping the running configuration"  # a refused reload's log line


def body(name: str) -> bytes:
    return f"Subject: {name}\r\n\r\nbody of {name}\r\n".encode()


class Client:
    """One client thread: scenarios picked at random (seeded), each in a session of its own,
    what each expects asserted as it goes. Subclasses list SCENARIOS (function, weight)."""

    SCENARIOS: list = []
    ENDS_SESSION: set[str] = set()  # scenarios that leave without QUIT

    def __init__(self, d, worker: int, accepted: dict[str, list[str]], lock: threading.Lock, up=None):
        self.d, self.worker, self.accepted, self.lock, self.up = d, worker, accepted, lock, up
        self.rng = random.Random(worker)
        self.n = 0

    def name(self, kind: str) -> str:
        self.n += 1
        return f"{kind}-w{self.worker}n{self.n}"

    def deliver(self, c, sender: str, rcpts: list[str], refused: list[tuple[str, int, str]] = ()) -> None:
        """A transaction that must be accepted: `rcpts` get 250, each of `refused` its (code, status)."""
        c.exchange(f"MAIL FROM:<{sender}@example.test>", 250)
        for r in rcpts:
            c.exchange(f"RCPT TO:<{r}@example.test>", 250)
        for r, code, status in refused:
            c.exchange(f"RCPT TO:<{r}@example.test>", code, status)
        c.exchange("DATA", 354)
        c.send(body(sender) + b"\r\n.\r\n")
        r = c.expect(250)
        assert r.status == "2.0.0", r
        with self.lock:
            self.accepted[sender] = sorted(f"{x}@example.test" for x in rcpts)

    def drop_in_data(self, c):
        sender = self.name("dropped")
        c.exchange(f"MAIL FROM:<{sender}@example.test>", 250)
        c.exchange(f"RCPT TO:<{self.name('r')}@example.test>", 250)
        c.exchange("DATA", 354)
        c.send(body(sender)[: self.rng.randrange(1, 30)])  # and the connection ends

    def run(self, crowd: Crowd) -> None:
        kinds, weights = zip(*self.SCENARIOS)
        first = kinds[self.worker % len(kinds)]  # with CLIENTS >= len(kinds), every scenario runs
        while not crowd.stop.is_set():
            scenario, first = first or self.rng.choices(kinds, weights)[0], None
            with self.lock:
                crowd.ran[scenario.__name__] += 1
            try:
                with self.d.connect() as c:
                    scenario(self, c)
                    if scenario.__name__ not in self.ENDS_SESSION:
                        c.exchange("QUIT", 221)
            except Exception as e:  # noqa: BLE001
                if not crowd.stopping_daemon.is_set():  # (a 421, a closed or refused connection: expected then)
                    crowd.errors.append(f"client {self.worker}, {scenario.__name__} #{self.n}: {e!r}")
                return


class Chaos(Client):
    """Sessions against CHAOS_POLICY: hooks that accept, suspend, refuse, raise and hang;
    clients that pipeline, send junk and leave halfway."""

    ENDS_SESSION = {"drop_after_mail", "drop_in_data"}

    # -- the scenarios: each opens its own session --------------------------------

    def plain(self, c):
        self.deliver(c, self.name("plain"), [self.name("r")])

    def awaiting(self, c):
        self.deliver(c, self.name("await"), [self.name("r"), self.name("r")])

    def async_raise(self, c):
        c.exchange(f"MAIL FROM:<{self.name('araise')}@example.test>", *POLICY_ERROR)
        self.deliver(c, self.name("plain"), [self.name("r")])  # the session goes on

    def refused_and_raised(self, c):
        c.exchange(f"MAIL FROM:<{self.name('mixed')}@example.test>", 250)
        c.exchange(f"RCPT TO:<{self.name('raise')}@example.test>", *POLICY_ERROR)
        c.exchange("RSET", 250)
        self.deliver(c, self.name("plain"), [self.name("r")], refused=[(self.name("refuse"), 550, "5.7.1")])

    def hang_async(self, c):
        c.exchange(f"MAIL FROM:<{self.name('ahang')}@example.test>", *POLICY_ERROR)
        self.deliver(c, self.name("await"), [self.name("r")])

    def hang_plain(self, c):
        c.exchange(f"MAIL FROM:<{self.name('phanger')}@example.test>", 250)
        c.exchange(f"RCPT TO:<{self.name('phang')}@example.test>", *POLICY_ERROR)
        c.exchange("RSET", 250)
        self.deliver(c, self.name("plain"), [self.name("r")])

    def drop_after_mail(self, c):
        c.exchange(f"MAIL FROM:<{self.name('dropped')}@example.test>", 250)

    def junk(self, c):
        c.exchange("XYZZY plugh", 500, "5.5.1")
        c.exchange("NOOP " + "x" * 3000, 500, "5.5.2")  # past server.max_line_length (2048)
        c.send(b"NOOP\n")  # a bare LF ends no command line here
        c.expect(500, "5.5.2")
        self.deliver(c, self.name("plain"), [self.name("r")])

    def pipelined(self, c):
        sender, rcpt = self.name("piped"), self.name("r")
        c.send(f"MAIL FROM:<{sender}@example.test>\r\nRCPT TO:<{rcpt}@example.test>\r\nDATA\r\n")
        c.expect(250)
        c.expect(250)
        c.expect(354)
        c.send(body(sender) + b"\r\n.\r\n")
        c.expect(250, "2.0.0")
        with self.lock:
            self.accepted[sender] = [f"{rcpt}@example.test"]

    SCENARIOS = [(plain, 5), (awaiting, 4), (async_raise, 1), (refused_and_raised, 2), (hang_async, 0.15),
                 (hang_plain, 0.15), (drop_after_mail, 1), (Client.drop_in_data, 1), (junk, 1), (pipelined, 2)]


UNAVAILABLE = (451, "4.4.1")  # the upstream went away, or never answered
LOST = (451, "4.4.1", "Upstream connection lost, try again later")


class UpstreamChaos(Client):
    """Sessions whose transactions the upstream (a FakeUpstream) refuses, tempfails, drops or
    stalls at MAIL, RCPT or the final dot, each fault arranged for that transaction alone."""

    ENDS_SESSION = {"dot_closing", "drop_in_data"}

    def arranged(self, stage: str, kind: str, behaviour) -> str:
        """A new name whose address gets `behaviour` from the upstream at `stage`."""
        name = self.name(kind)
        self.up.arrange(f"{stage} {name}@example.test", behaviour)
        return name

    def ok(self, c):
        self.deliver(c, self.name("plain"), [self.name("r")])

    def rcpt_refused(self, c):
        self.deliver(c, self.name("plain"), [self.name("r")], refused=[
            (self.arranged("RCPT", "nouser", "550 5.1.1 no such user"), 550, "5.1.1"),
            (self.arranged("RCPT", "busy", "450 4.2.1 mailbox busy"), 450, "4.2.1")])

    def mail_refused(self, c):
        sender = self.arranged("MAIL", "busy", "451 4.3.0 busy")
        c.exchange(f"MAIL FROM:<{sender}@example.test>", 451, "4.3.0", "busy")  # the upstream's own reply
        self.deliver(c, self.name("plain"), [self.name("r")])

    def dot_fault(self, c, behaviour, want: tuple) -> None:
        sender, rcpt = self.name("faulted"), self.arranged("DOT", "r", behaviour)
        c.exchange(f"MAIL FROM:<{sender}@example.test>", 250)
        c.exchange(f"RCPT TO:<{rcpt}@example.test>", 250)
        c.exchange("DATA", 354)
        c.send(body(sender) + b"\r\n.\r\n")
        c.expect(*want)

    def dot_refused(self, c):
        self.dot_fault(c, "554 5.7.1 rejected as spam", (554, "5.7.1", "rejected as spam"))
        self.deliver(c, self.name("plain"), [self.name("r")])

    def dot_lost(self, c):  # the upstream may have the message: the client must try again, not get a 250
        self.dot_fault(c, "close", UNAVAILABLE)
        self.deliver(c, self.name("plain"), [self.name("r")])

    def dot_stalled(self, c):  # past upstream.timeout (2 s)
        self.dot_fault(c, "stall", UNAVAILABLE)
        self.deliver(c, self.name("plain"), [self.name("r")])

    def dot_closing(self, c):
        self.dot_fault(c, "421", (421, "4.3.2"))
        assert c.closed()

    def rcpt_lost(self, c):
        c.exchange(f"MAIL FROM:<{self.name('faulted')}@example.test>", 250)
        c.exchange(f"RCPT TO:<{self.name('r')}@example.test>", 250)
        c.exchange(f"RCPT TO:<{self.arranged('RCPT', 'r', 'close')}@example.test>", *UNAVAILABLE)
        c.exchange("DATA", *LOST)
        c.exchange("RSET", 250)
        self.deliver(c, self.name("plain"), [self.name("r")])

    SCENARIOS = [(ok, 6), (rcpt_refused, 2), (mail_refused, 1), (dot_refused, 1), (dot_lost, 1),
                 (dot_stalled, 0.1), (dot_closing, 1), (rcpt_lost, 1), (Client.drop_in_data, 1)]


class Crowd:
    """CLIENTS threads of `kind` (a Client), each on scenarios until stopped, or until the daemon stops."""

    def __init__(self, d, kind: type[Client] = Chaos, up=None):
        self.d, self.kind = d, kind
        self.stop, self.stopping_daemon = threading.Event(), threading.Event()
        self.errors: list[str] = []
        self.accepted: dict[str, list[str]] = {}  # sender (the Subject) -> recipients, for every 250 after a dot
        self.ran: collections.Counter = collections.Counter()
        lock = threading.Lock()
        self.threads = [threading.Thread(target=kind(d, i, self.accepted, lock, up).run, args=(self,))
                        for i in range(CLIENTS)]
        for t in self.threads:
            t.start()
        wait_until(lambda: len(self.accepted) >= CLIENTS, timeout=30, what="traffic")

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)
        assert not self.errors, self.errors[:5]
        assert set(self.ran) == {scenario.__name__ for scenario, _ in self.kind.SCENARIOS}, self.ran


def assert_delivered_exactly(messages: list[tuple[bytes, list[str]]], accepted: dict[str, list[str]],
                             generations: bool = True) -> None:
    """Every accepted message arrived once (`messages`: what the upstream took, as (content,
    recipients)), to its accepted recipients (`generations`: through one policy generation);
    nothing else arrived (a session dropped halfway, or refused, delivers nothing)."""
    delivered: dict[str, list[str]] = {}
    for content, rcpt_tos in messages:
        subject = re.search(rb"(?:^|\r\n)Subject: (\S+)\r\n", content).group(1).decode()
        assert subject not in delivered, f"{subject} arrived twice"
        delivered[subject] = sorted(rcpt_tos)
        if generations:
            assert len(re.findall(rb"\r\nX-Generation: g\d+\r\n", b"\r\n" + content)) == 1, content[:300]
    assert delivered == accepted, (sorted(set(delivered) ^ set(accepted))[:10])


def aiosmtpd_messages(upstream, accepted: dict[str, list[str]]) -> list[tuple[bytes, list[str]]]:
    upstream.wait_messages(len(accepted), timeout=30)
    time.sleep(1.0)  # anything doubled, or delivered from a dropped session, would arrive now
    return [(e["content"], e["rcpt_tos"]) for e in upstream.envelopes]


def chaos_daemon(policy_daemon, upstream, shape: dict):
    return policy_daemon(upstream.url, CHAOS_POLICY, policy={"timeout": 1}, probe={"tag": "g0"},
                         server={"max_connections_per_client": 200, **shape})


# The shapes: two I/O threads sharing sessions and jobs; one I/O thread (as each worker
# has by default), whose hung plain hooks need a spare thread; two worker processes.
SHAPES = [pytest.param({"threads": 2}, id="threads=2"), pytest.param({"threads": 1}, id="threads=1"),
          pytest.param({"workers": 2, "threads": 1}, id="workers=2")]


@pytest.mark.parametrize("shape", SHAPES)
def test_hostile_mixed_traffic_under_reloads_loses_doubles_and_crashes_nothing(policy_daemon, aiosmtpd_upstream,
                                                                               shape):
    d = chaos_daemon(policy_daemon, aiosmtpd_upstream, shape)
    valid = d.config_path.read_text()
    crowd = Crowd(d)
    reloads = 0
    try:
        # DURATION of traffic and at least RELOADS reloads: a loaded machine (the ASan
        # build, two workers) takes longer over each, and must not shorten the test.
        start = time.monotonic()
        while (time.monotonic() < start + DURATION or reloads < RELOADS) and not crowd.errors:
            assert time.monotonic() < start + 10 * DURATION, f"only {reloads} reloads in {10 * DURATION} s"
            reloads += 1
            if reloads % 3:
                write_atomically(d.config_path, valid.replace('tag = "g0"', f'tag = "g{reloads}"'))
                d.signal(signal.SIGHUP)
            else:  # not TOML: refused; seen before the next write can replace it
                refused = d.log_text().count(KEEPING)
                write_atomically(d.config_path, valid + "\n[server\nbroken = \n")
                d.signal(signal.SIGHUP)
                wait_until(lambda: d.log_text().count(KEEPING) > refused, timeout=10, what="the refused reload")
            time.sleep(0.05)
            assert d.proc.poll() is None, d.log_text()[-3000:]
    finally:
        crowd.join()
    assert len(crowd.accepted) > 50, (reloads, len(crowd.accepted), crowd.ran)
    assert_delivered_exactly(aiosmtpd_messages(aiosmtpd_upstream, crowd.accepted), crowd.accepted)

    with d.connect() as c:  # and it still serves
        c.transaction("after@example.test", ["r@example.test"], body("after"))
    log = d.log_text()
    assert not re.search(r"^\S+ critical ", log, re.M)
    assert log.count(KEEPING) >= reloads // 3


@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[2]])
def test_sigterm_amid_hostile_traffic_keeps_every_accepted_message(policy_daemon, aiosmtpd_upstream, shape):
    # Sessions in a transaction finish it, the others get 421 or find the door closed; the
    # daemon exits 0 (clean under ASan/UBSan); whatever got its 250 arrived, once.
    d = chaos_daemon(policy_daemon, aiosmtpd_upstream, shape)
    crowd = Crowd(d)
    try:
        time.sleep(1.0)
        crowd.stopping_daemon.set()
        d.signal(signal.SIGTERM)
        d.proc.wait(timeout=20)
    finally:
        crowd.join()
    assert d.proc.returncode == 0, d.log_text()[-3000:]
    assert_delivered_exactly(aiosmtpd_messages(aiosmtpd_upstream, crowd.accepted), crowd.accepted)
    assert not re.search(r"^\S+ critical ", d.log_text(), re.M)


@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[2]])
def test_upstream_faults_amid_concurrent_sessions_never_become_a_250(start_daemon, fake_upstream, shape):
    # Each transaction's fault is its own, while other sessions share the upstream pool's
    # connections: a connection that failed is never reused, no fault leaks into another
    # session's transaction, and only what the upstream took with 250 got a 250.
    up = fake_upstream()
    d = start_daemon(up.url, upstream={"timeout": 2, "data_done_timeout": 2}, server={"max_connections_per_client": 200, **shape})
    crowd = Crowd(d, UpstreamChaos, up)
    try:
        time.sleep(DURATION)
    finally:
        crowd.join()
    assert len(crowd.accepted) > 50, (len(crowd.accepted), crowd.ran)
    up.wait_for(lambda: len(up.messages) >= len(crowd.accepted), timeout=30)
    time.sleep(1.0)  # anything doubled would arrive now
    assert_delivered_exactly([(m.content, m.rcpt_tos) for m in up.messages], crowd.accepted, generations=False)
    assert not re.search(r"^\S+ critical ", d.log_text(), re.M)

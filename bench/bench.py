#!/usr/bin/python3
"""Throughput, latency and memory of the proxy, measured with Postfix's own load tools.

smtp-source (client) -> portcullis -> smtp-sink (upstream), against the same
load sent straight to smtp-sink. Direct and proxied runs alternate, round
after round, in one run: this machine is shared and noisy, so the figure
that counts is the ratio to direct, as a median over the rounds. Each
round's proxied run is compared with the mean of the direct runs just
before and just after it (direct runs once more than the proxy, before
the first round and after each), so the machine's drift within a round
cancels out (the JSON has every round's three figures).

    bench/run.sh                                  # builds, then every case, 3 rounds
    bench/bench.py --bin build/portcullis --rounds 5 --messages 5000
    bench/bench.py --only "no policy"             # the cases whose name contains this
    bench/bench.py --json bench.json              # the figures as JSON too

Every case starts a fresh daemon, so its peak RSS is its own.
The daemon runs as shipped (--workers 0: a supervisor and one worker process
per core); CPU is summed over its processes (the supervisor and every
worker), and a worker restarted during a case fails the run. --workers 1 runs
one process with no supervisor. A throughput case's RSS is the daemon's
resident memory with each physical page counted once, however many of its
processes map it (libpython, the libraries, pages shared since fork), as
one process's RSS counts it: sampled every 0.5 s from /proc/PID/pagemap
(root only; otherwise the sum of the processes' peaks, which counts shared
pages once per process; that sum is in the notes too). PSS (each shared page
split between the processes that map it) is sampled every 0.1 s.
Throughput cases: messages/s direct and through the proxy (medians), the
ratio (the median of the rounds' ratios), the proxy's CPU per message (median, user + system), p50/p99 of a
transaction (connect to the 250 after the final dot) measured by a small
probe client after each smtp-source run, peak RSS, and whether the sink
received every message sent through the proxy. The 50 MiB case reports the
RSS the worker that took it grows by for one message; the idle case the RSS per idle
connection at 10,000 connections (proxy only: there is nothing to compare
directly). A table at the end repeats every case with its targets from
issue 8 and whether each holds; under a full-stack case, what one signature
costs on this machine against the CPU a message that its ratio target
leaves the proxy (see signing_note). Exit 1 if any mail was lost or the daemon
failed; targets missed are reported, not an exit code.
"""
import argparse
import array
import asyncio
import base64
import ctypes
import json
import os
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
MIB = 1 << 20

# Hook calls of each policy per message and per recipient, with one message per
# connection (smtp-source's way): on_connect, on_helo, on_mail, on_data and
# on_disconnect once, on_rcpt per recipient, where the policy defines them.
HOOK_CALLS = {"noop_plain.py": (5, 1), "noop_async.py": (5, 1), "noop.py": (4, 1), "one_hook.py": (0, 1),
              "rewrite.py": (1, 0)}



def hook_calls(policy, recipients):
    once, each = HOOK_CALLS.get(policy, (0, 0))
    return once + each * recipients


# Targets from issue 8.
HOOK_COST_MAX_US = 15              # CPU per hook call, plain or async
RATIO_MIN_NO_POLICY_20 = 0.65      # 20 sessions, 4 KiB, no policy
RATIO_MIN_HOOKS_20 = 0.55          # 20 sessions, 4 KiB, no-op hooks at every stage
RATIO_MIN_HOOKS_1 = 0.45           # 1 session, no-op hooks
RATIO_MIN_FULL_STACK_20 = 0.35     # issue 9: SPF + DKIM + DMARC + a rewrite + signing, 20 sessions, 4 KiB
RATIO_MIN_READY_MADE_20 = 0.45     # issue 10: aliases (100,000 entries) + senders + ratelimit, memory store
READY_MADE = ("aliases.py", "senders.py", "ratelimit.py")  # from policies/, not bench/policies/
ALIAS_ENTRIES = 100_000
PEAK_RSS_MAX_BYTES = 60_000_000    # 20 busy sessions with hooks, 1 MiB messages ("60 MB")
IDLE_CONN_MAX_BYTES = 64 << 10     # RSS per idle connection at 10,000
BIG_GROWTH_MAX_BYTES = 5 * MIB     # "a 50 MiB message must not grow RSS by more than a few MiB"

IDLE_CONNECTIONS = 10_000
IDLE_SOURCES = 8                   # 127.0.0.2 .. : spreads the connections over source addresses
IDLE_HANDSHAKES_IN_FLIGHT = 200    # below the listen backlog (net.core.somaxconn)
IDLE_REPLY_TIMEOUT = 15           # seconds for the banner, EHLO's reply: a daemon that stops accepting fails fast
IDLE_HOLD_SECONDS = 2              # idle before RSS is read, so nothing is still being set up
BIG_MESSAGE = 50 * MIB
WARM_UP_PER_WORKER = 16            # small messages per worker before the 50 MiB one (see run_big)
MAX_MESSAGE_SIZE = 64 * MIB        # the bench config's server.max_message_size: room for BIG_MESSAGE + headers
PROBE_TIMEOUT = 120                # seconds per probe reply (a 1 MiB message on a loaded machine)

# kind, name, policy file (bench/policies/), parallel sessions, messages (x --messages), size, recipients
CASES = [
    ("flow", "no policy, 20 sessions, 4 KiB", None, 20, 1.0, 4096, 1),
    ("flow", "no policy, 20 sessions, 4 KiB x5 rcpt", None, 20, 0.5, 4096, 5),
    ("flow", "no policy, 1 session, 4 KiB", None, 1, 0.4, 4096, 1),
    ("flow", "no policy, 4 sessions, 1 MiB", None, 4, 0.02, MIB, 1),
    ("flow", "no policy, 20 sessions, 1 MiB", None, 20, 0.04, MIB, 1),
    ("flow", "no-op hooks (plain), 20 sessions, 4 KiB", "noop_plain.py", 20, 1.0, 4096, 1),
    ("flow", "no-op hooks (async), 20 sessions, 4 KiB", "noop_async.py", 20, 1.0, 4096, 1),
    ("flow", "no-op hooks (plain), 1 session, 4 KiB", "noop_plain.py", 1, 0.4, 4096, 1),
    ("flow", "one hook (rcpt), 20 sessions, 4 KiB", "one_hook.py", 20, 1.0, 4096, 1),
    ("flow", "no-op hooks (mixed), 4 sessions, 1 MiB", "noop.py", 4, 0.02, MIB, 1),
    ("flow", "no-op hooks (plain), 20 sessions, 1 MiB", "noop_plain.py", 20, 0.04, MIB, 1),
    # [checks] spf and authentication_results, against the test DNS server (warm cache: the
    # same sender domain throughout), the client on a non-loopback address of this host if it has one.
    ("flow", "SPF + Authentication-Results, 20 sessions, 4 KiB", None, 20, 1.0, 4096, 1, "checks"),
    # Issue 9's full stack: every message signed by its sender (a pre-signed 4 KiB message, the
    # same for direct and proxied runs), SPF, DKIM verification and DMARC passing, a policy's header
    # rewrite, Authentication-Results, and the proxy's own DKIM signature over the result: RSA 2048
    # (the usual key; its signature alone costs 0.5 ms of CPU here, `openssl speed rsa2048`), and
    # Ed25519 (RFC 8463; libsodium's, 0.03 ms).
    ("flow", "full stack (SPF, DKIM, DMARC, rewrite, signing), 20 sessions, 4 KiB", "rewrite.py", 20, 1.0, 4096, 1,
     "checks", "full"),
    ("flow", "full stack, Ed25519 signing, 20 sessions, 4 KiB", "rewrite.py", 20, 1.0, 4096, 1,
     "checks", "full", "ed25519"),
    # Issue 10's everyday policies as shipped: a 100,000-entry alias file (the sink's recipient is
    # rewritten to a mailbox), sender ownership and rate limits (never reached, always counted) on
    # the memory store.
    ("flow", "aliases (100,000) + senders + ratelimit, 20 sessions, 4 KiB", READY_MADE, 20, 1.0, 4096, 1,
     "ready-made"),
    ("big", "no policy, one 50 MiB message", None, 1, 0, BIG_MESSAGE, 1),
    # The commonest edit (noop.py's on_data adds a header field): the field goes above the
    # daemon's own copy, which is neither read into Python nor copied.
    ("big", "no-op hooks (mixed) adding a header, one 50 MiB message", "noop.py", 1, 0, BIG_MESSAGE, 1),
    ("idle", "no policy, 10,000 idle connections", None, IDLE_CONNECTIONS, 0, 0, 0),
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def proc_status(pid, key):
    """A /proc/PID/status figure in bytes (VmRSS, VmHWM)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def proc_pss(pid):
    """A process's proportional set size in bytes (/proc/PID/smaps_rollup): each page it
    shares with others (libpython, the libraries, pages shared since fork) counted in
    proportion, so summing over the workers does not count them once per worker."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


PAGE = os.sysconf("SC_PAGE_SIZE")
PRESENT = 1 << 63
PFN_MASK = (1 << 55) - 1


def resident_frames(pid):
    """The physical page frames a process has resident (/proc/PID/pagemap; root sees the
    frame numbers). A frame several of the daemon's processes map (libpython, the
    libraries, pages shared since fork) is one frame: the union over the processes is
    their resident memory, what one process's RSS is for one process."""
    frames = set()
    try:
        with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/pagemap", "rb", buffering=0) as pagemap:
            for line in maps:
                lo, hi = (int(x, 16) for x in line.split(None, 1)[0].split("-"))
                if line.rstrip().endswith("[vsyscall]"):
                    continue
                pagemap.seek(lo // PAGE * 8)
                entries = array.array("Q")
                entries.frombytes(pagemap.read((hi - lo) // PAGE * 8))
                frames.update(e & PFN_MASK for e in entries if e & PRESENT)
    except OSError:
        pass
    return frames


def group_rss(pids):
    """The daemon's resident memory in bytes, each physical page once (None: frame numbers hidden)."""
    frames = set()
    for pid in pids:
        frames |= resident_frames(pid)
    if not frames:
        return 0
    if frames == {0}:
        return None  # not root: the kernel zeroes the frame numbers
    return len(frames) * PAGE


class MemorySampler(threading.Thread):
    """The peaks of the daemon's PSS summed over its processes (every 100 ms) and of its
    resident pages counted once (every 500 ms; a heavier read): the kernel keeps a
    high-water mark of neither."""

    def __init__(self, pids):
        super().__init__(daemon=True)
        self.pids, self.peak_pss, self.peak_rss, self.done = list(pids), 0, 0, threading.Event()

    def run(self):
        tick = 0
        while not self.done.wait(0.1):
            self.peak_pss = max(self.peak_pss, sum(proc_pss(pid) for pid in self.pids))
            tick += 1
            if tick % 5 == 0 and self.peak_rss is not None:
                rss = group_rss(self.pids)
                self.peak_rss = None if rss is None else max(self.peak_rss, rss)

    def stop(self):
        self.done.set()
        self.join()
        return self.peak_pss, self.peak_rss


def reset_peak_rss(pid):
    """VmHWM back to the current RSS (Linux >= 4.0); False when not allowed."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def children(pid):
    """The pids of a process's children (the workers under the supervisor).

    /proc/PID/task/TID/children where the kernel has it (CONFIG_PROC_CHILDREN),
    else every /proc/N/stat whose parent is `pid`."""
    try:
        kids = set()
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids.update(int(k) for k in f.read().split())
        return sorted(kids)
    except FileNotFoundError:
        pass
    kids = []
    for n in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{n}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            kids.append(int(n))
    return sorted(kids)


def listeners(port):
    """Sockets listening on 127.0.0.1:port: one per worker (SO_REUSEPORT)."""
    want = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as f:
        return sum(1 for line in f.readlines()[1:] if line.split()[1] == want and line.split()[3] == "0A")


def cpu_seconds(pid):
    """The process's CPU time (user + system, every thread, ended ones too).

    Its CPU-time clock (clock_getcpuclockid: ~pid << 3 | CPUCLOCK_SCHED) counts in
    nanoseconds; /proc/PID/stat counts in ticks of 10 ms, too coarse for a short
    run's CPU per message."""
    try:
        return time.clock_gettime((~pid << 3) | 2)
    except OSError:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def raise_fd_limit():
    """Soft RLIMIT_NOFILE up to the hard limit: 10,000 idle connections need the descriptors."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


class Sink:
    """smtp-sink with its running counter (-c) in a file: how many messages it took."""

    def __init__(self, work):
        self.port = free_port()
        self.out = os.path.join(work, "sink.out")
        self.proc = subprocess.Popen(["smtp-sink", "-c", "-u", "nobody", f"127.0.0.1:{self.port}", "1000"],
                                     stdout=open(self.out, "wb"), stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def delivered(self):
        with open(self.out, "rb") as f:
            counts = re.findall(rb"mesg=(\d+)", f.read())
        return int(counts[-1]) if counts else 0

    def settle(self):
        """The count once it stops moving (the last messages may still be on their way)."""
        last = -1
        while True:
            now = self.delivered()
            if now == last:
                return now
            last = now
            time.sleep(0.3)

    def stop(self):
        self.proc.kill()
        self.proc.wait()


class Proxy:
    """The daemon with the bench config; `workers` is server.workers (0: the daemon's default, one per core).

    Its processes: the pid started and, under a supervisor, the workers it
    forked. `pids` is taken once every worker listens; CPU and RSS are summed
    over them, and `restarted()` says whether that set changed (a worker died
    and was started again: its CPU and peak RSS are lost, the run is void)."""

    def __init__(self, binary, work, sink_port, policy, server_extra="", workers=1, listen_ip="127.0.0.1", tables=""):
        self.port = free_port()
        # The daemon's own count for 0 (std::thread::hardware_concurrency: the online CPUs).
        self.workers = workers or os.cpu_count() or 1
        cfg = os.path.join(work, f"bench-{self.port}.toml")
        # Also on listen_ip, the checks cases' client (the probe and the readiness checks use loopback).
        listen = ", ".join(f'"{ip}:{self.port}"' for ip in dict.fromkeys(["127.0.0.1", listen_ip]))
        limit = IDLE_CONNECTIONS + 1000
        with open(cfg, "w") as f:
            f.write(f"""[server]
hostname = "bench.test"
listen = [{listen}]
max_connections = {limit}
max_connections_per_client = {limit}
max_message_size = {MAX_MESSAGE_SIZE}
workers = {workers}
{server_extra}
[upstream]
url = "smtp://127.0.0.1:{sink_port}"
{tables}""")
            if policy:
                # One of bench/policies/, or a tuple of ready-made ones from policies/.
                files = ([os.path.join(HERE, "..", "policies", p) for p in policy] if isinstance(policy, tuple)
                         else [os.path.join(HERE, "policies", policy)])
                f.write("[policy]\nfiles = [" + ", ".join(f'"{p}"' for p in files) + "]\n")
        self.log = os.path.join(work, f"portcullis-{self.port}.log")
        self.proc = subprocess.Popen([binary, "--config", cfg], stderr=open(self.log, "w"),
                                     env={**os.environ, "PORTCULLIS_LOG_LEVEL": "warn"},
                                     preexec_fn=raise_fd_limit)
        wait_port(self.port)
        self.pids = self.wait_workers()

    def wait_workers(self, timeout=30):
        """The daemon's pids once every worker listens (each opens its own socket after loading its policies)."""
        deadline = time.time() + timeout
        while True:
            if self.proc.poll() is not None:
                sys.exit(f"portcullis exited {self.proc.returncode}; see {self.log}")
            kids = children(self.proc.pid) if self.workers > 1 else []
            if len(kids) == (self.workers if self.workers > 1 else 0) and listeners(self.port) == self.workers:
                return [self.proc.pid] + kids
            if time.time() > deadline:
                sys.exit(f"portcullis: {len(kids)} workers, {listeners(self.port)} listening, "
                         f"not {self.workers}; see {self.log}")
            time.sleep(0.05)

    def current_pids(self):
        return [self.proc.pid] + (children(self.proc.pid) if self.workers > 1 else [])

    def restarted(self):
        """True when the daemon's processes are no longer the ones of start-up (a worker restarted)."""
        return self.current_pids() != self.pids

    def cpu(self):
        """CPU seconds of every process of the daemon, summed (a process gone counts 0: see restarted())."""
        total = 0.0
        for pid in self.pids:
            try:
                total += cpu_seconds(pid)
            except OSError:
                pass
        return total

    def status(self, key):
        """{pid: /proc/PID/status figure in bytes} for every process of the daemon (0 for one gone)."""
        out = {}
        for pid in self.pids:
            try:
                out[pid] = proc_status(pid, key)
            except OSError:
                out[pid] = 0
        return out

    def reset_peak_rss(self):
        return all([reset_peak_rss(pid) for pid in self.pids])

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        if code != 0:
            sys.exit(f"portcullis exited {code}; see {self.log}")


def smtp_source(port, sessions, messages, size, recipients, host="127.0.0.1", message_file=None):
    """smtp-source's load; `message_file` (LF lines) is sent instead of a generated message of `size`."""
    content = ["-F", message_file] if message_file else ["-l", str(size)]
    cmd = ["smtp-source", "-s", str(sessions), "-m", str(messages), *content,
           "-r", str(recipients), "-f", "bench@source.test", "-t", "rcpt@sink.test",
           f"{host}:{port}"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    # Its exit is waited for, not polled (a wait with a timeout polls every 50 ms, a tenth of
    # a short run); a timer kills a run that hangs.
    watchdog = threading.Timer(900, proc.kill)
    watchdog.start()
    try:
        code = proc.wait()
    finally:
        watchdog.cancel()
    took = time.perf_counter() - start
    if code != 0:
        raise subprocess.CalledProcessError(code, cmd)
    return took


def direct_cpu_per_message(sink, sessions, messages, size, recipients, message_file=None):
    """smtp-source's and smtp-sink's CPU per message in µs in one direct run: the share of the
    machine that the load's own two ends take, whatever the proxy does."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # smtp-source is reaped by the run
    sink_cpu = cpu_seconds(sink.proc.pid)
    smtp_source(sink.port, sessions, messages, size, recipients, message_file=message_file)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    source = (after.ru_utime - children.ru_utime) + (after.ru_stime - children.ru_stime)
    return (source + cpu_seconds(sink.proc.pid) - sink_cpu) / messages * 1e6


def signature_us(algorithm):
    """One signature's CPU in µs on this machine, one core, made as the daemon makes it: rsa2048
    with OpenSSL (`openssl speed`), ed25519 with libsodium (crypto_sign_ed25519_detached of a
    SHA-256 hash, RFC 8463, called through ctypes: its call overhead, about a microsecond, included)."""
    if algorithm == "ed25519":
        sodium = ctypes.CDLL("libsodium.so.23")
        if sodium.sodium_init() < 0:
            sys.exit("libsodium: sodium_init failed")
        public, secret, seed = (ctypes.create_string_buffer(n) for n in (32, 64, 32))
        sodium.crypto_sign_ed25519_seed_keypair(public, secret, seed)
        signature, digest, rounds = ctypes.create_string_buffer(64), ctypes.create_string_buffer(32), 5000
        sign = sodium.crypto_sign_ed25519_detached
        started = time.process_time()
        for _ in range(rounds):
            sign(signature, None, digest, ctypes.c_ulonglong(32), secret)
        return (time.process_time() - started) / rounds * 1e6
    out = subprocess.run(["openssl", "speed", "-seconds", "2", algorithm], check=True, capture_output=True,
                         text=True).stdout
    figures = re.findall(r"\d+(?:\.\d+)?", out.strip().splitlines()[-1])  # ... sign/s verify/s
    return 1e6 / float(figures[-2])


# ---------------------------------------------------------------- latency probe

def probe_body(size):
    """A message of about `size` bytes of body, in 78-octet lines (none starts with a dot)."""
    head = b"From: <bench@source.test>\r\nTo: <rcpt@sink.test>\r\nSubject: probe\r\n\r\n"
    line = b"x" * 76 + b"\r\n"
    return head + line * max(1, size // len(line)) + b".\r\n"


async def read_reply(reader, timeout=PROBE_TIMEOUT):
    """One SMTP reply, every line of it; its code."""
    while True:
        line = await asyncio.wait_for(reader.readline(), timeout)
        if len(line) < 4:
            raise RuntimeError(f"probe: connection closed or bad reply {line!r}")
        if line[3:4] != b"-":
            return int(line[:3])


async def probe_transaction(port, body, recipients):
    """Connect, EHLO, MAIL, RCPT x n, DATA, the message: seconds from connect to the 250 after the dot.

    One message per connection and no pipelining, like smtp-source; QUIT after
    the clock stops. The same code measures direct and proxied runs."""
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        want = [(None, 220), (b"EHLO probe.test\r\n", 250), (b"MAIL FROM:<bench@source.test>\r\n", 250)]
        want += [(f"RCPT TO:<{i}rcpt@sink.test>\r\n".encode(), 250) for i in range(recipients)]
        want += [(b"DATA\r\n", 354), (body, 250)]
        for line, code in want:
            if line is not None:
                writer.write(line)
                await writer.drain()
            got = await read_reply(reader)
            if got != code:
                raise RuntimeError(f"probe: {line!r} got {got}, want {code}")
        elapsed = time.perf_counter() - start
        writer.write(b"QUIT\r\n")
        await writer.drain()
        await read_reply(reader)
        return elapsed
    finally:
        writer.close()


async def probe_run(port, sessions, transactions, body, recipients):
    todo = iter(range(transactions))
    times = []

    async def worker():
        for _ in todo:
            times.append(await probe_transaction(port, body, recipients))

    await asyncio.gather(*(worker() for _ in range(sessions)))
    return times


def probe(port, sessions, transactions, size, recipients):
    """Latencies (seconds) of `transactions` transactions, `sessions` at a time."""
    return asyncio.run(probe_run(port, sessions, transactions, probe_body(size), recipients))


def percentile(samples, p):
    if not samples:
        return None
    s = sorted(samples)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


# ---------------------------------------------------------------- cases

def local_address():
    """An address of this host other than loopback (as a remote client's would be), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: the kernel only picks the route
            ip = s.getsockname()[0]
        except OSError:
            return None
    return None if ip.startswith("127.") else ip


def checks_setup(work, full=False, sign_ed25519=False):
    """(the DNS server, the address smtp-source connects from, the config tables, the message file or
    None) for a checks case; `full`: DKIM, DMARC and signing too, with a message its sender signed
    (RSA), the proxy signing with an RSA key, or an Ed25519 one."""
    sys.path.insert(0, os.path.join(HERE, "..", "tests", "dns"))
    from dns_server import DnsServer

    ip = local_address() or "127.0.0.1"
    zones = {"source.test": [{"TXT": f"v=spf1 ip4:{ip} ip4:127.0.0.1 -all"}, {"A": ip}]}  # (the probe: loopback)
    tables = '[checks]\nspf = true\nauthentication_results = true\n'
    message_file = None
    if full:
        key, record = dkim_key(work)
        zones["sel._domainkey.source.test"] = [{"TXT": record}]
        zones["_dmarc.source.test"] = [{"TXT": "v=DMARC1; p=reject"}]
        signing_key = key
        if sign_ed25519:
            signing_key = os.path.join(work, "ed25519.pem")
            subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", signing_key], check=True,
                           capture_output=True)
        # (arc = false: the issue's full stack, as measured before ARC went with DKIM by default)
        tables += (f'dkim = true\ndmarc = true\narc = false\n[dkim_sign]\ndomains = ["source.test"]\nselector = "out"\n'
                   f'key_file = "{signing_key}"\nnetworks = ["127.0.0.0/8", "{ip}"]\n')
        message_file = signed_message_file(work, key)
    server = DnsServer(zones).start()
    tables += f'[dns]\nnameserver = "127.0.0.1:{server.port}"\n'
    return server, ip, tables, message_file


def ready_made_tables(work):
    """The [aliases], [senders] and [ratelimit] tables of the ready-made case, with their files."""
    aliases = os.path.join(work, "aliases")
    with open(aliases, "w") as f:
        for i in range(ALIAS_ENTRIES):
            f.write(f"user{i}@sink.test  mailbox{i}@sink.test, user{i}@elsewhere.test\n")
        for prefix in [""] + [str(i) for i in range(10)]:  # smtp-source's and the probe's recipients
            f.write(f"{prefix}rcpt@sink.test  {prefix}rcpt.box@sink.test\n")
    senders = os.path.join(work, "senders")
    with open(senders, "w") as f:  # the bench's sender is not listed, nor local: it passes, after the lookups
        for i in range(1000):
            f.write(f"user{i}@sink.test  login{i}\n")
    return (f'[aliases]\nfile = "{aliases}"\nlocal_domains = ["sink.test"]\n'
            f'[senders]\nfile = "{senders}"\n'
            '[ratelimit]\nwindow = 3600\nmessages_per_client = 100000000\nrecipients_per_client = 100000000\n'
            'messages_per_sender = 100000000\n')


def dkim_key(work):
    """An RSA 2048 key file and its DKIM record."""
    key = os.path.join(work, "dkim.pem")
    subprocess.run(["openssl", "genrsa", "-out", key, "2048"], check=True, capture_output=True)
    der = subprocess.run(["openssl", "rsa", "-in", key, "-pubout", "-outform", "DER"], check=True,
                         capture_output=True).stdout
    return key, "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()


def signed_message_file(work, key):
    """A 4 KiB message signed by dkimpy as source.test (selector sel), in LF lines for smtp-source -F."""
    import dkim

    line = b"x" * 76 + b"\r\n"
    message = (b"From: Bench <bench@source.test>\r\nTo: <rcpt@sink.test>\r\nSubject: full stack\r\n"
               b"Date: Wed, 02 Dec 2026 12:00:00 +0000\r\nMessage-ID: <bench@source.test>\r\n\r\n" + line * 52)
    with open(key, "rb") as f:
        signature = dkim.sign(message, b"sel", b"source.test", f.read(),
                              include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
    path = os.path.join(work, "signed.eml")
    with open(path, "wb") as f:
        f.write((signature + message).replace(b"\r\n", b"\n"))
    return path


def run_flow(args, sink, work, case):
    """Throughput, CPU, latency, peak RSS and delivery for one smtp-source load."""
    _, name, policy, sessions, share, size, rcpts, *options = case
    messages = max(20, int(args.messages * share))
    transactions = max(2 * sessions, min(args.probe, messages))
    dns_server, host, tables, message_file = (checks_setup(work, "full" in options, "ed25519" in options) if "checks" in options
                                              else (None, "127.0.0.1", "", None))
    if "ready-made" in options:
        tables = ready_made_tables(work)
    proxy = Proxy(args.bin, work, sink.port, policy, workers=args.workers, listen_ip=host, tables=tables)
    # A case with a policy runs the same load through a daemon without one in
    # each round too: the hook cost is the difference of two CPU figures taken
    # a moment apart, not minutes apart in two cases (this machine drifts).
    # (Not for the checks cases: their cost is the checks', not the hooks'.)
    bare = Proxy(args.bin, work, sink.port, None, workers=args.workers) if policy and not tables else None
    direct, via, ratios, rounds, cpu, bare_cpu, lat_direct, lat_proxy = [], [], [], [], [], [], [], []
    signing = {}
    ok = True
    memory = MemorySampler(proxy.pids)

    def direct_rate():
        return messages / smtp_source(sink.port, sessions, messages, size, rcpts, message_file=message_file)

    try:
        proxy.reset_peak_rss()  # start-up (loading Python, the policy) is not the case's
        memory.start()
        # Direct before the first round and after each: a round's proxied run is
        # compared with the direct runs on both sides of it, so the machine's drift
        # within the round cancels out. Every direct run but the first follows the
        # same step (the proxied run's probe): none runs straight after another,
        # whose connections in TIME_WAIT to the same port would slow it.
        direct_before = direct_rate()
        for _ in range(args.rounds):
            lat_direct += probe(sink.port, sessions, transactions, size, rcpts)
            if bare:
                cpu0 = bare.cpu()
                smtp_source(bare.port, sessions, messages, size, rcpts)
                bare_cpu.append((bare.cpu() - cpu0) / messages * 1e6)
            before = sink.settle()
            cpu0 = proxy.cpu()
            via.append(messages / smtp_source(proxy.port, sessions, messages, size, rcpts, host,
                                              message_file=message_file))
            cpu.append((proxy.cpu() - cpu0) / messages * 1e6)
            lat_proxy += probe(proxy.port, sessions, transactions, size, rcpts)
            ok = ok and sink.settle() - before == messages + transactions
            direct_after = direct_rate()
            direct.append((direct_before + direct_after) / 2)
            ratios.append(via[-1] / direct[-1])
            rounds.append({"direct_before_per_s": direct_before, "proxy_per_s": via[-1],
                           "direct_after_per_s": direct_after, "cpu_us_per_msg": cpu[-1],
                           **({"bare_cpu_us_per_msg": bare_cpu[-1]} if bare else {})})
            direct_before = direct_after
        rss = sum(proxy.status("VmHWM").values())  # each process's peak, summed
        restarted = proxy.restarted()
        if "full" in options:  # the proxy signs every message: what that alone costs here
            algorithm = "ed25519" if "ed25519" in options else "rsa2048"
            signing = {"signature_algorithm": algorithm, "signature_us": signature_us(algorithm),
                       "direct_ends_cpu_us_per_msg": direct_cpu_per_message(sink, sessions, messages, size, rcpts,
                                                                            message_file)}
    finally:
        peak_pss, peak_group = memory.stop() if memory.is_alive() else (0, None)
        proxy.stop()
        if bare:
            bare.stop()
        if dns_server:
            dns_server.stop()
    d, p = statistics.median(direct), statistics.median(via)
    calls = hook_calls(policy, rcpts)
    ms = lambda samples, q: None if not samples else percentile(samples, q) * 1e3
    return {"case": name, "kind": "flow", "policy": policy, "sessions": sessions, "messages": messages,
            "size": size, "recipients": rcpts, "direct_per_s": d, "proxy_per_s": p,
            "ratio": statistics.median(ratios), "rounds": rounds,
            "cpu_us_per_msg": statistics.median(cpu),
            "hook_calls_per_msg": calls,
            # the median over the rounds of (this round's CPU - the bare daemon's) / calls
            "hook_us_per_call": statistics.median((c - b) / calls for c, b in zip(cpu, bare_cpu))
            if bare_cpu and calls else None,
            "p50_direct_ms": ms(lat_direct, 50), "p99_direct_ms": ms(lat_direct, 99),
            "p50_proxy_ms": ms(lat_proxy, 50), "p99_proxy_ms": ms(lat_proxy, 99),
            "probe_transactions": len(lat_proxy), "peak_rss_bytes": peak_group or rss, "peak_rss_sum_bytes": rss,
            "rss_pages_once": bool(peak_group),
            "peak_pss_bytes": peak_pss,
            "processes": len(proxy.pids),
            "restarted": restarted, "delivered_all": ok, **signing}


def run_big(args, sink, work, case):
    """One 50 MiB message per round: throughput and how much RSS grows for it in the worker that took it.

    Per process (VmHWM after minus VmRSS before), the largest growth: each
    round's message goes to one worker, whichever the kernel picks."""
    _, name, policy, _, _, size, _ = case
    proxy = Proxy(args.bin, work, sink.port, policy, workers=args.workers)
    direct, via = [], []
    ok = True
    try:
        # Small messages first, so that what one upstream transaction sets up once is in the baseline of
        # every worker: each is a connection of its own, which the kernel gives to a worker by a hash of
        # its ports, so WARM_UP_PER_WORKER per worker leaves a given worker out with odds under e^-16.
        warm = WARM_UP_PER_WORKER * proxy.workers
        before = sink.settle()
        smtp_source(proxy.port, 1, warm, 4096, 1)
        ok = sink.settle() - before == warm
        time.sleep(0.5)
        baseline = proxy.status("VmRSS")
        peak_is_own = proxy.reset_peak_rss()
        for _ in range(args.rounds):
            direct.append(size / MIB / smtp_source(sink.port, 1, 1, size, 1))
            before = sink.settle()
            via.append(size / MIB / smtp_source(proxy.port, 1, 1, size, 1))
            ok = ok and sink.settle() - before == 1
        peak = proxy.status("VmHWM")
        restarted = proxy.restarted()
    finally:
        proxy.stop()
    d, p = statistics.median(direct), statistics.median(via)
    took = max(peak, key=lambda pid: peak[pid] - baseline[pid])  # the process that grew most
    return {"case": name, "kind": "big", "policy": policy, "size": size, "direct_mib_per_s": d,
            "proxy_mib_per_s": p, "ratio": p / d, "baseline_rss_bytes": baseline[took],
            "peak_rss_bytes": peak[took], "rss_growth_bytes": peak[took] - baseline[took],
            "grown_pid_is_worker": took != proxy.proc.pid or proxy.workers == 1,
            "peak_since_start": not peak_is_own, "processes": len(proxy.pids), "restarted": restarted,
            "delivered_all": ok}


async def idle_open(port, count):
    """`count` connections that read the banner and EHLO's reply, then stay idle. Returns (writers, refused)."""
    gate = asyncio.Semaphore(IDLE_HANDSHAKES_IN_FLIGHT)
    writers, refused = [], []

    async def one(i):
        async with gate:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            # The source address spreads the 4-tuples; the port is chosen at connect (no bind-time exhaustion).
            sock.setsockopt(socket.SOL_IP, getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24), 1)
            sock.bind((f"127.0.0.{2 + i % IDLE_SOURCES}", 0))
            try:
                await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
                reader, writer = await asyncio.open_connection(sock=sock)
                banner = await read_reply(reader, IDLE_REPLY_TIMEOUT)
                writer.write(b"EHLO idle.test\r\n")
                await writer.drain()
                ehlo = await read_reply(reader, IDLE_REPLY_TIMEOUT)
                if (banner, ehlo) != (220, 250):
                    raise RuntimeError(f"banner {banner}, EHLO {ehlo}")
                writers.append(writer)
            except (OSError, RuntimeError, asyncio.TimeoutError) as e:
                sock.close()
                refused.append(str(e) or type(e).__name__)

    await asyncio.gather(*(one(i) for i in range(count)))
    return writers, refused


def run_idle(args, sink, work, case):
    """RSS per idle connection (after banner and EHLO) at 10,000 connections: the proxy alone."""
    _, name, policy, count, _, _, _ = case
    proxy = Proxy(args.bin, work, sink.port, policy, workers=args.workers)
    try:
        time.sleep(0.5)
        before = sum(proxy.status("VmRSS").values())  # every process's, summed

        async def hold():
            writers, refused = await idle_open(proxy.port, count)
            await asyncio.sleep(IDLE_HOLD_SECONDS)
            during = sum(proxy.status("VmRSS").values())
            for w in writers:
                w.close()
            return len(writers), refused, during

        opened, refused, during = asyncio.run(hold())
        alive = proxy.proc.poll() is None
        restarted = proxy.restarted()
    finally:
        proxy.stop()
    return {"case": name, "kind": "idle", "policy": policy, "connections": count, "opened": opened,
            "refused": len(refused), "refused_why": sorted(set(refused))[:5], "rss_before_bytes": before,
            "rss_idle_bytes": during, "rss_per_connection_bytes": (during - before) / max(1, opened),
            "daemon_alive": alive, "processes": len(proxy.pids), "restarted": restarted, "delivered_all": True}


# ---------------------------------------------------------------- targets and the table

def targets(results):
    """Each result's checks: (what, holds) against the targets of issues 8 and 9."""
    for r in results:
        checks = []
        name = r["case"]
        if r["kind"] == "flow" and r.get("hook_us_per_call") is not None:
            if r["policy"] in ("noop_plain.py", "noop_async.py") and r["size"] == 4096:
                checks.append((f"hook < {HOOK_COST_MAX_US} us/call", r["hook_us_per_call"] < HOOK_COST_MAX_US))
        if name == "no policy, 20 sessions, 4 KiB":
            checks.append((f"ratio >= {RATIO_MIN_NO_POLICY_20}", r["ratio"] >= RATIO_MIN_NO_POLICY_20))
        if name in ("no-op hooks (plain), 20 sessions, 4 KiB", "no-op hooks (async), 20 sessions, 4 KiB"):
            checks.append((f"ratio >= {RATIO_MIN_HOOKS_20}", r["ratio"] >= RATIO_MIN_HOOKS_20))
        if name == "no-op hooks (plain), 1 session, 4 KiB":
            checks.append((f"ratio >= {RATIO_MIN_HOOKS_1}", r["ratio"] >= RATIO_MIN_HOOKS_1))
        if name.startswith("full stack"):
            checks.append((f"ratio >= {RATIO_MIN_FULL_STACK_20}", r["ratio"] >= RATIO_MIN_FULL_STACK_20))
        if name.startswith("aliases (100,000)"):
            checks.append((f"ratio >= {RATIO_MIN_READY_MADE_20}", r["ratio"] >= RATIO_MIN_READY_MADE_20))
        if name == "no-op hooks (plain), 20 sessions, 1 MiB":
            # Resident pages counted once (see the docstring); PSS splits the shared ones.
            checks.append(("peak RSS < 60 MB", r["peak_rss_bytes"] < PEAK_RSS_MAX_BYTES))
            checks.append(("peak PSS < 60 MB", 0 < r["peak_pss_bytes"] < PEAK_RSS_MAX_BYTES))
        if r["kind"] == "big":
            checks.append((f"RSS growth <= {BIG_GROWTH_MAX_BYTES // MIB} MiB", r["rss_growth_bytes"] <= BIG_GROWTH_MAX_BYTES))
        if r["kind"] == "idle":
            checks.append(("all accepted", r["opened"] == r["connections"] and r["daemon_alive"]))
            checks.append((f"< {IDLE_CONN_MAX_BYTES >> 10} KiB/conn", r["rss_per_connection_bytes"] < IDLE_CONN_MAX_BYTES))
        checks.append(("every message arrived", r["delivered_all"]))
        if r["restarted"]:
            checks.append(("no worker restarted", False))
        r["targets"] = [{"target": what, "holds": holds} for what, holds in checks]


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def row_text(r):
    """The columns a result shares with the others; the kind-specific figures go to `notes`."""
    cols = {"direct": None, "proxy": None, "ratio": r.get("ratio"), "cpu": r.get("cpu_us_per_msg"),
            "hook": r.get("hook_us_per_call"), "p50d": r.get("p50_direct_ms"), "p99d": r.get("p99_direct_ms"),
            "p50p": r.get("p50_proxy_ms"), "p99p": r.get("p99_proxy_ms"), "rss": r.get("peak_rss_bytes"),
            "pss": r.get("peak_pss_bytes")}
    if r["kind"] == "flow":
        cols["direct"], cols["proxy"] = f"{r['direct_per_s']:.0f}", f"{r['proxy_per_s']:.0f}"
    elif r["kind"] == "big":
        cols["direct"], cols["proxy"] = f"{r['direct_mib_per_s']:.0f}MiB", f"{r['proxy_mib_per_s']:.0f}MiB"
    else:
        cols["rss"] = r["rss_idle_bytes"]
    return (f"{r['case']:42} {cols['direct'] or '-':>8} {cols['proxy'] or '-':>8} {fmt(cols['ratio'], '.2f'):>5} "
            f"{fmt(cols['cpu'], '.0f'):>6} {fmt(cols['hook'], '.1f'):>6} "
            f"{fmt(cols['p50d'], '.1f'):>6} {fmt(cols['p99d'], '.1f'):>6} "
            f"{fmt(cols['p50p'], '.1f'):>6} {fmt(cols['p99p'], '.1f'):>6} "
            f"{fmt(cols['rss'] / MIB if cols['rss'] else None, '.1f'):>7} "
            f"{fmt(cols['pss'] / MIB if cols['pss'] else None, '.1f'):>7} {'all' if r['delivered_all'] else 'LOST':>4}")


HEADER = (f"{'case':42} {'direct/s':>8} {'proxy/s':>8} {'ratio':>5} {'CPU us':>6} {'us/hk':>6} "
          f"{'p50 d':>6} {'p99 d':>6} {'p50 p':>6} {'p99 p':>6} {'RSS MiB':>7} {'PSS MiB':>7} {'mail':>4}")


def notes(r):
    if r["restarted"]:
        return "A WORKER WAS RESTARTED during the case: its figures are void (see the daemon's log)"
    if r["kind"] == "big":
        who = "the worker that took it" if r["processes"] > 1 else "the daemon"
        if not r["grown_pid_is_worker"]:
            who = "the supervisor (no worker grew more)"
        return (f"RSS of {who}: {r['baseline_rss_bytes'] / MIB:.1f} MiB before, peak {r['peak_rss_bytes'] / MIB:.1f} MiB: "
                f"grew {r['rss_growth_bytes'] / MIB:.1f} MiB" + (" (peak since start-up)" if r["peak_since_start"] else ""))
    if r["kind"] == "idle":
        s = (f"{r['opened']} of {r['connections']} open, RSS {r['rss_before_bytes'] / MIB:.1f} -> "
             f"{r['rss_idle_bytes'] / MIB:.1f} MiB: {r['rss_per_connection_bytes'] / 1024:.1f} KiB per connection")
        if r["refused"]:
            s += f"; {r['refused']} refused: {'; '.join(r['refused_why'])}"
        return s + ("" if r["daemon_alive"] else "; THE DAEMON DIED")
    lines = []
    if r["kind"] == "flow" and r["processes"] > 1:
        if not r["rss_pages_once"]:
            lines.append(f"RSS: the sum of the {r['processes']} processes' peaks (frame numbers need root)")
        else:
            lines.append(f"RSS summed over the {r['processes']} processes' peaks: {r['peak_rss_sum_bytes'] / MIB:.1f} MiB")
    if "signature_us" in r:
        lines.append(signing_note(r))
    return "\n      ".join(lines)


def signing_budget_us(r, ratio):
    """The proxy's CPU per message that `ratio` of direct's rate leaves on this machine's cores,
    once smtp-source and smtp-sink have taken theirs (as much as in a direct run)."""
    cores = os.cpu_count() or 1
    return cores * 1e6 / (ratio * r["direct_per_s"]) - r["direct_ends_cpu_us_per_msg"]


def signing_note(r):
    """Whether the signature alone fits the ratio target's CPU budget: a machine slow at big-number
    arithmetic and fast at system calls can put the full-stack target out of reach."""
    budget = signing_budget_us(r, RATIO_MIN_FULL_STACK_20)
    return (f"signing ({r['signature_algorithm']}): {r['signature_us']:.0f} us a signature here "
            f"({'libsodium' if r['signature_algorithm'] == 'ed25519' else 'openssl speed'}); "
            f"smtp-source + smtp-sink take {r['direct_ends_cpu_us_per_msg']:.0f} us a message, so at direct's "
            f"{r['direct_per_s']:.0f}/s a ratio of {RATIO_MIN_FULL_STACK_20} leaves the proxy {budget:.0f} us: "
            + (f"the signature alone is {r['signature_us'] / budget:.0%} of it" if budget > 0
               else "nothing, whatever it does"))


def processes_note(workers):
    """What CPU and RSS are taken over, for the line above the table."""
    n = workers or os.cpu_count() or 1
    if n == 1:
        return f"workers = {workers}: one process, no supervisor; CPU and RSS are its own"
    return (f"workers = {workers} ({n} worker processes and their supervisor): CPU us is the sum over the "
            f"{n + 1} processes; RSS MiB their peak resident memory, each page once however many of them map it "
            f"(sampled every 0.5 s; the sum of each one's peak is in the notes); PSS MiB the peak of their PSS sum "
            f"(every 0.1 s, shared pages split between them); the 50 MiB case: the worker that grew most")


def print_table(results, workers):
    print("\n" + processes_note(workers))
    print(HEADER)
    for r in results:
        print(row_text(r))
    print("\ncase: targets (issue 8)")
    for r in results:
        checks = ", ".join(f"{t['target']}: {'pass' if t['holds'] else 'FAIL'}" for t in r["targets"])
        extra = notes(r)
        print(f"  {r['case']}: {checks}" + (f"\n      {extra}" if extra else ""))
    met = sum(t["holds"] for r in results for t in r["targets"])
    total = sum(len(r["targets"]) for r in results)
    print(f"\n{met} of {total} targets hold", flush=True)


def byte_compile() -> None:
    """The Python the daemons load, byte-compiled as an installed package is (its postinst):
    where the environment sets PYTHONDONTWRITEBYTECODE, each daemon would compile the
    package from source, 40 ms and 3 MiB of RSS per process that are no proxy's cost.
    (scripts/build.sh does the same for the tree; this run may have no build, or
    PORTCULLIS_PYTHON_PATH.)"""
    import compileall
    dirs = [os.environ.get("PORTCULLIS_PYTHON_PATH") or os.path.join(HERE, "..", "python"),
            os.path.join(HERE, "..", "policies"), os.path.join(HERE, "policies")]
    for d in dirs:
        compileall.compile_dir(d, quiet=2)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default="build/portcullis")
    ap.add_argument("--messages", type=int, default=5000, help="messages of a 20-session 4 KiB case")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--probe", type=int, default=200, help="latency probe transactions per run (at most the messages)")
    ap.add_argument("--only", default="", help="run the cases whose name contains this")
    ap.add_argument("--json", metavar="FILE", help="write the figures and targets as JSON")
    ap.add_argument("--workers", type=int, default=0,
                    help="server.workers of the daemon (default 0, the daemon's own: one per core; 1: one process)")
    args = ap.parse_args()
    if args.workers < 0:
        ap.error("--workers must be 0 or more")

    fd_limit = raise_fd_limit()
    byte_compile()
    cases = [c for c in CASES if args.only in c[1]]
    if any(c[0] == "idle" for c in cases) and fd_limit < IDLE_CONNECTIONS + 100:
        sys.exit(f"the idle case needs {IDLE_CONNECTIONS + 100} file descriptors; the hard limit is {fd_limit}")
    work = tempfile.mkdtemp(prefix="portcullis-bench-")
    sink = Sink(work)
    results = []
    print(processes_note(args.workers))
    print(HEADER, flush=True)
    try:
        for case in cases:
            run = {"flow": run_flow, "big": run_big, "idle": run_idle}[case[0]]
            r = run(args, sink, work, case)
            results.append(r)
            print(row_text(r), flush=True)
    finally:
        sink.stop()
    targets(results)
    print_table(results, args.workers)
    if args.json:
        meta = {"rounds": args.rounds, "messages": args.messages, "cpus": os.cpu_count(), "workers": args.workers,
                "time": time.time(),
                "commit": subprocess.run(["git", "-C", HERE, "rev-parse", "--short", "HEAD"], capture_output=True,
                                         text=True).stdout.strip()}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=1)
    if not all(r["delivered_all"] for r in results):
        sys.exit("mail was lost: see above")
    if any(r["kind"] == "idle" and not r["daemon_alive"] for r in results):
        sys.exit("the daemon died during the idle case")
    if any(r["restarted"] for r in results):
        sys.exit("a worker was restarted during a case: see above")


if __name__ == "__main__":
    main()

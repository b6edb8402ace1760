#!/usr/bin/python3
"""Throughput and memory of the proxy, measured with Postfix's own load tools.

smtp-source (client) -> portcullis -> smtp-sink (upstream), against the same
load sent straight to smtp-sink. Direct and proxied runs alternate, round
after round, in one run: this machine is shared and noisy, so the figure
that counts is the ratio to direct, as a median over the rounds.

    bench/run.sh                                  # builds, then every case, 3 rounds
    bench/bench.py --bin build/portcullis --rounds 5 --messages 5000
    bench/bench.py --only "no policy"             # the cases whose name contains this

Each line: messages/s direct and through the proxy (medians), the ratio,
the proxy's CPU per message (median, user + system), its peak RSS (VmHWM)
and whether the sink received every message sent through the proxy (a run
that loses mail fails: exit 1).
"""
import argparse
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))

# name, policy file (bench/policies/), parallel sessions, messages (x --messages), size, recipients
CASES = [
    ("no policy, 20 sessions, 4 KiB", None, 20, 1.0, 4096, 1),
    ("no policy, 20 sessions, 4 KiB x5 rcpt", None, 20, 0.5, 4096, 5),
    ("no policy, 1 session, 4 KiB", None, 1, 0.1, 4096, 1),
    ("no policy, 4 sessions, 1 MiB", None, 4, 0.02, 1 << 20, 1),
    ("no-op hooks (plain), 20 sessions, 4 KiB", "noop_plain.py", 20, 1.0, 4096, 1),
    ("no-op hooks (async), 20 sessions, 4 KiB", "noop_async.py", 20, 1.0, 4096, 1),
    ("no-op hooks (plain), 1 session, 4 KiB", "noop_plain.py", 1, 0.1, 4096, 1),
    ("one hook (rcpt), 20 sessions, 4 KiB", "one_hook.py", 20, 1.0, 4096, 1),
    ("no-op hooks (mixed), 4 sessions, 1 MiB", "noop.py", 4, 0.02, 1 << 20, 1),
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
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])  # kB
    return 0


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
    def __init__(self, binary, work, sink_port, policy):
        self.port = free_port()
        cfg = os.path.join(work, f"bench-{self.port}.toml")
        with open(cfg, "w") as f:
            f.write(f"""[server]
hostname = "bench.test"
listen = ["127.0.0.1:{self.port}"]
max_connections = 2000
max_connections_per_client = 2000
# One process: CPU and RSS below are read from this pid alone (the default,
# one worker per core, would put the work in child processes).
workers = 1
[upstream]
url = "smtp://127.0.0.1:{sink_port}"
""")
            if policy:
                f.write(f'[policy]\nfiles = ["{os.path.join(HERE, "policies", policy)}"]\n')
        self.log = os.path.join(work, f"portcullis-{self.port}.log")
        self.proc = subprocess.Popen([binary, "--config", cfg], stderr=open(self.log, "w"),
                                     env={**os.environ, "PORTCULLIS_LOG_LEVEL": "warn"})
        wait_port(self.port)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        if code != 0:
            sys.exit(f"portcullis exited {code}; see {self.log}")


def smtp_source(port, sessions, messages, size, recipients):
    cmd = ["smtp-source", "-s", str(sessions), "-m", str(messages), "-l", str(size),
           "-r", str(recipients), "-f", "bench@source.test", "-t", "rcpt@sink.test",
           f"127.0.0.1:{port}"]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, timeout=900)
    return time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default="build/portcullis")
    ap.add_argument("--messages", type=int, default=5000, help="messages of a 20-session 4 KiB case")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default="", help="run the cases whose name contains this")
    args = ap.parse_args()

    cases = [c for c in CASES if args.only in c[0]]
    work = tempfile.mkdtemp(prefix="portcullis-bench-")
    sink = Sink(work)
    lost = False
    print(f"{'case':42} {'direct/s':>9} {'proxy/s':>8} {'ratio':>6} {'CPU us/msg':>10} {'RSS MiB':>8} delivered",
          flush=True)
    try:
        for policy in dict.fromkeys(c[1] for c in cases):  # one proxy per policy, in order
            proxy = Proxy(args.bin, work, sink.port, policy)
            try:
                for name, _, sessions, share, size, rcpts in (c for c in cases if c[1] == policy):
                    messages = max(20, int(args.messages * share))
                    direct, via, cpu_per_msg = [], [], []
                    ok = True
                    for _ in range(args.rounds):
                        direct.append(messages / smtp_source(sink.port, sessions, messages, size, rcpts))
                        before = sink.settle()
                        cpu0 = cpu_seconds(proxy.proc.pid)
                        via.append(messages / smtp_source(proxy.port, sessions, messages, size, rcpts))
                        cpu_per_msg.append((cpu_seconds(proxy.proc.pid) - cpu0) / messages * 1e6)
                        ok = ok and sink.settle() - before == messages
                    lost = lost or not ok
                    d, p = statistics.median(direct), statistics.median(via)
                    rss = proc_status(proxy.proc.pid, "VmHWM") / 1024
                    print(f"{name:42} {d:9.0f} {p:8.0f} {p / d:6.2f} {statistics.median(cpu_per_msg):10.0f} "
                          f"{rss:8.1f} {'all' if ok else 'LOST MAIL'}", flush=True)
            finally:
                proxy.stop()
    finally:
        sink.stop()
    if lost:
        sys.exit("mail was lost: see above")


if __name__ == "__main__":
    main()

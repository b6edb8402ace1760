#!/usr/bin/python3
"""System calls per message of the daemon, split by side: the client's sockets, the upstream's, the rest.

    bench/syscalls.py --bin build/portcullis                 # smtp-source -s 20 -m 2000 -l 4096, no policy
    bench/syscalls.py --sessions 1 --messages 500 --policy noop_plain.py

Starts smtp-sink and the daemon (as bench.py does), attaches
`strace -f -qq -yy -o FILE -p PID` to the daemon, sends the load with
smtp-source through it, detaches, and counts every system call of every
thread in the trace. `-yy` names each descriptor with its addresses, so a
call on a socket whose local port is the proxy's own is the client side,
one whose peer is smtp-sink's port the upstream side; everything else
(epoll, timerfd, futex, eventfd, accept...) is "other". strace slows the
daemon a lot: the counts are the figure, not the rate.
"""
import argparse
import collections
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (Sink, Proxy, smtp_source)

CALL = re.compile(r"^(?:\d+\s+)?(?:<\.\.\. )?([a-z_0-9]+)(?: resumed>|\()(.*)")


def side_of(args, proxy_port, sink_port):
    if f"127.0.0.1:{proxy_port}->" in args:
        return "client"
    if f"->127.0.0.1:{sink_port}]" in args:
        return "upstream"
    return "other"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default="build/portcullis")
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--policy", default=None, help="a file in bench/policies/ (default: none)")
    ap.add_argument("--threads", type=int, default=None, help="server.threads (default: the daemon's, one per core)")
    ap.add_argument("--top", type=int, default=12, help="calls listed per side")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="portcullis-syscalls-")
    sink = bench.Sink(work)
    extra = "" if args.threads is None else f"threads = {args.threads}"
    proxy = bench.Proxy(args.bin, work, sink.port, args.policy, extra)
    trace = os.path.join(work, "strace.out")
    try:
        bench.smtp_source(proxy.port, 1, 1, 1024, 1)  # warm: the first session's one-off set-up is not counted
        before = sink.settle()
        strace = subprocess.Popen(["strace", "-f", "-qq", "-yy", "-o", trace, "-p", str(proxy.proc.pid)],
                                  stderr=subprocess.DEVNULL)
        time.sleep(1)  # strace attaches to every thread
        bench.smtp_source(proxy.port, args.sessions, args.messages, args.size, 1)
        arrived = sink.settle() - before
        strace.send_signal(signal.SIGINT)
        strace.wait(timeout=60)
    finally:
        proxy.stop()
        sink.stop()

    counts = collections.Counter()
    with open(trace, errors="replace") as f:
        for line in f:
            m = CALL.match(line)
            if not m or "resumed>" in line:  # an interrupted call is counted once, where it began
                continue
            counts[(side_of(m.group(2), proxy.port, sink.port), m.group(1))] += 1
    total = sum(counts.values())
    print(f"smtp-source -s {args.sessions} -m {args.messages} -l {args.size} through the proxy "
          f"({args.policy or 'no policy'}{'' if args.threads is None else f', threads = {args.threads}'}); "
          f"{arrived} of {args.messages} arrived")
    print(f"{'all sides':10} {total / args.messages:8.1f} per message ({total} calls)")
    for side in ("client", "upstream", "other"):
        n = sum(v for (s, _), v in counts.items() if s == side)
        top = sorted(((v, c) for (s, c), v in counts.items() if s == side), reverse=True)[:args.top]
        print(f"{side:10} {n / args.messages:8.1f} per message: "
              + ", ".join(f"{c} {v / args.messages:.1f}" for v, c in top))
    if arrived != args.messages:
        sys.exit("mail was lost")


if __name__ == "__main__":
    main()

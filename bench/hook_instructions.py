#!/usr/bin/python3
"""What a hook call costs in instructions: the daemon under callgrind, noise-free.

    bench/hook_instructions.py --bin build/portcullis            # ~2 minutes

Timings on a shared machine drift by a third from run to run; instruction
counts do not. This runs the daemon (one process, one I/O thread) under
valgrind's callgrind with no policy and with each no-op policy, sends
200 and then 1,000 messages of 4 KiB through it from one smtp-source
session to smtp-sink, and takes the difference, so start-up (loading
Python and the policy) cancels out. It prints the daemon's instructions
per message and, per hook call, what the policy adds to the no-policy run.
Instructions are not time (cache misses are not in them: see
bench/engine_jobs.py), but a change that lowers them lowers the CPU a hook
costs, and they tell two builds apart where bench.py cannot.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench import HOOK_CALLS, Sink, free_port, wait_port  # noqa: E402

SMALL, LARGE = 200, 1000


def instructions(binary, policy, messages, work, sink):
    """The daemon's instruction count for `messages` messages (start-up and shutdown included)."""
    port = free_port()
    cfg = os.path.join(work, f"callgrind-{port}.toml")
    with open(cfg, "w") as f:
        f.write(f'[server]\nhostname = "bench.test"\nlisten = ["127.0.0.1:{port}"]\nworkers = 1\nthreads = 1\n'
                f'[upstream]\nurl = "smtp://127.0.0.1:{sink.port}"\n')
        if policy:
            f.write(f'[policy]\nfiles = ["{os.path.join(HERE, "policies", policy)}"]\n')
    log = os.path.join(work, f"callgrind-{port}.log")
    proc = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={work}/callgrind-{port}.out",
                             binary, "--config", cfg], stderr=open(log, "w"), stdout=subprocess.DEVNULL,
                            env={**os.environ, "PORTCULLIS_LOG_LEVEL": "warn"})
    try:
        wait_port(port, timeout=120)
        subprocess.run(["smtp-source", "-s", "1", "-m", str(messages), "-l", "4096", "-f", "bench@source.test",
                        "-t", "rcpt@sink.test", f"127.0.0.1:{port}"], check=True, stdout=subprocess.DEVNULL,
                       timeout=900)
        time.sleep(0.5)
    finally:
        proc.terminate()
        proc.wait(timeout=120)
    with open(log) as f:
        found = re.search(r"Collected : (\d+)", f.read())
    if not found:
        sys.exit(f"no callgrind total in {log}")
    return int(found.group(1))


def per_message(binary, policy, work, sink):
    return (instructions(binary, policy, LARGE, work, sink) - instructions(binary, policy, SMALL, work, sink)) / (
        LARGE - SMALL)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=os.path.join(HERE, "..", "build", "portcullis"))
    ap.add_argument("--policy", action="append", help="bench/policies/ files (default: noop_plain.py, noop_async.py)")
    args = ap.parse_args()
    for tool in ("valgrind", "smtp-source", "smtp-sink"):
        if subprocess.run(["which", tool], stdout=subprocess.DEVNULL).returncode != 0:
            sys.exit(f"{tool} is missing (Debian: valgrind, postfix)")
    with tempfile.TemporaryDirectory() as work:
        sink = Sink(work)
        try:
            base = per_message(args.bin, None, work, sink)
            print(f"no policy: {base:,.0f} instructions per message")
            for policy in args.policy or ["noop_plain.py", "noop_async.py"]:
                calls = sum(HOOK_CALLS[policy])
                cost = per_message(args.bin, policy, work, sink)
                print(f"{policy}: {cost:,.0f} instructions per message, "
                      f"{(cost - base) / calls:,.0f} per hook call ({calls} calls per message)")
        finally:
            sink.stop()


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/python3
"""What a hook call costs in instructions: the daemon under callgrind, noise-free.

    bench/hook_instructions.py --bin build/portcullis            # ~2 minutes
    bench/hook_instructions.py --bin build/portcullis --full-stack   # the checks (issue 9's case), ~3 minutes
    bench/hook_instructions.py --bin build/portcullis --full-stack ed25519   # the same, signing with Ed25519
    bench/hook_instructions.py --bin build/portcullis --ready-made   # aliases (100,000) + senders + ratelimit, ~3 minutes

Timings on a shared machine drift by a third from run to run; instruction
counts do not. This runs the daemon (one process, one I/O thread) under
valgrind's callgrind with no policy and with each no-op policy, sends
200 and then 1,000 messages of 4 KiB through it from one smtp-source
session to smtp-sink, and takes the difference, so start-up (loading
Python and the policy) cancels out. It prints the daemon's instructions
per message and, per hook call, what the policy adds to the no-policy run.
Instructions are not time (cache misses are not in them: see
bench/engine_jobs.py), but a change that lowers them lowers the CPU a hook
costs, and they tell two builds apart where bench.py cannot. With
--full-stack it does the same for bench.py's full-stack case (100 and then
400 signed messages; the proxy signs with RSA-2048, or with Ed25519), and
splits what the crypto libraries (libcrypto, libsodium) take from the rest
(the message scans, the checks, the hook): under valgrind OpenSSL takes a
slower RSA path, so the crypto figure is several times the native one,
while the rest is what a change to our own code moves. With --ready-made, bench.py's
case of the ready-made policies (aliases with 100,000 entries, senders,
ratelimit on the memory store), 100 and then 400 messages.
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
from bench import HOOK_CALLS, READY_MADE, Sink, checks_setup, free_port, ready_made_tables, smtp_source, wait_port  # noqa: E402

SMALL, LARGE = 200, 1000
FULL_SMALL, FULL_LARGE = 100, 400  # the full stack: RSA signing is slow under valgrind


def instructions(binary, policy, messages, work, sink, checks=None):
    """The daemon's instruction count for `messages` messages (start-up and shutdown included), and
    its callgrind output file. `checks`: bench.py's full-stack setup (tables, client address, message file)."""
    tables, host, message_file = checks or ("", "127.0.0.1", None)
    port = free_port()
    cfg = os.path.join(work, f"callgrind-{port}.toml")
    listen = ", ".join(f'"{ip}:{port}"' for ip in dict.fromkeys(["127.0.0.1", host]))
    with open(cfg, "w") as f:
        f.write(f'[server]\nhostname = "bench.test"\nlisten = [{listen}]\nworkers = 1\nthreads = 1\n'
                f'[upstream]\nurl = "smtp://127.0.0.1:{sink.port}"\n{tables}')
        if policy:
            # One of bench/policies/, or a tuple of ready-made ones from policies/ (as bench.Proxy takes them).
            files = ([os.path.join(HERE, "..", "policies", p) for p in policy] if isinstance(policy, tuple)
                     else [os.path.join(HERE, "policies", policy)])
            f.write("[policy]\nfiles = [" + ", ".join(f'"{p}"' for p in files) + "]\n")
    log, out = os.path.join(work, f"callgrind-{port}.log"), os.path.join(work, f"callgrind-{port}.out")
    proc = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                             binary, "--config", cfg], stderr=open(log, "w"), stdout=subprocess.DEVNULL,
                            env={**os.environ, "PORTCULLIS_LOG_LEVEL": "warn"})
    try:
        wait_port(port, timeout=300)  # (the ready-made case loads 100,000 aliases under valgrind first)
        smtp_source(port, 1, messages, 4096, 1, host, message_file)
        time.sleep(0.5)
    finally:
        proc.terminate()
        proc.wait(timeout=120)
    with open(log) as f:
        found = re.search(r"Collected : (\d+)", f.read())
    if not found:
        sys.exit(f"no callgrind total in {log}")
    return int(found.group(1)), out


def crypto_instructions(out):
    """What the crypto libraries (libcrypto, libsodium) took of a callgrind output file."""
    annotated = subprocess.run(["callgrind_annotate", "--threshold=100", out], check=True, capture_output=True,
                               text=True).stdout
    return sum(int(m.group(1).replace(",", "")) for m in re.finditer(r"^\s*([\d,]+) .*lib(?:crypto|sodium)\.so", annotated, re.M))


def difference(binary, policy, work, sink, checks=None, counts=(SMALL, LARGE)):
    """(instructions per message, the small run's callgrind output, the large run's): two runs of
    `counts` messages, so that start-up cancels out."""
    small, large = counts
    (few, few_out), (many, many_out) = (instructions(binary, policy, n, work, sink, checks) for n in counts)
    return (many - few) / (large - small), few_out, many_out


def per_message(binary, policy, work, sink):
    return difference(binary, policy, work, sink)[0]


def ready_made_per_message(binary, work, sink):
    """Instructions per message of the ready-made policies' case."""
    checks = (ready_made_tables(work), "127.0.0.1", None)
    return difference(binary, READY_MADE, work, sink, checks, (FULL_SMALL, FULL_LARGE))[0]


def full_stack_per_message(binary, work, sink, checks):
    """(instructions, those outside the crypto libraries) per message of the full-stack case."""
    total, small_out, large_out = difference(binary, "rewrite.py", work, sink, checks, (FULL_SMALL, FULL_LARGE))
    crypto = (crypto_instructions(large_out) - crypto_instructions(small_out)) / (FULL_LARGE - FULL_SMALL)
    return total, total - crypto


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=os.path.join(HERE, "..", "build", "portcullis"))
    ap.add_argument("--policy", action="append", help="bench/policies/ files (default: noop_plain.py, noop_async.py)")
    ap.add_argument("--full-stack", nargs="?", const="rsa", choices=["rsa", "ed25519"],
                    help="instead: bench.py's full-stack case (SPF, DKIM, DMARC, rewrite.py, signing with RSA-2048 or "
                         "Ed25519; ~3 minutes), its instructions per message in the crypto libraries and outside them")
    ap.add_argument("--ready-made", action="store_true",
                    help="instead: bench.py's ready-made case (aliases, senders, ratelimit; ~3 minutes), "
                         "its instructions per message")
    args = ap.parse_args()
    for tool in ("valgrind", "smtp-source", "smtp-sink"):
        if subprocess.run(["which", tool], stdout=subprocess.DEVNULL).returncode != 0:
            sys.exit(f"{tool} is missing (Debian: valgrind, postfix)")
    with tempfile.TemporaryDirectory() as work:
        sink = Sink(work)
        try:
            if args.ready_made:
                total = ready_made_per_message(args.bin, work, sink)
                print(f"aliases (100,000) + senders + ratelimit: {total:,.0f} instructions per message")
                return
            if args.full_stack:
                dns_server, host, tables, message_file = checks_setup(work, full=True,
                                                                      sign_ed25519=args.full_stack == "ed25519")
                try:
                    total, outside = full_stack_per_message(args.bin, work, sink, (tables, host, message_file))
                finally:
                    dns_server.stop()
                print(f"full stack ({args.full_stack} signing): {total:,.0f} instructions per message, "
                      f"{outside:,.0f} outside libcrypto and libsodium (OpenSSL's RSA path is slower under valgrind "
                      f"than natively)")
                return
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

#!/usr/bin/python3
"""The Python side of a policy job, alone: microseconds per job with warm caches and cold ones.

    PYTHONPATH=python:build/python bench/engine_jobs.py                    # noop_plain.py, 3,000 sessions
    PYTHONPATH=python:build/python bench/engine_jobs.py --policy one_hook.py --evict 0 --evict 2048
    PYTHONPATH=python:build/python bench/engine_jobs.py --policy noop_async.py
    PYTHONPATH=python:build/python bench/engine_jobs.py --policy noop_async.py --through-loop
    PYTHONPATH=python:build/python bench/engine_jobs.py --ready-made --evict 0 --sessions 5000
    PYTHONPATH=python:build/python bench/engine_jobs.py --bytecodes --sessions 300   # where the Python time goes

Runs the jobs of one message per session (connect, helo, mail, rcpt, data,
disconnect: the stages the policy has), built in advance as the daemon
builds them, the way the daemon routes them: `EngineHost.run_plain` (what
an I/O thread or a policy worker calls) for plain hooks; for a policy whose
hooks are all `async def`, what an I/O thread does while the loop waits
(`_JobRunner.run_here`: the job's task made and stepped, its result
returned), or with `--through-loop` what the loop's thread does when the
job is queued for it (`_JobRunner.drain`: the job taken from the daemon,
its task made and stepped, its result handed back), one job a wake-up,
timed without the loop's own turn around it.
With `--evict N`, N KiB of memory are copied between two jobs, so each job
starts with the CPU caches the daemon's own I/O work leaves it (the
daemon's figure lies between 0 and a couple of MiB). The difference is
why a hook costs more in the daemon than here, warm.
With `--bytecodes`, nothing is timed: the same jobs run once more under a
tracer (`sys.settrace`, opcode events), which counts the bytecodes each
Python function runs per job. The counts do not drift with the machine's
load, and they show where the engine's own bookkeeping goes, function by
function (a bytecode is some 50-100 CPU instructions here).
"""
import argparse
import collections
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def jobs_of(session: int, job_from_dict, stages) -> list:
    sid = f"S{session}"
    conn = {"id": sid, "client_ip": "127.0.0.1", "client_port": 4000, "helo": None, "tls": False, "auth_user": None}
    tx = {"id": f"{sid}.1", "sender": "bench@source.test", "sender_params": {}, "recipients": []}
    out = []
    for stage in stages:
        job = {"stage": stage, "session": dict(conn, helo=None if stage == "connect" else "client.test"),
               "tx": None}
        if stage == "helo":
            job["hostname"] = "client.test"
        if stage in ("mail", "rcpt", "data"):
            job["tx"] = dict(tx, recipients=["rcpt@sink.test"] if stage == "data" else [])
        if stage == "rcpt":
            job.update(rcpt="rcpt@sink.test", rcpt_params={})
        if stage == "data":
            job["message"] = b"Subject: bench\r\n\r\n" + b"x" * 4000 + b"\r\n"
        out.append(job_from_dict(job))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--policy", default="noop_plain.py", help="a file in bench/policies/")
    ap.add_argument("--sessions", type=int, default=3000)
    ap.add_argument("--evict", type=int, action="append", help="KiB copied between two jobs (repeatable; default 0 and 2048)")
    ap.add_argument("--through-loop", action="store_true",
                    help="async jobs: through the loop's wake-up, not stepped on the calling thread")
    ap.add_argument("--ready-made", action="store_true",
                    help="instead of --policy: bench.py's ready-made case (policies/aliases.py, senders.py and "
                         "ratelimit.py, a 100,000-entry alias file, the memory store)")
    ap.add_argument("--bytecodes", action="store_true",
                    help="instead of timing: the bytecodes each Python function runs per job (sys.settrace)")
    args = ap.parse_args()
    from portcullis._engine import EngineHost, job_from_dict

    if args.ready_made:
        import tempfile
        import tomllib

        import bench

        args.policy = "ready-made"
        with tempfile.TemporaryDirectory(prefix="portcullis-engine-jobs-") as work:  # (read as the policies load)
            host = EngineHost([os.path.join(HERE, "..", "policies", p) for p in bench.READY_MADE],
                              config=tomllib.loads(bench.ready_made_tables(work)))
    else:
        host = EngineHost([os.path.join(HERE, "policies", args.policy)])
    stages = ["connect", "helo", "mail", "rcpt", "data", "disconnect"]
    hooked = [s for s in stages if host.engine.hooks[s]]
    on_loop = all(all(h.is_async for h in host.engine.hooks[s]) for s in hooked)
    wake_up = (LoopWakeUps if args.through_loop else StepsInPlace)(host) if on_loop else None

    def sessions_from(first: int) -> tuple[list, dict]:
        """The jobs of `args.sessions` sessions numbered from `first`, and each session's last job -> its id."""
        jobs = [j for n in range(first, first + args.sessions) for j in jobs_of(n, job_from_dict, hooked)]
        last = range(len(hooked) - 1, len(jobs), len(hooked))
        return jobs, {id(jobs[i]): f"S{first + i // len(hooked)}" for i in last}

    for evict in [0] if args.bytecodes else args.evict or [0, 2048]:
        jobs, ends = sessions_from(0)
        scratch = bytearray(evict * 1024)

        def measure() -> int:
            total = 0
            for job in jobs:
                if scratch:
                    scratch[:] = scratch
                forgotten = [ends[id(job)]] if "disconnect" not in hooked and id(job) in ends else None
                if wake_up:
                    total += wake_up.time(job)
                else:
                    t0 = time.perf_counter_ns()
                    host.run_plain(job, None)
                    total += time.perf_counter_ns() - t0
                if forgotten:  # the session ended with no disconnect hook: the daemon hands it over with the next job
                    host.forget(forgotten)
            return total

        where = wake_up.where if wake_up else "in place"
        if args.bytecodes:
            (wake_up.run(measure) if wake_up else measure())  # warm: specialized bytecode, caches filled
            jobs, ends = sessions_from(args.sessions)  # new sessions (measure() reads these names)
            counts = bytecodes_of(lambda: wake_up.run(measure) if wake_up else measure())
            print(f"{args.policy}: {sum(counts.values()) / len(jobs):.0f} bytecodes per job "
                  f"({', '.join(hooked)}; {where}), by function:")
            for (file, function), n in counts.most_common(25):
                print(f"{n / len(jobs):9.1f}  {function} ({file})")
            break
        total = wake_up.run(measure) if wake_up else measure()
        print(f"{args.policy}: {total / len(jobs) / 1000:.1f} us per job ({', '.join(hooked)}; {where}), "
              f"{evict} KiB evicted between jobs")
    if wake_up:
        wake_up.loop.close()
    host.close()


def bytecodes_of(run) -> collections.Counter:
    """The bytecodes ``run()`` executes, by (file name, function name), counted by a tracer
    (this file's own frames, the harness, left out)."""
    counts: collections.Counter = collections.Counter()

    def tracer(frame, event, arg):
        if frame.f_code.co_filename == __file__:
            return None
        frame.f_trace_opcodes = True
        if event == "opcode":
            counts[(os.path.basename(frame.f_code.co_filename), frame.f_code.co_name)] += 1
        return tracer

    sys.settrace(tracer)
    try:
        run()
    finally:
        sys.settrace(None)
    return counts


class LoopWakeUps:
    """The event loop's side of async jobs: each job brought by a wake-up of its own (``_JobRunner.drain``,
    called from a plain callback as the eventfd's reader is, so no task runs)."""

    where = "on the event loop's thread, a task each"

    def __init__(self, host) -> None:
        import asyncio
        from portcullis import _engine

        # The loop the daemon's policy thread runs (run_host), where the package has one of its own.
        self.loop = getattr(_engine, "_PolicyLoop", asyncio.new_event_loop)()
        _JobRunner = _engine._JobRunner
        host.loop = self.loop
        self.runner = _JobRunner(host, self.loop, self, -1)  # this object stands in for the daemon
        self.pending, self.completed, self.next_id = None, 0, 0

    def take_all(self):  # the daemon's side: (forgotten, jobs, cancelled, stuck, stopping)
        job, self.pending = self.pending, None
        return [], [job], [], [], False

    def complete(self, job_id, result) -> None:
        self.completed += 1

    def run(self, measure):
        """``measure()`` in a callback of the running loop (one loop for all jobs, as in the daemon)."""
        out = []
        self.loop.call_soon(lambda: out.append(measure()))
        self.loop.call_soon(self.loop.stop)
        self.loop.run_forever()
        return out[0]

    def time(self, job) -> int:
        """Nanoseconds of the wake-up that brings ``job``; it must complete there (no hook suspends)."""
        self.next_id += 1
        self.pending = (self.next_id, job)
        t0 = time.perf_counter_ns()
        self.runner.drain()
        elapsed = time.perf_counter_ns() - t0
        if self.completed != self.next_id:
            sys.exit(f"job {self.next_id} did not complete in its wake-up: a hook suspended")
        return elapsed


class StepsInPlace(LoopWakeUps):
    """An I/O thread's side of async jobs while the loop waits: each job's task made and stepped on the
    calling thread, no loop running there (``_JobRunner.run_here``)."""

    where = "stepped in place, a task each"

    def run(self, measure):
        return measure()

    def time(self, job) -> int:
        """Nanoseconds of ``run_here`` for ``job``; it must finish there (no hook suspends)."""
        self.next_id += 1
        t0 = time.perf_counter_ns()
        answer = self.runner.run_here(self.next_id, job)
        elapsed = time.perf_counter_ns() - t0
        if isinstance(answer, bool):
            sys.exit(f"job {self.next_id} did not finish in its first step: a hook suspended")
        return elapsed


if __name__ == "__main__":
    sys.exit(main())

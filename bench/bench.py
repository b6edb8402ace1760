#!/usr/bin/python3
"""Throughput and memory of the proxy, measured with Postfix's own load tools.

smtp-source (client) -> portcullis -> smtp-sink (upstream), against the same
load sent straight to smtp-sink as the baseline. Prints one line per scenario:
messages/s, MB/s, the proxy's CPU seconds and its peak RSS (VmHWM).

    bench/run.sh                    # builds, then runs every scenario
    bench/bench.py --bin build/portcullis --messages 20000
    bench/bench.py --policy bench/policies/noop.py   # the same through the Python engine
"""
import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time


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


def smtp_source(port, sessions, messages, size, recipients):
    cmd = ["smtp-source", "-s", str(sessions), "-m", str(messages), "-l", str(size),
           "-r", str(recipients), "-f", "bench@source.test", "-t", "rcpt@sink.test",
           f"127.0.0.1:{port}"]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, timeout=600)
    return time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="build/portcullis")
    ap.add_argument("--messages", type=int, default=10000)
    ap.add_argument("--policy", help="a policy file to run at every stage (see bench/policies/)")
    args = ap.parse_args()

    scenarios = [  # name, parallel sessions, messages, message size, recipients
        ("small 4KiB x1 rcpt, 20 sessions", 20, args.messages, 4096, 1),
        ("small 4KiB x5 rcpt, 20 sessions", 20, args.messages // 2, 4096, 5),
        ("large 1MiB, 4 sessions", 4, max(200, args.messages // 50), 1 << 20, 1),
    ]
    sink_port = free_port()
    sink = subprocess.Popen(["smtp-sink", "-u", "nobody", f"127.0.0.1:{sink_port}", "1000"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    work = tempfile.mkdtemp(prefix="portcullis-bench-")
    proxy_port = free_port()
    cfg = os.path.join(work, "bench.toml")
    with open(cfg, "w") as f:
        f.write(f"""[server]
hostname = "bench.test"
listen = ["127.0.0.1:{proxy_port}"]
max_connections = 2000
max_connections_per_client = 2000
[upstream]
url = "smtp://127.0.0.1:{sink_port}"
""")
        if args.policy:
            f.write(f'[policy]\nfiles = ["{os.path.abspath(args.policy)}"]\n')
    log = open(os.path.join(work, "portcullis.log"), "w")
    proxy = subprocess.Popen([args.bin, "--config", cfg], stderr=log,
                             env={**os.environ, "PORTCULLIS_LOG_LEVEL": "warn"})
    try:
        wait_port(sink_port)
        wait_port(proxy_port)
        print(f"{'scenario':36} {'direct msg/s':>12} {'proxy msg/s':>12} {'proxy MB/s':>10} "
              f"{'proxy CPU s':>11} {'RSS MiB':>8}")
        for name, sessions, messages, size, rcpts in scenarios:
            direct = smtp_source(sink_port, sessions, messages, size, rcpts)
            cpu0 = cpu_seconds(proxy.pid)
            via = smtp_source(proxy_port, sessions, messages, size, rcpts)
            cpu = cpu_seconds(proxy.pid) - cpu0
            rss = proc_status(proxy.pid, "VmHWM") / 1024
            print(f"{name:36} {messages / direct:12.0f} {messages / via:12.0f} "
                  f"{messages * size / via / 1e6:10.1f} {cpu:11.2f} {rss:8.1f}", flush=True)
        print(f"proxy: peak RSS {proc_status(proxy.pid, 'VmHWM') / 1024:.1f} MiB, "
              f"open fds {len(os.listdir(f'/proc/{proxy.pid}/fd'))} after the runs")
    finally:
        proxy.send_signal(signal.SIGTERM)
        code = proxy.wait(timeout=30)
        sink.kill()
        sink.wait()
    if code != 0:
        sys.exit(f"portcullis exited {code}; see {work}/portcullis.log")


if __name__ == "__main__":
    main()

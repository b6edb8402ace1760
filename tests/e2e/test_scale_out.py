"""The scale-out recipe (examples/scale-out/): a real HAProxy in TCP mode
sends every connection, with a PROXY protocol v2 header, round robin to two
Portcullis instances that share one real Redis. Mail relays through both;
each sees the real client (its address and port from the header, not
HAProxy's connection); and the limit per client address of
policies/ratelimit.py holds for the pair: N messages per window in all,
whichever instance served them. The example files run as they are, but for
ports, the upstream's and Redis's address and the frontend's bind address
(127.0.0.1, not every interface)."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import smtplib
import subprocess
import tomllib
from pathlib import Path

import pytest

from conftest import REPO_ROOT, Daemon, free_port, sanitized_python_env, stop_all, wait_until
from helpers.processes import stop
from helpers.redis_server import running_redis

EXAMPLE = REPO_ROOT / "examples" / "scale-out"
INSTANCES = ("portcullis-1.toml", "portcullis-2.toml")
BODY = b"Subject: through HAProxy\r\n\r\nhello\r\n"
EXTRA = 4  # messages past the limit: refused, two by each instance


def haproxy_binary() -> str | None:
    return shutil.which("haproxy", path=os.environ.get("PATH", "") + os.pathsep + "/usr/sbin:/sbin")


def listening(port: int) -> bool:
    want = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as f:
        return any(l.split()[1] == want and l.split()[3] == "0A" for l in f.readlines()[1:])


def stage(tmp_path: Path) -> Path:
    """examples/scale-out copied, with the repository's policies/ linked next to it."""
    folder = tmp_path / "scale-out"
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("policies"))
    (folder / "policies").symlink_to(REPO_ROOT / "policies")
    return folder


def test_the_example_configs_pass_their_checks(portcullis_bin, tmp_path):
    folder = stage(tmp_path)
    for name in INSTANCES:
        r = subprocess.run([str(portcullis_bin), "--check-config", str(folder / name)], capture_output=True,
                           text=True, timeout=120, env={**os.environ, **sanitized_python_env()})
        assert r.returncode == 0 and r.stdout.strip().endswith(": ok"), r.stdout + r.stderr
    # The two instances differ only in where they listen.
    one, two = (tomllib.loads((folder / name).read_text()) for name in INSTANCES)
    assert one["server"].pop("listen") != two["server"].pop("listen")
    assert one == two
    haproxy = haproxy_binary()
    if not haproxy:
        pytest.skip("haproxy is not installed (scripts/install-deps.sh --test installs it)")
    r = subprocess.run([haproxy, "-c", "-f", str(EXAMPLE / "haproxy.cfg")], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.fixture
def redis_url(tmp_path):
    if not shutil.which("redis-server"):
        pytest.skip("redis-server is not installed (scripts/install-deps.sh --test installs it)")
    (tmp_path / "redis").mkdir()
    with running_redis(tmp_path / "redis") as url:
        yield url


@pytest.fixture
def haproxy(tmp_path):
    """haproxy(config_path, port) -> runs HAProxy in the foreground (-db) until the test ends."""
    binary = haproxy_binary()
    if not binary:
        pytest.skip("haproxy is not installed (scripts/install-deps.sh --test installs it)")
    started = []

    def start(config: Path, port: int):
        log = open(tmp_path / "haproxy.log", "wb")
        proc = subprocess.Popen([binary, "-db", "-f", str(config)], stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT)
        started.append((proc, log))
        wait_until(lambda: listening(port) or proc.poll() is not None, timeout=10, what="HAProxy to listen")
        assert proc.poll() is None, (tmp_path / "haproxy.log").read_text()
        return proc

    yield start
    for proc, log in started:
        stop(proc)
        log.close()


@pytest.fixture
def instances(portcullis_bin, tmp_path, monkeypatch):
    """instances(config_paths) -> the two daemons, each run on its own staged config file."""
    for name, value in sanitized_python_env().items():
        monkeypatch.setenv(name, value)
    daemons: list[Daemon] = []

    def start(configs: list[tuple[Path, int]]) -> list[Daemon]:
        for config, port in configs:
            wd = tmp_path / config.stem
            wd.mkdir()
            d = Daemon(portcullis_bin, wd, "", {}, None)  # (writes a config of its own that is not used)
            d.config_path, d.port = config, port
            daemons.append(d)
            d.start()
        return daemons

    yield start
    stop_all(daemons)


def test_two_instances_behind_haproxy_share_one_client_limit(tmp_path, redis_url, aiosmtpd_upstream, haproxy,
                                                             instances):
    folder = stage(tmp_path)
    redis_host_port = re.match(r"redis://([^/]+)/", redis_url).group(1)
    upstream_host_port = aiosmtpd_upstream.url.removeprefix("smtp://")

    # The instances: their ports, the upstream's and Redis's addresses, and no XCLIENT (aiosmtpd
    # offers none); nothing else.
    ports = {}
    for name, example_port in zip(INSTANCES, (2525, 2526)):
        config = folder / name
        text = config.read_text()
        ports[example_port] = free_port()
        for old, new in ((f'"127.0.0.1:{example_port}"', f'"127.0.0.1:{ports[example_port]}"'),
                         ('"smtp://127.0.0.1:10025"', f'"smtp://{upstream_host_port}"'),
                         ('"redis://127.0.0.1:6379/0"', f'"redis://{redis_host_port}/0"'),
                         ('\nclient_info = "xclient"\n', "\n")):
            assert text.count(old) == 1, old
            text = text.replace(old, new)
        config.write_text(text)
    limit = tomllib.loads((folder / INSTANCES[0]).read_text())["ratelimit"]
    n, window = limit["messages_per_client"], limit["window"]
    mx1, mx2 = instances([(folder / name, ports[p]) for name, p in zip(INSTANCES, (2525, 2526))])

    # HAProxy: its frontend port (on 127.0.0.1) and the instances' ports; nothing else.
    front = free_port()
    cfg = folder / "haproxy.cfg"
    text = cfg.read_text()
    for old, new in (("bind :25\n", f"bind 127.0.0.1:{front}\n"),
                     ("127.0.0.1:2525\n", f"127.0.0.1:{ports[2525]}\n"),
                     ("127.0.0.1:2526\n", f"127.0.0.1:{ports[2526]}\n")):
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    cfg.write_text(text)
    haproxy(cfg, front)

    # N + EXTRA messages from one client, one connection each, all through HAProxy.
    outcomes = []  # (client port, reply code, reply text)
    for i in range(n + EXTRA):
        with smtplib.SMTP("127.0.0.1", front, local_hostname="client.test", timeout=10) as s:
            port = s.sock.getsockname()[1]
            try:
                s.sendmail(f"sender{i}@origin.example", ["rcpt@example.test"], BODY)
                outcomes.append((port, 250, ""))
            except smtplib.SMTPSenderRefused as e:
                outcomes.append((port, e.smtp_code, e.smtp_error.decode()))

    # Which instance served each connection, and that it saw the client's own address and port:
    # its TCP peer was HAProxy (another port), the PROXY v2 header named the client.
    served = {}
    for port, _, _ in outcomes:
        rx = rf"(\w{{12}}): PROXY v2: client \[127\.0\.0\.1\]:{port} via \[127\.0\.0\.1\]$"
        d = wait_until(lambda: next((d for d in (mx1, mx2) if re.search(rx, d.log_text(), re.M)), None),
                       what=f"the PROXY v2 line of client port {port}")
        sid = re.search(rx, d.log_text(), re.M).group(1)
        peer = re.search(rf"{sid}: connect from \[127\.0\.0\.1\]:(\d+)$", d.log_text(), re.M)
        assert peer and int(peer.group(1)) != port, f"session {sid} came from the client itself"
        served[port] = d

    accepted = [(p, c, t) for p, c, t in outcomes if c == 250]
    refused = [(p, c, t) for p, c, t in outcomes if c != 250]
    assert len(accepted) == n and len(refused) == EXTRA, outcomes
    assert outcomes[:n] == accepted, "a message under the limit was refused"
    rx = re.compile(rf"4\.7\.1 Rate limit reached for client 127\.0\.0\.1 \({n} messages per {window} s\); "
                    rf"try again in \d+ seconds$")
    assert all(c == 450 and rx.match(t) for _, c, t in refused), refused
    # Round robin: both instances delivered, and both refused (the other's messages counted too).
    assert {served[p] for p, _, _ in accepted} == {mx1, mx2}
    assert {served[p] for p, _, _ in refused} == {mx1, mx2}
    for d in (mx1, mx2):
        d.wait_log(r"verdict=delivered$")
    assert len(aiosmtpd_upstream.wait_messages(n)) == n

    # The count is in Redis (prefix portcullis:): the per-client message counters of this window
    # and maybe the one before (a test that crosses a window's end) add up to N.
    import redis
    r = redis.Redis.from_url(redis_url)
    try:
        digest = hashlib.sha256(b"client:127.0.0.1").hexdigest()[:32]
        keys = r.keys(f"portcullis:ratelimit:messages:{digest}:*")
        assert keys, r.keys("*")
        assert sum(int(r.get(k)) for k in keys) == n
        assert all(0 < r.ttl(k) <= 2 * window + 60 for k in keys)
    finally:
        r.close()

"""`--check-config` reports every problem it finds, each as man/portcullis.8 has it,
`FILE:LINE: key: what is wrong`, with the line of the key in the config: the
files the config names (certificates, the users file, keys, policies) too,
not only the first of them that fails."""

from __future__ import annotations

import os
import re
import subprocess

from conftest import render_toml, sanitized_python_env


def config_text(tables: dict) -> str:
    """A config that listens and has an upstream, with ``tables`` besides."""
    return render_toml({"server": {"hostname": "mx.test", "listen": ["127.0.0.1:2525"]},
                        "upstream": {"url": "smtp://127.0.0.1:25"}, **tables})


def check(portcullis_bin, cfg):
    return subprocess.run([str(portcullis_bin), "--check-config", str(cfg)], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **sanitized_python_env()})


def line_of(cfg, table: str, key: str) -> int:
    lines = cfg.read_text().splitlines()
    start = lines.index(f"[{table}]")
    return next(i for i, l in enumerate(lines[start:], start + 1) if l.startswith(f"{key} ="))


def test_every_broken_file_reference_is_reported_at_its_line(portcullis_bin, tmp_path):
    cfg = tmp_path / "multi.toml"
    cfg.write_text(config_text({
        "tls": {"cert": "nope.pem", "key": "nope.key"},
        "auth": {"users_file": "nousers"},
        "policy": {"files": ["nopolicy.py"]},
    }))
    r = check(portcullis_bin, cfg)
    assert r.returncode == 1, r
    assert r.stdout == ""
    want = [
        rf"{re.escape(str(cfg))}:{line_of(cfg, 'tls', 'cert')}: tls\.cert: {re.escape(str(tmp_path))}/nope\.pem: "
        rf"cannot use the certificate chain: .+",
        rf"{re.escape(str(cfg))}:{line_of(cfg, 'auth', 'users_file')}: auth\.users_file: "
        rf"{re.escape(str(tmp_path))}/nousers: cannot read: No such file or directory",
        rf"{re.escape(str(cfg))}:{line_of(cfg, 'policy', 'files')}: policy\.files: .*nopolicy\.py.*",
    ]
    lines = [l for l in r.stderr.splitlines() if l.startswith(str(cfg))]  # (the policy engine logs too)
    assert len(lines) == len(want), r.stderr
    for line, pattern in zip(lines, want):
        assert re.fullmatch(pattern, line), (line, r.stderr)


def test_a_problem_in_the_users_file_names_the_config_line_and_its_own(portcullis_bin, tmp_path):
    users = tmp_path / "users"
    users.write_text("alice:not-a-hash\nbob:also-not\n")
    cfg = tmp_path / "users.toml"
    cfg.write_text(config_text({
        "auth": {"users_file": "users", "allow_plaintext": True},
    }))
    r = check(portcullis_bin, cfg)
    assert r.returncode == 1, r
    prefix = f"{cfg}:{line_of(cfg, 'auth', 'users_file')}: auth.users_file: {users}:"
    lines = [l for l in r.stderr.splitlines() if l.startswith(str(cfg))]
    assert [l[:len(prefix) + 2] for l in lines] == [prefix + "1:", prefix + "2:"], r.stderr


def test_a_config_path_that_cannot_be_read_is_a_problem_not_a_crash(portcullis_bin, tmp_path):
    """A directory (or an I/O error) where the config should be: reported as any problem, exit 1,
    by --check-config and at start-up alike (it was an uncaught exception: abort, exit 134)."""
    where = tmp_path / "portcullis.toml"
    where.mkdir()
    r = check(portcullis_bin, where)
    assert r.returncode == 1, r
    assert r.stderr.splitlines() == [f"{where}: cannot read: Is a directory"], r.stderr
    r = subprocess.run([str(portcullis_bin), "--config", str(where)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r
    assert f"{where}: cannot read: Is a directory" in r.stderr


def test_a_setting_a_policy_refuses_is_reported_at_its_own_line(portcullis_bin, tmp_path):
    """CONTRACT.md: unknown keys are an error "with file and line". In a policy's own table the
    line given was [policy] files' (where the policy is named), not the key's."""
    policies = os.path.join(os.path.dirname(__file__), "..", "..", "policies")
    (tmp_path / "virtual").write_text("a@example.test a@example.test\n")
    for table, bad, message in (
            ({"file": "virtual", "bogus_key": 1}, "bogus_key", r"\[aliases\]: unknown key\(s\) bogus_key"),
            ({"file": "virtual", "max_depth": 0}, "max_depth", r"\[aliases\] max_depth: want an integer .*")):
        cfg = tmp_path / "policy-table.toml"
        cfg.write_text(config_text({
            "policy": {"files": [os.path.abspath(os.path.join(policies, "aliases.py"))]},
            "aliases": table,
        }))
        r = check(portcullis_bin, cfg)
        assert r.returncode == 1, r
        lines = [l for l in r.stderr.splitlines() if l.startswith(str(cfg))]
        assert len(lines) == 1, r.stderr
        assert re.fullmatch(rf"{re.escape(str(cfg))}:{line_of(cfg, 'aliases', bad)}: {message} \(refused by .*aliases\.py\)",
                            lines[0]), r.stderr


def test_a_policy_that_does_not_import_is_told_once(portcullis_bin, tmp_path):
    """The problem and its traceback, once: the policy engine logged the same lines before it
    (so a reload's check told every line twice), and the daemon's own line escaped the
    traceback's newlines."""
    policy = tmp_path / "broken.py"
    policy.write_text("import no_such_module_here\n")
    cfg = tmp_path / "broken-policy.toml"
    cfg.write_text(config_text({
        "policy": {"files": [str(policy)]},
    }))
    r = check(portcullis_bin, cfg)
    assert r.returncode == 1 and r.stdout == "", r
    assert r.stderr == (
        f"{cfg}:{line_of(cfg, 'policy', 'files')}: policy.files: {policy}:1: ModuleNotFoundError: "
        "No module named 'no_such_module_here'\n"
        "Traceback (most recent call last):\n"
        f'  File "{policy}", line 1, in <module>\n'
        "    import no_such_module_here\n"
        "ModuleNotFoundError: No module named 'no_such_module_here'\n"), r.stderr


def test_an_encrypted_key_is_refused_at_once_not_asked_a_pass_phrase_for(portcullis_bin, tmp_path):
    """OpenSSL, given no pass-phrase callback, asks on the terminal: --check-config, the
    start and a reload (a SIGTERM waiting behind it) hung there. Run on a terminal here."""
    import pty
    import select
    import time

    key = tmp_path / "enc.key"
    subprocess.run(["openssl", "genrsa", "-aes128", "-passout", "pass:x", "-out", str(key), "2048"], check=True,
                   capture_output=True)
    subprocess.run(["openssl", "req", "-x509", "-new", "-key", str(key), "-passin", "pass:x", "-subj", "/CN=mx.test",
                    "-days", "2", "-out", str(tmp_path / "cert.pem")], check=True, capture_output=True)
    cfg = tmp_path / "enc.toml"
    cfg.write_text(config_text({
        "tls": {"cert": "cert.pem", "key": "enc.key"},
        "dkim_sign": {"domains": ["example.test"], "selector": "s1", "key_file": "enc.key"},
    }))
    env = {**os.environ, **sanitized_python_env()}
    pid, fd = pty.fork()
    if pid == 0:  # (the child: the terminal is its controlling one, as an operator's shell)
        os.execve(str(portcullis_bin), [str(portcullis_bin), "--check-config", str(cfg)], env)
    out, deadline = b"", time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            if select.select([fd], [], [], 0.5)[0]:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:  # (EIO: the child is gone)
                    break
                if not chunk:
                    break
                out += chunk
            assert b"pass phrase:" not in out, out
        _, status = os.waitpid(pid, 0)
    finally:
        try:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(fd)
    text = out.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 1, text
    for table, name in (("tls", "key"), ("dkim_sign", "key_file")):
        assert re.search(rf":{line_of(cfg, table, name)}: {table}\.{name}: .*an encrypted key: the daemon cannot be "
                         rf"given its pass phrase", text), text

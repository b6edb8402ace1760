"""The `maildir:PATH` upstream. One Maildir is one mailbox: a transaction is
one file however many recipients it has, with Return-Path and one
Delivered-To per recipient at its top (as Postfix's local(8) writes them).
Issue 7, item E: 200 recipients used to be 200 copies."""

from __future__ import annotations

import re

R = [f"user{i}@example.test" for i in range(200)]


def new_files(maildir):
    return sorted((maildir / "new").iterdir())


def test_one_file_per_transaction_with_every_recipient_in_its_headers(start_daemon, tmp_path):
    maildir = tmp_path / "Maildir"
    d = start_daemon(f"maildir:{maildir}")
    body = b"Subject: to many\r\n\r\n" + b"line of the body\r\n" * 60000  # ~1 MB
    with d.connect() as c:
        r = c.transaction("sender@example.test", R, body.rstrip(b"\r\n"))
        assert (r.code, r.status) == (250, "2.0.0"), str(r)
        qid = re.fullmatch(r"Ok: queued as (\S+)", r.text).group(1)
    [f] = new_files(maildir)
    assert qid in f.name
    assert list((maildir / "tmp").iterdir()) == []
    content = f.read_bytes()
    head, _, rest = content.partition(b"\nReceived: ")
    assert head.decode().split("\n") == ["Return-Path: <sender@example.test>"] + [f"Delivered-To: {r}" for r in R]
    assert b"\r\n" not in content  # the local line ending (LF), as delivery agents write
    assert rest.endswith(body.replace(b"\r\n", b"\n").rstrip(b"\n") + b"\n")
    # One copy on disk, not 200.
    assert len(content) < len(body) + 20000


def test_each_transaction_its_own_file_and_recipients_once(start_daemon, tmp_path):
    maildir = tmp_path / "Maildir"
    d = start_daemon(f"maildir:{maildir}")
    with d.connect() as c:
        r = c.transaction("", ["a@example.test", "b@example.test", "a@example.test"], b"Subject: one")
        assert r.code == 250, str(r)
        r = c.transaction("x@example.test", ["c@example.test"], b"Subject: two")
        assert r.code == 250, str(r)
    files = new_files(maildir)
    assert len(files) == 2
    heads = sorted(f.read_text().split("\nReceived: ")[0] for f in files)
    assert heads == sorted(["Return-Path: <>\nDelivered-To: a@example.test\nDelivered-To: b@example.test",
                            "Return-Path: <x@example.test>\nDelivered-To: c@example.test"])


def test_the_maildir_made_is_its_owners_alone(start_daemon, tmp_path):
    """Its directories were made 0755 (the umask's): any local user could list when mail
    came and how much. Made 0700 as Postfix's local(8) makes them; an existing one keeps its mode."""
    for maildir, url in ((tmp_path / "deep" / "Maildir", ""), (tmp_path / "slash" / "Maildir", "/")):
        d = start_daemon(f"maildir:{maildir}{url}")
        with d.connect() as c:
            assert c.transaction("sender@example.test", [R[0]], b"Subject: x\r\n\r\nbody").code == 250
        for path in (maildir, maildir / "tmp", maildir / "new", maildir / "cur"):
            assert path.stat().st_mode & 0o777 == 0o700, f"{path}: {oct(path.stat().st_mode & 0o777)}"
    shared = tmp_path / "Shared"
    for sub in ("tmp", "new", "cur"):
        (shared / sub).mkdir(parents=True)
    shared.chmod(0o750)
    d2 = start_daemon(f"maildir:{shared}")
    with d2.connect() as c:
        assert c.transaction("sender@example.test", [R[0]], b"Subject: x\r\n\r\nbody").code == 250
    assert shared.stat().st_mode & 0o777 == 0o750
    assert len(new_files(shared)) == 1

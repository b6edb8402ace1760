"""The deployment examples in examples/: each config, with the files next to
it and the repository's policies/ linked in, passes `portcullis
--check-config` (every table, key and policy loads); the inbound MX one also
relays through its own alias file. Only what a real host has and a test
cannot (certificates, keys, users, ports, DNS) is swapped in."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import REPO_ROOT, free_port, sanitized_python_env
from sec_helpers import make_cert, write_users

EXAMPLES = REPO_ROOT / "examples"


def staged(tmp_path: Path, name: str) -> Path:
    """examples/`name` copied alone to tmp_path (as docs/install.md has it copied to /etc/portcullis/: it must
    name nothing outside its folder), what the host would provide made up; its config."""
    folder = tmp_path / "examples" / name
    shutil.copytree(EXAMPLES / name, folder)
    cert, key = make_cert(tmp_path / "certs", "mx", ["mx.example.test"])
    (folder / "policies").symlink_to(REPO_ROOT / "policies")
    if name == "submission":  # what examples/README.md says to make
        write_users(folder / "users", {"alice": "alice-pw", "bob": "bob-pw"})
        subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(folder / "dkim.key")],
                       check=True, capture_output=True)
    config = folder / "portcullis.toml"
    text = config.read_text()
    text = re.sub(r'"/etc/ssl/certs/[^"]+"', f'"{cert}"', text)
    text = re.sub(r'"/etc/ssl/private/[^"]+"', f'"{key}"', text)
    text = re.sub(r'"(0\.0\.0\.0|\[::\]):\d+"', lambda m: f'"127.0.0.1:{free_port()}"', text)
    text += '\n[dns]\nnameserver = "127.0.0.1:53"\ntimeout = 1\n'
    config.write_text(text)
    return config


@pytest.mark.parametrize("name", ["inbound-mx", "submission", "forwarding"])
def test_each_example_passes_check_config(portcullis_bin, tmp_path, name):
    config = staged(tmp_path, name)
    r = subprocess.run([str(portcullis_bin), "--check-config", str(config)], capture_output=True, text=True,
                       timeout=120, env={**os.environ, **sanitized_python_env()})
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip().endswith(": ok")


def test_the_inbound_mx_example_relays_through_its_alias_file(portcullis_bin, tmp_path, aiosmtpd_upstream,
                                                             start_daemon, monkeypatch):
    for name, value in sanitized_python_env().items():
        monkeypatch.setenv(name, value)
    config = staged(tmp_path, "inbound-mx")
    import tomllib
    tables = tomllib.loads(config.read_text())
    folder = config.parent
    tables["policy"]["files"] = [str(folder / f) for f in tables["policy"]["files"]]
    for table in ("aliases", "header_checks"):
        tables[table]["file"] = str(folder / tables[table]["file"])
    tables["aliases"]["srs_secret_file"] = str(folder / tables["aliases"]["srs_secret_file"])
    tables["greylist"]["delay"] = 0  # (a test does not wait five minutes)
    tables["checks"] = {}  # (no DNS here)
    del tables["server"]["listen"], tables["upstream"], tables["tls"], tables["dnsbl"]  # (aiosmtpd: no XCLIENT)
    tables["policy"]["files"] = [f for f in tables["policy"]["files"] if not f.endswith("dnsbl.py")]
    d = start_daemon(aiosmtpd_upstream.url, **tables)
    with d.connect() as c:
        assert c.transaction("someone@origin.example", ["team@example.test"], b"Subject: hi\r\n\r\nhello").code == 250
        c.exchange("MAIL FROM:<someone@origin.example>", 250)
        c.exchange("RCPT TO:<nobody@example.test>", 550, "5.1.1")
    [env] = aiosmtpd_upstream.wait_messages(1)
    assert env["rcpt_tos"] == ["alice@example.test", "bob@example.test"]


def test_no_example_leaves_the_mta_behind_it_blind_to_the_client():
    """In front of an MTA every connection comes from the proxy's address, which a Postfix that
    permits mynetworks relays for: the scale-out example, as shipped, was an open relay. Each
    example names the client to it (client_info) or guards relaying itself ([relay])."""
    import tomllib
    for config in sorted(EXAMPLES.glob("*/*.toml")):
        tables = tomllib.loads(config.read_text())
        assert tables["upstream"].get("client_info") or "relay" in tables, config


def _runnable(config: Path, *files: str) -> dict:
    """The staged example's tables, made runnable here: every file path absolute, no waiting for
    greylisting, no DNS checks, no listen address or upstream of its own (the fixtures give them)."""
    import tomllib
    tables = tomllib.loads(config.read_text())
    folder = config.parent
    tables["policy"]["files"] = [str(folder / f) for f in tables["policy"]["files"]]
    for table, key in (f.split(".") for f in files):
        tables[table][key] = str(folder / tables[table][key])
    tables["greylist"]["delay"] = 0  # (a test does not wait five minutes)
    tables["checks"] = {}  # (no DNS here)
    del tables["server"]["listen"], tables["upstream"]
    return tables


def test_the_inbound_mx_example_brings_bounces_of_forwarded_mail_home(portcullis_bin, tmp_path, aiosmtpd_upstream,
                                                                      start_daemon, monkeypatch):
    """@example.org forwards to a partner with an SRS sender of fwd.example.test; a bounce to that
    address passes the relay guard and reaches the original sender; a foreign recipient does not pass."""
    for name, value in sanitized_python_env().items():
        monkeypatch.setenv(name, value)
    tables = _runnable(staged(tmp_path, "inbound-mx"), "aliases.file", "aliases.srs_secret_file",
                       "header_checks.file")
    del tables["tls"], tables["dnsbl"]  # (aiosmtpd: no XCLIENT; no DNS for the block lists)
    tables["policy"]["files"] = [f for f in tables["policy"]["files"] if not f.endswith("dnsbl.py")]
    d = start_daemon(aiosmtpd_upstream.url, **tables)
    with d.connect() as c:
        assert c.transaction("someone@origin.example", ["sales@example.org"], b"Subject: hi\r\n\r\nhello").code == 250
        [env] = aiosmtpd_upstream.wait_messages(1)
        assert env["rcpt_tos"] == ["office@partner.example"]
        srs = env["mail_from"]
        assert re.fullmatch(r"SRS0=[^=]+=[^=]+=origin\.example=someone@fwd\.example\.test", srs), srs
        c.exchange("MAIL FROM:<>", 250)
        c.exchange(f"RCPT TO:<{srs}>", 250)
        c.exchange("RCPT TO:<victim@foreign.example>", 554, "5.7.1")
        c.exchange("DATA", 354)
        c.send(b"Subject: Undelivered Mail\r\n\r\nbounce\r\n.\r\n")
        assert c.reply().code == 250
    assert aiosmtpd_upstream.wait_messages(2)[1]["rcpt_tos"] == ["someone@origin.example"]


def test_the_forwarding_example_forwards_with_srs_and_relays_nothing_else(portcullis_bin, tmp_path,
                                                                          aiosmtpd_upstream, start_daemon,
                                                                          monkeypatch):
    for name, value in sanitized_python_env().items():
        monkeypatch.setenv(name, value)
    tables = _runnable(staged(tmp_path, "forwarding"), "aliases.file", "aliases.srs_secret_file")
    d = start_daemon(aiosmtpd_upstream.url, **tables)
    with d.connect() as c:
        # Its upstream relays for the proxy: what the proxy lets through is relayed.
        c.exchange("MAIL FROM:<someone@origin.example>", 250)
        c.exchange("RCPT TO:<victim@foreign.example>", 554, "5.7.1")
        c.exchange("RCPT TO:<nobody@srs.example.net>", 550, "5.1.1")
        c.exchange("RSET", 250)
        r = c.transaction("someone@origin.example", ["carol@example.net", "anyone@example.net"],
                          b"Subject: hi\r\n\r\nhello")
        assert r.code == 250
        [env] = aiosmtpd_upstream.wait_messages(1)
        assert sorted(env["rcpt_tos"]) == ["carol.smith@mailbox.example", "postmaster@mailbox.example"]
        srs = env["mail_from"]
        assert re.fullmatch(r"SRS0=[^=]+=[^=]+=origin\.example=someone@srs\.example\.net", srs), srs
        # The bounce comes home.
        r = c.transaction("", [srs], b"Subject: Undelivered Mail\r\n\r\nbounce")
        assert r.code == 250
    assert aiosmtpd_upstream.wait_messages(2)[1]["rcpt_tos"] == ["someone@origin.example"]


def queued_by_postfix(c, rcpt: str) -> str:
    """One message from someone@origin.example to `rcpt`; Postfix's queue id from its own 250."""
    r = c.transaction("someone@origin.example", [rcpt], b"Subject: hi\r\n\r\nhello")
    assert (r.code, r.status) == (250, "2.0.0"), r
    return re.match(r"2\.0\.0 Ok: queued as (\w+)$", r.lines[0]).group(1)


def test_the_inbound_mx_example_in_front_of_a_real_postfix(portcullis_bin, tmp_path, start_daemon, monkeypatch):
    """The recipe as docs/deployment.md has it: a private Postfix on a loopback port set up as the
    example's comment says (XCLIENT authorized for the proxy, permit_mynetworks and
    reject_unauth_destination), the example's config with its TLS, XCLIENT and policies in front.
    Postfix sees the real client, queues what the aliases expand to, and its queue id is the one in
    the proxy's summary line; with XCLIENT it refuses to relay the forward outside its domains
    (the limitation the recipe documents), and with client_info = "xforward" it takes it."""
    import postfix_instance

    if why := postfix_instance.available():
        pytest.skip(why)
    for name, value in sanitized_python_env().items():
        monkeypatch.setenv(name, value)
    tables = _runnable(staged(tmp_path, "inbound-mx"), "aliases.file", "aliases.srs_secret_file",
                       "header_checks.file")
    del tables["dnsbl"]  # (no DNS for the block lists)
    tables["policy"]["files"] = [f for f in tables["policy"]["files"] if not f.endswith("dnsbl.py")]
    pf = postfix_instance.PostfixInstance({
        "smtpd_authorized_xclient_hosts": "127.0.0.1",
        "smtpd_authorized_xforward_hosts": "127.0.0.1",
        "relay_domains": "example.test, example.org, fwd.example.test",
        "smtpd_relay_restrictions": "",
        "smtpd_recipient_restrictions": "permit_mynetworks, reject_unauth_destination",
        "default_transport": "discard", "relay_transport": "discard",
    }, name="pf-mx").start()
    try:
        d = start_daemon(pf.url, upstream={"client_info": "xclient"}, **tables)
        with d.connect(source="127.0.0.2", ehlo="sender.example") as c:
            qid = queued_by_postfix(c, "team@example.test")
            c.exchange("MAIL FROM:<someone@origin.example>", 250)
            c.exchange("RCPT TO:<nobody@example.test>", 550, "5.1.1")
            # The forward leaves Postfix's domains: with XCLIENT, Postfix judges the real client.
            r = c.exchange("RCPT TO:<sales@example.org>", 554)
            assert "Relay access denied" in r.lines[0], r
            c.exchange("QUIT", 221)
        pf.wait_log(rf"{qid}: client=unknown\[127\.0\.0\.2\]")
        pf.wait_log(rf"{qid}: to=<alice@example\.test>, .*status=sent")
        pf.wait_log(rf"{qid}: to=<bob@example\.test>, .*status=sent")
        d.wait_log(rf"tx=\w+\.1 client=\[127\.0\.0\.2\] helo=sender\.example .* to=<alice@example\.test>,<bob@example\.test> "
                   rf".* queue_id={qid} verdict=delivered policy=\"rcpt <team@example\.test> redirect by \S+aliases\.py\"$")
        d.stop()
        # client_info = "xforward": Postfix decides relaying on the proxy's address and takes the forward.
        d = start_daemon(pf.url, upstream={"client_info": "xforward"}, **tables)
        with d.connect(source="127.0.0.2", ehlo="sender.example") as c:
            qid = queued_by_postfix(c, "sales@example.org")
            c.exchange("QUIT", 221)
        m = pf.wait_log(rf"{qid}: from=<(SRS0=[^>]+@fwd\.example\.test)>")
        assert m.group(1).endswith("=origin.example=someone@fwd.example.test"), m.group(1)
        pf.wait_log(rf"{qid}: to=<office@partner\.example>, .*status=sent")
        pf.wait_log(rf"{qid}: client=localhost\[127\.0\.0\.1\], orig_client=unknown\[127\.0\.0\.2\]"
                    rf"|{qid}: client=\S+\[127\.0\.0\.1\], orig_client=\S+\[127\.0\.0\.2\]")
    finally:
        pf.stop()

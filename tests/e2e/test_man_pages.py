"""The man pages (man/portcullis.8, man/portcullis.toml.5) render without a
single groff warning, and stay true to the code:

- portcullis.toml(5) has a `.SS "[table]"` section per table of the config
  and, under it, a `.TP` entry per key, for exactly the keys
  proxy/config/config.cpp reads (extracted as test_config_reference.py does);
- portcullis(8) names every option of the daemon's usage text (proxy/main.cpp);
- both carry the project's version (CMakeLists.txt).

No daemon is started; groff missing (package groff-base) skips the render check.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from conftest import REPO_ROOT
from test_config_reference import code_keys, strip_comments

MAN = REPO_ROOT / "man"
PAGES = [MAN / "portcullis.8", MAN / "portcullis.toml.5"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_page_renders_without_warnings(page):
    if not shutil.which("groff"):
        pytest.skip("groff is not installed (groff-base)")
    # -ww: every warning; -z: format, print nothing. groff exits 0 even when it warns.
    r = subprocess.run(["groff", "-man", "-ww", "-z", "-Tutf8", str(page)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0 and not r.stderr, r.stderr
    text = subprocess.run(["groff", "-man", "-Tutf8", str(page)], capture_output=True, text=True, timeout=30,
                          check=True).stdout
    text = re.sub(".\x08", "", text)  # grotty's overstrikes (bold, underline)
    assert "NAME" in text and "SEE ALSO" in text


def man_keys(page) -> dict[tuple[str, str], int]:
    """(table, key) -> source line, for each `.TP` entry (tag `\\fBkey\\fP`) under `.SS "[table]"`."""
    found: dict[tuple[str, str], int] = {}
    table = None
    lines = page.read_text().splitlines()
    for n, line in enumerate(lines, 1):
        if line.startswith((".SH", ".SS")):
            m = re.fullmatch(r'\.SS\s+"?\[([a-z_]+)\]"?\s*', line)
            table = m.group(1) if m else None
            continue
        if table and line.strip() == ".TP" and n < len(lines):
            tag = re.match(r"\\fB([a-z_]+)\\fP", lines[n])  # the line after .TP
            assert tag, f"{page.name}:{n + 1}: a .TP entry in [{table}] whose tag is not \\fBkey\\fP: {lines[n]!r}"
            assert (table, tag.group(1)) not in found, f"{page.name}:{n + 1}: [{table}] {tag.group(1)} twice"
            found[(table, tag.group(1))] = n + 1
    return found


def test_every_config_key_is_in_portcullis_toml_5():
    page = MAN / "portcullis.toml.5"
    documented = set(man_keys(page))
    accepted = set(code_keys())
    assert len(accepted) >= 60  # the extraction found the tables (test_config_reference checks it more closely)
    missing = sorted(accepted - documented)
    stale = sorted(documented - accepted)
    assert not missing, f"keys config.cpp reads that {page.name} does not describe: {missing}"
    assert not stale, f"keys {page.name} describes that config.cpp does not read: {stale}"
    # Tables in the order the config reference (and the contract) gives them.
    order = list(dict.fromkeys(t for (t, _), _line in sorted(man_keys(page).items(), key=lambda kv: kv[1])))
    assert order == ["server", "upstream", "tls", "auth", "relay", "policy", "checks", "dns", "dkim_sign",
                     "arc_seal", "store", "metrics", "log"]


def test_portcullis_8_names_every_option_of_the_usage():
    main = strip_comments((REPO_ROOT / "proxy" / "main.cpp").read_text())
    usage = re.search(r"usage\s*=\s*((?:\s*\"(?:\\.|[^\"\\])*\")+)\s*;", main)
    assert usage, "proxy/main.cpp's usage text not found"
    options = set(re.findall(r"--[a-z-]+", usage.group(1)))
    assert {"--config", "--check-config", "--version", "--help"} <= options
    page = (MAN / "portcullis.8").read_text().replace("\\-", "-")
    synopsis = page.split(".SH SYNOPSIS", 1)[1].split(".SH ", 1)[0]
    described = page.split(".SH OPTIONS", 1)[1].split(".SH ", 1)[0]
    for option in sorted(options):
        assert option in synopsis, f"portcullis.8: {option} missing from SYNOPSIS"
        assert option in described, f"portcullis.8: {option} missing from OPTIONS"


def test_pages_carry_the_project_version():
    version = re.search(r"project\(portcullis VERSION ([0-9.]+)", (REPO_ROOT / "CMakeLists.txt").read_text())
    assert version
    for page in PAGES:
        th = next(l for l in page.read_text().splitlines() if l.startswith(".TH "))
        assert f'"Portcullis {version.group(1)}"' in th, f"{page.name}: {th}"

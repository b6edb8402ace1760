"""docs/configuration.md stays honest: the reference and the code agree.

(a) docs/configuration.md is parsed: under each "## `[table]`" heading, one
    table "| key | type | default | meaning |", a row per key.
(b) The keys the daemon accepts are read out of proxy/config/config.cpp
    (each `section("table", ...)` block, the `read_*` helpers it calls, and
    every typed getter `t.get...("key"` on its reader), and the two sets must
    be equal: every accepted key documented, every documented key accepted
    (but keys the reference marks "not yet implemented"). The documented
    types must fit the getter (`get_seconds` an integer, `get_list` an array
    of strings, ...), and the documented defaults must equal the initialisers
    in proxy/config/config.hpp (and python/portcullis/store.py for the two
    keys only Python applies).
(c) Every key whose documented default is a concrete TOML value is set to
    that value in a minimal config (plus what it needs: [tls] cert and key,
    [dkim_sign]'s three keys), and `portcullis --check-config` must accept
    it; all of them together too. So that this is not vacuous, an unknown
    key in each table must be refused.

The daemon is PORTCULLIS_BIN (conftest's portcullis_bin fixture).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import REPO_ROOT, sanitized_python_env
from sec_helpers import make_cert

DOC = REPO_ROOT / "docs" / "configuration.md"
CONFIG_CPP = REPO_ROOT / "proxy" / "config" / "config.cpp"
CONFIG_HPP = REPO_ROOT / "proxy" / "config" / "config.hpp"
STORE_PY = REPO_ROOT / "python" / "portcullis" / "store.py"

# Documented keys that `--check-config` cannot exercise with their default,
# with the reason. (Both have no concrete default today, so they would not be
# run anyway; they are listed so that giving them one does not silently make
# the test depend on what the machine allows.)
SKIP_CHECK_CONFIG = {
    # A listener: only a real start-up binds it (--check-config does not); the default is "none" anyway.
    ("metrics", "listen"): "a listener, not bound by --check-config",
    # Dropping privileges needs root; the default (none) keeps the current user.
    ("server", "user"): "needs the daemon started as root",
}

# A row whose meaning says this is documented but not (yet) read by the code.
NOT_IMPLEMENTED = re.compile(r"not yet implemented", re.IGNORECASE)


# --------------------------------------------------------------------------
# (a) the reference


@dataclass(frozen=True)
class Row:
    table: str
    key: str
    type: str
    default: str   # the cell as written
    meaning: str

    @property
    def concrete_default(self) -> str | None:
        """The default as TOML text when the cell is exactly one `literal` that parses as a TOML value."""
        m = re.fullmatch(r"`([^`]+)`", self.default)
        if not m:
            return None
        try:
            tomllib.loads(f"x = {m.group(1)}")
        except tomllib.TOMLDecodeError:
            return None
        return m.group(1)

    @property
    def default_value(self):
        text = self.concrete_default
        return None if text is None else tomllib.loads(f"x = {text}")["x"]


def _cells(line: str) -> list[str]:
    inner = line.strip()
    assert inner.startswith("|") and inner.endswith("|"), line
    return [c.strip() for c in re.split(r"(?<!\\)\|", inner[1:-1])]


def doc_rows() -> dict[tuple[str, str], Row]:
    rows: dict[tuple[str, str], Row] = {}
    tables_seen: list[str] = []
    table = None
    lines = DOC.read_text().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            m = re.fullmatch(r"## `\[([a-z_]+)\]`", line.strip())
            table = m.group(1) if m else None
            if table:
                assert table not in tables_seen, f"{DOC.name}: [{table}] has two headings"
                tables_seen.append(table)
        elif table and line.startswith("|"):
            header = [c.lower() for c in _cells(line)]
            assert header == ["key", "type", "default", "meaning"], f"{DOC.name}: [{table}]: unexpected table {line!r}"
            i += 2  # the header and the --- line
            while i < len(lines) and lines[i].startswith("|"):
                cells = _cells(lines[i])
                assert len(cells) == 4, f"{DOC.name}: [{table}]: a row without 4 cells: {lines[i]!r}"
                m = re.fullmatch(r"`([a-z_]+)`", cells[0])
                assert m, f"{DOC.name}: [{table}]: the key cell is not one `key`: {cells[0]!r}"
                key = m.group(1)
                assert (table, key) not in rows, f"{DOC.name}: [{table}] {key} documented twice"
                assert cells[1] and cells[2] and cells[3], f"{DOC.name}: [{table}] {key}: an empty cell"
                rows[(table, key)] = Row(table, key, cells[1], cells[2], cells[3])
                i += 1
            table = None  # one key table per TOML table
            continue
        i += 1
    return rows


def documented_keys(rows) -> set[tuple[str, str]]:
    return {k for k, r in rows.items() if not NOT_IMPLEMENTED.search(r.meaning)}


# --------------------------------------------------------------------------
# (b) the code


def strip_comments(src: str) -> str:
    """C++ without its comments; string and character literals kept (so "redis://" survives)."""
    pattern = re.compile(r'"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'|//[^\n]*|/\*.*?\*/', re.DOTALL)
    return pattern.sub(lambda m: m.group(0) if m.group(0)[0] in "\"'" else " ", src)


def block_at(src: str, open_brace: int) -> str:
    """The text between the brace at `open_brace` and its match (literals skipped)."""
    assert src[open_brace] == "{"
    depth, i = 0, open_brace
    while i < len(src):
        c = src[i]
        if c in "\"'":
            m = re.compile(r'"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'').match(src, i)
            i = m.end() if m else i + 1
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return src[open_brace + 1:i]
        i += 1
    raise AssertionError("unbalanced braces in config.cpp")


GETTERS = ("get", "get_seconds", "get_count", "get_choice", "get_path", "get_list", "each_table")


def code_keys() -> dict[tuple[str, str], str]:
    """(table, key) -> the getter that reads it, for every key config.cpp accepts."""
    src = strip_comments(CONFIG_CPP.read_text())
    # Helpers that read a table: "void read_server(table_reader& t, ...) {".
    helpers: dict[str, tuple[str, str]] = {}
    for m in re.finditer(r"\b(read_\w+)\s*\(\s*table_reader\s*&\s*(\w+)[^)]*\)\s*\{", src):
        helpers[m.group(1)] = (m.group(2), block_at(src, m.end() - 1))
    assert "read_server" in helpers and "read_upstream" in helpers, "config.cpp's read_* helpers not found"

    def keys_in(body: str, reader: str, seen: frozenset = frozenset()) -> dict[str, str]:
        found: dict[str, str] = {}
        r = re.escape(reader)
        for m in re.finditer(rf"\b{r}\s*\.\s*({'|'.join(GETTERS)})\s*(?:<[^>]*>)?\s*\(\s*\"([^\"]+)\"", body):
            found.setdefault(m.group(2), m.group(1))
        # A helper given the reader and a key: read_listeners(t, "listen", ...).
        for m in re.finditer(rf"\b(\w+)\s*\(\s*{r}\s*,\s*\"([^\"]+)\"", body):
            found.setdefault(m.group(2), m.group(1))
        # A helper given the reader: read_server(t, ...).
        for m in re.finditer(rf"\b(read_\w+)\s*\(\s*{r}\s*[,)]", body):
            name = m.group(1)
            if name in helpers and name not in seen:
                inner_reader, inner_body = helpers[name]
                for k, g in keys_in(inner_body, inner_reader, seen | {name}).items():
                    found.setdefault(k, g)
        return found

    keys: dict[tuple[str, str], str] = {}
    sections = list(re.finditer(r"\bsection\s*\(\s*\"([a-z_]+)\"\s*,\s*\[[^\]]*\]\s*\(\s*table_reader\s*&\s*(\w+)\s*\)\s*\{",
                                src))
    tables = [m.group(1) for m in sections]
    assert len(tables) == len(set(tables)), f"a table read twice: {tables}"
    for m in sections:
        for key, getter in keys_in(block_at(src, m.end() - 1), m.group(2)).items():
            keys[(m.group(1), key)] = getter
    # The tables load_config knows (the others belong to policies) are exactly the sections read.
    known = re.search(r"std::set<std::string>\s+known\s*\{([^}]*)\}", src)
    assert known, "config.cpp's set of known tables not found"
    assert set(re.findall(r'"([a-z_]+)"', known.group(1))) == set(tables)
    return keys


def test_code_extraction_is_plausible():
    keys = code_keys()
    tables = {t for t, _ in keys}
    # Every table of the contract's example config, and a key count of today's order (about 75).
    assert {"server", "upstream", "tls", "auth", "relay", "policy", "checks", "dns", "dkim_sign", "store",
            "metrics", "log"} <= tables
    assert len(keys) >= 60, sorted(keys)
    # Spot checks of each way a key is read: a getter, a helper given the key, a helper given the reader.
    for k in [("server", "max_recipients"), ("server", "listen"), ("server", "listen_tls"), ("upstream", "url"),
              ("tls", "certificates"), ("store", "prefix"), ("log", "format")]:
        assert k in keys, k
    # Nested readers ([tls] certificates' {cert, key}) are not the table's own keys twice over.
    assert keys[("tls", "certificates")] == "each_table"


def test_reference_parses():
    rows = doc_rows()
    assert len(rows) >= 60
    assert all(r.type for r in rows.values())


def test_every_accepted_key_is_documented_and_every_documented_key_accepted():
    code = set(code_keys())
    rows = doc_rows()
    doc = documented_keys(rows)
    undocumented = sorted(code - doc - (set(rows) - doc))
    unread = sorted(doc - code)
    assert not undocumented, f"keys config.cpp accepts that docs/configuration.md does not list: {undocumented}"
    assert not unread, f"keys docs/configuration.md lists that config.cpp does not read: {unread}"


def test_tables_are_documented_in_the_contract_order():
    """The contract's example config orders the tables; [arc_seal] follows [dkim_sign]."""
    order = ["server", "upstream", "tls", "auth", "relay", "policy", "checks", "dns", "dkim_sign", "arc_seal",
             "store", "metrics", "log"]
    seen = list(dict.fromkeys(t for t, _ in doc_rows()))
    assert seen == order


# What each typed getter means for the documented type (plain get: any type).
GETTER_TYPES = {
    "get_seconds": lambda t: t == "integer (seconds)",
    "get_count": lambda t: t.startswith("integer"),
    "get_choice": lambda t: t == "string",
    "get_path": lambda t: t == "string (path)",
    "get_list": lambda t: t == "array of strings",
    "each_table": lambda t: t == "array of tables",
}


def test_documented_types_fit_the_getters():
    rows = doc_rows()
    wrong = []
    for (table, key), getter in code_keys().items():
        fits = GETTER_TYPES.get(getter)
        row = rows.get((table, key))
        if fits and row and not fits(row.type):
            wrong.append(f"[{table}] {key}: documented {row.type!r}, read with {getter}")
    assert not wrong, wrong


def hpp_defaults() -> dict[tuple[str, str], object]:
    """(table, member) -> the initialiser's value, for the members of config.hpp's *_config structs."""
    src = strip_comments(CONFIG_HPP.read_text())
    out: dict[tuple[str, str], object] = {}
    for m in re.finditer(r"\bstruct\s+(\w+)_config\s*\{", src):
        table = m.group(1)
        body = block_at(src, m.end() - 1)
        body = re.sub(r"\bstruct\s+\w+\s*\{[^{}]*\};", "", body)  # nested structs (tls_config::pair)
        for decl in re.finditer(r"^\s*([\w:]+(?:<[^;{}()]*>)?)\s+(\w+)\s*(?:=\s*([^;{}()]+)|\{([^;{}()]*)\})?\s*;",
                                body, re.MULTILINE):
            type_, name, assigned, braced = decl.groups()
            init = assigned if assigned is not None else braced
            if init is None:
                if type_.startswith("std::vector"):
                    out[(table, name)] = []
                continue
            init = init.strip()
            if type_.startswith("std::vector"):
                out[(table, name)] = [json.loads(s) for s in re.findall(r'"(?:\\.|[^"\\])*"', init)]
            elif init in ("true", "false"):
                out[(table, name)] = init == "true"
            elif init.startswith('"'):
                out[(table, name)] = json.loads(init)
            elif re.fullmatch(r"[\d\s*+]+", init):
                out[(table, name)] = eval(init, {"__builtins__": {}})  # digits, * and + only
            elif re.fullmatch(r"\w+::\w+", init):
                out[(table, name)] = init.split("::")[1]  # an enum: its config spelling
    return out


def python_store_defaults() -> dict[tuple[str, str], object]:
    """[store] prefix and timeout: config.cpp only validates them; python/portcullis/store.py applies them."""
    src = STORE_PY.read_text()
    prefix = re.search(r'^_DEFAULT_PREFIX\s*=\s*("[^"]*")', src, re.MULTILINE)
    timeout = re.search(r"^_DEFAULT_TIMEOUT\s*=\s*([\d.]+)", src, re.MULTILINE)
    assert prefix and timeout, "store.py's defaults not found"
    return {("store", "prefix"): json.loads(prefix.group(1)), ("store", "timeout"): float(timeout.group(1))}


def test_documented_defaults_are_the_code_defaults():
    code = {**hpp_defaults(), **python_store_defaults()}
    compared, wrong = 0, []
    for (table, key), row in doc_rows().items():
        if row.concrete_default is None or (table, key) not in code:
            continue
        compared += 1
        if row.default_value != code[(table, key)]:
            wrong.append(f"[{table}] {key}: documented {row.default}, code {code[(table, key)]!r}")
    assert not wrong, wrong
    assert compared >= 45, f"only {compared} defaults compared: is config.hpp still parsed?"


def test_reference_links_stay_in_the_repository():
    text = DOC.read_text()
    assert not re.search(r"\]\((?:https?:|mailto:|//)", text), "the reference links outside the repository"
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        assert (DOC.parent / target).exists(), f"broken link: {target}"
    for anchor in re.findall(r"\]\(\.\./README\.md#([^)]+)\)", text):
        headings = [re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-")
                    for h in re.findall(r"^#+ (.+)$", (REPO_ROOT / "README.md").read_text(), re.MULTILINE)]
        assert anchor in headings, f"README.md has no heading for #{anchor}"


# --------------------------------------------------------------------------
# (c) each concrete default passes --check-config


@pytest.fixture(scope="module")
def needs(tmp_path_factory):
    """What a table needs to be valid at all, beyond the key under test."""
    d = tmp_path_factory.mktemp("needs")
    cert, key = make_cert(d, "mx", ["mx.example.test"])
    dkim_key = d / "dkim.key"
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(dkim_key)], check=True,
                   capture_output=True)
    return {
        "server": {"hostname": '"mx.example.test"'},  # the machine's own name need not be a domain
        "tls": {"cert": json.dumps(str(cert)), "key": json.dumps(str(key))},
        "dkim_sign": {"domains": '["example.test"]', "selector": '"s1"', "key_file": json.dumps(str(dkim_key))},
    }


# Tables a table needs beside it ([auth] is offered over TLS only, unless allow_plaintext).
TABLES_NEEDED = {"auth": ["tls"]}


def config_text(needs, settings: dict[str, dict[str, str]]) -> str:
    """A config: [server] hostname, each table's needs, then the settings (TOML text values)."""
    tables: dict[str, dict[str, str]] = {"server": dict(needs["server"])}
    for table, kv in settings.items():
        tables.setdefault(table, dict(needs.get(table, {})))
        tables[table].update(kv)
        for other in TABLES_NEEDED.get(table, []):
            if other in needs:
                tables.setdefault(other, dict(needs[other]))
    return "".join(f"[{t}]\n" + "".join(f"{k} = {v}\n" for k, v in kv.items()) + "\n" for t, kv in tables.items())


def check_config(portcullis_bin, path: Path, text: str) -> subprocess.CompletedProcess:
    path.write_text(text)
    return subprocess.run([str(portcullis_bin), "--check-config", str(path)], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **sanitized_python_env()})


def concrete_rows() -> list[Row]:
    return [r for r in doc_rows().values()
            if r.concrete_default is not None and (r.table, r.key) not in SKIP_CHECK_CONFIG
            and not NOT_IMPLEMENTED.search(r.meaning)]


def test_skip_set_names_documented_keys():
    rows = doc_rows()
    assert set(SKIP_CHECK_CONFIG) <= set(rows), sorted(set(SKIP_CHECK_CONFIG) - set(rows))


def test_enough_concrete_defaults():
    assert len(concrete_rows()) >= 45


@pytest.mark.parametrize("row", concrete_rows(), ids=lambda r: f"{r.table}.{r.key}")
def test_documented_default_passes_check_config(portcullis_bin, tmp_path, needs, row):
    text = config_text(needs, {row.table: {row.key: row.concrete_default}})
    p = check_config(portcullis_bin, tmp_path / "portcullis.toml", text)
    assert p.returncode == 0, f"--check-config refused [{row.table}] {row.key} = {row.concrete_default}:\n{text}\n{p.stderr}"
    assert p.stdout.strip().endswith(": ok"), p.stdout


def test_every_documented_default_together_passes_check_config(portcullis_bin, tmp_path, needs):
    settings: dict[str, dict[str, str]] = {}
    for row in concrete_rows():
        settings.setdefault(row.table, {})[row.key] = row.concrete_default
    text = config_text(needs, settings)
    p = check_config(portcullis_bin, tmp_path / "portcullis.toml", text)
    assert p.returncode == 0, f"{text}\n{p.stderr}"


@pytest.mark.parametrize("table", sorted({t for t, _ in code_keys()}))
def test_an_unknown_key_is_refused(portcullis_bin, tmp_path, needs, table):
    """The check above means something: --check-config does look at every table's keys."""
    text = config_text(needs, {table: {"no_such_key": "1"}})
    p = check_config(portcullis_bin, tmp_path / "portcullis.toml", text)
    assert p.returncode == 1, f"{text}\n{p.stdout}{p.stderr}"
    assert f"{table}.no_such_key: unknown key" in p.stderr, p.stderr


# The "What needs what" table's errors: a setting without what it needs is refused, naming it.
NEEDS_ERRORS = {
    "listen_tls without [tls]": ({"server": {"listen_tls": '["127.0.0.1:2465"]'}}, "server.listen_tls"),
    "require_tls without [tls]": ({"server": {"require_tls": "true"}}, "server.require_tls"),
    "require_auth without [auth]": ({"server": {"require_auth": "true"}}, "server.require_auth"),
    "auth without [tls] nor allow_plaintext": ({"auth": {"max_failures": "5"}}, "auth"),
    "nothing to listen on": ({"server": {"listen": "[]"}}, "server.listen"),
    "dmarc without spf and dkim": ({"checks": {"dmarc": "true"}}, "checks.dmarc"),
    "arc_seal without arc": ({"arc_seal": {"domain": '"example.test"', "selector": '"s1"', "key_file": '"k.pem"'}},
                             "arc_seal.domain"),
    "dkim_sign networks alone": ({"dkim_sign": {"networks": "[]"}}, "dkim_sign.networks"),
    "metrics on an SMTP port": ({"metrics": {"listen": '"127.0.0.1:2525"'}}, "metrics.listen"),
}


@pytest.mark.parametrize("case", sorted(NEEDS_ERRORS))
def test_what_a_setting_needs_is_checked(portcullis_bin, tmp_path, needs, case):
    settings, where = NEEDS_ERRORS[case]
    text = config_text({"server": needs["server"]}, settings)  # none of the tables' needs: that is the point
    p = check_config(portcullis_bin, tmp_path / "portcullis.toml", text)
    assert p.returncode == 1, f"{text}\n{p.stdout}{p.stderr}"
    assert f": {where}: " in p.stderr, p.stderr

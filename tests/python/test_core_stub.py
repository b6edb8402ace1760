"""The type stub python/_portcullis_core.pyi against the built module: the same
names, the same members of each class, the same parameters where the module
says them, so that the stub cannot drift from bindings/ again."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

core = pytest.importorskip("_portcullis_core", reason="the _portcullis_core module is not built")

ROOT = Path(__file__).resolve().parents[2]
STUB = ROOT / "python" / "_portcullis_core.pyi"
ENGINE_SOURCE = ROOT / "proxy" / "policy" / "python_engine.cpp"
#: Names only the daemon's embedded module has (PYBIND11_EMBEDDED_MODULE in python_engine.cpp).
EMBEDDED_ONLY = {"Channel"}


def stub_tree() -> ast.Module:
    return ast.parse(STUB.read_text(), str(STUB))


def defined(body: list[ast.stmt]) -> dict[str, ast.stmt]:
    """The names a module or class body defines (functions, classes, annotated or assigned names)."""
    names: dict[str, ast.stmt] = {}
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names[node.name] = node
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names[node.target.id] = node
        elif isinstance(node, ast.Assign):
            names.update((t.id, node) for t in node.targets if isinstance(t, ast.Name))
    return names


def public(names) -> set[str]:
    return {n for n in names if not n.startswith("_")}


def split_top_level(text: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, c in enumerate(text):
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def runtime_parameters(name: str, obj: object) -> list[str] | None:
    """The parameter names the first line of a docstring gives ("name(a: int, b=1) -> ..."),
    self and the markers * and / left out; None where the docstring gives none (or overloads)."""
    first = (getattr(obj, "__doc__", None) or "").split("\n", 1)[0]
    if not first.startswith(name + "("):
        return None
    depth, end = 0, None
    for i, c in enumerate(first[len(name):], len(name)):
        depth += c in "([{"
        depth -= c in ")]}"
        if depth == 0:
            end = i
            break
    if end is None:
        return None
    names = [re.split(r"[:=]", p, maxsplit=1)[0].strip() for p in split_top_level(first[len(name) + 1:end])]
    if "*args" in names:  # pybind11's overloaded function: each overload is on a line of its own
        return None
    return [n for n in names if n not in ("self", "*", "/")]


def stub_parameters(node: ast.FunctionDef) -> list[str]:
    a = node.args
    names = [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs]
    return [n for n in names if n != "self"]


def same_parameters(runtime: list[str], stub: list[str]) -> bool:
    # pybind11 names a parameter it was given no name for argN: positional-only, any name.
    return len(runtime) == len(stub) and all(r == s or re.fullmatch(r"arg\d+", r) for r, s in zip(runtime, stub))


def test_the_stub_has_every_name_of_the_module_and_no_other():
    stub = public(defined(stub_tree().body))
    runtime = public(dir(core))
    assert sorted(runtime - stub) == [], "in the module, missing from the stub"
    assert sorted(stub - runtime - EMBEDDED_ONLY) == [], "in the stub, not in the module"
    assert not EMBEDDED_ONLY & runtime, "exported by the extension module now: drop it from EMBEDDED_ONLY"


def test_each_class_has_the_members_of_the_modules():
    stub = defined(stub_tree().body)
    problems = []
    for name in sorted(public(dir(core))):
        cls = getattr(core, name)
        if not isinstance(cls, type):
            continue
        node = stub.get(name)
        assert isinstance(node, ast.ClassDef), f"{name} is a class in the module"
        members = public(defined(node.body))
        own = public(vars(cls))
        if own - members:
            problems.append(f"{name}: missing {sorted(own - members)}")
        if members - own:
            problems.append(f"{name}: not in the module {sorted(members - own)}")
    assert problems == []


def test_parameters_are_the_modules_where_its_docstrings_say_them():
    stub = defined(stub_tree().body)
    problems = []
    for name in sorted(public(dir(core))):
        obj = getattr(core, name)
        node = stub.get(name)
        targets = []
        if isinstance(obj, type) and isinstance(node, ast.ClassDef):
            members = defined(node.body)
            checked = public(vars(obj)) | ({"__init__"} & set(vars(obj)))
            targets += [(f"{name}.{m}", m, getattr(obj, m), members.get(m)) for m in sorted(checked)]
        elif callable(obj):
            targets.append((name, name, obj, node))
        for label, short, value, stub_node in targets:
            wanted = runtime_parameters(short, value)
            if wanted is None or not isinstance(stub_node, ast.FunctionDef):
                continue
            got = stub_parameters(stub_node)
            if not same_parameters(wanted, got):
                problems.append(f"{label}: module {wanted}, stub {got}")
    assert problems == []


def test_the_embedded_only_channel_has_the_daemons_methods():
    if not ENGINE_SOURCE.exists():
        pytest.skip("no daemon source here")
    source = ENGINE_SOURCE.read_text()
    start = source.index('(m, "Channel")')
    block = source[start:source.index("\n}\n", start)]
    daemon = set(re.findall(r'\.def\(\s*"(\w+)"', block))
    node = defined(stub_tree().body)["Channel"]
    assert public(defined(node.body)) == daemon

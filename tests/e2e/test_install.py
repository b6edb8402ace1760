"""What `cmake --install` and the Debian package put where, and that the
daemon runs from there: started from a staging root with no PYTHONPATH and
no PORTCULLIS_PYTHON_PATH, it finds its own Python package (not the source
tree's) and relays mail to aiosmtpd (docs/install.md).

(a) `cmake --install BUILD --prefix STAGE` of the build the daemon under test
    comes from (PORTCULLIS_BIN's folder): the files, a policy importing
    portcullis next to a ready-made one from STAGE/share/portcullis/policies,
    plain Python with the installed extension module, and an edited config
    kept by a second install.
(b) The Debian package: `cpack -G DEB` run on that same build folder, so that
    no second build of the daemon is needed (scripts/package.sh makes the
    real one, with the prefix /usr, from build-pkg/; with PORTCULLIS_DEB=PATH
    the test checks that .deb instead). `dpkg-deb --info` must show sane
    Depends; `dpkg-deb -x` unpacks it into a staging root, the files are
    checked, and the unpacked daemon relays with the shipped config changed
    only in listen and upstream. Skipped for sanitized builds (not shipped).
"""

from __future__ import annotations

import email.message
import gzip
import os
import re
import shutil
import socket
import subprocess
import textwrap
from pathlib import Path

import pytest

from conftest import REPO_ROOT, Daemon, sanitized_python_env, stop_all

POLICIES = ["aliases.py", "attachments.py", "dmarc.py", "dnsbl.py", "greylist.py", "header_checks.py",
            "ratelimit.py", "senders.py"]
UNIT = REPO_ROOT / "packaging" / "systemd" / "portcullis.service"


@pytest.fixture
def clean_env(monkeypatch):
    """No hint where the Python package is: the daemon must find it by itself."""
    for name in ("PYTHONPATH", "PORTCULLIS_PYTHON_PATH", "PYTHONHOME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in sanitized_python_env().items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def build_dir(portcullis_bin) -> Path:
    build = portcullis_bin.parent
    if not (build / "cmake_install.cmake").exists():
        pytest.skip(f"{portcullis_bin} is not in a CMake build folder")
    return build


def one(root: Path, pattern: str) -> Path:
    found = sorted(root.glob(pattern))
    assert len(found) == 1, f"{pattern} under {root}: {found}"
    return found[0]


def probe_policy(folder: Path, package: Path) -> Path:
    """A policy that imports portcullis, refuses to load unless that is `package`, and says in a
    header which package and which _portcullis_core it got."""
    path = folder / "probe.py"
    path.write_text(textwrap.dedent(f"""\
        import _portcullis_core
        import portcullis as pc

        assert pc.__file__ == {str(package / "__init__.py")!r}, pc.__file__

        def on_data(tx, message):
            message.add_header("X-Probe-Package", pc.__file__)
            message.add_header("X-Probe-Core", getattr(_portcullis_core, "__file__", "built-in"))
        """))
    return path


def attachment_message() -> bytes:
    m = email.message.EmailMessage()
    m["Subject"] = "invoice"
    m.set_content("see attached")
    m.add_attachment(b"MZ", maintype="application", subtype="octet-stream", filename="invoice.pdf.exe")
    return m.as_bytes().replace(b"\n", b"\r\n").rstrip(b"\r\n")


def header(content: bytes, name: str) -> str:
    m = re.search(rb"^" + name.encode() + rb": ([^\r\n]*)\r\n", content, re.M)
    assert m, f"no {name} header in {content[:600]!r}"
    return m.group(1).decode()


def start(binary: Path, workdir: Path, config_text) -> Daemon:
    """The daemon `binary` on the config `config_text(port)` (not conftest's: the config is the test's own)."""
    workdir.mkdir(parents=True, exist_ok=True)
    d = Daemon(binary, workdir, "smtp://127.0.0.1:1", {}, None)
    d.write_config(config_text(d.port))
    return d.start()


# --------------------------------------------------------------------------
# (a) cmake --install


def test_cmake_install_tree_runs_with_its_own_python_package(build_dir, portcullis_bin, tmp_path, clean_env,
                                                             aiosmtpd_upstream):
    stage = tmp_path / "stage"
    subprocess.run(["cmake", "--install", str(build_dir), "--prefix", str(stage)], check=True, capture_output=True,
                   timeout=120)
    binary = stage / "sbin" / "portcullis"
    assert os.access(binary, os.X_OK)
    package = one(stage, "lib*/**/portcullis/python/portcullis/__init__.py").parent
    pydir = package.parent
    assert (package / "py.typed").exists() and (package / "_engine.py").exists()
    assert not list(pydir.rglob("__pycache__"))
    one(pydir, "_portcullis_core*.so")
    assert not list(stage.glob("lib*/python3*")), "nothing goes into a site-packages"
    for policy in POLICIES:
        assert (stage / "share" / "portcullis" / "policies" / policy).exists(), policy
    config = stage / "etc" / "portcullis" / "portcullis.toml"
    r = subprocess.run([str(binary), "--check-config", str(config)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    for page in ("man8/portcullis.8.gz", "man5/portcullis.toml.5.gz"):
        assert (stage / "share" / "man" / page).exists(), page
    doc = stage / "share" / "doc" / "portcullis"
    for f in ("README.md", "docs/configuration.md", "docs/policy-api.md", "examples/inbound-mx/portcullis.toml"):
        assert (doc / f).exists(), f
    if UNIT.exists():
        unit = (stage / "lib" / "systemd" / "system" / "portcullis.service").read_text()
        assert "/sbin/portcullis --config " in unit

    # The daemon from the staging root: its package, and the built-in core (not the .so beside it).
    policies = stage / "share" / "portcullis" / "policies"
    probe = probe_policy(tmp_path, package)
    d = start(binary, tmp_path / "run", lambda port: textwrap.dedent(f"""\
        [server]
        hostname = "mx.test"
        listen = ["127.0.0.1:{port}"]
        workers = 1
        threads = 2
        [upstream]
        url = "{aiosmtpd_upstream.url}"
        [policy]
        files = ["{policies}/attachments.py", "{probe}"]
        """))
    try:
        with d.connect() as c:
            r = c.transaction("a@origin.example", ["b@example.test"], attachment_message())
            assert (r.code, r.status) == (550, "5.7.1") and "invoice.pdf.exe" in r.text, r
            assert c.transaction("a@origin.example", ["b@example.test"], b"Subject: hi\r\n\r\nhello").code == 250
        [env] = aiosmtpd_upstream.wait_messages(1)
        assert header(env["content"], "X-Probe-Package") == str(package / "__init__.py")
        assert header(env["content"], "X-Probe-Core") == "built-in"
    finally:
        stop_all([d])

    # Plain Python (a policy's unit tests) imports the installed package and extension module
    # (not a sanitized build's: that module needs the ASan runtime loaded first).
    if not os.environ.get("PORTCULLIS_SANITIZED"):
        plain_python_imports_the_installed_folder(pydir, tmp_path)

    # Installing again keeps the operator's config.
    config.write_text(config.read_text() + "# edited\n")
    subprocess.run(["cmake", "--install", str(build_dir), "--prefix", str(stage)], check=True, capture_output=True,
                   timeout=120)
    assert config.read_text().endswith("# edited\n")


def plain_python_imports_the_installed_folder(pydir: Path, cwd: Path) -> None:
    r = subprocess.run(["/usr/bin/python3", "-c", "import portcullis, _portcullis_core; "
                        "print(portcullis.__file__); print(_portcullis_core.__file__)"],
                       env={**os.environ, "PYTHONPATH": str(pydir), "PYTHONDONTWRITEBYTECODE": "1"},
                       cwd=cwd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert all(line.startswith(str(pydir)) for line in r.stdout.split()), r.stdout


# --------------------------------------------------------------------------
# (b) the Debian package


def build_package(build: Path, out: Path) -> Path:
    if os.environ.get("PORTCULLIS_DEB"):
        return Path(os.environ["PORTCULLIS_DEB"])
    for tool in ("cpack", "dpkg-shlibdeps", "file"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} is not installed (scripts/install-deps.sh --test)")
    r = subprocess.run(["cpack", "-G", "DEB", "--config", str(build / "CPackConfig.cmake"), "-B", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return one(out, "portcullis_*.deb")


def control_fields(deb: Path) -> dict[str, str]:
    info = subprocess.run(["dpkg-deb", "--field", str(deb)], capture_output=True, text=True, check=True).stdout
    return dict(re.findall(r"^([\w-]+): (.*)$", info, re.M))


@pytest.mark.skipif(bool(os.environ.get("PORTCULLIS_SANITIZED")), reason="a sanitized build is not packaged")
def test_debian_package_unpacks_and_runs(build_dir, tmp_path, clean_env, aiosmtpd_upstream):
    deb = build_package(build_dir, tmp_path / "pkg")

    # The control file.
    fields = control_fields(deb)
    assert fields["Package"] == "portcullis" and fields["Section"] == "mail"
    assert "<" in fields["Maintainer"]
    depends = [d.strip() for d in fields["Depends"].split(",")]
    names = {re.match(r"[\w.+-]+", d).group(0) for d in depends}
    assert "python3 (>= 3.11)" in depends
    # dpkg-shlibdeps found the libraries the daemon links (ldd: libpython3.11, libssl3, libunbound8, ...).
    assert {"libc6", "libpython3.11", "libssl3", "libunbound8", "libspf2-2", "libopendmarc2", "libpsl5",
            "libsodium23", "libstdc++6", "adduser"} <= names, depends
    assert all(re.fullmatch(r"[a-z0-9][\w.+-]*( \([<>=]+ [\w.:~+-]+\))?", d) for d in depends), depends
    assert "python3-redis" in fields.get("Recommends", "")
    control = tmp_path / "control"
    subprocess.run(["dpkg-deb", "-e", str(deb), str(control)], check=True)
    [conffile] = (control / "conffiles").read_text().split()
    assert conffile.endswith("/etc/portcullis/portcullis.toml")
    for script in ("postinst", "prerm"):
        assert os.access(control / script, os.X_OK)
        subprocess.run(["sh", "-n", str(control / script)], check=True)

    # The files.
    root = tmp_path / "root"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    binary = one(root, "**/sbin/portcullis")
    prefix = binary.parent.parent
    package = one(prefix, "lib*/**/portcullis/python/portcullis/__init__.py").parent
    assert (package / "py.typed").exists()
    one(package.parent, "_portcullis_core*.so")
    for policy in POLICIES:
        assert (prefix / "share" / "portcullis" / "policies" / policy).exists(), policy
    for page in ("man8/portcullis.8.gz", "man5/portcullis.toml.5.gz"):
        assert (prefix / "share" / "man" / page).exists(), page
    assert (prefix / "share" / "doc" / "portcullis" / "docs" / "configuration.md").exists()
    # A native package's changelog (Debian policy 12.7), whose newest entry is the package's version.
    changelog = prefix / "share" / "doc" / "portcullis" / "changelog.gz"
    newest = subprocess.run(["dpkg-parsechangelog", "-l", "-", "-S", "Version"],
                            input=gzip.decompress(changelog.read_bytes()), capture_output=True,
                            check=True).stdout.decode().strip()
    assert newest == fields["Version"], (newest, fields["Version"])
    if UNIT.exists():
        unit = (prefix / "lib" / "systemd" / "system" / "portcullis.service").read_text()
        assert f"/{prefix.relative_to(root)}/sbin/portcullis --config " in unit
    shipped = root / conffile.lstrip("/")
    text = shipped.read_text()

    # The unpacked daemon on the shipped config, changed only in listen and upstream.
    def adjusted(port: int) -> str:
        out = re.sub(r'(?m)^listen = \[.*\]$', f'listen = ["127.0.0.1:{port}"]', text, count=1)
        out = re.sub(r'(?m)^url = ".*"$', f'url = "{aiosmtpd_upstream.url}"', out, count=1)
        assert f'listen = ["127.0.0.1:{port}"]' in out and f'url = "{aiosmtpd_upstream.url}"' in out
        if not re.fullmatch(r"[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*", socket.gethostname()):
            out = out.replace("[server]\n", '[server]\nhostname = "mx.test"\n', 1)  # (a machine named oddly)
        return out

    d = start(binary, tmp_path / "run", adjusted)
    try:
        with d.connect() as c:
            assert c.transaction("a@origin.example", ["b@example.test"], b"Subject: hi\r\n\r\nhello").code == 250
        aiosmtpd_upstream.wait_messages(1)
    finally:
        stop_all([d])

    # Its own Python package and policies, as the shipped config's commented example lists them.
    example = re.search(r'(?m)^#(files = \[.*\])$', text)
    assert example, "the shipped config's example [policy] files line"
    policies_line = example.group(1).replace('"/', f'"{root}/')
    check = tmp_path / "check.toml"
    probe = probe_policy(tmp_path, package)
    check.write_text(text.replace("files = []", policies_line.replace("]", f', "{probe}"]')))
    r = subprocess.run([str(binary), "--check-config", str(check)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr

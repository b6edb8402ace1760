"""DKIM keys, signatures and verification by dkimpy, the independent
implementation the DKIM, DMARC and signing tests compare the daemon with;
DNS answers come from the test DNS server (tests/dns/dns_server.py)."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import dkim
import dns.resolver
import nacl.signing

SIGNED_HEADERS = [b"from", b"to", b"subject", b"date", b"message-id"]


def make_keys(directory: Path) -> dict:
    """An RSA 2048 and an Ed25519 key pair: the private keys (and the RSA key's
    PEM file), and the DNS records for them."""
    rsa_key = directory / "rsa.pem"
    subprocess.run(["openssl", "genrsa", "-out", str(rsa_key), "2048"], check=True, capture_output=True)
    der = subprocess.run(["openssl", "rsa", "-in", str(rsa_key), "-pubout", "-outform", "DER"], check=True,
                         capture_output=True).stdout
    ed = nacl.signing.SigningKey.generate()
    return {
        "rsa": rsa_key.read_bytes(),
        "rsa_file": rsa_key,
        "ed25519": base64.b64encode(bytes(ed)),
        "ed25519_seed": bytes(ed),
        "rsa_record": "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode(),
        "ed25519_record": "v=DKIM1; k=ed25519; p=" + base64.b64encode(bytes(ed.verify_key)).decode(),
    }


def sign(message: bytes, keys: dict, selector: str = "rsa", algorithm: str = "rsa",
         domain: str = "example.test") -> bytes:
    """The message with dkimpy's DKIM-Signature on top."""
    key = keys["ed25519"] if algorithm == "ed25519" else keys["rsa"]
    signature = dkim.sign(message, selector.encode(), domain.encode(), key, include_headers=SIGNED_HEADERS,
                          signature_algorithm=b"ed25519-sha256" if algorithm == "ed25519" else b"rsa-sha256",
                          canonicalize=(b"relaxed", b"simple"))
    return signature + message


def txt_lookup(port: int):
    """A dkimpy dnsfunc: a name's TXT records joined, from the test DNS server; None if none."""
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers, resolver.port, resolver.lifetime = ["127.0.0.1"], port, 2.0

    def txt(name, timeout=5):
        try:
            answer = resolver.resolve(name.decode() if isinstance(name, bytes) else name, "TXT")
        except Exception:
            return None
        return b"".join(b"".join(r.strings) for r in answer)

    return txt


def dkimpy_results(message: bytes, port: int) -> list[bool]:
    """dkimpy's own verdict on each signature, resolving keys at our DNS server."""
    txt = txt_lookup(port)
    d = dkim.DKIM(message)
    count = sum(1 for line in message.split(b"\r\n\r\n", 1)[0].split(b"\r\n") if line.lower().startswith(b"dkim-signature:"))
    out = []
    for i in range(count):
        try:
            out.append(bool(d.verify(idx=i, dnsfunc=txt)))
        except dkim.DKIMException:
            out.append(False)
    return out


def opendkim_results(message: bytes, zones: dict, portcullis_bin: Path, work: Path) -> list[str]:
    """OpenDKIM's result for each signature (pass fail neutral temperror permerror), top down, its keys read
    from a file holding the TXT records of `zones` (tests/tools/opendkim_verify.cpp, built next to the daemon)."""
    tool = portcullis_bin.parent / "tests" / "opendkim_verify"
    keys = work / "opendkim-keys.txt"
    with keys.open("w") as f:
        for name, entries in zones.items():
            for e in entries:
                if isinstance(e, dict) and "TXT" in e:
                    f.write(f"{name} {e['TXT'] if isinstance(e['TXT'], str) else ''.join(e['TXT'])}\n")
    # (OpenDKIM's own leaks are not ours to report in an ASan build.)
    out = subprocess.run([str(tool), str(keys)], input=message, capture_output=True, check=True,
                         env={"ASAN_OPTIONS": "detect_leaks=0"}).stdout.decode()
    return [line.split()[0] for line in out.splitlines()]

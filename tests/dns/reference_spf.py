"""pyspf's verdict on an SPF check, resolved against our test DNS server.

Later tests compare the daemon's SPF result with pyspf's on the same DNS:

    with DnsServer(zonedata) as server:
        result, explanation = reference_spf(server.port, "192.0.2.1",
                                            "mail.example.com",
                                            "user@example.com")

pyspf has no nameserver option: it resolves through one of two DNS
libraries, picked at import (dnspython if importable, else pydns), and each
of them has a process-wide default configuration.  So for the length of one
check this module points that configuration at 127.0.0.1:<port> and selects
pyspf's own lookup function for the library asked for, then restores both.
Every lookup really goes over UDP (and TCP on truncation) to the server.
"""

import contextlib
import threading
import warnings

import spf

try:
    import dns.resolver
except ImportError:
    dns = None

try:
    with warnings.catch_warnings():
        # py3dns imports asyncore, deprecated since Python 3.10.
        warnings.simplefilter("ignore", DeprecationWarning)
        import DNS as pydns
except ImportError:
    pydns = None

DEFAULT_ADDRESS = "127.0.0.1"
# Per lookup, in seconds.  Loopback answers take milliseconds; a TIMEOUT name
# costs the whole of it and makes pyspf answer temperror (RFC 7208 4.4).
DEFAULT_LOOKUP_TIMEOUT = 2.0

DNSPYTHON = "dnspython"
PYDNS = "pydns"

# pyspf's lookup hook and the libraries' defaults are process-wide.
_configuration_lock = threading.Lock()


def available_backends():
    """The DNS libraries pyspf can be run with here."""
    backends = []
    if dns is not None:
        backends.append(DNSPYTHON)
    if pydns is not None:
        backends.append(PYDNS)
    return backends


def pyspf_default_backend():
    """The DNS library pyspf picked for itself at import."""
    return DNSPYTHON if spf.DNSLookup is spf.DNSLookup_dnspython else PYDNS


@contextlib.contextmanager
def _dnspython_at(address, port):
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [address]
    resolver.port = port
    saved = dns.resolver.default_resolver
    dns.resolver.default_resolver = resolver
    try:
        with warnings.catch_warnings():
            # pyspf calls dns.resolver.query(), deprecated in dnspython 2.
            warnings.simplefilter("ignore", DeprecationWarning)
            yield spf.DNSLookup_dnspython
    finally:
        dns.resolver.default_resolver = saved


@contextlib.contextmanager
def _pydns_at(address, port):
    # spf.py binds the name DNS only when it chose pydns itself.
    if getattr(spf, "DNS", None) is None:
        spf.DNS = pydns
    defaults = pydns.Base.defaults
    saved = {key: defaults[key] for key in ("server", "port")}
    defaults.update(server=[address], port=port)
    try:
        yield spf.DNSLookup_pydns
    finally:
        defaults.update(saved)


@contextlib.contextmanager
def pyspf_resolving_at(port, address=DEFAULT_ADDRESS, backend=None):
    """Within the block, pyspf resolves at address:port with backend."""
    backend = backend or pyspf_default_backend()
    if backend not in available_backends():
        raise ValueError("DNS library %r is not available (have: %s)"
                         % (backend, ", ".join(available_backends())))
    pointing = _dnspython_at if backend == DNSPYTHON else _pydns_at
    with _configuration_lock:
        saved_lookup = spf.DNSLookup
        with pointing(address, port) as lookup:
            spf.DNSLookup = lookup
            try:
                yield
            finally:
                spf.DNSLookup = saved_lookup


def reference_spf(server_port, ip, helo, mailfrom, *,
                  timeout=DEFAULT_LOOKUP_TIMEOUT, strict=True,
                  default_explanation=None, receiver=None, backend=None,
                  address=DEFAULT_ADDRESS):
    """pyspf's (result, explanation) for an SPF check (RFC 7208 section 2.6).

    ip is the SMTP client's address, helo its HELO name and mailfrom the
    reverse-path ("" for a null one, when pyspf checks postmaster@helo).
    timeout bounds each DNS lookup; strict and default_explanation are
    pyspf's (the openspf suite expects "DEFAULT" as the default
    explanation).  backend is "dnspython" or "pydns" (default: pyspf's own
    choice).
    """
    with pyspf_resolving_at(server_port, address, backend):
        query = spf.query(i=ip, s=mailfrom, h=helo, receiver=receiver,
                          strict=strict, timeout=timeout, querytime=0)
        if default_explanation is not None:
            query.set_default_explanation(default_explanation)
        result, _code, explanation = query.check()
    return result, explanation

#!/usr/bin/python3
"""Authoritative DNS server on 127.0.0.1 for the SPF, DKIM and DMARC tests.

It answers from zone data in the shape of the openspf test suite's
``zonedata`` (see rfc7208-tests.yml), over UDP and TCP on one port, so that
the daemon, pyspf and dnspython can all resolve against the same records.

Zone format: a mapping of owner name -> list of entries::

    {
      "example.com": [
        {"TXT": "v=spf1 mx -all"},            # one character-string
        {"TXT": ["v=DKIM1; p=", "MIIB..."]},  # several character-strings
        {"SPF": "v=spf1 -all"},               # type 99, same rdata as TXT
        {"A": "192.0.2.1"}, {"AAAA": "2001:db8::1"},
        {"MX": [10, "mx.example.com"]},
        {"PTR": "mail.example.com"}, {"CNAME": "other.example.com"},
        "TIMEOUT",    # the server never answers (see below)
        "SERVFAIL",   # the server answers SERVFAIL (see below)
        {"DELAY": 1.5}  # no answer for the name before 1.5 s after its first query
      ],
      "*.wild.example": [{"A": "192.0.2.9"}]  # RFC 4592 wildcard
    }

Semantics:
  * Names compare case-insensitively (ASCII only, RFC 4343); answers echo the
    question name as it was asked.
  * A name with records but none of the asked type answers NOERROR with no
    answer (NODATA) and an SOA in the authority section.  A name that is not
    in the zones answers NXDOMAIN, except an ancestor of a name that is (an
    empty non-terminal, RFC 8020 section 2) which answers NODATA.  With
    ``negative_soa=False`` (``--no-soa``) negative answers carry no SOA, as
    some servers send them (RFC 2308 section 5: not to be cached).
  * "TIMEOUT" / "SERVFAIL" apply to every type the name has no records of: a
    name whose only entry is "TIMEOUT" never answers at all.  This is how the
    openspf suite reads them: ``spftimeout.example.net`` has a TXT record and
    "TIMEOUT", and only its type SPF lookups time out.
  * {"DELAY": seconds} holds every answer for the name (of any type) until
    that long after its first query, retries included: a lookup still in
    flight when a test acts.
  * A CNAME is followed within the zones (RFC 1034 section 4.3.2), the chain
    and the final answer both in the reply.
  * TXT/SPF strings longer than 255 bytes are split into several
    character-strings (RFC 1035 section 3.3.14); clients concatenate them.
  * The suite's own conventions (a type SPF record doubles as TXT, a
    ``{"TXT": "NONE"}`` entry) are not applied here: ``spf_suite.py`` does it.

Over UDP, a reply larger than the client's limit (512 bytes, or the payload
size of its EDNS0 OPT record) goes out as an empty reply with TC=1, so the
client retries over TCP (RFC 1035 section 4.2.1, RFC 6891 section 6.2.5).

In-process::

    with DnsServer({"example.com": [{"TXT": "v=spf1 -all"}]}) as server:
        resolve_at("127.0.0.1", server.port)
        server.set_zones(other_zonedata)
        assert server.queries("example.com", "TXT") == 1

As a program (prints ``PORT <n>`` once listening, runs until SIGTERM, rereads
the zones file on SIGHUP)::

    /usr/bin/python3 tests/dns/dns_server.py --zones zones.json [--port N]
"""

import argparse
import json
import select
import signal
import sys
import threading
import time
from collections import Counter

from dnslib import (AAAA, CNAME, EDNS0, MX, PTR, QTYPE, RCODE, RR, SOA, TXT,
                    A, DNSError, DNSHeader, DNSLabel, DNSRecord)
from dnslib.buffer import Buffer
from dnslib.server import DNSHandler, DNSLogger, DNSServer

DEFAULT_ADDRESS = "127.0.0.1"
DEFAULT_TTL = 300

# RFC 1035 section 2.3.4: label and name limits.  253 is the longest name in
# text form without the trailing dot (255 octets on the wire).
LABEL_MAX_OCTETS = 63
NAME_MAX_OCTETS = 253
# RFC 1035 section 3.3.14: a <character-string> has a one-octet length.
CHARACTER_STRING_MAX_OCTETS = 255
# RFC 1035 section 4.2.1: UDP replies without EDNS0 are limited to 512 octets.
CLASSIC_UDP_PAYLOAD = 512
# The payload size we advertise back in our OPT record (the DNS flag day 2020
# value); the client's advertised size is what limits our reply.
SERVER_EDNS_PAYLOAD = 1232
# Longest CNAME chain followed inside one reply; loops stop earlier.
CNAME_CHAIN_MAX = 8
# Times to try for a port free for both UDP and TCP when asked for port 0.
PORT_BIND_ATTEMPTS = 20
# How often the serving loops and a held TCP connection (a TIMEOUT name)
# look for shutdown: stop() takes about this long.
SHUTDOWN_POLL_SECONDS = 0.05

# The SOA in negative answers.  The server is authoritative for every name,
# so its zone apex is the root.
SOA_OWNER = "."
SOA_MNAME = "ns.dns-test.invalid."
SOA_RNAME = "hostmaster.dns-test.invalid."
SOA_SERIAL = 1
SOA_REFRESH = 3600
SOA_RETRY = 600
SOA_EXPIRE = 86400

RDATA_TYPES = ("A", "AAAA", "MX", "PTR", "CNAME", "TXT", "SPF")
TIMEOUT = "TIMEOUT"
SERVFAIL = "SERVFAIL"


class ZoneError(ValueError):
    """Zone data that does not follow the format in the module docstring."""


def name_labels(name):
    """The labels of a name as bytes, the trailing dot ignored.

    Lenient on purpose: Python's idna codec (behind DNSLabel(str)) raises on
    a label over 63 octets, and queries() must still count such names.
    """
    if isinstance(name, DNSLabel):
        return tuple(name.label)
    if isinstance(name, str):
        if name.isascii():
            name = name.encode("ascii")
        else:
            return tuple(DNSLabel(name).label)
    name = name.rstrip(b".")
    return tuple(name.split(b".")) if name else ()


def name_key(name):
    """The case-folded form of a name that zones and query counts use."""
    return b".".join(label.lower() for label in name_labels(name))


def is_well_formed(labels):
    """RFC 1035 section 2.3.4 limits on labels and on the whole name."""
    if any(not label or len(label) > LABEL_MAX_OCTETS for label in labels):
        return False
    return len(b".".join(labels)) <= NAME_MAX_OCTETS


def qtype_code(qtype):
    """A query type given as a name ("TXT") or a number, as its number."""
    if isinstance(qtype, int):
        return qtype
    try:
        return getattr(QTYPE, qtype.upper())
    except AttributeError:
        raise ZoneError("unknown record type %r" % (qtype,)) from None


def qtype_name(code):
    return QTYPE.get(code, "TYPE%d" % code)


def character_strings(value):
    """TXT rdata from a string or a list of strings, each cut to 255 octets."""
    if isinstance(value, (str, bytes)):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise ZoneError("TXT value must be a string or a list of strings: %r"
                        % (value,))
    strings = []
    for item in value:
        if isinstance(item, str):
            item = item.encode("utf-8")
        if not isinstance(item, bytes):
            raise ZoneError("TXT string must be text: %r" % (item,))
        if not item:
            strings.append(b"")
        for start in range(0, len(item), CHARACTER_STRING_MAX_OCTETS):
            strings.append(item[start:start + CHARACTER_STRING_MAX_OCTETS])
    return TXT(strings or [b""])


def make_rdata(rtype, value):
    """The dnslib rdata for one zone entry."""
    try:
        if rtype in ("TXT", "SPF"):
            return character_strings(value)
        if rtype == "A":
            return A(value)
        if rtype == "AAAA":
            return AAAA(value)
        if rtype == "MX":
            preference, exchange = value
            return MX(exchange, int(preference))
        if rtype == "PTR":
            return PTR(value)
        if rtype == "CNAME":
            return CNAME(value)
    except ZoneError:
        raise
    except Exception as error:
        raise ZoneError("bad %s value %r: %s" % (rtype, value, error)) from None
    raise ZoneError("unsupported record type %r (supported: %s)"
                    % (rtype, ", ".join(RDATA_TYPES)))


class ZoneNode:
    """The records of one owner name."""

    __slots__ = ("rdatas", "timeout", "servfail", "delay")

    def __init__(self):
        self.rdatas = {}          # type code -> [rdata]
        self.timeout = False
        self.servfail = False
        self.delay = 0.0          # seconds before each answer

    @property
    def cname(self):
        targets = self.rdatas.get(QTYPE.CNAME)
        return targets[0] if targets else None


class Zones:
    """An immutable, compiled set of zone data that answers queries.

    Pure: DNSRecord in, DNSRecord (or None for "never answer") out, no
    sockets, so it is safe to share between the server's threads.
    """

    def __init__(self, zonedata=None, ttl=DEFAULT_TTL, negative_soa=True):
        if not isinstance(ttl, int) or ttl < 0:
            raise ZoneError("ttl must be a non-negative integer: %r" % (ttl,))
        self.ttl = ttl
        self.negative_soa = negative_soa
        self.nodes = {}
        for name, entries in (zonedata or {}).items():
            self._add_node(name, entries)
        # Every ancestor of an owner name exists, as an empty non-terminal if
        # it has no records of its own (RFC 8020 section 2).
        self.ancestors = set()
        for key in self.nodes:
            labels = key.split(b".")
            for start in range(1, len(labels) + 1):
                self.ancestors.add(b".".join(labels[start:]))

    def _add_node(self, name, entries):
        if not isinstance(name, (str, bytes)):
            raise ZoneError("owner name must be a string: %r" % (name,))
        if not isinstance(entries, (list, tuple)):
            raise ZoneError("%s: entries must be a list, not %r"
                            % (name, entries))
        node = self.nodes.setdefault(name_key(name), ZoneNode())
        for entry in entries:
            if isinstance(entry, str):
                if entry.upper() == TIMEOUT:
                    node.timeout = True
                elif entry.upper() == SERVFAIL:
                    node.servfail = True
                else:
                    raise ZoneError("%s: unknown entry %r" % (name, entry))
                continue
            if not isinstance(entry, dict):
                raise ZoneError("%s: entry must be a mapping or a string: %r"
                                % (name, entry))
            for rtype, value in entry.items():
                rtype = str(rtype).upper()
                if rtype == "DELAY":
                    if not isinstance(value, (int, float)) or value < 0:
                        raise ZoneError("%s: DELAY must be a number of seconds: %r" % (name, value))
                    node.delay = float(value)
                    continue
                rdata = make_rdata(rtype, value)
                node.rdatas.setdefault(qtype_code(rtype), []).append(rdata)

    def delay(self, qname):
        """Seconds to wait before answering a query for qname (its DELAY)."""
        node = self.nodes.get(name_key(qname))
        return node.delay if node is not None else 0.0

    def exists(self, key):
        return key in self.nodes or key in self.ancestors

    def lookup(self, key):
        """The node for a name, synthesised from a wildcard if need be.

        RFC 4592 section 3.3.1: only the wildcard directly below the closest
        encloser (the longest existing ancestor) applies, and never to a
        name that exists.
        """
        node = self.nodes.get(key)
        if node is not None or key in self.ancestors:
            return node
        labels = key.split(b".")
        for start in range(1, len(labels) + 1):
            encloser = b".".join(labels[start:])
            if encloser == b"" or self.exists(encloser):
                wildcard = b"*." + encloser if encloser else b"*"
                return self.nodes.get(wildcard)
        return None

    def answer(self, request):
        """The reply to a parsed query, or None when it must go unanswered."""
        reply = request.reply()
        if any(rr.rtype == QTYPE.OPT for rr in request.ar):
            reply.add_ar(EDNS0(udp_len=SERVER_EDNS_PAYLOAD))
        if len(request.questions) != 1:
            return self._format_error(reply)
        question = request.q
        if not is_well_formed(name_labels(question.qname)):
            return self._format_error(reply)
        qtype = question.qtype
        owner = question.qname
        followed = set()
        for _ in range(CNAME_CHAIN_MAX + 1):
            key = name_key(owner)
            node = self.lookup(key)
            if node is None:
                if not self.exists(key):
                    reply.header.rcode = RCODE.NXDOMAIN
                self._add_soa(reply)
                return reply
            if qtype == QTYPE.ANY:
                rdatas = [(code, rdata) for code, items in node.rdatas.items()
                          for rdata in items]
            else:
                rdatas = [(qtype, rdata) for rdata in node.rdatas.get(qtype, [])]
            if rdatas:
                for code, rdata in rdatas:
                    reply.add_answer(RR(owner, code, rdata=rdata, ttl=self.ttl))
                return reply
            target = node.cname
            if target is not None and qtype != QTYPE.CNAME:
                reply.add_answer(RR(owner, QTYPE.CNAME, rdata=target,
                                    ttl=self.ttl))
                followed.add(key)
                owner = target.label
                if name_key(owner) in followed:
                    return reply        # a loop: the client sees the chain
                continue
            if node.timeout:
                return None
            if node.servfail:
                reply.header.rcode = RCODE.SERVFAIL
                return reply
            self._add_soa(reply)        # NODATA
            return reply
        return reply                    # chain longer than CNAME_CHAIN_MAX

    def _add_soa(self, reply):
        if not self.negative_soa:
            return
        times = (SOA_SERIAL, SOA_REFRESH, SOA_RETRY, SOA_EXPIRE, self.ttl)
        reply.add_auth(RR(SOA_OWNER, QTYPE.SOA, ttl=self.ttl,
                          rdata=SOA(SOA_MNAME, SOA_RNAME, times)))

    @staticmethod
    def _format_error(reply):
        # A malformed question cannot be encoded again, so the reply carries
        # none; clients accept that for FORMERR (RFC 6891 section 7).
        reply.questions = []
        reply.rr, reply.auth = [], []
        reply.header.rcode = RCODE.FORMERR
        return reply


def udp_payload_limit(request):
    """The largest UDP reply this client accepts (RFC 6891 section 6.2.5)."""
    for rr in request.ar:
        if rr.rtype == QTYPE.OPT:
            return max(CLASSIC_UDP_PAYLOAD, rr.rclass)
    return CLASSIC_UDP_PAYLOAD


def truncated(reply):
    """An empty reply with TC=1 that still echoes the question and OPT."""
    short = DNSRecord(DNSHeader(id=reply.header.id, bitmap=reply.header.bitmap,
                                tc=1),
                      q=reply.q)
    for rr in reply.ar:
        if rr.rtype == QTYPE.OPT:
            short.add_ar(rr)
    return short


class NoReply(DNSError):
    """Raised by the handler to send nothing: dnslib's DNSHandler.handle
    drops the reply on DNSError and logs it through our logger."""


class ZoneHandler(DNSHandler):
    """dnslib's request handler, answering from the owning DnsServer.

    Only get_reply is replaced: dnslib still reads the packet (and the TCP
    length prefix) and writes the reply."""

    def get_reply(self, data):
        owner = self.server.resolver
        logger = self.server.logger
        try:
            request = DNSRecord.parse(data)
        except Exception:
            return self._format_error_reply(data)
        if request.header.qr:
            raise NoReply("a response, not a query")
        logger.log_request(self, request)
        if request.questions:
            owner.count_query(request.q.qname, request.q.qtype, self.protocol)
        zones = owner.zones
        if request.questions and zones.delay(request.q.qname):
            # (Each query has a thread of its own.) Counted from the first
            # query, so that a client's retries are answered with it.
            owner.stopping.wait(owner.hold_for(request.q.qname, zones.delay(request.q.qname)))
        reply = zones.answer(request)
        if reply is None:
            self._hold_connection(owner.stopping)
            raise NoReply("no reply by zone data (TIMEOUT)")
        logger.log_reply(self, reply)
        rdata = reply.pack()
        if self.protocol == "udp" and len(rdata) > udp_payload_limit(request):
            short = truncated(reply)
            logger.log_truncated(self, short)
            rdata = short.pack()
        return rdata

    @staticmethod
    def _format_error_reply(data):
        try:
            header = DNSHeader.parse(Buffer(data))
        except Exception:
            raise NoReply("not even a DNS header") from None
        if header.qr:
            # Answering responses could loop between two servers.
            raise NoReply("a response, not a query")
        return DNSRecord(DNSHeader(id=header.id, qr=1, opcode=header.opcode,
                                   rcode=RCODE.FORMERR)).pack()

    def _hold_connection(self, stopping):
        """Keep a TCP connection open and silent, as a server that never
        answers would, until the client gives up or the server stops."""
        if self.protocol != "tcp":
            return
        while not stopping.is_set():
            readable, _, _ = select.select([self.request], [], [],
                                           SHUTDOWN_POLL_SECONDS)
            if readable:
                try:
                    if not self.request.recv(4096):
                        return
                except OSError:
                    return


def quiet_logger():
    return DNSLogger(log="-request,-reply,-truncated,-error")


class DnsServer:
    """The test DNS server: UDP and TCP on one port of 127.0.0.1.

    Thread-safe: zones can be replaced and counts read while it serves.
    """

    def __init__(self, zonedata=None, *, ttl=DEFAULT_TTL, port=0,
                 address=DEFAULT_ADDRESS, logger=None, negative_soa=True):
        self.address = address
        self.ttl = ttl
        self.negative_soa = negative_soa
        self.zones = Zones(zonedata, ttl, negative_soa)
        self.stopping = threading.Event()
        self._requested_port = port
        self._logger = logger or quiet_logger()
        self._servers = []
        self._threads = []
        self._counts = Counter()
        self._first_asked = {}    # name key -> time.monotonic() of its first query (DELAY)
        self._lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------

    def start(self):
        if self._servers:
            raise RuntimeError("DnsServer already started")
        self.stopping.clear()
        attempts = 1 if self._requested_port else PORT_BIND_ATTEMPTS
        for attempt in range(attempts):
            udp = self._make_server(self._requested_port, tcp=False)
            port = udp.server.server_address[1]
            try:
                tcp = self._make_server(port, tcp=True)
            except OSError:
                udp.server.server_close()
                if attempt + 1 == attempts:
                    raise
                continue
            break
        self._servers = [udp, tcp]
        self._threads = [
            threading.Thread(target=server.server.serve_forever,
                             kwargs={"poll_interval": SHUTDOWN_POLL_SECONDS},
                             name="dns-test-server-%s" % kind, daemon=True)
            for server, kind in zip(self._servers, ("udp", "tcp"))]
        for thread in self._threads:
            thread.start()
        return self

    def _make_server(self, port, tcp):
        # dnslib hands its "resolver" to the handler: ZoneHandler reads the
        # zones, counts and stop flag from it.
        return DNSServer(self, address=self.address, port=port, tcp=tcp,
                         logger=self._logger, handler=ZoneHandler)

    def stop(self):
        self.stopping.set()
        for server in self._servers:
            server.server.shutdown()
            server.server.server_close()
        for thread in self._threads:
            thread.join()
        self._servers, self._threads = [], []

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()

    @property
    def port(self):
        if not self._servers:
            raise RuntimeError("DnsServer not started")
        return self._servers[0].server.server_address[1]

    # -- zones -----------------------------------------------------------

    def set_zones(self, zonedata, ttl=None):
        """Replace all zone data; ttl None keeps the server's TTL.

        Queries in flight finish against the zones they started with.
        """
        if ttl is not None:
            self.ttl = ttl
        self.zones = Zones(zonedata, self.ttl, self.negative_soa)

    # -- query counts ----------------------------------------------------

    def count_query(self, qname, qtype, transport):
        with self._lock:
            self._counts[(name_key(qname), qtype, transport)] += 1

    def hold_for(self, qname, delay):
        """Seconds left until a DELAY name may be answered: `delay` after its first query."""
        with self._lock:
            first = self._first_asked.setdefault(name_key(qname), time.monotonic())
        return max(0.0, first + delay - time.monotonic())

    def queries(self, name, qtype=None, transport=None):
        """How many queries for name arrived (of qtype, over "udp"/"tcp").

        A query truncated over UDP and retried over TCP counts twice.
        """
        key = name_key(name)
        code = None if qtype is None else qtype_code(qtype)
        with self._lock:
            return sum(count for (name, rtype, proto), count
                       in self._counts.items()
                       if name == key
                       and (code is None or rtype == code)
                       and (transport is None or proto == transport))

    def query_log(self):
        """All counts as {(name, type name, transport): count}."""
        with self._lock:
            return {(name.decode("ascii", "backslashreplace"),
                     qtype_name(rtype), proto): count
                    for (name, rtype, proto), count in self._counts.items()}

    def reset_queries(self):
        with self._lock:
            self._counts.clear()
            self._first_asked.clear()


def load_zone_file(path):
    """Zone data from a JSON (or YAML) file: either the mapping of names
    itself, or {"zonedata": {...}, "ttl": N} as in the openspf suite."""
    with open(path, "rb") as stream:
        if str(path).endswith((".yml", ".yaml")):
            import yaml
            data = yaml.safe_load(stream)
        else:
            data = json.load(stream)
    if isinstance(data, dict) and isinstance(data.get("zonedata"), dict):
        return data["zonedata"], data.get("ttl")
    return data, None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--zones", required=True,
                        help="JSON or YAML file of zone data")
    parser.add_argument("--port", type=int, default=0,
                        help="port for UDP and TCP (0: pick a free one)")
    parser.add_argument("--address", default=DEFAULT_ADDRESS)
    parser.add_argument("--ttl", type=int, default=None,
                        help="TTL of every record (default: the file's, "
                             "else %d)" % DEFAULT_TTL)
    parser.add_argument("--no-soa", action="store_true",
                        help="negative answers without an SOA")
    parser.add_argument("--verbose", action="store_true",
                        help="log every query to stderr")
    args = parser.parse_args(argv)

    def read_zones():
        zonedata, file_ttl = load_zone_file(args.zones)
        ttl = args.ttl if args.ttl is not None else file_ttl
        return zonedata, ttl if ttl is not None else DEFAULT_TTL

    zonedata, ttl = read_zones()
    logger = None
    if args.verbose:
        logger = DNSLogger(logf=lambda line: print(line, file=sys.stderr,
                                                   flush=True))
    server = DnsServer(zonedata, ttl=ttl, port=args.port,
                       address=args.address, logger=logger,
                       negative_soa=not args.no_soa)
    done = threading.Event()

    def reload_zones(signum, frame):
        try:
            server.set_zones(*read_zones())
        except (OSError, ValueError) as error:
            print("dns_server: reload failed: %s" % error, file=sys.stderr,
                  flush=True)

    signal.signal(signal.SIGTERM, lambda signum, frame: done.set())
    signal.signal(signal.SIGINT, lambda signum, frame: done.set())
    signal.signal(signal.SIGHUP, reload_zones)
    server.start()
    print("PORT %d" % server.port, flush=True)
    try:
        while not done.wait(SHUTDOWN_POLL_SECONDS * 10):
            pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

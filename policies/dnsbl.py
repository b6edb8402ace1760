"""DNS block and allow lists (DNSBL / DNSWL, RFC 5782), weighted, with a
threshold, as Postfix's postscreen_dnsbl_sites does.

Configure it in ``[dnsbl]`` (the defaults shown; ``zones`` is required):

    [dnsbl]
    zones = { "zen.spamhaus.example" = 2, "bl.example" = 1, "list.dnswl.example" = -3 }
    threshold = 2                  # a client scoring this or more is refused
    reject_at = "rcpt"             # "rcpt" (the envelope is in the log) or "connect"
    networks = []                  # clients never looked up (CIDR)
    skip_authenticated = true      # AUTH clients are never refused (at rcpt)
    error_answers = {}             # zone = ["127.0.0.N", ...]: more of a list's own error codes

Each zone is looked up once per connection, all at once, through the
daemon's resolver (``pc.dns``, with its cache): the client's address
reversed under the zone (``5.113.0.203.zen.spamhaus.example``; IPv6 by
nibbles). A zone that answers an A record in 127.0.0.0/8 adds its weight
(negative weights are allow lists); answers in 127.255.255.0/24 are the
list's own error codes (a refused query) and count for nothing, as does a
lookup that fails or times out (logged). So does 127.0.0.255 from an allow
list (a zone with a negative weight): dnswl.org's answer to a resolver over
its limit (SpamAssassin's RCVD_IN_DNSWL_BLOCKED), which is no allowance;
``error_answers`` names more of a zone's own error codes. A weight may also be given per
answer: ``"bl.example=127.0.0.2" = 3`` counts only that answer.

A client whose score reaches ``threshold`` gets ``554 5.7.1 Service
unavailable; client [ADDRESS] blocked using ZONE[, ZONE...]`` at its first
RCPT (or at once, with ``reject_at = "connect"``).
"""

from __future__ import annotations

import asyncio
import ipaddress

import portcullis as pc
from portcullis.settings import Settings, client_address, in_networks, network

_KEYS = ("zones", "threshold", "reject_at", "networks", "skip_authenticated", "error_answers")

# Every list's own error codes (Spamhaus: a refused or over-quota query), and an allow
# list's too: dnswl.org answers 127.0.0.255 to a resolver over its limit.
_LIST_ERRORS = ipaddress.ip_network("127.255.255.0/24")
_ALLOW_LIST_ERRORS = frozenset({"127.0.0.255"})


def _settings() -> dict:
    table = Settings("dnsbl", dict.fromkeys(_KEYS)).given
    zones = table.get("zones")
    if not isinstance(zones, dict) or not zones:
        raise ValueError("[dnsbl] zones: required, an inline table of zone = weight")
    parsed = []
    for name, weight in zones.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise ValueError(f"[dnsbl] zones: the weight of {name!r} must be a number")
        zone, _, answer = name.partition("=")
        zone = zone.strip().strip(".").lower()
        if not zone or " " in zone:
            raise ValueError(f"[dnsbl] zones: {name!r} is not a zone")
        if answer:
            try:
                answer = str(ipaddress.IPv4Address(answer.strip()))
            except ValueError:
                raise ValueError(f"[dnsbl] zones: {name!r}: want zone=127.0.0.N") from None
        parsed.append((zone, answer or None, weight))
    s = {"zones": parsed, "threshold": table.get("threshold", 1), "reject_at": table.get("reject_at", "rcpt"),
         "skip_authenticated": table.get("skip_authenticated", True)}
    if isinstance(s["threshold"], bool) or not isinstance(s["threshold"], (int, float)) or s["threshold"] <= 0:
        raise ValueError("[dnsbl] threshold: want a number above 0")
    if s["reject_at"] not in ("rcpt", "connect"):
        raise ValueError("[dnsbl] reject_at: want \"rcpt\" or \"connect\"")
    if not isinstance(s["skip_authenticated"], bool):
        raise ValueError("[dnsbl] skip_authenticated: want true or false")
    try:
        s["networks"] = [network(n) for n in table.get("networks", [])]
    except (TypeError, ValueError) as e:
        raise ValueError(f"[dnsbl] networks: {e}") from None
    s["error_answers"] = _error_answers(parsed, table.get("error_answers", {}))
    return s


def _error_answers(zones: list, table) -> dict[str, frozenset[str]]:
    """zone -> the answers besides 127.255.255.0/24 that are its own error codes."""
    if not isinstance(table, dict):
        raise ValueError("[dnsbl] error_answers: want an inline table of zone = [\"127.0.0.N\", ...]")
    allow = {zone for zone, _, weight in zones if weight < 0}
    errors = {zone: set(_ALLOW_LIST_ERRORS) if zone in allow else set() for zone, _, _ in zones}
    for name, answers in table.items():
        zone = name.strip().strip(".").lower()
        if zone not in errors:
            raise ValueError(f"[dnsbl] error_answers: {name!r} is not one of the zones")
        if not isinstance(answers, list) or not answers:
            raise ValueError(f"[dnsbl] error_answers: {name!r}: want a list of \"127.0.0.N\"")
        for answer in answers:
            try:
                errors[zone].add(str(ipaddress.IPv4Address(str(answer).strip())))
            except ValueError:
                raise ValueError(f"[dnsbl] error_answers: {name!r}: {answer!r} is not 127.0.0.N") from None
    return {zone: frozenset(found) for zone, found in errors.items()}


SETTINGS = _settings()
_ZONES = sorted({zone for zone, _, _ in SETTINGS["zones"]})
_LOOPBACK = ipaddress.ip_network("127.0.0.0/8")


def _reversed_name(address) -> str:
    if address.version == 4:
        return ".".join(reversed(str(address).split(".")))
    return ".".join(reversed(address.exploded.replace(":", "")))


async def _answers(name: str, zone: str) -> set[str]:
    try:
        found = await pc.dns.resolve(f"{name}.{zone}", "A")
    except pc.dns.NXDOMAIN:
        return set()
    except pc.dns.Error as e:
        pc.log.warning("dnsbl: %s did not answer for the client: %s", zone, e)
        return set()
    listed = {a for a in found if ipaddress.ip_address(a) in _LOOPBACK}
    errors = {a for a in listed if ipaddress.ip_address(a) in _LIST_ERRORS or a in SETTINGS["error_answers"][zone]}
    if errors:
        pc.log.warning("dnsbl: %s refused the query (its error code %s): not counted", zone, ", ".join(sorted(errors)))
    return listed - errors


async def _verdict(conn):
    """(score, zones that listed the client), computed once per connection."""
    cached = conn.data.get("dnsbl")
    if cached is not None:
        return cached
    address = client_address(conn.client_ip)
    # (A link-local client, fe80::1%eth0, is on our own link: no list has it, nor can its scope be reversed.)
    if in_networks(conn.client_ip, SETTINGS["networks"]) or address.is_loopback or address.is_link_local:
        conn.data["dnsbl"] = (0, [])
        return conn.data["dnsbl"]
    name = _reversed_name(address)
    answers = dict(zip(_ZONES, await asyncio.gather(*(_answers(name, zone) for zone in _ZONES))))
    score, hits = 0, []
    for zone, answer, weight in SETTINGS["zones"]:
        got = answers[zone]
        if got and (answer is None or answer in got):
            score += weight
            if weight > 0 and zone not in hits:
                hits.append(zone)
    if hits or score:
        pc.log.info("dnsbl: client [%s] scores %g (%s)", conn.client_ip, score,
                    ", ".join(f"{z}: {', '.join(sorted(answers[z]))}" for z in _ZONES if answers[z]))
    conn.data["dnsbl"] = (score, hits)
    return conn.data["dnsbl"]


def _refusal(conn, hits):
    return pc.reject(f"Service unavailable; client [{conn.client_ip}] blocked using {', '.join(hits)}",
                     code=554, status="5.7.1")


async def on_connect(conn):
    if SETTINGS["reject_at"] == "connect":
        score, hits = await _verdict(conn)
        return _refusal(conn, hits) if score >= SETTINGS["threshold"] else None
    # Looked up while the client says HELO and MAIL: RCPT waits only for what is left.
    conn.data["dnsbl_lookup"] = asyncio.ensure_future(_verdict(conn))
    return None


async def on_rcpt(tx, rcpt):
    conn = tx.conn
    if SETTINGS["skip_authenticated"] and conn.auth_user is not None:
        return None
    lookup = conn.data.get("dnsbl_lookup")
    if lookup is None or lookup.cancelled():
        # A lookup cancelled by something else than this hook is started again.
        lookup = conn.data["dnsbl_lookup"] = asyncio.ensure_future(_verdict(conn))
    # Shielded: a RCPT hook the engine cancels past [policy] timeout must not
    # cancel the connection's lookup, which every later RCPT awaits.
    score, hits = await asyncio.shield(lookup)
    return _refusal(conn, hits) if score >= SETTINGS["threshold"] else None

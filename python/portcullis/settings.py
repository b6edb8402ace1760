"""A policy's own table of the config, read with the checks a typo deserves.

    settings = Settings("greylist", {"delay": 300, "networks": []})
    delay = settings.integer("delay", 0, 86400)       # ValueError: "[greylist] delay: want ..."
    networks = settings.networks("networks")

An unknown key in the table is an error (``[greylist]: unknown key(s) dealy``):
a misspelt setting must stop the policy from loading, not silently leave a
rule off. Values come from ``pc.config`` of the generation being loaded.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from typing import Any

from . import _context

__all__ = ["Settings", "client_address", "in_networks"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Settings:
    """The table ``[name]`` of the config over ``defaults`` (which also list the keys it may have)."""

    def __init__(self, name: str, defaults: dict[str, Any]) -> None:
        self.name = name
        given = _context.current_config().get(name, {})
        if not isinstance(given, dict):
            raise ValueError(f"[{name}]: want a table")
        unknown = sorted(set(given) - set(defaults))
        if unknown:
            raise ValueError(f"[{name}]: unknown key(s) {', '.join(unknown)}")
        self.given = dict(given)  # what the table itself sets (for defaults a policy works out)
        self.values = {**defaults, **given}

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def error(self, key: str, want: str) -> ValueError:
        return ValueError(f"[{self.name}] {key}: want {want}")

    def integer(self, key: str, low: int, high: int) -> int:
        value = self.values[key]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.error(key, f"an integer from {low} to {high}")
        return value

    def boolean(self, key: str) -> bool:
        value = self.values[key]
        if not isinstance(value, bool):
            raise self.error(key, "true or false")
        return value

    def string(self, key: str) -> str:
        value = self.values[key]
        if not isinstance(value, str):
            raise self.error(key, "a string")
        return value

    def strings(self, key: str) -> list[str]:
        value = self.values[key]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.error(key, "a list of strings")
        return value

    def recipient_delimiter(self) -> str:
        """The table's ``recipient_delimiter``: its own, else ``[aliases]``'s (the one
        aliases.py splits recipients on: one site, one idea of an extension), else "+"."""
        aliases = _context.current_config().get("aliases", {})
        default = aliases.get("recipient_delimiter", "+") if isinstance(aliases, dict) else "+"
        value = self.given.get("recipient_delimiter", default)
        if not isinstance(value, str):
            raise self.error("recipient_delimiter", "a string")
        return value

    def networks(self, key: str) -> list[Network]:
        """A list of addresses and networks in CIDR notation (``10.0.0.0/8``, ``2001:db8::/32``),
        read as ``network`` reads each."""
        try:
            return [network(n) for n in self.strings(key)]
        except ValueError as e:
            raise ValueError(f"[{self.name}] {key}: {e}") from None


def network(entry: str) -> Network:
    """An address or a network in CIDR notation as the daemon reads ``[relay] trusted_networks``
    (net/network.cpp): an IPv4-mapped base (``::ffff:10.0.0.0/8``) is the IPv4 network it holds,
    as a client's IPv4-mapped address is the IPv4 one (``client_address``). Read as IPv6, it
    held no client: the daemon trusted one that a policy did not."""
    base, slash, bits = entry.partition("/")
    address = client_address(base)
    return ipaddress.ip_network(f"{address}/{bits}" if slash else address, strict=False)


@functools.lru_cache(maxsize=4096)  # ipaddress parses in Python (2-4 us); policies ask at every command
def client_address(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The client's address (``conn.client_ip``), an IPv4-mapped IPv6 one as the IPv4 it is."""
    address = ipaddress.ip_address(ip)
    if address.version == 6 and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def in_networks(ip: str, networks: Iterable[Network]) -> bool:
    """Whether the client address ``ip`` is in one of ``networks``."""
    address = client_address(ip)
    return any(address in network for network in networks)

"""portcullis.settings: a policy's config table and the client address helpers."""

import ipaddress

from portcullis import settings


def test_client_address_is_cached_once():
    # One lru_cache: a second one around it kept every address twice.
    assert hasattr(settings.client_address, "cache_info")
    assert not hasattr(settings.client_address.__wrapped__, "cache_info")


def test_client_address_takes_an_ipv4_mapped_address_as_ipv4():
    assert settings.client_address("::ffff:192.0.2.1") == ipaddress.IPv4Address("192.0.2.1")
    assert settings.client_address("2001:db8::1") == ipaddress.IPv6Address("2001:db8::1")
    assert settings.in_networks("::ffff:192.0.2.1", [ipaddress.ip_network("192.0.2.0/24")])

"""The SSRF guard refuses private, loopback, link-local and metadata addresses by default."""

from __future__ import annotations

from ipaddress import ip_network

import pytest

from streams.webhooks.ssrf import BlockedDestination, InvalidURL, SsrfGuard


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1:8080/hook", "loopback"),
        ("http://127.5.5.5/hook", "loopback"),
        ("http://localhost:8080/hook", "loopback"),
        ("http://[::1]/hook", "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "metadata"),
        ("http://100.100.100.200/", "metadata"),
        ("http://[fd00:ec2::254]/", "metadata"),
        ("http://169.254.10.10/", "link-local"),
        ("http://[fe80::1]/", "link-local"),
        ("http://10.0.0.8/hook", "private"),
        ("https://10.255.1.2:8443/hook", "private"),
        ("http://172.16.3.4/", "private"),
        ("http://192.168.1.1/", "private"),
        ("http://[fd12:3456::1]/", "private"),
        ("http://100.64.0.1/", "not a public address"),
        ("http://0.0.0.0/", "unspecified"),
        ("http://224.0.0.1/", "multicast"),
        ("http://[::ffff:127.0.0.1]/", "loopback"),
        ("http://[::ffff:10.1.1.1]/", "private"),
    ],
)
async def test_non_public_destinations_are_blocked_by_default(url: str, reason: str) -> None:
    with pytest.raises(BlockedDestination, match=f"SSRF guard: .* is .*{reason}"):
        await SsrfGuard().check(url)


async def test_public_addresses_pass_and_are_pinned() -> None:
    destination = await SsrfGuard().check("https://93.184.215.14:8443/hooks?x=1")
    assert str(destination.address) == "93.184.215.14"
    assert destination.pinned_url == "https://93.184.215.14:8443/hooks?x=1"


async def test_allowed_networks_open_exactly_those_networks() -> None:
    guard = SsrfGuard(allowed_networks=[ip_network("127.0.0.1/32")])
    assert str((await guard.check("http://127.0.0.1:9/h")).address) == "127.0.0.1"
    with pytest.raises(BlockedDestination, match="loopback"):
        await guard.check("http://127.0.0.2:9/h")
    with pytest.raises(BlockedDestination, match="metadata"):
        await guard.check("http://169.254.169.254/")


async def test_allowed_hosts_open_a_name_whatever_it_resolves_to() -> None:
    guard = SsrfGuard(allowed_hosts=["LocalHost."])
    destination = await guard.check("http://localhost:9/h")
    assert destination.address.is_loopback
    assert destination.host == "localhost"
    assert destination.pinned_url.startswith(("http://127.", "http://[::1]"))


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.com/x", "only http and https"),
        ("example.com/hook", "only http and https"),
        ("http:///hook", "has no host"),
        ("http://user:pw@example.com/", "credentials"),
        ("http://example.com:99999/", "not a valid URL"),
    ],
)
async def test_malformed_urls_are_refused_clearly(url: str, message: str) -> None:
    with pytest.raises(InvalidURL, match=message):
        await SsrfGuard().check(url)


async def test_unresolvable_hosts_are_refused() -> None:
    with pytest.raises(BlockedDestination, match="cannot resolve"):
        await SsrfGuard().check("http://no-such-host.invalid/hook")

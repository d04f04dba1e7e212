"""The SSRF guard: webhooks may only reach public addresses unless allow-listed.

A subscriber chooses the URL, so without a guard ledgerbus would POST, from
inside the network, to the database, the cloud metadata service or an admin
port. The host is resolved and every address it resolves to must be public
(``is_global``: not private, loopback, link-local, shared, reserved,
multicast...) and not a known metadata address. The check runs when a webhook
is created and again before every attempt (DNS answers change), and the
attempt connects to the address that was checked, so a second, different DNS
answer (rebinding) cannot slip in between.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from urllib.parse import SplitResult, urlsplit

from streams.webhooks.settings import Network

Address = IPv4Address | IPv6Address

#: Cloud metadata endpoints; most are link-local already, listed so the reason is clear.
METADATA = frozenset(
    ip_address(a) for a in ("169.254.169.254", "169.254.170.2", "100.100.100.200", "fd00:ec2::254")
)


class InvalidURL(ValueError):
    """Not an absolute http(s) URL with a host."""


class BlockedDestination(ValueError):
    """The URL leads to an address webhooks may not reach."""


@dataclass(frozen=True, slots=True)
class Destination:
    """A checked URL and the address to connect to."""

    url: str
    host: str
    address: Address

    @property
    def pinned_url(self) -> str:
        """``url`` with the host replaced by the checked address (port and path kept)."""
        parts = urlsplit(self.url)
        literal = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        netloc = literal if parts.port is None else f"{literal}:{parts.port}"
        return parts._replace(netloc=netloc).geturl()


def parse_url(url: str) -> SplitResult:
    """``url`` split, or InvalidURL saying what is wrong with it."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise InvalidURL(f"{url!r} is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise InvalidURL(f"{url!r}: only http and https URLs can receive webhooks")
    if not parts.hostname:
        raise InvalidURL(f"{url!r} has no host")
    if parts.username or parts.password:
        raise InvalidURL(f"{url!r}: credentials in the URL are not allowed; use the secret")
    return parts


def refusal(address: Address, allowed_networks: Sequence[Network]) -> str | None:
    """Why ``address`` may not be reached, or None when it may."""
    if any(address in network for network in allowed_networks):
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return refusal(address.ipv4_mapped, allowed_networks)
    if address in METADATA:
        return "a cloud metadata address"
    for kind, flag in (
        ("a loopback", address.is_loopback),
        ("an unspecified", address.is_unspecified),
        ("a link-local", address.is_link_local),
        ("a multicast", address.is_multicast),
        ("a private", address.is_private),
        ("a reserved", address.is_reserved),
    ):
        if flag:
            return f"{kind} address"
    if not address.is_global:
        return "not a public address"
    return None


class SsrfGuard:
    """Resolves and checks webhook URLs against the allow-lists."""

    def __init__(
        self, allowed_networks: Sequence[Network] = (), allowed_hosts: Sequence[str] = ()
    ) -> None:
        self.allowed_networks = tuple(allowed_networks)
        self.allowed_hosts = frozenset(host.lower().rstrip(".") for host in allowed_hosts)

    async def check(self, url: str) -> Destination:
        """The destination of ``url``, or BlockedDestination / InvalidURL."""
        parts = parse_url(url)
        host = (parts.hostname or "").rstrip(".")
        addresses = await _resolve(host, parts.port or (443 if parts.scheme == "https" else 80))
        if host not in self.allowed_hosts:
            for address in addresses:
                reason = refusal(address, self.allowed_networks)
                if reason is not None:
                    shown = host if str(address) == host else f"{host} ({address})"
                    raise BlockedDestination(
                        f"SSRF guard: {shown} is {reason}; "
                        "allow it with LEDGERBUS_WEBHOOK_ALLOWED_NETWORKS or _ALLOWED_HOSTS"
                    )
        return Destination(url, host, addresses[0])


async def _resolve(host: str, port: int) -> list[Address]:
    try:
        return [ip_address(host)]
    except ValueError:
        pass
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise BlockedDestination(f"cannot resolve {host}: {exc.strerror}") from None
    except UnicodeError:  # IDNA: an empty or over-long label
        raise InvalidURL(f"{host!r} is not a valid host name") from None
    addresses = list(dict.fromkeys(ip_address(info[4][0]) for info in infos))
    if not addresses:
        raise BlockedDestination(f"{host} resolves to no address")
    return addresses

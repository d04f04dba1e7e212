"""Choosing and checking TCP ports on the loopback interface."""

from __future__ import annotations

import socket


class PortInUse(RuntimeError):
    """A configured port is taken; the message names the setting."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def claim_port(port: int, *, setting: str, host: str = "127.0.0.1") -> int:
    """Return ``port`` if it is free (or a free one for 0), else raise naming ``setting``."""
    if port == 0:
        return free_port(host)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise PortInUse(f"{setting}={port}: port {port} on {host} is already in use") from exc
    return port

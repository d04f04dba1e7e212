"""Choosing and checking TCP ports on the loopback interface."""

from __future__ import annotations

import socket
from collections import deque

#: Ports this process handed out lately. A port is only reserved once its
#: server binds it, and the OS may give a just-closed port to the next bind(0):
#: ``ledgerbus dev`` picks the gateway's port and then a worker's metrics port
#: before either binds, and once got the same one for both.
_HANDED_OUT: deque[int] = deque(maxlen=4096)


class PortInUse(RuntimeError):
    """A configured port is taken; the message names the setting."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the OS picks it), and not one this
    process handed out lately."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port: int = sock.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.append(port)
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

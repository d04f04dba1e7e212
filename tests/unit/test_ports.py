"""Free ports handed out before their servers bind them must not repeat."""

from __future__ import annotations

import socket

from ledgerbus.embedded.ports import free_port


def test_free_port_never_hands_out_the_same_port_twice_before_it_is_bound() -> None:
    ports = [free_port() for _ in range(500)]
    assert len(set(ports)) == len(ports)
    with socket.socket() as sock:  # and each one really was free
        sock.bind(("127.0.0.1", ports[-1]))

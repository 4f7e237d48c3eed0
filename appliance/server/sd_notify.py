"""systemd's readiness protocol, without a dependency: a datagram to $NOTIFY_SOCKET, nothing when unset."""

from __future__ import annotations

import os
import socket


def notify(*states: str) -> bool:
    """Send `READY=1`, `STOPPING=1`, `STATUS=...` lines; True if a notify socket took them."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address or not states:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall("\n".join(states).encode())
    except OSError:
        return False
    return True

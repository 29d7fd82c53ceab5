"""Free TCP ports on 127.0.0.1 for the tests' servers."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port that was free a moment ago (the OS picked it; the socket is closed again)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])

"""Local TCP ports for the tests' own servers and for dependencies that are away."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on now (bound, then released): for a server a test
    starts, or as the address of a dependency that refuses connections."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])

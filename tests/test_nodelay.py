"""Connections accepted by `llm-proxy serve` have TCP_NODELAY (else Nagle stalls every keep-alive response ~40 ms)."""

from __future__ import annotations

import socket

from proxy.cli_workers import bind
from proxy.fronts.serve import _listen


def test_listening_sockets_hand_nodelay_to_accepted_connections():
    for listener in (_listen("127.0.0.1", 0), bind("127.0.0.1", 0)):
        with listener, socket.create_connection(listener.getsockname()):
            accepted, _ = listener.accept()
            with accepted:
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1

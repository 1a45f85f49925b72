"""Socket options the proxy's listening sockets need, in a module of their own so that `llm-proxy serve --workers`'
parent (which only binds the socket its children serve on) does not import the web stack to set them."""

from __future__ import annotations

import socket

__all__ = ["set_nodelay"]


def set_nodelay(sock: socket.socket) -> None:
    """TCP_NODELAY on a listening socket, which accepted connections inherit (Linux). asyncio sets it only on sockets
    whose `proto` is IPPROTO_TCP, and `socket.create_server` leaves `proto` 0: without this, Nagle held every
    keep-alive response body (written after its head) until the client's delayed ACK, about 40 ms per request."""
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

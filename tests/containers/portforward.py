"""`kubectl port-forward` for a container that has its own network namespace.

A pod's loopback is reachable only from inside the pod; kubelet forwards a port by entering the
pod's network namespace. Here a thread enters the container's namespace just long enough to make
a socket (a socket stays in the namespace it was made in), and the host side listens on a free
loopback port and copies bytes both ways.
"""

from __future__ import annotations

import ctypes
import os
import socket
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def socket_in_namespace(pid: int) -> socket.socket:
    """A TCP socket made inside the network namespace of process `pid`."""
    made: list[socket.socket | OSError] = []

    def make() -> None:
        with open(f"/proc/{pid}/ns/net", "rb") as namespace:
            if _libc.setns(namespace.fileno(), CLONE_NEWNET) != 0:
                made.append(OSError(ctypes.get_errno(), "setns"))
                return
        made.append(socket.socket())

    # A fresh thread, since setns moves only the calling thread; it ends right after.
    thread = threading.Thread(target=make)
    thread.start()
    thread.join()
    (result,) = made
    if isinstance(result, OSError):
        raise result
    return result


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, sink):
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


@contextmanager
def port_forward(pid: int, port: int) -> Iterator[str]:
    """Yield host:port on the host's loopback that reaches 127.0.0.1:`port` inside `pid`'s
    network namespace."""

    class Forward(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            inside = socket_in_namespace(pid)
            with inside, self.request:
                try:
                    inside.connect(("127.0.0.1", port))
                except ConnectionRefusedError:
                    return  # nothing listens there yet: the client sees its connection close
                back = threading.Thread(target=_pump, args=(inside, self.request))
                back.start()
                _pump(self.request, inside)
                back.join()

    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), Forward) as server:
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever)
        thread.start()
        try:
            yield f"127.0.0.1:{server.server_address[1]}"
        finally:
            server.shutdown()
            thread.join()


def can_enter_namespaces() -> bool:
    return os.geteuid() == 0

"""A TCP link between two loopback ports that a test can cut and heal, to partition NATS.

nats-server gateways and leaf nodes dial the addresses their peers advertise; a
test moves a server's real listener to another port, advertises the original one
and puts a Link there. Cutting the link resets every connection through it and
refuses new ones, as a failed WAN link does; healing lets the peers reconnect.
"""

from __future__ import annotations

import contextlib
import socket
import threading


class Link:
    def __init__(self, listen_port: int, target_port: int, host: str = "127.0.0.1") -> None:
        self.host, self.target_port = host, target_port
        self._server = socket.create_server((host, listen_port), reuse_port=False)
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._up = True
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            self._up = False
            sockets, self._open = self._open, set()
        for sock in sockets:
            _reset(sock)

    def heal(self) -> None:
        with self._lock:
            self._up = True

    def close(self) -> None:
        self.cut()
        self._server.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return  # closed
            with self._lock:
                up = self._up
            if not up:
                _reset(client)
                continue
            try:
                upstream = socket.create_connection((self.host, self.target_port), timeout=2)
            except OSError:
                _reset(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open.update((client, upstream))
            threading.Thread(target=_pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=_pump, args=(upstream, client), daemon=True).start()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        _reset(src)
        _reset(dst)


def _reset(sock: socket.socket) -> None:
    """Shut down first: that wakes a thread blocked in recv() on it, which close() alone does not."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()

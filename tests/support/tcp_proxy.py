"""A TCP relay between a client and the broker that can lose one direction, for tests.

The daemon connects to the relay, the relay to the real mosquitto. `lose_upstream()`
makes it a network that drops what the client sends from then on (what the broker sends
still arrives): a publish made then never reaches the broker and is never PUBACKed, so a
test can kill the daemon exactly "after it published, before the broker confirmed".
Connections made after `restore()` are relayed whole again.
"""

from __future__ import annotations

import contextlib
import socket
import threading

from support.mosquitto import free_port

CHUNK = 65536


class TcpProxy:
    def __init__(self, target_port: int, address: str = "127.0.0.1") -> None:
        self.address = address
        self.target_port = target_port
        self.port = free_port(address)
        self._listener = socket.create_server((address, self.port))
        self._upstream = threading.Event()
        self._upstream.set()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def lose_upstream(self) -> None:
        """From now on, bytes from the client are read and dropped."""
        self._upstream.clear()

    def restore(self) -> None:
        self._upstream.set()

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection((self.address, self.target_port), timeout=5)
            except OSError:
                client.close()  # the broker is down: the client retries
                continue
            server.settimeout(None)
            with self._lock:
                self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, upstream: bool) -> None:
        try:
            while data := source.recv(CHUNK):
                if upstream and not self._upstream.is_set():
                    continue  # lost on the way
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):  # one side gone: the other sees the connection end
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()

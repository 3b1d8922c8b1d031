"""A TCP relay to a real service that can be switched off and on: the service as its clients see it
when it stops (connections refused, open ones cut) and comes back, while the service itself stays up
for the other tests that share it."""

from __future__ import annotations

import socket
import threading
from types import TracebackType

from tests.support.ports import free_port


class TcpRelay:
    """Relays 127.0.0.1:`port` to `target`; starts off (nothing listens on `port`)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()  # kept for `on()`
        self._listener: socket.socket | None = None
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()

    def on(self) -> None:
        """Listen and relay every connection to the target."""
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen()
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def off(self) -> None:
        """Stop listening (new connections are refused) and cut the open ones."""
        listener, self._listener = self._listener, None
        if listener is not None:
            _close(listener)  # a shutdown first: close() alone leaves a blocked accept() accepting
        with self._lock:
            open_sockets, self._open = self._open, []
        for sock in open_sockets:
            _close(sock)

    def __enter__(self) -> TcpRelay:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.off()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # closed by off()
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(source, sink), daemon=True).start()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while chunk := source.recv(65536):
            sink.sendall(chunk)
    except OSError:
        pass
    finally:
        _close(source)
        _close(sink)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()

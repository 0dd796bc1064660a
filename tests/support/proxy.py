"""A loopback TCP proxy that can stall: connections accepted, requests read, nothing answered.

What a hung upstream looks like from the client's side (a frozen server, a middlebox that
black-holes traffic): the connection is open, the request was written, no byte comes back.
`stall()` holds every connection that sends while it lasts (new ones included); `hold(marker)`
only those whose bytes contain `marker` (one stuck call among healthy ones). Held requests are
never passed on, so the upstream never sees them; `release()` lets new ones through again.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from types import TracebackType
from typing import Self

from tests.support.servers import free_port


class StallingProxy:
    def __init__(self, upstream_port: int, host: str = "127.0.0.1") -> None:
        self.upstream = (host, upstream_port)
        self.port = free_port(host)
        self.url = f"http://{host}:{self.port}"
        self._listener = socket.create_server((host, self.port), backlog=128)
        self._lock = threading.Lock()
        self._stalled = False
        self._markers: list[bytes] = []
        self._held: dict[socket.socket, bytearray] = {}
        # (monotonic time, the first bytes) of every request held.
        self.held_at: list[tuple[float, bytes]] = []
        self._open: set[socket.socket] = set()
        self._closing = False
        threading.Thread(target=self._accept, daemon=True).start()

    def stall(self) -> None:
        with self._lock:
            self._stalled = True

    def hold(self, marker: bytes) -> None:
        with self._lock:
            self._markers.append(marker)

    def release(self) -> None:
        """Forward new requests again. A connection already held stays silent until its
        client gives up on it: those calls are never answered, and never passed on."""
        with self._lock:
            self._stalled = False
            self._markers.clear()

    def held_requests(self, method: bytes = b"") -> int:
        """Requests written into the stall, those whose request line names `method`."""
        with self._lock:
            return sum(method in first.split(b"\r\n", 1)[0] for _, first in self.held_at)

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.upstream, timeout=10)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        with self._lock:
            self._open.update((client, upstream))
        threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()
        self._pipe(client, upstream, requests=True)

    def _pipe(self, source: socket.socket, target: socket.socket, requests: bool = False) -> None:
        """Bytes from `source` to `target`; towards the upstream one whole HTTP request at a
        time, so that a request is held or passed on as one."""
        try:
            chunks = _requests(source) if requests else iter(lambda: source.recv(65536), b"")
            for data in chunks:
                if requests and self._holds(source, data):
                    continue
                target.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._held.pop(source, None)
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _holds(self, client: socket.socket, data: bytes) -> bool:
        with self._lock:
            if client in self._held or self._stalled or any(m in data for m in self._markers):
                self._held.setdefault(client, bytearray()).extend(data)
                self.held_at.append((time.monotonic(), bytes(data[:200])))
                return True
        return False

    def close(self) -> None:
        self._closing = True
        self._listener.close()
        with self._lock:
            opened, self._open = list(self._open), set()
        for sock in opened:
            with contextlib.suppress(OSError):
                sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _requests(source: socket.socket) -> Iterator[bytes]:
    """Whole HTTP/1.1 requests (headers and a Content-Length body) as the client sends them."""
    buffer = b""
    while True:
        while b"\r\n\r\n" not in buffer:
            data = source.recv(65536)
            if not data:
                return
            buffer += data
        head, _, rest = buffer.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        while len(rest) < length:
            data = source.recv(65536)
            if not data:
                return
            rest += data
        yield head + b"\r\n\r\n" + rest[:length]
        buffer = rest[length:]

"""Local stand-ins for FAL's key server and the Telegram Bot API, speaking their real protocols.

The loopback server plumbing they share lives here (rather than in a module of its own); import
the fakes from their modules (`tests.fakes.fal_keys`, `tests.fakes.telegram_api`, ...).
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self, cast


class LoopbackHandler(BaseHTTPRequestHandler):
    """Request handler base: HTTP/1.1 keep-alive, no logging, helpers for bodies and drops."""

    # Real API servers keep connections alive; clients' pools then behave as in production.
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # Headers and body go out as separate writes; with Nagle on, the client's delayed ACK
        # would add ~40 ms to every answer.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    @property
    def owner(self) -> Any:
        return cast("_Server", self.server).owner

    def log_message(self, format: str, *args: Any) -> None:
        # The standalone process must print nothing; tests inspect recorded calls instead.
        return

    def read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return self._read_chunked()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _read_chunked(self) -> bytes:
        chunks: list[bytes] = []
        while True:
            size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                # Trailer section ends with an empty line.
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)
            chunks.append(self.rfile.read(size))
            self.rfile.readline()

    def send_body(
        self,
        status: int,
        body: bytes,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.wfile.flush()

    def send_json(self, status: int, document: Any) -> None:
        self.send_body(status, json.dumps(document).encode())

    def drop(self) -> None:
        """Close the connection without answering (a dead server or a cut link)."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # A restarted fake must get its old port back at once, as a restarted real server would.
    allow_reuse_address = True

    def __init__(self, owner: LoopbackServer, address: tuple[str, int]) -> None:
        self.owner = owner
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, owner.handler_class)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_open_connections(self) -> None:
        # Otherwise a client's pooled keep-alive connection would still reach a stopped fake.
        with self._open_lock:
            sockets = list(self._open)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (read timeout, dropped socket) is normal here, not a failure.
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


class LoopbackServer:
    """A threaded HTTP server on 127.0.0.1; subclasses set `handler_class`."""

    handler_class: type[LoopbackHandler] = LoopbackHandler

    def __init__(self, *, port: int = 0, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port
        self.stopping = threading.Event()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return f"http://{self.host}:{self.port}"

    def start(self) -> Self:
        """Bind and serve; after a stop() it comes back on the same port."""
        if self._httpd is not None:
            return self
        self.stopping.clear()
        httpd = _Server(self, (self.host, self.port))
        self.port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"{type(self).__name__}:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and cut open connections; the port then refuses connections."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self.stopping.set()
        self.wake_waiters()
        httpd.shutdown()
        httpd.close_open_connections()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def wake_waiters(self) -> None:
        """Hook for subclasses whose handlers block (long polls) and must notice stop()."""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

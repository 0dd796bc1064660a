"""A loopback server that serves fixed files and records what is POSTed to it."""

from __future__ import annotations

import threading

from tests.fakes import LoopbackHandler, LoopbackServer


class _FilesHandler(LoopbackHandler):
    def do_GET(self) -> None:
        files: FileServer = self.owner
        data = files.files.get(self.path)
        if data is None:
            self.send_json(404, {"error": "not_found", "detail": "no such file"})
        else:
            self.send_body(200, data, "application/zip")

    def do_POST(self) -> None:
        files: FileServer = self.owner
        body = self.read_body()
        with files.lock:
            files.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
        self.send_json(200, {"status": "received"})


class FileServer(LoopbackServer):
    """Serves `files` by path (a training zip for FAL) and keeps every POST (FAL's callbacks)."""

    handler_class = _FilesHandler

    def __init__(self) -> None:
        super().__init__()
        self.files: dict[str, bytes] = {}
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.lock = threading.Lock()

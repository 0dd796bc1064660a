"""A local image host (as FAL's CDN is to Telegram): files by path, and refusals on demand."""

from __future__ import annotations

import threading

from tests.fakes import LoopbackHandler, LoopbackServer


class _Handler(LoopbackHandler):
    def do_GET(self) -> None:
        host: ImageHost = self.owner
        agent = self.headers.get("User-Agent", "")
        path = self.path.split("?", 1)[0]
        with host.lock:
            host.requests.append((path, agent))
            found = host.files.get(path)
            refused = any(agent.startswith(prefix) for prefix in host.refused_agents)
        if refused:
            self.send_body(403, b"forbidden", "text/plain")
        elif found is None:
            self.send_body(404, b"not found", "text/plain")
        else:
            self.send_body(200, found[0], found[1])


class ImageHost(LoopbackServer):
    """Serves what `add` was given; `refuse_agent` makes it answer 403 to one client kind."""

    handler_class = _Handler

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.files: dict[str, tuple[bytes, str]] = {}
        self.requests: list[tuple[str, str]] = []
        self.refused_agents: list[str] = []

    def add(self, path: str, data: bytes, content_type: str = "image/jpeg") -> str:
        """Serve `data` at `path`; returns its URL."""
        with self.lock:
            self.files[path] = (data, content_type)
        return f"{self.url}{path}"

    def refuse_agent(self, prefix: str) -> None:
        """Answer 403 to clients whose User-Agent starts with `prefix` (hotlink protection)."""
        with self.lock:
            self.refused_agents.append(prefix)

    def fetched_by(self, path: str) -> list[str]:
        """The User-Agent of every request for `path`, in order."""
        with self.lock:
            return [agent for p, agent in self.requests if p == path]

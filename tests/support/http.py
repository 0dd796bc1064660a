"""A plain HTTP client that can choose its source address (127.0.0.2 is another 'host')."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def call(
    method: str,
    url: str,
    body: bytes | Iterable[bytes] | None = None,
    headers: dict[str, str] | None = None,
    source: str = "127.0.0.1",
    timeout: float = 30.0,
) -> Answer:
    parts = urlsplit(url)
    assert parts.hostname, url
    conn = http.client.HTTPConnection(
        parts.hostname, parts.port, timeout=timeout, source_address=(source, 0)
    )
    try:
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        chunked = body is not None and not isinstance(body, bytes)
        conn.request(method, path, body=body, headers=headers or {}, encode_chunked=chunked)
        response = conn.getresponse()
        return Answer(response.status, dict(response.getheaders()), response.read())
    finally:
        conn.close()


def post(
    url: str, body: bytes, headers: dict[str, str] | None = None, source: str = "127.0.0.1"
) -> Answer:
    return call("POST", url, body, {"Content-Type": "application/json", **(headers or {})}, source)

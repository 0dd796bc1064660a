"""Fetching a photo ourselves when Telegram would not fetch its URL: bounded in size and time."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import httpx

from service.outbox.states import SendOutcome

# Telegram takes photos up to 10 MB and documents up to 50 MB by upload; 20 MB keeps a
# too-big photo sendable as a document without holding much in memory.
MAX_BYTES = 20 * 1024 * 1024
# Per operation, and for the whole download: a slow host cannot hold a send (and its lease).
TIMEOUT = httpx.Timeout(10.0, connect=5.0)
DEADLINE_SECONDS = 20.0
MAX_REDIRECTS = 5


class DownloadFailed(Exception):
    """The photo could not be fetched: `outcome` says whether trying later may help."""

    def __init__(self, outcome: SendOutcome, reason: str) -> None:
        super().__init__(reason)
        self.outcome = outcome


async def download(url: str, limit: int = MAX_BYTES) -> bytes:
    """The bytes at `url` (http or https only, redirects included), at most `limit` of them."""
    if urlsplit(url).scheme not in ("http", "https"):
        raise DownloadFailed(SendOutcome.UNDELIVERABLE, f"not an http(s) URL: {url[:100]}")
    try:
        async with asyncio.timeout(DEADLINE_SECONDS):
            return await _fetch(url, limit)
    except TimeoutError:
        raise DownloadFailed(SendOutcome.RETRY, f"timed out fetching {url}") from None
    except httpx.UnsupportedProtocol:
        # A redirect to something other than http(s).
        raise DownloadFailed(SendOutcome.UNDELIVERABLE, f"not an http(s) URL: {url}") from None
    except httpx.TooManyRedirects:
        raise DownloadFailed(SendOutcome.UNDELIVERABLE, f"too many redirects: {url}") from None
    except httpx.HTTPError as exc:
        # Connection refused, reset, timeouts: the host may be back later.
        raise DownloadFailed(SendOutcome.RETRY, f"could not fetch {url}: {exc!r}") from None


async def _fetch(url: str, limit: int) -> bytes:
    async with (
        httpx.AsyncClient(
            timeout=TIMEOUT, follow_redirects=True, max_redirects=MAX_REDIRECTS
        ) as client,
        client.stream("GET", url) as answer,
    ):
        if answer.status_code != 200:
            # Gone (404, 403, 410: FAL's URLs expire) is final; the host's trouble is not.
            status = answer.status_code
            final = 400 <= status < 500 and status not in (408, 429)
            outcome = SendOutcome.UNDELIVERABLE if final else SendOutcome.RETRY
            raise DownloadFailed(outcome, f"HTTP {status} fetching {url}")
        declared = answer.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise DownloadFailed(SendOutcome.UNDELIVERABLE, _too_big(url, limit))
        body = bytearray()
        async for chunk in answer.aiter_bytes():
            body += chunk
            if len(body) > limit:
                raise DownloadFailed(SendOutcome.UNDELIVERABLE, _too_big(url, limit))
        return bytes(body)


def _too_big(url: str, limit: int) -> str:
    return f"over {limit // (1024 * 1024)} MB: {url}"

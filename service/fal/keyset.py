"""FAL's public key set: fetched, cached, and refetched when a signature does not verify."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx
import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from service.fal.signature import BadSignature, SignedHeaders, key_from_jwk, verify

log = structlog.get_logger(__name__)

MAX_AGE_SECONDS = 24 * 3600
REFETCH_INTERVAL_SECONDS = 60.0


class KeySetUnavailable(Exception):
    """FAL's key set cannot be fetched and none is cached (answer 503 so FAL retries)."""


class KeySet:
    """Keys from `url`, cached for a day; a failed verification may refetch once a minute."""

    def __init__(
        self,
        url: str,
        client: httpx.AsyncClient,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = url
        self._client = client
        self._clock = clock
        self._keys: tuple[Ed25519PublicKey, ...] = ()
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._lock = asyncio.Lock()

    async def verify(self, signed: SignedHeaders, body: bytes) -> None:
        """Verify with the cached keys; on a mismatch refetch (rate-limited) and try again."""
        keys = await self._current()
        try:
            verify(signed, body, keys)
            return
        except BadSignature:
            if not await self._refresh(min_interval=REFETCH_INTERVAL_SECONDS):
                raise
        verify(signed, body, self._keys)

    async def _current(self) -> tuple[Ed25519PublicKey, ...]:
        stale = self._fetched_at is None or self._clock() - self._fetched_at > MAX_AGE_SECONDS
        if stale:
            # Without keys, try again after a second (each request would otherwise queue on a
            # dead key server); with old keys, keep using them while refetching once a minute,
            # so a brief outage of FAL's key server does not turn into one of ours.
            await self._refresh(min_interval=REFETCH_INTERVAL_SECONDS if self._keys else 1.0)
        if not self._keys:
            raise KeySetUnavailable(f"FAL's key set could not be fetched from {self._url}")
        return self._keys

    async def _refresh(self, min_interval: float) -> bool:
        """Fetch the key set unless one was tried within `min_interval`; True if keys changed."""
        async with self._lock:
            now = self._clock()
            # This also stops coroutines that queued on the lock from fetching again.
            if self._attempted_at is not None and now - self._attempted_at < min_interval:
                return False
            self._attempted_at = now
            before = {key.public_bytes_raw() for key in self._keys}
            try:
                response = await self._client.get(self._url, timeout=5.0)
                response.raise_for_status()
                entries = response.json().get("keys", [])
                if not isinstance(entries, list):
                    raise ValueError("'keys' is not a list")
            except (httpx.HTTPError, ValueError, AttributeError) as exc:
                log.warning("fal_keyset_fetch_failed", url=self._url, error=str(exc))
                return False
            keys = tuple(
                key
                for key in (key_from_jwk(entry) for entry in entries if isinstance(entry, dict))
                if key is not None
            )
            if not keys:
                log.warning("fal_keyset_empty", url=self._url)
                return False
            self._keys = keys
            self._fetched_at = now
            log.info("fal_keyset_fetched", url=self._url, keys=len(keys))
            return {key.public_bytes_raw() for key in keys} != before

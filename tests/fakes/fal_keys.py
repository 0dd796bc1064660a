"""FAL webhook signing keys: a signer that produces FAL's headers and a JWKS server for them."""

from __future__ import annotations

import base64
import hashlib
import threading
import time
from collections.abc import Iterable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from . import LoopbackHandler, LoopbackServer

JWKS_PATH = "/.well-known/jwks.json"


def signed_message(body: bytes, request_id: str, user_id: str, timestamp: int | str) -> bytes:
    """The exact bytes FAL signs for one webhook delivery."""
    digest = hashlib.sha256(body).hexdigest()
    return f"{request_id}\n{user_id}\n{timestamp}\n{digest}".encode()


class FalSigner:
    """An Ed25519 key pair standing in for one of FAL's webhook signing keys."""

    def __init__(self, private_key: Ed25519PrivateKey | None = None) -> None:
        self.private_key = private_key or Ed25519PrivateKey.generate()

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()

    @property
    def raw_public_key(self) -> bytes:
        return self.public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)

    def jwk(self, pad: bool = False) -> dict[str, str]:
        """The public key as FAL publishes it; FAL leaves out the base64 padding."""
        x = base64.urlsafe_b64encode(self.raw_public_key).decode()
        return {"kty": "OKP", "crv": "Ed25519", "x": x if pad else x.rstrip("=")}

    def sign(self, message: bytes) -> bytes:
        return self.private_key.sign(message)

    def headers(
        self,
        body: bytes,
        request_id: str,
        user_id: str = "fal-test-user",
        timestamp: int | None = None,
    ) -> dict[str, str]:
        """The four X-Fal-Webhook-* headers FAL sends with this body."""
        stamp = str(int(time.time()) if timestamp is None else timestamp)
        signature = self.sign(signed_message(body, request_id, user_id, stamp))
        return {
            "X-Fal-Webhook-Request-Id": request_id,
            "X-Fal-Webhook-User-Id": user_id,
            "X-Fal-Webhook-Timestamp": stamp,
            "X-Fal-Webhook-Signature": signature.hex(),
        }


class _JwksHandler(LoopbackHandler):
    def do_GET(self) -> None:
        server: JwksServer = self.owner
        if self.path.split("?", 1)[0] != JWKS_PATH:
            self.send_json(404, {"detail": "Not Found"})
            return
        status, dropping, document = server._answer()
        if dropping:
            self.drop()
        elif status is not None:
            self.send_json(status, {"detail": "key set unavailable"})
        else:
            self.send_json(200, document)


class JwksServer(LoopbackServer):
    """Serves GET /.well-known/jwks.json from a mutable list of signers."""

    handler_class = _JwksHandler

    def __init__(
        self,
        signers: Iterable[FalSigner] = (),
        *,
        pad: bool = False,
        port: int = 0,
        host: str = "127.0.0.1",
    ) -> None:
        super().__init__(port=port, host=host)
        self.pad = pad
        self._lock = threading.Lock()
        self._signers: list[FalSigner] = list(signers)
        self._requests = 0
        self._fail_status: int | None = None
        self._dropping = False

    @property
    def jwks_url(self) -> str:
        return f"{self.url}{JWKS_PATH}"

    @property
    def requests(self) -> int:
        """How many key-set fetches arrived, whatever they were answered."""
        with self._lock:
            return self._requests

    def add(self, signer: FalSigner) -> None:
        with self._lock:
            self._signers.append(signer)

    def remove(self, signer: FalSigner) -> None:
        with self._lock:
            self._signers.remove(signer)

    def set_keys(self, signers: Iterable[FalSigner]) -> None:
        with self._lock:
            self._signers = list(signers)

    def fail(self, status: int | None) -> None:
        """Answer every fetch with this HTTP status until fail(None)."""
        with self._lock:
            self._fail_status = status

    def close_connections(self, enabled: bool = True) -> None:
        """Drop every fetch without an answer while enabled."""
        with self._lock:
            self._dropping = enabled

    def document(self) -> dict[str, Any]:
        """The key set as it is served now."""
        with self._lock:
            return {"keys": [signer.jwk(pad=self.pad) for signer in self._signers]}

    def _answer(self) -> tuple[int | None, bool, dict[str, Any]]:
        with self._lock:
            self._requests += 1
            status, dropping = self._fail_status, self._dropping
        return status, dropping, self.document()

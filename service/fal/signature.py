"""Ed25519 webhook signatures: a pure check of raw bytes, headers, keys and the clock."""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

HEADER_REQUEST_ID = "x-fal-webhook-request-id"
HEADER_USER_ID = "x-fal-webhook-user-id"
HEADER_TIMESTAMP = "x-fal-webhook-timestamp"
HEADER_SIGNATURE = "x-fal-webhook-signature"
SIGNATURE_HEADERS = (HEADER_REQUEST_ID, HEADER_USER_ID, HEADER_TIMESTAMP, HEADER_SIGNATURE)
TOLERANCE_SECONDS = 300


class SignatureError(Exception):
    """The request is not signed by FAL: missing, malformed, stale or wrong (answer 401)."""


class BadSignature(SignatureError):
    """Well-formed and fresh, but no key of the set verifies it: maybe the keys rotated."""


@dataclass(frozen=True)
class SignedHeaders:
    request_id: str
    user_id: str
    timestamp: int
    signature: bytes


def has_signature_headers(headers: Mapping[str, str]) -> bool:
    return any(name in headers for name in SIGNATURE_HEADERS)


def parse_headers(headers: Mapping[str, str], now: float) -> SignedHeaders:
    """The four signature headers, checked for shape and freshness (no keys needed yet)."""
    missing = [name for name in SIGNATURE_HEADERS if not headers.get(name)]
    if missing:
        raise SignatureError(f"missing signature headers: {', '.join(missing)}")
    raw_timestamp = headers[HEADER_TIMESTAMP].strip()
    # isdigit() alone admits "²" and other digits int() refuses: ASCII only.
    if not (raw_timestamp.isascii() and raw_timestamp.isdigit()) or len(raw_timestamp) > 12:
        raise SignatureError("X-Fal-Webhook-Timestamp is not a Unix time in seconds")
    timestamp = int(raw_timestamp)
    if abs(now - timestamp) > TOLERANCE_SECONDS:
        raise SignatureError(
            f"X-Fal-Webhook-Timestamp is {int(now - timestamp)} s from now "
            f"(allowed: {TOLERANCE_SECONDS} s)"
        )
    try:
        signature = bytes.fromhex(headers[HEADER_SIGNATURE].strip())
    except ValueError:
        raise SignatureError("X-Fal-Webhook-Signature is not hexadecimal") from None
    if len(signature) != 64:
        raise SignatureError("X-Fal-Webhook-Signature has the wrong length for Ed25519")
    return SignedHeaders(
        request_id=headers[HEADER_REQUEST_ID].strip(),
        user_id=headers[HEADER_USER_ID].strip(),
        timestamp=timestamp,
        signature=signature,
    )


def signed_message(signed: SignedHeaders, body: bytes) -> bytes:
    # The raw bytes are hashed as received: re-serialised JSON would not match FAL's digest.
    digest = hashlib.sha256(body).hexdigest()
    return f"{signed.request_id}\n{signed.user_id}\n{signed.timestamp}\n{digest}".encode()


def verify(signed: SignedHeaders, body: bytes, keys: Iterable[Ed25519PublicKey]) -> None:
    """Return if any key verifies the signature; raise BadSignature otherwise."""
    message = signed_message(signed, body)
    for key in keys:
        try:
            key.verify(signed.signature, message)
        except InvalidSignature:
            continue
        return
    raise BadSignature("the signature does not match any key of FAL's key set")


def key_from_jwk(jwk: Mapping[str, object]) -> Ed25519PublicKey | None:
    """An Ed25519 key from a JWKS entry, or None for entries of other kinds or broken ones.

    FAL documents its key set only as "a list of public keys, each with an `x` field", so an
    entry without `kty`/`crv` is read as Ed25519; only one that names another kind is skipped.
    """
    if jwk.get("kty", "OKP") != "OKP" or jwk.get("crv", "Ed25519") != "Ed25519":
        return None
    x = jwk.get("x")
    if not isinstance(x, str):
        return None
    try:
        # JWKs use base64url without padding; add it back before decoding.
        raw = base64.urlsafe_b64decode(x + "=" * (-len(x) % 4))
        return Ed25519PublicKey.from_public_bytes(raw)
    except (ValueError, binascii.Error):
        return None

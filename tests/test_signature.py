"""FAL webhook signatures: the pure check, the header parser, JWKS keys and the cached key set."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, TypeVar

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from service.fal.keyset import KeySet, KeySetUnavailable
from service.fal.signature import (
    SIGNATURE_HEADERS,
    BadSignature,
    SignatureError,
    SignedHeaders,
    has_signature_headers,
    key_from_jwk,
    parse_headers,
    verify,
)
from tests.fakes import LoopbackHandler, LoopbackServer
from tests.fakes.fal_keys import FalSigner, JwksServer
from tests.support.clock import FakeClock

T = TypeVar("T")

NOW = 1_700_000_000
BODY = (
    b'{"request_id": "req-1", "gateway_request_id": "req-1", "status": "OK", '
    b'"payload": {"diffusers_lora_file": {"url": "https://v3.fal.media/files/lora.safetensors"}}}'
)


def lower(headers: Mapping[str, str]) -> dict[str, str]:
    """Header names as an ASGI server hands them over (lower case)."""
    return {name.lower(): value for name, value in headers.items()}


def signed_by(
    signer: FalSigner,
    body: bytes = BODY,
    request_id: str = "req-1",
    timestamp: int = NOW,
    now: float = NOW,
) -> SignedHeaders:
    return parse_headers(lower(signer.headers(body, request_id, timestamp=timestamp)), now=now)


def keys_of(*signers: FalSigner) -> list[Ed25519PublicKey]:
    keys = [key_from_jwk(signer.jwk()) for signer in signers]
    assert all(key is not None for key in keys)
    return [key for key in keys if key is not None]


# --- the pure check ---------------------------------------------------------------------------


def test_a_genuinely_signed_body_verifies(signer: FalSigner) -> None:
    verify(signed_by(signer), BODY, keys_of(signer))


def test_the_parsed_headers_carry_what_was_signed(signer: FalSigner) -> None:
    signed = signed_by(signer, request_id="req-42")
    assert signed.request_id == "req-42"
    assert signed.user_id == "fal-test-user"
    assert signed.timestamp == NOW
    assert len(signed.signature) == 64


def test_any_key_of_the_set_may_verify(signer: FalSigner) -> None:
    other = FalSigner()
    verify(signed_by(signer), BODY, keys_of(other, signer))


def test_a_tampered_body_is_refused(signer: FalSigner) -> None:
    signed = signed_by(signer)
    with pytest.raises(BadSignature):
        verify(signed, BODY.replace(b'"OK"', b'"ERROR"'), keys_of(signer))


def test_reserialised_json_with_the_same_meaning_is_refused(signer: FalSigner) -> None:
    # The digest covers the raw bytes: whitespace differences are a different body.
    signed = signed_by(signer)
    with pytest.raises(BadSignature):
        verify(signed, BODY.replace(b": ", b":"), keys_of(signer))


def test_a_signature_by_another_key_is_refused(signer: FalSigner) -> None:
    with pytest.raises(BadSignature):
        verify(signed_by(FalSigner()), BODY, keys_of(signer))


def test_an_empty_key_set_verifies_nothing(signer: FalSigner) -> None:
    with pytest.raises(BadSignature):
        verify(signed_by(signer), BODY, [])


@pytest.mark.parametrize("field", ["request_id", "user_id", "timestamp"])
def test_changing_a_signed_header_breaks_the_signature(signer: FalSigner, field: str) -> None:
    headers = lower(signer.headers(BODY, "req-1", timestamp=NOW))
    name = {
        "request_id": "x-fal-webhook-request-id",
        "user_id": "x-fal-webhook-user-id",
        "timestamp": "x-fal-webhook-timestamp",
    }[field]
    headers[name] = str(NOW + 1) if field == "timestamp" else headers[name] + "x"
    signed = parse_headers(headers, now=NOW)
    with pytest.raises(BadSignature):
        verify(signed, BODY, keys_of(signer))


# --- freshness ------------------------------------------------------------------------------


@pytest.mark.parametrize("offset", [-301, 301, -3600, 86_400])
def test_a_timestamp_more_than_300_seconds_away_is_refused(signer: FalSigner, offset: int) -> None:
    headers = lower(signer.headers(BODY, "req-1", timestamp=NOW + offset))
    with pytest.raises(SignatureError, match="Timestamp") as caught:
        parse_headers(headers, now=NOW)
    assert not isinstance(caught.value, BadSignature)


@pytest.mark.parametrize("offset", [-300, 300, 0, -1, 1])
def test_a_timestamp_within_300_seconds_is_accepted(signer: FalSigner, offset: int) -> None:
    signed = signed_by(signer, timestamp=NOW + offset, now=NOW)
    verify(signed, BODY, keys_of(signer))


def test_a_stale_timestamp_is_refused_against_the_real_clock(signer: FalSigner) -> None:
    headers = lower(signer.headers(BODY, "req-1", timestamp=int(time.time()) - 400))
    with pytest.raises(SignatureError):
        parse_headers(headers, now=time.time())


# --- header shape ---------------------------------------------------------------------------


@pytest.mark.parametrize("missing", SIGNATURE_HEADERS)
def test_each_missing_header_is_refused_and_named(signer: FalSigner, missing: str) -> None:
    headers = lower(signer.headers(BODY, "req-1", timestamp=NOW))
    del headers[missing]
    with pytest.raises(SignatureError, match=missing):
        parse_headers(headers, now=NOW)


@pytest.mark.parametrize("empty", SIGNATURE_HEADERS)
def test_an_empty_header_counts_as_missing(signer: FalSigner, empty: str) -> None:
    headers = lower(signer.headers(BODY, "req-1", timestamp=NOW))
    headers[empty] = ""
    with pytest.raises(SignatureError, match=empty):
        parse_headers(headers, now=NOW)


def test_any_one_signature_header_marks_a_request_as_signed() -> None:
    assert not has_signature_headers({"content-type": "application/json"})
    for name in SIGNATURE_HEADERS:
        assert has_signature_headers({name: "x"})


@pytest.mark.parametrize(
    "signature",
    ["zz" * 64, "not hex at all", "0x" + "ab" * 63, "abc"],
    ids=["zz", "words", "0x-prefix", "odd-length"],
)
def test_a_non_hex_signature_is_refused(signer: FalSigner, signature: str) -> None:
    headers = lower(signer.headers(BODY, "req-1", timestamp=NOW))
    headers["x-fal-webhook-signature"] = signature
    with pytest.raises(SignatureError, match="Signature"):
        parse_headers(headers, now=NOW)


@pytest.mark.parametrize("length", [1, 32, 63, 65, 128])
def test_a_signature_of_the_wrong_length_is_refused(signer: FalSigner, length: int) -> None:
    headers = lower(signer.headers(BODY, "req-1", timestamp=NOW))
    headers["x-fal-webhook-signature"] = "ab" * length
    with pytest.raises(SignatureError, match="length"):
        parse_headers(headers, now=NOW)


def test_an_upper_case_hex_signature_is_accepted(signer: FalSigner) -> None:
    headers = lower(signer.headers(BODY, "req-1", timestamp=NOW))
    headers["x-fal-webhook-signature"] = headers["x-fal-webhook-signature"].upper()
    verify(parse_headers(headers, now=NOW), BODY, keys_of(signer))


@pytest.mark.parametrize(
    "timestamp",
    [
        "yesterday",
        "1700000000.5",
        "-1700000000",
        "1.7e9",
        " ",
        "0x6553f100",
        "17000000000000000",
        # Latin-1 digits that str.isdigit() accepts but int() does not: an ASGI server decodes
        # header bytes as Latin-1, so b"\xb2" arrives as "²".
        "\u00b2",
        "1700000000\u00b9",
    ],
)
def test_a_non_numeric_timestamp_is_refused(signer: FalSigner, timestamp: str) -> None:
    headers = lower(signer.headers(BODY, "req-1", timestamp=NOW))
    headers["x-fal-webhook-timestamp"] = timestamp
    with pytest.raises(SignatureError):
        parse_headers(headers, now=NOW)


# --- keys from JWKS entries -----------------------------------------------------------------


def test_an_unpadded_x_gives_the_signers_key(signer: FalSigner) -> None:
    jwk = signer.jwk(pad=False)
    assert not jwk["x"].endswith("=")  # 32 bytes always need padding: this is the FAL form
    key = key_from_jwk(jwk)
    assert key is not None
    assert key.public_bytes_raw() == signer.raw_public_key


def test_a_padded_x_gives_the_same_key(signer: FalSigner) -> None:
    jwk = signer.jwk(pad=True)
    assert jwk["x"].endswith("=")
    key = key_from_jwk(jwk)
    assert key is not None
    assert key.public_bytes_raw() == signer.raw_public_key


def test_a_jwk_with_extra_members_is_still_used(signer: FalSigner) -> None:
    jwk: dict[str, object] = {**signer.jwk(), "kid": "2024-01", "use": "sig", "alg": "EdDSA"}
    key = key_from_jwk(jwk)
    assert key is not None
    verify(signed_by(signer), BODY, [key])


@pytest.mark.parametrize(
    "entry",
    [
        {"kty": "RSA", "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4", "e": "AQAB"},
        {"kty": "EC", "crv": "P-256", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU"},
        {"kty": "OKP", "crv": "X25519", "x": "hSDwCYkwp1R0i33ctD73Wg2_Og0mOBr066SpjqqbTmo"},
        {"kty": "OKP", "crv": "Ed448", "x": "X9dEm1m0Yf0s54fsYWrUah2hNCSFpw4fig6nXYDpZ3jt8SR2m0"},
        {"kty": "oct", "k": "GawgguFyGrWKav7AX4VKUg"},
        {"kty": "OKP", "crv": "Ed25519"},
        {"kty": "OKP", "crv": "Ed25519", "x": 12345},
        {"kty": "OKP", "crv": "Ed25519", "x": "c2hvcnQ"},
        {"kty": "OKP", "crv": "Ed25519", "x": "a"},
        {"kty": "OKP", "crv": "Ed25519", "x": ""},
        {"kty": "OKP", "crv": "X25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
        {"crv": "P-256", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
        {},
    ],
    ids=[
        "rsa",
        "ec",
        "x25519",
        "ed448",
        "symmetric",
        "no-x",
        "x-not-string",
        "x-too-short",
        "x-bad-base64",
        "x-empty",
        "names-another-curve",
        "no-kty-another-curve",
        "empty",
    ],
)
def test_jwk_entries_of_other_kinds_or_broken_are_ignored(entry: dict[str, object]) -> None:
    assert key_from_jwk(entry) is None


# --- the key set over HTTP ------------------------------------------------------------------


def run_with_keyset(url: str, clock: FakeClock, scenario: Callable[[KeySet], Awaitable[T]]) -> T:
    """Run `scenario` against a KeySet on a real httpx client, in its own event loop."""

    async def go() -> T:
        async with httpx.AsyncClient(timeout=httpx.Timeout(5.0), trust_env=False) as client:
            return await scenario(KeySet(url, client, clock=clock))

    return asyncio.run(go())


def fresh(signer: FalSigner, body: bytes = BODY, request_id: str = "req-1") -> SignedHeaders:
    """Headers signed now, parsed against the real wall clock."""
    now = time.time()
    return parse_headers(lower(signer.headers(body, request_id, timestamp=int(now))), now=now)


def verify_once(url: str, signer: FalSigner) -> None:
    """One webhook signed by `signer`, checked against the key set served at `url`."""

    async def scenario(keyset: KeySet) -> None:
        await keyset.verify(fresh(signer), BODY)

    run_with_keyset(url, FakeClock(), scenario)


def verify_unavailable(url: str, signer: FalSigner) -> None:
    """One webhook signed by `signer`: the key set at `url` cannot be had (KeySetUnavailable)."""

    async def scenario(keyset: KeySet) -> None:
        with pytest.raises(KeySetUnavailable):
            await keyset.verify(fresh(signer), BODY)

    run_with_keyset(url, FakeClock(), scenario)


def test_the_first_verification_fetches_the_key_set_once(
    signer: FalSigner, jwks: JwksServer
) -> None:
    verify_once(jwks.jwks_url, signer)
    assert jwks.requests == 1


def test_later_verifications_use_the_cached_keys(signer: FalSigner, jwks: JwksServer) -> None:
    clock = FakeClock()

    async def scenario(keyset: KeySet) -> None:
        for step in range(5):
            await keyset.verify(fresh(signer, request_id=f"req-{step}"), BODY)
            clock.advance(3600)  # an hour between webhooks, well inside the 24 h cache

    run_with_keyset(jwks.jwks_url, clock, scenario)
    assert jwks.requests == 1


def test_concurrent_first_verifications_share_one_fetch(
    signer: FalSigner, jwks: JwksServer
) -> None:
    async def scenario(keyset: KeySet) -> None:
        await asyncio.gather(*(keyset.verify(fresh(signer), BODY) for _ in range(20)))

    run_with_keyset(jwks.jwks_url, FakeClock(), scenario)
    assert jwks.requests == 1


def test_the_key_set_is_refetched_after_a_day(signer: FalSigner, jwks: JwksServer) -> None:
    clock = FakeClock()

    async def scenario(keyset: KeySet) -> None:
        await keyset.verify(fresh(signer), BODY)
        clock.advance(24 * 3600 + 1)
        await keyset.verify(fresh(signer), BODY)

    run_with_keyset(jwks.jwks_url, clock, scenario)
    assert jwks.requests == 2


def test_a_padded_key_set_verifies_too(signer: FalSigner) -> None:
    with JwksServer([signer], pad=True) as server:
        verify_once(server.jwks_url, signer)
        assert server.requests == 1


def test_other_kinds_of_keys_in_the_served_set_are_ignored(signer: FalSigner) -> None:
    document = {
        "keys": [
            {"kty": "RSA", "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78Lh", "e": "AQAB"},
            "not an object",
            signer.jwk(),
        ]
    }
    with DocumentServer(document) as server:
        verify_once(server.jwks_url, signer)
        assert server.requests == 1


def test_a_rotated_key_verifies_only_after_the_minute_since_the_last_fetch(
    signer: FalSigner, jwks: JwksServer
) -> None:
    clock = FakeClock()
    rotated = FalSigner()

    async def scenario(keyset: KeySet) -> None:
        await keyset.verify(fresh(signer), BODY)
        assert jwks.requests == 1
        jwks.add(rotated)

        clock.advance(30)
        with pytest.raises(BadSignature):
            await keyset.verify(fresh(rotated), BODY)
        assert jwks.requests == 1  # inside the minute: no refetch

        clock.advance(29.5)
        with pytest.raises(BadSignature):
            await keyset.verify(fresh(rotated), BODY)
        assert jwks.requests == 1

        clock.advance(1)  # 60.5 s after the fetch
        await keyset.verify(fresh(rotated), BODY)
        assert jwks.requests == 2

        # Both keys are now cached: neither needs another fetch.
        await keyset.verify(fresh(rotated), BODY)
        await keyset.verify(fresh(signer), BODY)
        assert jwks.requests == 2

    run_with_keyset(jwks.jwks_url, clock, scenario)


def test_a_retired_key_keeps_verifying_until_the_set_is_refetched(
    signer: FalSigner, jwks: JwksServer
) -> None:
    clock = FakeClock()
    successor = FalSigner()

    async def scenario(keyset: KeySet) -> None:
        await keyset.verify(fresh(signer), BODY)
        jwks.set_keys([successor])
        clock.advance(120)
        # The successor's signature misses the cache and triggers the refetch...
        await keyset.verify(fresh(successor), BODY)
        # ...after which the retired key is gone.
        with pytest.raises(BadSignature):
            await keyset.verify(fresh(signer), BODY)

    run_with_keyset(jwks.jwks_url, clock, scenario)
    assert jwks.requests == 2


@pytest.mark.parametrize("failure", ["http-500", "http-404", "connection-dropped"])
def test_a_dead_key_server_without_cached_keys_is_unavailable(
    signer: FalSigner, jwks: JwksServer, failure: str
) -> None:
    if failure == "connection-dropped":
        jwks.close_connections()
    else:
        jwks.fail(int(failure.split("-")[1]))

    verify_unavailable(jwks.jwks_url, signer)
    assert jwks.requests == 1


def test_an_unreachable_key_server_is_unavailable(signer: FalSigner) -> None:
    server = JwksServer([signer]).start()
    url = server.jwks_url
    server.stop()

    verify_unavailable(url, signer)


def test_unavailability_is_not_a_signature_error(signer: FalSigner, jwks: JwksServer) -> None:
    # The app answers 503 (FAL retries) for this, never 401.
    jwks.fail(503)

    async def scenario(keyset: KeySet) -> BaseException | None:
        try:
            await keyset.verify(fresh(signer), BODY)
        except Exception as exc:
            return exc
        return None

    caught = run_with_keyset(jwks.jwks_url, FakeClock(), scenario)
    assert isinstance(caught, KeySetUnavailable)
    assert not isinstance(caught, SignatureError)


def test_a_key_server_that_comes_back_is_used_without_a_restart(
    signer: FalSigner, jwks: JwksServer
) -> None:
    clock = FakeClock()
    jwks.fail(500)

    async def scenario(keyset: KeySet) -> None:
        with pytest.raises(KeySetUnavailable):
            await keyset.verify(fresh(signer), BODY)
        # A burst of webhooks right after does not hammer the dead server.
        for _ in range(5):
            with pytest.raises(KeySetUnavailable):
                await keyset.verify(fresh(signer), BODY)
        assert jwks.requests == 1
        jwks.fail(None)
        clock.advance(2)
        await keyset.verify(fresh(signer), BODY)
        assert jwks.requests == 2

    run_with_keyset(jwks.jwks_url, clock, scenario)


@pytest.mark.parametrize("failure", ["http-500", "connection-dropped"])
def test_a_failing_key_server_does_not_break_known_keys(
    signer: FalSigner, jwks: JwksServer, failure: str
) -> None:
    clock = FakeClock()

    async def scenario(keyset: KeySet) -> None:
        await keyset.verify(fresh(signer), BODY)
        if failure == "connection-dropped":
            jwks.close_connections()
        else:
            jwks.fail(500)
        clock.advance(90)
        await keyset.verify(fresh(signer), BODY)
        # Even past the 24 h age the old keys stay in use while the server is down.
        clock.advance(24 * 3600)
        await keyset.verify(fresh(signer), BODY)
        assert jwks.requests == 2  # the one refetch attempt, which failed
        clock.advance(10)
        await keyset.verify(fresh(signer), BODY)
        assert jwks.requests == 2  # and no new attempt inside the minute
        # A signature by an unknown key is still a bad signature, not an outage.
        with pytest.raises(BadSignature):
            await keyset.verify(fresh(FalSigner()), BODY)

    run_with_keyset(jwks.jwks_url, clock, scenario)


def test_bad_signatures_refetch_at_most_once_a_minute(signer: FalSigner, jwks: JwksServer) -> None:
    clock = FakeClock()
    stranger = FalSigner()

    async def scenario(keyset: KeySet) -> list[int]:
        await keyset.verify(fresh(signer), BODY)
        seen = []
        for _ in range(12):  # a bad signature every 15 s for three minutes
            clock.advance(15)
            with pytest.raises(BadSignature):
                await keyset.verify(fresh(stranger), BODY)
            with pytest.raises(BadSignature):
                await keyset.verify(fresh(signer), BODY + b" ")
            seen.append(jwks.requests)
        return seen

    seen = run_with_keyset(jwks.jwks_url, clock, scenario)
    # Fetch at 0 s; refetches at 60, 120 and 180 s at the most: never two within a minute.
    assert seen[-1] <= 1 + 3
    assert seen[-1] >= 2  # the rate limit is not "never"
    for earlier, later in zip(seen, seen[4:], strict=False):
        assert later - earlier <= 1


def test_a_burst_of_bad_signatures_causes_one_refetch(signer: FalSigner, jwks: JwksServer) -> None:
    clock = FakeClock()
    stranger = FalSigner()

    async def scenario(keyset: KeySet) -> list[BaseException | None]:
        await keyset.verify(fresh(signer), BODY)
        clock.advance(61)
        return await asyncio.gather(
            *(keyset.verify(fresh(stranger), BODY) for _ in range(30)), return_exceptions=True
        )

    outcomes = run_with_keyset(jwks.jwks_url, clock, scenario)
    assert all(isinstance(outcome, BadSignature) for outcome in outcomes)
    assert jwks.requests == 2


def test_a_bad_signature_right_after_the_first_fetch_does_not_refetch(
    signer: FalSigner, jwks: JwksServer
) -> None:
    async def scenario(keyset: KeySet) -> None:
        with pytest.raises(BadSignature):
            await keyset.verify(fresh(FalSigner()), BODY)

    run_with_keyset(jwks.jwks_url, FakeClock(), scenario)
    assert jwks.requests == 1


# --- key servers that answer nonsense -------------------------------------------------------


class _DocumentHandler(LoopbackHandler):
    def do_GET(self) -> None:
        server: DocumentServer = self.owner
        server.requests += 1
        self.send_body(200, server.raw)


class DocumentServer(LoopbackServer):
    """Answers every GET with one fixed 200 body, whatever it is."""

    handler_class = _DocumentHandler

    def __init__(self, document: Any = None, raw: bytes | None = None) -> None:
        super().__init__()
        self.raw = raw if raw is not None else json.dumps(document).encode()
        self.requests = 0

    @property
    def jwks_url(self) -> str:
        return f"{self.url}/.well-known/jwks.json"


@pytest.fixture(
    params=[
        b"<html>maintenance</html>",
        b"[]",
        b'"keys"',
        b"{}",
        b'{"keys": []}',
        b'{"keys": null}',
        b'{"keys": 5}',
        b'{"keys": {"kty": "OKP"}}',
        b'{"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB"}]}',
    ],
    ids=[
        "html",
        "array",
        "string",
        "no-keys",
        "empty-keys",
        "null-keys",
        "number-keys",
        "object-keys",
        "only-rsa",
    ],
)
def nonsense_server(request: pytest.FixtureRequest) -> Iterator[DocumentServer]:
    with DocumentServer(raw=request.param) as server:
        yield server


def test_a_key_set_without_usable_keys_is_unavailable(
    signer: FalSigner, nonsense_server: DocumentServer
) -> None:
    verify_unavailable(nonsense_server.jwks_url, signer)
    assert nonsense_server.requests == 1


@pytest.mark.parametrize(
    "shape",
    [
        lambda x: {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "k1"},
        # FAL's documentation promises only "a list of public keys, each with an x field".
        lambda x: {"x": x},
        lambda x: {"x": x, "kid": "k1"},
        lambda x: {"kty": "OKP", "x": x},
        lambda x: {"crv": "Ed25519", "x": x},
    ],
    ids=["full-jwk", "bare-x", "x-and-kid", "kty-without-crv", "crv-without-kty"],
)
def test_a_key_set_entry_needs_only_its_x(
    signer: FalSigner, shape: Callable[[str], dict[str, str]]
) -> None:
    raw_x = base64.urlsafe_b64encode(signer.raw_public_key).decode().rstrip("=")
    other = {"kty": "RSA", "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4", "e": "AQAB"}
    # An entry of another kind before it is skipped, not a reason to give up on the set.
    with DocumentServer({"keys": [other, shape(raw_x)]}) as server:

        async def scenario(keyset: KeySet) -> None:
            await keyset.verify(fresh(signer), BODY)
            with pytest.raises(BadSignature):
                await keyset.verify(fresh(signer), BODY + b" ")

        run_with_keyset(server.jwks_url, FakeClock(), scenario)


def test_the_key_in_a_real_fal_shaped_document_is_decoded(signer: FalSigner) -> None:
    raw_x = base64.urlsafe_b64encode(signer.raw_public_key).decode().rstrip("=")
    document = {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": raw_x, "kid": "k1"}]}
    with DocumentServer(document) as server:
        verify_once(server.jwks_url, signer)
        assert server.requests == 1

"""Contract fuzzing: schemathesis generates requests from the OpenAPI document the service
serves at /api/v1/openapi.json and sends them to the live service through nginx and TLS; no
answer may be a 5xx, and every answer must match the document (status, content type, body).

Half of the generated webhook bodies are signed with FAL's key, so that they get past the
signature check and reach the parser and the database; the rest meet the check itself. The
requests come from many loopback addresses: what is tested is the contract, not nginx's
per-client rate limit (whose 429 the document rightly does not promise).
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from requests.adapters import HTTPAdapter
from schemathesis import Case, GenerationMode
from schemathesis.core.result import Ok

from tests.fakes.fal_keys import FalSigner
from tests.support.sender import sources
from tests.support.stack import Deployment
from tests.torture.runs import record, refusals_ledger, size, start

pytestmark = [pytest.mark.torture, pytest.mark.postgres, pytest.mark.nginx]

CHECKS = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_schema_conformance,
    schemathesis.checks.response_headers_conformance,
]


class _SourceAdapter(HTTPAdapter):
    """Connects from one loopback address, verifying the certificate as aibots.kz."""

    def __init__(self, source: str) -> None:
        self._source = source
        super().__init__(max_retries=0)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs.update(
            source_address=(self._source, 0),
            server_hostname="aibots.kz",
            assert_hostname="aibots.kz",
        )
        super().init_poolmanager(*args, **kwargs)


class SpreadSession(requests.Session):
    """A session whose requests take turns among source addresses."""

    def __init__(self, addresses: list[str], ca: Path) -> None:
        super().__init__()
        # Only the test CA: REQUESTS_CA_BUNDLE in the environment would override `verify`.
        self.trust_env = False
        self.verify = str(ca)
        self._spread = [_SourceAdapter(a) for a in addresses]
        self._turns = itertools.cycle(self._spread)

    def get_adapter(self, url: str) -> HTTPAdapter:
        return next(self._turns)

    def close(self) -> None:
        for adapter in self._spread:
            adapter.close()
        super().close()


def sign(kwargs: dict[str, Any], signer: FalSigner) -> None:
    """Send the generated body as the exact bytes FAL would sign, with FAL's headers."""
    body = kwargs.pop("json", None)
    raw = json.dumps(body).encode() if body is not None else kwargs.pop("data", b"") or b""
    if isinstance(raw, str):
        raw = raw.encode()
    rid = body.get("request_id") if isinstance(body, dict) else None
    # The body's request id where a header can carry it at all (no line breaks, no edge
    # blanks); UTF-8 bytes are sent as they are, control characters too.
    if not (isinstance(rid, str) and rid and rid == rid.strip() and not set(rid) & set("\r\n\0")):
        rid = str(uuid.uuid4())
    headers = {name: value.encode() for name, value in signer.headers(raw, rid).items()}
    kwargs["data"] = raw
    kwargs["headers"] = {**kwargs["headers"], **headers, "Content-Type": "application/json"}


def fuzz(
    operation: schemathesis.APIOperation[Any, Any, Any, Any],
    mode: GenerationMode,
    examples: int,
    one: Callable[[Case[Any], bool], None],
) -> None:
    """`examples` generated cases of one operation, each sent (signed or not) and checked."""

    @settings(
        max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(case=operation.as_strategy(generation_mode=mode), signed=st.booleans())
    def call(case: Case[Any], signed: bool) -> None:
        one(case, signed)

    call()


def test_every_answer_matches_the_openapi_document(
    deployment: Deployment,
    database: str,
) -> None:
    examples = size(quick=100, full=1000)
    api, signer = deployment.api, deployment.signer
    answers: Counter[int] = Counter()
    answers_signed: Counter[int] = Counter()
    with (
        start(deployment, database) as stack,
        SpreadSession(sources(200, network=7), deployment.certs / "ca.crt") as session,
    ):
        base = f"https://127.0.0.1:{stack.port}"
        document = session.get(f"{base}/api/v1/openapi.json", timeout=10).json()
        schema = schemathesis.openapi.from_dict(document)
        results = list(schema.get_all_operations())
        operations = [result.ok() for result in results if isinstance(result, Ok)]
        assert len(operations) == len(results), [r for r in results if not isinstance(r, Ok)]
        assert len(operations) >= 7, operations

        def one(case: Case[Any], signed: bool) -> None:
            kwargs = case.as_transport_kwargs(base_url=base, headers={"Host": "aibots.kz"})
            signed = signed and case.method.upper() == "POST"
            if signed:
                sign(kwargs, signer)
            response = session.request(**kwargs, timeout=30)
            answers[response.status_code] += 1
            if signed:
                answers_signed[response.status_code] += 1
            case.validate_response(response, checks=CHECKS, headers=kwargs["headers"])

        nothing_to_negate = []
        for operation in operations:
            fuzz(operation, GenerationMode.POSITIVE, examples, one)
            try:
                fuzz(operation, GenerationMode.NEGATIVE, examples, one)
            except Unsatisfiable:
                # No parameters and no body: no request violates its schema.
                nothing_to_negate.append(operation.label)

        notes = {
            "operations": len(operations),
            "examples per operation and mode": examples,
            "no negative cases (nothing to violate)": nothing_to_negate,
            "answers to signed webhooks": dict(answers_signed),
        }
        record(refusals_ledger("contract fuzzing", database, api, dict(answers), notes))
        assert "unhandled_error" not in stack.logs()
    assert not [status for status in answers if status >= 500], answers
    assert all(label.startswith("GET ") for label in nothing_to_negate), nothing_to_negate
    # Signed bodies got past the signature check to the parser (and the database, for those
    # that parsed).
    assert sum(n for status, n in answers_signed.items() if status != 401) > 0, answers_signed

"""The FAL queue client against the local FAL queue, and the local FAL queue itself."""

from __future__ import annotations

import asyncio
import io
import json
import time
import zipfile
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import httpx
import pytest

from service.fal.payload import EventStatus, parse_body, parse_event
from service.fal.queue import (
    CancelAnswer,
    FalAuthError,
    FalNoAnswer,
    FalQueue,
    FalRejected,
    FalUnavailable,
    QueueState,
)
from service.fal.signature import parse_headers, verify
from tests.fakes.fal_keys import FalSigner
from tests.fakes.fal_queue import PORTRAIT, STYLE, TEST_KEY, FalQueueServer, lora_output
from tests.support.files import FileServer
from tests.support.images import png

# The key of the suite's `fal` fixture (tests/conftest.py).
KEY = TEST_KEY
T = TypeVar("T")


def zip_of(*images: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for number, data in enumerate(images):
            archive.writestr(f"{number}.png", data)
    return buffer.getvalue()


@pytest.fixture
def files() -> Iterator[FileServer]:
    with FileServer() as server:
        server.files["/photos.zip"] = zip_of(png(600, 600, 1), png(600, 600, 2))
        server.files["/broken.zip"] = b"this is not a zip"
        yield server


def with_client(
    fal_url: str, work: Callable[[FalQueue], Awaitable[T]], key: str = KEY, timeout: float = 5.0
) -> T:
    async def go() -> T:
        async with httpx.AsyncClient() as client:
            return await work(FalQueue(key, fal_url, client, timeout=timeout))

    return asyncio.run(go())


def portrait(files: FileServer, path: str = "/photos.zip") -> dict[str, Any]:
    return {"images_data_url": f"{files.url}{path}", "trigger_phrase": "aibotsabc123"}


def test_submit_sends_the_key_and_the_webhook_and_returns_fals_urls(
    fal: FalQueueServer, files: FileServer
) -> None:
    webhook = "https://aibots.kz:8443/api/v1/avatar/status_update?avatar_id=a1&training_type=x"
    submission = with_client(fal.url, lambda q: q.submit(PORTRAIT, portrait(files), webhook))
    (request,) = fal.requests()
    assert submission.request_id == request.request_id
    assert request.webhook_url == webhook  # decoded intact, query and all
    assert request.arguments == portrait(files)
    assert submission.status_url == f"{fal.url}/{PORTRAIT}/requests/{request.request_id}/status"
    assert submission.response_url == f"{fal.url}/{PORTRAIT}/requests/{request.request_id}"
    assert submission.cancel_url.endswith("/cancel")
    assert [(c.method, c.authorized) for c in fal.calls] == [("POST", True)]
    # The local FAL fetched the zip and kept its photos.
    archive = fal.wait_downloaded(request.request_id).archive
    assert archive is not None and sorted(archive.values()) == sorted(
        [png(600, 600, 1), png(600, 600, 2)]
    )


def test_a_wrong_or_missing_key_is_an_auth_error(fal: FalQueueServer, files: FileServer) -> None:
    with pytest.raises(FalAuthError) as refused:
        with_client(fal.url, lambda q: q.submit(PORTRAIT, portrait(files), "x"), key="nope")
    assert refused.value.status == 401
    assert fal.requests() == []
    calls = len(fal.calls)
    with pytest.raises(FalAuthError, match="FAL_KEY is not set"):
        with_client(fal.url, lambda q: q.submit(PORTRAIT, portrait(files), "x"), key="")
    assert len(fal.calls) == calls  # nothing was sent


def test_a_missing_input_is_refused_with_fals_own_words(
    fal: FalQueueServer, files: FileServer
) -> None:
    style_without_flag = {"images_data_url": f"{files.url}/photos.zip", "trigger_word": "t"}
    with pytest.raises(FalRejected) as refused:
        with_client(fal.url, lambda q: q.submit(STYLE, style_without_flag, "x"))
    assert refused.value.status == 422
    assert refused.value.detail == "is_style: field required"
    with pytest.raises(FalRejected):
        with_client(fal.url, lambda q: q.submit(PORTRAIT, {"trigger_phrase": "t"}, "x"))
    assert fal.requests() == []


def test_server_errors_timeouts_and_refused_connections_are_unavailable(
    fal: FalQueueServer, files: FileServer
) -> None:
    fal.plan("submit", (502, {"detail": "Bad Gateway"}), 3.0)
    with pytest.raises(FalUnavailable) as bad_gateway:
        with_client(fal.url, lambda q: q.submit(PORTRAIT, portrait(files), "x"))
    assert bad_gateway.value.status == 502
    assert not isinstance(bad_gateway.value, FalNoAnswer)
    started = time.monotonic()
    # Sent, but unanswered: FAL may have it, so it is told apart from "never reached FAL".
    with pytest.raises(FalNoAnswer, match=r"did not answer within 0\.3 s"):
        with_client(fal.url, lambda q: q.submit(PORTRAIT, portrait(files), "x"), timeout=0.3)
    assert time.monotonic() - started < 2.0
    url = fal.url
    fal.stop()
    with pytest.raises(FalUnavailable, match="unreachable") as refused:
        with_client(url, lambda q: q.submit(PORTRAIT, portrait(files), "x"))
    assert not isinstance(refused.value, FalNoAnswer)


def test_a_submission_accepted_whose_answer_is_dropped_is_no_answer(
    fal: FalQueueServer, files: FileServer
) -> None:
    fal.lose_answers(1)
    with pytest.raises(FalNoAnswer, match="answer was lost"):
        with_client(fal.url, lambda q: q.submit(PORTRAIT, portrait(files), "x"))
    assert len(fal.requests()) == 1, "FAL accepted it all the same"
    # The next one is answered as usual.
    submitted = with_client(fal.url, lambda q: q.submit(PORTRAIT, portrait(files), "x"))
    assert submitted.request_id == fal.requests()[1].request_id


def test_status_result_and_cancel_follow_one_request(
    fal: FalQueueServer, files: FileServer
) -> None:
    async def scenario(queue: FalQueue) -> list[Any]:
        submitted = await queue.submit(PORTRAIT, portrait(files), f"{files.url}/hook")
        seen: list[Any] = [(await queue.status(submitted.status_url)).state]
        fal.start_training(submitted.request_id)
        seen.append((await queue.status(submitted.status_url)).state)
        await asyncio.to_thread(fal.complete, submitted.request_id, deliver=False)
        seen.append((await queue.status(submitted.status_url)).state)
        seen.append(await queue.result(submitted.response_url))
        seen.append(await queue.cancel(submitted.cancel_url))
        return seen

    queued, running, done, outcome, cancelled = with_client(fal.url, scenario)
    assert (queued, running, done) == (
        QueueState.IN_QUEUE,
        QueueState.IN_PROGRESS,
        QueueState.COMPLETED,
    )
    (request,) = fal.requests()
    assert outcome.succeeded and outcome.output == lora_output(request.request_id)
    assert cancelled is CancelAnswer.ALREADY_COMPLETED


def test_a_failed_request_gives_fals_error_and_a_queued_one_can_be_cancelled(
    fal: FalQueueServer, files: FileServer
) -> None:
    async def scenario(queue: FalQueue) -> list[Any]:
        failing = await queue.submit(PORTRAIT, portrait(files, "/broken.zip"), "http://x/")
        queued = await queue.submit(PORTRAIT, portrait(files), "http://x/")
        await asyncio.to_thread(fal.complete, failing.request_id, deliver=False)
        return [
            await queue.result(failing.response_url),
            await queue.cancel(queued.cancel_url),
            queued.request_id,
        ]

    outcome, answer, queued_id = with_client(fal.url, scenario)
    # The zip was no zip, so the training failed as FAL reports it: 422 with a detail list.
    assert not outcome.succeeded and outcome.http_status == 422
    assert "BadZipFile" in outcome.output["detail"][0]["msg"]
    assert answer is CancelAnswer.OK and fal.request(queued_id).cancelled
    missing = f"{fal.url}/{PORTRAIT}/requests/no-such-request/cancel"
    assert with_client(fal.url, lambda q: q.cancel(missing)) is CancelAnswer.NOT_FOUND


def test_a_running_request_only_gets_the_signal_and_may_still_complete(
    fal: FalQueueServer, files: FileServer
) -> None:
    async def scenario(queue: FalQueue) -> list[Any]:
        submitted = await queue.submit(PORTRAIT, portrait(files), "http://x/")
        fal.start_training(submitted.request_id)
        answer = await queue.cancel(submitted.cancel_url)
        still = (await queue.status(submitted.status_url)).state
        await asyncio.to_thread(fal.complete, submitted.request_id, deliver=False)
        return [answer, still, await queue.result(submitted.response_url)]

    answer, still, outcome = with_client(fal.url, scenario)
    assert answer is CancelAnswer.CANCELLATION_REQUESTED
    assert still is QueueState.IN_PROGRESS
    assert outcome.succeeded and "diffusers_lora_file" in outcome.output


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ((200, {"status": "OK"}), CancelAnswer.OK),
        ((202, {"status": "cancellation_requested"}), CancelAnswer.CANCELLATION_REQUESTED),
        ((400, {"status": "ALREADY_COMPLETED"}), CancelAnswer.ALREADY_COMPLETED),
        ((404, {"status": "NOT_FOUND"}), CancelAnswer.NOT_FOUND),
        # Answers without a readable status: only the HTTP status is left to go by.
        ((400, {"detail": "Request already completed"}), CancelAnswer.ALREADY_COMPLETED),
        ((404, {"detail": "Not Found"}), CancelAnswer.NOT_FOUND),
    ],
)
def test_the_cancel_answer_is_read_from_the_body(
    fal: FalQueueServer, answer: tuple[int, dict[str, Any]], expected: CancelAnswer
) -> None:
    fal.plan("cancel", answer)
    url = f"{fal.url}/{PORTRAIT}/requests/r-1/cancel"
    assert with_client(fal.url, lambda q: q.cancel(url)) is expected


@pytest.mark.parametrize("answer", [(200, {}), (202, {"status": "MAYBE"}), (204, {})])
def test_a_bare_2xx_is_never_taken_for_a_cancel(
    fal: FalQueueServer, answer: tuple[int, dict[str, Any]]
) -> None:
    fal.plan("cancel", answer)
    url = f"{fal.url}/{PORTRAIT}/requests/r-1/cancel"
    with pytest.raises(FalUnavailable, match="no status"):
        with_client(fal.url, lambda q: q.cancel(url))


@pytest.mark.parametrize(
    ("status", "error_type"), [(500, "internal_error"), (504, "timeout")], ids=["500", "504"]
)
def test_a_run_that_broke_or_timed_out_is_a_failure_with_fals_reason(
    fal: FalQueueServer, files: FileServer, status: int, error_type: str
) -> None:
    async def scenario(queue: FalQueue) -> list[Any]:
        submitted = await queue.submit(PORTRAIT, portrait(files), "http://x/")
        fal.start_training(submitted.request_id)
        fal.fail_run(submitted.request_id, status=status, error_type=error_type, deliver=False)
        return [
            await queue.status(submitted.status_url),
            await queue.result(submitted.response_url),
        ]

    state, outcome = with_client(fal.url, scenario)
    assert state.state is QueueState.COMPLETED
    assert (state.error, state.error_type) == ("the runner crashed", error_type)
    assert not outcome.succeeded and outcome.http_status == status
    assert outcome.error_type == error_type and outcome.error == "the runner crashed"


def test_a_5xx_without_fals_error_marks_is_fal_being_unwell(
    fal: FalQueueServer, files: FileServer
) -> None:
    submitted = with_client(fal.url, lambda q: q.submit(PORTRAIT, portrait(files), "http://x/"))
    fal.plan("result", (503, {"detail": "Service Unavailable"}))
    with pytest.raises(FalUnavailable, match="503"):
        with_client(fal.url, lambda q: q.result(submitted.response_url))


def test_the_key_is_never_sent_outside_fal_queue_url(fal: FalQueueServer) -> None:
    with FalQueueServer(KEY) as elsewhere:
        foreign = f"{elsewhere.url}/{PORTRAIT}/requests/r1/status"
        with pytest.raises(FalUnavailable, match="refusing to send the FAL key"):
            with_client(fal.url, lambda q: q.status(foreign))
        assert elsewhere.calls == []
    with pytest.raises(FalUnavailable):
        # Same host, another path prefix than the configured queue root.
        with_client(f"{fal.url}/queue", lambda q: q.status(f"{fal.url}/other/requests/r/status"))


def test_the_local_fal_signs_callbacks_and_repeats_them(files: FileServer) -> None:
    signer = FalSigner()
    with FalQueueServer(KEY, signer) as fal:
        hook = f"{files.url}/hook?avatar_id=a1&training_type=portrait"
        submitted = with_client(fal.url, lambda q: q.submit(PORTRAIT, portrait(files), hook))
        rid = submitted.request_id
        assert fal.complete(rid) == 200
        assert fal.deliver(rid) == 200
        fal.payload_error(rid)
    first, repeat, pending = files.received
    for headers, body in (first, repeat, pending):
        signed = parse_headers(headers, now=time.time())
        verify(signed, body, [signer.public_key])
        assert signed.request_id == rid
    assert first[1] == repeat[1]
    event = parse_event(parse_body(first[1]), {"avatar_id": "a1"}, rid)
    assert event.status is EventStatus.COMPLETED and event.lora_url
    body = json.loads(pending[1])
    assert body["payload"] is None and body["payload_error"]
    assert parse_event(body, {}, rid).status is EventStatus.RESULT_PENDING

"""The local FAL queue's `fal-ai/flux-lora`: its checks, its images, its callbacks."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator

import pytest

from service.fal.flux_lora import Frame, arguments, read_output
from service.fal.payload import EventStatus, parse_body, parse_event
from service.fal.queue import FalRejected, QueueState
from service.fal.signature import parse_headers, verify
from tests.fakes.fal_generation import FLUX_LORA
from tests.fakes.fal_keys import FalSigner
from tests.fakes.fal_queue import PORTRAIT, TEST_KEY, FalQueueServer
from tests.support.files import FileServer
from tests.support.images import png
from tests.test_fal_queue import with_client, zip_of

TRIGGER = "aibotsabc123"
LORA = "https://v3.fal.media/files/lion/pytorch_lora_weights.safetensors"


@pytest.fixture
def files() -> Iterator[FileServer]:
    with FileServer() as server:
        server.files["/photos.zip"] = zip_of(png(600, 600, 1), png(600, 600, 2))
        yield server


def photos(prompt: str = f"studio portrait of {TRIGGER}", count: int = 2) -> dict[str, object]:
    return arguments(prompt, LORA, scale=1.0, frame=Frame.PORTRAIT, num_images=count)


def test_a_finished_trainings_lora_can_generate_with_its_trigger_word(
    fal: FalQueueServer, files: FileServer
) -> None:
    training = {"images_data_url": f"{files.url}/photos.zip", "trigger_phrase": TRIGGER}
    trained = with_client(fal.url, lambda q: q.submit(PORTRAIT, training, "http://x/"))
    fal.complete(trained.request_id, deliver=False)
    (lora,) = fal.loras
    body = arguments(f"photo of {TRIGGER}", lora, scale=1.0, frame=Frame.SQUARE, num_images=1)
    submitted = with_client(fal.url, lambda q: q.submit(FLUX_LORA, body, "http://x/"))
    assert fal.request(submitted.request_id).arguments == body
    assert submitted.status_url.startswith(f"{fal.url}/{FLUX_LORA}/requests/")


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (photos(), "no LoRA weights"),  # LORA is not known to this queue
        ({**photos(), "loras": []}, "LoRA is missing"),
    ],
)
def test_an_unknown_lora_is_refused(
    fal: FalQueueServer, body: dict[str, object], words: str
) -> None:
    with pytest.raises(FalRejected, match=words):
        with_client(fal.url, lambda q: q.submit(FLUX_LORA, body, "http://x/"))


def test_a_prompt_without_the_trigger_word_is_refused(fal: FalQueueServer) -> None:
    fal.add_lora(LORA, TRIGGER)
    # A word that merely contains the trigger is not it.
    for prompt in ("a photo of a stranger", f"x{TRIGGER}y in a park"):
        body = photos(prompt)
        with pytest.raises(FalRejected, match="trigger word"):
            with_client(fal.url, lambda q: q.submit(FLUX_LORA, body, "http://x/"))  # noqa: B023
    assert fal.requests() == []


def test_images_are_real_jpegs_served_without_a_key_and_flags_come_back(
    fal: FalQueueServer, files: FileServer
) -> None:
    fal.add_lora(LORA, TRIGGER)
    submitted = with_client(
        fal.url, lambda q: q.submit(FLUX_LORA, photos(count=3), f"{files.url}/hook")
    )
    rid = submitted.request_id
    assert fal.complete(rid, nsfw=[False, True, False], sizes=[0, 0, 300_000]) == 200
    ((headers, raw),) = files.received
    verify(parse_headers(headers, now=time.time()), raw, [fal.signer.public_key])
    body = json.loads(raw)
    assert body["status"] == "OK" and body["payload"]["seed"] > 2**53
    result = read_output(body["payload"])
    assert [image.nsfw for image in result.images] == [False, True, False]
    assert result.seed == body["payload"]["seed"] and result.held_back == 1
    assert (result.images[0].width, result.images[0].height) == (768, 1024)
    fetched = []
    for image in result.images:
        with urllib.request.urlopen(image.url, timeout=5) as response:  # no Authorization
            assert response.headers["Content-Type"] == "image/jpeg"
            fetched.append(response.read())
    assert all(data.startswith(b"\xff\xd8") and data.endswith(b"\xff\xd9") for data in fetched)
    assert len(set(fetched)) == 3 and len(fetched[2]) >= 300_000
    outcome = with_client(fal.url, lambda q: q.result(submitted.response_url))
    assert outcome.succeeded and outcome.output == body["payload"]


def test_payload_error_repeats_late_news_and_errors(files: FileServer) -> None:
    signer = FalSigner()
    with FalQueueServer(TEST_KEY, signer) as fal:
        fal.add_lora(LORA, TRIGGER)
        hook = f"{files.url}/hook?generation_id=g1"
        done = with_client(fal.url, lambda q: q.submit(FLUX_LORA, photos(), hook))
        failing = with_client(fal.url, lambda q: q.submit(FLUX_LORA, photos(), hook))
        ok = done.request_id
        assert fal.payload_error(ok) == 200
        assert fal.deliver(ok) == 200
        assert fal.deliver_status(ok) == 200
        assert fal.fail(failing.request_id, message="the LoRA could not be loaded") == 200
        state = with_client(fal.url, lambda q: q.status(failing.status_url)).state
        status = with_client(fal.url, lambda q: q.status(done.status_url)).state
        result = with_client(fal.url, lambda q: q.result(done.response_url))
    pending, repeat, late, error = files.received
    for headers, raw in files.received:
        verify(parse_headers(headers, now=time.time()), raw, [signer.public_key])
    assert pending[1] == repeat[1]
    assert parse_event(parse_body(pending[1]), {}, ok).status is EventStatus.RESULT_PENDING
    assert parse_event(parse_body(late[1]), {}, ok).status is EventStatus.IN_PROGRESS
    assert state is QueueState.COMPLETED and status is QueueState.COMPLETED
    assert result.succeeded and len(read_output(result.output).images) == 2
    failed = json.loads(error[1])
    assert failed["status"] == "ERROR" and failed["error"]
    assert failed["payload"]["detail"][0]["msg"] == "the LoRA could not be loaded"

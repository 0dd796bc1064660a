"""A local FAL queue for tests: submit, status, result and cancel, and signed webhook callbacks.

It speaks FAL's queue protocol (see REFERENCE.md): `POST /{app_id}?fal_webhook=URL` with
`Authorization: Key ...` queues a request and answers its request id and the status, response
and cancel URLs. Each accepted submission downloads its `images_data_url` in the background and
keeps the zip's files, so a test can see exactly what FAL would have trained on. Nothing
finishes by itself: the test decides with `complete()`, `fail()` or `payload_error()`, each of
which can deliver the Ed25519-signed callback, or "lose" it (`deliver=False`); `deliver()`
repeats the last callback, as FAL does when it retries. It also serves the generation app
`fal-ai/flux-lora` (tests/fakes/fal_generation.py): a request for it is checked against the
LoRAs of the trainings it finished (or `add_lora`), and `complete()` draws its images.
"""

from __future__ import annotations

import http.client
import io
import json
import threading
import time
import urllib.request
import uuid
import zipfile
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from . import LoopbackHandler, LoopbackServer, fal_generation
from .fal_generation import FLUX_LORA
from .fal_keys import FalSigner

PORTRAIT = "fal-ai/flux-lora-portrait-trainer"
STYLE = "fal-ai/flux-lora-fast-training"
# The inputs each trainer insists on. FAL itself only requires images_data_url; `is_style` is
# required here so that a style avatar sent without it fails the test that sends it.
REQUIRED_INPUTS = {PORTRAIT: ("images_data_url",), STYLE: ("images_data_url", "is_style")}
IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"RIFF")

JsonDict = dict[str, Any]


@dataclass
class FalRequest:
    """One queued request, as the fake FAL keeps it."""

    request_id: str
    app_id: str
    arguments: JsonDict
    webhook_url: str | None
    state: str = "IN_QUEUE"
    succeeded: bool | None = None
    output: JsonDict | None = None
    error_body: JsonDict | None = None
    # The result's HTTP status and headers when the run failed (422 for validation; 500/504
    # with X-Fal-Error-Type for a run that broke or timed out).
    error_status: int = 422
    error_headers: dict[str, str] = field(default_factory=dict)
    # A COMPLETED status's `error` / `error_type`, as FAL reports a failed run there.
    status_error: JsonDict = field(default_factory=dict)
    # A cancel was asked and not refused: a queued request is then removed (OK); one in
    # progress only got the signal (CANCELLATION_REQUESTED) and still runs to its end.
    cancelled: bool = False
    # The files of the downloaded zip, by name; None until downloaded or when it failed.
    archive: dict[str, bytes] | None = None
    download_error: str | None = None
    downloaded: threading.Event = field(default_factory=threading.Event)
    last_callback: bytes | None = None
    # HTTP status of every callback delivery (None: the connection failed).
    deliveries: list[int | None] = field(default_factory=list)


@dataclass(frozen=True)
class QueueCall:
    method: str
    path: str
    status: int
    authorized: bool


def lora_output(request_id: str) -> JsonDict:
    """The output of FAL's LoRA trainers: the weights and their config, as File objects."""
    return {
        "diffusers_lora_file": {
            "url": f"https://v3.fal.media/files/{request_id}/pytorch_lora_weights.safetensors",
            "content_type": "application/octet-stream",
            "file_name": "pytorch_lora_weights.safetensors",
            "file_size": 89745224,
        },
        "config_file": {
            "url": f"https://v3.fal.media/files/{request_id}/config.json",
            "content_type": "application/octet-stream",
            "file_name": "config.json",
            "file_size": 1234,
        },
    }


class _QueueHandler(LoopbackHandler):
    def do_GET(self) -> None:
        self.serve("GET")

    def do_POST(self) -> None:
        self.serve("POST")

    def do_PUT(self) -> None:
        self.serve("PUT")

    def serve(self, method: str) -> None:
        fal: FalQueueServer = self.owner
        parts = urlsplit(self.path)
        path = parts.path.strip("/")
        body = self.read_body()
        if method == "GET" and path.startswith("media/"):
            # FAL's CDN: the files of a result need no key.
            data = fal.media.get(parts.path)
            if data is None:
                self.send_json(404, {"detail": "File not found"})
            else:
                self.send_body(200, data, "image/jpeg")
            return
        authorized = self.headers.get("Authorization") == f"Key {fal.key}"
        headers: dict[str, str] = {}
        if not authorized:
            status, answer = 401, {"detail": "Unauthorized: invalid or missing key"}
        else:
            status, answer, headers = fal.answer(method, path, dict(parse_qsl(parts.query)), body)
        fal.record(QueueCall(method, path, status, authorized))
        if status == 0:
            self.drop()
            return
        self.send_body(status, json.dumps(answer).encode(), headers=headers)


# The FAL_KEY every queue of the test suite accepts, unless a test needs another.
TEST_KEY = "fal-test-key-id:fal-test-key-secret"


class FalQueueServer(LoopbackServer):
    """FAL's queue on loopback; `url` is what FAL_QUEUE_URL should be."""

    handler_class = _QueueHandler

    def __init__(
        self,
        key: str = TEST_KEY,
        signer: FalSigner | None = None,
        *,
        port: int = 0,
        host: str = "127.0.0.1",
    ) -> None:
        super().__init__(port=port, host=host)
        self.key = key
        self.signer = signer or FalSigner()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._requests: dict[str, FalRequest] = {}
        self._order: list[str] = []
        self._calls: list[QueueCall] = []
        self._plans: dict[str, deque[tuple[int, JsonDict] | float]] = {}
        # Every LoRA a generation may use (its weights' URL -> its trigger word), and the
        # generated images by path.
        self.loras: dict[str, str] = {}
        self.media: dict[str, bytes] = {}

    # -- scripting -----------------------------------------------------------------------------

    def plan(self, operation: str, *answers: tuple[int, JsonDict] | float) -> None:
        """Answer the next calls of `operation` (submit, status, result, cancel) with these
        (status, body) pairs in order; a number instead hangs that long, then drops the call."""
        with self._lock:
            self._plans[operation] = deque(answers)

    def start_training(self, request_id: str) -> None:
        with self._lock:
            self._requests[request_id].state = "IN_PROGRESS"

    def add_lora(self, url: str, trigger: str) -> None:
        """A LoRA generations may use (an avatar trained before this queue started)."""
        with self._lock:
            self.loras[url] = trigger

    def complete(
        self,
        request_id: str,
        *,
        deliver: bool = True,
        nsfw: list[bool] | None = None,
        sizes: list[int] | None = None,
    ) -> int | None:
        """Finish the request: trained if its zip was good, failed if not; a generation draws
        its images (`nsfw`: the safety checker's flag per image; `sizes`: their bytes).
        Returns the callback's HTTP status (None when not delivered or unreachable)."""
        request = self.wait_downloaded(request_id)
        if request.app_id == FLUX_LORA:
            output, files = fal_generation.generate(
                self.url, request_id, request.arguments, nsfw=nsfw, sizes=sizes
            )
            with self._lock:
                self.media.update(files)
        elif request.archive is None:
            return self.fail(request_id, deliver=deliver, message=request.download_error)
        else:
            output = lora_output(request_id)
            trigger = request.arguments.get("trigger_phrase") or request.arguments.get(
                "trigger_word"
            )
            if isinstance(trigger, str):
                self.add_lora(output["diffusers_lora_file"]["url"], trigger)
        with self._lock:
            request.state, request.succeeded = "COMPLETED", True
            request.output = output
            request.last_callback = callback_body(request_id, "OK", payload=request.output)
        return self.deliver(request_id) if deliver else None

    def fail(
        self, request_id: str, *, deliver: bool = True, message: str | None = None
    ) -> int | None:
        """End the request with FAL's validation failure (422 and a detail list)."""
        detail = {
            "loc": ["body", "images_data_url"],
            "msg": message or "the training images could not be processed",
            "type": "value_error",
        }
        return self._end_failed(request_id, detail, "Invalid status code: 422", deliver=deliver)

    def fail_run(
        self,
        request_id: str,
        *,
        status: int = 500,
        error_type: str = "internal_error",
        message: str = "the runner crashed",
        deliver: bool = True,
    ) -> int | None:
        """End the request as a broken (500) or timed-out (504) run: the result answers that
        status with a `detail` list and `X-Fal-Error-Type`, the status carries `error`."""
        with self._lock:
            request = self._requests[request_id]
            request.error_status = status
            request.error_headers = {"X-Fal-Error-Type": error_type}
            request.status_error = {"error": message, "error_type": error_type}
        detail = {"msg": message, "type": error_type}
        return self._end_failed(
            request_id, detail, f"Invalid status code: {status}", deliver=deliver
        )

    def end_cancelled(self, request_id: str, *, deliver: bool = True) -> int | None:
        """A run that was asked to cancel stops: FAL calls back with an ERROR for it."""
        detail = {"msg": "Request was cancelled by the user", "type": "request_cancelled"}
        return self._end_failed(request_id, detail, "Request cancelled", deliver=deliver)

    def _end_failed(
        self, request_id: str, detail: JsonDict, error: str, *, deliver: bool
    ) -> int | None:
        with self._lock:
            request = self._requests[request_id]
            request.state, request.succeeded = "COMPLETED", False
            request.error_body = {"detail": [detail]}
            request.last_callback = callback_body(
                request_id, "ERROR", payload={"detail": [detail]}, error=error
            )
        return self.deliver(request_id) if deliver else None

    def payload_error(self, request_id: str, **drawn: Any) -> int | None:
        """Finish successfully but call back without the output (FAL's `payload_error`);
        `drawn` as complete() takes it."""
        self.complete(request_id, deliver=False, **drawn)
        with self._lock:
            self._requests[request_id].last_callback = callback_body(
                request_id,
                "OK",
                payload=None,
                payload_error="Response payload could not be serialized",
            )
        return self.deliver(request_id)

    def deliver(self, request_id: str) -> int | None:
        """(Re)deliver the request's callback, freshly signed, as FAL does on each retry."""
        with self._lock:
            request = self._requests[request_id]
            body, url = request.last_callback, request.webhook_url
        assert body is not None, "nothing to deliver: complete() or fail() first"
        assert url is not None, "the request was submitted without fal_webhook"
        status = _post(url, body, self.signer.headers(body, request_id))
        with self._lock:
            request.deliveries.append(status)
        return status

    def deliver_status(self, request_id: str, status: str = "IN_PROGRESS") -> int | None:
        """A signed callback with only a status (news older than the last one, arriving
        late); the last callback stays what deliver() repeats."""
        with self._lock:
            url = self._requests[request_id].webhook_url
        assert url is not None, "the request was submitted without fal_webhook"
        body = callback_body(request_id, status)
        return _post(url, body, self.signer.headers(body, request_id))

    def deliver_later(self, request_id: str, seconds: float) -> threading.Timer:
        timer = threading.Timer(seconds, self.deliver, args=(request_id,))
        timer.daemon = True
        timer.start()
        return timer

    # -- inspection ----------------------------------------------------------------------------

    @property
    def calls(self) -> list[QueueCall]:
        with self._lock:
            return list(self._calls)

    def requests(self) -> list[FalRequest]:
        with self._lock:
            return [self._requests[rid] for rid in self._order]

    def request(self, request_id: str) -> FalRequest:
        with self._lock:
            return self._requests[request_id]

    def wait_submitted(self, n: int = 1, timeout: float = 10.0) -> list[FalRequest]:
        """Block until at least n requests were accepted; returns them, oldest first."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self._order) < n:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"expected {n} accepted submissions, got {len(self._order)}; "
                        f"calls: {self._calls!r}"
                    )
                self._changed.wait(remaining)
            return [self._requests[rid] for rid in self._order]

    def wait_downloaded(self, request_id: str, timeout: float = 10.0) -> FalRequest:
        request = self.request(request_id)
        if not request.downloaded.wait(timeout):
            raise AssertionError(f"{request_id}: images_data_url not fetched in {timeout} s")
        return request

    # -- the protocol (handler side) -----------------------------------------------------------

    def record(self, call: QueueCall) -> None:
        with self._lock:
            self._calls.append(call)
            self._changed.notify_all()

    def answer(
        self, method: str, path: str, query: dict[str, str], body: bytes
    ) -> tuple[int, JsonDict, dict[str, str]]:
        """(HTTP status, JSON body, extra headers) for one call; status 0 drops it."""
        app_id, marker, rest = path.partition("/requests/")
        if not marker:
            if method != "POST":
                return 405, {"detail": "Method Not Allowed"}, {}
            return _plain(self._planned("submit") or self._submit(app_id, query, body))
        request_id, _, action = rest.partition("/")
        with self._lock:
            request = self._requests.get(request_id)
        if request is None or request.app_id != app_id:
            if method == "PUT" and action == "cancel":
                missing = {"status": "NOT_FOUND", "detail": f"Request {request_id} not found"}
                return _plain(self._planned("cancel") or (404, missing))
            return 404, {"detail": f"Request {request_id} not found"}, {}
        if method == "GET" and action == "status":
            return _plain(self._planned("status") or (200, self._status(request)))
        if method == "GET" and action == "":
            planned = self._planned("result")
            return _plain(planned) if planned else self._result(request)
        if method == "PUT" and action == "cancel":
            return _plain(self._planned("cancel") or self._cancel(request))
        return 405, {"detail": "Method Not Allowed"}, {}

    def _planned(self, operation: str) -> tuple[int, JsonDict] | None:
        with self._lock:
            queue = self._plans.get(operation)
            step = queue.popleft() if queue else None
        if isinstance(step, int | float):
            # Hang, then drop the connection: the client's timeout is what should end it.
            self.stopping.wait(step)
            return 0, {}
        return step

    def _submit(self, app_id: str, query: dict[str, str], raw: bytes) -> tuple[int, JsonDict]:
        required = REQUIRED_INPUTS.get(app_id)
        if required is None and app_id != FLUX_LORA:
            return 404, {"detail": f"Application {app_id!r} not found"}
        try:
            arguments = json.loads(raw)
        except ValueError:
            return 422, {"detail": [{"loc": ["body"], "msg": "invalid JSON", "type": "json"}]}
        if not isinstance(arguments, dict):
            return 422, {"detail": [{"loc": ["body"], "msg": "not an object", "type": "type"}]}
        missing = [name for name in required or () if name not in arguments]
        if missing:
            detail = [
                {"loc": ["body", name], "msg": "field required", "type": "value_error.missing"}
                for name in missing
            ]
            return 422, {"detail": detail}
        if app_id == FLUX_LORA:
            with self._lock:
                refused = fal_generation.refusal(arguments, self.loras)
            if refused is not None:
                return refused
        request_id = str(uuid.uuid4())
        request = FalRequest(request_id, app_id, arguments, query.get("fal_webhook"))
        with self._lock:
            self._requests[request_id] = request
            self._order.append(request_id)
            self._changed.notify_all()
        if app_id == FLUX_LORA:
            request.downloaded.set()  # nothing to fetch: the LoRA is FAL's own file
        else:
            threading.Thread(target=self._download, args=(request,), daemon=True).start()
        base = f"{self.url}/{app_id}/requests/{request_id}"
        return 200, {
            "request_id": request_id,
            "gateway_request_id": request_id,
            "response_url": base,
            "status_url": f"{base}/status",
            "cancel_url": f"{base}/cancel",
            "queue_position": 0,
        }

    def _status(self, request: FalRequest) -> JsonDict:
        answer: JsonDict = {
            "status": request.state,
            "request_id": request.request_id,
            "response_url": f"{self.url}/{request.app_id}/requests/{request.request_id}",
        }
        if request.state == "IN_QUEUE":
            answer["queue_position"] = 0
        if request.state == "COMPLETED":
            answer.update(request.status_error)
        return answer

    def _result(self, request: FalRequest) -> tuple[int, JsonDict, dict[str, str]]:
        if request.state != "COMPLETED":
            return 400, {"detail": "Request is still in progress"}, {}
        if request.succeeded:
            assert request.output is not None
            return 200, request.output, {}
        body = request.error_body or {"detail": "failed"}
        return request.error_status, body, dict(request.error_headers)

    def _cancel(self, request: FalRequest) -> tuple[int, JsonDict]:
        """FAL's four answers (fal.ai docs, "Cancel a request")."""
        with self._lock:
            if request.state == "COMPLETED":
                return 400, {"status": "ALREADY_COMPLETED"}
            request.cancelled = True
            if request.state == "IN_PROGRESS":
                # Only a signal: the run goes on, and complete()/fail()/end_cancelled() end it.
                return 202, {"status": "CANCELLATION_REQUESTED"}
            request.state, request.succeeded = "COMPLETED", False
            request.error_body = {"detail": "Request was cancelled by the user"}
        return 200, {"status": "OK"}

    def _download(self, request: FalRequest) -> None:
        url = request.arguments.get("images_data_url")
        try:
            if not isinstance(url, str):
                raise ValueError("images_data_url is not a string")
            with urllib.request.urlopen(url, timeout=10) as response:
                data = response.read()
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                files = {name: archive.read(name) for name in archive.namelist()}
            if not files or not all(f.startswith(IMAGE_MAGIC) for f in files.values()):
                raise ValueError("the zip holds no images, or something that is not an image")
            request.archive = files
        except Exception as exc:
            request.download_error = f"{type(exc).__name__}: {exc}"
        finally:
            request.downloaded.set()


def _plain(answer: tuple[int, JsonDict]) -> tuple[int, JsonDict, dict[str, str]]:
    return answer[0], answer[1], {}


def callback_body(request_id: str, status: str, **fields: Any) -> bytes:
    body = {"request_id": request_id, "gateway_request_id": request_id, "status": status}
    body.update(fields)
    return json.dumps(body).encode()


def _post(url: str, body: bytes, headers: dict[str, str]) -> int | None:
    parts = urlsplit(url)
    assert parts.hostname, url
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=15)
    try:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request("POST", target, body, {"Content-Type": "application/json", **headers})
        response = conn.getresponse()
        response.read()
        return response.status
    except OSError:
        return None
    finally:
        conn.close()

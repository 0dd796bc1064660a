"""Abuse: bad requests generated with hypothesis (10,000 with TORTURE=full) through nginx:
random JSON, wrong types, huge strings, deep nesting, wrong signatures, stale timestamps,
partial signatures, forged forwarding headers, junk in headers, wrong methods and paths, a
stranger's valid signature aimed at our avatars; and slow clients holding connections open
meanwhile. No 5xx, no crash, no change to any avatar, worker memory stable."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fakes.fal_keys import FalSigner
from tests.support import procs
from tests.support.nginx import TLSConnection
from tests.support.sender import WEBHOOK, sources
from tests.support.stack import Deployment, Stack
from tests.support.trainings import Training, seed_trainings
from tests.support.webhooks import fal_error, fal_ok, legacy
from tests.torture.runs import delivered, record, refusals_ledger, size, start

pytestmark = [pytest.mark.torture, pytest.mark.postgres, pytest.mark.nginx]

TARGETS = 40
PER_SOURCE = 20
# Resident memory a worker may gain over the second half of the run: caches and allocator arenas
# fill during the first half, so what is left is what a leak would show.
MEMORY_GROWTH_LIMIT = 24 * 1024 * 1024
# nginx's client_header_timeout and client_body_timeout in the site file.
CLIENT_TIMEOUT = 15

Headers = dict[str, str | bytes]


@dataclass
class Bad:
    kind: str
    method: str
    path: str
    body: bytes
    headers: Headers
    # Statuses this request may get; never a 5xx whatever the kind.
    allowed: frozenset[int]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=12), inner, max_size=6)
    ),
    max_leaves=30,
)
not_a_string = st.none() | st.booleans() | st.integers() | st.floats() | st.lists(st.integers())


def signed_headers(signer: FalSigner, body: bytes, rid: str, **changes: str) -> Headers:
    headers: Headers = {"Content-Type": "application/json", **signer.headers(body, rid)}
    headers.update(changes)
    return headers


@st.composite
def bad_requests(
    draw: st.DrawFn, targets: list[Training], signer: FalSigner, stranger: FalSigner
) -> Bad:
    target = draw(st.sampled_from(targets))
    rid = target.request_id
    outcome = fal_ok(rid)
    fresh = str(uuid.uuid4())
    kind = draw(
        st.sampled_from(
            [
                "random json",
                "wrong types",
                "huge strings",
                "deep nesting",
                "wrong signature",
                "stale timestamp",
                "partial signature",
                "forged forwarding",
                "junk headers",
                "method or path",
                "another training's signature",
                "stranger's avatar id",
            ]
        )
    )
    if kind == "random json":
        # Signed with FAL's key, so that the parser, not the signature check, meets it.
        body = json.dumps(draw(json_values)).encode()
        return Bad(kind, "POST", WEBHOOK, body, signed_headers(signer, body, fresh),
                   frozenset({200, 400}))  # fmt: skip
    if kind == "wrong types":
        document: dict[str, Any] = {
            "request_id": draw(st.just(fresh) | not_a_string),
            "status": draw(st.sampled_from(["OK", "ERROR", "completed"]) | not_a_string),
            "payload": draw(json_values),
            "progress": draw(json_values),
            "comment": draw(json_values),
            "error": draw(json_values),
        }
        body = json.dumps(document).encode()
        return Bad(kind, "POST", WEBHOOK, body, signed_headers(signer, body, fresh),
                   frozenset({200, 400}))  # fmt: skip
    if kind == "huge strings":
        length = draw(st.sampled_from([10_000, 200_000, 1_500_000, 4_000_000, 9_000_000]))
        field_name = draw(st.sampled_from(["request_id", "status", "error", "comment", "junk"]))
        document = {"request_id": fresh, "status": "ERROR"}
        document[field_name] = draw(st.sampled_from("xЖ€😀")) * (length // 4)
        body = json.dumps(document, ensure_ascii=False).encode()
        return Bad(kind, "POST", WEBHOOK, body, signed_headers(signer, body, fresh),
                   frozenset({200, 400}))  # fmt: skip
    if kind == "deep nesting":
        depth = draw(st.integers(500, 300_000))
        body = (
            b"[" * depth + b"]" * depth
            if draw(st.booleans())
            else b'{"a":' * depth + b"1" + b"}" * depth
        )
        return Bad(kind, "POST", WEBHOOK, body, signed_headers(signer, body, fresh),
                   frozenset({400}))  # fmt: skip
    if kind == "wrong signature":
        # A real completion for one of our avatars, with a signature that is not FAL's.
        good = signer.headers(outcome, rid)["X-Fal-Webhook-Signature"]
        signature = draw(
            st.sampled_from(
                [
                    stranger.headers(outcome, rid)["X-Fal-Webhook-Signature"],
                    signer.headers(fal_error(rid), rid)["X-Fal-Webhook-Signature"],
                    good[:-2] + ("00" if good[-2:] != "00" else "11"),
                    good[:64],
                    "zz" * 64,
                ]
            )
            | st.binary(min_size=64, max_size=64).map(bytes.hex)
        )
        headers = signed_headers(signer, outcome, rid, **{"X-Fal-Webhook-Signature": signature})
        if draw(st.booleans()):
            headers["X-Fal-Webhook-User-Id"] = "someone-else"
        return Bad(kind, "POST", WEBHOOK, outcome, headers, frozenset({401}))
    if kind == "stale timestamp":
        offset = draw(st.integers(301, 10**9)) * draw(st.sampled_from([-1, 1]))
        stamp = int(time.time()) + offset
        headers = {
            "Content-Type": "application/json",
            **signer.headers(outcome, rid, timestamp=stamp),
        }
        if draw(st.booleans()):
            # Unparseable ones, signed as they are.
            text = draw(st.sampled_from(["", " 1", "1e9", "-5", "١٢٣٤", "0x10", "9" * 40]))
            headers = signed_headers(signer, outcome, rid)
            headers["X-Fal-Webhook-Timestamp"] = text.encode()
        return Bad(kind, "POST", WEBHOOK, outcome, headers, frozenset({401}))
    if kind == "partial signature":
        complete = signer.headers(outcome, rid)
        kept = draw(st.sets(st.sampled_from(sorted(complete)), min_size=1, max_size=3))
        headers = {"Content-Type": "application/json", **{k: complete[k] for k in kept}}
        return Bad(kind, "POST", WEBHOOK, outcome, headers, frozenset({401}))
    if kind == "forged forwarding":
        # Unsigned, claiming to come from the host (whose unsigned webhooks are accepted).
        name = draw(st.sampled_from(["X-Forwarded-For", "X-Real-IP", "Forwarded", "X-Client-IP"]))
        value = draw(
            st.sampled_from(
                ["127.0.0.1", "127.0.0.1, 127.0.0.1", "for=127.0.0.1", "::1", "localhost"]
            )
        )
        headers = {"Content-Type": "application/json", name: value}
        return Bad(kind, "POST", WEBHOOK, outcome, headers, frozenset({401}))
    if kind == "junk headers":
        junk = draw(
            st.binary(min_size=1, max_size=200).filter(lambda b: b"\r" not in b and b"\n" not in b)
            | st.just(b"a" * 9000)
        )
        name = draw(
            st.sampled_from(["X-Fal-Webhook-Request-Id", "Content-Type", "User-Agent", "X-Junk"])
        )
        return Bad(kind, "POST", WEBHOOK, outcome, {name: junk},
                   frozenset(range(400, 500)))  # fmt: skip
    if kind == "method or path":
        method = draw(st.sampled_from(["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "POST"]))
        path = draw(
            st.sampled_from(
                [
                    WEBHOOK + "/",
                    WEBHOOK + "/..",
                    WEBHOOK + ";x=1",
                    "/api/v1/avatar/status_update%2e",
                    "/api/v1/avatar/../avatar/status_update/",
                    "/api/v1/training-data/" + "A" * 43 + ".zip",
                    "/api/v1/training-data/%2e%2e%2fetc%2fpasswd.zip",
                    "/.env",
                    "/api/" + "x" * 3000,
                ]
            )
        )
        return Bad(kind, method, path, outcome, signed_headers(signer, outcome, rid),
                   frozenset(range(400, 500)))  # fmt: skip
    if kind == "another training's signature":
        # FAL's valid signature over this body, but for another request id: the body says
        # it is about our avatar.
        return Bad(kind, "POST", WEBHOOK, outcome, signed_headers(signer, outcome, fresh),
                   frozenset({400}))  # fmt: skip
    # A valid completion of a training nobody registered, pointing at our avatar by its id.
    body = legacy(fresh, "completed")
    path = f"{WEBHOOK}?avatar_id={target.avatar_id}"
    return Bad(kind, "POST", path, body, signed_headers(signer, body, fresh), frozenset({200}))


@dataclass
class Slow:
    """Slow clients: silent connections and bodies that trickle in."""

    stack: Stack
    outcomes: list[str] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, silent: int, trickling: int, target: Training, signer: FalSigner) -> None:
        for number in range(silent):
            self._spawn(self._silent, f"127.9.250.{number + 10}")
        body = fal_ok(target.request_id)
        headers = signed_headers(
            signer, body, target.request_id, **{"X-Fal-Webhook-Signature": "ab" * 64}
        )
        for number in range(trickling):
            self._spawn(self._trickle, f"127.9.251.{number + 10}", body, headers)

    def _spawn(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self.threads.append(thread)

    def _note(self, outcome: str) -> None:
        with self.lock:
            self.outcomes.append(outcome)

    def _silent(self, source: str) -> None:
        """Connect, shake hands, send nothing: nginx must close it, not hold it forever."""
        raw = socket.create_connection(("127.0.0.1", self.stack.port), timeout=CLIENT_TIMEOUT + 10,
                                       source_address=(source, 0))  # fmt: skip
        try:
            with self.stack.context.wrap_socket(raw, server_hostname="aibots.kz") as tls:
                started = time.monotonic()
                try:
                    data = tls.recv(65536)
                except (TimeoutError, OSError):
                    self._note("still open")
                    return
                waited = time.monotonic() - started
                self._note(f"closed after {waited:.0f}s" if not data else data[:12].decode())
        finally:
            raw.close()

    def _trickle(self, source: str, body: bytes, headers: Headers) -> None:
        """A body sent a few bytes at a time, then completed: answered like any other."""
        connection = TLSConnection(self.stack.port, self.stack.context, source, timeout=60)
        try:
            connection.putrequest("POST", WEBHOOK)
            for name, value in {**headers, "Content-Length": str(len(body))}.items():
                connection.putheader(name, value)
            connection.endheaders()
            for start in range(0, 24, 2):
                connection.send(body[start : start + 2])
                time.sleep(0.5)
            connection.send(body[24:])
            response = connection.getresponse()
            response.read()
            self._note(str(response.status))
        except (OSError, http.client.HTTPException) as exc:
            self._note(type(exc).__name__)
        finally:
            connection.close()

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.1, deadline - time.monotonic()))


def snapshot(database_url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        return conn.execute("SELECT * FROM avatars ORDER BY id").fetchall()


@pytest.mark.timeout(900)
def test_generated_bad_requests_change_nothing_and_break_nothing(
    deployment: Deployment,
    database: str,
) -> None:
    count = size(quick=800, full=10_000)
    stranger = FalSigner()
    api, signer, client_context = deployment.api, deployment.signer, deployment.context
    with start(deployment, database) as stack:
        targets = seed_trainings(database, TARGETS, first_chat=7_000_000, name="Target")
        before = snapshot(database)
        workers = sorted(stack.workers())
        addresses = sources(count // PER_SOURCE + 2, network=9)
        current: dict[str, TLSConnection] = {}
        answers: Counter[int] = Counter()
        by_kind: dict[str, Counter[int]] = {}
        wrong: list[tuple[str, int, bytes]] = []
        memory: dict[str, dict[int, int]] = {}

        def send(bad: Bad) -> int:
            sent = sum(answers.values())
            if sent == count // 2:
                # Every kind has been seen many times by now: from here on, memory must hold.
                memory["half-way"] = {pid: procs.rss_bytes(pid) or 0 for pid in workers}
            source = addresses[(sent // PER_SOURCE) % len(addresses)]
            if source not in current:
                for old in current.values():
                    old.close()
                current.clear()
                current[source] = TLSConnection(stack.port, client_context, source, timeout=60)
            connection = current[source]
            try:
                reply = connection.call(bad.method, bad.path, bad.body, bad.headers)
            except (OSError, http.client.HTTPException):
                connection.close()
                return 0
            if reply.headers.get("connection", "").lower() == "close":
                connection.close()
            answers[reply.status] += 1
            by_kind.setdefault(bad.kind, Counter())[reply.status] += 1
            if reply.status not in bad.allowed:
                wrong.append((bad.kind, reply.status, reply.body[:300]))
            return reply.status

        memory["start"] = {pid: procs.rss_bytes(pid) or 0 for pid in workers}

        slow = Slow(stack)
        slow.start(silent=size(quick=4, full=16), trickling=size(quick=4, full=16),
                   target=targets[0], signer=signer)  # fmt: skip
        started = time.monotonic()

        @settings(
            max_examples=count,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(bad=bad_requests(targets, signer, stranger))
        def abuse(bad: Bad) -> None:
            assert send(bad) < 500, bad.kind

        try:
            abuse()
        finally:
            for connection in current.values():
                connection.close()
        seconds = time.monotonic() - started
        slow.join(timeout=max(0.0, CLIENT_TIMEOUT + 10 - seconds))

        memory["end"] = {pid: procs.rss_bytes(pid) or 0 for pid in workers}
        after = snapshot(database)
        nginx_5xx = {s: n for s, n in stack.access_statuses().items() if s.startswith("5")}
        growth = {pid: memory["end"][pid] - memory["half-way"][pid] for pid in workers}
        notes = {
            "seconds": round(seconds, 1),
            "worker RSS MiB at start, half-way, end": {
                pid: " -> ".join(f"{memory[m][pid] / 2**20:.1f}" for m in memory) for pid in workers
            },
            "slow clients": dict(Counter(slow.outcomes)),
            "kinds": {k: dict(v) for k, v in sorted(by_kind.items())},
        }
        ledger = record(refusals_ledger("abuse", database, api, dict(answers), notes))
        logs = stack.logs()
        still_workers = sorted(stack.workers())

    assert not wrong, wrong[:10]
    assert not [s for s in answers if s >= 500] and not nginx_5xx, (answers, nginx_5xx)
    assert sum(answers.values()) >= count, answers
    # No crash: the same workers serve at the end, and nothing went unhandled.
    assert still_workers == workers, (workers, still_workers)
    assert "unhandled_error" not in logs
    # No change to any avatar; nothing to tell anyone.
    assert after == before
    assert ledger.notifications_enqueued == 0 and not delivered(api)
    assert all(g < MEMORY_GROWTH_LIMIT for g in growth.values()), growth
    # Slow clients: nginx closed the silent ones itself; the trickled bodies were answered.
    assert len(slow.outcomes) == len(slow.threads), slow.outcomes
    assert all(o.startswith("closed") or o == "401" for o in slow.outcomes), slow.outcomes
    assert "401" in slow.outcomes, slow.outcomes

"""The disk fills: the embedded SQLite database on a small tmpfs of the test's own, filled up to
the last byte in the middle of a steady stream of signed completions. Webhooks get 503 (never a
500, never a 200 for an event that was not written), /health says the disk is full, and once
space is freed intake resumes with nothing acknowledged lost."""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.fal_keys import FalSigner
from tests.support import postgres
from tests.support.nginx import Reply, missing
from tests.support.sender import WEBHOOK
from tests.support.servers import wait_until
from tests.support.stack import Deployment, Stack
from tests.support.webhooks import fal_ok, new_request_id, signed
from tests.torture.ledger import Ledger, tally
from tests.torture.runs import delivered, drain, record, size, start, steady

pytestmark = [pytest.mark.torture, pytest.mark.nginx]

RATE = 20  # webhooks per second
PER_SOURCE = 5
RECOVERY_SECONDS = 5.0


@contextlib.contextmanager
def tmpfs(size: str) -> Iterator[Path]:
    """A tmpfs of `size` of this test's own (root only), unmounted afterwards."""
    if os.geteuid() != 0:
        missing("mounting a tmpfs needs root", "run the torture suite as root")
    where = Path(tempfile.mkdtemp(prefix="small-disk-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        # Lazily: a straggling process that still holds a file must not fail the run.
        subprocess.run(["umount", "-l", str(where)], check=False)
        where.rmdir()


@pytest.fixture
def small_disk() -> Iterator[Path]:
    with tmpfs("32m") as where:
        yield where


@pytest.fixture
def cluster_on_small_disk() -> Iterator[postgres.PrivateCluster]:
    """A private PostgreSQL cluster whose data directory is on a 160 MiB tmpfs."""
    postgres.require()
    with tmpfs("160m") as where:
        private = postgres.PrivateCluster(under=where)
        try:
            private.start()
            yield private
        finally:
            private.destroy()


def make_room_for_filler(where: Path) -> Path:
    """The filler file, created empty while the disk has room: a full run once found the
    disk already too full to create a file by the time it came to fill it."""
    filler = where / "filler"
    filler.touch()
    return filler


def fill(filler: Path) -> None:
    """Grow `filler` until its filesystem has no byte left."""
    with filler.open("ab") as handle:
        chunk = b"\0" * 65536
        with contextlib.suppress(OSError):
            while True:
                handle.write(chunk)
                handle.flush()
        # The last partial chunk: byte by byte up to the end.
        with contextlib.suppress(OSError):
            while True:
                os.write(handle.fileno(), b"\0" * 512)
    assert os.statvfs(filler.parent).f_bavail == 0, "the disk is not full"


def probe(stack: Stack, signer: FalSigner) -> int:
    body = fal_ok(new_request_id())
    return stack.call("POST", WEBHOOK, body, signed(signer, body)).status


def filled_then_freed(
    deployment: Deployment,
    stack: Stack,
    where: Path,
    name: str,
    cluster: postgres.PrivateCluster | None = None,
) -> tuple[Reply, Ledger]:
    """A steady stream; `where` filled up 2 s in, kept full for a while after the first 503,
    then freed (and a cluster that died meanwhile started again); the answer /health gave
    when the disk had just filled, and the run's ledger."""
    full_for = float(size(quick=4, full=20))
    count = int(size(quick=16, full=45) * RATE)
    filler = make_room_for_filler(where)
    trainings, run = steady(
        deployment, stack, count, RATE, first_chat=8_000_000, name=name, per_source=PER_SOURCE
    )
    time.sleep(2)
    fill(filler)
    full_at = time.monotonic()
    health = stack.call("GET", "/health")
    # Writes that fit in room already taken (a WAL's) may still succeed; then every one fails.
    wait_until(lambda: probe(stack, deployment.signer) == 503, 30, interval=0.2, what="a 503")
    refused_after = time.monotonic() - full_at
    time.sleep(full_for)
    filler.unlink()
    restarted = cluster is not None and cluster.postmaster() is None
    if cluster is not None and restarted:
        cluster.start()
    freed_at = time.monotonic()
    wait_until(lambda: stack.call("GET", "/health").status == 200, 10, what="/health back")
    health_back = time.monotonic() - freed_at

    deliveries = run.result(timeout=180)
    drain(stack.database_url, timeout=60)
    ledger = record(
        tally(name, deliveries, trainings, stack.database_url, delivered(deployment.api))
    )
    acks = sorted(d.acknowledged_at for d in deliveries if d.acknowledged_at)
    logs = stack.logs()
    ledger.notes = {
        "first webhook refused s after the disk filled": round(refused_after, 2),
        "full for s after that": full_for,
        "/health back s after space was freed": round(health_back, 2),
        "first webhook acknowledged s after": round(
            next(t for t in acks if t > freed_at) - freed_at, 2
        ),
        "nginx answers": dict(stack.access_statuses()),
        "503s logged as a full disk": logs.count("database or disk is full")
        + logs.count("No space left on device"),
        "database died and was started again": restarted,
    }
    assert "unhandled_error" not in logs
    return health, ledger


def assert_resumed(ledger: Ledger) -> None:
    ledger.check()
    assert ledger.acknowledged == ledger.sent, ledger
    assert set(ledger.answers) == {200, 503}, ledger
    assert set(ledger.notes["nginx answers"]) <= {"200", "503"}, ledger.notes
    assert ledger.notes["first webhook acknowledged s after"] <= RECOVERY_SECONDS, ledger.notes
    assert ledger.notes["503s logged as a full disk"] > 0, ledger.notes
    assert ledger.messages_received == ledger.sent, ledger


def test_a_full_disk_gives_503_says_why_and_intake_resumes(
    deployment: Deployment, small_disk: Path
) -> None:
    url = f"sqlite:///{small_disk}/service.db"
    # A send Telegram accepted while the disk was full is recorded once there is room again;
    # its lease must outlast that (as in the database outage; production keeps 120 s).
    with start(deployment, url, OUTBOX_LEASE_SECONDS="60") as stack:
        health, ledger = filled_then_freed(deployment, stack, small_disk, "disk full")

    assert health.status == 503, health
    assert health.json()["disk"] == "full" and health.json()["status"] == "degraded", health
    assert health.json()["disk_free_bytes"] == 0 and health.json()["database"] == "ok", health
    assert_resumed(ledger)


@pytest.mark.postgres
def test_a_full_database_server_disk_gives_503_and_intake_resumes(
    deployment: Deployment, cluster_on_small_disk: postgres.PrivateCluster
) -> None:
    cluster = cluster_on_small_disk
    with start(deployment, cluster.url, OUTBOX_LEASE_SECONDS="60") as stack:
        _, ledger = filled_then_freed(
            deployment, stack, cluster.dir.parent, "database disk full", cluster
        )

    # The server's disk is not the service's to see: /health tells only when it fails.
    assert_resumed(ledger)

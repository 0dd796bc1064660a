"""wrk fed with pre-signed webhooks (bench/feed.lua), and what it measured."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.fakes.fal_keys import FalSigner
from tests.support.trainings import Training
from tests.support.webhooks import fal_ok

LUA = Path(__file__).with_name("feed.lua")
PATH = "/api/v1/avatar/status_update"


def find_wrk() -> str | None:
    return shutil.which("wrk")


def write_feed(path: Path, trainings: list[Training], signer: FalSigner) -> int:
    """One signed completion per training, timestamps from now (FAL allows 5 minutes)."""
    with path.open("w", encoding="utf-8") as feed:
        for training in trainings:
            body = fal_ok(training.request_id)
            headers = signer.headers(body, training.request_id)
            feed.write(
                "\t".join(
                    (
                        headers["X-Fal-Webhook-Request-Id"],
                        headers["X-Fal-Webhook-User-Id"],
                        headers["X-Fal-Webhook-Timestamp"],
                        headers["X-Fal-Webhook-Signature"],
                        body.decode(),
                    )
                )
                + "\n"
            )
    return len(trainings)


@dataclass(frozen=True)
class WrkRun:
    requests: int
    seconds: float
    errors: dict[str, int]
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    wrapped: int

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds

    @property
    def failed(self) -> int:
        """Non-2xx answers plus connections that failed or timed out."""
        return sum(self.errors.values())


def run_wrk(
    port: int, feed: Path, connections: int, threads: int, seconds: int, result: Path
) -> WrkRun:
    wrk = find_wrk()
    assert wrk is not None, "wrk is not installed (apt-get install wrk)"
    command = [
        wrk, "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", "--timeout", "10s",
        "-s", str(LUA), f"https://127.0.0.1:{port}{PATH}", "--", str(feed), str(threads),
        str(result),
    ]  # fmt: skip
    ran = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120)
    if ran.returncode != 0 or not result.exists():
        raise RuntimeError(f"wrk failed ({ran.returncode}): {ran.stderr or ran.stdout}")
    data = json.loads(result.read_text())
    latency = data["latency_us"]
    return WrkRun(
        requests=int(data["requests"]),
        seconds=data["duration_us"] / 1e6,
        errors={k: int(v) for k, v in data["errors"].items()},
        p50_ms=latency["p50"] / 1000,
        p90_ms=latency["p90"] / 1000,
        p99_ms=latency["p99"] / 1000,
        max_ms=latency["max"] / 1000,
        wrapped=int(data["wrapped"]),
    )

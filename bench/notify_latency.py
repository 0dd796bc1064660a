"""Webhook-to-sendMessage latency and the outbox's send rate, against the local Bot API server.

    python -m bench.notify_latency [--completions 200] [--rate 20] [--burst 300]

Starts gunicorn (2 workers) on a fresh PostgreSQL database (SQLite with --sqlite), a local key
set and a local Bot API server, registers one training per user, then:
  1. latency: sends signed completions at a steady --rate per second and measures, for each,
     the time from sending the webhook to the Bot API server receiving its sendMessage;
  2. rate: sends --burst completions as fast as possible and measures the delivery rate,
     which the global limit (TELEGRAM_RATE_PER_SECOND, 30) should cap.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from tests.fakes.fal_keys import FalSigner, JwksServer
from tests.fakes.telegram_api import FakeBotApi
from tests.support import postgres
from tests.support.db import attach_many
from tests.support.http import post
from tests.support.servers import GunicornServer
from tests.support.webhooks import fal_ok, new_request_id, signed

TOKEN = "123456:BENCH-token-for-the-local-bot-api"
WEBHOOK = "/api/v1/avatar/status_update"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--completions", type=int, default=200)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--burst", type=int, default=300)
    parser.add_argument("--sqlite", action="store_true")
    args = parser.parse_args()

    database = None if args.sqlite else postgres.create_database("aibots_bench")
    signer = FalSigner()
    try:
        with JwksServer() as jwks, FakeBotApi(TOKEN) as api:
            jwks.add(signer)
            env = {"TELEGRAM_TOKEN": TOKEN, "TELEGRAM_API_URL": api.url,
                   "FAL_JWKS_URL": jwks.jwks_url, "LOG_LEVEL": "WARNING"}  # fmt: skip
            if database:
                env["DATABASE_URL"] = database
            with GunicornServer(env, workers=2) as server:
                results = run(server, api, signer, args)
    finally:
        if database:
            postgres.drop_database(database)
    print(json.dumps(results, indent=2))
    return 0


def run(
    server: GunicornServer, api: FakeBotApi, signer: FalSigner, args: argparse.Namespace
) -> dict[str, object]:
    total = args.completions + args.burst
    trainings = [(100_000 + i, f"Bench {i}", new_request_id()) for i in range(total)]
    attach_many(server.database_url, trainings)
    bodies = [(chat, rid, fal_ok(rid)) for chat, _, rid in trainings]
    # Warm the workers (key set fetch, connection pools) before measuring.
    for _ in range(4):
        post(f"{server.url}{WEBHOOK}", b"{}")

    sent_at: dict[int, float] = {}
    lock = threading.Lock()

    def send(item: tuple[int, str, bytes]) -> None:
        chat, _rid, body = item
        headers = signed(signer, body)
        with lock:
            sent_at[chat] = time.monotonic()
        answer = post(f"{server.url}{WEBHOOK}", body, headers)
        assert answer.status == 200, answer.body

    steady = bodies[: args.completions]
    with ThreadPoolExecutor(max_workers=16) as pool:
        start = time.monotonic()
        for i, item in enumerate(steady):
            delay = start + i / args.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            pool.submit(send, item)
    api.wait_for_messages(len(steady), timeout=60)
    received = {c.params["chat_id"]: c.at for c in api.calls_to("sendMessage") if c.ok}
    latencies = [(received[chat] - sent_at[chat]) * 1000 for chat, _, _ in steady]

    burst = bodies[args.completions :]
    before = len(api.sent_messages())
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(send, burst))
    api.wait_for_messages(before + len(burst), timeout=120)
    times = sorted(c.at for c in api.calls_to("sendMessage") if c.ok)[before:]
    span = times[-1] - times[0]
    busiest = max(sum(1 for t in times if s <= t < s + 1.0) for s in times)
    return {
        "database": "sqlite" if args.sqlite else "postgresql",
        "latency_ms": {
            "completions": len(latencies),
            "rate_per_second": args.rate,
            "median": round(statistics.median(latencies), 1),
            "p99": round(percentile(latencies, 0.99), 1),
            "max": round(max(latencies), 1),
        },
        "send_rate": {
            "messages": len(times),
            "seconds": round(span, 2),
            "per_second": round((len(times) - 1) / span, 2) if span else None,
            "busiest_one_second_window": busiest,
            "limit_per_second": 30,
        },
        "messages_total": len(api.sent_messages()),
        "webhooks_acknowledged": total,
    }


if __name__ == "__main__":
    sys.exit(main())

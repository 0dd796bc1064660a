"""Time to answer one webhook through gunicorn, one request at a time (no load).

    python -m bench.answer_time [--requests 1000] [--sqlite]

Registers one training per request, then sends each its signed FAL completion over one
keep-alive connection and times the answer (verification, matching, state change, outbox
row, commit). Prints the median, 99th percentile and maximum in milliseconds.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import time

from bench.e2e import nearest_rank
from tests.fakes.fal_keys import FalSigner, JwksServer
from tests.support import postgres
from tests.support.db import attach_many
from tests.support.servers import GunicornServer
from tests.support.webhooks import fal_ok, new_request_id, signed

WEBHOOK = "/api/v1/avatar/status_update"
# The first requests fetch the key set and open the pools; they are sent but not timed.
WARM_UP = 10


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--sqlite", action="store_true")
    args = parser.parse_args()
    database = None if args.sqlite else postgres.create_database("aibots_bench")
    signer = FalSigner()
    try:
        with JwksServer() as jwks:
            jwks.add(signer)
            env = {"FAL_JWKS_URL": jwks.jwks_url, "LOG_LEVEL": "WARNING"}
            if database:
                env["DATABASE_URL"] = database
            with GunicornServer(env, workers=2) as server:
                rids = [new_request_id() for _ in range(args.requests + WARM_UP)]
                attach_many(server.database_url, [(1, f"A{i}", r) for i, r in enumerate(rids)])
                conn = http.client.HTTPConnection("127.0.0.1", server.port)
                timings = []
                for i, rid in enumerate(rids):
                    body = fal_ok(rid)
                    headers = signed(signer, body)
                    started = time.perf_counter()
                    conn.request("POST", WEBHOOK, body, headers)
                    answer = conn.getresponse()
                    answer.read()
                    elapsed = (time.perf_counter() - started) * 1000
                    assert answer.status == 200, answer.status
                    if i >= WARM_UP:
                        timings.append(elapsed)
                conn.close()
    finally:
        if database:
            postgres.drop_database(database)
    print(json.dumps({
        "database": "sqlite" if args.sqlite else "postgresql",
        "requests": len(timings),
        "median_ms": round(statistics.median(timings), 2),
        "p99_ms": round(nearest_rank(timings, 0.99), 2),
        "max_ms": round(max(timings), 2),
    }, indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

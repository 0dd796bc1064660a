"""Retention on a million events: how long `maintenance` takes, and what webhooks feel meanwhile.

    python -m bench.retention [--events 1000000] [--sqlite] [--rate 50] [--baseline 20]

1. Fills a fresh database (PostgreSQL on the running server, or an SQLite file) in a few
   set-based statements (`generate_series` / a recursive CTE): a user per five trainings, a
   training per four events spread over 180 days (1 % of them still `training`, at every
   age), events of ~600 bytes (FAL's completion body, its kept headers), one in twenty
   unmatched, and a notification per finished training (`sent`, some `failed` or
   `uncertain`). Half the events are older than the default 90 days.
2. Runs `python -m service serve` (two workers) on it, reads `/api/v1/webhook/status` until
   the tallies' mark has passed the old rows (as Prometheus's scrapes would), and sends
   signed completions of fresh trainings, one at a time at `--rate` per second: first for
   `--baseline` seconds with nothing else running, then while `python -m service
   maintenance` prunes.
3. Prints one JSON object: the fill time, maintenance's own summary (rows pruned, batches,
   the longest batch = the longest transaction, total seconds) and the webhooks' median,
   p99 and maximum answer time without and with the pruning running.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from bench.e2e import nearest_rank
from tests.fakes.fal_keys import FalSigner, JwksServer
from tests.support import postgres
from tests.support.servers import GunicornServer, base_env, run_cli
from tests.support.trainings import seed_trainings
from tests.support.webhooks import fal_ok, signed

WEBHOOK = "/api/v1/avatar/status_update"
DAYS = 180

_BODY = (
    '{"request_id":"%s","gateway_request_id":"%s","status":"OK","payload":'
    '{"diffusers_lora_file":{"url":"https://v3.fal.media/files/penguin/%s_pytorch_lora_weights'
    '.safetensors","content_type":"application/octet-stream","file_name":'
    '"pytorch_lora_weights.safetensors","file_size":89745224},"config_file":{"url":'
    '"https://v3.fal.media/files/penguin/%s_config.json","content_type":'
    '"application/octet-stream","file_name":"config.json","file_size":1234}},"error":null,'
    '"payload_error":null,"logs":null,"metrics":{"inference_time":1234.5}}'
)
_HEADERS = (
    '{"content-type":"application/json","user-agent":"fal-webhook/1.0",'
    '"x-fal-webhook-request-id":"%s","x-fal-webhook-user-id":"u-42",'
    '"x-fal-webhook-timestamp":"1764581400","x-fal-webhook-signature":"%s"}'
)


def _statements(sqlite: bool, events: int) -> list[str]:
    """The fill, in the dialect's words: a generator `s(g)` and a few INSERT ... SELECTs."""
    avatars = max(events // 4, 1)
    users = max(avatars // 5, 1)
    if sqlite:
        gen = "WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s WHERE g < {n})"
        fmt, hexkey, body, jsn = "printf", "printf('%064d', g)", "CAST({} AS BLOB)", ""

        def ts(n: int) -> str:
            ago = f"{DAYS * 86400} * (1.0 - g * 1.0 / {n})"
            return f"strftime('%Y-%m-%d %H:%M:%f', 'now', '-' || ({ago}) || ' seconds')"
    else:
        gen = "WITH s(g) AS (SELECT generate_series(1, {n}))"
        fmt, hexkey, body, jsn = "format", "md5(g::text) || md5((-g)::text)", "", "::json"
        body = "convert_to({}, 'UTF8')"

        def ts(n: int) -> str:
            return f"now() - make_interval(secs => {DAYS * 86400} * (1 - g::float8 / {n}))"

    k, j = "(1 + (g - 1) / 4)", "((g - 1) % 4)"
    stray = "(g % 20 = 7)"
    rid = f"CASE WHEN {stray} THEN 'stray' || g ELSE 'r' || {k} END"
    finished = f"({k} % 100 <> 0)"
    fill = [
        f"""{gen.format(n=users)} INSERT INTO users (id, telegram_id, created_at, updated_at)
        SELECT g, g, {ts(users)}, {ts(users)} FROM s""",
        f"""{gen.format(n=avatars)} INSERT INTO avatars (id, user_id, name, training_type,
            status, progress, created_at, updated_at, training_started_at, finished_at)
        SELECT 'a' || g, 1 + g % {users}, 'Avatar ' || g, 'portrait',
            CASE WHEN g % 100 = 0 THEN 'training' ELSE 'completed' END,
            CASE WHEN g % 100 = 0 THEN 40 ELSE 100 END, {ts(avatars)}, {ts(avatars)},
            {ts(avatars)}, CASE WHEN g % 100 = 0 THEN NULL ELSE {ts(avatars)} END FROM s""",
        f"""{gen.format(n=avatars)} INSERT INTO fal_jobs (request_id, kind, user_id, avatar_id,
            submitted_at)
        SELECT 'r' || g, 'training', 1 + g % {users}, 'a' || g, {ts(avatars)} FROM s""",
        f"""{gen.format(n=events)} INSERT INTO webhook_events (dedupe_key, request_id,
            avatar_id, status, outcome, signed, client_ip, query, headers, body, transition,
            source, received_at, applied_at)
        SELECT {hexkey}, {rid}, CASE WHEN {stray} THEN NULL ELSE 'a' || {k} END,
            CASE WHEN {j} = 2 AND {finished} THEN 'completed' ELSE 'in_progress' END,
            CASE WHEN {stray} THEN 'unmatched' WHEN {j} = 3 THEN 'ignored' ELSE 'received' END,
            g % 2 = 0, '3.88.1.' || (g % 250), 'avatar_id=a' || {k} || '&training_type=portrait',
            {fmt}('{_HEADERS}', {rid}, {hexkey} || {hexkey}){jsn},
            {body.format(f"{fmt}('{_BODY}', {rid}, {rid}, {hexkey}, {hexkey})")},
            CASE WHEN {j} = 2 AND {finished} AND NOT {stray}
                THEN 'training->completed:100' END,
            'webhook', {ts(events)}, CASE WHEN {stray} THEN NULL ELSE {ts(events)} END
        FROM s""",
        f"""{gen.format(n=avatars)} INSERT INTO notifications (dedupe_key, avatar_id, chat_id,
            kind, message_type, text, state, attempts, next_attempt_at, created_at, updated_at,
            sent_at)
        SELECT 'avatar:a' || g || ':outcome', 'a' || g, 1 + g % {users}, 'completed', 'text',
            'Аватар «Avatar ' || g || '» готов! Нажмите «Сгенерировать», чтобы создать фото.',
            CASE WHEN g % 200 = 1 THEN 'failed' WHEN g % 200 = 2 THEN 'uncertain'
                ELSE 'sent' END, 1, {ts(avatars)}, {ts(avatars)}, {ts(avatars)}, {ts(avatars)}
        FROM s WHERE g % 100 <> 0""",
    ]
    if not sqlite:
        fill.append("SELECT setval(pg_get_serial_sequence('users', 'id'), max(id)) FROM users")
    return [*fill, "ANALYZE"]


def fill(database_url: str, sqlite_path: Path | None, events: int) -> float:
    started = time.perf_counter()
    statements = _statements(sqlite_path is not None, events)
    if sqlite_path is not None:
        with sqlite3.connect(sqlite_path) as conn:
            for statement in statements:
                conn.execute(statement)
    else:
        with psycopg.connect(database_url.replace("+psycopg", ""), autocommit=True) as conn:
            for statement in statements:
                conn.execute(statement.encode())
    return time.perf_counter() - started


def stream(
    port: int, signer: FalSigner, rids: list[str], rate: float, until: Any
) -> list[tuple[float, float]]:
    """Send one signed completion every 1/rate s until `until()` is true.

    Answers (when each was sent, on perf_counter's clock; how long its answer took in ms).
    """
    conn = http.client.HTTPConnection("127.0.0.1", port)
    timings: list[tuple[float, float]] = []
    next_at = time.perf_counter()
    while rids and not until():
        body = fal_ok(rids.pop())
        started = time.perf_counter()
        conn.request("POST", WEBHOOK, body, signed(signer, body))
        answer = conn.getresponse()
        answer.read()
        timings.append((started, (time.perf_counter() - started) * 1000))
        assert answer.status == 200, answer.status
        next_at += 1 / rate
        time.sleep(max(0.0, next_at - time.perf_counter()))
    conn.close()
    return timings


def figures(sent: list[tuple[float, float]]) -> dict[str, Any]:
    timings = [took for _, took in sent]
    return {
        "requests": len(timings),
        "median_ms": round(statistics.median(timings), 2),
        "p99_ms": round(nearest_rank(timings, 0.99), 2),
        "max_ms": round(max(timings), 2),
    }


def measure(database_url: str, sqlite_path: Path | None, args: argparse.Namespace) -> Any:
    env = base_env(DATABASE_URL=database_url)
    run_cli("migrate", env=env)
    filled = fill(database_url, sqlite_path, args.events)
    signer = FalSigner()
    with JwksServer() as jwks:
        jwks.add(signer)
        server_env = {"DATABASE_URL": database_url, "FAL_JWKS_URL": jwks.jwks_url}
        with GunicornServer({**server_env, "LOG_LEVEL": "WARNING"}, workers=2) as server:
            needed = int(args.rate * (args.baseline + args.max_prune_seconds)) + 20
            rids = [t.request_id for t in seed_trainings(database_url, needed, 10**9)]
            # As Prometheus's scrapes would have: the tallies' mark moves up to the old rows,
            # so each pruned row also moves its count (the triggers of migration 0005).
            for _ in range(args.events // 50_000 + 2):
                status = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
                status.request("GET", "/api/v1/webhook/status")
                assert status.getresponse().status == 200
                status.close()
            # The first requests fetch the key set and open the pools: sent, not counted.
            stream(server.port, signer, [rids.pop() for _ in range(10)], args.rate, lambda: False)
            deadline = time.monotonic() + args.baseline
            quiet = stream(
                server.port, signer, rids, args.rate, lambda: time.monotonic() > deadline
            )
            pruner = subprocess.Popen(
                [sys.executable, "-m", "service", "maintenance", *args.maintenance_args],
                env={**env, "LOG_LEVEL": "WARNING"},
                stdout=subprocess.PIPE,
                text=True,
            )
            busy = stream(server.port, signer, rids, args.rate, lambda: pruner.poll() is not None)
            ended = time.perf_counter()
            out, _ = pruner.communicate(timeout=args.max_prune_seconds)
    summary = json.loads(out.strip().splitlines()[-1])
    # Only the requests sent while it pruned count, not those during its Python start-up.
    pruning = [(at, took) for at, took in busy if at >= ended - summary["seconds"]]
    return {
        "database": "sqlite" if sqlite_path else "postgresql",
        "events": args.events,
        "fill_seconds": round(filled, 1),
        "maintenance": summary,
        "webhooks_without_pruning": figures(quiet),
        "webhooks_while_pruning": figures(pruning),
        "rate_per_second": args.rate,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--sqlite", action="store_true")
    parser.add_argument("--rate", type=float, default=50.0, help="webhooks per second")
    parser.add_argument("--baseline", type=float, default=20.0, help="seconds without pruning")
    parser.add_argument("--max-prune-seconds", type=float, default=900.0)
    parser.add_argument("--batch", type=int, help="maintenance's --batch (default: its own)")
    args = parser.parse_args()
    args.maintenance_args = ["--batch", str(args.batch)] if args.batch else []
    if args.sqlite:
        with tempfile.TemporaryDirectory(prefix="retention-") as tmp:
            path = Path(tmp) / "retention.db"
            result = measure(f"sqlite:///{path}", path, args)
    else:
        database = postgres.create_database("aibots_retention")
        try:
            result = measure(database, None, args)
        finally:
            postgres.drop_database(database)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

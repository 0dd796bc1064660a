"""`make bench`: the floor, the product and end to end, measured in one run on this machine.

    python -m bench [--connections 32] [--threads 2] [--duration 30] [--e2e-rate 50]
                    [--e2e-seconds 30] [--gen-rate 5] [--gen-seconds 20]
                    [--profile | --no-profile]

Everything runs on loopback: nginx with the project's site file and test certificates
(`deploy/certs.sh dev`), gunicorn with the project's settings, a fresh PostgreSQL database per
phase on the running server, FAL's key set, and the local Bot API server as its own process.

1. The floor (bench/floor.py): a bare endpoint that inserts the body and commits, under the
   same gunicorn settings, behind the same nginx; wrk sends it signed completions.
2. The product: the same wrk run against `python -m service serve`, every request a signed
   completion of its own training (avatars that exist), with the dispatcher sending.
3. End to end: signed completions at a steady rate, from send to the Bot API server's receipt
   of the sendMessage; then a burst, for the dispatcher's pacing; then generation callbacks
   (4 photos each, bench/generations.py) until the Bot API server received each album.

Results: bench/results/bench-<time>.{json,md} and latest.{json,md}; the Markdown is printed.
When the product misses a throughput or latency target, a further product run is profiled with
py-spy and the summary says where the workers' time goes (--no-profile skips it).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from bench import e2e, generations, profiling
from bench.accounting import PidSource, Window, postgres_pids
from bench.loadgen import WrkRun, find_wrk, run_wrk, write_feed
from bench.processes import BotApiProcess, FloorServer
from bench.report import markdown
from service.store.engine import sqlite_path
from tests.fakes.fal_keys import FalSigner, JwksServer
from tests.support import postgres, procs
from tests.support.nginx import dev_certs, find_nginx, running_nginx
from tests.support.servers import ROOT
from tests.support.stack import Stack, running_stack
from tests.support.trainings import Training, seed_trainings

TOKEN = "123456:BENCH-token-for-the-local-bot-api"
WORKERS = 2  # the product's default WEB_CONCURRENCY
WARMUP_SECONDS = 5
RESULTS = Path(__file__).with_name("results")
MiB = 2**20


def phase_numbers(run: WrkRun, window: Window) -> dict[str, Any]:
    per = 1000 / run.requests if run.requests else 0.0
    cpu = {group: seconds * per for group, seconds in window.seconds.items()}
    cpu["total"] = sum(cpu.values())
    cpu["wrk"] = window.children * per
    cpu["other"] = max(0.0, window.machine_busy * per - cpu["total"] - cpu["wrk"])
    return {
        "requests": run.requests,
        "seconds": round(run.seconds, 2),
        "per_second": round(run.per_second, 1),
        "p50_ms": run.p50_ms,
        "p90_ms": run.p90_ms,
        "p99_ms": run.p99_ms,
        "max_ms": run.max_ms,
        "errors": run.errors,
        "failed": run.failed,
        "wrapped": run.wrapped,
        "cpu_ms_per_request": {k: round(v, 4) for k, v in cpu.items()},
        "cpu_seconds": {k: round(v, 2) for k, v in window.seconds.items()},
        "processes_ended_in_window": window.lost,
        "machine_busy_percent": round(100 * window.machine_busy / window.machine_total, 1),
    }


def rss_mib(pids: list[int]) -> list[float]:
    return [round((procs.rss_bytes(pid) or 0) / MiB, 1) for pid in pids]


def rows(database_url: str, query: str) -> list[tuple[Any, ...]]:
    path = sqlite_path(database_url)
    if path is not None:
        with contextlib.closing(sqlite3.connect(path)) as db:
            return list(db.execute(query))
    with psycopg.connect(database_url, autocommit=True) as conn:
        return list(conn.execute(query))


def scalar(database_url: str, query: str) -> Any:
    found = rows(database_url, query)
    return found[0][0] if found else None


@contextlib.contextmanager
def fresh_database(kind: str, prefix: str, work: Path) -> Iterator[str]:
    """A new database of `kind` ("postgresql": on the running server; "sqlite": a file)."""
    if kind == "sqlite":
        yield f"sqlite:///{work}/{prefix}-{uuid.uuid4().hex[:8]}.db"
        return
    database = postgres.create_database(prefix)
    try:
        yield database
    finally:
        postgres.drop_database(database)


def database_group(kind: str, database: str) -> dict[str, PidSource]:
    # SQLite runs inside the workers: its CPU time is already gunicorn's.
    return {"postgres": postgres_pids(database)} if kind == "postgresql" else {}


@dataclass
class Bench:
    args: argparse.Namespace
    work: Path
    certs: Path
    context: ssl.SSLContext
    signer: FalSigner
    jwks: JwksServer

    def wrk(self, port: int, feed: Path, seconds: int) -> WrkRun:
        result = self.work / f"wrk-{uuid.uuid4().hex}.json"
        return run_wrk(port, feed, self.args.connections, self.args.threads, seconds, result)

    def measure(self, port: int, feed: Path, groups: dict[str, PidSource]) -> dict[str, Any]:
        with Window(groups) as window:
            run = self.wrk(port, feed, self.args.duration)
        return phase_numbers(run, window)

    def floor(self, kind: str) -> dict[str, Any]:
        with (
            fresh_database(kind, "aibots_bench_floor", self.work) as database,
            FloorServer(database, WORKERS) as floor,
            running_nginx(
                self.work / f"nginx-floor-{kind}", self.certs, floor.port, lift_rate_limit=True
            ) as nginx,
        ):
            # The floor keeps every request, repeats included: a small feed, wrapped, is
            # as good as a long one (and the same bodies and headers as the product's).
            feed = self.work / "floor.tsv"
            fake = [Training(0, str(uuid.uuid4()), "", "") for _ in range(5000)]
            write_feed(feed, fake, self.signer)
            self.wrk(nginx.port, feed, WARMUP_SECONDS)
            groups: dict[str, PidSource] = {
                "nginx": nginx.pids,
                "gunicorn": floor.pids,
                **database_group(kind, database),
            }
            phase = self.measure(nginx.port, feed, groups)
            phase["worker_rss_mib"] = rss_mib(procs.children(floor.pid))
            phase["rows"] = scalar(database, "SELECT count(*) FROM floor_events")
            return phase

    def service_env(self, database: str, bot: BotApiProcess, **extra: str) -> dict[str, str]:
        return {
            "DATABASE_URL": database,
            "TELEGRAM_TOKEN": TOKEN,
            "TELEGRAM_API_URL": bot.url,
            "FAL_JWKS_URL": self.jwks.jwks_url,
            # As in production: one JSON line per webhook.
            "LOG_LEVEL": "INFO",
            **extra,
        }

    def product(
        self, kind: str, floor_per_second: float, profile: Callable[[dict[str, Any]], bool]
    ) -> dict[str, Any]:
        with (
            fresh_database(kind, "aibots_bench_product", self.work) as database,
            BotApiProcess(TOKEN, self.work / f"product-messages-{kind}.jsonl") as bot,
            running_stack(
                self.work / f"nginx-product-{kind}",
                self.certs,
                self.context,
                self.service_env(database, bot),
                workers=WORKERS,
                lift_rate_limit=True,
            ) as stack,
        ):
            # Enough distinct completions that wrk never repeats one at the floor's pace
            # (repeats would be answered as cheap duplicates).
            warm = int(floor_per_second * WARMUP_SECONDS * 1.2) + 200
            measured = min(200_000, int(floor_per_second * self.args.duration * 1.2) + 1000)
            trainings = seed_trainings(database, warm + 2 * measured, first_chat=10_000_000)
            feed = self.work / "product-warm.tsv"
            write_feed(feed, trainings[:warm], self.signer)
            self.wrk(stack.port, feed, WARMUP_SECONDS)
            write_feed(feed, trainings[warm : warm + measured], self.signer)
            groups: dict[str, PidSource] = {
                "nginx": stack.nginx.pids,
                "gunicorn": lambda: [app.pid for app in stack.apps] + stack.workers(),
                **database_group(kind, database),
            }
            phase = self.measure(stack.port, feed, groups)
            phase["worker_rss_mib"] = rss_mib(stack.workers())
            outcomes = rows(database, "SELECT outcome, count(*) FROM webhook_events GROUP BY 1")
            phase["outcomes"] = dict(outcomes)
            phase["notifications_enqueued"] = scalar(database, "SELECT count(*) FROM notifications")
            if profile(phase):
                write_feed(feed, trainings[warm + measured :], self.signer)
                phase["profile"] = self.profile(stack, feed, kind)
            return phase

    def profile(self, stack: Stack, feed: Path, kind: str) -> dict[str, Any]:
        seconds = min(20, self.args.duration)
        # The raw stacks are kept beside the results (flamegraph.pl reads them as they are).
        out = RESULTS / "py-spy" / kind
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        started = profiling.start(stack.workers(), seconds, out)
        self.wrk(stack.port, feed, seconds)
        summary = profiling.summarize(profiling.finish(started, timeout=60))
        summary["raw"] = str(out.relative_to(ROOT))
        return summary

    def end_to_end(self) -> dict[str, Any]:
        database = postgres.create_database("aibots_bench_e2e")
        record = self.work / "e2e-messages.jsonl"
        rate, limit = self.args.e2e_rate, self.args.e2e_telegram_rate
        count = int(rate * self.args.e2e_seconds)
        try:
            with (
                BotApiProcess(TOKEN, record) as bot,
                running_stack(
                    self.work / "nginx-e2e",
                    self.certs,
                    self.context,
                    self.service_env(database, bot, TELEGRAM_RATE_PER_SECOND=str(limit)),
                    workers=WORKERS,
                ) as stack,
            ):
                trainings = seed_trainings(database, 50 + count + 300, first_chat=20_000_000)
                e2e.steady(stack, self.signer, trainings[:50], record, rate=10)  # warm-up
                steady = e2e.steady(stack, self.signer, trainings[50 : 50 + count], record, rate)
                memory = rss_mib(stack.workers())
                burst = e2e.burst(stack, self.signer, trainings[50 + count :], record, limit)
                albums = self.generations(stack, database, record)
                return {
                    "steady": steady.as_dict(),
                    "burst": burst,
                    "generations": albums,
                    "worker_rss_mib": memory,
                }
        finally:
            postgres.drop_database(database)

    def generations(self, stack: Stack, database: str, record: Path) -> dict[str, Any]:
        """Generation callbacks at a steady rate, each until its album was received."""
        rate = self.args.gen_rate
        count = int(rate * self.args.gen_seconds)
        seeded = generations.seed_generations(database, 10 + count, first_chat=30_000_000)
        generations.steady(stack, self.signer, seeded[:10], record, rate=2)  # warm-up
        return generations.steady(stack, self.signer, seeded[10:], record, rate)


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    ratios, steady = results["ratios"], results["end_to_end"]["steady"]
    rss = results["product"]["worker_rss_mib"] + results["end_to_end"]["worker_rss_mib"]
    once = steady["received"] == steady["acknowledged"] and not steady["missing"]
    lite = results["on_sqlite"]["ratios"]
    cpu = results["product"]["cpu_ms_per_request"]["total"]
    return [
        {"target": "product throughput >= 0.6 x floor (goal 0.8)",
         "value": f"{ratios['throughput']:.2f} x", "met": ratios["throughput"] >= 0.6},
        {"target": "product p99 <= 1.5 x floor's",
         "value": f"{ratios['p99']:.2f} x", "met": ratios["p99"] <= 1.5},
        {"target": "product CPU per webhook (nginx + gunicorn + PostgreSQL) <= 1.0 ms",
         "value": f"{cpu:.2f} ms", "met": cpu <= 1.0},
        {"target": "SQLite: product throughput >= 0.6 x SQLite floor",
         "value": f"{lite['throughput']:.2f} x", "met": lite["throughput"] >= 0.6},
        {"target": "SQLite: product p99 <= 1.5 x SQLite floor's",
         "value": f"{lite['p99']:.2f} x", "met": lite["p99"] <= 1.5},
        {"target": "end to end median < 100 ms",
         "value": f"{steady['p50_ms']:.1f} ms", "met": steady["p50_ms"] < 100},
        {"target": "end to end p99 < 300 ms",
         "value": f"{steady['p99_ms']:.1f} ms", "met": steady["p99_ms"] < 300},
        {"target": "every acknowledged webhook: exactly one message",
         "value": f"{steady['received']} messages / {steady['acknowledged']} acknowledged, "
                  f"{steady['duplicates']} duplicates, {steady['missing']} missing",
         "met": once and steady["duplicates"] == 0},
        {"target": "worker memory < 120 MiB",
         "value": f"max {max(rss):.0f} MiB", "met": max(rss) < 120},
    ]  # fmt: skip


# Other processes' CPU, as a share of a run's own, above which the run's latencies are suspect.
NOISY_SHARE = 0.2


def notes(results: dict[str, Any], args: argparse.Namespace) -> list[str]:
    floor, product = results["floor"], results["product"]
    found = [
        "nginx's per-client rate limit (10 r/s, burst 50) was LIFTED for the floor and product "
        "runs only: wrk floods from one address, and the limit would answer almost everything "
        "with 429. The end-to-end run keeps it, sending from 10 addresses.",
        f"End to end ran with TELEGRAM_RATE_PER_SECOND={args.e2e_telegram_rate:.0f}: the local "
        f"Bot API server has no limit, and at the production 30/s a steady {args.e2e_rate:.0f} "
        "webhooks/s would queue without end, measuring the pacer. The product run keeps 30/s.",
        f"The product answered {product.get('outcomes')} in the database for "
        f"{product['requests']} measured requests plus the warm-up; "
        f"{product.get('notifications_enqueued')} notifications were enqueued.",
        f"Machine busy during the runs: floor {floor['machine_busy_percent']}%, product "
        f"{product['machine_busy_percent']}% (SQLite: floor "
        f"{results['on_sqlite']['floor']['machine_busy_percent']}%, product "
        f"{results['on_sqlite']['product']['machine_busy_percent']}%) of "
        f"{results['machine']['cpus']} cores; load average "
        f"{' '.join(results['machine']['loadavg_at_start'])} at the start, "
        f"{' '.join(results['machine']['loadavg_at_end'])} at the end; 'anything "
        "else' in the table is CPU used by other processes in the same window (the Bot API "
        "server, other users of the machine).",
    ]
    lite = results["on_sqlite"]
    runs = (("floor", floor), ("product", product), ("SQLite floor", lite["floor"]),
            ("SQLite product", lite["product"]))  # fmt: skip
    for label, run in runs:
        cpu = run["cpu_ms_per_request"]
        # Another process's bursts delay this run's requests, and the tail shows it first.
        if cpu["other"] > NOISY_SHARE * cpu["total"]:
            found.append(
                f"WARNING: other processes took {cpu['other']:.3f} ms of CPU per request during "
                f"the {label} run, {100 * cpu['other'] / cpu['total']:.0f}% of its own "
                f"{cpu['total']:.3f} ms: its latencies, and the ratios made from them, are no "
                "clean reference. Run again on a quieter machine."
            )
    if product["wrapped"]:
        found.append(
            f"WARNING: wrk ran out of distinct webhooks {product['wrapped']} times in the product "
            "run; the repeats were answered as duplicates, which flatters the product."
        )
    return found


def git_commit() -> str:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip()

    dirty = git("status", "--porcelain", "--", "service", "bench", "deploy")
    return git("rev-parse", "--short", "HEAD") + ("+local changes" if dirty else "")


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def compare(floor: dict[str, Any], product: dict[str, Any]) -> dict[str, Any]:
    measured = floor["cpu_ms_per_request"]
    groups = [g for g in ("nginx", "gunicorn", "postgres", "total") if g in measured]
    return {
        "throughput": ratio(product["per_second"], floor["per_second"]),
        "median": ratio(product["p50_ms"], floor["p50_ms"]),
        "p99": ratio(product["p99_ms"], floor["p99_ms"]),
        "cpu": {
            group: ratio(product["cpu_ms_per_request"][group], floor["cpu_ms_per_request"][group])
            for group in groups
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--duration", type=int, default=30, help="seconds per measured wrk run")
    parser.add_argument("--e2e-rate", type=float, default=50.0)
    parser.add_argument("--e2e-seconds", type=float, default=30.0)
    parser.add_argument("--e2e-telegram-rate", type=float, default=100.0)
    parser.add_argument("--gen-rate", type=float, default=5.0, help="generation callbacks/s")
    parser.add_argument("--gen-seconds", type=float, default=20.0)
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument("--profile", action="store_true", help="profile the product anyway")
    choice.add_argument("--no-profile", action="store_true", help="never profile")
    args = parser.parse_args(argv)

    missing = [name for name, found in (("nginx", find_nginx()), ("wrk", find_wrk())) if not found]
    if not postgres.available():
        missing.append(f"PostgreSQL at {postgres.ADMIN_URL}")
    if missing:
        print(f"cannot run the benchmark without: {', '.join(missing)}", file=sys.stderr)
        return 2

    started = time.time()
    loadavg = Path("/proc/loadavg").read_text().split()[:3]
    with tempfile.TemporaryDirectory(prefix="aibots-bench-") as tmp, JwksServer() as jwks:
        work = Path(tmp)
        signer = FalSigner()
        jwks.add(signer)
        certs = dev_certs(work / "certs")
        context = ssl.create_default_context(cafile=str(certs / "ca.crt"))
        bench = Bench(args, work, certs, context, signer, jwks)

        can_profile = profiling.find_py_spy() is not None
        pairs: dict[str, dict[str, Any]] = {}
        for kind in ("postgresql", "sqlite"):
            print(f"floor on {kind} ...", file=sys.stderr, flush=True)
            floor = bench.floor(kind)

            def wanted(product: dict[str, Any], floor: dict[str, Any] = floor) -> bool:
                missed = (
                    product["per_second"] < 0.6 * floor["per_second"]
                    or product["p99_ms"] > 1.5 * floor["p99_ms"]
                )
                return can_profile and (args.profile or (missed and not args.no_profile))

            print(f"product on {kind} ...", file=sys.stderr, flush=True)
            product = bench.product(kind, floor["per_second"], wanted)
            pairs[kind] = {"floor": floor, "product": product}
        print("end to end ...", file=sys.stderr, flush=True)
        end_to_end = bench.end_to_end()

    pg, lite = pairs["postgresql"], pairs["sqlite"]
    results: dict[str, Any] = {
        "when": dt.datetime.fromtimestamp(started, dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git_commit(),
        "postgres": str(scalar(postgres.ADMIN_URL, "SHOW server_version")).split()[0],
        "sqlite": sqlite3.sqlite_version,
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_at_start": loadavg,
            "loadavg_at_end": Path("/proc/loadavg").read_text().split()[:3],
        },
        "settings": {
            "command": "make bench" + (f" BENCH_ARGS='{' '.join(argv)}'" if argv else ""),
            "connections": args.connections,
            "threads": args.threads,
            "duration": args.duration,
            "warmup": WARMUP_SECONDS,
            "workers": WORKERS,
            "e2e_rate": args.e2e_rate,
            "e2e_seconds": args.e2e_seconds,
            "e2e_telegram_rate_per_second": args.e2e_telegram_rate,
            "gen_rate": args.gen_rate,
            "gen_seconds": args.gen_seconds,
        },
        "floor": pg["floor"],
        "product": {k: v for k, v in pg["product"].items() if k != "profile"},
        "ratios": compare(pg["floor"], pg["product"]),
        "on_sqlite": {
            "floor": lite["floor"],
            "product": {k: v for k, v in lite["product"].items() if k != "profile"},
            "ratios": compare(lite["floor"], lite["product"]),
        },
        "end_to_end": end_to_end,
    }
    results["targets"] = targets(results)
    results["notes"] = notes(results, args)
    if not can_profile and not args.no_profile:
        results["notes"].append("py-spy is not installed (`make .venv/.installed`): no profile.")
    for kind, pair in pairs.items():
        if "profile" in pair["product"]:
            results.setdefault("profiles", {})[kind] = pair["product"]["profile"]

    text = markdown(results)
    RESULTS.mkdir(exist_ok=True)
    stamp = dt.datetime.fromtimestamp(started, dt.UTC).strftime("%Y%m%d-%H%M%S")
    for name in (f"bench-{stamp}", "latest"):
        (RESULTS / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
        (RESULTS / f"{name}.md").write_text(text)
    print(text)
    print(f"(written to {RESULTS / f'bench-{stamp}.json'} and .md)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

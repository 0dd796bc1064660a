"""Prometheus metrics, shared across gunicorn workers through the multiprocess directory."""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as _multiprocess

CONTENT_TYPE = CONTENT_TYPE_LATEST

WEBHOOKS = Counter(
    "webhook_requests_total", "Webhook requests by how they were answered", ["outcome"]
)
WEBHOOK_SECONDS = Histogram(
    "webhook_duration_seconds",
    "Time from the request's arrival to the answer, commit included",
    buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
)
REQUEST_ID_MISMATCHES = Counter(
    "webhook_request_id_mismatches_total",
    "Signed webhooks refused because the signed id is neither of the body's ids",
)
# Signed: positive when our clock is ahead of FAL's (a delivery's own travel time adds a little),
# negative when behind. A gauge of the latest, not a histogram: a histogram's _sum falls with
# negative observations, which rate() reads as counter resets. Past TOLERANCE_SECONDS (300)
# every signature fails with 401; the alert (deploy/prometheus) fires at 60.
FAL_CLOCK_SKEW = Gauge(
    "fal_webhook_clock_skew_seconds",
    "Our clock minus X-Fal-Webhook-Timestamp of the latest signature that verified",
    multiprocess_mode="mostrecent",
)
TELEGRAM_SENDS = Counter("telegram_sends_total", "sendMessage attempts by result", ["result"])
# Counted by the gunicorn master (through mark_process_dead, which its child_exit hook calls
# for every worker that ends): a reload ends each worker once; crashes and timeouts add more.
WORKER_EXITS = Counter("webhook_worker_exits_total", "gunicorn workers that have exited")
NOTIFY_LATENCY = Histogram(
    "notification_delivery_seconds",
    "Time from a notification's commit to Telegram accepting it",
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0, 300.0),
)


def render_process_metrics() -> bytes:
    """Counters and histograms of every worker (multiprocess mode) or of this process."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        _multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(REGISTRY)


def gauge_lines(name: str, help_text: str, samples: dict[str, float], label: str) -> str:
    """Gauges read from the database at scrape time, rendered in the text format."""
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
    if not label:
        lines += [f"{name} {value}" for value in samples.values()]
    else:
        lines += [f'{name}{{{label}="{key}"}} {value}' for key, value in samples.items()]
    return "\n".join(lines) + "\n"


def mark_process_dead(pid: int) -> None:
    WORKER_EXITS.inc()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        _multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]

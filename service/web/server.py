"""`python -m service serve`: gunicorn with uvicorn workers, configured from Settings."""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.glogging import Logger as GunicornLogger
from uvicorn_worker import UvicornWorker

from service.settings import Settings

# gunicorn's keep-alive must outlast nginx's upstream keepalive_timeout (60 s), or nginx reuses
# a connection the worker is closing and a POST after a lull gets a 502.
KEEPALIVE_SECONDS = 75
GRACEFUL_TIMEOUT_SECONDS = 20
# glibc's M_MMAP_THRESHOLD: blocks this big get pages of their own, given back when freed.
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 1024 * 1024


class Worker(UvicornWorker):  # type: ignore[misc]
    """Uvicorn worker that leaves X-Forwarded-For to the app (service.edges) and logs nothing
    per request (the webhook handler logs each call with its outcome)."""

    CONFIG_KWARGS = {  # noqa: RUF012 - the base class declares it as a plain class attribute
        "loop": "auto",
        "http": "auto",
        "proxy_headers": False,
        "access_log": False,
        "server_header": False,
    }


class _Logger(GunicornLogger):  # type: ignore[misc]
    """gunicorn's own lines in the same JSON shape as everything else (see service.logs)."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        root_handlers = logging.getLogger().handlers
        self.error_log.handlers = list(root_handlers)
        self.error_log.propagate = False


def _child_exit(server: Any, worker: Any) -> None:
    from service.metrics import mark_process_dead

    mark_process_dead(worker.pid)


class _Application(BaseApplication):  # type: ignore[misc]
    def __init__(self, settings: Settings, options: dict[str, Any]) -> None:
        self._settings = settings
        self._options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from service.web.app import create_app

        return create_app(self._settings)


def gunicorn_options(settings: Settings) -> dict[str, Any]:
    return {
        "bind": [settings.bind],
        "workers": settings.web_concurrency,
        "worker_class": "service.web.server.Worker",
        "keepalive": KEEPALIVE_SECONDS,
        "graceful_timeout": GRACEFUL_TIMEOUT_SECONDS,
        "timeout": 30,
        "backlog": 2048,
        # The app decides whose X-Forwarded-For to believe, from FORWARDED_ALLOW_IPS.
        "forwarded_allow_ips": "",
        "logger_class": "service.web.server._Logger",
        "accesslog": None,
        "child_exit": _child_exit,
        "proc_name": "aibots-webhook",
    }


def give_big_buffers_back() -> bool:
    """Make glibc map every block of a MiB or more on its own (the workers inherit it).

    By default glibc raises that threshold to the size of the biggest block freed so far (up
    to 32 MiB), so after one 9 MB body every later one comes from the heap, and the heap
    keeps the worker's RSS at its high-water mark. A fixed threshold stops that adjustment:
    a big body's buffers go back to the system with the request. False when the C library is
    not glibc (the default then stands).
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


def serve(settings: Settings) -> None:
    """Run gunicorn in the foreground until SIGTERM/SIGINT."""
    give_big_buffers_back()
    own_dir = None
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        own_dir = tempfile.mkdtemp(prefix="aibots-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = own_dir
    metrics_dir = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    # Files of a previous run would add their counts to this one's.
    metrics_dir.mkdir(parents=True, exist_ok=True)
    for stale in metrics_dir.glob("*.db"):
        stale.unlink()
    try:
        _Application(settings, gunicorn_options(settings)).run()
    finally:
        if own_dir:
            shutil.rmtree(own_dir, ignore_errors=True)

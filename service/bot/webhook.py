"""Telegram updates by webhook: the secret, setWebhook, and the loopback server nginx feeds.

Telegram posts each update to `BOT_WEBHOOK_URL/<path>` (nginx's `location /telegram/` on
aibots.kz:8443 forwards it to BOT_BIND) with the `secret_token` of setWebhook in the header
X-Telegram-Bot-Api-Secret-Token. The server here answers quickly: a wrong path is 404, a
missing or wrong secret 401, an update it has already taken 200 "duplicate", and a new one
is put on the application's update queue and answered 200 before it is handled (as polling
confirms an update before handling it).

The secret, unless TELEGRAM_WEBHOOK_SECRET sets one, is generated (256 random bits) the first
time the bot starts in webhook mode and stored in the shared database (`bot_state`), so every
restart, and a bot moved to another host with the same database, registers the same one. The
path is a hash of the secret: nginx logs the path, never the header, so the log does not
reveal the secret.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import hmac
import json
import secrets
import signal
import socket
from collections.abc import Iterator, Sequence
from typing import Any

import structlog
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from telegram import Update
from telegram.ext import Application

from service.bot.services import SERVICES_KEY, Services
from service.settings import Settings
from service.store import bot_state
from service.store.models import utcnow

log = structlog.get_logger("service.bot.webhook")

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
# An update is a few kilobytes; nginx's 1 MiB limit is in front of this one.
MAX_UPDATE_BYTES = 1024 * 1024
# Telegram repeats an update only until it gets a 2xx, so recent ids are enough to tell.
REMEMBERED_UPDATES = 10_000
# Longer than nginx's upstream keepalive_timeout (60 s), so nginx never reuses a connection
# this server is closing (that request would get a 502).
KEEP_ALIVE_SECONDS = 75


# The stored secret's name in bot_state.
SECRET_KEY = "telegram_webhook_secret"


async def secret_token(settings: Settings, svc: Services) -> str:
    """TELEGRAM_WEBHOOK_SECRET, or the one generated once and kept in the database (43
    characters of A-Za-z0-9_-, as Telegram allows)."""
    if settings.telegram_webhook_secret:
        return settings.telegram_webhook_secret

    def generate() -> str:
        return secrets.token_urlsafe(32)

    stored = await svc.transaction(
        lambda session: bot_state.kept(session, SECRET_KEY, generate, utcnow())
    )
    return str(stored)


def secret_path(secret: str) -> str:
    """The last segment of the webhook URL: a hash of the secret, not the secret itself."""
    digest = hmac.new(secret.encode(), b"aibots.kz telegram webhook path", hashlib.sha256)
    return digest.hexdigest()[:32]


def webhook_url(settings: Settings, secret: str) -> str:
    """What setWebhook is given: BOT_WEBHOOK_URL/<secret path>."""
    return f"{settings.bot_webhook_url}/{secret_path(secret)}"


class RecentUpdates:
    """The last `size` update ids taken, to answer Telegram's repeats without handling them."""

    def __init__(self, size: int = REMEMBERED_UPDATES) -> None:
        self._order: collections.deque[int] = collections.deque()
        self._seen: set[int] = set()
        self._size = size

    def first_time(self, update_id: int) -> bool:
        if update_id in self._seen:
            return False
        self._seen.add(update_id)
        self._order.append(update_id)
        if len(self._order) > self._size:
            self._seen.discard(self._order.popleft())
        return True


def _error(status: int, code: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    return _error(status, "not_found" if status == 404 else "bad_request", str(exc))


def create_app(application: Application[Any, Any, Any, Any, Any, Any], secret: str) -> Starlette:
    """The webhook endpoint in front of `application`'s update queue."""
    path = secret_path(secret)
    recent = RecentUpdates()
    expected = secret.encode()

    async def receive(request: Request) -> JSONResponse:
        if not hmac.compare_digest(str(request.path_params["path"]).encode(), path.encode()):
            return _error(404, "not_found", "No such webhook.")
        given = request.headers.get(SECRET_HEADER, "").encode("utf-8", "replace")
        if not hmac.compare_digest(given, expected):
            log.warning(
                "telegram_webhook_refused",
                reason="secret missing" if not given else "secret wrong",
                client=request.headers.get("x-forwarded-for") or request.client,
            )
            return _error(401, "unauthorized", f"{SECRET_HEADER} is missing or wrong.")
        body = await request.body()
        if len(body) > MAX_UPDATE_BYTES:
            return _error(413, "too_large", "An update is at most 1 MiB.")
        try:
            data = json.loads(body)
            update = Update.de_json(data, application.bot) if isinstance(data, dict) else None
        except Exception:  # whatever PTB makes of a malformed update, it is the sender's fault
            update = None
        if update is None:
            return _error(400, "bad_request", "The body is not a Telegram update.")
        if not recent.first_time(update.update_id):
            log.info("telegram_update_repeated", update_id=update.update_id)
            return JSONResponse({"status": "duplicate", "update_id": update.update_id})
        await application.update_queue.put(update)
        return JSONResponse({"status": "accepted", "update_id": update.update_id})

    return Starlette(
        routes=[Route("/telegram/{path}", receive, methods=["POST"])],
        exception_handlers={HTTPException: _http_error},
    )


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The bot handles SIGTERM/SIGINT itself (see `serve`): it has to stop the application
        # after the server, and uvicorn would re-raise the signal once it returned.
        yield


def _listen(bind: str) -> socket.socket:
    host, _, port = bind.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, int(port)))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


async def serve(
    application: Application[Any, Any, Any, Any, Any, Any],
    settings: Settings,
    allowed_updates: Sequence[str],
) -> None:
    """Run the bot in webhook mode until SIGTERM/SIGINT: listen, then setWebhook.

    Raises OSError when BOT_BIND cannot be bound, TelegramError when Telegram refuses.
    """
    sock = _listen(settings.bot_bind)
    serving: asyncio.Task[None] | None = None
    server: _Server | None = None
    await application.initialize()
    try:
        if application.post_init is not None:
            await application.post_init(application)
        svc = application.bot_data[SERVICES_KEY]
        assert isinstance(svc, Services), "post_init opens the services"
        secret = await secret_token(settings, svc)
        server = _Server(
            uvicorn.Config(
                create_app(application, secret),
                lifespan="off",
                log_config=None,
                access_log=False,
                server_header=False,
                timeout_keep_alive=KEEP_ALIVE_SECONDS,
            )
        )
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, lambda: setattr(server, "should_exit", True))
        await application.start()
        serving = asyncio.create_task(server.serve(sockets=[sock]), name="telegram-webhook")
        # The socket listens already (bound above), so the first delivery, however soon it
        # comes after setWebhook, waits in its backlog rather than being refused.
        await application.bot.set_webhook(
            webhook_url(settings, secret),
            secret_token=secret,
            allowed_updates=list(allowed_updates),
            max_connections=settings.bot_webhook_max_connections,
        )
        log.info(
            "telegram_webhook_set",
            url=settings.bot_webhook_url + "/…",
            listen=settings.bot_bind,
            allowed_updates=list(allowed_updates),
            max_connections=settings.bot_webhook_max_connections,
        )
        await serving
    finally:
        if server is not None:
            server.should_exit = True
        if serving is not None:
            with contextlib.suppress(Exception):
                await serving
        sock.close()
        if application.running:
            await application.stop()
            if application.post_stop is not None:
                await application.post_stop(application)
        await application.shutdown()
        if application.post_shutdown is not None:
            await application.post_shutdown(application)

"""Telegram updates by webhook: the secret, setWebhook, and the loopback server nginx feeds.

Telegram posts each update to `BOT_WEBHOOK_URL/<path>` (nginx's `location /telegram/` on
aibots.kz:8443 forwards it to BOT_BIND) with the `secret_token` of setWebhook in the header
X-Telegram-Bot-Api-Secret-Token. The server here answers quickly: a wrong path is 404, a
missing or wrong secret 401, an update it has already taken 200 "duplicate", and a new one
is put on the application's update queue and answered 200 before it is handled (as polling
confirms an update before handling it).

The secret, unless TELEGRAM_WEBHOOK_SECRET sets one, is derived from the bot's token by HMAC.
Nothing has to be stored or shared between hosts, it survives restarts, and it changes with
the token. Whoever knows the token can compute it, but the token alone already lets them call
setWebhook, so a stored random secret would guard against no one more. The path is a hash of
the secret: nginx logs the path, never the header, so the log does not reveal the secret.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import hashlib
import hmac
import json
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

from service.settings import Settings

log = structlog.get_logger("service.bot.webhook")

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
# An update is a few kilobytes; nginx's 1 MiB limit is in front of this one.
MAX_UPDATE_BYTES = 1024 * 1024
# Telegram repeats an update only until it gets a 2xx, so recent ids are enough to tell.
REMEMBERED_UPDATES = 10_000
# Longer than nginx's upstream keepalive_timeout (60 s), so nginx never reuses a connection
# this server is closing (that request would get a 502).
KEEP_ALIVE_SECONDS = 75


def secret_token(settings: Settings) -> str:
    """TELEGRAM_WEBHOOK_SECRET, or one derived from the token (43 characters of A-Za-z0-9_-)."""
    if settings.telegram_webhook_secret:
        return settings.telegram_webhook_secret
    digest = hmac.new(
        settings.telegram_token.encode(), b"aibots.kz telegram webhook secret", hashlib.sha256
    ).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def secret_path(secret: str) -> str:
    """The last segment of the webhook URL: a hash of the secret, not the secret itself."""
    digest = hmac.new(secret.encode(), b"aibots.kz telegram webhook path", hashlib.sha256)
    return digest.hexdigest()[:32]


def webhook_url(settings: Settings) -> str:
    """What setWebhook is given: BOT_WEBHOOK_URL/<secret path>."""
    return f"{settings.bot_webhook_url}/{secret_path(secret_token(settings))}"


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
    secret = secret_token(settings)
    sock = _listen(settings.bot_bind)
    config = uvicorn.Config(
        create_app(application, secret),
        lifespan="off",
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
    )
    server = _Server(config)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, lambda: setattr(server, "should_exit", True))
    serving: asyncio.Task[None] | None = None
    await application.initialize()
    try:
        if application.post_init is not None:
            await application.post_init(application)
        await application.start()
        serving = asyncio.create_task(server.serve(sockets=[sock]), name="telegram-webhook")
        # The socket listens already (bound above), so the first delivery, however soon it
        # comes after setWebhook, waits in its backlog rather than being refused.
        await application.bot.set_webhook(
            webhook_url(settings),
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

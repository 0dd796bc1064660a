"""create_app(settings): routes, middleware, lifespan and error handlers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.jobs import generation
from service.settings import Settings
from service.store import migrate, training_data
from service.web import downloads, monitoring, openapi, webhooks
from service.web.edges import HostCheck, error_response
from service.web.runtime import Runtime

log = structlog.get_logger(__name__)


def create_app(settings: Settings, *, start_dispatcher: bool = True) -> Starlette:
    # The outcomes this worker writes tell the person's photos left by this process's quota.
    generation.set_quota(settings.generations_per_day)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Each gunicorn worker runs this after the fork: connections are never shared.
        await asyncio.to_thread(migrate.require_current, settings.database_url)
        runtime = Runtime.open(settings)
        app.state.runtime = runtime
        background = None
        if start_dispatcher:
            # Every worker runs it; only the elected one sends (service/outbox/dispatcher.py).
            from service.outbox.leadership import run_elected

            background = asyncio.create_task(
                run_elected(settings, runtime.sessions, runtime.outbox_wakeup), name="dispatcher"
            )
        try:
            yield
        finally:
            if background is not None:
                background.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await background
            await runtime.close()

    routes = [
        Route("/api/v1/avatar/status_update", webhooks.status_update, methods=["POST"]),
        Route("/api/avatar/status_update", webhooks.status_update, methods=["POST"]),
        Route("/health", monitoring.health, methods=["GET"]),
        Route("/api/v1/webhook/status", monitoring.webhook_status, methods=["GET"]),
        Route("/metrics", monitoring.prometheus, methods=["GET"]),
        Route("/api/v1/openapi.json", openapi.document, methods=["GET"]),
        Route(training_data.PATH, downloads.serve, methods=["GET"]),
    ]
    middleware = [Middleware(HostCheck, allowed=settings.allowed_hosts)]
    if settings.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.cors_origins),
                allow_methods=["GET", "POST"],
                allow_headers=["Content-Type"],
            )
        )
    app = Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_error, Exception: _server_error},
    )
    # FAL treats any 3xx as a permanent failure: a trailing slash gets a 404, never a redirect.
    app.router.redirect_slashes = False
    return app


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    codes = {404: "not_found", 405: "method_not_allowed"}
    return error_response(exc.status_code, codes.get(exc.status_code, "http_error"), exc.detail)


async def _server_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled_error", path=request.url.path)
    return JSONResponse(
        {"error": "internal", "detail": "an unexpected error; nothing was acknowledged"},
        status_code=500,
    )

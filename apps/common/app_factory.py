"""``create_base_app``: the one wiring point every service goes through.

It gives each service the same platform: settings, an async engine and per-request sessions,
``/healthz`` and ``/readyz``, OpenAPI at ``/schema``, one problem+json error format, request
logging, signed internal routes, the internal client, and for public services the shared session
cookie, CSRF protection, templates and the development sign-in.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from litestar import Litestar, MediaType, Request, Response, get
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from sqlalchemy.ext.asyncio import AsyncSession

from apps.common.db import create_engine, database_reachable, session_scope, sessionmaker_for
from apps.common.identity import (
    Identity,
    SessionCodec,
    identity_from_scope,
    identity_middleware,
)
from apps.common.internal import internal_router
from apps.common.internal_client import (
    InternalClient,
    client_installed,
    close_client,
    install_client,
)
from apps.common.problems import handle_exception, problem_response
from apps.common.settings import Settings
from apps.common.web import (
    SignInHook,
    adopt_anonymous_on_sign_in,
    auth_handlers,
    csrf_input,
    page_context,
    template_config,
    wants_html,
)

LifespanHook = Callable[[Litestar], Awaitable[None]]


def access_log_middleware(service: str) -> Callable[[ASGIApp], ASGIApp]:
    logger = logging.getLogger(f"rose.{service}.access")

    def middleware(app: ASGIApp) -> ASGIApp:
        async def log(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            started = time.perf_counter()
            status = 500

            async def capture(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await app(scope, receive, capture)
            finally:
                if scope["path"] not in ("/healthz", "/readyz"):
                    logger.info(
                        "%s %s %d %.1fms",
                        scope["method"],
                        scope["path"],
                        status,
                        (time.perf_counter() - started) * 1000,
                    )

        return log

    return middleware


def create_base_app(
    name: str,
    *,
    settings: Settings | None = None,
    internal_handlers: Sequence[Any] = (),
    public_handlers: Sequence[Any] = (),
    templates: Path | None = None,
    on_startup: Sequence[LifespanHook] = (),
    on_shutdown: Sequence[LifespanHook] = (),
    csrf_exempt: Sequence[str] = (),
    sign_in_hooks: Sequence[SignInHook] = (adopt_anonymous_on_sign_in,),
    dependencies: dict[str, Provide] | None = None,
    pool_size: int = 5,
) -> Litestar:
    settings = settings or Settings.from_env(name)
    if settings.service != name:
        raise ValueError(f"settings are for {settings.service!r}, not {name!r}")

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        engine = create_engine(settings.database_url, application_name=name, pool_size=pool_size)
        app.state.engine = engine
        app.state.sessionmaker = sessionmaker_for(engine)
        owns_client = not client_installed()
        if owns_client:
            install_client(
                InternalClient(
                    caller=name,
                    secret=settings.internal_secret,
                    base_urls=settings.internal_urls,
                )
            )
        try:
            for hook in on_startup:
                await hook(app)
            yield
        finally:
            for hook in on_shutdown:
                await hook(app)
            if owns_client:
                await close_client()
            await engine.dispose()

    async def provide_db_session(state: State) -> AsyncIterator[AsyncSession]:
        async with session_scope(state.sessionmaker) as session:
            yield session

    @get("/healthz", operation_id="healthz", tags=["health"], sync_to_thread=False)
    def healthz() -> dict[str, str]:
        return {"status": "alive", "service": name}

    @get("/readyz", operation_id="readyz", tags=["health"])
    async def readyz(state: State) -> Response[dict[str, Any]]:
        if not await database_reachable(state.engine):
            return problem_response(
                503, f"{name}: database unreachable", instance="/readyz", service=name
            )
        return Response({"status": "ready", "service": name})

    route_handlers: list[Any] = [healthz, readyz]
    if internal_handlers:
        route_handlers.append(internal_router(name, settings.internal_secret, internal_handlers))
    route_handlers.extend(public_handlers)

    all_dependencies: dict[str, Provide] = {
        "db_session": Provide(provide_db_session),
        "settings": Provide(lambda: settings, use_cache=True, sync_to_thread=False),
        **(dependencies or {}),
    }
    middleware: list[Any] = [access_log_middleware(name)]
    template_settings = None
    state: dict[str, Any] = {"settings": settings}
    exception_handler = handle_exception

    if settings.public:
        assert settings.session_secret is not None  # enforced by Settings for public services
        codec = SessionCodec(settings.session_secret)
        state["session_codec"] = codec
        middleware.append(
            identity_middleware(
                codec,
                cookie_domain=settings.session_cookie_domain,
                secure=settings.session_cookie_secure,
                csrf_exempt=csrf_exempt,
            )
        )
        route_handlers.extend(auth_handlers(settings, sign_in_hooks))
        template_settings = template_config(settings, templates)

        def provide_identity(request: Request) -> Identity:
            return identity_from_scope(request.scope)

        all_dependencies["identity"] = Provide(provide_identity, sync_to_thread=False)

        def html_or_problem(request: Request, exc: Exception) -> Response[Any]:
            response = handle_exception(request, exc)
            if not wants_html(request):
                return response
            # Browsers get the same problem rendered as a page, with the same status.
            return _html_problem(request, response.status_code, response.content)

        exception_handler = html_or_problem  # type: ignore[assignment]

    return Litestar(
        route_handlers=route_handlers,
        lifespan=[lifespan],
        dependencies=all_dependencies,
        exception_handlers={Exception: exception_handler},
        middleware=middleware,
        template_config=template_settings,
        openapi_config=OpenAPIConfig(
            title=f"rose-ash {name}",
            version="1.0.0",
            path="/schema",
        ),
        state=State(state),
        logging_config=None,
        debug=False,
    )


def _html_problem(request: Request, status: int, problem: dict[str, Any]) -> Response[Any]:
    engine = request.app.template_engine
    assert engine is not None
    html = engine.get_template("error.html").render(
        **page_context(request, problem=problem, status=status, csrf_input=csrf_input(request))
    )
    return Response(html, status_code=status, media_type=MediaType.HTML)

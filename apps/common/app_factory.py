"""``create_base_app``: the one wiring point every service goes through.

It gives each service the same platform: settings, an async engine and per-request sessions,
``/healthz`` and ``/readyz``, OpenAPI at ``/schema``, one problem+json error format (Litestar's
problem-details plugin), request logging, the internal routes of its contract (signed), the
client of other services' contracts, and for public services the shared session cookie, CSRF
protection, templates and the development sign-in.

What a service's handlers and jobs share lives in one typed object, :class:`Platform`
(``app.state.platform``), handed out by dependency injection; nothing is read from ``app.state``
by name elsewhere.
"""

from __future__ import annotations

import functools
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from litestar import Litestar, Request, Response, get
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.routes import HTTPRoute
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from apps.common.adoption import SIGN_OUT_PATH
from apps.common.asgi import header, http_method
from apps.common.contracts import Action, Contract, Fragment, IdentityParams, SignIn
from apps.common.db import (
    close_request_session,
    create_engine,
    database_unready,
    request_session,
    sessionmaker_for,
    warm_pool,
)
from apps.common.head import head_as_get
from apps.common.headers import security_headers
from apps.common.identity import Identity, SessionCodec, identity_from_scope, identity_middleware
from apps.common.internal import internal_router, only_contract_routes_serve_internal_paths
from apps.common.internal_client import InternalClient
from apps.common.limits import (
    MAX_BODY_BYTES,
    input_limits,
    list_fields,
    query_parameters_read_once,
)
from apps.common.nonces import DeferredNonce, NonceStore
from apps.common.observability import (
    UNOBSERVED_PATHS,
    ScrapeHook,
    configure_tracing,
    log_safe,
    metrics_controller,
    opentelemetry_middleware,
    prometheus_config,
)
from apps.common.openapi import (
    document_form_encodings,
    document_problems,
    schema_render_plugins,
    schema_router,
)
from apps.common.problems import current_request_id, problem_details_plugin, problem_response
from apps.common.settings import Settings
from apps.common.web import (
    auth_handlers,
    check_form_routes,
    nav_middleware,
    path_numbers_in_ascii,
    read_form_body_first,
    template_config,
)

LifespanHook = Callable[[Litestar], Awaitable[None]]
REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{8,64}")


@dataclass
class Platform:
    """What every handler and job of one service process may use."""

    settings: Settings
    client: InternalClient
    codec: SessionCodec | None
    # What other services do when someone signs in (their contracts' adopt actions).
    sign_in: tuple[Action[SignIn, Any], ...] = ()
    engine: AsyncEngine = field(init=False)
    sessionmaker: async_sessionmaker[AsyncSession] = field(init=False)


def platform_of(app: Litestar) -> Platform:
    platform: Platform = app.state.platform
    return platform


def request_middleware(service: str) -> Callable[[ASGIApp], ASGIApp]:
    """Every request gets an id (the caller's ``X-Request-ID`` when it is a sane one): in the
    access log line, in any error's log line and problem, and in the response's header."""
    logger = logging.getLogger(f"rose.{service}.access")

    def middleware(app: ASGIApp) -> ASGIApp:
        async def log(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            given = header(scope, REQUEST_ID_HEADER) or ""
            request_id = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex[:16]
            token = current_request_id.set(request_id)
            started = time.perf_counter()
            status = 500

            async def capture(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                    headers = [*message.get("headers", ()), (b"x-request-id", request_id.encode())]
                    message = {**message, "headers": headers}
                await send(message)

            try:
                await app(scope, receive, capture)
            finally:
                current_request_id.reset(token)
                if scope["path"] not in UNOBSERVED_PATHS:
                    # The client as uvicorn saw it: the proxy's X-Forwarded-For when the
                    # connection comes from a trusted proxy (FORWARDED_ALLOW_IPS), else the peer.
                    client = scope.get("client")
                    # The path (and a forwarded client) are what the request chose: escaped,
                    # so they cannot write a line of their own (audit s20 L2).
                    logger.info(
                        "%s %s %d %.1fms request=%s client=%s",
                        log_safe(http_method(scope)),
                        log_safe(scope["path"]),
                        status,
                        (time.perf_counter() - started) * 1000,
                        request_id,
                        log_safe(client[0]) if client else "-",
                    )

        return log

    return middleware


def resolve_dependencies_in_order(app: Litestar) -> None:
    """Every route resolves its dependencies one after another, in the request's own task.

    Litestar resolves the dependencies that do not depend on each other at once, each in a task
    of an anyio task group (litestar-org/litestar#4563). This platform's providers hand out
    objects they already have, or read through the request's one database session, which two
    tasks must never use at once; the task group only cost every request with two or more of
    them about 0.1 ms of CPU (bench/README.md, issue #14's nineteenth pass). Litestar awaits a
    batch of one in the request's task, so each batch is split into batches of one, in an order
    that keeps every dependency after the ones it needs."""
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for _, model in route.route_handler_map.values():
            model.dependency_batches = [
                {dependency}
                for batch in model.dependency_batches
                for dependency in sorted(batch, key=lambda container: container.key)
            ]


def create_base_app(
    contract: Contract,
    *,
    settings: Settings,
    internal_client: InternalClient | None = None,
    internal_handlers: Sequence[Any] = (),
    public_handlers: Sequence[Any] = (),
    templates: Path | None = None,
    on_startup: Sequence[LifespanHook] = (),
    on_shutdown: Sequence[LifespanHook] = (),
    csrf_exempt: Sequence[str] = (),
    sign_in: Sequence[Action[SignIn, Any]] = (),
    nav: Sequence[Fragment[IdentityParams]] = (),
    dependencies: dict[str, Provide] | None = None,
    nonce_table: Table | None = None,
    scrape_hooks: Sequence[ScrapeHook] = (),
) -> Litestar:
    """The service's app. ``internal_client``: a client of the other services made by the
    caller (tests route it to in-process apps); by default one is made here, from the
    settings' ``INTERNAL_URL_*``, and closed with the app."""
    name = contract.service
    if settings.service != name:
        raise ValueError(f"settings are for {settings.service!r}, not {name!r}")
    configure_tracing(name)
    owns_client = internal_client is None
    client = internal_client or InternalClient(
        caller=name, secret=settings.internal_secret, base_urls=settings.internal_urls
    )
    codec = None
    if contract.public:
        assert settings.session_secret is not None  # enforced by Settings for public services
        codec = SessionCodec(settings.session_secret, settings.session_secrets_accepted)
    platform = Platform(settings=settings, client=client, codec=codec, sign_in=tuple(sign_in))

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        platform.engine = create_engine(
            settings.database_url,
            application_name=name,
            pool_size=settings.database_pool_size,
            pool_timeout=settings.database_pool_timeout,
        )
        platform.sessionmaker = sessionmaker_for(platform.engine)
        if settings.database_pool_warm:
            await warm_pool(platform.engine, settings.database_pool_size)
        try:
            for hook in on_startup:
                await hook(app)
            yield
        finally:
            for hook in on_shutdown:
                await hook(app)
            if owns_client:
                await client.aclose()
            await platform.engine.dispose()

    def provide_db_session(state: State, scope: Scope) -> AsyncSession:
        return request_session(state.platform.sessionmaker, scope)

    @get("/healthz", operation_id="healthz", tags=["health"], sync_to_thread=False)
    def healthz() -> dict[str, str]:
        return {"status": "alive", "service": name}

    @get("/readyz", operation_id="readyz", tags=["health"])
    async def readyz(state: State) -> Response[dict[str, Any]]:
        why = await database_unready(state.platform.engine)
        if why is not None:
            return problem_response(503, f"{name}: {why}", instance="/readyz", service=name)
        return Response({"status": "ready", "service": name})

    # /metrics: Prometheus (Litestar's controller); the proxy does not expose it.
    route_handlers: list[Any] = [healthz, readyz, metrics_controller(scrape_hooks)]
    if internal_handlers or contract.calls:
        if nonce_table is None and any(isinstance(call, Action) for call in contract.calls):
            raise ValueError(f"{name} takes actions: it needs its request_nonces table")
        nonces = NonceStore(nonce_table) if nonce_table is not None else None

        async def remember_nonce(nonce: str) -> bool:
            return nonces is None or await nonces.remember(platform.engine, nonce)

        async def sweep_nonces() -> None:
            if nonces is not None:
                await nonces.sweep_sometimes(platform.engine)

        secrets = (settings.internal_secret, *settings.internal_secrets_accepted)
        defer_nonce = functools.partial(DeferredNonce, nonces) if nonces is not None else None
        route_handlers.append(
            internal_router(
                contract, secrets, internal_handlers, remember_nonce, defer_nonce, sweep_nonces
            )
        )
    route_handlers.extend(public_handlers)

    all_dependencies: dict[str, Provide] = {
        "db_session": Provide(provide_db_session, sync_to_thread=False),
        "settings": Provide(lambda: settings, use_cache=True, sync_to_thread=False),
        "internal": Provide(lambda: client, use_cache=True, sync_to_thread=False),
        "platform": Provide(lambda: platform, use_cache=True, sync_to_thread=False),
        **(dependencies or {}),
    }
    # The edge: around Litestar's own handler (routing and its exception handling), so it runs
    # for every request, one that matches no route included (Litestar's app middleware only
    # wraps matched routes). Outermost first; a public service's security headers are outside
    # every layer that may answer on its own (input limits, CSRF).
    edge: list[Callable[[ASGIApp], ASGIApp]] = [
        request_middleware(name),
        head_as_get,
        close_request_session,
    ]
    if codec is not None:
        edge.append(security_headers(settings.public_urls.values()))

    def limits(inner: ASGIApp) -> ASGIApp:
        # The form fields the app reads as lists may repeat; the query parameters it reads as
        # one value may not (``app``: built below, before the edge). Not the trace context a
        # URL may carry: an ambiguous one is ignored (observability.trace_context_from_query).
        return input_limits(inner, list_fields(app), query_parameters_read_once(app))

    edge.append(limits)
    template_settings = None

    if codec is not None:
        edge.append(
            identity_middleware(
                codec,
                cookie_domain=settings.session_cookie_domain,
                secure=settings.session_cookie_secure,
                csrf_exempt=csrf_exempt,
                # A page of ours may sign out with a token read before a sign-in in another tab.
                sign_out_path=SIGN_OUT_PATH,
                own_origins=settings.public_urls.values(),
            )
        )
        if nav:
            edge.append(nav_middleware(client, nav))
        route_handlers.extend(auth_handlers(settings, codec, client, platform.sign_in))
        template_settings = template_config(settings, templates)

        def provide_identity(request: Request[Any, Any, Any]) -> Identity:
            return identity_from_scope(request.scope)

        all_dependencies["identity"] = Provide(provide_identity, sync_to_thread=False)

    app = Litestar(
        route_handlers=route_handlers,
        lifespan=[lifespan],
        dependencies=all_dependencies,
        plugins=[problem_details_plugin()],
        # A form given to a handler as a struct is read as every form is (URL-encoded or
        # multipart; any other body refused).
        before_request=read_form_body_first,
        middleware=[
            prometheus_config(name).middleware,
            only_contract_routes_serve_internal_paths,
            path_numbers_in_ascii,
        ],
        template_config=template_settings,
        openapi_config=OpenAPIConfig(
            title=f"rose-ash {name}",
            version="1.0.0",
            path="/schema",
            render_plugins=schema_render_plugins("/schema"),
            openapi_router=schema_router("/schema"),
        ),
        state=State({"platform": platform}),
        logging_config=None,
        debug=False,
        request_max_body_size=MAX_BODY_BYTES,
    )
    check_form_routes(app)
    resolve_dependencies_in_order(app)
    for layer in reversed(edge):
        app.asgi_handler = layer(app.asgi_handler)
    app.asgi_handler = opentelemetry_middleware(app.asgi_handler)
    document_problems(app, html=codec is not None)
    document_form_encodings(app)
    return app

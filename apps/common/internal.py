"""Internal routes of a service: ``/internal/data``, ``/internal/actions``, ``/internal/fragments``.

Every internal request must carry a valid signature (see :mod:`apps.common.signing`); anything
else is a 401 problem before any handler runs. Public routing (Caddy) never exposes ``/internal/``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from litestar import MediaType, Request, Router, get, post
from litestar.params import JSONBody
from litestar.types import ASGIApp, Receive, Scope, Send
from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncSession

from apps.common.asgi import BodyTooLarge, header, read_body, replaying_receive, send_problem
from apps.common.db import DbSession
from apps.common.idempotency import run_idempotent
from apps.common.internal_client import IDEMPOTENCY_HEADER
from apps.common.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify

INTERNAL_PREFIX = "/internal"


def signature_middleware(secret: str) -> Callable[[ASGIApp], ASGIApp]:
    """ASGI middleware factory that refuses unsigned or wrongly signed internal requests."""

    def middleware(app: ASGIApp) -> ASGIApp:
        async def check(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            try:
                body = await read_body(receive)
            except BodyTooLarge:
                await send_problem(send, 413, "request body too large", scope["path"])
                return
            path = scope["path"]
            query = scope.get("query_string", b"").decode("latin-1")
            signed_path = f"{path}?{query}" if query else path
            reason = verify(
                secret,
                scope["method"],
                signed_path,
                body,
                header(scope, TIMESTAMP_HEADER),
                header(scope, SIGNATURE_HEADER),
            )
            if reason is not None:
                await send_problem(send, 401, f"Internal request refused: {reason}", path)
                return
            await app(scope, replaying_receive(body, receive), send)

        return check

    return middleware


def internal_router(service: str, secret: str, handlers: Sequence[Any]) -> Router:
    return Router(
        path=INTERNAL_PREFIX,
        route_handlers=list(handlers),
        middleware=[signature_middleware(secret)],
        tags=[f"{service} internal"],
    )


def data_route(name: str, **kwargs: Any) -> Callable[[Any], Any]:
    """``GET /internal/data/{name}``: read-only JSON."""
    return get(f"/data/{name}", operation_id=f"data_{name.replace('-', '_')}", **kwargs)


def action_route(name: str, **kwargs: Any) -> Callable[[Any], Any]:
    """``POST /internal/actions/{name}``: JSON in, JSON out, 200 on success (replays included)."""
    return post(
        f"/actions/{name}",
        operation_id=f"action_{name.replace('-', '_')}",
        status_code=200,
        **kwargs,
    )


def fragment_route(name: str, **kwargs: Any) -> Callable[[Any], Any]:
    """``GET /internal/fragments/{name}``: an HTML snippet for another service's pages."""
    return get(
        f"/fragments/{name}",
        operation_id=f"fragment_{name.replace('-', '_')}",
        media_type=MediaType.HTML,
        **kwargs,
    )


def keyed_action(
    name: str,
    payload_type: type[Any],
    keys_table: Table,
    effect: Callable[[AsyncSession, Any], Awaitable[Any]],
    **route_kwargs: Any,
) -> Any:
    """An action route whose effect honours ``Idempotency-Key`` (see :mod:`.idempotency`):
    the payload is validated as ``payload_type``, ``effect(session, payload)`` runs at most once
    per key, and the result is committed with the key in one transaction."""

    async def handler(db_session: AsyncSession, request: Request, data: Any) -> dict[str, Any]:
        return await run_idempotent(  # type: ignore[no-any-return]
            db_session,
            keys_table,
            action=name,
            key=request.headers.get(IDEMPOTENCY_HEADER),
            payload=data,
            effect=lambda: effect(db_session, data),
        )

    # Real objects, not strings: the payload type is only known here, at run time.
    handler.__annotations__ = {
        "db_session": DbSession,
        "request": Request,
        "data": JSONBody[payload_type],  # type: ignore[valid-type]
        "return": dict[str, Any],
    }
    handler.__name__ = handler.__qualname__ = name.replace("-", "_")
    handler.__doc__ = effect.__doc__
    return action_route(name, **route_kwargs)(handler)

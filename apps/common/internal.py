"""Internal routes of a service: ``/internal/data``, ``/internal/actions``, ``/internal/fragments``.

A provider registers each route from its contract (:mod:`apps.common.contracts`): the route's
path, operation id and request type come from the contract's call, and :func:`internal_router`
refuses to build a router that misses a call of the contract, serves one it does not declare,
or takes another request type than the contract says.

Every internal request must carry a valid signature (see :mod:`apps.common.signing`); anything
else is a 401 problem before any handler runs. Public routing (Caddy) never exposes ``/internal/``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import typing
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from litestar import MediaType, Request, Router, get, post
from litestar.exceptions import NotFoundException
from litestar.handlers import HTTPRouteHandler
from litestar.params import JSONBody
from litestar.types import ASGIApp, Receive, Scope, Send
from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncSession

from apps.common.asgi import (
    BodyTooLarge,
    header,
    http_method,
    read_body,
    replaying_receive,
    send_problem,
)
from apps.common.contracts import Action, Call, Contract, Fragment, Query
from apps.common.db import DbSession
from apps.common.idempotency import run_idempotent
from apps.common.internal_client import IDEMPOTENCY_HEADER
from apps.common.internal_paths import INTERNAL_PREFIX, is_internal_path
from apps.common.limits import is_json_type
from apps.common.nonces import DEFERRED_NONCE, REPLAYED, DeferredNonce
from apps.common.signing import NONCE_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, verify

logger = logging.getLogger("rose.internal")

CONTRACT_KEY = "contract_call"
# An action route whose handler records a deferred nonce with its key's claim (run_idempotent).
CLAIMS_NONCE_KEY = "claims_nonce"


# Is this nonce new? (False: the same signed request was delivered before.)
RememberNonce = Callable[[str], Awaitable[bool]]
# The nonce as the action's own transaction records it (apps.common.nonces.DeferredNonce).
DeferNonce = Callable[[str], DeferredNonce]
# After a deferred nonce committed: delete, now and then, the nonces no longer presentable.
SweepNonces = Callable[[], Awaitable[None]]


def deferred_nonce(request: Request[Any, Any, Any]) -> DeferredNonce | None:
    """The nonce the signature middleware left for this action's key claim, if any."""
    nonce: DeferredNonce | None = request.scope.get("state", {}).get(DEFERRED_NONCE)
    return nonce


def _claims_nonce(scope: Scope) -> bool:
    handler = scope.get("route_handler")
    return isinstance(handler, HTTPRouteHandler) and bool(handler.opt.get(CLAIMS_NONCE_KEY))


def signature_middleware(
    secrets: str | Sequence[str],
    remember_nonce: RememberNonce | None = None,
    defer_nonce: DeferNonce | None = None,
    sweep_nonces: SweepNonces | None = None,
) -> Callable[[ASGIApp], ASGIApp]:
    """ASGI middleware factory that refuses unsigned or wrongly signed internal requests, and
    a second delivery of a signed action (its nonce was seen). An action that claims an
    idempotency key gets its nonce deferred to that claim (``defer_nonce``), and the nonce is
    recorded here after the request when the action's transaction did not commit it."""

    # The current secret, and those accepted during a rotation.
    accepted = (secrets,) if isinstance(secrets, str) else tuple(secrets)

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
            nonce = header(scope, NONCE_HEADER)
            reason = verify(
                accepted,
                http_method(scope),
                signed_path,
                body,
                header(scope, TIMESTAMP_HEADER),
                header(scope, SIGNATURE_HEADER),
                nonce=nonce,
                idempotency_key=header(scope, IDEMPOTENCY_HEADER),
            )
            if reason is not None:
                await send_problem(send, 401, f"Internal request refused: {reason}", path)
                return
            if http_method(scope) == "POST" and not is_json_type(
                header(scope, "content-type") or ""
            ):
                # An action reads its body as JSON whatever its type; the edge checks only a
                # body typed as JSON (a key given twice, depth): another is not read at all.
                given = header(scope, "content-type") or "a body without a type"
                await send_problem(
                    send, 415, f"An internal action takes application/json, not {given}", path
                )
                return
            # Reads have no effect to repeat; an action is accepted once per signed delivery.
            if http_method(scope) != "POST" or remember_nonce is None or nonce is None:
                await app(scope, replaying_receive(body, receive), send)
                return
            if (
                defer_nonce is not None
                and header(scope, IDEMPOTENCY_HEADER) is not None
                and _claims_nonce(scope)
            ):
                deferred = defer_nonce(nonce)
                scope.setdefault("state", {})[DEFERRED_NONCE] = deferred
                try:
                    await app(scope, replaying_receive(body, receive), send)
                finally:
                    if not deferred.committed:
                        # Refused, rolled back or answered from the key: used up all the same.
                        await _remember_after(remember_nonce, nonce, path)
                    elif sweep_nonces is not None:
                        await sweep_nonces()  # never raises: a failure is logged
                return
            if not await remember_nonce(nonce):
                await send_problem(send, 409, REPLAYED, path)
                return
            await app(scope, replaying_receive(body, receive), send)

        return check

    return middleware


# Records after a request, held until done: one that outlives its request (cancelled meanwhile)
# is still tried twice and logged, never left to the garbage collector.
_RECORDING: set[asyncio.Task[None]] = set()


async def _remember_after(remember_nonce: RememberNonce, nonce: str, path: str) -> None:
    """After the answer went out: a failure can no longer change it. Tried twice (unrecorded,
    the same signed request could run again within the signature's window), then logged; in a
    task of its own, so that a request ended (cancelled) meanwhile still records it."""
    task = asyncio.create_task(_remember_twice(remember_nonce, nonce, path))
    _RECORDING.add(task)
    task.add_done_callback(_RECORDING.discard)
    await asyncio.shield(task)


async def _remember_twice(remember_nonce: RememberNonce, nonce: str, path: str) -> None:
    for attempt in (1, 2):
        try:
            await remember_nonce(nonce)
            return
        except Exception:
            if attempt == 2:
                logger.warning(
                    "%s: the nonce of a request that did not commit was not recorded", path
                )


def only_contract_routes_serve_internal_paths(app: ASGIApp) -> ASGIApp:
    """App middleware (it runs once a route matched): an internal path served by anything but a
    route of the contract is not found. A public catch-all (blog's ``/{slug}/``) matches
    ``/internal`` itself; the identity middleware skips internal paths, so that handler would
    run with no identity (a 500), and the path is not one of the service's pages anyway."""

    async def guard(scope: Scope, receive: Receive, send: Send) -> None:
        handler = scope.get("route_handler")
        if (
            scope["type"] == "http"
            and is_internal_path(scope["path"])
            and not (isinstance(handler, HTTPRouteHandler) and CONTRACT_KEY in handler.opt)
        ):
            raise NotFoundException()
        await app(scope, receive, send)

    return guard


def internal_router(
    contract: Contract,
    secret: str | Sequence[str],
    handlers: Sequence[Any],
    remember_nonce: RememberNonce | None = None,
    defer_nonce: DeferNonce | None = None,
    sweep_nonces: SweepNonces | None = None,
) -> Router:
    """The service's internal routes: exactly the calls its contract declares."""
    served: dict[str, Call] = {}
    for handler in handlers:
        call = handler.opt.get(CONTRACT_KEY) if isinstance(handler, HTTPRouteHandler) else None
        if call is None:
            raise ValueError(f"{contract.service}: {handler} is not a route of its contract")
        _check_request_type(contract, handler, call)
        served[f"{type(call).__name__}:{call.name}"] = call
    declared = {f"{type(call).__name__}:{call.name}": call for call in contract.calls}
    missing = sorted(set(declared) - set(served))
    extra = sorted(set(served) - set(declared))
    if missing or extra:
        raise ValueError(
            f"{contract.service}'s internal routes differ from its contract: "
            f"missing {missing}, not declared {extra}"
        )
    return Router(
        path=INTERNAL_PREFIX,
        route_handlers=list(handlers),
        middleware=[signature_middleware(secret, remember_nonce, defer_nonce, sweep_nonces)],
        tags=[f"{contract.service} internal"],
    )


def _check_request_type(contract: Contract, handler: HTTPRouteHandler, call: Call) -> None:
    if not isinstance(call, Action):
        return
    hints = typing.get_type_hints(handler.fn, include_extras=True)
    body = typing.get_args(hints.get("data")) or (hints.get("data"),)
    if body[0] is not call.request:
        raise ValueError(
            f"{contract.service} {call.name}: the route takes {body[0]!r}, "
            f"the contract says {call.request!r}"
        )


def data_route(query: Query[Any, Any], **kwargs: Any) -> Callable[[Any], Any]:
    """``GET /internal/data/{name}``: read-only JSON."""
    return get(
        f"/data/{query.name}",
        operation_id=f"data_{query.name.replace('-', '_')}",
        opt={CONTRACT_KEY: query},
        **kwargs,
    )


def action_route(
    action: Action[Any, Any], *, claims_nonce: bool = False, **kwargs: Any
) -> Callable[[Any], Any]:
    """``POST /internal/actions/{name}``: JSON in, JSON out, 200 on success (replays included).
    ``claims_nonce``: the handler passes :func:`deferred_nonce` to ``run_idempotent``."""
    return post(
        f"/actions/{action.name}",
        operation_id=f"action_{action.name.replace('-', '_')}",
        status_code=200,
        opt={CONTRACT_KEY: action, CLAIMS_NONCE_KEY: claims_nonce},
        **kwargs,
    )


def fragment_route(fragment: Fragment[Any], **kwargs: Any) -> Callable[[Any], Any]:
    """``GET /internal/fragments/{name}``: an HTML snippet for another service's pages."""
    return get(
        f"/fragments/{fragment.name}",
        operation_id=f"fragment_{fragment.name.replace('-', '_')}",
        media_type=MediaType.HTML,
        opt={CONTRACT_KEY: fragment},
        **kwargs,
    )


def keyed_action(
    action: Action[Any, Any],
    keys_table: Table,
    effect: Callable[[AsyncSession, Any], Awaitable[Any]],
    **route_kwargs: Any,
) -> Any:
    """An action route whose effect honours ``Idempotency-Key`` (see :mod:`.idempotency`):
    the payload is validated as the contract's request type, ``effect(session, payload)`` runs
    at most once per key, and the result is committed with the key in one transaction."""

    async def handler(db_session: AsyncSession, request: Request, data: Any) -> Any:
        return await run_idempotent(
            db_session,
            keys_table,
            action=action.name,
            key=request.headers.get(IDEMPOTENCY_HEADER),
            payload=data,
            effect=lambda: effect(db_session, data),
            nonce=deferred_nonce(request),
        )

    # Real objects, not strings: the payload type is only known here, at run time.
    handler.__annotations__ = {
        "db_session": DbSession,
        "request": Request,
        "data": JSONBody[action.request],  # type: ignore[misc,name-defined]  # known at run time
        "return": action.answer,
    }
    handler.__name__ = handler.__qualname__ = action.name.replace("-", "_")
    handler.__doc__ = inspect.getdoc(effect)
    return action_route(action, claims_nonce=True, **route_kwargs)(handler)

"""Small ASGI helpers shared by the edge middlewares (signatures, CSRF, input limits)."""

from __future__ import annotations

import json
import logging
from typing import Any

from litestar import Request
from litestar.types import (
    HTTPRequestEvent,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    Receive,
    ReceiveMessage,
    Scope,
    Send,
)

from apps.common.problems import PROBLEM_MEDIA_TYPE, Problem, current_request_id, problem_body

logger = logging.getLogger("rose.errors")

MAX_BUFFERED_BODY = 1024 * 1024


class BodyTooLarge(Exception):
    pass


async def read_body(receive: Receive, limit: int = MAX_BUFFERED_BODY) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def replaying_receive(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the already-read body to the app, then defers to the real one."""
    sent = False

    async def replay() -> ReceiveMessage:
        nonlocal sent
        if not sent:
            sent = True
            return HTTPRequestEvent(type="http.request", body=body, more_body=False)
        return await receive()

    return replay


def http_method(scope: Scope) -> str:
    """The request's method (an HTTP scope's; websockets have none)."""
    return str(scope.get("method", "GET"))


def header(scope: Scope, name: str) -> str | None:
    wanted = name.lower().encode()
    for key, value in scope.get("headers", []):
        if key.lower() == wanted:
            return value.decode("latin-1")
    return None


async def send_problem(
    send: Send,
    status: int,
    detail: str,
    path: str,
    *,
    scope: Scope | None = None,
    field: str | None = None,
) -> None:
    """Answer with a problem+json directly from a middleware, before any handler runs; with
    the request's ``scope``, a browser of a service that has pages gets the themed page, as
    it does for every problem a handler raises. ``field``: the input it is about, in
    ``errors`` as a handler's :class:`Problem` names it."""
    errors = None
    if field is not None:
        errors = [{"field": field, "message": detail.removeprefix(f"{field}: ")}]
    # The request's id as a handler's problem carries it (the header and the log line have it).
    problem = problem_body(
        status, detail, instance=path, request_id=current_request_id.get(), errors=errors
    )
    page = _problem_page(scope, status, problem) if scope is not None else None
    if page is not None:
        payload, media_type = page, "text/html; charset=utf-8"
    else:
        payload = json.dumps(problem, separators=(",", ":")).encode()
        media_type = PROBLEM_MEDIA_TYPE
    headers = [
        (b"content-type", media_type.encode()),
        (b"content-length", str(len(payload)).encode()),
    ]
    if status == 401:
        headers.append((b"www-authenticate", b"Signature"))
    await send(HTTPResponseStartEvent(type="http.response.start", status=status, headers=headers))
    await send(HTTPResponseBodyEvent(type="http.response.body", body=payload, more_body=False))


def _problem_page(scope: Scope, status: int, problem: dict[str, Any]) -> bytes | None:
    """The themed page of ``problem`` when the request wants HTML and its app renders pages;
    None otherwise, and when the page cannot be made (the problem then goes out as JSON: a
    refusal must never turn into a 500)."""
    render = Problem.render_page
    if render is None or "app" not in scope:
        return None
    try:
        page = render(Request(scope), status, problem)
        if page is None:
            return None
        content = page.content
        return content.encode() if isinstance(content, str) else bytes(content)
    except Exception:
        logger.exception("could not render the page of a %d problem", status)
        return None

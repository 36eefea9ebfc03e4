"""Input limits at the edge, before any handler or parser sees a request: a bounded body, JSON
that is valid UTF-8 and not nested beyond reason, and no NUL character in any value (PostgreSQL
cannot store one). Each refusal is a problem naming what was wrong."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl

import msgspec
from litestar.types import ASGIApp, Receive, Scope, Send

from apps.common.asgi import (
    BodyTooLarge,
    header,
    http_method,
    read_body,
    replaying_receive,
    send_problem,
)

MAX_BODY_BYTES = 1024 * 1024
MAX_JSON_DEPTH = 64
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# JSON strings (with their escapes): brackets inside them do not nest anything.
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


def input_limits(app: ASGIApp) -> ASGIApp:
    async def check(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        path = scope["path"]
        query = scope.get("query_string", b"")
        if b"%00" in query or b"\x00" in query:
            name = _first_with_nul(query.decode("latin-1"))
            await send_problem(send, 422, f"{name}: contains a NUL character", path, scope=scope)
            return
        if http_method(scope) in _BODY_METHODS:
            try:
                body = await read_body(receive, MAX_BODY_BYTES)
            except BodyTooLarge:
                await send_problem(
                    send,
                    413,
                    f"request body larger than {MAX_BODY_BYTES} bytes",
                    path,
                    scope=scope,
                )
                return
            refusal = _check_body(header(scope, "content-type") or "", body)
            if refusal is not None:
                await send_problem(send, refusal[0], refusal[1], path, scope=scope)
                return
            receive = replaying_receive(body, receive)
        await app(scope, receive, send)

    return check


def _first_with_nul(encoded: str) -> str:
    for name, value in parse_qsl(encoded, keep_blank_values=True):
        if "\x00" in name or "\x00" in value:
            return name.replace("\x00", "") or "parameter"
    return "parameter"


def _check_body(content_type: str, body: bytes) -> tuple[int, str] | None:
    kind = content_type.split(";")[0].strip().lower()
    if kind == "application/x-www-form-urlencoded":
        if b"%00" in body or b"\x00" in body:
            return 422, f"{_first_with_nul(body.decode('latin-1'))}: contains a NUL character"
        return None
    if kind != "application/json" and not kind.endswith("+json"):
        return None
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return 400, "the body is not valid UTF-8"
    if body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH and (_depth(body) > MAX_JSON_DEPTH):
        return 400, f"the JSON body is nested deeper than {MAX_JSON_DEPTH} levels"
    if b"\\u0000" in body:
        try:
            decoded = msgspec.json.decode(body)
        except msgspec.DecodeError:
            return None  # not JSON at all: the parser says so
        where = next(_nul_paths(decoded, ""), None)
        if where is not None:
            return 422, f"{where or 'body'}: contains a NUL character"
    return None


def _depth(body: bytes) -> int:
    deepest = depth = 0
    for bracket in re.findall(rb"[\[\]{}]", _JSON_STRING.sub(b'""', body)):
        depth += 1 if bracket in (b"[", b"{") else -1
        deepest = max(deepest, depth)
    return deepest


def _nul_paths(value: Any, path: str) -> Iterator[str]:
    if isinstance(value, str):
        if "\x00" in value:
            yield path
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _nul_paths(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _nul_paths(item, f"{path}[{index}]")

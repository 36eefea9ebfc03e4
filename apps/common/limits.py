"""Input limits at the edge, before any handler or parser sees a request: a bounded body sent
as is (no content coding) in UTF-8; JSON, form fields and query parameters that are valid UTF-8;
JSON not nested beyond reason; and no NUL character in any value (PostgreSQL cannot store one).
Each refusal is a problem naming what was wrong."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, unquote_to_bytes

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
_RAW_NON_ASCII = re.compile(rb"[\x80-\xff]")


class Refusal(NamedTuple):
    status: int
    detail: str
    field: str | None = None


def input_limits(app: ASGIApp) -> ASGIApp:
    async def check(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        path = scope["path"]
        query = scope.get("query_string", b"")
        if b"%00" in query or b"\x00" in query:
            name = _first_with_nul(query.decode("latin-1"))
            await send_problem(
                send, 422, f"{name}: contains a NUL character", path, scope=scope, field=name
            )
            return
        checked_query = _utf8_pairs(query, "parameter")
        if isinstance(checked_query, Refusal):
            await send_problem(
                send,
                checked_query.status,
                checked_query.detail,
                path,
                scope=scope,
                field=checked_query.field,
            )
            return
        if checked_query != query:
            scope["query_string"] = checked_query
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
            encoding = _unread_encoding(
                header(scope, "content-encoding"), header(scope, "content-type")
            )
            if encoding is not None:
                await send_problem(send, 415, encoding, path, scope=scope)
                return
            checked = _check_body(header(scope, "content-type") or "", body)
            if isinstance(checked, Refusal):
                await send_problem(
                    send, checked.status, checked.detail, path, scope=scope, field=checked.field
                )
                return
            receive = replaying_receive(checked, receive)
        await app(scope, receive, send)

    return check


_UTF8 = frozenset({"utf-8", "utf8"})


def _unread_encoding(content_encoding: str | None, content_type: str | None) -> str | None:
    """Why a body cannot be read as declared: a content coding (gzip...) the services do not
    decode, or a charset other than UTF-8 (the body would be read as UTF-8 whatever it said)."""
    coding = (content_encoding or "").strip().lower()
    if coding not in ("", "identity"):
        return f"Content-Encoding {coding}: request bodies are read as sent; send it uncompressed"
    for parameter in (content_type or "").split(";")[1:]:
        name, _, value = parameter.partition("=")
        charset = value.strip().strip('"').lower()
        if name.strip().lower() == "charset" and charset not in _UTF8:
            return f"charset {charset}: request bodies are read as UTF-8; send UTF-8"
    return None


def _first_with_nul(encoded: str) -> str:
    for name, value in parse_qsl(encoded, keep_blank_values=True):
        if "\x00" in name or "\x00" in value:
            return name.replace("\x00", "") or "parameter"
    return "parameter"


def _check_body(content_type: str, body: bytes) -> Refusal | bytes:
    """The refusal of ``body``, or the body the app is to read."""
    kind = content_type.split(";")[0].strip().lower()
    if kind == "application/x-www-form-urlencoded":
        if b"%00" in body or b"\x00" in body:
            name = _first_with_nul(body.decode("latin-1"))
            return Refusal(422, f"{name}: contains a NUL character", name)
        return _utf8_pairs(body, "body")
    if kind != "application/json" and not kind.endswith("+json"):
        return body
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return Refusal(400, "the body is not valid UTF-8")
    if body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH and (_depth(body) > MAX_JSON_DEPTH):
        return Refusal(400, f"the JSON body is nested deeper than {MAX_JSON_DEPTH} levels")
    if b"\\u0000" in body:
        try:
            decoded = msgspec.json.decode(body)
        except msgspec.DecodeError:
            return body  # not JSON at all: the parser says so
        where = next(_nul_paths(decoded, ""), None)
        if where is not None:
            return Refusal(422, f"{where or 'body'}: contains a NUL character", where or "body")
    return body


def _utf8_pairs(encoded: bytes, whole: str) -> Refusal | bytes:
    """A URL-encoded form or query string whose every name and value is UTF-8 once
    percent-decoded, else the refusal naming the first field that is not (Litestar would read
    each bad byte as U+FFFD, and the handler store or look up that; ``whole`` names it when the
    name itself is unreadable). Litestar reads the raw bytes as Latin-1 before percent-decoding,
    so UTF-8 sent unencoded (``curl -d name=Café``) is percent-encoded here to be read as what
    it is."""
    if not encoded:
        return encoded  # most requests: no query string, no form
    for pair in encoded.split(b"&"):
        name, _, value = pair.partition(b"=")
        for part in (name, value):
            try:
                unquote_to_bytes(part.replace(b"+", b" ")).decode("utf-8")
            except UnicodeDecodeError:
                field = _readable(name) or whole
                return Refusal(400, f"{field}: is not valid UTF-8", field)
    return _RAW_NON_ASCII.sub(lambda byte: b"%%%02X" % byte[0][0], encoded)


def _readable(name: bytes) -> str:
    """A field's name as the client wrote it, or "" when it is not UTF-8 itself."""
    try:
        return unquote_to_bytes(name.replace(b"+", b" ")).decode("utf-8")
    except UnicodeDecodeError:
        return ""


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

"""Input limits at the edge, before any handler or parser sees a request: a bounded body sent
as is (no content coding) in UTF-8; JSON, form fields and query parameters that are valid UTF-8;
JSON not nested beyond reason; no NUL character in any value (PostgreSQL cannot store one); and
no field given more than once that is read as one value (a form field that is not a list, a
query parameter a handler reads as one value, a key of a JSON object). Each refusal is a
problem naming what was wrong.

A repeated field has no one reading: Litestar reads a form's first value, a query string's
last, and a JSON object's last duplicate key, so ``quantity=1&quantity=2`` added 1 and
``{"quantity":1,"quantity":2}`` added 2. Refusing it is the one rule that holds for every
reader. What is a list may repeat: a form field a handler declares it reads as one
(``opt={LIST_FIELDS: ("features",)}``, the checkboxes of one name), and a query parameter
typed as one. A query parameter nothing reads may repeat too (a tracking link's ``utm``: any
site ignores it): only the names the app reads as one value are refused when repeated, those
of its handlers' signatures (and their dependencies'), and those a handler reads from
``request.query_params`` itself, which it declares (``opt={READS_QUERY: ("q",)}``). A form's
fields are all the handler's to read, so every repeat there is refused but a list's. JSON has
arrays for lists, so a key is never repeated in an object."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import parse_qsl, unquote_to_bytes

import msgspec
from litestar import Litestar
from litestar.routes import HTTPRoute
from litestar.types import ASGIApp, Receive, Scope, Send

from apps.common.asgi import (
    BodyTooLarge,
    header,
    http_method,
    read_body,
    replaying_receive,
    send_problem,
)

if TYPE_CHECKING:
    from litestar._kwargs import KwargsModel
    from litestar.handlers import HTTPRouteHandler

MAX_BODY_BYTES = 1024 * 1024
MAX_JSON_DEPTH = 64
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# JSON strings (with their escapes): brackets inside them do not nest anything.
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_RAW_NON_ASCII = re.compile(rb"[\x80-\xff]")
# A route handler's ``opt`` key: the form fields it reads as lists (``form.getall``).
LIST_FIELDS = "list_fields"
# A route handler's ``opt`` key: the query parameters it reads as one value outside its
# signature (``request.query_params``), which the edge cannot see otherwise.
READS_QUERY = "reads_query"


class Refusal(NamedTuple):
    status: int
    detail: str
    field: str | None = None


def _handlers(app: Litestar) -> Iterator[tuple[HTTPRouteHandler, KwargsModel]]:
    for route in app.routes:
        if isinstance(route, HTTPRoute):
            yield from route.route_handler_map.values()


def list_fields(app: Litestar) -> frozenset[str]:
    """The form fields ``app``'s handlers declare they read as lists (:data:`LIST_FIELDS`),
    which may be given more than once. One set for the app, as the edge runs before routing:
    a field that is a list on one route may repeat on any (so no route should read that name
    as one value)."""
    names: set[str] = set()
    for handler, _ in _handlers(app):
        names.update(handler.opt.get(LIST_FIELDS, ()))
    return frozenset(names)


def query_parameters_read_once(app: Litestar) -> frozenset[str]:
    """The query parameters ``app`` reads as one value, which may not be given more than once:
    those of its handlers' signatures and their dependencies' that are not lists (Litestar's
    own kwargs model of each handler), and those a handler declares under :data:`READS_QUERY`.
    One set for the app, as the edge runs before routing. A name one handler reads as a list
    and another as one value could be neither refused nor let repeat: the app is refused."""
    once: dict[str, str] = {}
    lists: dict[str, str] = {}
    for handler, kwargs in _handlers(app):
        if "query" in kwargs.expected_reserved_kwargs and READS_QUERY not in handler.opt:
            raise ValueError(
                f"{handler}: takes the whole query; declare the parameters it reads as one "
                f"value under opt[{READS_QUERY!r}]"
            )
        for name in handler.opt.get(READS_QUERY, ()):
            once.setdefault(name, str(handler))
        for parameter in kwargs.expected_query_params:
            read_as = lists if parameter.is_sequence else once
            read_as.setdefault(parameter.field_alias, str(handler))
    for name in sorted(once.keys() & lists.keys()):
        raise ValueError(
            f"query parameter {name!r}: a list for {lists[name]} but one value for "
            f"{once[name]}; the edge cannot tell whether it may repeat"
        )
    return frozenset(once)


def input_limits(app: ASGIApp, lists: Iterable[str] = (), read_once: Iterable[str] = ()) -> ASGIApp:
    """The edge's checks around ``app``; ``lists``: the form fields that may repeat;
    ``read_once``: the query parameters that may not (any other may)."""
    repeatable = frozenset(lists)
    query_read_once = frozenset(read_once)

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
        checked_query = _utf8_pairs(query, "parameter", read_once=query_read_once)
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
            checked = _check_body(header(scope, "content-type") or "", body, repeatable)
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


def is_json_type(content_type: str) -> bool:
    """Whether a Content-Type (parameters allowed) is JSON: the bodies whose keys, depth and
    encoding this edge checks. A route that reads its body as JSON whatever its type must
    refuse the others, or a body sent untyped skips those checks (audit s20 L1)."""
    kind = content_type.split(";")[0].strip().lower()
    return kind == "application/json" or kind.endswith("+json")


def _check_body(
    content_type: str, body: bytes, lists: frozenset[str] = frozenset()
) -> Refusal | bytes:
    """The refusal of ``body``, or the body the app is to read (``lists``: the form fields that
    may repeat)."""
    kind = content_type.split(";")[0].strip().lower()
    if kind == "application/x-www-form-urlencoded":
        if b"%00" in body or b"\x00" in body:
            name = _first_with_nul(body.decode("latin-1"))
            return Refusal(422, f"{name}: contains a NUL character", name)
        return _utf8_pairs(body, "body", lists)
    if not is_json_type(kind):
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
    repeated = _repeated_key(body)
    if repeated is not None:
        return _given_twice(repeated)
    return body


def _given_twice(name: str) -> Refusal:
    return Refusal(422, f"{name}: given more than once", name)


class _Repeated(Exception):
    pass


class _Pairs(list[tuple[str, Any]]):
    """A JSON object as its pairs, in order, duplicates kept."""


def _refuse_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    decoded = dict(pairs)
    if len(decoded) != len(pairs):
        raise _Repeated
    return decoded


def _repeated_key(body: bytes) -> str | None:
    """Where a key is given twice in one object of the JSON ``body`` ("lines[1].qty"), if it
    is. The parser's hook sees every object's pairs as decoded (so ``"\\u0071"`` is "q"); only
    a body with a repeat is parsed again to say where."""
    if body.count(b":") < 2:
        return None  # no object with two keys
    try:
        json.loads(body, object_pairs_hook=_refuse_repeats)
    except _Repeated:
        return next(_repeat_paths(json.loads(body, object_pairs_hook=_Pairs), ""), "body")
    except (ValueError, RecursionError):
        return None  # not JSON: the parser says so
    return None


def _repeat_paths(value: Any, path: str) -> Iterator[str]:
    if isinstance(value, _Pairs):
        seen: set[str] = set()
        for key, _ in value:
            if key in seen:
                yield f"{path}.{key}" if path else key
            seen.add(key)
        for key, item in value:
            yield from _repeat_paths(item, f"{path}.{key}" if path else key)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _repeat_paths(item, f"{path}[{index}]")


def _utf8_pairs(
    encoded: bytes,
    whole: str,
    lists: frozenset[str] = frozenset(),
    *,
    read_once: frozenset[str] | None = None,
) -> Refusal | bytes:
    """A URL-encoded form or query string whose every name and value is UTF-8 once
    percent-decoded, else the refusal naming the first field that is not (Litestar would read
    each bad byte as U+FFFD, and the handler store or look up that; ``whole`` names it when the
    name itself is unreadable). Litestar reads the raw bytes as Latin-1 before percent-decoding,
    so UTF-8 sent unencoded (``curl -d name=Café``) is percent-encoded here to be read as what
    it is. A name given twice is refused too, unless it is one of ``lists``; given
    ``read_once`` (a query string's), only a name of those is."""
    if not encoded:
        return encoded  # most requests: no query string, no form
    seen: set[str] = set()
    for pair in encoded.split(b"&"):
        name, _, value = pair.partition(b"=")
        try:
            field = unquote_to_bytes(name.replace(b"+", b" ")).decode("utf-8")
            unquote_to_bytes(value.replace(b"+", b" ")).decode("utf-8")
        except UnicodeDecodeError:
            field = _readable(name) or whole
            return Refusal(400, f"{field}: is not valid UTF-8", field)
        if field in seen and (field in read_once if read_once is not None else field not in lists):
            return _given_twice(field)
        if field:
            seen.add(field)
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

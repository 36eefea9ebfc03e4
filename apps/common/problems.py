"""One error format everywhere: ``application/problem+json`` (RFC 9457), by Litestar's own
problem-details plugin.

Our errors are :class:`Problem` (a ``ProblemDetailsException``) and its subclasses; Litestar's
own (404, 405, validation: a path parameter that fails is a 404, the rest 422), a failed call
to another service and anything unexpected are mapped to problems by
:func:`problem_details_plugin`. Browsers get the same problem as a themed page
(the page renderer is given by the app factory); anything unexpected is logged once, with a
traceback, and never shown to the client.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from contextvars import ContextVar
from http import HTTPStatus
from typing import Any
from urllib.parse import quote

from litestar import Request, Response
from litestar.exceptions import (
    HTTPException,
    NotAuthorizedException,
    SerializationException,
    ValidationException,
)
from litestar.plugins.problem_details import (
    ProblemDetailsConfig,
    ProblemDetailsException,
    ProblemDetailsPlugin,
)
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from apps.common.internal_paths import is_internal_path

PROBLEM_MEDIA_TYPE = "application/problem+json"
# What a 503 tells the client to wait before trying again.
RETRY_AFTER_SECONDS = 5
logger = logging.getLogger("rose.errors")
# The request being answered (set by the app factory's request middleware), for the one log
# line of an unexpected error and for the problem the client sees.
current_request_id: ContextVar[str | None] = ContextVar("rose_request_id", default=None)

# Renders a problem as a page for browsers: (request, status, problem body) -> response or None
# (None: the client is not a browser, answer JSON).
PageRenderer = Callable[[Request[Any, Any, Any], int, dict[str, Any]], Response[Any] | None]


class Problem(ProblemDetailsException):
    """An error with an HTTP status and a clear detail, naming the field it is about."""

    status_code: int = 400
    default_title: str | None = None
    render_page: PageRenderer | None = None  # set once per process by the app factory

    def __init__(
        self,
        detail: str,
        *,
        status_code: int | None = None,
        field: str | None = None,
        title: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        self.field = field
        # What a person reads beside the field (the form shows it there); the detail always
        # names the field it is about, for programs.
        self.message = detail
        if field and field not in detail:
            detail = f"{field}: {detail}"
        errors = [{"field": field, "message": self.message}] if field else None
        body_extra = {key: value for key, value in extra.items() if value is not None}
        if errors and "errors" not in body_extra:
            body_extra["errors"] = errors
        super().__init__(
            detail=detail,
            status_code=status_code or type(self).status_code,
            headers=headers or {},
            extra=body_extra,
            title=title or self.default_title or HTTPStatus(status_code or self.status_code).phrase,
            type_="about:blank",
        )
        self.detail = detail

    @property
    def body_extra(self) -> dict[str, Any]:
        return dict(self.extra) if isinstance(self.extra, dict) else {}

    def to_response(self, request: Request[Any, Any, Any]) -> Response[Any]:
        if self.status_code >= 502:
            # A dependency failed (SumUp, another service, the database, the pool): the cause
            # was in the answer alone, the log had only the access line's status. (A 500 is
            # logged with its traceback where it is made.)
            logger.warning(
                "request %s (%s %s) answered %d: %s",
                current_request_id.get(),
                request.method,
                request.url.path,
                self.status_code,
                self.detail,
            )
        body = problem_body(
            self.status_code,
            self.detail,
            title=self.title,
            instance=request.url.path,
            request_id=current_request_id.get(),
            **self.body_extra,
        )
        renderer = Problem.render_page
        page = renderer(request, self.status_code, body) if renderer else None
        if page is not None:
            page.headers.update(self.headers or {})
            return page
        return Response(
            body, status_code=self.status_code, media_type=PROBLEM_MEDIA_TYPE, headers=self.headers
        )


class BadRequest(Problem):
    status_code = 400


class Unauthorized(Problem):
    status_code = 401


class Forbidden(Problem):
    status_code = 403


class NotFound(Problem):
    status_code = 404


# What a path segment may hold unescaped (RFC 3986 pchar, less the unreserved quote() keeps).
_PCHAR = "/:@!$&'()*+,;="


class NothingHere(NotFound):
    """A URL that names nothing: no route matches its path, or one does but a parameter of the
    path fails its type or pattern (``/product/Not_A_Slug/``, ``/order/0/``: no product and no
    order can be there). A 404 like any unknown thing, not a 422: there is no input to correct,
    only an address that leads nowhere. The detail names the path (percent-encoded: a newline
    in it is shown, not written) and, when there is one, what is wrong with its parameter."""

    def __init__(self, why: str | None = None) -> None:
        self.why = why
        super().__init__("Nothing is found here")

    def to_response(self, request: Request[Any, Any, Any]) -> Response[Any]:
        self.detail = f"Nothing is found at {quote(request.url.path, safe=_PCHAR)}"
        if self.why:
            self.detail += f": its {self.why}"
        return super().to_response(request)


class MethodRefused(Problem):
    """An address that does not take the request's method (a 405): the detail names the method
    and those the address takes (its Allow header, kept). A browser that reloads or bookmarks a
    form's address sends it a GET, and is told the form's button sends it."""

    status_code = 405

    def __init__(self, headers: dict[str, str]) -> None:
        allow = next((value for key, value in headers.items() if key.lower() == "allow"), "")
        # HEAD goes with GET, and OPTIONS every address takes: neither is worth naming.
        self.takes = [
            method.strip()
            for method in allow.split(",")
            if method.strip() and method.strip() not in ("HEAD", "OPTIONS")
        ]
        super().__init__(HTTPStatus(405).phrase, headers=headers)

    def to_response(self, request: Request[Any, Any, Any]) -> Response[Any]:
        path = quote(request.url.path, safe=_PCHAR)
        method = quote(request.method, safe="")
        if self.takes:
            self.detail = f"{path} does not take {method}: it takes {' or '.join(self.takes)}"
            if self.takes == ["POST"] and not is_internal_path(request.url.path):
                # A service's call has no form: the words are for a browser's reload.
                self.detail += ", the button of the form that sends it"
        else:
            self.detail = f"{path} does not take {method}"
        return super().to_response(request)


class Conflict(Problem):
    status_code = 409


class TooManyRequests(Problem):
    """A rate limit was hit; ``retry_after`` seconds until it is lifted (``Retry-After``)."""

    status_code = 429

    def __init__(self, detail: str, *, retry_after: int, **extra: Any) -> None:
        seconds = max(1, retry_after)
        super().__init__(
            detail, headers={"Retry-After": str(seconds)}, retry_after=seconds, **extra
        )


class UnsupportedMediaType(Problem):
    """A body of a type the route does not read (a JSON body to a form's route)."""

    status_code = 415


class InvalidInput(Problem):
    """Input that parses but breaks a rule; names the field."""

    status_code = 422


class FieldGivenTwice(InvalidInput):
    """A form field read as one value, given more than once: which one was meant is not guessed."""


class DependencyUnavailable(Problem):
    """A service or database this request needs cannot be reached: try again shortly."""

    status_code = 503

    def __init__(self, detail: str, **kwargs: Any) -> None:
        headers = {"Retry-After": str(RETRY_AFTER_SECONDS), **(kwargs.pop("headers", None) or {})}
        super().__init__(detail, headers=headers, **kwargs)


class BadGateway(Problem):
    """A dependency answered, but not in a way we can use."""

    status_code = 502


def problem_body(
    status: int, detail: str, *, title: str | None = None, instance: str | None = None, **extra: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    body.update({key: value for key, value in extra.items() if value is not None})
    return body


def problem_response(
    status: int,
    detail: str,
    *,
    title: str | None = None,
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response[dict[str, Any]]:
    return Response(
        problem_body(status, detail, title=title, instance=instance, **extra),
        status_code=status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=headers,
    )


# Litestar reports a request that does not validate with msgspec's message, which names the
# field only inside its text ("... - at `$.quantity`"): these patterns take the field out so
# the problem can name it (the plugin has no hook for that).
_MISSING_FIELD = re.compile(r"missing required field `([^`]+)`")
_AT_PATH = re.compile(r" - at `\$\.([^`\[]+)")
_UNKNOWN_FIELD = re.compile(r"unknown field `([^`]+)`")
_MISSING_PARAM = re.compile(r"Missing required (?:query|path|header|cookie) parameter '([^']+)'")


# msgspec's words for a broken rule, as a person would say them.
_IN_WORDS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^Expected `int(?: \| null)?`, got `\w+`$"), "must be a whole number"),
    (re.compile(r"^Expected `bool(?: \| null)?`, got `\w+`$"), "must be true or false"),
    (re.compile(r"^Invalid enum value .*$"), "is not one of the values it takes"),
    (re.compile(r"^Expected `int` >= (\d+)$"), r"must be \1 or more"),
    (re.compile(r"^Expected `int` <= (\d+)$"), r"must be \1 or less"),
    (re.compile(r"^Expected `str` of length <= (\d+)$"), r"must be at most \1 characters"),
    (re.compile(r"^Expected `str` of length >= (\d+)$"), r"must be at least \1 characters"),
    (re.compile(r"^Expected `str` matching regex .*$"), "is not in the expected form"),
    (re.compile(r"^Object missing required field .*$"), "is required"),
    (re.compile(r"^missing required (?:field|parameter).*$"), "is required"),
)


def in_words(message: str) -> str:
    for pattern, words in _IN_WORDS:
        if pattern.match(message):
            return pattern.sub(words, message)
    return message


def _field_errors(exc: ValidationException) -> list[dict[str, str]]:
    """Turn Litestar's validation details into ``[{"field", "message"}]``."""
    errors: list[dict[str, str]] = []
    if isinstance(exc.extra, list):
        for item in exc.extra:
            if not isinstance(item, dict):
                continue
            message = str(item.get("message", "invalid value"))
            key = str(item.get("key", ""))
            for pattern in (_MISSING_FIELD, _UNKNOWN_FIELD, _AT_PATH):
                match = pattern.search(message)
                if match:
                    key = match.group(1)
                    if pattern is _AT_PATH:
                        message = pattern.sub("", message).strip(" -")
                    break
            errors.append({"field": key or "body", "message": in_words(message)})
    detail = str(exc.detail or "")
    match = _MISSING_PARAM.search(detail)
    if match:
        errors.append({"field": match.group(1), "message": "is required"})
    return errors


class _InvalidRequest(Problem):
    """Litestar's refusal of a request's values: a 422 naming the fields, unless one of them
    is a parameter of the path (known only once the request is at hand), which makes the URL
    one that names nothing (:class:`NothingHere`)."""

    def __init__(self, detail: str, errors: list[dict[str, str]], beside_body: set[str]) -> None:
        super().__init__(detail, status_code=422, errors=errors or None)
        self.field_errors = errors
        self.beside_body = beside_body

    def to_response(self, request: Request[Any, Any, Any]) -> Response[Any]:
        # Empty before a route matched (nothing of the path was read as a parameter).
        path_params = request.scope.get("path_params") or {}
        in_path = [
            error
            for error in self.field_errors
            if error["field"] in self.beside_body and error["field"] in path_params
        ]
        if in_path:
            error = in_path[0]
            return NothingHere(f"{error['field']} {error['message']}").to_response(request)
        return super().to_response(request)


def _from_validation(exc: ValidationException) -> Problem:
    errors = _field_errors(exc)
    if errors:
        detail = "; ".join(f"{error['field']}: {error['message']}" for error in errors)
    else:
        detail = str(exc.detail)
    # Litestar tells a body's field ("source": "body") from a parameter's; a query parameter
    # named like a path's is told apart by the request (_InvalidRequest).
    beside_body = {
        str(item.get("key"))
        for item in (exc.extra if isinstance(exc.extra, list) else [])
        if isinstance(item, dict) and item.get("source") != "body"
    }
    return _InvalidRequest(f"Invalid input: {detail}", errors, beside_body)


def refused_form(error: Exception) -> Problem:
    """A form that does not convert to its struct (``msgspec.ValidationError``), refused as
    Litestar refuses it before the handler runs: the 422 naming the field, in words."""
    message, _, where = str(error).partition(" - at `$.")
    item = {"message": message, "key": where.rstrip("`") or "body", "source": "body"}
    return _from_validation(ValidationException(extra=[item]))


def said_to_a_person(problem: Problem) -> str:
    """A problem as a person reads it beside the form it refused: what was wrong with each
    field (the error page's words, apps/common/templates/error.html), else its detail."""
    errors = problem.body_extra.get("errors") or []
    if not errors:
        return problem.message
    sentences = []
    for error in errors:
        message = str(error["message"])
        if not message[:1].isupper():
            message = f"{str(error['field']).replace('_', ' ').capitalize()} {message}"
        sentences.append(message if message.endswith(".") else f"{message}.")
    return " ".join(sentences)


def _from_http(exc: HTTPException) -> Problem:
    status = exc.status_code
    detail = str(exc.detail) if exc.detail else HTTPStatus(status).phrase
    if status == 404 and detail == HTTPStatus(404).phrase:
        # Litestar's own (no route matches, a path parameter not of its route's type): what
        # was not found is the path.
        return NothingHere()
    if status == 400 and detail.startswith("JSON is malformed"):
        status = 422
    headers = dict(exc.headers or {})
    if status == 405:
        return MethodRefused(headers)
    if isinstance(exc, NotAuthorizedException):
        headers.setdefault("WWW-Authenticate", "Signature")
    return Problem(detail, status_code=status, headers=headers)


def _from_internal_call(exc: Exception) -> Problem:
    from apps.common.internal_client import InternalCallError  # it imports this module

    assert isinstance(exc, InternalCallError)
    if exc.http_status == 503:
        return DependencyUnavailable(str(exc), service=exc.service)
    return Problem(str(exc), status_code=exc.http_status, service=exc.service)


def _from_serialization(exc: SerializationException) -> Problem:
    return Problem(f"The body could not be read: {exc.detail}", status_code=400, field="body")


# SQLSTATE classes: 08 connection exceptions; 57P01-57P03 the server is shutting down or
# starting; 53300 too many connections. 22 data exceptions: a value PostgreSQL refuses.
_UNAVAILABLE = ("08", "57P01", "57P02", "57P03", "53300")
# 57014: a statement ran past its timeout (waiting on a lock held elsewhere, say); 55P03: it gave
# up waiting for a lock (a lock_timeout). The transaction rolled back, and the same request may
# well succeed in a moment.
_TIMED_OUT = ("57014", "55P03")
# 40P01: a deadlock; 40001: a serialization failure. PostgreSQL undid this transaction to let
# another go on, and the same request made again is expected to succeed: not an unexpected
# error. Still logged (a warning, with the statement): a deadlock is two paths taking the same
# locks in different orders, to be found and fixed (audit s21 F4).
_UNDONE = ("40P01", "40001")


def undone_by_conflict(exc: BaseException) -> bool:
    """Whether ``exc`` is PostgreSQL undoing the transaction for a conflict with another (a
    deadlock, a serialization failure; ``_UNDONE``): the same work again is expected to
    succeed. For a handler that answers such a case itself (then :func:`log_undone`)."""
    return isinstance(exc, DBAPIError) and (getattr(exc.orig, "sqlstate", None) or "") in _UNDONE


def log_undone(exc: DBAPIError) -> None:
    """The warning every undone request leaves (a deadlock is a lock order to be fixed)."""
    logger.warning(
        "database conflict, request %s undone (%s): %s",
        current_request_id.get(),
        getattr(exc.orig, "sqlstate", None),
        exc.orig,
    )


def _from_database(exc: DBAPIError) -> Problem:
    sqlstate = getattr(exc.orig, "sqlstate", None) or ""
    if sqlstate.startswith(_UNAVAILABLE) or (not sqlstate and exc.connection_invalidated):
        return DependencyUnavailable("The database is unavailable right now; try again shortly")
    if not sqlstate and isinstance(exc, OperationalError | InterfaceError):
        return DependencyUnavailable("The database is unavailable right now; try again shortly")
    if sqlstate in _TIMED_OUT:
        return DependencyUnavailable(
            "The database did not answer in time (busy, or waiting on other work); try again "
            "shortly"
        )
    if sqlstate in _UNDONE:
        log_undone(exc)
        return DependencyUnavailable(
            "The database undid this request's work to let another request go on (they "
            "conflicted); try again"
        )
    if sqlstate.startswith("22"):
        message = str(exc.orig).splitlines()[0] if exc.orig else "invalid value"
        return Problem(f"A value cannot be stored: {message}", status_code=422)
    return _from_unexpected(exc)


def _from_pool_timeout(_: PoolTimeout) -> Problem:
    # Every connection of the process's pool stayed busy for the pool's timeout.
    return DependencyUnavailable(
        "All of this service's database connections are busy; try again shortly"
    )


def _from_unexpected(exc: Exception) -> Problem:
    request_id = current_request_id.get()
    logger.error("unhandled error (request %s): %r", request_id, exc, exc_info=exc)
    detail = "An unexpected error happened; it has been logged"
    if request_id:
        detail += f" (request {request_id})"
    return Problem(detail + ".", status_code=500)


def problem_details_plugin() -> ProblemDetailsPlugin:
    """Litestar's problem-details plugin, with every error we can meet mapped to a problem."""
    from apps.common.internal_client import InternalCallError

    mapping: dict[type[Exception], Callable[[Any], ProblemDetailsException]] = {
        ValidationException: _from_validation,
        SerializationException: _from_serialization,
        HTTPException: _from_http,
        InternalCallError: _from_internal_call,
        DBAPIError: _from_database,
        PoolTimeout: _from_pool_timeout,
        Exception: _from_unexpected,
    }
    return ProblemDetailsPlugin(ProblemDetailsConfig(exception_to_problem_detail_map=mapping))

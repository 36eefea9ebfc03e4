"""One error format everywhere: ``application/problem+json`` (RFC 9457).

Every error a service answers goes through :func:`problem_response`, whether it is raised by our
own code (:class:`Problem` and its subclasses), by Litestar (404, 405, validation), or is
unexpected (500, logged with its traceback, never shown to the client).
"""

from __future__ import annotations

import logging
import re
from http import HTTPStatus
from typing import Any

from litestar import Request, Response
from litestar.exceptions import (
    HTTPException,
    NotAuthorizedException,
    ValidationException,
)
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

PROBLEM_MEDIA_TYPE = "application/problem+json"
logger = logging.getLogger("rose.errors")


class Problem(Exception):
    """An error with an HTTP status and a clear detail; rendered as problem+json."""

    status_code: int = 400
    title: str | None = None

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
        super().__init__(detail)
        self.detail = detail
        if status_code is not None:
            self.status_code = status_code
        if title is not None:
            self.title = title
        self.field = field
        self.headers = headers or {}
        self.extra = extra


class BadRequest(Problem):
    status_code = 400


class Unauthorized(Problem):
    status_code = 401


class Forbidden(Problem):
    status_code = 403


class NotFound(Problem):
    status_code = 404


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


class InvalidInput(Problem):
    """Input that parses but breaks a rule; names the field."""

    status_code = 422


class DependencyUnavailable(Problem):
    """A service or database this request needs cannot be reached."""

    status_code = 503


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


_MISSING_FIELD = re.compile(r"missing required field `([^`]+)`")
_AT_PATH = re.compile(r" - at `\$\.([^`\[]+)")
_UNKNOWN_FIELD = re.compile(r"unknown field `([^`]+)`")
_MISSING_PARAM = re.compile(r"Missing required (?:query|path|header|cookie) parameter '([^']+)'")


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
            errors.append({"field": key or "body", "message": message})
    detail = str(exc.detail or "")
    match = _MISSING_PARAM.search(detail)
    if match:
        errors.append({"field": match.group(1), "message": "missing required parameter"})
    return errors


def _validation_problem(request: Request, exc: ValidationException) -> Response[dict[str, Any]]:
    errors = _field_errors(exc)
    if errors:
        detail = "; ".join(f"{error['field']}: {error['message']}" for error in errors)
    else:
        detail = str(exc.detail)
    return problem_response(
        422,
        f"Invalid input: {detail}",
        instance=request.url.path,
        errors=errors or None,
    )


def handle_exception(request: Request, exc: Exception) -> Response[dict[str, Any]]:
    if isinstance(exc, Problem):
        errors = [{"field": exc.field, "message": exc.detail}] if exc.field else None
        # The detail always names the field it is about.
        detail = exc.detail
        if exc.field and exc.field not in detail:
            detail = f"{exc.field}: {detail}"
        return problem_response(
            exc.status_code,
            detail,
            title=exc.title,
            instance=request.url.path,
            headers=exc.headers,
            errors=errors,
            **exc.extra,
        )
    if isinstance(exc, ValidationException):
        return _validation_problem(request, exc)
    if isinstance(exc, HTTPException):
        status = exc.status_code
        detail = str(exc.detail) if exc.detail else HTTPStatus(status).phrase
        if status == 400 and detail.startswith("JSON is malformed"):
            status = 422
        headers = dict(exc.headers or {})
        if isinstance(exc, NotAuthorizedException):
            headers.setdefault("WWW-Authenticate", "Signature")
        return problem_response(status, detail, instance=request.url.path, headers=headers)
    # Imported here: the internal client module imports this one.
    from apps.common.internal_client import InternalCallError

    if isinstance(exc, InternalCallError):
        return problem_response(
            exc.http_status,
            str(exc),
            instance=request.url.path,
            service=exc.service,
        )
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem_response(
        HTTP_500_INTERNAL_SERVER_ERROR,
        "An unexpected error happened; it has been logged.",
        instance=request.url.path,
    )

"""OpenAPI that tells the truth: every operation documents the problems it can answer (any 4xx,
any 5xx) as ``application/problem+json``; and for public services, what browsers get besides:
the same problem as a page, pages where API clients get JSON, and the redirect (303) after a
form or a sign-in."""

from __future__ import annotations

from typing import Any

from litestar import Litestar
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIResponse, Schema
from litestar.openapi.spec.enums import OpenAPIType

PROBLEM = Schema(
    type=OpenAPIType.OBJECT,
    description="RFC 9457 problem details",
    required=["type", "title", "status", "detail"],
    properties={
        "type": Schema(type=OpenAPIType.STRING),
        "title": Schema(type=OpenAPIType.STRING),
        "status": Schema(type=OpenAPIType.INTEGER),
        "detail": Schema(type=OpenAPIType.STRING),
        "instance": Schema(type=OpenAPIType.STRING),
        "request_id": Schema(type=OpenAPIType.STRING),
        "errors": Schema(
            type=OpenAPIType.ARRAY,
            items=Schema(
                type=OpenAPIType.OBJECT,
                properties={
                    "field": Schema(type=OpenAPIType.STRING),
                    "message": Schema(type=OpenAPIType.STRING),
                },
            ),
        ),
    },
)
RANGES = {
    "4XX": "The request cannot be answered as asked: the problem names what was wrong",
    "5XX": "A dependency (database, another service, SumUp) is unavailable (503, with "
    "Retry-After) or failed (502); or an unexpected error, logged with the request id",
}
METHODS = ("get", "put", "post", "delete", "patch", "head", "options")
# Paths that only ever answer JSON (API clients, other services, probes, the schema itself).
JSON_ONLY = ("/internal/", "/api/", "/schema", "/healthz", "/readyz", "/auth/session")
HTML = Schema(type=OpenAPIType.STRING, description="A page for browsers")
REDIRECT = OpenAPIResponse(
    description="A browser is sent on (back to the form's page, or to the next page)"
)


def document_problems(app: Litestar, *, html: bool) -> None:
    """Add the problem responses to every operation of the app's schema (built once, here)."""
    content = {"application/problem+json": OpenAPIMediaType(schema=PROBLEM)}
    if html:
        content["text/html"] = OpenAPIMediaType(schema=Schema(type=OpenAPIType.STRING))
    for path, path_item in (app.openapi_schema.paths or {}).items():
        for method in METHODS:
            operation = getattr(path_item, method, None)
            if operation is None:
                continue
            responses = operation.responses if operation.responses is not None else {}
            if html and not path.startswith(JSON_ONLY):
                _add_browser_answers(
                    responses, redirects=method == "post" or path == "/auth/dev-login"
                )
            for code, description in RANGES.items():
                responses.setdefault(
                    code, OpenAPIResponse(description=description, content=dict(content))
                )
            for code in [code for code in responses if code[0] in "45" and code not in RANGES]:
                response = responses[code]
                if isinstance(response, OpenAPIResponse):
                    response.content = dict(content)
            operation.responses = responses


def _add_browser_answers(responses: dict[str, Any], *, redirects: bool) -> None:
    for code, response in responses.items():
        if code.startswith("2") and isinstance(response, OpenAPIResponse):
            content = dict(response.content or {})
            content.setdefault("text/html", OpenAPIMediaType(schema=HTML))
            response.content = content
    if redirects:
        responses.setdefault("303", REDIRECT)

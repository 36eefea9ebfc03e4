"""OpenAPI that tells the truth: every operation documents the problems it can answer (any 4xx,
any 5xx) as ``application/problem+json``; and for public services, what browsers get besides:
the same problem as a page, pages where API clients get JSON, and the redirect (303) after a
form or a sign-in. And the page that shows it, at ``/schema``: Swagger UI from the service's
own files (``SchemaViewer``)."""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

from litestar import Litestar, Request, Response
from litestar.datastructures import CacheControlHeader
from litestar.exceptions import NotFoundException
from litestar.openapi.plugins import (
    JsonRenderPlugin,
    OpenAPIRenderPlugin,
    SwaggerRenderPlugin,
    YamlRenderPlugin,
)
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIResponse, RequestBody, Schema
from litestar.openapi.spec.enums import OpenAPIType
from litestar.router import Router
from litestar.status_codes import HTTP_404_NOT_FOUND

from apps.common.static import static_files_router
from apps.common.web import FORM_TYPES

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


def document_form_encodings(app: Litestar) -> None:
    """A form a handler takes as a struct is read in either encoding (every app reads it with
    ``apps.common.web.read_form_body_first``, which ``check_form_routes`` enforces), but
    Litestar's schema lists only the one its route declares: each form body lists both, with
    the same schema."""
    for path_item in (app.openapi_schema.paths or {}).values():
        for method in METHODS:
            operation = getattr(path_item, method, None)
            body = getattr(operation, "request_body", None)
            if not isinstance(body, RequestBody) or not body.content:
                continue
            declared = next(
                (body.content[kind] for kind in FORM_TYPES if kind in body.content), None
            )
            if declared is None:
                continue
            for kind in FORM_TYPES:
                body.content.setdefault(kind, OpenAPIMediaType(schema=declared.schema))


def _add_browser_answers(responses: dict[str, Any], *, redirects: bool) -> None:
    for code, response in responses.items():
        if code.startswith("2") and isinstance(response, OpenAPIResponse):
            content = dict(response.content or {})
            content.setdefault("text/html", OpenAPIMediaType(schema=HTML))
            response.content = content
    if redirects:
        responses.setdefault("303", REDIRECT)


# The /schema page: Swagger UI from PyPI's swagger-ui-bundle-v2 (Swagger UI 5's dist files),
# served by the service itself. Litestar's default pages load their scripts, styles and fonts
# from CDNs, which the Content-Security-Policy (and a developer's offline machine) refuses: the
# page came out blank.
OWN_STATIC = Path(__file__).parent / "static"
ASSETS = "/static"


def swagger_ui_static() -> Path:
    """The folder of Swagger UI's files (its name carries Swagger UI's version; the package
    says which)."""
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError as missing:
        raise RuntimeError(
            "swagger-ui-bundle-v2 is not installed: pip install -e . brings it"
        ) from missing
    return Path(str(swagger_ui_path))


class SchemaViewer(SwaggerRenderPlugin):
    """Swagger UI at ``/schema`` (and ``/schema/swagger``) from this service's own
    ``/schema/static/``; it fetches ``/schema/openapi.json``. No inline script, so the page keeps
    the strict policy of every other page."""

    def __init__(self, schema_path: str) -> None:
        assets = f"{schema_path.rstrip('/')}{ASSETS}"
        super().__init__(
            js_url=f"{assets}/swagger-ui-bundle.js",
            css_url=f"{assets}/swagger-ui.css",
            standalone_preset_js_url=f"{assets}/swagger-ui-standalone-preset.js",
            path=["/", "/swagger"],
            favicon=f"<link rel='icon' type='image/png' href='{assets}/favicon-32x32.png'>",
        )
        self.init_js_url = f"{assets}/schema-viewer.js"

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        title = escape(str(openapi_schema["info"]["title"]))
        spec_url = escape(self.get_openapi_json_route(request))
        return f"""<!DOCTYPE html>
<html lang="en">
<head>
<title>{title}</title>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
{self.favicon}
<link rel="stylesheet" href="{self.css_url}">
{self.style}
</head>
<body>
<div id="swagger-ui" data-spec-url="{spec_url}"></div>
<script src="{self.js_url}"></script>
<script src="{self.init_js_url}"></script>
</body>
</html>
""".encode()

    def receive_router(self, router: Router) -> None:
        # The viewer's files instead of Swagger's OAuth2 redirect page (no OAuth here; it is an
        # inline script).
        router.register(
            static_files_router(
                ASSETS,
                [OWN_STATIC, swagger_ui_static()],
                CacheControlHeader(max_age=3600, private=True),
            )
        )


def _not_found_as_a_problem(response: Response[Any]) -> Response[Any]:
    # Litestar's schema router answers a path it has no page for with its own bare HTML 404
    # (whatever the Accept); raised instead, it is the app's problem / themed page.
    if response.status_code == HTTP_404_NOT_FOUND:
        raise NotFoundException()
    return response


def schema_router(schema_path: str) -> Router:
    """The router Litestar fills with the schema's pages (see :func:`schema_render_plugins`),
    whose unknown paths are not found like any other."""
    return Router(
        schema_path,
        route_handlers=[],
        include_in_schema=False,
        after_request=_not_found_as_a_problem,
    )


def schema_render_plugins(schema_path: str) -> list[OpenAPIRenderPlugin]:
    """The viewer at the schema's root, and the schema itself as JSON and YAML."""
    return [SchemaViewer(schema_path), JsonRenderPlugin(), YamlRenderPlugin()]

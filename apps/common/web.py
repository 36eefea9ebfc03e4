"""Public-web machinery shared by blog, market, cart, events and orders: templates, sign-in
routes, HTML rendering of problems for browsers, and public URLs of every service."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

from litestar import MediaType, Request, Response, get, post
from litestar.datastructures import State
from litestar.params import Parameter, QueryParameter
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect, Template
from litestar.template import TemplateConfig
from litestar.utils.scope.state import ScopeState
from markupsafe import Markup, escape

from apps.common.identity import (
    CSRF_FIELD,
    Identity,
    SessionCodec,
    identity_from_scope,
    new_anonymous_identity,
    set_identity,
)
from apps.common.internal_client import InternalCallError, call_action
from apps.common.problems import Forbidden
from apps.common.services import SERVICES
from apps.common.settings import Settings

COMMON_TEMPLATES = Path(__file__).parent / "templates"
logger = logging.getLogger("rose.web")

SignInHook = Callable[[Identity, Identity], Awaitable[None]]


# On sign-in, what the visitor gathered anonymously joins the user: cart lines, bookings and
# orders (an order made before sign-in shows in the user's list, and is cleared when paid).
ADOPT_ON_SIGN_IN = (
    ("cart", "adopt-cart-for-user"),
    ("events", "adopt-bookings-for-user"),
    ("orders", "adopt-orders-for-user"),
)


async def adopt_anonymous_on_sign_in(before: Identity, after: Identity) -> None:
    """A service that cannot be reached must not block signing in: it is logged, and what it
    holds stays with the anonymous session."""
    if after.user_id is None or before.user_id == after.user_id:
        return
    payload = {"user_id": after.user_id, "session_id": before.session_id}
    for service, action in ADOPT_ON_SIGN_IN:
        try:
            await call_action(service, action, payload)
        except InternalCallError as exc:
            logger.warning("sign-in: %s %s failed: %s", service, action, exc)


def public_url(settings: Settings, service: str, path: str = "/") -> str:
    """Public URL of ``path`` on ``service`` (``APP_URL_<SERVICE>``, else its dev port)."""
    base = settings.app_urls.get(service) or f"http://localhost:{SERVICES[service].dev_port}"
    return base.rstrip("/") + "/" + path.lstrip("/")


def blog_url(settings: Settings, path: str = "/") -> str:
    return public_url(settings, "blog", path)


def market_url(settings: Settings, path: str = "/") -> str:
    return public_url(settings, "market", path)


def cart_url(settings: Settings, path: str = "/") -> str:
    return public_url(settings, "cart", path)


def events_url(settings: Settings, path: str = "/") -> str:
    return public_url(settings, "events", path)


def orders_url(settings: Settings, path: str = "/") -> str:
    return public_url(settings, "orders", path)


def template_config(settings: Settings, service_templates: Path | None) -> TemplateConfig:
    directories = [path for path in (service_templates, COMMON_TEMPLATES) if path is not None]

    def add_globals(engine: JinjaTemplateEngine) -> None:
        env = engine.engine
        env.globals["service_name"] = settings.service
        env.globals["dev_mode"] = settings.is_dev
        env.globals["url_for_service"] = lambda service, path="/": public_url(
            settings, service, path
        )
        env.globals["nav_services"] = [name for name, spec in SERVICES.items() if spec.public]

    return TemplateConfig(
        directory=directories, engine=JinjaTemplateEngine, engine_callback=add_globals
    )


def wants_html(request: Request) -> bool:
    """True for browsers (HTML preferred), False for API clients asking for JSON."""
    accept = request.headers.get("accept", "")
    if "application/json" in accept or "application/problem+json" in accept:
        return False
    return "text/html" in accept


def page_context(request: Request, **context: Any) -> dict[str, Any]:
    """What every page template needs: who is asking (``{{ csrf_input }}``, the CSRF field of
    forms, is Litestar's own helper, filled with our token by the identity middleware)."""
    identity = identity_from_scope(request.scope)
    return {"identity": identity, "request": request, **context}


class PageTemplate(Template):
    """A template response whose ``{{ csrf_input }}`` is safe markup (Litestar's is a plain
    string, which autoescaping would print as text) carrying our CSRF token."""

    def create_template_context(self, request: Request) -> dict[str, Any]:
        context = super().create_template_context(request)
        context["csrf_input"] = csrf_input(request)
        return context


def csrf_input(request: Request) -> Markup:
    token = ScopeState.from_scope(request.scope).csrf_token or ""
    return Markup(f'<input type="hidden" name="{CSRF_FIELD}" value="{escape(token)}">')


def render(
    request: Request,
    template: str,
    *,
    status_code: int = 200,
    headers: dict[str, str] | None = None,
    **context: Any,
) -> Template:
    return PageTemplate(
        template_name=template,
        context=page_context(request, **context),
        status_code=status_code,
        media_type=MediaType.HTML,
        headers=headers,
    )


def degraded_headers(degraded: Sequence[str]) -> dict[str, str]:
    """``X-Rose-Degraded: likes``: the answer lacks what these dependencies would have added."""
    return {"X-Rose-Degraded": ", ".join(degraded)} if degraded else {}


async def redirect_back(request: Request, default: str) -> Redirect:
    """After a form post: back to the form's ``next`` field (same-site paths only)."""
    form = await request.form()
    target = form.get("next")
    return Redirect(
        path=safe_next(target if isinstance(target, str) else None, default), status_code=303
    )


def safe_next(target: str | None, default: str = "/") -> str:
    """Only same-site relative paths may be redirect targets (no open redirects)."""
    if not target or not target.startswith("/") or target.startswith("//"):
        return default
    return target


def auth_handlers(settings: Settings, sign_in_hooks: Sequence[SignInHook]) -> list[Any]:
    @get("/auth/session", operation_id="auth_session", tags=["auth"])
    async def session_info(request: Request) -> dict[str, Any]:
        identity = identity_from_scope(request.scope)
        codec: SessionCodec = request.app.state.session_codec
        return {
            "user_id": identity.user_id,
            "signed_in": identity.signed_in,
            "csrf_token": codec.csrf_token(identity),
        }

    @post("/auth/logout", operation_id="auth_logout", tags=["auth"], status_code=303)
    async def logout(request: Request) -> Redirect:
        # A fresh anonymous session: nothing of the signed-in session carries over.
        set_identity(request.scope, new_anonymous_identity(), request.app.state.session_codec)
        return Redirect(path="/", status_code=303)

    handlers: list[Any] = [session_info, logout]
    if settings.is_dev:

        @get("/auth/dev-login", operation_id="auth_dev_login", tags=["auth"])
        async def dev_login(
            request: Request,
            state: State,
            user_id: Annotated[int, Parameter(ge=1, le=2_147_483_647)],
            next_path: Annotated[str | None, QueryParameter(name="next")] = None,
        ) -> Response[Any]:
            before = identity_from_scope(request.scope)
            after = Identity(session_id=before.session_id, user_id=user_id)
            set_identity(request.scope, after, state.session_codec)
            for hook in sign_in_hooks:
                await hook(before, after)
            if wants_html(request) or next_path:
                return Redirect(path=safe_next(next_path), status_code=303)
            codec: SessionCodec = state.session_codec
            return Response({"user_id": user_id, "csrf_token": codec.csrf_token(after)})

        handlers.append(dev_login)
    return handlers


def require_signed_in(identity: Identity, what: str = "this page") -> int:
    if identity.user_id is None:
        raise Forbidden(f"Sign in to see {what}")
    return identity.user_id


def require_editor(settings: Settings, identity: Identity) -> int:
    user_id = require_signed_in(identity, "the admin pages")
    if user_id not in settings.editor_user_ids:
        raise Forbidden("Only editors may change this page")
    return user_id

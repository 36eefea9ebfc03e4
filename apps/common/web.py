"""Public-web machinery shared by the public services: templates, sign-in routes, problems
rendered as pages for browsers, and public URLs of the services (from the settings)."""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from os import PathLike
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import msgspec
from litestar import Litestar, MediaType, Request, Response, get, post
from litestar.connection import ASGIConnection
from litestar.datastructures import FormMultiDict
from litestar.enums import RequestEncodingType
from litestar.handlers import BaseRouteHandler, HTTPRouteHandler
from litestar.params import Body, BodyKwarg, Parameter, QueryParameter
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect, Template
from litestar.routes import HTTPRoute
from litestar.template import TemplateConfig
from litestar.types import ASGIApp, Receive, Scope, Send
from litestar.utils.scope.state import ScopeState
from markupsafe import Markup, escape

from apps.common.adoption import GIVEN_TO_ANOTHER_ACCOUNT, SIGN_OUT_PATH
from apps.common.asgi import header
from apps.common.contracts import Action, Fragment, IdentityParams, SignIn
from apps.common.identity import (
    CSRF_FIELD,
    MAX_USER_ID,
    STATE_KEY,
    Identity,
    SessionCodec,
    identity_from_scope,
    new_anonymous_identity,
    new_session_id,
    set_identity,
    take_notice,
)
from apps.common.inputs import URL_SLUG, whole_number
from apps.common.internal_client import InternalCallError, InternalClient
from apps.common.internal_paths import is_internal_path
from apps.common.limits import LIST_FIELDS
from apps.common.problems import (
    BadRequest,
    Conflict,
    DependencyUnavailable,
    FieldGivenTwice,
    Forbidden,
    InvalidInput,
    NothingHere,
    Problem,
    UnsupportedMediaType,
    refused_form,
)
from apps.common.settings import Settings

COMMON_TEMPLATES = Path(__file__).parent / "templates"
# Every list pages alike: ``page`` from 1, ``per_page`` from 1 to 100 (each list has its own
# default). Litestar refuses anything else before the handler runs: a 422 problem naming it.
MAX_PAGE = 100_000
MAX_PAGE_SIZE = 100
PageNumber = Annotated[int, Parameter(ge=1, le=MAX_PAGE)]
PageSize = Annotated[int, Parameter(ge=1, le=MAX_PAGE_SIZE)]
# A slug in a path or a query, checked before anything is looked up: a malformed one in a query
# is a 422 naming it; in a path, the URL names nothing (a 404, apps.common.problems.NothingHere).
SlugParam = Annotated[str, Parameter(pattern=URL_SLUG)]
NAV_KEY = "rose_nav"
# A whole number in a path (an ``{id:int}`` segment) as the query's and a form's are read:
# ASCII digits only. Litestar reads the segment with ``int()``, which also takes other
# scripts' digits, a sign, spaces and underscores: ``/order/%D9%A3/`` was order 3.
_PATH_NUMBER = re.compile(r"[0-9]+")
# How a handler fetches its page's navigation again (refresh_nav).
NAV_AGAIN_KEY = "rose_nav_again"
# A page waits no longer than this for a fragment of its navigation.
NAV_TIMEOUT_SECONDS = 0.5
logger = logging.getLogger("rose.web")


async def adopt_anonymous_on_sign_in(
    client: InternalClient,
    actions: Sequence[Action[SignIn, Any]],
    before: Identity,
    after: Identity,
) -> None:
    """What the visitor gathered anonymously (cart lines, bookings, orders: whatever the
    services' contracts adopt at sign-in) joins the user, before the new session is issued.
    A service that fails makes sign-in a 503 naming it (audit M1): the new session would leave
    the anonymous one behind, and with it what that service holds (a paid order out of the
    user's sight for good). Each service commits its own, so a refused sign-in may have moved
    part; all are idempotent, and signing in again as the same account finishes the move
    (another account is refused: apps.common.adoption).

    The visitor's things are never split between two accounts, however sign-ins of one session
    as two accounts interleave (audit s19c F1, and two at once: both can pass the check before
    either recorded anything). The services are asked in one order, the registry's, the same
    for every sign-in; the real pass asks the next one only once the one before answered 2xx,
    which a service does only after committing its record of the session as this account's,
    and the first refusal or failure ends it. So the services that gave the session to an
    account are a first part of that order, and as a service records one account per session,
    two accounts' parts would share the first service: only one account ever has any.
    Whichever adoption commits at the first service wins; the other stops there, having moved
    nothing, and its 409 says why. (The check below refuses, before anything moves, a session
    a later service recorded and an earlier one did not: left by a sign-in before this rule,
    or by a record the earlier service forgot after adoption.KEPT.)

    A session that every service gave to other accounts was adopted whole by a sign-in that
    finished (a cookie kept after signing in and planted in this browser, or left on a shared
    one): nothing of it is anonymous any more, and its anonymous writes are refused, so nothing
    in it is this visitor's. The sign-in moves nothing and goes on, with its new session."""
    if after.user_id is None or before.user_id == after.user_id:
        return
    request = SignIn(user_id=after.user_id, session_id=before.session_id)
    asked = [action for action in actions if client.knows(action.service)]
    for action in actions:
        if action not in asked:
            # Not part of this deployment (no URL configured): nothing of it to adopt.
            logger.warning("sign-in: %s is not configured; not asked", action.service)
    # First, every service is asked whether the session went to another account, so that
    # none moves anything for this one when another would refuse (the visitor's things split
    # between two accounts).
    refusing = await _ask_everywhere(
        client, asked, msgspec.structs.replace(request, check_only=True)
    )
    if asked and len(refusing) == len(asked):
        logger.warning(
            "sign-in: the session was adopted by other accounts everywhere; nothing to move"
        )
        return
    if refusing:
        # Some services gave the session to another account and some did not: that sign-in
        # did not finish, and what the others hold is its account's to finish (audit s19b F2).
        raise Conflict(
            "An earlier sign-in to another account from this browser did not finish "
            f"({', '.join(refusing)} already gave that account this browser's things): sign in "
            "as that account to finish it, or sign out first.",
            # Signing out gives even an anonymous browser a new session (the page's form).
            start_afresh=SIGN_OUT_PATH,  # START_AFRESH
        )
    await _adopt_everywhere(client, asked, request)


async def _ask_everywhere(
    client: InternalClient, actions: Sequence[Action[SignIn, Any]], request: SignIn
) -> list[str]:
    """Sign-in's check, asked of every service: the services that gave the session to another
    account. 503 naming those that could not answer (whether they did is unknown)."""
    refusing: list[str] = []
    failed: list[str] = []
    for action in actions:
        try:
            await client.call(action, request)
        except InternalCallError as exc:
            if exc.remote_status == 409 and exc.problem.get(GIVEN_TO_ANOTHER_ACCOUNT) is True:
                refusing.append(action.service)
                continue
            logger.warning("sign-in: %s %s failed: %s", action.service, action.name, exc)
            if exc.remote_status == 409:
                raise _refused(action, exc) from None
            failed.append(_failure(action, exc))
    if failed:
        raise _unfinished(failed)
    return refusing


async def _adopt_everywhere(
    client: InternalClient, actions: Sequence[Action[SignIn, Any]], request: SignIn
) -> None:
    """The adoptions, in order, each only once the one before answered 2xx: a service that
    refuses or fails ends the sign-in, so no later one moves anything for an account an
    earlier one did not give the session to (see adopt_anonymous_on_sign_in)."""
    for action in actions:
        try:
            await client.call(action, request)
        except InternalCallError as exc:
            logger.warning("sign-in: %s %s failed: %s", action.service, action.name, exc)
            if exc.remote_status == 409:
                raise _refused(action, exc) from None
            raise _unfinished([_failure(action, exc)]) from None


def _refused(action: Action[SignIn, Any], exc: InternalCallError) -> Conflict:
    """A service refused the sign-in for a reason of its own (the session was handed to
    another account): that is the answer, not an outage."""
    return Conflict(str(exc.problem.get("detail") or f"{action.service} refused the sign-in"))


def _failure(action: Action[SignIn, Any], exc: InternalCallError) -> str:
    if exc.remote_status is None:
        return f"{action.service} could not be reached"
    return f"{action.service} answered {exc.remote_status}"


def _unfinished(failed: Sequence[str]) -> DependencyUnavailable:
    return DependencyUnavailable(
        f"Signing in did not finish: {', '.join(failed)}. You are still signed out; what "
        "you gathered is safe, some of it may already be your account's. Please sign in "
        "again in a minute: that finishes it."
    )


def public_url(settings: Settings, service: str, path: str = "/") -> str:
    """Public URL of ``path`` on ``service`` (``APP_URL_<SERVICE>``, else its development URL)."""
    base = settings.public_urls.get(service)
    if base is None:
        raise ValueError(f"no public URL is known for {service!r}")
    return base.rstrip("/") + "/" + path.lstrip("/")


def template_config(settings: Settings, service_templates: Path | None) -> TemplateConfig:
    directories: list[Path | PathLike[Any] | str] = [
        path for path in (service_templates, COMMON_TEMPLATES) if path is not None
    ]

    def add_globals(engine: JinjaTemplateEngine) -> None:
        env = engine.engine
        env.globals["service_name"] = settings.service
        env.globals["dev_mode"] = settings.is_dev
        env.globals["url_for_service"] = lambda service, path="/": public_url(
            settings, service, path
        )
        env.globals["nav_services"] = list(settings.public_urls)

    return TemplateConfig(
        directory=directories, engine=JinjaTemplateEngine, engine_callback=add_globals
    )


def wants_html(request: Request) -> bool:
    """True for browsers (HTML preferred), False for API clients asking for JSON."""
    return accepts_html(request.headers.get("accept", ""))


def accepts_html(accept: str) -> bool:
    if "application/json" in accept or "application/problem+json" in accept:
        return False
    return "text/html" in accept


def client_network(request: Request) -> str | None:
    """The client as a limit per client counts it: its address (the proxy's X-Forwarded-For
    when the connection comes from a trusted proxy), an IPv6 client's /64, as one client is
    given a whole /64. None when the address is unknown."""
    if request.client is None:
        return None
    try:
        address = ipaddress.ip_address(request.client.host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network((address, 64), strict=False))
    return str(address)


def page_context(request: Request, **context: Any) -> dict[str, Any]:
    """What every page template needs: who is asking (``{{ csrf_input }}``, the CSRF field of
    forms, is Litestar's own helper, filled with our token by the identity middleware), the
    navigation's fragments (both edge layers: a route that does not exist has them too), and
    the notice a form post left for this page (shown once). A request those layers skip (an
    internal path) is nobody in particular."""
    state = request.scope.get("state", {})
    identity = state.get(STATE_KEY)
    return {
        "identity": identity,
        "request": request,
        "nav_items": state.get(NAV_KEY, []),
        "flash_notice": take_notice(request.scope),
        **context,
    }


async def nav_items(
    client: InternalClient, fragments: Sequence[Fragment[IdentityParams]], identity: Identity
) -> list[Markup]:
    """The navigation's fragments for ``identity``, fetched side by side with a short timeout
    and no retry; a provider that does not answer in time leaves its slot out."""

    async def one(fragment: Fragment[IdentityParams]) -> Markup | None:
        try:
            html = await client.fragment(
                fragment,
                IdentityParams(user_id=identity.user_id, session_id=None)
                if identity.signed_in
                else IdentityParams(session_id=identity.session_id),
                timeout=NAV_TIMEOUT_SECONDS,
                retry=False,
            )
        except InternalCallError as exc:
            logger.info("navigation: %s %s left out: %s", fragment.service, fragment.name, exc)
            return None
        # The provider's own HTML (it escapes what it writes), signed by our shared secret.
        return Markup(html)

    answers = await asyncio.gather(*(one(fragment) for fragment in fragments))
    return [answer for answer in answers if answer is not None]


def nav_middleware(
    client: InternalClient, fragments: Sequence[Fragment[IdentityParams]]
) -> Callable[[ASGIApp], ASGIApp]:
    """An edge layer (inside the identity middleware): a browser's request gets the
    navigation's fragments, whether a route matches it or not (a page that does not exist is a
    page of the site too)."""

    def middleware(app: ASGIApp) -> ASGIApp:
        async def fetch(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http" and not is_internal_path(scope["path"]):
                state = scope.setdefault("state", {})
                identity = state.get(STATE_KEY)
                if identity is not None and accepts_html(header(scope, "accept") or ""):
                    try:
                        state[NAV_KEY] = await nav_items(client, fragments, identity)
                    except Exception:  # the page goes on without its navigation, never a 500
                        logger.exception("navigation: the fragments could not be fetched")
                    state[NAV_AGAIN_KEY] = functools.partial(nav_items, client, fragments, identity)
            await app(scope, receive, send)

        return fetch

    return middleware


async def refresh_nav(request: Request) -> None:
    """Fetch the page's navigation again: its handler has just changed what a fragment shows
    (orders' return page, the cart a payment cleared); fetched before the handler ran, it
    would show the page's own change as not made yet."""
    state = request.scope.get("state", {})
    again = state.get(NAV_AGAIN_KEY)
    if again is None:
        return
    try:
        state[NAV_KEY] = await again()
    except Exception:  # the navigation fetched before stays
        logger.exception("navigation: the fragments could not be fetched again")


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


FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
# A form Litestar gives a handler as a struct (``data: Annotated[NewThing, FORM_BODY]``): read
# as every form is (URL-encoded or multipart, see :func:`read_form_body_first`).
FORM_BODY = Body(media_type=RequestEncodingType.URL_ENCODED)


async def form_of(request: Request) -> FormMultiDict:
    """The request's form; a body of another type is refused (415), never read as an empty
    form (whose absent fields would read as "cleared" or "unticked"). No body at all (a form
    of no fields, a bare button) is an empty form."""
    content_type = request.content_type[0]
    if content_type not in FORM_TYPES and (content_type or await request.body()):
        given = content_type or "a body without a type"
        raise UnsupportedMediaType(
            f"This form takes {' or '.join(FORM_TYPES)}, not {given}", field="body"
        )
    return await read_form(request)


def takes_form_body(handler: HTTPRouteHandler) -> bool:
    """Whether Litestar gives ``handler`` its form as a struct (``Body(media_type=...)``)."""
    data = handler.parsed_fn_signature.parameters.get("data")
    body = data.kwarg_definition if data is not None else None
    return isinstance(body, BodyKwarg) and body.media_type in (
        RequestEncodingType.URL_ENCODED,
        RequestEncodingType.MULTI_PART,
    )


# A form route's own page for a browser whose form it refuses (``opt[REFUSED_FORM_PAGE]``): an
# async ``(request, problem) -> response``, the form's page again with the problem beside it
# (None: refused as any other form is).
REFUSED_FORM_PAGE = "refused_form_page"
RefusedFormPage = Callable[[Request, Problem], Awaitable[Response[Any] | None]]


async def read_form_body_first(request: Request) -> Response[Any] | None:
    """Every service's ``before_request``: a handler given its form as a struct is given the
    form :func:`form_of` reads (audit s20 A2). Litestar decodes such a form by the type the
    route declares, whatever the request sent, so a multipart body was read as no fields at
    all ("name: is required", though it was sent) and JSON as a form; it takes the form read
    here instead, which it keeps in the request's scope. So every form route reads either
    encoding, field for field (a multipart field given twice refused as a URL-encoded one is
    at the edge), and refuses any other body (415).

    A route with a page for a refused form (``opt[REFUSED_FORM_PAGE]``) answers a browser's
    form that does not convert with that page: Litestar would refuse it before the handler
    runs, as an error page of its own, losing what was typed. API clients get its problem.

    Any other route's multipart form is checked for a field given twice here too."""
    handler = request.route_handler
    if not takes_form_body(handler):
        if request.content_type[0] == "multipart/form-data" and not is_internal_path(
            request.url.path
        ):
            # A field given twice is refused before the handler acts, as the edge refuses a
            # URL-encoded one: read after (a form's ``next``), it was refused once what the
            # form was sent for was done.
            await read_form(request)
        return None
    page: RefusedFormPage | None = handler.opt.get(REFUSED_FORM_PAGE)
    try:
        form = await form_of(request)
    except InvalidInput as problem:
        # A multipart field given twice (the edge refuses a URL-encoded one before routing).
        # A page that declines to show it (None) leaves it refused, never the handler run.
        shown = await page(request, problem) if page and wants_html(request) else None
        if shown is None:
            raise
        return shown
    if page is None or not wants_html(request):
        return None
    struct = handler.parsed_fn_signature.parameters["data"].type_
    try:
        msgspec.convert(dict(form.items()), struct, strict=False)
    except msgspec.ValidationError as error:
        return await page(request, refused_form(error))
    return None


def check_form_routes(app: Litestar) -> None:
    """Every handler given its form as a struct reads it through :func:`read_form_body_first`
    (the app's ``before_request``): one with a ``before_request`` of its own, which replaces
    the app's, would read a multipart form as empty again, so the app is refused."""
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler, _ in route.route_handler_map.values():
            if takes_form_body(handler) and handler.resolve_before_request() is not (
                read_form_body_first
            ):
                raise ValueError(
                    f"{handler}: takes a form as a struct but does not read it first with "
                    "read_form_body_first (its own before_request replaces the app's)"
                )


async def read_form(request: Request) -> FormMultiDict:
    """The request's form. A URL-encoded one was checked at the edge (every field UTF-8 and
    given once unless a list, see apps.common.limits); Litestar decodes a multipart field
    strictly, and a field that is not UTF-8 is the client's error, not a 500. A multipart
    field given more than once is refused here, as the edge refuses a URL-encoded one, unless
    the handler reads it as a list (its ``opt[LIST_FIELDS]``)."""
    try:
        form = await request.form()
    except UnicodeDecodeError:
        raise BadRequest("is not valid UTF-8", field="body") from None
    if request.content_type[0] == "multipart/form-data":
        lists = request.route_handler.opt.get(LIST_FIELDS, ())
        seen: set[str] = set()
        for name, _ in form.multi_items():
            if name in seen and name not in lists:
                # The detail names the field ("name: given more than once"), as the edge's
                # refusal of a URL-encoded one does; the message beside the field does not.
                raise FieldGivenTwice("given more than once", field=name)
            seen.add(name)
    return form


async def form_as_sent(request: Request) -> FormMultiDict:
    """The request's form, to show what was typed again beside a refusal: a field given more
    than once (perhaps the refusal itself) is read as its first value, not refused again
    (which made the page of the refusal an error page of its own)."""
    try:
        return await read_form(request)
    except InvalidInput:
        return await request.form()  # already read (and decoded) by read_form


async def _body_value(request: Request, name: str, default: Any = None) -> Any:
    """Field ``name`` of the request's form or JSON body (API clients); a body that is neither
    (or JSON that is not an object) is refused, never read as "nothing given"."""
    content_type = request.content_type[0]
    if content_type == "application/json":
        body = await request.json()
        if not isinstance(body, dict):
            raise InvalidInput(
                f'The body must be a JSON object, like {{"{name}": 2}}', field="body"
            )
        return body.get(name, default)
    if content_type in FORM_TYPES:
        return (await read_form(request)).get(name, default)
    if not await request.body():
        return default  # a button that posts nothing: the default
    raise UnsupportedMediaType(
        f"This takes a form or JSON, not {content_type or 'a body without a type'}",
        field="body",
    )


async def whole_number_field(
    request: Request, name: str, default: int | None = None, *, message: str | None = None
) -> int:
    """A whole number (ASCII digits, :func:`apps.common.inputs.whole_number`) from the form or
    JSON body; ``default`` when the field is absent (none: it is required)."""
    return whole_number(await _body_value(request, name, default), name, message)


async def optional_whole_number(request: Request, name: str) -> int | None:
    """A whole number from the form or JSON body, if it carries one (a blank field, or a body
    of another type, carries none)."""
    content_type = request.content_type[0]
    if content_type != "application/json" and content_type not in FORM_TYPES:
        return None
    value = await _body_value(request, name)
    return None if value is None or value == "" else whole_number(value, name)


_FLAGS = {"true": True, "1": True, "on": True, "false": False, "0": False, "off": False}


async def optional_flag(request: Request, name: str) -> bool | None:
    """A true/false field of the request's form or JSON body; None when it does not carry one."""
    content_type = request.content_type[0]
    if content_type == "application/json":
        body = await request.json()
        value = body.get(name) if isinstance(body, dict) else None
    elif content_type in FORM_TYPES:
        value = (await read_form(request)).get(name)
    else:
        return None
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _FLAGS:
        return _FLAGS[value.strip().lower()]
    raise InvalidInput(f"{name} must be true or false, not {str(value)[:40]!r}", field=name)


async def redirect_back(request: Request, default: str) -> Redirect:
    """After a form post: back to the form's ``next`` field (same-site paths only)."""
    form = await read_form(request)
    target = form.get("next")
    return see_other(safe_next(target if isinstance(target, str) else None, default))


def see_other(path: str) -> Redirect:
    """After a form post or a hand-over: 303 to ``path``, with an empty body typed as text (the
    handler's media type, JSON, would promise a body it does not have)."""
    return Redirect(path=path, status_code=303, media_type=MediaType.TEXT)


# What a browser's URL parser (and Python's urlsplit) drops or reads as a "/" in a URL: a tab,
# a newline or another control character, and a backslash; with them "/<tab>/evil.example" or
# "/\\evil.example" is "//evil.example", another site.
_NOT_IN_A_WAY_BACK = re.compile(r"[\x00-\x1f\x7f\\]")


# No page of ours has a longer address; a longer Location is one a browser may not follow.
LONGEST_WAY_BACK = 2000


def safe_next(target: str | None, default: str = "/") -> str:
    """Only same-site relative paths may be redirect targets (no open redirects): a path that
    starts with one "/", holds no character a URL parser drops or reads as a slash, and is
    no longer than an address of ours (:data:`LONGEST_WAY_BACK`)."""
    if (
        not target
        or len(target) > LONGEST_WAY_BACK
        or not target.startswith("/")
        or target.startswith("//")
        or _NOT_IN_A_WAY_BACK.search(target)
    ):
        return default
    return target


def auth_handlers(
    settings: Settings,
    codec: SessionCodec,
    client: InternalClient,
    sign_in: Sequence[Action[SignIn, Any]],
) -> list[Any]:
    @get("/auth/session", operation_id="auth_session", tags=["auth"])
    async def session_info(request: Request) -> dict[str, Any]:
        identity = identity_from_scope(request.scope)
        return {
            "user_id": identity.user_id,
            "signed_in": identity.signed_in,
            "csrf_token": codec.csrf_token(identity),
        }

    @post(SIGN_OUT_PATH, operation_id="auth_logout", tags=["auth"], status_code=303)
    async def logout(request: Request) -> Redirect:
        # A fresh anonymous session: nothing of the signed-in session carries over.
        set_identity(request.scope, new_anonymous_identity(), codec)
        return see_other("/")

    handlers: list[Any] = [session_info, logout]
    if settings.is_dev:

        @get("/auth/dev-login", operation_id="auth_dev_login", tags=["auth"])
        async def dev_login(
            request: Request,
            user_id: Annotated[int, Parameter(ge=1, le=MAX_USER_ID)],
            next_path: Annotated[str | None, QueryParameter(name="next")] = None,
        ) -> Response[Any]:
            before = identity_from_scope(request.scope)
            # A new session id at sign-in: whoever saw or planted the anonymous one has nothing.
            after = Identity(session_id=new_session_id(), user_id=user_id)
            # Issued only once every service has given the user what the anonymous one holds.
            await adopt_anonymous_on_sign_in(client, sign_in, before, after)
            set_identity(request.scope, after, codec)
            if wants_html(request) or next_path:
                return see_other(safe_next(next_path))
            return Response({"user_id": user_id, "csrf_token": codec.csrf_token(after)})

        handlers.append(dev_login)
    return handlers


def require_signed_in(identity: Identity, to: str = "see this page") -> int:
    """The signed-in user's id; anyone else is told to sign in ``to`` do what they asked."""
    if identity.user_id is None:
        raise Forbidden(f"Sign in to {to}")
    return identity.user_id


def require_editor(settings: Settings, identity: Identity) -> int:
    user_id = require_signed_in(identity, "see the admin pages")
    if user_id not in settings.editor_user_ids:
        raise Forbidden("Only editors may change this page")
    return user_id


def editors_only(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Guard of admin routes: it runs before the body is read, so a non-editor gets 403
    whatever they send."""
    from apps.common.app_factory import platform_of  # the factory imports this module

    require_editor(platform_of(connection.app).settings, identity_from_scope(connection.scope))


def html_problem_page(
    request: Request[Any, Any, Any], status: int, problem: dict[str, Any]
) -> Response[Any] | None:
    """A problem as a themed page, for browsers of a service that has pages; None otherwise."""
    engine = request.app.template_engine
    if engine is None or not wants_html(request):
        return None
    html = engine.get_template("error.html").render(
        **page_context(
            request,
            problem=problem,
            status=status,
            csrf_input=csrf_input(request),
            way_back=way_back(request),
        )
    )
    return Response(html, status_code=status, media_type=MediaType.HTML)


def way_back(request: Request[Any, Any, Any]) -> str | None:
    """The page of this site the request came from (its Referer: the page of the form that
    was sent, or of the link that was followed), for an error page's Back link; None when it
    came from another site, from nowhere, or from this very address."""
    referer = request.headers.get("referer")
    if not referer:
        return None
    try:
        parts = urlsplit(referer)
    except ValueError:  # not a URL at all ("http://[x/"): a header anyone can send
        return None
    if parts.netloc != request.headers.get("host"):
        return None
    back = safe_next(parts.path + (f"?{parts.query}" if parts.query else ""), "")
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return back if back and back != here else None


Problem.render_page = html_problem_page


def path_numbers_in_ascii(app: ASGIApp) -> ASGIApp:
    """App middleware (it runs once a route matched): a path whose whole-number parameter is
    not written in ASCII digits names nothing (:class:`NothingHere`, a 404 naming it), as any
    other malformed path parameter."""

    async def guard(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for name, written in _path_numbers(scope):
                if _PATH_NUMBER.fullmatch(written) is None:
                    raise NothingHere(f"{name} is not written in digits 0-9")
        await app(scope, receive, send)

    return guard


def _path_numbers(scope: Scope) -> list[tuple[str, str]]:
    """Each whole-number parameter of the matched route's path, as the path wrote it."""
    numbers = [
        name
        for name, value in (scope.get("path_params") or {}).items()
        if isinstance(value, int) and not isinstance(value, bool)
    ]
    if not numbers:
        return []
    # Segments as the router reads them. A path-typed parameter (``{rest:path}``) takes every
    # segment from its own on, so it is the template's last: any other segment is the path's
    # segment of the same place, whether the path has more than the template or not.
    template = [part for part in str(scope.get("path_template") or "").split("/") if part]
    given = [part for part in str(scope["path"]).split("/") if part]
    found = []
    for name in numbers:
        slot = f"{{{name}}}"
        place = template.index(slot) if slot in template else None
        if (
            place is None
            or place >= len(given)
            or (place == len(template) - 1 and len(given) != len(template))
        ):
            # Never checked in silence: a route this cannot read is a route to fix.
            raise RuntimeError(
                f"path_numbers_in_ascii cannot find {name} of {scope.get('path_template')!r} "
                f"in {scope['path']!r}"
            )
        found.append((name, given[place]))
    return found

"""Public routes of blog: the post list and post/page views (HTML, and JSON under /api), the
like toggle, and the page admin (page config form, market places attached to the page).

Slugs ``api``, ``auth``, ``schema``, ``healthz`` and ``readyz`` are taken by other routes.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response, get, post
from litestar.datastructures import FormMultiDict
from litestar.params import FromQuery, URLEncodedBody
from litestar.response import Template

from apps.blog import contract, service
from apps.blog.models import PAGE_CONTAINER
from apps.blog.settings import BlogSettings
from apps.common.deps import AppSettings, CurrentIdentity, DbSession, Internal
from apps.common.fdw import ProviderUnavailable
from apps.common.limits import LIST_FIELDS
from apps.common.problems import Conflict, InvalidInput
from apps.common.web import (
    PageNumber,
    SlugParam,
    degraded_headers,
    editors_only,
    form_of,
    optional_flag,
    redirect_back,
    render,
    require_signed_in,
    see_other,
    wants_html,
)


def admin_path(slug: str, *, saved: bool = False) -> str:
    return f"/{slug}/admin/page-config/" + ("?saved=1" if saved else "")


# -- reading ----------------------------------------------------------------------------------
@get("/", operation_id="post_list_html")
async def post_list(
    request: Request, db_session: DbSession, identity: CurrentIdentity, page: PageNumber = 1
) -> Template:
    posts = await service.list_published_posts(db_session, user_id=identity.user_id, page=page)
    pages = await service.list_published_pages(db_session)
    return render(
        request,
        "blog/index.html",
        headers=degraded_headers(posts.degraded),
        posts=posts,
        pages=pages,
    )


@get("/api/posts", operation_id="post_list")
async def api_post_list(
    db_session: DbSession, identity: CurrentIdentity, page: PageNumber = 1
) -> Response[service.PostList]:
    posts = await service.list_published_posts(db_session, user_id=identity.user_id, page=page)
    return Response(posts, headers=degraded_headers(posts.degraded))


@get("/{slug:str}/", operation_id="post_html")
async def post_page(
    request: Request,
    db_session: DbSession,
    identity: CurrentIdentity,
    settings: AppSettings,
    slug: SlugParam,
) -> Template:
    post = await service.get_published_post(db_session, slug, user_id=identity.user_id)
    return render(
        request,
        "blog/post.html",
        headers=degraded_headers(post.degraded),
        post=post,
        is_editor=identity.user_id in settings.editor_user_ids,
    )


@get("/api/posts/{slug:str}", operation_id="post")
async def api_post(
    db_session: DbSession, identity: CurrentIdentity, slug: SlugParam
) -> Response[service.PostDetail]:
    post = await service.get_published_post(db_session, slug, user_id=identity.user_id)
    return Response(post, headers=degraded_headers(post.degraded))


@post("/{slug:str}/like/", operation_id="post_like_toggle", status_code=200)
async def toggle_like(
    request: Request,
    db_session: DbSession,
    internal: Internal,
    identity: CurrentIdentity,
    slug: SlugParam,
) -> Any:
    user_id = require_signed_in(identity, "like posts")
    wanted = await optional_flag(request, "liked")
    liked = await service.like_post(db_session, internal, user_id, slug, wanted)
    if not wants_html(request):
        return {"liked": liked}
    return await redirect_back(request, f"/{slug}/")


# -- page admin -------------------------------------------------------------------------------
def update_from_form(page_id: int, form: FormMultiDict) -> contract.UpdatePageConfig:
    """The admin form as an update: ticked features on, the others off; blank merchant code or
    prefix clears it; the API key is write-only, so blank keeps it (for the stored merchant
    only: another merchant needs its own key, :func:`service.update_page_config`) and a tick
    removes it. A field the request does not carry is left as it is (the form always carries
    its features as an empty hidden value, so that unticking every box still says so)."""

    def text(name: str) -> str:
        value = form.get(name)
        return value.strip() if isinstance(value, str) else ""

    def cleared_if_blank(name: str) -> str | msgspec.UnsetType | None:
        return text(name) or None if name in form else service.UNSET

    features: dict[str, Any] | msgspec.UnsetType = service.UNSET
    if "features" in form:
        ticked = {value for value in form.getall("features") if isinstance(value, str) and value}
        features = {name: True for name in ticked} | {
            name: False for name in service.FEATURES if name not in ticked
        }
    api_key: str | msgspec.UnsetType | None = service.UNSET
    if form.get("clear_sumup_api_key") and text("sumup_api_key"):
        # Which one was meant is not guessed: removing it dropped the new key in silence.
        raise InvalidInput(
            "Give a new API key or tick Remove the API key, not both.", field="sumup_api_key"
        )
    if form.get("clear_sumup_api_key"):
        api_key = None
    elif text("sumup_api_key"):
        api_key = text("sumup_api_key")
    return contract.UpdatePageConfig(
        container_type=PAGE_CONTAINER,
        container_id=page_id,
        features=features,
        sumup_merchant_code=cleared_if_blank("sumup_merchant_code"),
        sumup_api_key=api_key,
        sumup_checkout_prefix=cleared_if_blank("sumup_checkout_prefix"),
    )


async def _admin_page(
    request: Request,
    db_session: DbSession,
    slug: str,
    *,
    saved: bool = False,
    error: InvalidInput | Conflict | None = None,
    form: FormMultiDict | None = None,
    status_code: int = 200,
) -> Template:
    page = await service.require_page(db_session, slug)
    config = await service.find_page_config(db_session, PAGE_CONTAINER, page.id)
    attachments, degraded = await service.page_attachments(db_session, page.id)
    markets = [item for item in attachments if item.child_type == "market"]
    attached = {item.child_id for item in markets}
    try:
        choices = [
            place for place in await service.market_places(db_session) if place.id not in attached
        ]
    except ProviderUnavailable:
        choices, degraded = [], [*degraded, "market"]
    return render(
        request,
        "blog/page_admin.html",
        status_code=status_code,
        headers=degraded_headers(degraded),
        page=page,
        config=config,
        markets=markets,
        market_choices=choices,
        degraded=degraded,
        features=service.FEATURE_LABELS,
        max_prefix=service.MAX_CHECKOUT_PREFIX,
        merchant_code_pattern=service.MERCHANT_CODE_PATTERN,
        prefix_pattern=service.CHECKOUT_PREFIX_PATTERN,
        saved=saved,
        error=error,
        form=form,
        # The version the form showed: the one it was sent with, when it is shown again.
        config_version=form.get("config_version", "") if form else service.config_version(config),
    )


@get(
    "/{slug:str}/admin/page-config/",
    operation_id="page_config_admin",
    guards=[editors_only],
)
async def page_config_admin(
    request: Request, db_session: DbSession, slug: SlugParam, saved: FromQuery[bool] = False
) -> Template:
    return await _admin_page(request, db_session, slug, saved=saved)


@post(
    "/{slug:str}/admin/page-config/",
    operation_id="page_config_update",
    guards=[editors_only],
    status_code=200,
    opt={LIST_FIELDS: ("features",)},  # one per ticked box, after the form's empty one
)
async def page_config_update(
    request: Request, db_session: DbSession, settings: AppSettings, slug: SlugParam
) -> Any:
    page_id = (await service.require_page(db_session, slug)).id
    form = await form_of(request)
    keep_days = BlogSettings.from_settings(settings).retired_sumup_key_days
    try:
        version = form.get("config_version")
        if isinstance(version, str):  # the form says which settings it showed
            await service.check_unchanged_since(db_session, PAGE_CONTAINER, page_id, version)
        config = await service.update_page_config(
            db_session, update_from_form(page_id, form), keep_days
        )
    except Conflict as problem:
        if not wants_html(request):
            raise
        # Another editor saved meanwhile: the form again, with what is stored now.
        await db_session.rollback()
        return await _admin_page(request, db_session, slug, error=problem, status_code=409)
    except InvalidInput as problem:
        if not wants_html(request):
            raise
        # Show the form again with what was typed (and not the empty config a first save's
        # check inserted: apps.blog.service.check_unchanged_since).
        await db_session.rollback()
        return await _admin_page(
            request, db_session, slug, error=problem, form=form, status_code=422
        )
    await db_session.commit()
    if not wants_html(request):
        return config
    return see_other(admin_path(slug, saved=True))


@post(
    "/{slug:str}/admin/menu-items/attach/",
    operation_id="menu_item_attach",
    guards=[editors_only],
    status_code=200,
)
async def attach_menu_item(
    request: Request,
    db_session: DbSession,
    internal: Internal,
    slug: SlugParam,
    data: URLEncodedBody[service.MenuItemForm],
) -> Any:
    try:
        relation = await service.attach_market_place(db_session, internal, slug, data)
    except InvalidInput as problem:
        if not wants_html(request):
            raise
        return await _admin_page(request, db_session, slug, error=problem, status_code=422)
    if not wants_html(request):
        return relation
    return see_other(admin_path(slug))


@post(
    "/{slug:str}/admin/menu-items/detach/",
    operation_id="menu_item_detach",
    guards=[editors_only],
    status_code=200,
)
async def detach_menu_item(
    request: Request,
    db_session: DbSession,
    internal: Internal,
    slug: SlugParam,
    data: URLEncodedBody[service.MenuItemForm],
) -> Any:
    detached = await service.detach_market_place(
        db_session, internal, slug, service.market_place_id(data.market_place_id)
    )
    if not wants_html(request):
        return {"detached": detached}
    return see_other(admin_path(slug))


handlers = [
    post_list,
    api_post_list,
    post_page,
    api_post,
    toggle_like,
    page_config_admin,
    page_config_update,
    attach_menu_item,
    detach_menu_item,
]

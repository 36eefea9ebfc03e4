"""Public routes of market: product lists and pages (HTML, and JSON under /api), like toggle,
and the editors' admin of market places (create, rename, delete)."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Request, Response, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import Parameter
from litestar.response import Template

from apps.common.app_factory import platform_of
from apps.common.db import request_session
from apps.common.deps import CurrentIdentity, DbSession, Internal
from apps.common.inputs import URL_SLUG
from apps.common.problems import (
    Conflict,
    FieldGivenTwice,
    Forbidden,
    InvalidInput,
    Problem,
    said_to_a_person,
)
from apps.common.web import (
    FORM_BODY,
    REFUSED_FORM_PAGE,
    PageNumber,
    PageSize,
    SlugParam,
    degraded_headers,
    editors_only,
    form_as_sent,
    optional_flag,
    redirect_back,
    render,
    require_signed_in,
    see_other,
    wants_html,
)
from apps.market import service
from apps.relations.contract import Relations


class ListingQuery(msgspec.Struct):
    page: int
    per_page: int
    liked: bool
    market: str | None


def provide_listing_query(
    page: PageNumber = 1,
    per_page: PageSize = service.DEFAULT_PAGE_SIZE,
    liked: Annotated[bool, Parameter()] = False,
    market: Annotated[str | None, Parameter(pattern=URL_SLUG)] = None,
) -> ListingQuery:
    return ListingQuery(page=page, per_page=per_page, liked=liked, market=market)


listing_dependencies = {"listing": Provide(provide_listing_query, sync_to_thread=False)}


async def _product_page(
    db_session: DbSession, identity: CurrentIdentity, listing: NamedDependency[ListingQuery]
) -> service.ProductPage:
    if listing.liked and not identity.signed_in:
        raise Forbidden("Sign in to see the products you liked")
    return await service.list_products(
        db_session,
        user_id=identity.user_id,
        page=listing.page,
        per_page=listing.per_page,
        liked_only=listing.liked,
        market_slug=listing.market,
    )


@get("/", operation_id="product_list_html", dependencies=listing_dependencies)
async def product_list(
    request: Request,
    db_session: DbSession,
    identity: CurrentIdentity,
    listing: NamedDependency[ListingQuery],
) -> Template:
    products = await _product_page(db_session, identity, listing)
    return render(
        request,
        "products.html",
        headers=degraded_headers(products.degraded),
        products=products,
        listing=listing,
        default_per_page=service.DEFAULT_PAGE_SIZE,
    )


@get("/api/products", operation_id="product_list", dependencies=listing_dependencies)
async def api_product_list(
    db_session: DbSession, identity: CurrentIdentity, listing: NamedDependency[ListingQuery]
) -> Response[service.ProductPage]:
    products = await _product_page(db_session, identity, listing)
    return Response(products, headers=degraded_headers(products.degraded))


@get("/product/{slug:str}/", operation_id="product_html")
async def product_page(
    request: Request, db_session: DbSession, identity: CurrentIdentity, slug: SlugParam
) -> Template:
    product, degraded = await service.get_product(db_session, slug, identity.user_id)
    return render(
        request,
        "product.html",
        headers=degraded_headers(degraded),
        product=product,
        degraded=degraded,
    )


@get("/api/products/{slug:str}", operation_id="product")
async def api_product(
    db_session: DbSession, identity: CurrentIdentity, slug: SlugParam
) -> Response[service.ProductView]:
    product, degraded = await service.get_product(db_session, slug, identity.user_id)
    return Response(product, headers=degraded_headers(degraded))


@post("/product/{slug:str}/like/", operation_id="product_like_toggle", status_code=200)
async def toggle_like(
    request: Request,
    db_session: DbSession,
    internal: Internal,
    identity: CurrentIdentity,
    slug: SlugParam,
) -> Any:
    user_id = require_signed_in(identity, "like products")
    wanted = await optional_flag(request, "liked")
    liked = await service.like_product(db_session, internal, user_id, slug, wanted)
    if wants_html(request):
        return await redirect_back(request, f"/product/{slug}/")
    return {"liked": liked}


# -- market places (editors only) -------------------------------------------------------------

PlaceIdParam = Annotated[int, Parameter(ge=1, le=2**63 - 1)]
PlaceFormBody = Annotated[service.PlaceForm, FORM_BODY]
ADMIN_PATH = "/admin/market-places/"


async def _admin_page(
    request: Request,
    db_session: DbSession,
    *,
    error: Problem | None = None,
    error_place: int | None = None,
    form: service.PlaceForm | None = None,
) -> Template:
    places, pages, degraded = await service.admin_places(db_session)
    return render(
        request,
        "market_places.html",
        status_code=error.status_code if error else 200,
        headers=degraded_headers(degraded),
        places=places,
        pages=pages,
        degraded=degraded,
        error=error,
        error_place=error_place,
        form=form or service.PlaceForm(),
        slug_pattern=service.SLUG_PATTERN,
        name_max=service.NAME_MAX,
    )


async def _answer_or_form(
    request: Request,
    db_session: DbSession,
    work: Any,
    *,
    error_place: int | None = None,
    form: service.PlaceForm | None = None,
) -> Any:
    """Run ``work``: JSON clients get its answer or the problem; browsers go back to the admin
    page, or see it again with the message beside the field (nothing was changed)."""
    try:
        answer = await work
    except (InvalidInput, Conflict) as problem:
        if not wants_html(request) or problem.field is None:
            raise
        await db_session.rollback()
        return await _admin_page(
            request, db_session, error=problem, error_place=error_place, form=form
        )
    if wants_html(request):
        return see_other(ADMIN_PATH)
    return answer


# What a field refused before the handler (too long, given twice) is told, in the admin's words.
REFUSED_FIELD_WORDS = {
    "name": f"The name may be at most {service.NAME_MAX} characters.",
    "slug": "The web address name may be at most 255 characters.",
    "page_id": service.CHOOSE_PAGE,
}


async def refused_place_form(request: Request, problem: Problem) -> Template | None:
    """A browser's form Litestar would refuse before the handler (apps.common.web.
    read_form_body_first): the admin page again, the message beside the field, what was typed
    kept (a rename's beside its market place). A rename of a market place the page does not
    list is refused as any other form (None): its message had no place to be shown beside."""
    errors = problem.body_extra.get("errors") or []
    field = str(errors[0]["field"]) if errors else problem.field
    # The admin's words say why a field does not convert (too long); a field given twice says so.
    said = said_to_a_person(problem)
    words = (
        said if isinstance(problem, FieldGivenTwice) else REFUSED_FIELD_WORDS.get(field or "", said)
    )
    session = request_session(platform_of(request.app).sessionmaker, request.scope)
    place_id = request.path_params.get("place_id")
    if place_id is not None and not (
        1 <= place_id <= 2**63 - 1 and await service.is_live_place(session, place_id)
    ):
        return None  # no such market place: Litestar's 404, or its problem with no page
    typed = await form_as_sent(request)
    form = service.PlaceForm(
        **{name: str(typed.get(name, "")) for name in service.PlaceForm.__struct_fields__}
    )
    return await _admin_page(
        request,
        session,
        error=InvalidInput(words, field=field),
        error_place=place_id,
        form=None if place_id else form,
    )


REFUSED_PAGE = {REFUSED_FORM_PAGE: refused_place_form}


@get(ADMIN_PATH, operation_id="market_places_admin", guards=[editors_only])
async def market_places_admin(request: Request, db_session: DbSession) -> Template:
    return await _admin_page(request, db_session)


@post(
    ADMIN_PATH,
    operation_id="market_place_create",
    guards=[editors_only],
    status_code=201,
    opt=REFUSED_PAGE,
)
async def create_market_place(
    request: Request, db_session: DbSession, relations: Relations, data: PlaceFormBody
) -> Any:
    async def work() -> service.MarketPlaceView:
        change = await service.create_place(db_session, relations, data)
        return await service.commit_place(db_session, relations, change)

    return await _answer_or_form(request, db_session, work(), form=data)


@post(
    ADMIN_PATH + "{place_id:int}/rename/",
    operation_id="market_place_rename",
    guards=[editors_only],
    status_code=200,
    opt=REFUSED_PAGE,
)
async def rename_market_place(
    request: Request, db_session: DbSession, place_id: PlaceIdParam, data: PlaceFormBody
) -> Any:
    async def work() -> service.MarketPlaceView:
        place = await service.rename_place(db_session, place_id, data.name)
        await db_session.commit()
        return place

    return await _answer_or_form(request, db_session, work(), error_place=place_id)


@post(
    ADMIN_PATH + "{place_id:int}/delete/",
    operation_id="market_place_delete",
    guards=[editors_only],
    status_code=200,
)
async def delete_market_place(
    request: Request, db_session: DbSession, relations: Relations, place_id: PlaceIdParam
) -> Any:
    async def work() -> service.MarketPlaceView:
        change = await service.delete_place(db_session, relations, place_id)
        return await service.commit_place(db_session, relations, change)

    return await _answer_or_form(request, db_session, work(), error_place=place_id)


handlers = [
    product_list,
    api_product_list,
    product_page,
    api_product,
    toggle_like,
    market_places_admin,
    create_market_place,
    rename_market_place,
    delete_market_place,
]

"""Public routes of market: product lists and pages (HTML, and JSON under /api), like toggle."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Request, Response, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import Parameter
from litestar.response import Template

from apps.common.deps import CurrentIdentity, DbSession, Internal
from apps.common.problems import Forbidden
from apps.common.web import degraded_headers, redirect_back, render, require_signed_in, wants_html
from apps.market import service

SlugParam = Annotated[str, Parameter(pattern=r"^[a-z0-9][a-z0-9-]{0,254}$")]


class ListingQuery(msgspec.Struct):
    page: int
    per_page: int
    liked: bool
    market: str | None


def provide_listing_query(
    page: Annotated[int, Parameter(ge=1, le=100_000)] = 1,
    per_page: Annotated[int, Parameter(ge=1, le=service.MAX_PAGE_SIZE)] = (
        service.DEFAULT_PAGE_SIZE
    ),
    liked: Annotated[bool, Parameter()] = False,
    market: Annotated[str | None, Parameter(pattern=r"^[a-z0-9][a-z0-9-]{0,254}$")] = None,
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
    liked = await service.toggle_like(db_session, internal, user_id, slug)
    if wants_html(request):
        return await redirect_back(request, f"/product/{slug}/")
    return {"liked": liked}


handlers = [product_list, api_product_list, product_page, api_product, toggle_like]

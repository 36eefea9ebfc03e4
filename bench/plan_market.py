"""The plan's design of "products I liked", for the liked-listing benchmark only.

market asks the likes service for the user's liked slugs over signed internal HTTP
(``liked-slugs``), then filters its own products with an IN list, in the order and with the total
of the real ``GET /api/products?liked=true``. Built on the same platform as market
(``create_base_app``, same settings, same session cookie, same helpers of
:mod:`apps.market.service`), and run as a real process:
``python -m bench.plan_market --port P`` with market's environment.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from litestar import Litestar, Response, get
from litestar.di import NamedDependency
from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from apps.common.app_factory import create_base_app
from apps.common.deps import CurrentIdentity, DbSession, Internal
from apps.common.internal_client import InternalClient
from apps.common.observability import configure_logging
from apps.common.problems import BadRequest, Forbidden
from apps.common.settings import Settings
from apps.likes import contract as likes
from apps.market.contract import CONTRACT
from apps.market.models import Product
from apps.market.public import ListingQuery, listing_dependencies
from apps.market.service import ProductPage, product_rows, to_view
from apps.registry import settings_for
from ops.stack.serve import serve


def liked_in_list_query(
    slugs: list[str], *, market_slug: str | None, limit: int, offset: int
) -> Select[Any]:
    """One page of the products among ``slugs``, ordered like market's listing, with the total
    in the same query (as ``apps.market.service.liked_products_query`` does)."""
    return (
        product_rows(market_slug)
        .add_columns(func.count().over().label("total"))
        .where(Product.slug.in_(slugs))
        .order_by(Product.title, Product.id)
        .limit(limit)
        .offset(offset)
    )


async def liked_products_over_http(
    session: AsyncSession,
    internal: InternalClient,
    *,
    user_id: int,
    page: int,
    per_page: int,
    market_slug: str | None,
) -> ProductPage:
    # One internal call: every slug the user likes (the likes service orders them by slug).
    slugs = await internal.query(
        likes.liked_slugs, likes.LikedBy(user_id=user_id, target_type="product")
    )
    if not slugs:
        return ProductPage([], page, per_page, 0, liked_only=True, degraded=[])
    query = liked_in_list_query(
        slugs, market_slug=market_slug, limit=per_page, offset=(page - 1) * per_page
    )
    rows = (await session.execute(query)).all()
    if rows:
        total = rows[0].total
    elif page > 1:
        # Past the last page the window count has no row to ride on: count separately.
        matching = product_rows(market_slug).where(Product.slug.in_(slugs))
        total = await session.scalar(select(func.count()).select_from(matching.subquery())) or 0
    else:
        total = 0
    items = [to_view(row, True) for row in rows]
    return ProductPage(items, page, per_page, total, liked_only=True, degraded=[])


@get("/api/products", operation_id="plan_product_list", dependencies=listing_dependencies)
async def api_liked_products(
    db_session: DbSession,
    internal: Internal,
    identity: CurrentIdentity,
    listing: NamedDependency[ListingQuery],
) -> Response[ProductPage]:
    if not listing.liked:
        raise BadRequest("this benchmark app answers ?liked=true only")
    if identity.user_id is None:
        raise Forbidden("Sign in to see the products you liked")
    products = await liked_products_over_http(
        db_session,
        internal,
        user_id=identity.user_id,
        page=listing.page,
        per_page=listing.per_page,
        market_slug=listing.market,
    )
    return Response(products)


def create_app(settings: Settings | None = None) -> Litestar:
    return create_base_app(
        CONTRACT,
        settings=settings or settings_for(CONTRACT),
        public_handlers=[api_liked_products],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    configure_logging()
    # Served exactly like ops/stack/serve.py serves market.
    serve(create_app(), args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())

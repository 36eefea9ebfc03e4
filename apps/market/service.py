"""Domain logic of market: product lists and pages, with like states read through FDW.

Likes live in db_likes; db_market sees them as the read-only foreign table ``likes.likes``.
"Products this user liked" is one SQL query: the remote scan is filtered by user and type (pushed
down), then joined locally with products by slug. Like states of a page of products come from
one remote query with the page's slugs as one array. Never a remote query per product.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

import msgspec
from sqlalchemy import Select, String, any_, bindparam, func, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession

from apps.common.db import end_read
from apps.common.fdw import ProviderUnavailable, remote_read
from apps.common.internal_client import InternalClient
from apps.common.problems import NotFound
from apps.likes import contract as likes
from apps.market.models import MarketPlace, Product, foreign_likes

DEFAULT_PAGE_SIZE = 24
MAX_PAGE_SIZE = 100


class MarketPlaceView(msgspec.Struct):
    id: int
    slug: str
    name: str
    container_type: str
    container_id: int


class ProductView(msgspec.Struct):
    id: int
    slug: str
    title: str
    image: str | None
    regular_price: Decimal
    special_price: Decimal | None
    price_currency: str
    market_place: MarketPlaceView
    # None when nobody is signed in, or when likes could not be read (see ``degraded``).
    is_liked: bool | None

    @property
    def price(self) -> Decimal:
        return self.special_price if self.special_price is not None else self.regular_price


class ProductPage(msgspec.Struct):
    items: list[ProductView]
    page: int
    per_page: int
    total: int
    liked_only: bool
    degraded: list[str]

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))


def product_rows(market_slug: str | None) -> Select[*tuple[Any, ...]]:
    """Live products of live market places, as plain rows (no ORM objects to build: list pages
    are the hot path)."""
    query = (
        select(
            Product.id,
            Product.slug,
            Product.title,
            Product.image,
            Product.regular_price,
            Product.special_price,
            Product.price_currency,
            MarketPlace.id.label("place_id"),
            MarketPlace.slug.label("place_slug"),
            MarketPlace.name.label("place_name"),
            MarketPlace.container_type,
            MarketPlace.container_id,
        )
        .join(MarketPlace, MarketPlace.id == Product.market_place_id)
        .where(Product.deleted_at.is_(None), MarketPlace.deleted_at.is_(None))
    )
    if market_slug is not None:
        query = query.where(MarketPlace.slug == market_slug)
    return query


def to_view(row: Any, liked: bool | None) -> ProductView:
    """A row of :func:`product_rows` as the API shows it."""
    return ProductView(
        id=row.id,
        slug=row.slug,
        title=row.title,
        image=row.image,
        regular_price=row.regular_price,
        special_price=row.special_price,
        price_currency=row.price_currency,
        market_place=MarketPlaceView(
            id=row.place_id,
            slug=row.place_slug,
            name=row.place_name,
            container_type=row.container_type,
            container_id=row.container_id,
        ),
        is_liked=liked,
    )


def liked_products_query(
    user_id: int, *, market_slug: str | None, limit: int, offset: int
) -> Select[*tuple[Any, ...]]:
    """One page of the products ``user_id`` liked, with the total in the same query.

    The user's likes are a MATERIALIZED CTE: one remote scan filtered by user and type, then a
    local join by slug. Without it the planner may pick a nested loop that runs a parameterised
    remote scan per product (foreign tables have no statistics), the N+1 trap over the network.
    """
    liked = (
        select(foreign_likes.c.target_slug)
        .where(foreign_likes.c.user_id == user_id, foreign_likes.c.target_type == "product")
        .cte("liked")
        .prefix_with("MATERIALIZED")
    )
    return (
        product_rows(market_slug)
        .add_columns(func.count().over().label("total"))
        .join(liked, liked.c.target_slug == Product.slug)
        .order_by(Product.title, Product.id)
        .limit(limit)
        .offset(offset)
    )


async def list_products(
    session: AsyncSession,
    *,
    user_id: int | None,
    page: int = 1,
    per_page: int = DEFAULT_PAGE_SIZE,
    liked_only: bool = False,
    market_slug: str | None = None,
) -> ProductPage:
    offset = (page - 1) * per_page
    if liked_only:
        if user_id is None:
            raise ValueError("liked_only needs a user")
        # No degraded answer exists for "my liked products": ProviderUnavailable propagates
        # (a 503 problem), so nothing needs isolating from a failure.
        async with remote_read(session, "likes", isolate=False):
            rows = (
                await session.execute(
                    liked_products_query(
                        user_id, market_slug=market_slug, limit=per_page, offset=offset
                    )
                )
            ).all()
            if rows:
                total = rows[0].total
            else:
                counted = liked_products_query(user_id, market_slug=market_slug, limit=1, offset=0)
                total = (
                    await session.scalar(select(func.count()).select_from(counted.subquery()))
                    if page > 1
                    else 0
                ) or 0
        items = [to_view(row, True) for row in rows]
        return ProductPage(items, page, per_page, total, liked_only=True, degraded=[])

    query = product_rows(market_slug)
    total = await session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = (
        await session.execute(
            query.order_by(Product.title, Product.id).limit(per_page).offset(offset)
        )
    ).all()
    liked, degraded = await _liked_among(session, user_id, [row.slug for row in rows])
    items = [to_view(row, _state(liked, row.slug)) for row in rows]
    return ProductPage(items, page, per_page, total, liked_only=False, degraded=degraded)


async def _liked_among(
    session: AsyncSession, user_id: int | None, slugs: list[str]
) -> tuple[set[str] | None, list[str]]:
    """The liked slugs among ``slugs`` (None when unknown), and the degraded dependencies."""
    if user_id is None:
        return None, []
    try:
        async with remote_read(session, "likes"):
            return await liked_slugs_among(session, user_id, slugs), []
    except ProviderUnavailable:
        return None, ["likes"]


def _state(liked: set[str] | None, slug: str) -> bool | None:
    return None if liked is None else slug in liked


async def get_product(
    session: AsyncSession, slug: str, user_id: int | None
) -> tuple[ProductView, list[str]]:
    row = (await session.execute(product_rows(None).where(Product.slug == slug))).first()
    if row is None:
        raise NotFound(f"Product {slug!r} does not exist")
    liked, degraded = await _liked_among(session, user_id, [row.slug])
    return to_view(row, _state(liked, row.slug)), degraded


async def require_product(session: AsyncSession, slug: str) -> None:
    found = await session.scalar(
        select(Product.id).where(Product.slug == slug, Product.deleted_at.is_(None))
    )
    if found is None:
        raise NotFound(f"Product {slug!r} does not exist")


async def toggle_like(
    session: AsyncSession, internal: InternalClient, user_id: int, slug: str
) -> bool:
    """Like or unlike a product: only products that exist can be liked (the likes service
    itself knows no products)."""
    await require_product(session, slug)
    await end_read(session)
    answer = await internal.call(
        likes.toggle,
        likes.LikeTarget(user_id=user_id, target_type="product", target_slug=slug),
        idempotency_key=f"market:toggle:{uuid.uuid4()}",
    )
    return answer.liked


def liked_slugs_query(user_id: int, slugs: list[str]) -> Select[str]:
    """Which of these products the user likes: one remote query, the page's keys as one array
    (pushed down as ``target_slug = ANY($1)``), never a query per product."""
    return select(foreign_likes.c.target_slug).where(
        foreign_likes.c.user_id == user_id,
        foreign_likes.c.target_type == "product",
        foreign_likes.c.target_slug == any_(bindparam("slugs", slugs, type_=ARRAY(String))),
    )


async def liked_slugs_among(session: AsyncSession, user_id: int, slugs: Iterable[str]) -> set[str]:
    keys = list(slugs)
    if not keys:
        return set()
    return set(await session.scalars(liked_slugs_query(user_id, keys)))

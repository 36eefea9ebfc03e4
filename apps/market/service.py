"""Domain logic of market: product lists and pages, with like states read through FDW.

Likes live in db_likes; db_market sees them as the read-only foreign table ``likes.likes``.
"Products this user liked" is one SQL query: the remote scan is filtered by user and type (pushed
down), then joined locally with products by slug. Like states of a page of products come from
one remote query with the page's slugs as one array. Never a remote query per product.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any

import msgspec
from sqlalchemy import Integer, Select, String, any_, bindparam, func, select, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from apps.common.db import end_read, lock_live_row, table_of
from apps.common.direct import DirectStatement
from apps.common.fdw import ProviderUnavailable, remote_read
from apps.common.inputs import one_line_name, whole_number
from apps.common.internal_client import InternalClient
from apps.common.problems import Conflict, InvalidInput, NotFound
from apps.likes import contract as likes
from apps.market.models import MarketPlace, Product, foreign_likes, foreign_pages
from apps.relations import contract as relations
from apps.relations.contract import (
    RelationsCall,
    RelationsLink,
    call_relations,
    commit_or_revert_relations,
    detach_everywhere,
    detach_left_behind,
)

DEFAULT_PAGE_SIZE = 24


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


# Core tables, not the mapped classes, in the list queries: a statement of ORM attributes goes
# through the ORM's compile and result machinery even when it returns plain rows.
PRODUCTS = table_of(Product)
PLACES = table_of(MarketPlace)


def product_rows(market_slug: str | None) -> Select[*tuple[Any, ...]]:
    """Live products of live market places, as plain rows (no ORM objects to build: list pages
    are the hot path)."""
    query = (
        select(
            PRODUCTS.c.id,
            PRODUCTS.c.slug,
            PRODUCTS.c.title,
            PRODUCTS.c.image,
            PRODUCTS.c.regular_price,
            PRODUCTS.c.special_price,
            PRODUCTS.c.price_currency,
            PLACES.c.id.label("place_id"),
            PLACES.c.slug.label("place_slug"),
            PLACES.c.name.label("place_name"),
            PLACES.c.container_type,
            PLACES.c.container_id,
        )
        .join(PLACES, PLACES.c.id == PRODUCTS.c.market_place_id)
        .where(PRODUCTS.c.deleted_at.is_(None), PLACES.c.deleted_at.is_(None))
    )
    if market_slug is not None:
        query = query.where(PLACES.c.slug == market_slug)
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


@functools.cache
def _liked_page(in_market: bool) -> Select[*tuple[Any, ...]]:
    """One page of the products ``liked_user`` liked (in the market ``liked_market`` when
    ``in_market``), with the total in the same query; built once each, with bound parameters
    (``page_limit``, ``page_offset``): constructing it and its cache key cost as much client
    CPU as running it.

    The user's likes are a MATERIALIZED CTE: one remote scan filtered by user and type, then a
    local join by slug. Without it the planner may pick a nested loop that runs a parameterised
    remote scan per product (foreign tables have no statistics), the N+1 trap over the network.
    """
    liked = (
        select(foreign_likes.c.target_slug)
        .where(
            foreign_likes.c.user_id == bindparam("liked_user"),
            foreign_likes.c.target_type == "product",
        )
        .cte("liked")
        .prefix_with("MATERIALIZED")
    )
    rows = product_rows(None)
    if in_market:
        rows = rows.where(PLACES.c.slug == bindparam("liked_market"))
    return (
        rows.add_columns(func.count().over().label("total"))
        .join(liked, liked.c.target_slug == PRODUCTS.c.slug)
        .order_by(PRODUCTS.c.title, PRODUCTS.c.id)
        .limit(bindparam("page_limit", type_=Integer))
        .offset(bindparam("page_offset", type_=Integer))
    )


@functools.cache
def _liked_page_direct(in_market: bool) -> DirectStatement:
    """:func:`_liked_page`, run directly on the session's connection (apps.common.direct)."""
    return DirectStatement(_liked_page(in_market))


def _liked_page_params(
    user_id: int, market_slug: str | None, limit: int, offset: int
) -> dict[str, Any]:
    return {
        "liked_user": user_id,
        "liked_market": market_slug,
        "page_limit": limit,
        "page_offset": offset,
    }


def liked_products_query(
    user_id: int, *, market_slug: str | None, limit: int, offset: int
) -> Select[*tuple[Any, ...]]:
    """The statement :func:`list_products` runs for a liked-only page, with its values bound
    (to print or explain it)."""
    return _liked_page(market_slug is not None).params(
        _liked_page_params(user_id, market_slug, limit, offset)
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
            liked_rows = await _liked_page_direct(market_slug is not None).rows(
                session, _liked_page_params(user_id, market_slug, per_page, offset)
            )
            if liked_rows:
                total = liked_rows[0].total
            else:
                await _require_place(session, market_slug)
                counted = liked_products_query(user_id, market_slug=market_slug, limit=1, offset=0)
                total = (
                    await session.scalar(select(func.count()).select_from(counted.subquery()))
                    if page > 1
                    else 0
                ) or 0
        items = [to_view(row, True) for row in liked_rows]
        return ProductPage(items, page, per_page, total, liked_only=True, degraded=[])

    query = product_rows(market_slug)
    total = await session.scalar(select(func.count()).select_from(query.subquery())) or 0
    if not total:
        await _require_place(session, market_slug)
    rows = (
        await session.execute(
            query.order_by(PRODUCTS.c.title, PRODUCTS.c.id).limit(per_page).offset(offset)
        )
    ).all()
    liked, degraded = await _liked_among(session, user_id, [row.slug for row in rows])
    items = [to_view(row, _state(liked, row.slug)) for row in rows]
    return ProductPage(items, page, per_page, total, liked_only=False, degraded=degraded)


async def _require_place(session: AsyncSession, market_slug: str | None) -> None:
    """A listing of one market place found nothing: a 404 when there is no such place (a
    typo, one deleted since), so that it does not read as a place with nothing for sale.
    Asked only then: a listing with rows needs no look of its own."""
    if market_slug is None:
        return
    found = await session.scalar(
        select(PLACES.c.id).where(PLACES.c.slug == market_slug, PLACES.c.deleted_at.is_(None))
    )
    if found is None:
        raise NotFound(f"There is no market place {market_slug!r}")


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
    row = (await session.execute(product_rows(None).where(PRODUCTS.c.slug == slug))).first()
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


async def like_product(
    session: AsyncSession, internal: InternalClient, user_id: int, slug: str, liked: bool | None
) -> bool:
    """Like or unlike a product (``liked``; None flips it): only products that exist can be
    liked (the likes service itself knows no products)."""
    await require_product(session, slug)
    await end_read(session)
    target = likes.LikeTarget(user_id=user_id, target_type="product", target_slug=slug)
    return await likes.change_like(internal, target, liked, caller=MARKET)


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


# -- market places (editors) ------------------------------------------------------------------
# Market owns its market places; relations records which page each sells through, kept in step
# the way events keeps its calendars (apps.relations.contract: call relations inside the open
# transaction, commit after, undo relations should the commit fail).
PAGE = "page"
MARKET = "market"
SLUG_PATTERN = "[a-z0-9]([a-z0-9-]*[a-z0-9])?"
NAME_MAX = 255

Slug = Annotated[str, msgspec.Meta(max_length=255)]
Name = Annotated[str, msgspec.Meta(max_length=NAME_MAX)]


class PlaceForm(msgspec.Struct):
    """The admin's form for a new market place (all text: the checks below say what is wrong)."""

    name: Name = ""
    slug: Slug = ""
    page_id: Annotated[str, msgspec.Meta(max_length=20)] = ""


class AdminPlace(msgspec.Struct):
    id: int
    slug: str
    name: str
    page_id: int
    page_title: str | None
    products: int


class PageChoice(msgspec.Struct):
    id: int
    title: str


@dataclass
class PlaceChange:
    place: MarketPlaceView
    relations_calls: list[RelationsCall]
    doing: str  # what the change is, in words (a problem names it)
    # A removal: the child relations must not keep, looked for again once committed.
    removed: relations.DetachChild | None = None


def _to_place_view(place: MarketPlace) -> MarketPlaceView:
    return MarketPlaceView(
        place.id, place.slug, place.name, place.container_type, place.container_id
    )


def _relation(place_id: int, page_id: int) -> relations.DetachChild:
    return relations.DetachChild(
        parent_type=PAGE, parent_id=page_id, child_type=MARKET, child_id=place_id
    )


def check_name(name: str) -> str:
    return one_line_name(name, "name", blank="Give the market place a name.")


async def check_name_free(session: AsyncSession, name: str, place_id: int | None = None) -> None:
    """Refuse a name another live market place has, in any case: blog's editors choose one to
    attach by its name, and buyers tell them apart by it. Checked, not indexed: places moved
    from the monolith may share one until an editor renames them. Two editors giving one name
    at once take turns (a transaction lock on the name), so the second sees the first's."""
    await session.execute(
        text("SELECT pg_advisory_xact_lock(hashtext('market:place-name:' || lower(:name)))"),
        {"name": name},
    )
    holder = await session.scalar(
        select(MarketPlace.name).where(
            # PostgreSQL's lower() on both sides, as the lock's (Python's differs: 'İ', 'Σ').
            func.lower(MarketPlace.name) == func.lower(name),
            MarketPlace.deleted_at.is_(None),
            MarketPlace.id != (place_id or 0),
        )
    )
    if holder is not None:
        raise Conflict(
            f"Another market place is already called {holder!r}: choose another name.",
            field="name",
        )


def check_slug(slug: str) -> str:
    slug = slug.strip()
    if not re.fullmatch(SLUG_PATTERN, slug):
        raise InvalidInput(
            "The web address name may use lowercase letters, digits and '-' (not at either end).",
            field="slug",
        )
    return slug


async def pages(session: AsyncSession) -> list[PageChoice]:
    """Blog's pages (through FDW), by title: what a market place may sell through."""
    async with remote_read(session, "blog"):
        rows = await session.execute(
            select(foreign_pages.c.id, foreign_pages.c.title).order_by(
                foreign_pages.c.title, foreign_pages.c.id
            )
        )
        return [PageChoice(id=row.id, title=row.title) for row in rows]


CHOOSE_PAGE = "Choose one of the pages."


async def check_page(session: AsyncSession, page_id: str) -> int:
    wanted = whole_number(page_id, "page_id", CHOOSE_PAGE)
    if wanted < 1 or wanted not in {page.id for page in await pages(session)}:
        raise InvalidInput(CHOOSE_PAGE, field="page_id")
    return wanted


async def admin_places(
    session: AsyncSession,
) -> tuple[list[AdminPlace], list[PageChoice], list[str]]:
    """Every market place with its page's title and how many products it sells; the pages to
    choose from; ``["blog"]`` as degraded when page titles cannot be read."""
    counts = (
        select(Product.market_place_id, func.count().label("products"))
        .where(Product.deleted_at.is_(None))
        .group_by(Product.market_place_id)
        .subquery()
    )
    rows = (
        await session.execute(
            select(MarketPlace, func.coalesce(counts.c.products, 0))
            .outerjoin(counts, counts.c.market_place_id == MarketPlace.id)
            .where(MarketPlace.deleted_at.is_(None))
            .order_by(MarketPlace.name, MarketPlace.id)
        )
    ).all()
    degraded: list[str] = []
    try:
        choices = await pages(session)
    except ProviderUnavailable:
        choices, degraded = [], ["blog"]
    titles = {page.id: page.title for page in choices}
    places = [
        AdminPlace(
            id=place.id,
            slug=place.slug,
            name=place.name,
            page_id=place.container_id,
            page_title=titles.get(place.container_id),
            products=products,
        )
        for place, products in rows
    ]
    return places, choices, degraded


async def is_live_place(session: AsyncSession, place_id: int) -> bool:
    """Whether market place ``place_id`` exists and is not removed (the admin lists it)."""
    found = await session.scalar(
        select(MarketPlace.id).where(MarketPlace.id == place_id, MarketPlace.deleted_at.is_(None))
    )
    return found is not None


async def _lock_place(session: AsyncSession, place_id: int) -> MarketPlace:
    return await lock_live_row(session, MarketPlace, place_id, "market place")


async def create_place(session: AsyncSession, link: RelationsLink, form: PlaceForm) -> PlaceChange:
    """Insert the market place on its page (flushed: it needs its id, and a taken slug is
    refused before relations is asked), then attach it there in relations."""
    name, slug = check_name(form.name), check_slug(form.slug)
    page_id = await check_page(session, form.page_id)
    # A removed market place keeps its address (its old links name it); the admin lists it no
    # more, so "another market place uses it" pointed at nothing the editor could see.
    if await session.scalar(
        select(MarketPlace.id).where(MarketPlace.slug == slug, MarketPlace.deleted_at.is_not(None))
    ):
        raise Conflict(
            f"A removed market place used the web address name {slug!r}, and addresses are not "
            "used again: choose another.",
            field="slug",
        )
    await end_read(session)
    await check_name_free(session, name)  # in the insert's transaction: its lock lasts till then
    place = MarketPlace(slug=slug, name=name, container_type=PAGE, container_id=page_id)
    session.add(place)
    try:
        await session.flush()
    except IntegrityError as exc:
        raise Conflict(
            f"Another market place already uses the web address name {slug!r}.", field="slug"
        ) from exc
    attach = RelationsCall(True, _relation(place.id, page_id), name)
    await call_relations(session, link, attach, f"adding market place {name!r}")
    return PlaceChange(_to_place_view(place), [attach], f"adding market place {name!r}")


async def rename_place(session: AsyncSession, place_id: int, name: str) -> MarketPlaceView:
    """A new name (blog and the shop read it from market: relations keeps no copy to update)."""
    place = await _lock_place(session, place_id)
    new_name = check_name(name)
    await check_name_free(session, new_name, place.id)
    place.name = new_name
    place.updated_at = func.now()
    await session.flush()
    return _to_place_view(place)


async def delete_place(session: AsyncSession, link: RelationsLink, place_id: int) -> PlaceChange:
    """Soft-delete an empty market place and detach it from every page in relations. One that
    still sells products is refused (they would vanish from every cart and page)."""
    place = await _lock_place(session, place_id)
    products = await session.scalar(
        select(func.count()).where(
            Product.market_place_id == place.id, Product.deleted_at.is_(None)
        )
    )
    if products:
        raise Conflict(
            f"{place.name} still sells {products} product{'s' if products != 1 else ''}: "
            "remove them first.",
            field="market_place",
        )
    doing = f"removing market place {place.name!r}"
    # From every page, not only its own: blog's page admin may have attached it to others.
    detached = await detach_everywhere(
        session, link, _relation(place.id, place.container_id), doing
    )
    place.deleted_at = func.now()
    await session.flush()
    return PlaceChange(
        _to_place_view(place), detached, doing, _relation(place.id, place.container_id)
    )


async def commit_place(
    session: AsyncSession, link: RelationsLink, change: PlaceChange
) -> MarketPlaceView:
    await commit_or_revert_relations(session, link, change.relations_calls, change.doing)
    if change.removed is not None:
        # Blog may have attached it meanwhile, having seen it live before this commit.
        await detach_left_behind(link, change.removed, change.doing)
    return change.place

"""Domain logic of cart: lines in, lines out, carts per page, and the checkout hand-off.

Titles and prices come from market's ``products`` view, bookings from events'
``pending_bookings``, page names from blog's ``page_configs``, all read through postgres_fdw
with one query per source (the page's keys as one array), bounded by a statement timeout.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

import msgspec
from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Table,
    and_,
    any_,
    bindparam,
    func,
    insert,
    literal_column,
    select,
    text,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as upsert
from sqlalchemy.ext.asyncio import AsyncSession

from apps.cart.contract import (
    Booking,
    CartActivity,
    CartRef,
    ClearCartForOrder,
    InboxAnswer,
    Line,
    PaidLine,
)
from apps.cart.models import (
    CartItem,
    CheckoutStart,
    ClearedOrder,
    InboxActivity,
    adopted_sessions,
    ended_holds,
    page_configs,
    pending_bookings,
    products,
)
from apps.common.admission import Admission, AdmissionRule, admit
from apps.common.adoption import (
    SessionAdoption,
    adopt_session,
    adopted_by,
    forget_old_adoptions,
    given_away,
    refuse_another_account,
    refuse_if_adopted,
)
from apps.common.db import end_read, table_of
from apps.common.fdw import ProviderUnavailable, remote_read
from apps.common.inputs import one_line_name
from apps.common.internal_client import InternalClient
from apps.common.problems import Conflict, DependencyUnavailable, InvalidInput, NotFound
from apps.events import contract as events
from apps.orders import contract as orders
from apps.orders.contract import BookingLine, CartLine, CreatedOrder, CreateOrder

MAX_QUANTITY = 99
PositiveId = Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]
SessionId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


@dataclass(frozen=True)
class Owner:
    """Whose cart: a signed-in user's, or an anonymous session's."""

    user_id: int | None
    session_id: str | None

    def __post_init__(self) -> None:
        if self.user_id is None and not self.session_id:
            raise InvalidInput("user_id or session_id is required", field="user_id")

    def clause(self) -> ColumnElement[bool]:
        if self.user_id is not None:
            return CartItem.user_id == self.user_id
        return and_(CartItem.session_id == self.session_id, CartItem.user_id.is_(None))

    def booking_clause(self, bookings: Table = pending_bookings) -> ColumnElement[bool]:
        """Whose bookings, in events' ``bookings`` view (pending or ended holds)."""
        if self.user_id is not None:
            return bookings.c.user_id == self.user_id
        return and_(bookings.c.session_id == self.session_id, bookings.c.user_id.is_(None))


class PageCart(msgspec.Struct):
    page_id: int | None
    page_slug: str | None
    page_title: str
    lines: list[Line]
    bookings: list[Booking]
    # The amount per currency; ``total`` only when there is one currency (never a sum of two).
    totals: dict[str, Decimal]
    total: Decimal | None
    count: int
    # Whether the page has a cart of its own (``/page/<slug>/``, its checkout): its config's
    # "cart" feature, unless its editor switched it off.
    own_cart: bool = True


class EndedHold(msgspec.Struct):
    """A booking that left the cart in the last hour because its hold ended (events released
    it): what the cart tells its buyer, unless they booked it again."""

    kind: str
    id: int
    title: str
    starts_at: datetime
    ended_at: datetime
    page_id: int | None
    quantity: int = 1
    # The bookings the line stands for (``id`` is the first, the latest to end).
    ids: list[int] = []


class CartView(msgspec.Struct):
    pages: list[PageCart]
    count: int
    totals: dict[str, Decimal]
    total: Decimal | None
    currency: str | None
    degraded: list[str]
    # Filled where the buyer reads the cart (its pages, its API), not for other services.
    ended_holds: list[EndedHold] = []

    @property
    def lines(self) -> list[Line]:
        return [line for page in self.pages for line in page.lines]

    @property
    def bookings(self) -> list[Booking]:
        return [booking for page in self.pages for booking in page.bookings]


# -- reading ----------------------------------------------------------------------------------
async def _active_items(
    session: AsyncSession, owner: Owner, page_id: int | None = None
) -> list[CartItem]:
    query = select(CartItem).where(owner.clause(), CartItem.deleted_at.is_(None))
    if page_id is not None:
        query = query.where(CartItem.market_place_container_id == page_id)
    return list(await session.scalars(query.order_by(CartItem.id)))


async def _merged_into(session: AsyncSession, line_ids: list[int]) -> dict[int, list[int]]:
    """For each live line, the anonymous lines sign-in merged into it that no paid order has
    cleared yet."""
    if not line_ids:
        return {}
    rows = await session.execute(
        select(CartItem.merged_into_id, CartItem.id)
        .where(
            CartItem.merged_into_id == any_(bindparam("lines", line_ids, type_=ARRAY(BigInteger))),
            CartItem.order_id.is_(None),
        )
        .order_by(CartItem.id)
    )
    merged: dict[int, list[int]] = {}
    for into, line_id in rows:
        if into is not None:  # the query selects only merged lines
            merged.setdefault(into, []).append(line_id)
    return merged


async def _products(session: AsyncSession, ids: list[int]) -> dict[int, Any]:
    if not ids:
        return {}
    async with remote_read(session, "market"):
        rows = await session.execute(
            select(products).where(
                products.c.id == any_(bindparam("ids", ids, type_=ARRAY(products.c.id.type)))
            )
        )
        return {row.id: row for row in rows}


async def _bookings(session: AsyncSession, owner: Owner, page_id: int | None) -> list[Booking]:
    query = select(pending_bookings).where(owner.booking_clause())
    if page_id is not None:
        query = query.where(
            pending_bookings.c.container_type == "page", pending_bookings.c.container_id == page_id
        )
    async with remote_read(session, "events"):
        rows = (
            await session.execute(
                query.order_by(pending_bookings.c.starts_at, pending_bookings.c.id)
            )
        ).all()
    # Tickets of one entry and ticket type (same title, price, calendar and start) are one
    # line with a quantity; an entry is a line of its own.
    grouped: dict[tuple[Any, ...], Booking] = {}
    for row in rows:
        page = row.container_id if row.container_type == "page" else None
        key: tuple[Any, ...] = (
            ("ticket", row.title, row.price, row.currency, row.calendar_id, row.starts_at, page)
            if row.kind == "ticket"
            else ("entry", row.id)
        )
        line = grouped.get(key)
        if line is None:
            grouped[key] = Booking(
                kind=row.kind,
                id=row.id,
                title=row.title,
                price=row.price,
                currency=row.currency,
                starts_at=row.starts_at,
                page_id=page,
                ids=[row.id],
            )
        else:
            line.quantity += 1
            line.ids.append(row.id)
    return list(grouped.values())


async def _ended_holds(session: AsyncSession, owner: Owner, page_id: int | None) -> list[EndedHold]:
    """What left the cart because its hold ended, latest first (events leaves out what its
    owner booked again and holds or paid for). Tickets of one entry and type are one line with
    a quantity, as in the cart."""
    query = select(ended_holds).where(owner.booking_clause(ended_holds))
    if page_id is not None:
        query = query.where(
            ended_holds.c.container_type == "page", ended_holds.c.container_id == page_id
        )
    async with remote_read(session, "events"):
        rows = (
            await session.execute(query.order_by(ended_holds.c.ended_at.desc(), ended_holds.c.id))
        ).all()
    said: dict[tuple[Any, ...], EndedHold] = {}
    for row in rows:
        page = row.container_id if row.container_type == "page" else None
        key: tuple[Any, ...] = (
            ("ticket", row.title, row.starts_at, page)
            if row.kind == "ticket"
            else ("entry", row.id)
        )
        line = said.get(key)
        if line is None:
            said[key] = EndedHold(
                row.kind, row.id, row.title, row.starts_at, row.ended_at, page, ids=[row.id]
            )
        elif row.id not in line.ids:
            line.quantity += 1
            line.ids.append(row.id)
    return list(said.values())


def _times(quantity: int) -> str:
    return f"{quantity} \u00d7 " if quantity > 1 else ""


def ended_holds_said(ended: list[EndedHold]) -> str:
    """One sentence naming them, for the cart's page and its refusals."""
    named = "; ".join(
        f"{_times(hold.quantity)}{hold.title} (its hold ended at {hold.ended_at:%H:%M} UTC)"
        for hold in ended
    )
    return f"Your hold ended on {named}, so {'they' if len(ended) > 1 else 'it'} left your cart."


def _own_cart(features: Any) -> bool:
    """Whether a page's config lets it have a cart of its own: yes unless its editor switched
    the "cart" feature off (a config that never said has one, as before)."""
    return not (isinstance(features, dict) and features.get("cart") is False)


async def _page_names(
    session: AsyncSession, page_ids: list[int]
) -> dict[int, tuple[str, str, bool]]:
    """Each page's slug, title and whether it has a cart of its own (:func:`_own_cart`)."""
    if not page_ids:
        return {}
    async with remote_read(session, "blog"):
        rows = await session.execute(
            select(
                page_configs.c.container_id,
                page_configs.c.page_slug,
                page_configs.c.page_title,
                page_configs.c.features,
            ).where(
                page_configs.c.container_type == "page",
                page_configs.c.container_id
                == any_(
                    bindparam("pages", page_ids, type_=ARRAY(page_configs.c.container_id.type))
                ),
            )
        )
        # A draft page has no title here (blog 0009): named by its number, as a page blog
        # does not know.
        return {
            row.container_id: (
                row.page_slug,
                row.page_title or f"Page {row.container_id}",
                _own_cart(row.features),
            )
            for row in rows
        }


@dataclass(frozen=True)
class CartPage:
    """The page of a page cart: its id, and its title (what the cart's page is called)."""

    id: int
    title: str


async def page_for_slug(session: AsyncSession, page_slug: str) -> CartPage:
    """The page of a page cart (its page, its checkout): one whose editor switched its cart
    off has none, and the buyer is sent to the whole cart."""
    async with remote_read(session, "blog"):
        page = (
            await session.execute(
                select(
                    page_configs.c.container_id, page_configs.c.page_title, page_configs.c.features
                ).where(
                    page_configs.c.container_type == "page",
                    page_configs.c.page_slug == page_slug,
                )
            )
        ).first()
    if page is None:
        raise NotFound(f"Page {page_slug!r} does not exist")
    if not _own_cart(page.features):
        raise NotFound(
            f"Page {page_slug!r} has no cart of its own: its lines are in your cart, "
            "checked out with the rest of it"
        )
    return CartPage(int(page.container_id), page.page_title or page_slug)


def _line(item: CartItem, product: Any | None, merged: list[int]) -> Line:
    line_ids = [item.id, *merged]
    if product is None:
        return Line(
            id=item.id,
            product_id=item.product_id,
            slug=None,
            title=f"Product {item.product_id} (no longer sold)",
            image=None,
            regular_price=None,
            special_price=None,
            unit_price=None,
            currency=None,
            quantity=item.quantity,
            line_total=None,
            page_id=item.market_place_container_id,
            available=False,
            cart_line_ids=line_ids,
        )
    unit_price = (
        product.special_price if product.special_price is not None else product.regular_price
    )
    return Line(
        id=item.id,
        product_id=item.product_id,
        slug=product.slug,
        title=product.title,
        image=product.image,
        regular_price=product.regular_price,
        special_price=product.special_price,
        unit_price=unit_price,
        currency=product.price_currency,
        quantity=item.quantity,
        line_total=unit_price * item.quantity,
        page_id=item.market_place_container_id,
        available=True,
        cart_line_ids=line_ids,
    )


async def load_cart(
    session: AsyncSession,
    owner: Owner,
    page_id: int | None = None,
    *,
    with_ended_holds: bool = False,
) -> CartView:
    """The cart, grouped by the page each line is sold through. Without market there are no
    prices: that is an error (503). Without events the bookings are missing and without blog the
    page names are: the cart still answers, and says what is missing in ``degraded``. With
    ``with_ended_holds``, also the bookings that left it because their hold ended."""
    items = await _active_items(session, owner, page_id)
    known = await _products(session, sorted({item.product_id for item in items}))
    merged = await _merged_into(session, [item.id for item in items])
    lines = [_line(item, known.get(item.product_id), merged.get(item.id, [])) for item in items]
    degraded: list[str] = []
    ended: list[EndedHold] = []
    try:
        bookings = await _bookings(session, owner, page_id)
        if with_ended_holds:
            ended = await _ended_holds(session, owner, page_id)
    except ProviderUnavailable:
        bookings, degraded = [], ["events"]
    page_ids = sorted(
        {line.page_id for line in lines}
        | {booking.page_id for booking in bookings if booking.page_id is not None}
    )
    try:
        names = await _page_names(session, page_ids)
    except ProviderUnavailable:
        names = {}
        degraded.append("blog")

    pages: list[PageCart] = []
    for pid in [*page_ids, None]:
        page_lines = [line for line in lines if line.page_id == pid]
        page_bookings = [booking for booking in bookings if booking.page_id == pid]
        if not page_lines and not page_bookings:
            continue
        slug: str | None
        own_cart = True
        if pid is None:
            slug, title = None, "Other"
        else:
            slug, title, own_cart = names.get(pid, (None, f"Page {pid}", True))
        totals = amounts_by_currency(
            [(line.currency, line.line_total) for line in page_lines]
            + [(booking.currency, booking.total) for booking in page_bookings]
        )
        count = sum(line.quantity for line in page_lines) + sum(
            booking.quantity for booking in page_bookings
        )
        pages.append(
            PageCart(
                pid,
                slug,
                title,
                page_lines,
                page_bookings,
                totals,
                _one_total(totals),
                count,
                own_cart,
            )
        )
    currencies = {line.currency for line in lines if line.currency} | {
        booking.currency for booking in bookings
    }
    totals = amounts_by_currency(
        [(currency, amount) for page in pages for currency, amount in page.totals.items()]
    )
    return CartView(
        pages=pages,
        count=sum(page.count for page in pages),
        totals=totals,
        total=_one_total(totals) if len(currencies) <= 1 else None,
        currency=next(iter(currencies)) if len(currencies) == 1 else None,
        degraded=degraded,
        ended_holds=ended,
    )


def amounts_by_currency(amounts: list[tuple[str | None, Decimal | None]]) -> dict[str, Decimal]:
    """Amounts added up per currency (an unavailable line has neither)."""
    totals: dict[str, Decimal] = {}
    for currency, amount in amounts:
        if currency and amount is not None:
            totals[currency] = totals.get(currency, Decimal(0)) + amount
    return dict(sorted(totals.items()))


def _one_total(totals: dict[str, Decimal]) -> Decimal | None:
    """The total of amounts in one currency (0 for none); None for several: no sum of two."""
    if len(totals) > 1:
        return None
    return next(iter(totals.values()), Decimal(0))


async def line_count(session: AsyncSession, owner: Owner) -> int:
    """What the cart holds, as its page counts it: products by quantity, and bookings (without
    events, the products only)."""
    total = await session.scalar(
        select(func.coalesce(func.sum(CartItem.quantity), 0)).where(
            owner.clause(), CartItem.deleted_at.is_(None)
        )
    )
    try:
        async with remote_read(session, "events"):
            bookings = await session.scalar(
                select(func.count()).select_from(pending_bookings).where(owner.booking_clause())
            )
    except ProviderUnavailable:
        bookings = 0
    return int(total or 0) + int(bookings or 0)


# -- writing ----------------------------------------------------------------------------------
def _check_quantity(quantity: int, held: int = 0) -> None:
    """1 to ``MAX_QUANTITY``, or up to what the line already ``held`` (a line sign-in merged
    past it may be kept or lowered by a change of quantity, not raised; an add never lowers
    it, see ``add_item``)."""
    most = max(MAX_QUANTITY, held)
    if not 1 <= quantity <= most:
        raise InvalidInput(
            f"Choose a quantity from 1 to {most} (Remove takes the line out).",
            field="quantity",
        )


@dataclass(frozen=True)
class Added:
    """What an add did: the line as it now is, how many units the add put on it, of how many
    asked, and the product's title (for the buyer's notice)."""

    item: CartItem
    added: int
    asked: int
    title: str

    @property
    def short_note(self) -> str | None:
        """What the buyer is told when the add took fewer than asked (the line reached the
        most an add takes it to); None when it took them all."""
        if self.added >= self.asked:
            return None
        return (
            f"Only {self.added} of the {self.asked} you asked for "
            f"{'was' if self.added == 1 else 'were'} added: your cart now holds "
            f"{self.item.quantity} of {self.title}, the most one line can hold."
        )


async def add_item(
    session: AsyncSession, owner: Owner, product_id: int, quantity: int = 1
) -> Added:
    """Add a product (or more of it) in one statement; concurrent adds never duplicate a line.
    An add takes a line to ``MAX_QUANTITY`` at most and never lowers it: a line sign-in merged
    past that is kept as it is, and an add that could put nothing on its line is a 409 saying
    so (the answer would otherwise read as if it had been added)."""
    _check_quantity(quantity)
    product = (await _products(session, [product_id])).get(product_id)
    if product is None:
        raise NotFound(f"Product {product_id} does not exist")
    if product.container_type != "page":
        raise Conflict(f"Product {product_id} is not sold through a page")
    if owner.user_id is None:
        await _refuse_if_signed_in(session, owner.session_id)
    # The partial unique index of live lines of one owner and product decides the conflict.
    if owner.user_id is not None:
        owner_column, live = "user_id", "deleted_at IS NULL AND user_id IS NOT NULL"
    else:
        owner_column, live = "session_id", "deleted_at IS NULL AND user_id IS NULL"
    table = table_of(CartItem)
    statement = (
        upsert(table)
        .values(
            user_id=owner.user_id,
            session_id=owner.session_id,
            product_id=product_id,
            quantity=quantity,
            market_place_container_id=product.container_id,
        )
        .on_conflict_do_update(
            index_elements=[owner_column, "product_id"],
            index_where=text(live),
            set_={
                "quantity": func.greatest(
                    table.c.quantity, func.least(table.c.quantity + quantity, MAX_QUANTITY)
                ),
                "updated_at": func.now(),
            },
        )
        # PostgreSQL 18's OLD: the line's quantity before this add (NULL for a new line).
        .returning(table.c.id, table.c.quantity, literal_column("old.quantity"))
    )
    item_id, now_held, held_before = (await session.execute(statement)).one()
    if held_before is not None and now_held == held_before:
        raise Conflict(
            f"Nothing was added: your cart already holds {held_before} of this product, and an "
            f"add takes a line to {MAX_QUANTITY} at most (the line is kept as it is)"
        )
    item = await session.get(CartItem, item_id, populate_existing=True)
    assert item is not None
    return Added(item, now_held - (held_before or 0), quantity, product.title)


async def _owned_item(session: AsyncSession, owner: Owner, item_id: int) -> CartItem:
    """The owner's live line, locked until the edit commits: a paid order's clear that holds
    it is waited for, and the line is then read as that clear left it (READ COMMITTED reads a
    locked row again), so an edit never lands on a line that has just left for an order."""
    item = await session.scalar(
        select(CartItem)
        .where(CartItem.id == item_id, owner.clause(), CartItem.deleted_at.is_(None))
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if item is None:
        paid_by = await session.scalar(
            select(CartItem.order_id).where(
                CartItem.id == item_id, owner.clause(), CartItem.order_id.is_not(None)
            )
        )
        if paid_by is not None:
            raise Conflict(
                f"Cart line {item_id} was paid for in order {paid_by}, so it is no longer in "
                "your cart; anything added to it since is a line of its own"
            )
        raise NotFound(f"Cart line {item_id} does not exist")
    return item


async def set_quantity(session: AsyncSession, owner: Owner, item_id: int, quantity: int) -> int:
    """Change a line's quantity (1 to ``MAX_QUANTITY``, or to what it holds when sign-in merged
    it past that; removing is another action). Returns the new quantity. A line a paid order
    has taken is a 409 saying so."""
    item = await _owned_item(session, owner, item_id)
    _check_quantity(quantity, item.quantity)
    item.quantity = quantity
    item.updated_at = func.now()
    return quantity


async def remove_item(session: AsyncSession, owner: Owner, item_id: int) -> None:
    """Remove a line (soft delete); a line a paid order has taken is a 409 saying so."""
    item = await _owned_item(session, owner, item_id)
    item.deleted_at = func.now()


async def _lock_for_adoption(session: AsyncSession, user_id: int, session_id: str) -> list[int]:
    """Lock the anonymous session's live lines, then the user's live lines of their products,
    each in id order, and return the anonymous lines still live once locked.

    Sign-in and clear-cart-for-order (which locks the lines it clears) then wait for each
    other instead of each working from what it read before the other committed: a line the
    clear has just taken for its order is not merged, and a line merged first has its paid
    quantity taken off the user's line by the clear. Waiting for the user's lines before the
    merge (a statement of its own, reading afresh) means the merge sees any line a clear left
    in their place (the quantity added after checkout)."""
    anonymous = (
        await session.scalars(
            select(CartItem.id)
            .where(
                CartItem.session_id == session_id,
                CartItem.user_id.is_(None),
                CartItem.deleted_at.is_(None),
            )
            .order_by(CartItem.id)
            .with_for_update()
        )
    ).all()
    if anonymous:
        products = select(CartItem.product_id).where(CartItem.id.in_(anonymous))
        await session.execute(
            select(CartItem.id)
            .where(
                CartItem.user_id == user_id,
                CartItem.deleted_at.is_(None),
                CartItem.product_id.in_(products),
            )
            .order_by(CartItem.id)
            .with_for_update()
        )
    return list(anonymous)


# Sign-in's adoptions of anonymous sessions (apps.common.adoption).
ADOPTIONS = SessionAdoption(adopted_sessions, lock_namespace="cart-adopt")


async def _refuse_if_signed_in(session: AsyncSession, session_id: str | None) -> None:
    """An anonymous add waits for sign-in adopting its session, then is refused if it did: its
    line would be written for a session nobody uses again (the browser now carries the
    user's), where sign-in did not see it."""
    if session_id is not None:
        await refuse_if_adopted(
            session,
            ADOPTIONS,
            session_id,
            "Nothing was added",
            "add it again",
        )


async def adopt_cart(
    session: AsyncSession, user_id: int, session_id: str, *, check_only: bool = False
) -> int:
    """On sign-in, the anonymous session's lines join the user's cart (quantities of a product
    in both are added, whole: past the 99 an add stops at, as nothing gathered is dropped, and
    an order made before sign-in takes its own quantity off the sum when paid; the anonymous
    line records the line it was merged into, so that order still finds what it bought).
    Returns how many anonymous lines were adopted; a second call adopts 0. ``check_only``:
    only the 409 of a session given to another account (SignIn.check_only)."""
    if check_only:
        await refuse_another_account(session, ADOPTIONS, session_id, user_id)
        return 0
    anonymous = table_of(CartItem).alias("anonymous")
    table = table_of(CartItem)
    await adopt_session(session, ADOPTIONS, session_id, user_id)
    await forget_old_adoptions(session, ADOPTIONS)
    adopting = await _lock_for_adoption(session, user_id, session_id)
    if not adopting:
        return 0
    merged = (
        await session.execute(
            update(table)
            .where(
                table.c.user_id == user_id,
                table.c.deleted_at.is_(None),
                table.c.product_id == anonymous.c.product_id,
                anonymous.c.id == any_(bindparam("adopting", adopting, type_=ARRAY(BigInteger))),
                anonymous.c.session_id == session_id,
                anonymous.c.user_id.is_(None),
                anonymous.c.deleted_at.is_(None),
            )
            .values(
                quantity=table.c.quantity + anonymous.c.quantity,
                updated_at=func.now(),
            )
            .returning(anonymous.c.id, table.c.id)
        )
    ).all()
    for anonymous_id, user_line_id in merged:
        await session.execute(
            update(table)
            .where(table.c.id == anonymous_id)
            .values(deleted_at=func.now(), merged_into_id=user_line_id, updated_at=func.now())
        )
    moved = await session.execute(
        update(table)
        .where(
            table.c.id == any_(bindparam("adopting", adopting, type_=ARRAY(BigInteger))),
            table.c.session_id == session_id,
            table.c.user_id.is_(None),
            table.c.deleted_at.is_(None),
        )
        .values(user_id=user_id, updated_at=func.now())
        .returning(table.c.id)
    )
    return len(merged) + len(moved.all())


_CLAIM_ORDER = (
    upsert(ClearedOrder)
    .values(order_id=bindparam("order_id"), cleared=0)
    .on_conflict_do_nothing(index_elements=["order_id"])
    .returning(ClearedOrder.order_id)
)


async def clear_for_order(session: AsyncSession, request: ClearCartForOrder) -> int:
    """Remove what a paid order bought, once: a repeat for the same order removes nothing more
    and answers the same count (``cleared_orders`` records it; orders cleared before that
    table was, and the monolith's, are known by the lines that record them).

    Line by line when the order names its lines: the line as it was at checkout is removed
    wherever sign-in moved it (if sign-in merged it into the user's line of the same product,
    the quantity paid for comes off that line); a quantity added after checkout stays in the
    cart as a line of its own. Orders (or lines) that name no cart lines remove the owner's
    lines of their products."""
    # The order's record first: a concurrent delivery of the same order waits on it until
    # this one commits, then answers what this one recorded.
    if await session.scalar(_CLAIM_ORDER, {"order_id": request.order_id}) is None:
        recorded = await session.scalar(
            select(ClearedOrder.cleared).where(ClearedOrder.order_id == request.order_id)
        )
        return int(recorded or 0)
    cleared = await _clear(session, request)
    await session.execute(
        update(ClearedOrder)
        .where(ClearedOrder.order_id == request.order_id)
        .values(cleared=cleared)
    )
    return cleared


async def _clear(session: AsyncSession, request: ClearCartForOrder) -> int:
    if request.lines is None:
        products = request.product_ids
        before = await _cleared_before(session, request.order_id, products)
        return await _clear_by_products(session, request, products, before)
    named = [paid for paid in request.lines if paid.cart_line_ids]
    unnamed = [paid.product_id for paid in request.lines if not paid.cart_line_ids]
    # Asked before the named lines record the order, which would read as "cleared before".
    before = await _cleared_before(session, request.order_id, unnamed) if unnamed else None
    cleared = 0
    if named:
        first_ids = sorted({paid.cart_line_ids[0] for paid in named})
        lines = await _lock_named(session, first_ids)
        for paid in named:
            line = lines.get(paid.cart_line_ids[0])
            cleared += await _clear_line(session, request.order_id, paid, line, lines)
    if unnamed:
        # The named lines' changes go first (the session does not flush by itself): the
        # statement below must not take a line just removed for the order as a live one.
        await session.flush()
        cleared += await _clear_by_products(session, request, unnamed, before)
    return cleared


async def _lock_named(session: AsyncSession, first_ids: list[int]) -> dict[int, CartItem]:
    """Lock the order's named lines and the lines sign-in merged them into, all in one
    statement in id order, so that two clears sharing lines never wait on each other in a
    circle (sign-in locks the user's lines in id order too). The merge targets are read
    first without a lock; a line sign-in merged in between is seen once locked (sign-in
    locks it first), and its target is then locked on its own."""
    targets = (
        await session.scalars(
            select(CartItem.merged_into_id).where(
                CartItem.id.in_(first_ids), CartItem.merged_into_id.is_not(None)
            )
        )
    ).all()
    ids = sorted({*first_ids, *(target for target in targets if target is not None)})
    found = await session.scalars(
        select(CartItem)
        .where(CartItem.id.in_(ids))
        .order_by(CartItem.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return {line.id: line for line in found}


async def _clear_line(
    session: AsyncSession,
    order_id: int,
    paid: PaidLine,
    line: CartItem | None,
    locked: dict[int, CartItem],
) -> int:
    if line is None or line.order_id is not None:
        return int(line is not None and line.order_id == order_id)
    line.order_id = order_id
    line.updated_at = func.now()
    if line.deleted_at is None:
        line.deleted_at = func.now()
        surplus = line.quantity - paid.quantity
        if surplus > 0:
            await session.flush()  # the paid line leaves before its surplus takes its place
            await session.execute(
                insert(CartItem).values(
                    user_id=line.user_id,
                    session_id=line.session_id,
                    product_id=line.product_id,
                    quantity=surplus,
                    market_place_container_id=line.market_place_container_id,
                )
            )
        return 1
    if line.merged_into_id is not None:
        into = locked.get(line.merged_into_id)
        if into is None:  # merged after the targets were read (see _lock_named)
            into = await session.scalar(
                select(CartItem).where(CartItem.id == line.merged_into_id).with_for_update()
            )
        if into is not None and into.deleted_at is None:
            if into.quantity > paid.quantity:
                into.quantity -= paid.quantity
            else:
                into.deleted_at = func.now()
                into.order_id = order_id
            into.updated_at = func.now()
        return 1
    return 1  # the buyer had removed it already


async def _cleared_before(
    session: AsyncSession, order_id: int, product_ids: list[int] | None
) -> int | None:
    """How many lines of ``product_ids`` (all products: None) the order cleared before, by the
    lines that record it; None when none does. For orders cleared before ``cleared_orders``
    was (and the monolith's, moved by the split), whose repeats have no record to answer."""
    of_these = CartItem.product_id.in_(product_ids) if product_ids is not None else true()
    any_line, of_products = (
        await session.execute(
            select(func.count(), func.count().filter(of_these)).where(CartItem.order_id == order_id)
        )
    ).one()
    return int(of_products) if any_line else None


async def _clear_by_products(
    session: AsyncSession,
    request: ClearCartForOrder,
    product_ids: list[int] | None,
    before: int | None,
) -> int:
    """The owner's live lines of ``product_ids`` (all products: None) added before the order was
    placed (when the request says when) leave for the order, unless the order cleared anything
    ``before`` (``_cleared_before``): then this is a repeat, and it answers what the first time
    cleared of these products without removing anything added since."""
    if before is not None:
        return before
    owner = Owner(request.user_id, request.session_id)
    query = (
        update(CartItem)
        .where(owner.clause(), CartItem.deleted_at.is_(None))
        .values(deleted_at=func.now(), order_id=request.order_id, updated_at=func.now())
        .returning(CartItem.id)
        # Nothing loaded is used after it; and the ORM cannot evaluate this WHERE on a line whose
        # deleted_at it holds as SQL (now()), so it must not try.
        .execution_options(synchronize_session=False)
    )
    if product_ids is not None:
        query = query.where(CartItem.product_id.in_(product_ids))
    if request.page_post_id is not None:
        query = query.where(CartItem.market_place_container_id == request.page_post_id)
    if isinstance(request.placed_at, msgspec.UnsetType):
        return len((await session.execute(query)).all())
    # A line added after the order (an old order paid late) is not what it bought...
    cleared = len(
        (await session.execute(query.where(CartItem.created_at <= request.placed_at))).all()
    )
    # ...but one sign-in merged a line of the order's time into is, by that line's quantity.
    return cleared + await _clear_merged_before(
        session, request, owner, product_ids, request.placed_at
    )


async def _clear_merged_before(
    session: AsyncSession,
    request: ClearCartForOrder,
    owner: Owner,
    product_ids: list[int] | None,
    placed_at: datetime,
) -> int:
    """The owner's live lines added after the order was placed into which sign-in merged lines
    from before it (an anonymous order's lines, merged into the account's newer ones): the
    merged lines' quantity leaves (the whole line when nothing else is left), and the merged
    lines record the order. What the account added after the order stays."""
    merged = table_of(CartItem).alias("merged")
    into = table_of(CartItem)
    untaken = (merged.c.created_at <= placed_at) & merged.c.order_id.is_(None)
    query = (
        select(into.c.id)
        .join(merged, merged.c.merged_into_id == into.c.id)
        .where(owner.clause(), into.c.deleted_at.is_(None), into.c.created_at > placed_at, untaken)
        .distinct()
        .order_by(into.c.id)
    )
    if product_ids is not None:
        query = query.where(into.c.product_id.in_(product_ids))
    if request.page_post_id is not None:
        query = query.where(into.c.market_place_container_id == request.page_post_id)
    cleared = 0
    for into_id in (await session.scalars(query)).all():
        line = await session.scalar(
            select(CartItem).where(CartItem.id == into_id).with_for_update()
        )
        if line is None or line.deleted_at is not None:
            continue
        # Read under the line's lock: a clear of another order that took them committed first.
        taking = (
            await session.execute(
                select(merged.c.id, merged.c.quantity).where(
                    merged.c.merged_into_id == into_id, untaken
                )
            )
        ).all()
        if not taking:
            continue
        quantity = sum(row.quantity for row in taking)
        merged_ids = [row.id for row in taking]
        if line.quantity > quantity:
            line.quantity -= quantity
        else:
            line.deleted_at = func.now()
            line.order_id = request.order_id
        line.updated_at = func.now()
        await session.execute(
            update(CartItem)
            .where(CartItem.id == any_(bindparam("merged", merged_ids, type_=ARRAY(BigInteger))))
            .values(order_id=request.order_id, updated_at=func.now())
            .execution_options(synchronize_session=False)
        )
        cleared += 1
    return cleared


# -- checkout ---------------------------------------------------------------------------------
def _mixed_currencies(cart: CartView, page_post_id: int | None) -> str:
    """Why a cart in several currencies cannot be one order, naming its lines by currency."""
    named: dict[str, list[str]] = {}
    for line in cart.lines:
        named.setdefault(line.currency or "?", []).append(line.title)
    for booking in cart.bookings:
        named.setdefault(booking.currency, []).append(booking.title)
    listed = "; ".join(
        f"{currency}: {', '.join(titles)}" for currency, titles in sorted(named.items())
    )
    advice = "remove the lines in all currencies but one"
    if page_post_id is None and all(page.total is not None for page in cart.pages):
        advice = "check out one page at a time, or " + advice
    return f"One order is paid in one currency, and this cart holds several ({listed}): {advice}"


def line_title(title: str) -> str:
    """``title`` as an order's line keeps it: a ticket's (its entry's name, a dash and the type
    the buyer typed) may be longer than a line holds, and is cut short, not refused, since the
    buyer could not check out otherwise."""
    if len(title) <= orders.TITLE_MAX_LENGTH:
        return title
    return title[: orders.TITLE_MAX_LENGTH - 1] + "\u2026"


def checkout_request(
    cart: CartView, owner: Owner, session_id: str, page_post_id: int | None
) -> tuple[CreateOrder, str]:
    """The create-order request (orders' contract) and its idempotency key, derived from this
    cart snapshot (``orders.checkout_key``): a double submit creates one order; a changed cart
    another; the same cart once its order cannot be paid, another too. ``session_id`` is the
    browser session, sent for an anonymous cart only: a signed-in buyer is their account in
    every browser, so their cart checked out on a laptop and on a phone is one order (orders
    made before sign-in were moved to the account when it signed in)."""
    if "events" in cart.degraded:
        # Its bookings could not be read: an order now would leave them out (the buyer paying
        # for part of the cart), and a cart of bookings only would look empty.
        raise DependencyUnavailable(
            "Checkout failed: your bookings cannot be read right now (events is unavailable). "
            "Your cart has not changed; please try again in a minute",
            title="Checkout failed",
            service="events",
        )
    lines = cart.lines
    bookings = cart.bookings
    if not lines and not bookings:
        if cart.ended_holds:
            raise Conflict(f"The cart is empty. {ended_holds_said(cart.ended_holds)}")
        raise Conflict("The cart is empty")
    unavailable = [line.title for line in lines if not line.available]
    if unavailable:
        raise Conflict(
            f"Remove what is no longer sold before checking out: {', '.join(unavailable)}"
        )
    if cart.currency is None:
        raise Conflict(_mixed_currencies(cart, page_post_id))

    def booking_lines(kind: str) -> list[BookingLine]:
        """Orders confirms and refunds bookings one by one: a line of 2 tickets is 2."""
        return [
            BookingLine(
                id=booking_id,
                title=line_title(booking.title),
                price=booking.price,
                currency=booking.currency,
                container_id=booking.page_id,
            )
            for booking in bookings
            if booking.kind == kind
            for booking_id in booking.ids or [booking.id]
        ]

    entries = booking_lines("entry")
    tickets = booking_lines("ticket")
    if len(entries) + len(tickets) > events.MAX_IDS_PER_ORDER:
        raise Conflict(
            f"One order holds at most {events.MAX_IDS_PER_ORDER} bookings, and this cart has "
            f"{len(entries) + len(tickets)}: remove some, or check out one page at a time"
        )

    request = CreateOrder(
        cart_items=[
            CartLine(
                product_id=line.product_id,
                product_title=line.title,
                product_slug=line.slug or str(line.product_id),
                product_image=line.image,
                product_regular_price=line.regular_price or Decimal(0),
                product_special_price=line.special_price,
                product_price_currency=line.currency or "",
                quantity=line.quantity,
                market_place_container_id=line.page_id,
                cart_line_ids=line.cart_line_ids,
            )
            for line in lines
        ],
        calendar_entries=entries,
        tickets=tickets,
        user_id=owner.user_id,
        session_id=session_id if owner.user_id is None else None,
        product_total=sum((line.line_total or Decimal(0) for line in lines), Decimal(0)),
        calendar_total=sum((entry.price for entry in entries), Decimal(0)),
        ticket_total=sum((ticket.price for ticket in tickets), Decimal(0)),
        page_post_id=page_post_id,
    )
    return request, orders.checkout_key(request)


# New anonymous carts per client network (what bounds a client minting sessions).
CHECKOUT_STARTS = AdmissionRule(
    table=table_of(CheckoutStart),
    lock_namespace="cart-checkout-start",
    refusal=lambda per_minute, retry_after: (
        f"Too many checkouts from your network: at most {per_minute} new carts a minute "
        f"without signing in. Try again in {retry_after} s, or sign in; your cart is as it was."
    ),
    key_column="cart_key",
)


async def admit_checkout(session: AsyncSession, admission: Admission, key: str) -> None:
    """Count a new anonymous cart against its client network's limit, or refuse it (429). The
    same cart checked out again (its key) is not a new start. The count is committed before
    orders is asked: the checkout waits on no lock while orders answers."""
    if await admit(session, CHECKOUT_STARTS, admission, key):
        await session.commit()
    else:
        await session.rollback()


async def checkout(
    session: AsyncSession,
    internal: InternalClient,
    owner: Owner,
    session_id: str,
    page_id: int | None,
    admission: Admission | None = None,
    *,
    wait: float,
) -> CreatedOrder:
    """Hand the cart (or one page's) over to orders. Nothing of the cart changes here: orders
    clears it once the payment is confirmed. An anonymous cart is first admitted under its
    client network's limit (``admission``; None: no limit). Orders' answer is awaited
    ``wait`` seconds in all (CART_CHECKOUT_WAIT_SECONDS)."""
    cart = await load_cart(session, owner, page_id)
    # Empty because sign-in has just moved it to the user (the browser signed in as this
    # checkout left it): say so, not that the cart is empty.
    if (
        cart.count == 0
        and owner.user_id is None
        and owner.session_id is not None
        and await adopted_by(session, ADOPTIONS, owner.session_id) is not None
    ):
        raise given_away("Nothing was ordered", "check out again")
    if cart.count == 0 and "events" not in cart.degraded:
        # Only to say why it is empty: a checkout that goes on needs no more reads.
        with contextlib.suppress(ProviderUnavailable):
            cart.ended_holds = await _ended_holds(session, owner, page_id)
    order, key = checkout_request(cart, owner, session_id, page_id)
    await end_read(session)
    if owner.user_id is None and admission is not None:
        await admit_checkout(session, admission, key)
    # A buyer waits ``wait`` seconds, not orders' whole budget (CREATE_ORDER_MAX_SECONDS):
    # past it the order may still be made, and the buyer is told so (the same cart checked out
    # again replays it: its key). No retry: the answer is awaited, not raced.
    return await internal.call(
        orders.create_order, order, idempotency_key=key, retry=False, deadline=wait
    )


async def release_booking(
    session: AsyncSession,
    internal: InternalClient,
    owner: Owner,
    kind: Literal["entry", "ticket"],
    booking_id: int,
) -> events.Released:
    """The buyer removed a booking line from the cart: events frees its slots at once (every
    ticket of the line)."""
    ids = [booking_id]
    if kind == "ticket":
        try:
            lines = await _bookings(session, owner, None)
        except ProviderUnavailable:
            lines = []
        ids = next((line.ids for line in lines if booking_id in line.ids), ids)
        await end_read(session)
    released = False
    for each in ids:
        answer = await internal.call(
            events.release_booking,
            events.ReleaseBooking(
                kind=kind, id=each, user_id=owner.user_id, session_id=owner.session_id
            ),
        )
        released = released or answer.released
    return events.Released(released=released)


# -- the inbox (docs/cart-inbox.md) ------------------------------------------------------------
def _activity_owner(target: CartRef) -> Owner:
    if (target.user_id is None) == (target.session_id is None):
        raise InvalidInput(
            "target is a rose:Cart with exactly one of userId and sessionId", field="target"
        )
    return Owner(target.user_id, target.session_id)


async def _live_line(session: AsyncSession, owner: Owner, product_id: int) -> CartItem | None:
    query = (
        select(CartItem)
        .where(owner.clause(), CartItem.product_id == product_id, CartItem.deleted_at.is_(None))
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    line = await session.scalar(query)
    if line is None:
        # A line this waited for may have just left for a paid order, its surplus now a new
        # line the statement could not see; a second statement reads afresh.
        line = await session.scalar(query)
    return line


def _one_line_as_sent(value: str, field: str) -> None:
    """An activity's id or actor is one readable line, as a name is; it is compared (and
    kept) as sent, so surrounding whitespace is refused rather than taken off."""
    if one_line_name(value, field) != value:
        raise InvalidInput(f"{field} must not start or end with whitespace", field=field)


async def receive_activity(session: AsyncSession, activity: CartActivity) -> InboxAnswer:
    """Apply an Add, Remove or Update of a ``rose:CartItem`` once per activity id. The id is
    claimed first, in the same transaction as the effect: a concurrent second delivery waits
    for the first and then answers what it did; a failed effect records nothing."""
    _one_line_as_sent(activity.id, "id")
    if activity.actor is not None:
        _one_line_as_sent(activity.actor, "actor")
    if activity.type == "Remove" and activity.object.quantity is not None:
        # Not ignored: "remove 1" would take the whole line out.
        raise InvalidInput(
            "A Remove takes the product's whole line out and names no quantity "
            "(an Update sets how many are left)",
            field="object.quantity",
        )
    digest = hashlib.sha256(msgspec.json.encode(activity)).hexdigest()
    claimed = await session.scalar(
        upsert(InboxActivity)
        .values(id=activity.id, type=activity.type, activity_hash=digest, answer={})
        .on_conflict_do_nothing(index_elements=["id"])
        .returning(InboxActivity.id)
    )
    if claimed is None:
        seen = await session.get(InboxActivity, activity.id)
        assert seen is not None
        if seen.activity_hash != digest:
            raise Conflict(
                f"Activity {activity.id!r} was already received with other content", field="id"
            )
        return msgspec.structs.replace(msgspec.convert(seen.answer, InboxAnswer), replayed=True)
    owner = _activity_owner(activity.target)
    item = activity.object
    if activity.type == "Add":
        added = await add_item(session, owner, item.product_id, item.quantity or 1)
        quantity = added.item.quantity
    else:
        line = await _live_line(session, owner, item.product_id)
        if activity.type == "Update":
            if item.quantity is None:
                raise InvalidInput("Update needs object.quantity (1 to 99)", field="object")
            if line is None:
                raise NotFound(f"That cart has no line of product {item.product_id}")
            line.quantity = quantity = item.quantity
            line.updated_at = func.now()
        else:
            if line is not None:
                line.deleted_at = func.now()
            quantity = 0
    answer = InboxAnswer(
        activity_id=activity.id, type=activity.type, product_id=item.product_id, quantity=quantity
    )
    await session.execute(
        update(InboxActivity)
        .where(InboxActivity.id == activity.id)
        .values(answer=msgspec.to_builtins(answer))
    )
    return answer

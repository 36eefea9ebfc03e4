"""Domain logic of orders: create an order with its SumUp hosted checkout, supersede what it
replaces, hold its bookings, pay again, adopt anonymous orders at sign-in, list orders.

The money rules (docs/DESIGN.md, "Money invariants"):
- one payable order per cart line and booking: a new order supersedes every earlier pending
  order of the same buyer that shares a cart line, a booking or a product; goods already paid
  for (or under review) cannot be ordered again;
- one buyer's create-orders run one at a time (an advisory lock per user and per session), and
  a buyer may create at most ``checkouts_per_minute`` orders a minute (429);
- an order can be paid until ``payable_until``; its bookings are held for it until then, and
  its SumUp checkouts are valid until then;
- an order and its items are a snapshot taken when it is created; nothing is re-read later.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, NoReturn

import msgspec
from sqlalchemy import (
    CTE,
    BigInteger,
    ColumnClause,
    ColumnElement,
    Select,
    Text,
    and_,
    any_,
    bindparam,
    cast,
    column,
    exists,
    false,
    func,
    insert,
    literal,
    null,
    or_,
    select,
    text,
    true,
    union,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, distinct_on
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from apps.common.admission import Admission, AdmissionRule, admit
from apps.common.adoption import (
    SIGN_OUT_PATH,
    START_AFRESH,
    SessionAdoption,
    adopted_by,
    forget_old_adoptions,
    given_away,
    record_adoption,
    refuse_another_account,
)
from apps.common.contracts import SignIn
from apps.common.db import (
    one_plan_for_the_rest_of_the_transaction,
    set_for_the_transaction,
    table_of,
)
from apps.common.direct import DirectStatement, run_together, write_at_commit
from apps.common.fdw import (
    ProviderUnavailable,
    provider_unavailable,
    remote_read,
    timeout_for_next_reads,
)
from apps.common.internal_client import InternalCallError
from apps.common.problems import (
    Conflict,
    DependencyUnavailable,
    InvalidInput,
    NotFound,
    Problem,
    TooManyRequests,
)
from apps.events import contract as events
from apps.orders.contract import (
    CHECKOUTS_BUSY,
    AdoptedOrders,
    Attention,
    CreatedOrder,
    CreateOrder,
)
from apps.orders.models import (
    CLAIM_KINDS,
    CLOSED_UNPAID_STATES,
    ITEM_KINDS,
    MAX_AMOUNT,
    NEEDS_A_PERSON,
    Order,
    OrderClaim,
    OrderItem,
    PaymentAttempt,
    Refund,
    adopted_sessions,
    order_lines,
    outbox,
    page_payment_configs,
    pay_again_starts,
    retired_sumup_keys,
)
from apps.orders.payments import (
    CENT,
    MerchantAccount,
    PaymentProviderError,
    PaymentProviderUnavailable,
    made_no_checkout,
)
from apps.orders.runtime import OrdersRuntime, OrderUrls
from apps.orders.settings import HOLD_AFTER_PAYABLE, MIN_TIME_TO_PAY
from apps.orders.settlement import (
    LATE_PAYMENT,
    OPEN_ATTEMPT_STATES,
    UNCONFIRMED_BOOKINGS,
    Applied,
    AttemptRow,
    ConfiguredAccount,
    EarlyCheckoutRead,
    MerchantAccounts,
    MerchantKeyGone,
    OrderRow,
    account_of,
    after_payment_keys,
    close_attempt,
    configured_account,
    confirm_bookings_key,
    enqueue_give_back,
    enqueue_give_back_of_superseded,
    money,
    names_no_merchant,
    pay_with_nothing_to_pay,
    payment_config_of,
    refresh_attempt,
    refresh_reported_attempt,
    refunds_of,
    retrieved,
)

logger = logging.getLogger("rose.orders")

MAX_REFERENCE_LENGTH = 64
DEFAULT_CHECKOUT_PREFIX = "rose-"
ORDERS_PER_PAGE = 20
SITE_CONTAINER = ("site", 0)
RATE_WINDOW = timedelta(minutes=1)
ORDERS_TABLE = table_of(Order).fullname
# A pay-again this soon after an attempt was made gets that attempt (a double click).
FRESH_ATTEMPT = timedelta(seconds=10)

Claim = tuple[str, int]


@dataclass(frozen=True)
class PaymentConfig:
    id: int
    container_type: str
    container_id: int
    account: MerchantAccount
    checkout_prefix: str


# -- validation --------------------------------------------------------------------------------
def validate_order(request: CreateOrder) -> str:
    """Check lines, totals and currencies; returns the order's currency."""
    _check_amounts(request)
    if not (request.cart_items or request.calendar_entries or request.tickets):
        raise InvalidInput("an order needs at least one line", field="cart_items")
    if request.user_id is None and request.session_id is None:
        raise InvalidInput("user_id or session_id is required", field="user_id")
    currencies = {line.product_price_currency for line in request.cart_items}
    currencies |= {line.currency for line in (*request.calendar_entries, *request.tickets)}
    if len(currencies) != 1:
        raise InvalidInput(
            f"all lines must be in one currency, not {', '.join(sorted(currencies))}",
            field="currency",
        )
    for field, stated, lines in (
        (
            "product_total",
            request.product_total,
            [line.unit_price * line.quantity for line in request.cart_items],
        ),
        ("calendar_total", request.calendar_total, [e.price for e in request.calendar_entries]),
        ("ticket_total", request.ticket_total, [t.price for t in request.tickets]),
    ):
        computed = money(sum(lines, Decimal(0)))
        if money(stated) != computed:
            raise InvalidInput(
                f"{field} is {money(stated)} but its lines add up to {computed}", field=field
            )
    currency = currencies.pop()
    total = _total_of(request)
    if total > MAX_AMOUNT:
        raise InvalidInput(
            f"the order's total {total} {currency} is more than one order can hold "
            f"({MAX_AMOUNT}): check out fewer goods at a time",
            field="total",
        )
    return currency


def _total_of(request: CreateOrder) -> Decimal:
    return money(request.product_total + request.calendar_total + request.ticket_total)


def _check_amount(field: str, value: Decimal | None) -> None:
    if value is None:
        return
    if not value.is_finite() or value < 0 or value != value.quantize(CENT):
        raise InvalidInput(f"{field} must be an amount >= 0 with at most 2 decimals", field=field)


def _check_amounts(request: CreateOrder) -> None:
    for field in ("product_total", "calendar_total", "ticket_total"):
        _check_amount(field, getattr(request, field))
    for product in request.cart_items:
        _check_amount("product_regular_price", product.product_regular_price)
        _check_amount("product_special_price", product.product_special_price)
    for booking in (*request.calendar_entries, *request.tickets):
        _check_amount("price", booking.price)


def _on_public_url(url: str, public_base: str) -> bool:
    """Whether ``url`` is orders' public URL or a path under it: beginning with it is not
    enough (``https://orders.rose-ash.com.evil.example``, ``...com@evil.example`` are
    other hosts)."""
    return url == public_base or url.startswith(public_base + "/")


def _check_urls(request: CreateOrder, urls: OrderUrls) -> None:
    if request.webhook_base_url is not None and not _on_public_url(
        request.webhook_base_url.rstrip("/"), urls.public_base
    ):
        raise InvalidInput(
            f"webhook_base_url must be this service's public URL {urls.public_base}",
            field="webhook_base_url",
        )
    if request.redirect_url is not None and not _on_public_url(
        request.redirect_url, urls.public_base
    ):
        raise InvalidInput(
            f"redirect_url must be on this service's public URL {urls.public_base}",
            field="redirect_url",
        )


def checkout_reference(prefix: str, order_id: int, attempt: int) -> str:
    reference = f"{prefix}{order_id}-{attempt}"
    if len(reference) > MAX_REFERENCE_LENGTH:
        raise InvalidInput(
            f"checkout reference {reference!r} is longer than SumUp's 64 characters",
            field="sumup_checkout_prefix",
        )
    return reference


# -- page configs, through the FDW edge orders <- blog ----------------------------------------
# The hot path's statements are built once, with bound parameters: constructing a statement and
# its cache key cost as much client CPU as running it (bench.checkout).
def config_candidates(page_post_id: int | None, containers: set[int]) -> list[tuple[str, int]]:
    """The page configs an order may take, best first: its page's (the page it belongs to, or
    the one container all its lines come from), then the site-wide default."""
    candidates: list[tuple[str, int]] = []
    if page_post_id is not None:
        candidates.append(("page", page_post_id))
    elif len(containers) == 1:
        candidates.append(("page", next(iter(containers))))
    candidates.append(SITE_CONTAINER)
    return candidates


def _candidate(number: str) -> ColumnElement[bool]:
    configs = page_payment_configs.c
    return and_(
        configs.container_type == bindparam(f"{number}_type"),
        configs.container_id == bindparam(f"{number}_id"),
    )


# The candidates' page configs (through FDW), as one JSON array of rows. There are one or two
# candidates (:func:`config_candidates`); one is bound as both, so every order runs one text.
_CANDIDATE_CONFIGS = (
    select(func.jsonb_agg(page_payment_configs.table_valued()))
    .where(or_(_candidate("first"), _candidate("second")))
    .scalar_subquery()
)


def candidate_parameters(candidates: list[tuple[str, int]]) -> dict[str, Any]:
    """The bound values of :data:`_CANDIDATE_CONFIGS` for :func:`config_candidates`' list."""
    if not 1 <= len(candidates) <= 2:
        raise ValueError(f"one or two page config candidates, not {candidates}")
    (first_type, first_id), (second_type, second_id) = candidates[0], candidates[-1]
    return {
        "first_type": first_type,
        "first_id": first_id,
        "second_type": second_type,
        "second_id": second_id,
    }


def choose_payment_config(
    candidates: list[tuple[str, int]], rows: list[dict[str, Any]]
) -> PaymentConfig | None:
    """The first candidate with a SumUp merchant and key: a page without SumUp settings falls
    back to the site default too. None when neither has one."""
    by_container = {(row["container_type"], row["container_id"]): row for row in rows}
    for candidate in candidates:
        row = by_container.get(candidate)
        if row is not None and row["sumup_merchant_code"] and row["sumup_api_key"]:
            return PaymentConfig(
                id=row["id"],
                container_type=row["container_type"],
                container_id=row["container_id"],
                account=MerchantAccount(row["sumup_merchant_code"], row["sumup_api_key"]),
                checkout_prefix=row["sumup_checkout_prefix"] or DEFAULT_CHECKOUT_PREFIX,
            )
    return None


def checkouts_busy(at_once: int) -> DependencyUnavailable:
    """A create-order that found no turn (ORDERS_CHECKOUTS_AT_ONCE, all taken, and as many
    waiting as may): nothing was made."""
    return DependencyUnavailable(
        f"orders is making as many checkouts as it can at once ({at_once}, each waiting on "
        "SumUp or events) and more are waiting; nothing was created. Try again in a minute",
        **{CHECKOUTS_BUSY: True},
    )


def merchant_key_refused(
    order: Order, account: MerchantAccount, exc: PaymentProviderError
) -> Conflict:
    """SumUp refused the key of the merchant the order pays (401: a typo saved, or revoked in
    its dashboard; 403: not allowed to make checkouts): every checkout of that page fails alike
    until an editor gives it a key SumUp takes, so the buyer is not told to try again (a 502
    would say so), and the person who can fix it is told which page and merchant."""
    logger.warning(
        "a checkout for page config %s was refused: SumUp refused the API key of merchant %s "
        "(HTTP %s); no checkout was made, and none will be until an editor gives the page a "
        "key SumUp takes",
        order.page_config_id,
        account.merchant_code,
        exc.sumup_status,
    )
    return Conflict(
        "Payments cannot be taken here right now: SumUp refused the shop's payment key. "
        "Nothing was charged; the shop has to set it right"
    )


def payments_not_configured(candidates: list[tuple[str, int]]) -> Conflict:
    """An order with something to pay where no candidate has a SumUp merchant and key. Goods
    of several pages (no page among the candidates) are paid to the site default's merchant
    only: each page's own merchant is taken for its own goods, checked out from its page."""
    if not any(kind == "page" for kind, _ in candidates):
        return Conflict(
            "Payments are not configured for a checkout of goods of several pages (no SumUp "
            "merchant and key on the site default): check out each page's goods from its page"
        )
    return Conflict(
        "Payments are not configured for this page (no SumUp merchant and key on the page or "
        "the site default)"
    )


# -- one buyer at a time -----------------------------------------------------------------------
async def lock_buyer(
    session: AsyncSession,
    user_id: int | None,
    session_id: str | None,
    *,
    remote_reads_next: bool = False,
) -> None:
    """Serialise one buyer's order changes until the transaction ends: user first, then
    session (PostgreSQL evaluates a select list in order), so two requests never wait on each
    other in opposite orders. ``remote_reads_next`` (create-order's, which
    :func:`reserve_order_slot` sends with its FDW read): the same statement sets the FDW
    timeout of the statements after it (:func:`timeout_for_next_reads`) and has them run on
    their generic plans: for orders whose lines name no cart lines, PostgreSQL planned the
    placing statement anew on every call, 1.3 ms at 20,000 orders against 0.3 ms to run it."""
    keys = _buyer_keys(user_id, session_id)
    if keys or remote_reads_next:
        await _buyer_locks(len(keys), remote_reads_next).rows(session, keys)


def _buyer_keys(user_id: int | None, session_id: str | None) -> dict[str, str]:
    """The parameters of :func:`_buyer_locks`: the buyer's lock keys, user first."""
    keys = []
    if user_id is not None:
        keys.append(f"orders-buyer:user:{user_id}")
    if session_id is not None:
        keys.append(f"orders-buyer:session:{session_id}")
    return {f"buyer_key_{i}": key for i, key in enumerate(keys)}


@functools.cache
def _buyer_locks(count: int, remote_reads_next: bool) -> DirectStatement:
    locks = [
        func.pg_advisory_xact_lock(
            func.hashtextextended(bindparam(f"buyer_key_{i}", type_=Text), 0)
        )
        for i in range(count)
    ]
    settings = [timeout_for_next_reads(), one_plan_for_the_rest_of_the_transaction()]
    return DirectStatement(select(*locks, *(settings if remote_reads_next else [])))


@dataclass(frozen=True)
class OrderSlot:
    """What a new order starts from, read in one round trip."""

    # The new order's id, drawn before the insert so that its description can name it.
    order_id: int
    # The database's clock.
    now: datetime
    # The page config the order takes; None when neither candidate has a SumUp merchant, which
    # only an order with nothing to pay may go on without (:func:`create_order`).
    config: PaymentConfig | None


def _buyer(by_user: bool, by_session: bool, orders: Any = None) -> ColumnElement[bool]:
    """The buyer's orders (of ``orders``, the orders table or an alias of it), by user
    (``buyer_user``), session (``buyer_session``) or either."""
    columns = (orders if orders is not None else table_of(Order)).c
    buyer: list[ColumnElement[bool]] = []
    if by_user:
        buyer.append(columns.user_id == bindparam("buyer_user"))
    if by_session:
        buyer.append(columns.session_id == bindparam("buyer_session"))
    return or_(*buyer)


def _recent_orders(by_user: bool, by_session: bool) -> Select[Any]:
    """The buyer's orders of the last minute, the clock, a new order id and the candidate page
    configs (see :func:`reserve_order_slot`), for a buyer known by user, session or both."""
    orders = table_of(Order)
    return select(
        func.count(),
        func.min(orders.c.created_at),
        func.now(),
        func.nextval(func.pg_get_serial_sequence(ORDERS_TABLE, "id")),
        _CANDIDATE_CONFIGS,
    ).where(_buyer(by_user, by_session), orders.c.created_at > func.now() - RATE_WINDOW)


@functools.cache
def _order_slot(by_user: bool, by_session: bool) -> DirectStatement:
    return DirectStatement(_recent_orders(by_user, by_session))


async def reserve_order_slot(
    session: AsyncSession,
    user_id: int | None,
    session_id: str | None,
    per_minute: int,
    candidates: list[tuple[str, int]],
) -> OrderSlot:
    """Take the buyer's lock (:func:`lock_buyer`, with the FDW timeout of the read after it),
    then allow at most ``per_minute`` new orders per buyer; exact across processes (the buyer
    lock is held, and the count is of committed orders). The two statements are sent together,
    in one round trip: PostgreSQL runs the count once the lock is held. A refused order leaves
    a gap in the ids, as a rolled-back one always did. The page configs are read in the same
    statement as the count, through FDW; nothing can go on without them, so no savepoint: a
    failure ends the transaction. Finding no SumUp merchant among them is not a failure here:
    an order with nothing to pay needs none."""
    keys = _buyer_keys(user_id, session_id)
    count_and_read = _order_slot(user_id is not None, session_id is not None)
    try:
        _, rows = await run_together(
            session,
            (_buyer_locks(len(keys), True), keys),
            (
                count_and_read,
                {
                    "buyer_user": user_id,
                    "buyer_session": session_id,
                    **candidate_parameters(candidates),
                },
            ),
        )
    except DBAPIError as exc:
        # Blog not answering is the read's failure alone, not the lock's.
        unavailable = (
            provider_unavailable(exc, "blog") if exc.statement == count_and_read.sql else None
        )
        if unavailable is not None:
            raise unavailable from exc
        raise
    recent = rows[0] if rows else None
    assert recent is not None  # an aggregate without GROUP BY: always one row
    count, oldest, now, order_id, configs = recent
    if count >= per_minute:
        retry_after = int((oldest + RATE_WINDOW - now).total_seconds()) + 1
        raise TooManyRequests(
            f"Too many checkouts: at most {per_minute} a minute. Try again in {retry_after} s; "
            "your cart is as it was.",
            retry_after=retry_after,
        )
    return OrderSlot(
        order_id=order_id, now=now, config=choose_payment_config(candidates, configs or [])
    )


def claims_of(request: CreateOrder) -> list[Claim]:
    claims: set[Claim] = set()
    for line in request.cart_items:
        claims.update(("cart_line", line_id) for line_id in line.cart_line_ids)
    claims.update(("calendar_entry", entry.id) for entry in request.calendar_entries)
    claims.update(("ticket", ticket.id) for ticket in request.tickets)
    return sorted(claims)


def goods_of(request: CreateOrder) -> list[Claim]:
    goods: set[Claim] = {("product", line.product_id) for line in request.cart_items}
    goods.update(("calendar_entry", entry.id) for entry in request.calendar_entries)
    goods.update(("ticket", ticket.id) for ticket in request.tickets)
    return sorted(goods)


def _rows_of(parameter: str, *columns: ColumnClause[Any]) -> Any:
    """The rows of a JSON array bound as ``parameter``, typed as ``columns``."""
    return (
        func.jsonb_to_recordset(bindparam(parameter, type_=JSONB))
        .table_valued(*columns)
        .render_derived(name=parameter, with_types=True)
    )


def _claim_rows() -> Any:
    """The new order's claims (``claims``: cart lines and bookings), as rows."""
    return _rows_of(
        "claims", column("kind", table_of(OrderClaim).c.kind.type), column("ref_id", BigInteger())
    )


def _of_kinds(
    kind: ColumnElement[Any], ref: ColumnElement[Any], parameter: str, kinds: tuple[str, ...]
) -> ColumnElement[bool]:
    """``(kind, ref)`` is one of a list of pairs, bound as one array of refs per kind
    (``<parameter>_<kind>``). Always every kind, so that every list has one statement text;
    and each kind is a condition an index answers (a list joined as rows was hashed, and every
    claim in the table read)."""
    return or_(
        *(
            and_(
                kind == name, ref == any_(bindparam(f"{parameter}_{name}", type_=ARRAY(BigInteger)))
            )
            for name in kinds
        )
    )


def _by_kind(pairs: list[Claim], parameter: str, kinds: tuple[str, ...]) -> dict[str, list[int]]:
    """The parameters of :func:`_of_kinds` for ``pairs``."""
    unknown = {kind for kind, _ in pairs} - set(kinds)
    if unknown:
        raise ValueError(f"unknown kinds {sorted(unknown)} in {parameter}")
    return {f"{parameter}_{name}": [ref for kind, ref in pairs if kind == name] for name in kinds}


def _sharing(has_claims: bool, has_goods: bool, by_user: bool, by_session: bool) -> CTE:
    """The ids of the orders that share a claim of the new order (``by_claim``; for a calendar
    entry, only the buyer's orders), and of the buyer's orders that share its goods (products
    and bookings), new order excluded. The lists are bound as arrays of a fixed number
    (:func:`_of_kinds`), so that every size of cart runs one statement text: one prepared
    statement and one generic plan.

    Each kind of candidate comes from its own index (the claims' key, the buyer's orders and
    their items) and only those orders are looked up later: conditions OR-ed on the orders
    themselves made PostgreSQL test every order in the table (133 ms a checkout at 200,000
    orders)."""
    # Short aliases: under psycopg's limit of 4 kB, a statement's text is parsed once per
    # process, not on every call.
    candidates: list[Select[Any]] = []
    if has_claims:
        # A claim on a calendar entry counts only when it is the buyer's order's (audit s21
        # F3): an entry's id is the same place for the next buyer, and an order keeps claiming
        # an entry its buyer took out of the cart, which another buyer may book; events says
        # which order gets it once one is paid (the other is refunded:
        # settlement.bookings_not_confirmed). Cart lines and tickets are one person's rows for
        # good (sign-in moves them to that person's account before orders adopts the orders
        # claiming them): their claims count whoever's order it is, as they always did.
        claim, holder = table_of(OrderClaim).alias("claim"), table_of(Order).alias("holder")
        candidates.append(
            select(claim.c.order_id, true().label("by_claim"))
            .join(holder, holder.c.id == claim.c.order_id)
            .where(
                _of_kinds(claim.c.kind, claim.c.ref_id, "claims", CLAIM_KINDS),
                or_(claim.c.kind != "calendar_entry", _buyer(by_user, by_session, holder)),
            )
        )
    if has_goods:
        # An alias also because inside a statement on the orders table, "the buyer's orders"
        # must not be read as the row being updated.
        mine, item = table_of(Order).alias("mine"), table_of(OrderItem).alias("item")
        candidates.append(
            select(item.c.order_id, false().label("by_claim"))
            .join(mine, mine.c.id == item.c.order_id)
            .where(
                _buyer(by_user, by_session, mine),
                _of_kinds(item.c.kind, item.c.source_id, "goods", ITEM_KINDS),
            )
        )
    found = candidates[0] if len(candidates) == 1 else union_all(*candidates)
    return found.cte("sharing")


def _one_array(ids: ColumnElement[int]) -> ColumnElement[Any]:
    """The ``ids`` a subquery finds, as one array, for ``column == any_(...)``: the rows of
    that column are then looked up by key whatever the planner guesses of their number.
    (Cast, or ANY would take the subquery's rows for the values, not its one array.)"""
    return cast(select(func.array_agg(ids)).scalar_subquery(), ARRAY(BigInteger))


def _superseding(
    has_claims: bool, has_goods: bool, by_user: bool, by_session: bool
) -> tuple[CTE, CTE]:
    """Superseding (a CTE: the ids it superseded) and the first blocking order (a CTE of at
    most one row: its id and whether it is flagged), for one shape of order. Both read the
    sharing orders, found once."""
    sharing = _sharing(has_claims, has_goods, by_user, by_session)
    # (Joined as rows, a generic plan read every order.)
    sharing_ids = _one_array(sharing.c.order_id)
    orders = table_of(Order)
    superseding = (
        update(orders)
        .where(
            orders.c.id != bindparam("new_order_id"),
            orders.c.id == any_(sharing_ids),
            orders.c.status == "pending",
            orders.c.flagged.is_(False),
        )
        .values(status="superseded", superseded_by=bindparam("new_order_id"), updated_at=func.now())
        .returning(orders.c.id)
        .cte("superseded")
    )
    other = table_of(Order).alias("other")
    blocked = and_(other.c.flagged.is_(True), other.c.status == "pending")
    if has_claims:
        # Goods already paid for: only the very same cart lines and bookings (a product bought
        # again later is a new cart line, and a new purchase).
        blocked = or_(
            blocked,
            and_(
                other.c.status == "paid",
                other.c.id.in_(select(sharing.c.order_id).where(sharing.c.by_claim)),
            ),
        )
    blocking = (
        select(other.c.id, other.c.flagged)
        .where(other.c.id != bindparam("new_order_id"), other.c.id == any_(sharing_ids), blocked)
        .order_by(other.c.id)
        .limit(1)
        .cte("blocking")
    )
    return superseding, blocking


# The columns create-order names for a new order, in its row's order (the others take their
# defaults): one statement text per shape, and the text psycopg caches the parse of
# (tests/unit/test_orders_statements.py measures it with these).
NEW_ORDER_KEYS = (
    "id",
    "user_id",
    "session_id",
    "page_post_id",
    "currency",
    "product_total",
    "calendar_total",
    "ticket_total",
    "total",
    "description",
    "page_config_id",
    "merchant_code",
    "checkout_prefix",
    "payable_until",
)


@functools.cache
def _placing(
    order_keys: tuple[str, ...], has_claims: bool, has_goods: bool, by_user: bool, by_session: bool
) -> DirectStatement:
    """:func:`_place_order`, run directly on the session's connection (apps.common.direct)."""
    return DirectStatement(_place_order(order_keys, has_claims, has_goods, by_user, by_session))


@functools.cache
def _place_order(
    order_keys: tuple[str, ...], has_claims: bool, has_goods: bool, by_user: bool, by_session: bool
) -> Select[Any]:
    """One statement for one shape of order: insert the order (``new_order_id``, the columns
    ``order_keys`` as ``order_<name>``, the others take their defaults), its items (``items``,
    a JSON array) and its claims (``claims``), and supersede what it replaces, returning the
    superseded ids and the first blocking order.

    Every part reads the snapshot from before the statement: superseding and the search never
    see the new order's rows (they exclude its id anyway), the foreign keys of the items and
    claims are checked at the statement's end, when the order is there. The search for a
    blocking order sees the same answer as after the UPDATE would (it touches only unflagged
    pending orders, and a blocking order is flagged or paid)."""
    orders, items_table, claims_table = table_of(Order), table_of(OrderItem), table_of(OrderClaim)
    new_order = (
        insert(orders)
        .values(
            {
                orders.c[key]: bindparam(
                    "new_order_id" if key == "id" else f"order_{key}", type_=orders.c[key].type
                )
                for key in order_keys
            }
        )
        .cte("new_order")
    )
    item_columns = [c for c in items_table.c if c.name not in ("id", "order_id")]
    item_rows = _rows_of("items", *(column(c.name, c.type) for c in item_columns))
    new_items = (
        insert(items_table)
        .from_select(
            ["order_id", *(c.name for c in item_columns)],
            select(bindparam("new_order_id"), *(item_rows.c[c.name] for c in item_columns)),
        )
        .cte("new_items")
    )
    ctes: list[CTE] = [new_order, new_items]
    if has_claims:
        claim_rows = _claim_rows()
        ctes.append(
            insert(claims_table)
            .from_select(
                ["kind", "ref_id", "order_id"],
                select(claim_rows.c.kind, claim_rows.c.ref_id, bindparam("new_order_id")),
            )
            .cte("new_claims")
        )
    if not (has_claims or has_goods):
        return select(null(), null(), null()).add_cte(*ctes)  # type: ignore[return-value]
    superseding, blocking = _superseding(has_claims, has_goods, by_user, by_session)
    return select(
        select(func.array_agg(superseding.c.id)).scalar_subquery(),
        select(blocking.c.id).scalar_subquery(),
        select(blocking.c.flagged).scalar_subquery(),
    ).add_cte(*ctes)


async def place_order(
    session: AsyncSession,
    row: dict[str, Any],
    items: list[dict[str, Any]],
    claims: list[Claim],
    goods: list[Claim],
) -> list[int]:
    """Insert the order ``row``, its items and claims, and supersede the earlier pending orders
    that share its goods, in one statement (four round trips were a third of create-order's
    statements). Then no shared good may be paid for or under review: that is a 409 and the
    whole order rolls back."""
    if tuple(row) != NEW_ORDER_KEYS:
        raise ValueError(f"a new order's row names {tuple(row)}, not {NEW_ORDER_KEYS}")
    user_id, session_id = row["user_id"], row["session_id"]
    statement = _placing(
        NEW_ORDER_KEYS, bool(claims), bool(goods), user_id is not None, session_id is not None
    )
    parameters: dict[str, Any] = {
        f"order_{key}": value for key, value in row.items() if key != "id"
    }
    parameters |= {
        "new_order_id": row["id"],
        "items": [{**item, "unit_price": str(item["unit_price"])} for item in items],
        "claims": [{"kind": kind, "ref_id": ref_id} for kind, ref_id in claims],
        **_by_kind(claims, "claims", CLAIM_KINDS),
        **_by_kind(goods, "goods", ITEM_KINDS),
        "buyer_user": user_id,
        "buyer_session": session_id,
    }
    placed = await statement.first(session, parameters)
    assert placed is not None  # one row, whatever the statement did
    superseded_ids, blocking_id, blocking_flagged = placed
    superseded = sorted(superseded_ids or [])
    if blocking_id is not None:
        if blocking_flagged:
            raise _under_review(blocking_id)
        raise Conflict(
            f"These goods are already paid for in order {blocking_id}; your cart will be "
            "updated shortly",
            order_id=blocking_id,
        )
    # Said once committed (apps.orders.internal.create_order): this transaction may yet roll
    # back (SumUp refusing, the process killed), and the line would name an order never made.
    return superseded


# -- create ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NewOrder:
    created: CreatedOrder
    # Earlier orders this one replaced: their checkouts are closed once this commits.
    superseded: list[int]


_ATTEMPT_COLUMNS = (
    "order_id",
    "number",
    "checkout_reference",
    "sumup_checkout_id",
    "hosted_url",
    "status",
    "amount",
    "currency",
)
_ATTEMPT_INSERT = DirectStatement(
    insert(table_of(PaymentAttempt))
    .values({name: bindparam(name) for name in _ATTEMPT_COLUMNS})
    .returning(table_of(PaymentAttempt).c.id)
)


@dataclass(frozen=True)
class OpenedCheckout:
    """SumUp's checkout made for a new order, and the account it was made with."""

    order_id: int
    checkout_id: str
    account: MerchantAccount


@dataclass(frozen=True)
class AskedCheckout:
    """A checkout create-order asked SumUp for, by the reference it asked under: SumUp may
    have made it even when the answer never came (lost, or too late)."""

    order_id: int
    reference: str
    account: MerchantAccount
    valid_until: datetime


@dataclass
class HeldForNewOrder:
    """The new order create-order asked events to hold bookings for, if it did, and the SumUp
    checkout it made for it. Until the order is committed, a failure must give them back and
    close it (:func:`give_back_unless_committed`): events applied the hold, or may yet, and
    SumUp's checkout could take money, for an order that then never existed."""

    order_id: int | None = None
    # create_order returned: the order is in the transaction, which is committed next. A failure
    # from here on may come after PostgreSQL committed it (review s21 LOW-2).
    made: bool = False
    opened: OpenedCheckout | None = None
    asked: AskedCheckout | None = None


async def create_order(
    session: AsyncSession,
    request: CreateOrder,
    runtime: OrdersRuntime,
    held: HeldForNewOrder | None = None,
) -> NewOrder:
    """Insert the order (pending), its items and claims, supersede what it replaces (queueing
    the give-back of what it held: settlement.enqueue_give_back_of_superseded), hold its
    bookings and create its first SumUp checkout, all in the caller's transaction: if anything
    fails, nothing is left behind (bookings stay held for the buyer, no longer than before:
    the caller gives events' holds back, ``held`` saying for which order it asked).
    An order with nothing to pay is paid as it is made instead, and needs no SumUp merchant:
    without one, it names none."""
    settings = runtime.settings
    currency = validate_order(request)
    _check_urls(request, runtime.urls)
    if request.user_id is None and _total_of(request) == 0:
        # Nothing to pay, so nothing ties the order to a person: free places (a whole entry, any
        # number of tickets) are confirmed for accounts, which orders limits per minute, not
        # for any passer-by at the rate of the sessions they can make.
        raise Conflict(
            "Sign in to confirm free bookings: with nothing to pay, they are confirmed for an "
            "account. Your cart keeps them while you sign in."
        )
    containers = {
        line.market_place_container_id
        for line in request.cart_items
        if line.market_place_container_id is not None
    } | {
        line.container_id
        for line in (*request.calendar_entries, *request.tickets)
        if line.container_id is not None
    }
    candidates = config_candidates(request.page_post_id, containers)
    slot = await reserve_order_slot(
        session, request.user_id, request.session_id, settings.checkouts_per_minute, candidates
    )
    if request.user_id is None and request.session_id is not None:
        await _refuse_if_signed_in(session, request.session_id)
    config = slot.config
    total = _total_of(request)
    if config is None and total > 0:
        raise payments_not_configured(candidates)
    payable_until = slot.now + timedelta(seconds=settings.payable_seconds)

    # Plain rows placed by one Core statement: the ORM's unit of work cost more Python than
    # the statements (bench.checkout's breakdown); the Order object only carries the row on.
    row: dict[str, Any] = {
        "id": slot.order_id,
        "user_id": request.user_id,
        "session_id": request.session_id,
        "page_post_id": request.page_post_id,
        "currency": currency,
        "product_total": money(request.product_total),
        "calendar_total": money(request.calendar_total),
        "ticket_total": money(request.ticket_total),
        "total": total,
        "description": f"rose-ash order #{slot.order_id}",
        "page_config_id": config.id if config else None,
        "merchant_code": config.account.merchant_code if config else None,
        "checkout_prefix": config.checkout_prefix if config else None,
        "payable_until": payable_until,
    }
    items = [
        *(_product_item(line) for line in request.cart_items),
        *(
            {
                "kind": kind,
                "source_id": line.id,
                "title": line.title,
                "slug": None,
                "image": None,
                "unit_price": money(line.price),
                "currency": line.currency,
                "quantity": 1,
                "market_place_container_id": line.container_id,
                "cart_line_ids": None,
            }
            for kind, lines in (
                ("calendar_entry", request.calendar_entries),
                ("ticket", request.tickets),
            )
            for line in lines
        ),
    ]
    order = Order(**row)
    opening: asyncio.Future[dict[str, Any]] | None = None
    if total > 0 and config is not None and not (request.calendar_entries or request.tickets):
        # Nothing to hold at events: SumUp's checkout is opened while the order is placed (the
        # two round trips wait together). Nobody gets its URL unless the order commits; one
        # made for an order then refused is closed (_close_unused_checkout).
        opening = asyncio.ensure_future(
            asyncio.wait_for(
                _open_checkout(order, 1, runtime, config.account, valid_until=payable_until),
                settings.create_order_deadline,
            )
        )
        # Its outcome is read even if no one awaits it (a request ended at shutdown).
        opening.add_done_callback(retrieved)
    try:
        superseded = await place_order(session, row, items, claims_of(request), goods_of(request))
        await enqueue_give_back_of_superseded(session, superseded)
    except BaseException:
        if opening is not None and config is not None:
            # Not awaited here: the refusal (or the request's end) is answered at once, its
            # transaction and locks let go, and the checkout is closed once SumUp made it.
            runtime.jobs.run_soon(
                _close_unused_checkout(opening, runtime, config.account),
                "orders-close-unused-checkout",
            )
        raise
    try:
        async with asyncio.timeout(settings.create_order_deadline):
            if held is not None and (request.calendar_entries or request.tickets):
                held.order_id = order.id  # set first: a hold that times out may be applied
            await hold_bookings(runtime, order, request)
            if total == 0 or config is None:
                # Every line is free: nothing to take, no SumUp checkout; paid as it is made.
                # (No config with something to pay was refused above.)
                await pay_with_nothing_to_pay(session, order)
                return NewOrder(paid_answer(order, runtime.urls), superseded)
            if held is not None and order.checkout_prefix is not None:
                reference = checkout_reference(order.checkout_prefix, order.id, 1)
                held.asked = AskedCheckout(order.id, reference, config.account, payable_until)
            try:
                row = await (
                    opening
                    or _open_checkout(order, 1, runtime, config.account, valid_until=payable_until)
                )
            except Exception as exc:
                if held is not None and made_no_checkout(exc):
                    held.asked = None  # SumUp said no: nothing of it to close after a rollback
                raise
            if held is not None:
                held.opened = OpenedCheckout(order.id, row["sumup_checkout_id"], config.account)
            # Written with the COMMIT, in its round trip: nothing reads it before.
            await write_at_commit(session, _ATTEMPT_INSERT, row)
            attempt = PaymentAttempt(**row)
        # SumUp just took this key: the order's webhook can use it without asking blog again.
        runtime.recent_accounts.learn(config.id, config.account)
        runtime.recent_accounts.opened(
            row["sumup_checkout_id"], order.id, config.id, config.account
        )
    except TimeoutError:
        raise PaymentProviderUnavailable(
            f"no answer within {settings.create_order_deadline:g} s; nothing was created"
        ) from None
    return NewOrder(payable_answer(order, attempt), superseded)


async def _close_unused_checkout(
    opening: asyncio.Future[dict[str, Any]], runtime: OrdersRuntime, account: MerchantAccount
) -> None:
    """The order SumUp's checkout was opened for was refused: nobody has the checkout's URL,
    and it is closed so that it can take no money even so. Best effort, and never in place of
    the refusal: it expires unpaid at its ``valid_until`` anyway."""
    try:
        row = await opening
    except Exception:  # SumUp made none, or we cannot know which: nothing to close
        return
    await close_checkout_of_no_order(runtime, row["order_id"], row["sumup_checkout_id"], account)


async def _close_asked_checkout(runtime: OrdersRuntime, asked: AskedCheckout) -> None:
    """SumUp's answer to the checkout of an order never committed did not come (lost, or too
    late): the one SumUp holds under its reference, if any, is closed, when it is this order's
    (the payable time it was asked for; a reference handed out again is another order's, see
    _open_checkout). Best effort, as :func:`close_checkout_of_no_order`."""
    try:
        found = await runtime.gateway.find_checkout(asked.account, asked.reference)
    except Exception as exc:
        logger.warning("could not look up unused SumUp checkout %s: %s", asked.reference, exc)
        return
    if found is None or not same_moment(found.valid_until, asked.valid_until):
        return
    await close_checkout_of_no_order(runtime, asked.order_id, found.id, asked.account)


async def close_checkout_of_no_order(
    runtime: OrdersRuntime, order_id: int, checkout_id: str, account: MerchantAccount
) -> None:
    """Close a checkout SumUp made for an order that was never committed (refused, or its
    transaction rolled back): nobody was given its URL, and closed it can take no money even
    so. Best effort: it expires unpaid at its ``valid_until`` anyway. One SumUp says took money
    all the same is named for a person, as nothing here records it."""
    try:
        remote = await runtime.gateway.deactivate_checkout(account, checkout_id)
    except Exception as exc:  # the failure is the answer, whatever SumUp says to this
        logger.warning("could not close unused SumUp checkout %s: %s", checkout_id, exc)
        return
    if remote.status not in UNUSED_CHECKOUT_STATES or remote.paid_transaction_id is not None:
        logger.error(
            "SumUp checkout %s (%s), made for order %s, which was never committed, is %s "
            "(transaction %s) for %s %s: no order records it; refund it in SumUp's dashboard",
            checkout_id,
            remote.reference,
            order_id,
            remote.status,
            remote.paid_transaction_id or remote.transaction_id,
            remote.amount,
            remote.currency,
        )


def payable_answer(order: Order, attempt: PaymentAttempt) -> CreatedOrder:
    """Create-order's answer while the order waits for its payment: the buyer goes to the
    hosted checkout of its current attempt."""
    return CreatedOrder(
        order_id=order.id,
        sumup_hosted_url=attempt.hosted_url or "",
        page_config_id=order.page_config_id,
        sumup_reference=attempt.checkout_reference,
        description=order.description,
        next_url=attempt.hosted_url or "",
    )


def paid_answer(order: Order, urls: OrderUrls, stored: CreatedOrder | None = None) -> CreatedOrder:
    """Create-order's answer for a paid order: the buyer goes to its return page. ``stored`` is
    the answer the order was made with (its SumUp checkout, if it had one)."""
    return CreatedOrder(
        order_id=order.id,
        sumup_hosted_url=stored.sumup_hosted_url if stored else "",
        page_config_id=order.page_config_id,
        sumup_reference=stored.sumup_reference if stored else "",
        description=order.description,
        next_url=urls.return_page(order.id),
        paid=True,
    )


async def answer_once_confirmed(
    session: AsyncSession, runtime: OrdersRuntime, created: dict[str, Any]
) -> dict[str, Any]:
    """Create-order's paid answer, once the order's confirmation had its chance
    (:func:`once_delivered`: its bookings are confirmed before the buyer is answered, so that
    the cart they come back to no longer offers to remove them). An order with nothing to pay
    is "paid" only in that its bookings are confirmed, and the buyer may remove them from the
    cart until events confirms them (audit s19 M4): events then confirms none, and the order
    is cancelled. So:

    - cancelled: a 409 saying nothing was confirmed, not "paid";
    - its confirmation still on its way (events slow or down): not said to be paid; the buyer
      goes to its return page all the same, which says what became of it;
    - otherwise (confirmed, or an order paid through SumUp, whose money is taken whatever
      events does): the answer as it was."""
    order_id = created["order_id"]
    order = await once_delivered(session, runtime, order_id)
    state = await order_state(session, order)
    if state == "cancelled":
        raise Conflict(
            f"Nothing was confirmed: the bookings of order {order_id} left your cart before "
            "they could be confirmed for it, so it is cancelled (there was nothing to pay). "
            "Book them again to check out",
            order_id=order_id,
        )
    if state == "confirming":
        return {**created, "paid": False}
    return created


def _under_review(order_id: int) -> Conflict:
    """The same goods again while their order is flagged: money may have arrived for it."""
    return Conflict(
        f"Order {order_id} for these goods is being reviewed; we will contact you",
        order_id=order_id,
    )


async def replay_checkout(
    session: AsyncSession, stored: Any, request: CreateOrder, runtime: OrdersRuntime
) -> CreatedOrder | None:
    """What a create-order with a known key answers now (the contract's rule, see
    ``apps.orders.contract.create_order``): the order the key made, with its current attempt,
    while the buyer can still pay that attempt; None once they cannot (the order expired, was
    superseded or cancelled, its payable time passed, its current attempt ended, it has had
    the most attempts an order may have, or a late payment for it is being given back), so that
    the same cart makes a new order instead of being pinned to a dead one. A flagged order is a
    409: money may have arrived for it, and a new order for the same goods could take it twice;
    a person decides. A paid order sends the buyer to its return page (its goods leave the
    cart shortly; a new order for them would be refused anyway), unless it claims none of the
    request's cart lines and bookings: it let go of its bookings (events could not confirm them
    for it, their price went back: ``settlement.bookings_not_confirmed``), the buyer booked
    them again, and a new order is what can confirm them. While it still claims some of them
    (its products, before their clear reaches cart), a new order would be refused: the buyer
    gets its return page, and the cart checked out once its goods have left makes the new
    order.

    The request's bookings are held for a payable order again, as a new order holds them
    (:func:`hold_bookings`): the buyer may have taken one out of the cart and booked it again
    since, and it is then held only for the cart's while. The buyer's lock keeps a newer order
    from superseding this one in between (its hold would be undone). A booking that can no
    longer be held is create-order's 409.

    The order's row is share-locked before it is read, until the hold is in (audit s19c F5):
    its expiry locks the row (``FOR UPDATE SKIP LOCKED``) before it ends the order's holds
    (release-for-order), so it passes the order by until this commits, and its release comes
    after this hold, not before it (which would have held the booking again, for an order that
    can no longer be paid, until HOLD_AFTER_PAYABLE past its payable time). A payment settled
    meanwhile waits for the same while, then goes on as ever. An order found dead is let go of
    at once (audit s20c LOW 3): the lock is taken in a savepoint, rolled back then, so that
    the new order made next in this transaction (its SumUp call and all) keeps nothing that
    locks the old one FOR UPDATE waiting, such as its late payment's webhook."""
    created = msgspec.convert(stored, CreatedOrder)
    if not (request.calendar_entries or request.tickets):
        return await _replayed(session, created, request, runtime, lock=False)
    await lock_buyer(session, request.user_id, request.session_id)
    # Rolling back to a savepoint ends the row locks taken after it. Nothing in it writes, so
    # the rollback undoes only the lock, and the ORM objects read in it stay as they are.
    savepoint = await session.begin_nested()
    answer = await _replayed(session, created, request, runtime, lock=True)
    if answer is None:
        await savepoint.rollback()
    else:
        await savepoint.commit()  # the lock stays until the transaction ends
    return answer


async def _replayed(
    session: AsyncSession,
    created: CreatedOrder,
    request: CreateOrder,
    runtime: OrdersRuntime,
    *,
    lock: bool,
) -> CreatedOrder | None:
    """:func:`replay_checkout`'s answer; ``lock``: the order's row share-locked as it is read,
    and the request's bookings held for it again when it is payable."""
    looked_up = (
        select(Order, PaymentAttempt, Order.payable_until > func.statement_timestamp())
        # An order with nothing to pay has no attempt.
        .outerjoin(PaymentAttempt, PaymentAttempt.order_id == Order.id)
        .where(Order.id == created.order_id)
        .order_by(PaymentAttempt.number.desc())
        .limit(1)
    )
    if lock:
        # KEY SHARE: enough to keep the expiry's FOR UPDATE off, and nothing more.
        looked_up = looked_up.with_for_update(read=True, key_share=True, of=Order)
    found = (await session.execute(looked_up)).one_or_none()
    if found is None:
        return None  # no order behind the key: a new one
    order, attempt, still_payable = found
    if order.flagged:
        raise _under_review(order.id)
    if order.status == "paid":
        if await _lets_go_of_everything(session, order.id, request):
            return None
        return paid_answer(order, runtime.urls, created)
    if order.status != "pending" or attempt is None:
        return None
    if (
        not still_payable
        or attempt.status != "PENDING"
        or attempt.number >= runtime.settings.attempts_per_order
    ):
        return None
    await hold_bookings(runtime, order, request, again=True)
    return payable_answer(order, attempt)


async def _lets_go_of_everything(
    session: AsyncSession, order_id: int, request: CreateOrder
) -> bool:
    """Whether the paid order no longer claims any of the request's cart lines and bookings (it
    let go of its bookings, and they were all it had of the request): a new order for them is
    not refused. Only bookings are let go of, so a request without any is always still claimed
    (and costs no query)."""
    if not request.calendar_entries and not request.tickets:
        return False
    claimed = await session.execute(
        select(OrderClaim.kind, OrderClaim.ref_id).where(OrderClaim.order_id == order_id)
    )
    return {(kind, ref_id) for kind, ref_id in claimed}.isdisjoint(claims_of(request))


def _product_item(line: Any) -> dict[str, Any]:
    return {
        "kind": "product",
        "source_id": line.product_id,
        "title": line.product_title,
        "slug": line.product_slug,
        "image": line.product_image,
        "unit_price": money(line.unit_price),
        "currency": line.product_price_currency,
        "quantity": line.quantity,
        "market_place_container_id": line.market_place_container_id,
        "cart_line_ids": list(line.cart_line_ids) or None,
    }


async def hold_bookings(
    runtime: OrdersRuntime, order: Order, request: CreateOrder, *, again: bool = False
) -> None:
    """Ask events to hold the order's bookings for it until it can no longer be paid, and a
    while after (HOLD_AFTER_PAYABLE). A booking that is no longer the buyer's (its hold expired
    and someone else took it) is a 409. ``again`` (a replay of the order's checkout): the hold
    is asked for anew, without the order's key, whose stored answer would hold nothing; holding
    again what is held changes nothing, so the call is retried all the same."""
    entry_ids = sorted(entry.id for entry in request.calendar_entries)
    ticket_ids = sorted(ticket.id for ticket in request.tickets)
    if not entry_ids and not ticket_ids:
        return
    assert order.payable_until is not None
    hold = events.HoldForOrder(
        order_id=order.id,
        user_id=request.user_id,
        session_id=None if request.user_id is not None else request.session_id,
        entry_ids=entry_ids,
        ticket_ids=ticket_ids,
        until=order.payable_until + HOLD_AFTER_PAYABLE,
    )
    try:
        await runtime.client.call(
            events.hold_for_order,
            hold,
            idempotency_key=None if again else f"orders:{order.id}:hold",
            timeout=runtime.settings.events_timeout,
            retry=True,
            # The whole wait, retries included: three attempts of it each outlasted cart's
            # wait for the checkout, and the buyer heard "not confirmed", not "events down".
            deadline=runtime.settings.events_timeout,
        )
    except InternalCallError as exc:
        if exc.remote_status == 409:
            raise Conflict(
                str(exc.problem.get("detail") or exc),
                service="events",
                # Events' way out, passed on (a session sign-in gave away: apps.common.adoption).
                start_afresh=SIGN_OUT_PATH if exc.problem.get(START_AFRESH) else None,
            ) from exc
        outcome = (
            f"order {order.id} is as it was, and checking out again is safe"
            if again
            else "nothing was created"
        )
        raise DependencyUnavailable(
            f"events could not hold the bookings ({exc}); {outcome}", service="events"
        ) from exc


# How long a failed create-order waits for the buyer's lock to learn whether its order was
# committed (order_committed): the order's own transaction holds it until it ends.
COMMIT_OUTCOME_WAIT = "5s"


async def give_back_unless_committed(
    session: AsyncSession, runtime: OrdersRuntime, held: HeldForNewOrder, request: CreateOrder
) -> None:
    """Create-order failed after asking events to hold the new order's bookings, or after
    SumUp made its checkout: give them back (:func:`give_back_holds`) and close the checkout
    (:func:`close_checkout_of_no_order`, in the background) when the order was not committed,
    so that no checkout of no order stays payable until it expires (a payment it took is
    logged). A committed order keeps both: its checkout is reconciled as any. A failure before the
    commit was issued leaves nothing committed. One at or after it (the answer to COMMIT lost,
    a cancellation while awaiting it) may come after PostgreSQL committed the order: giving
    back then would have events refuse every later hold for it, so that the buyer's retry (the
    same cart and key, which replays the payable order) is a 409 until its payable time passes
    (review s21 LOW-2). The database says whether it exists; when it cannot say, nothing is
    given back: the order's expiry (or its holds' end) releases them, whereas a give-back of
    an order that exists would keep its buyer from it."""
    made_for = held.opened or held.asked
    order_id = held.order_id if made_for is None else made_for.order_id
    assert order_id is not None
    if held.made:
        # The request's transaction may still be open (its answer not stored, COMMIT never
        # sent): ended here, so that it no longer holds the buyer's lock order_committed waits
        # for. After a commit, or on a connection lost, there is nothing to roll back.
        try:
            await session.rollback()
        except Exception:
            logger.debug("order %s: the failed create-order's rollback failed", held.order_id)
        committed = await order_committed(runtime, order_id, request)
        if committed is not False:
            if committed is None and held.order_id is not None:
                logger.warning(
                    "order %s: create-order failed at its commit and whether the order exists "
                    "could not be learnt: its bookings stay held for it until its expiry "
                    "(or, if it was not committed, until the hold for it ends)",
                    held.order_id,
                )
            return
    if held.opened is not None:
        opened = held.opened
        runtime.jobs.run_soon(
            close_checkout_of_no_order(runtime, order_id, opened.checkout_id, opened.account),
            "orders-close-rolled-back-checkout",
        )
    elif held.asked is not None:
        runtime.jobs.run_soon(
            _close_asked_checkout(runtime, held.asked), "orders-close-rolled-back-checkout"
        )
    if held.order_id is not None:
        await give_back_holds(runtime, held.order_id)


async def order_committed(
    runtime: OrdersRuntime, order_id: int, request: CreateOrder
) -> bool | None:
    """Whether create-order's order exists, asked from a session of its own once the buyer's
    lock is free (:func:`lock_buyer`): the order's transaction holds it until it ends, so a
    COMMIT still on its way is waited for, not read as "no order". None when that cannot be
    learnt within :data:`COMMIT_OUTCOME_WAIT` (the lock still held) or at all (the database
    cannot be reached)."""
    try:
        async with runtime.maker() as session, session.begin():
            await session.execute(
                select(set_for_the_transaction("lock_timeout", COMMIT_OUTCOME_WAIT))
            )
            await lock_buyer(session, request.user_id, request.session_id)
            return bool(await session.scalar(select(exists().where(Order.id == order_id))))
    except Exception:
        logger.exception("order %s: whether create-order committed it is unknown", order_id)
        return None


def give_back_holds_key(order_id: int) -> str:
    return f"orders:{order_id}:give-back-holds"


async def give_back_holds(runtime: OrdersRuntime, order_id: int) -> None:
    """Create-order failed after asking events to hold the new order's bookings (SumUp could
    not be reached, events answered too late, the commit failed and the order is not there):
    the order never existed, yet events holds them for it, or will once it gets to the request,
    until its payable time and 30 minutes more (audit s20 M1 b). Events' release-for-order of a
    rolled-back order puts each back on the hold it had before (the buyer's cart's), which is
    what the buyer was told: their cart has not changed.

    Queued in a transaction of its own (the order's is rolled back), so that the relay retries
    it when events cannot take it now (or takes it before the hold it undoes: events is down or
    slow), then delivered at once, for the buyer's next look at their cart. Never raises: the
    buyer is answered with the failure that brought this here."""
    key = give_back_holds_key(order_id)
    try:
        async with runtime.maker() as session, session.begin():
            await enqueue_give_back(session, order_id, key)
    except Exception:
        logger.exception(
            "order %s was rolled back after events held its bookings, and giving them back "
            "could not be queued: they stay held until the hold for it ends",
            order_id,
        )
        return
    await runtime.relay.deliver_now([key], within=runtime.settings.return_delivery_seconds)


async def _new_attempt(
    session: AsyncSession,
    order: Order,
    number: int,
    runtime: OrdersRuntime,
    account: MerchantAccount,
    *,
    valid_until: datetime | None,
) -> PaymentAttempt:
    """Attempt ``number`` of the order: its SumUp checkout, and its row written."""
    row = await _open_checkout(order, number, runtime, account, valid_until=valid_until)
    # A Core insert, as for the order: the attempt object only carries the row's values on.
    attempt_id = await _ATTEMPT_INSERT.scalar(session, row)
    return PaymentAttempt(id=attempt_id, **row)


# What a checkout nobody had the page of can be at SumUp (see _open_checkout).
UNUSED_CHECKOUT_STATES = ("PENDING", "EXPIRED")


def same_moment(said: datetime | None, asked: datetime | None) -> bool:
    """Whether the valid_until SumUp says a checkout has is the one asked for: within a second
    (SumUp keeps it to its own precision), a time without a zone read as UTC."""
    if said is None or asked is None:
        return said is asked
    if said.tzinfo is None:
        said = said.replace(tzinfo=UTC)
    return abs(said - asked) < timedelta(seconds=1)


async def _open_checkout(
    order: Order,
    number: int,
    runtime: OrdersRuntime,
    account: MerchantAccount,
    *,
    valid_until: datetime | None,
) -> dict[str, Any]:
    """SumUp's checkout for attempt ``number`` of the order: the attempt's row, not written."""
    if order.checkout_prefix is None:  # nothing to pay (orders 0011): never a checkout
        raise names_no_merchant(order.id)
    reference = checkout_reference(order.checkout_prefix, order.id, number)
    try:
        remote = await runtime.gateway.create_checkout(
            account,
            reference=reference,
            amount=order.total,
            currency=order.currency,
            description=order.description,
            webhook_url=runtime.urls.webhook(order.id),
            redirect_url=runtime.urls.return_page(order.id),
            valid_until=valid_until,
        )
    except PaymentProviderError as exc:
        if exc.key_refused:
            raise merchant_key_refused(order, account, exc) from exc
        raise
    if not remote.hosted_url:
        raise PaymentProviderError("the checkout has no hosted checkout URL")
    if money(remote.amount) != order.total or remote.currency != order.currency:
        # A checkout recovered by reference (409) must be ours: same amount, same currency.
        raise PaymentProviderError(
            f"SumUp already holds {reference} for {remote.amount} {remote.currency}, "
            f"not {order.total} {order.currency}"
        )
    if remote.status not in UNUSED_CHECKOUT_STATES or remote.paid_transaction_id is not None:
        # Nor one anybody used: the only checkout of ours SumUp can hold under the reference
        # already is one whose answer was lost, whose page nobody had (still open, or expired
        # since: its next attempt is made as for any expired one). One paid or tried is
        # another order's, under a reference handed out again (orders restored from a backup
        # older than that order, a second deployment on the merchant and prefix): taken as
        # this order's, its payment paid this order. Its money is for a person to find.
        logger.warning(
            "SumUp holds checkout %s %s for reference %s: not order %s's",
            remote.id,
            remote.status,
            reference,
            order.id,
        )
        raise PaymentProviderError(
            f"SumUp already holds {reference} as another payment ({remote.status}), not "
            f"order {order.id}'s; checking out again makes a new order"
        )
    if remote.recovered and not same_moment(remote.valid_until, valid_until):
        # One nobody used, but made for another order under the reference handed out again
        # (as above): every attempt of an order asks for the order's payable_until, so a
        # checkout an earlier try of ours made carries it. Taken, the other order's buyer would
        # pay this order too. (A checkout made now, not found by its reference, is ours.)
        logger.warning(
            "SumUp holds checkout %s for reference %s valid until %s, not %s: not order %s's",
            remote.id,
            reference,
            remote.valid_until,
            valid_until,
            order.id,
        )
        raise PaymentProviderError(
            f"SumUp already holds {reference} as another checkout (valid until "
            f"{remote.valid_until or 'unsaid'}), not order {order.id}'s; checking out again "
            "makes a new order"
        )
    row: dict[str, Any] = {
        "order_id": order.id,
        "number": number,
        "checkout_reference": reference,
        "sumup_checkout_id": remote.id,
        "hosted_url": remote.hosted_url,
        "status": "PENDING",
        "amount": order.total,
        "currency": order.currency,
    }
    return row


# -- sign-in -----------------------------------------------------------------------------------
# Sign-in's adoptions of anonymous sessions (apps.common.adoption). The buyer lock, which
# create-order and sign-in both take, orders them; the adoption's own lock is not needed.
ADOPTIONS = SessionAdoption(adopted_sessions, lock_namespace="orders-adopt")


async def _refuse_if_signed_in(session: AsyncSession, session_id: str) -> None:
    """An anonymous order for a session sign-in already adopted (a checkout that read the cart
    as the browser signed in) would be for a session nobody uses again, and no sign-in would
    adopt it: the buyer could pay it and never see it. A 409; nothing is made."""
    if await adopted_by(session, ADOPTIONS, session_id) is not None:
        raise given_away("No order was made", "check out again")


async def adopt_orders(session: AsyncSession, request: SignIn) -> AdoptedOrders:
    """The anonymous session's orders become the user's; then, among the user's pending orders,
    a newer one supersedes any older one it shares goods with (one payable order per good), and
    the bookings still held for the older one go back to the cart's hold once this commits.
    The session is recorded as adopted: an anonymous order for it that comes later is refused.
    ``check_only``: only the 409 of a session given to another account."""
    if request.check_only:
        await refuse_another_account(session, ADOPTIONS, request.session_id, request.user_id)
        return AdoptedOrders(adopted=0, superseded=[])
    await lock_buyer(session, request.user_id, request.session_id)
    await record_adoption(session, ADOPTIONS, request.session_id, request.user_id)
    await forget_old_adoptions(session, ADOPTIONS)
    adopted = list(
        await session.scalars(
            update(Order)
            .where(Order.session_id == request.session_id, Order.user_id.is_(None))
            .values(user_id=request.user_id, updated_at=func.now())
            .returning(Order.id)
        )
    )
    pending = list(
        await session.scalars(
            select(Order)
            .options(selectinload(Order.items))
            .where(
                Order.user_id == request.user_id,
                Order.status == "pending",
                Order.flagged.is_(False),
            )
            .order_by(Order.id.desc())
        )
    )
    claims_by_order: dict[int, set[Claim]] = {order.id: set() for order in pending}
    for claim in await session.scalars(
        select(OrderClaim).where(OrderClaim.order_id.in_(list(claims_by_order)))
    ):
        claims_by_order[claim.order_id].add((claim.kind, claim.ref_id))
    kept: list[tuple[int, set[Claim]]] = []
    superseded: list[int] = []
    for order in pending:
        mine = (
            claims_by_order[order.id]
            | {(item.kind, item.source_id) for item in order.items if item.kind != "product"}
            | {("product", item.source_id) for item in order.items if item.kind == "product"}
        )
        newer = next((kept_id for kept_id, theirs in kept if mine & theirs), None)
        if newer is None:
            kept.append((order.id, mine))
            continue
        await session.execute(
            update(Order)
            .where(Order.id == order.id, Order.status == "pending")
            .values(status="superseded", superseded_by=newer, updated_at=func.now())
        )
        superseded.append(order.id)
    await enqueue_give_back_of_superseded(session, superseded)
    return AdoptedOrders(adopted=len(adopted), superseded=superseded)


# -- paying again ------------------------------------------------------------------------------
# New payment attempts per client network: each costs up to three SumUp calls, and one client
# may hold many pending orders (the cap per order does not bound it).
PAY_AGAIN = AdmissionRule(
    table=pay_again_starts,
    lock_namespace="orders-pay-again",
    refusal=lambda per_minute, retry_after: (
        f"Too many payment attempts from your network: at most {per_minute} new payments a "
        f"minute. Try again in {retry_after} s; your order is as it was."
    ),
)


async def _latest_attempt(
    session: AsyncSession, order_id: int
) -> tuple[PaymentAttempt | None, bool]:
    """The order's latest attempt, and whether it was made in the last FRESH_ATTEMPT."""
    current, just_made = (
        await session.execute(
            select(
                PaymentAttempt,
                PaymentAttempt.created_at > func.clock_timestamp() - FRESH_ATTEMPT,
            )
            .where(PaymentAttempt.order_id == order_id)
            .order_by(PaymentAttempt.number.desc())
            .limit(1)
        )
    ).one_or_none() or (None, False)
    return current, just_made


def _gives_back(current: PaymentAttempt | None, just_made: bool, seen_attempt: int | None) -> bool:
    """Whether a pay again gets the current attempt back (clicked twice, or in two tabs at
    once): when SumUp still has it open, no new checkout is made."""
    return (
        current is not None
        and current.status == "PENDING"
        and (just_made or (seen_attempt is not None and current.number > seen_attempt))
    )


async def admit_pay_again(
    session: AsyncSession,
    order: Order,
    seen_attempt: int | None,
    runtime: OrdersRuntime,
    admission: Admission,
) -> int | None:
    """Count the attempt a pay again would make against its client network's limit (429 past
    it), before the order is locked and SumUp is asked anything: the attempt's number, or None
    when the request makes none (it gets the current attempt back, or a 409: not counted).
    Committed at once, so that the network's lock is never held while SumUp answers. Read
    without the order's lock: :func:`start_new_attempt` counts under it what this could not
    foresee (the key is the order's attempt: two clicks that foresaw one attempt count once)."""
    if order.status != "pending" or order.flagged:
        return None
    current, just_made = await _latest_attempt(session, order.id)
    if _gives_back(current, just_made, seen_attempt):
        return None
    number = (current.number + 1) if current is not None else 1
    if number > runtime.settings.attempts_per_order:
        return None
    await admit(session, PAY_AGAIN, admission, f"{order.id}:{number}")
    # Commit, not roll back: the request only read its order, and a rollback would expire it.
    await session.commit()
    return number


async def _count_under_lock(
    session: AsyncSession,
    order_id: int,
    number: int,
    admission: Admission | None,
    counted: int | None,
) -> None:
    """Count attempt ``number`` in the order's transaction when :func:`admit_pay_again` did not
    (the order changed between its read and the lock, or SumUp ended the attempt a second click
    would have got back). Rare: the network's lock is then held until the attempt commits."""
    if admission is not None and counted != number:
        await admit(session, PAY_AGAIN, admission, f"{order_id}:{number}")


async def _read_accounts_for_pay_again(session: AsyncSession, order: Order) -> ConfiguredAccount:
    """The order's page config's SumUp accounts as blog holds them now, for pay again: read
    once, and committed at once (the order is only read so far). postgres_fdw commits its
    remote transaction with ours, so a transaction that read blog cannot commit once blog's
    connection is lost: the transaction that asks SumUp, and must keep what SumUp said
    whatever comes next, reads no foreign table. Blog unable to answer is a 503 before SumUp
    is asked anything."""
    found = await configured_account(session, payment_config_of(order), order.merchant_code)
    await session.commit()
    return found


def _new_checkout_account(order: Order, found: ConfiguredAccount) -> MerchantAccount:
    """The account a new checkout of ``order`` is made with: its merchant's current key (a
    retired key only settles and refunds what its merchant already took). The order's merchant
    is fixed when it is made, so when its page now names another merchant no new checkout can
    ever be made for it: a 409 sending the buyer back to the cart (a new order is for the
    merchant the page names), not the 503 of a key that may come back."""
    config_id = payment_config_of(order)
    try:
        return account_of(order.id, order.merchant_code, config_id, found, new_checkout=True)
    except MerchantKeyGone as gone:
        if gone.names_now is None:
            raise
        raise Conflict(
            f"Order {order.id} can no longer be paid: its page now takes payments through "
            "another SumUp merchant; check out again from your cart"
        ) from gone


async def _refuse_keeping_what_sumup_said(session: AsyncSession, refused: Problem) -> NoReturn:
    """A pay again refused, or failed (the merchant's key gone, SumUp out of reach), after it
    asked SumUp about the current attempt and perhaps closed it: commit what SumUp said (the
    attempt failed, say, or is closed now), then answer; a rollback would forget it while SumUp
    keeps it, and the next look would ask SumUp again. Safe for money: what is committed is
    what a recheck or a close commits (the order's row locked, then the attempt's, as on every
    path; a payment found settles the order, which is no refusal), a new attempt's row is
    written only once SumUp made its checkout (so none half-exists), and commit only lets go
    of locks, so a webhook waiting on the order then reads the attempt as SumUp left it. An
    attempt counted under the order's lock (rare) stays counted: its key is the attempt's
    number, so the pay again that does make it is not counted twice."""
    await session.commit()
    raise refused


async def start_new_attempt(
    session: AsyncSession,
    order: Order,
    seen_attempt: int | None,
    runtime: OrdersRuntime,
    admission: Admission | None = None,
) -> PaymentAttempt | None:
    """Pay again: first make sure the current attempt is not paid (and close it at SumUp so it
    cannot be paid as well), then create a new checkout with a new reference.

    One new attempt at a time per order (the order's row is locked, and the current attempt is
    read under the lock). A request that saw an older attempt than the current one (a double
    click, a second tab) gets the current attempt when it can still be paid, else a 409. None
    when the order turned out to be settled meanwhile: the caller commits that and says so.
    A 409 "check out again", before anything is closed, when no new checkout can be paid or
    made: less than MIN_TIME_TO_PAY left, or the page now names another merchant.
    A new attempt is first counted under its client network's limit (``admission``; None: no
    limit), before SumUp is asked anything; a request that gets the current attempt back is
    not counted."""
    counted = (
        await admit_pay_again(session, order, seen_attempt, runtime, admission)
        if admission is not None
        else None
    )
    # Blog first, in its own transaction, for an order that may be payable as loaded. One
    # loaded otherwise is refused under the lock below, blog unread (a flagged one as under
    # review, even while blog is down); one whose review ended since is asked to reload.
    payable = order.status == "pending" and not order.flagged
    found = await _read_accounts_for_pay_again(session, order) if payable else None
    locked = (
        await session.execute(
            select(
                Order.status,
                Order.flagged,
                Order.superseded_by,
                Order.payable_until,
                func.now().label("now"),
            )
            .where(Order.id == order.id)
            .with_for_update()
        )
    ).one()
    if locked.status == "superseded":
        latest = await latest_checkout(session, order.id)
        if latest is None:  # every superseded order names its replacement; this is a guard
            raise Conflict(f"Order {order.id} was replaced; it cannot be paid again")
        raise Conflict(
            replaced_said(order.id, latest, runtime.urls.order_page(latest.order_id)),
            order_id=latest.order_id,
        )
    if locked.status != "pending":
        raise Conflict(f"Order {order.id} is {locked.status}; it cannot be paid again")
    if locked.flagged:
        raise Conflict(f"Order {order.id} is under review; it cannot be paid again now")
    if locked.payable_until is not None and locked.payable_until <= locked.now:
        raise Conflict(
            f"The time to pay order {order.id} has passed; check out again from your cart"
        )
    if not payable:  # its review ended since it was read: nothing asked of blog or SumUp
        raise Conflict(f"Order {order.id} changed while it was read; reload the order page")
    accounts = MerchantAccounts.as_read(payment_config_of(order), order.merchant_code, found)
    current, just_made = await _latest_attempt(session, order.id)
    number = (current.number + 1) if current is not None else 1
    gives_back_current = _gives_back(current, just_made, seen_attempt)
    most = runtime.settings.attempts_per_order
    if not gives_back_current and number <= most:
        await _count_under_lock(session, order.id, number, admission, counted)
    if current is not None and current.status in OPEN_ATTEMPT_STATES:
        # What SumUp says now: a payment that landed meanwhile settles the order. Asked with
        # the order's merchant's key, a retired one included (the page may name another now).
        applied = await refresh_attempt(session, order, current, runtime.gateway, accounts)
        if applied.order_status != "pending" or applied.flagged:
            return None
    # From here on what SumUp said is kept whatever the answer (one place: the except below):
    # a refusal, the merchant's key gone, SumUp failing as the checkout is closed or made.
    # Nothing here reads blog (_read_accounts_for_pay_again), so nothing aborts the transaction.
    try:
        if current is not None and current.status == "PENDING":
            if _gives_back(current, just_made, seen_attempt):
                # Clicked twice, or in two tabs at once: the payment just started is the one.
                return current
        elif current is not None and seen_attempt is not None and current.number > seen_attempt:
            raise Conflict(
                f"Order {order.id} already has a newer payment (attempt {current.number}); "
                "reload the order page"
            )
        if current is not None and current.number >= most:
            # Before SumUp is asked to close or create anything.
            raise Conflict(
                f"Order {order.id} has had {most} payment attempts, the most one order may "
                "have; check out again from your cart"
            )
        if gives_back_current:
            # SumUp says the attempt it would have got back ended meanwhile: a new one after all.
            await _count_under_lock(session, order.id, number, admission, counted)
        # Whether a new checkout can be made, before the current one is closed: a refusal
        # leaves the buyer what they had.
        if locked.payable_until is not None and locked.payable_until - locked.now < MIN_TIME_TO_PAY:
            raise Conflict(
                f"The time to pay order {order.id} is nearly over, too little to pay it at "
                "SumUp; check out again from your cart"
            )
        account = _new_checkout_account(order, found)
        if current is not None and current.status in OPEN_ATTEMPT_STATES:
            # With the same read: its merchant's current key, the one the new checkout uses.
            applied = await close_attempt(session, order, current, runtime.gateway, accounts)
            if applied.order_status != "pending" or applied.flagged:
                return None
        return await _new_attempt(
            session, order, number, runtime, account, valid_until=locked.payable_until
        )
    except Problem as refused:
        await _refuse_keeping_what_sumup_said(session, refused)


# -- what SumUp reports ------------------------------------------------------------------------
# The webhook's statements wait at most this long (for a row another request holds, say): then
# it answers 503 and SumUp delivers again, as create-order's bound does.
WEBHOOK_STATEMENT_TIMEOUT_MS = 2000


def _attempt_of() -> DirectStatement:
    """The order and attempt a webhook names, as :class:`OrderRow` and :class:`AttemptRow`
    columns in their fields' order (local rows only: the SumUp account it needs to ask SumUp
    comes from RecentMerchantAccounts, or from blog when this process has none). It also sets
    the bound of the statements after it, without a round trip of its own."""
    orders, attempts = table_of(Order), table_of(PaymentAttempt)
    return DirectStatement(
        select(
            *(orders.c[name] for name in _ORDER_FIELDS),
            *(attempts.c[name] for name in _ATTEMPT_FIELDS),
            set_for_the_transaction("statement_timeout", str(WEBHOOK_STATEMENT_TIMEOUT_MS)),
        )
        .join_from(orders, attempts, attempts.c.order_id == orders.c.id)
        .where(
            orders.c.id == bindparam("order_id"),
            attempts.c.sumup_checkout_id == bindparam("checkout_id"),
        )
    )


_ORDER_FIELDS = [field.name for field in fields(OrderRow)]
_ATTEMPT_FIELDS = [field.name for field in fields(AttemptRow)]
_ATTEMPT_OF = _attempt_of()


async def attempt_for_checkout(
    session: AsyncSession, order_id: int, checkout_id: str
) -> tuple[OrderRow, AttemptRow] | None:
    """The order and attempt of a checkout."""
    found = await _ATTEMPT_OF.first(session, {"order_id": order_id, "checkout_id": checkout_id})
    if found is None:
        return None
    split, end = len(_ORDER_FIELDS), len(_ORDER_FIELDS) + len(_ATTEMPT_FIELDS)
    return OrderRow(*found[:split]), AttemptRow(*found[split:end])


async def handle_webhook(
    session: AsyncSession, order_id: int, checkout_id: str, runtime: OrdersRuntime
) -> Applied | None:
    """A webhook names a checkout and nothing else; it is unsigned. Unknown checkouts are
    ignored without calling SumUp, and so are settled ones (PAID or EXPIRED is final at SumUp:
    a notification cannot change it, and anyone may send one); open ones are re-fetched and
    applied, whatever state the order is in (a payment for a superseded order becomes a
    refund). The first webhook of a checkout this process opened for that order (and nothing
    read since) sends its GET while it reads the attempt (:class:`EarlyCheckoutRead`): one
    read of SumUp per such checkout at most, whatever the attempt turns out to be."""
    early = EarlyCheckoutRead.start(runtime.gateway, runtime.recent_accounts, order_id, checkout_id)
    try:
        found = await attempt_for_checkout(session, order_id, checkout_id)
        if found is None:
            return None
        order, attempt = found
        if attempt.status not in OPEN_ATTEMPT_STATES:
            return None
        return await refresh_reported_attempt(
            session, order, attempt, runtime.gateway, runtime.recent_accounts, early
        )
    finally:
        if early is not None:
            early.drop()


async def recheck(
    session: AsyncSession,
    order: Order,
    runtime: OrdersRuntime,
    accounts: MerchantAccounts | None = None,
) -> Applied | None:
    """Re-fetch the open attempts of an order (return page, recheck button): the current one of
    a pending order, and any still open on an order that can no longer be paid."""
    applied: Applied | None = None
    for attempt in order.attempts:
        if attempt.status not in OPEN_ATTEMPT_STATES:
            continue
        if order.status == "pending" and attempt is not order.current_attempt:
            continue
        runtime.recent_accounts.forget_opened(attempt.sumup_checkout_id)
        applied = await refresh_attempt(session, order, attempt, runtime.gateway, accounts)
    return applied


# -- reading -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class LatestCheckout:
    """The end of a chain of superseded orders: the buyer's latest checkout of those goods
    (which may hold other quantities or more goods than the order it replaced)."""

    order_id: int
    status: str

    @property
    def payable(self) -> bool:
        return self.status == "pending"


# A chain is one order per checkout again; this only bounds a chain that would loop.
_MOST_CHAIN_LINKS = 10_000


def _latest_checkouts() -> Select[Any]:
    """The end of the chain of each order of ``:order_ids`` (the order itself when it is not
    superseded), one recursive walk for them all."""
    orders = table_of(Order)
    chain = (
        select(
            orders.c.id.label("origin"),
            orders.c.id,
            orders.c.status,
            orders.c.superseded_by,
            literal(0).label("links"),
        )
        .where(orders.c.id == any_(bindparam("order_ids", type_=ARRAY(BigInteger))))
        .cte("chain", recursive=True)
    )
    newer = orders.alias("newer")
    chain = chain.union_all(
        select(
            chain.c.origin, newer.c.id, newer.c.status, newer.c.superseded_by, chain.c.links + 1
        ).where(
            newer.c.id == chain.c.superseded_by,
            chain.c.status == "superseded",
            chain.c.links < _MOST_CHAIN_LINKS,
        )
    )
    return (
        select(chain.c.origin, chain.c.id, chain.c.status)
        .ext(distinct_on(chain.c.origin))
        .order_by(chain.c.origin, chain.c.links.desc())
    )


_LATEST_CHECKOUTS = _latest_checkouts()


async def latest_checkouts(
    session: AsyncSession, orders: Sequence[Order]
) -> dict[int, LatestCheckout]:
    """For each superseded order of ``orders``, the order at the end of its chain (each
    checkout again supersedes the one before, so ``superseded_by`` may itself be superseded):
    where the buyer is sent, rather than one hop at a time. Orders not superseded are absent;
    no query when none is."""
    superseded = [order.id for order in orders if order.status == "superseded"]
    if not superseded:
        return {}
    rows = await session.execute(_LATEST_CHECKOUTS, {"order_ids": superseded})
    return {row.origin: LatestCheckout(row.id, row.status) for row in rows if row.id != row.origin}


async def latest_checkout(session: AsyncSession, order_id: int) -> LatestCheckout | None:
    """For a superseded order, the order at the end of its chain (see
    :func:`latest_checkouts`). None for an order not superseded."""
    row = (await session.execute(_LATEST_CHECKOUTS, {"order_ids": [order_id]})).one_or_none()
    if row is None or row.id == order_id:
        return None
    return LatestCheckout(row.id, row.status)


async def latest_checkout_of(session: AsyncSession, order: Order) -> LatestCheckout | None:
    """:func:`latest_checkout` for an order in hand: no query unless it is superseded."""
    return (await latest_checkouts(session, [order])).get(order.id)


def replaced_said(order_id: int, latest: LatestCheckout, order_page: str) -> str:
    """Why a superseded order cannot be paid, and where to go instead."""
    then = f"pay {order_page} instead" if latest.payable else f"see {order_page}"
    return (
        f"Order {order_id} was replaced when you checked out again; your latest checkout of "
        f"these goods is order {latest.order_id}: {then}"
    )


def owned_by(order: Order, user_id: int | None, session_id: str) -> bool:
    if order.user_id is not None:
        return order.user_id == user_id
    return order.session_id == session_id


# What a page or an answer about orders shows: the lines, the payment attempts, the refunds.
WITH_DETAILS = (
    selectinload(Order.items),
    selectinload(Order.attempts),
    selectinload(Order.refunds),
)


def unconfirmed_bookings(order: Order) -> list[OrderItem]:
    """The bookings of an order that events could not confirm for it (the buyer removed them
    from the cart the moment before), as recorded when it answered
    (settlement.bookings_not_confirmed), whatever the order's total. Lines older than orders
    0012 whose fate it could not tell are not among them."""
    return [item for item in order.items if item.unconfirmed_at is not None]


def unconfirmed_note(order: Order) -> str:
    """One sentence for an order's pages, after its state, when some of its bookings could not
    be confirmed; empty when none. When what they cost goes back (a paid order's refund of
    them, listed with its amount under "Money going back to you"), the sentence says so rather
    than naming them a second time; a free booking had nothing to give back."""
    lost = unconfirmed_bookings(order)
    if not lost:
        return ""
    count = sum(item.quantity for item in lost)
    titles = ", ".join(line.named for line in order_lines(lost))
    note = f"{count} booking{'' if count == 1 else 's'} could not be confirmed: {titles}"
    if any(refund.reason_key.startswith(f"{UNCONFIRMED_BOOKINGS}:") for refund in order.refunds):
        note += f"; what {'it' if count == 1 else 'they'} cost goes back to you"
    return note


def nothing_confirmed(order: Order) -> bool:
    """Whether events could confirm none of the order's lines (all bookings): what was paid for
    it goes back whole (settlement.bookings_not_confirmed), and its pages say so."""
    return bool(order.items) and all(item.unconfirmed_at is not None for item in order.items)


def ended_by_review(order: Order) -> bool:
    """Whether a person's review (``rose orders end-review``) is what ended an order that is
    no longer paid: its flag cleared, its reason kept, and no payment of it that came after it
    could no longer be paid (that is its own story, told as such). Its pages then say so: a
    pending order paid in time and flagged (another amount reported, or a person's flag) that
    the review refunded or expired was neither paid late nor out of time; one whose time to pay
    had passed before it was flagged, which the review left expired, was."""
    return (
        order.flag_reason is not None
        and not order.flagged
        # An order whose time to pay had passed before it was flagged: the review kept its
        # status. (None: reviewed before orders 0019, told by its flag reason as then.)
        and order.review_ended_it is not False
        and not any(refund.reason_key.startswith(f"{LATE_PAYMENT}:") for refund in order.refunds)
    )


def pay_again_offer(order: Order, most_attempts: int, now: datetime | None = None) -> str:
    """What an order's pages say of pay again: "offered", or why :func:`start_new_attempt` can
    only refuse it (the 409 "check out again"): "attempts_used_up" (the order had the most
    attempts an order may have), "too_late" (less than MIN_TIME_TO_PAY of its payable time
    left). The app's clock, not the database's: a page need not ask the database the time,
    and a few seconds between the two do not matter against two minutes."""
    current = order.current_attempt
    if current is not None and current.number >= most_attempts:
        return "attempts_used_up"
    if order.payable_until is not None and (
        order.payable_until - (now or datetime.now(UTC)) < MIN_TIME_TO_PAY
    ):
        return "too_late"
    return "offered"


def payment_state(order: Order, confirming: bool) -> str:
    """What the buyer is told of an order, on every page and in every answer about it: paid,
    confirming, review (flagged), failed (pay again), waiting, or why the order can no longer
    be paid (superseded, expired, cancelled, refund_due, refunded). ``confirming``: the order's
    confirmation of its bookings is queued and not yet delivered (:func:`order_states`).

    An order with nothing to pay is paid as it is made, but it is confirmed only once events
    has confirmed its bookings, and the buyer may remove them from the cart until then (the
    order then ends cancelled; audit s19 M4): until then it is "confirming", not "paid". An
    order paid through SumUp is paid whatever events does (its money is taken)."""
    if order.flagged:
        return "review"
    if order.status == "paid" and not order.total and confirming:
        return "confirming"
    if order.status != "pending":
        return order.status
    attempt = order.current_attempt
    if attempt is not None and attempt.status in ("FAILED", "EXPIRED"):
        return "failed"
    return "waiting"


async def order_states(session: AsyncSession, orders: Sequence[Order]) -> dict[int, str]:
    """:func:`payment_state` of each order, by id: one look at the outbox for those that may
    still be confirming (paid with nothing to pay), none when no order may."""
    keys = {
        confirm_bookings_key(order.id): order.id
        for order in orders
        if order.status == "paid" and not order.total
    }
    waiting: set[int] = set()
    if keys:
        waiting = {
            keys[key]
            for key in await session.scalars(
                select(outbox.c.idempotency_key).where(
                    outbox.c.idempotency_key.in_(list(keys)), outbox.c.delivered_at.is_(None)
                )
            )
        }
    return {order.id: payment_state(order, order.id in waiting) for order in orders}


async def order_state(session: AsyncSession, order: Order) -> str:
    """:func:`payment_state` of one order."""
    return (await order_states(session, [order]))[order.id]


async def once_delivered(session: AsyncSession, runtime: OrdersRuntime, order_id: int) -> Order:
    """A paid order as it is once what its payment queued (the cart's clear, the bookings'
    confirmation) has been delivered, or the page's wait for that has ended: the return page
    shows the cart emptied, and what events' answer recorded (bookings it could not confirm,
    a refund of what they cost, an order with nothing to pay cancelled). Read again every time,
    by its key: the relay may have finished the delivery between the caller's read and the
    look at what is left to deliver, which then finds nothing due, and a paid page does not
    look again."""
    await session.commit()  # no transaction left open while the page waits
    await runtime.relay.deliver_now(
        after_payment_keys(order_id), within=runtime.settings.return_delivery_seconds
    )
    delivered = await load_order(session, order_id)
    assert delivered is not None
    return delivered


async def load_order(session: AsyncSession, order_id: int) -> Order | None:
    return await session.scalar(
        select(Order).options(*WITH_DETAILS).where(Order.id == order_id),
        execution_options={"populate_existing": True},
    )


async def get_owned_order(
    session: AsyncSession, order_id: int, user_id: int | None, session_id: str
) -> Order:
    """The order if it belongs to this identity; another's order is indistinguishable from a
    missing one (404)."""
    order = await load_order(session, order_id)
    if order is None or not owned_by(order, user_id, session_id):
        raise NotFound(f"Order {order_id} does not exist")
    return order


async def list_orders(
    session: AsyncSession,
    user_id: int | None,
    session_id: str,
    page: int,
    per_page: int = ORDERS_PER_PAGE,
) -> tuple[list[Order], int]:
    owner = (
        Order.user_id == user_id
        if user_id is not None
        else (Order.session_id == session_id) & Order.user_id.is_(None)
    )
    total = await session.scalar(select(func.count()).select_from(Order).where(owner)) or 0
    orders = list(
        await session.scalars(
            select(Order)
            .options(*WITH_DETAILS)
            .where(owner)
            .order_by(Order.id.desc())
            .limit(per_page)
            .offset((page - 1) * per_page)
        )
    )
    return orders, total


def order_dict(order: Order, latest: LatestCheckout | None) -> dict[str, Any]:
    """An order's JSON. ``latest``: the end of its chain when it is superseded
    (:func:`latest_checkouts`), the order its page sends the buyer to."""
    attempt = order.current_attempt
    return {
        "id": order.id,
        "status": order.status,
        "flagged": order.flagged,
        # The next order only (kept for compatibility): it may itself have been replaced.
        "superseded_by": order.superseded_by,
        # The end of the chain: the buyer's latest checkout of these goods.
        "latest_checkout_id": latest.order_id if latest is not None else None,
        "currency": order.currency,
        "product_total": str(order.product_total),
        "calendar_total": str(order.calendar_total),
        "ticket_total": str(order.ticket_total),
        "total": str(order.total),
        "description": order.description,
        "page_post_id": order.page_post_id,
        "created_at": order.created_at.isoformat(),
        "paid_at": order.paid_at.isoformat() if order.paid_at else None,
        "payable_until": order.payable_until.isoformat() if order.payable_until else None,
        "payment": None
        if attempt is None
        else {
            "attempt": attempt.number,
            "status": attempt.status,
            "reference": attempt.checkout_reference,
        },
        "items": [
            {
                "kind": item.kind,
                "source_id": item.source_id,
                "title": item.title,
                "slug": item.slug,
                "unit_price": str(item.unit_price),
                "quantity": item.quantity,
                "line_total": str(item.line_total),
                "currency": item.currency,
            }
            for item in order.items
        ],
        "refunds": refunds_of(order.refunds),
        "unconfirmed_bookings": [
            {"kind": item.kind, "source_id": item.source_id, "title": item.title}
            for item in unconfirmed_bookings(order)
        ],
    }


async def orders_without_their_key(session: AsyncSession) -> dict[int, str]:
    """Orders that still need SumUp (an open checkout, or money to give back) whose merchant
    has no key in their page config any more (removed, or the page now names another
    merchant), each with what a person should do: a payment may be waiting on SumUp, and
    orders can neither settle nor expire them until the key is back (settlement.MerchantKeyGone).
    Derived from blog's configs as they are now, so nothing is stored to go stale."""
    attempts = select(PaymentAttempt.order_id).where(
        PaymentAttempt.status.in_(OPEN_ATTEMPT_STATES),
        PaymentAttempt.order_id.in_(
            select(Order.id).where(Order.status.in_(("pending", *CLOSED_UNPAID_STATES)))
        ),
    )
    owed = select(Refund.order_id).where(Refund.status.in_(("due", "requested")))
    ids = _one_array(union(attempts, owed).subquery().c.order_id)
    orders = (
        await session.execute(
            select(Order.id, Order.page_config_id, Order.merchant_code).where(
                Order.id == any_(ids), Order.page_config_id.is_not(None)
            )
        )
    ).all()
    if not orders:
        return {}
    config_ids = sorted({order.page_config_id for order in orders})
    async with remote_read(session, "blog"):
        configs = {
            row.id: (row.sumup_merchant_code, row.sumup_api_key)
            for row in await session.execute(
                select(
                    page_payment_configs.c.id,
                    page_payment_configs.c.sumup_merchant_code,
                    page_payment_configs.c.sumup_api_key,
                ).where(page_payment_configs.c.id.in_(config_ids))
            )
        }
        # The keys blog kept for merchants the configs stopped using (settlement.account_of
        # uses them for the checkouts already made and money going back).
        kept = {
            (row.page_config_id, row.sumup_merchant_code): row.sumup_api_key
            for row in await session.execute(
                select(
                    retired_sumup_keys.c.page_config_id,
                    retired_sumup_keys.c.sumup_merchant_code,
                    retired_sumup_keys.c.sumup_api_key,
                ).where(retired_sumup_keys.c.page_config_id.in_(config_ids))
            )
        }
    missing: dict[int, str] = {}
    for order in orders:
        try:
            # A deleted config's orders still have the key blog retired for their merchant.
            now = configs.get(order.page_config_id)
            kept_key = kept.get((order.page_config_id, order.merchant_code))
            account_of(
                order.id,
                order.merchant_code,
                order.page_config_id,
                # As configured_account reads it: None when neither is there.
                None if now is None and kept_key is None else (*(now or (None, None)), kept_key),
            )
        except MerchantKeyGone as gone:
            missing[order.id] = gone.note
    return missing


async def orders_needing_attention(session: AsyncSession) -> Attention:
    """What a person must look at: flagged orders, money owed back, refunds SumUp refused, and
    orders whose SumUp merchant has no key any more (:func:`orders_without_their_key`). That
    last part needs blog's page configs: while blog cannot be read, the rest is listed all the
    same and the answer names blog as degraded (a person is told what is missing)."""
    degraded: list[str] = []
    try:
        keyless = await orders_without_their_key(session)
    except ProviderUnavailable as unavailable:
        keyless, degraded = {}, [unavailable.provider]
    # The candidates' ids first, each from its own search (ix_orders_attention; the refunds),
    # as one array, so that the orders are then looked up by key whatever the planner guesses
    # of their number (one OR over the orders table read every order).
    candidates = union(
        select(Order.id).where(text(NEEDS_A_PERSON)),
        select(Refund.order_id).where(Refund.status != "done"),
    ).subquery()
    ids = _one_array(candidates.c.id)
    orders = await session.scalars(
        select(Order)
        .options(*WITH_DETAILS)
        .where(Order.id == any_(func.array_cat(ids, literal(sorted(keyless), ARRAY(BigInteger)))))
        .order_by(Order.id)
    )
    listed = [
        {
            "order_id": order.id,
            "status": order.status,
            "flagged": order.flagged,
            "flag_reason": order.flag_reason,
            "total": str(order.total),
            "currency": order.currency,
            "user_id": order.user_id,
            "refunds": refunds_of(order.refunds),
            "merchant_key_missing": keyless.get(order.id),
        }
        for order in orders
    ]
    return Attention(listed, degraded)

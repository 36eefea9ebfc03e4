"""Tables of the events service (schema ``events`` in ``db_events``): calendars attached to pages,
their bookable entries, and tickets for those entries."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import (
    CHAR,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Numeric,
    String,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import INET
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from apps.blog import contract as blog
from apps.common.adoption import adopted_sessions_table
from apps.common.db import IdentityPkMixin, TimestampedMixin, service_metadata
from apps.common.idempotency import idempotency_table
from apps.common.nonces import nonce_table
from apps.common.outbox import outbox_table

metadata = service_metadata("events")

ENTRY_STATES = ("open", "pending", "confirmed", "cancelled")
TICKET_STATES = ("pending", "confirmed", "cancelled")
DEFAULT_CURRENCY = "EUR"
SESSION_ID_LENGTH = 64

# A booking belongs to exactly one identity: a signed-in user or an anonymous session.
ONE_OWNER = "num_nonnulls(user_id, session_id) = 1"
# A pending booking always has an end to its hold.
PENDING_HAS_HOLD = "state <> 'pending' OR hold_expires_at IS NOT NULL"
# The entries held from a client network without signing in, in a cart or for an order not paid
# yet, whether or not sign-in adopted them since (an account adopting them must not free the
# network's places: events 0017), by network (service.network_hold_of; the partial index of
# the count per network).
NETWORK_HOLD_ROWS = "state = 'pending' AND hold_network IS NOT NULL"


class Base(DeclarativeBase):
    metadata = metadata


class Calendar(IdentityPkMixin, TimestampedMixin, Base):
    """A calendar of one page (container ``('page', post id)``); both container columns are null
    while it is detached. relations holds the same attachment for the other services."""

    __tablename__ = "calendars"
    __table_args__ = (
        UniqueConstraint("slug"),
        CheckConstraint(
            "(container_type IS NULL) = (container_id IS NULL)", name="container_complete"
        ),
        Index("ix_calendars_container", "container_type", "container_id"),
    )

    slug: Mapped[str] = mapped_column(String(64), nullable=False)
    name: Mapped[str] = mapped_column(String(255), nullable=False)
    container_type: Mapped[str | None] = mapped_column(String(32), nullable=True)
    container_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class CalendarEntry(IdentityPkMixin, TimestampedMixin, Base):
    """A bookable slot. ``open`` -> ``pending`` (booked by one identity, waiting in a cart) ->
    ``confirmed`` (paid, with its order id); ``cancelled`` by the calendar's editors."""

    __tablename__ = "calendar_entries"
    __table_args__ = (
        CheckConstraint("cost >= 0", name="cost_not_negative"),
        CheckConstraint(f"state IN {ENTRY_STATES!r}", name="state_known"),
        CheckConstraint(
            "state <> 'open' OR (user_id IS NULL AND session_id IS NULL AND order_id IS NULL)",
            name="open_has_no_booking",
        ),
        CheckConstraint(
            f"state <> 'pending' OR ({ONE_OWNER} AND order_id IS NULL)",
            name="pending_has_one_owner",
        ),
        CheckConstraint(
            f"state <> 'confirmed' OR ({ONE_OWNER} AND order_id IS NOT NULL)",
            name="confirmed_has_owner_and_order",
        ),
        CheckConstraint(PENDING_HAS_HOLD, name="pending_has_hold"),
        Index("ix_calendar_entries_calendar_id_starts_at", "calendar_id", "starts_at"),
        # The pending bookings of one identity: the remote scan behind cart's FDW reads.
        Index(
            "ix_calendar_entries_pending_user",
            "user_id",
            postgresql_where=text("state = 'pending'"),
        ),
        Index(
            "ix_calendar_entries_pending_session",
            "session_id",
            postgresql_where=text("state = 'pending'"),
        ),
        Index("ix_calendar_entries_order_id", "order_id"),
        # The bookings held for one order (orders' calls about its holds, orders-holding).
        Index(
            "ix_calendar_entries_hold_order_id",
            "hold_order_id",
            postgresql_where=text("hold_order_id IS NOT NULL"),
        ),
        # The live anonymous holds of one client network (counted at each anonymous booking).
        Index(
            "ix_calendar_entries_network_holds",
            "hold_network",
            "hold_expires_at",
            postgresql_where=text(NETWORK_HOLD_ROWS),
        ),
    )

    calendar_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("events.calendars.id"), nullable=False
    )
    name: Mapped[str] = mapped_column(String(255), nullable=False)
    starts_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    cost: Mapped[Decimal] = mapped_column(Numeric(10, 2), nullable=False)
    currency: Mapped[str] = mapped_column(CHAR(3), nullable=False, server_default=DEFAULT_CURRENCY)
    state: Mapped[str] = mapped_column(String(16), nullable=False, server_default="open")
    user_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    session_id: Mapped[str | None] = mapped_column(String(SESSION_ID_LENGTH), nullable=True)
    order_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # A pending booking is held for its owner until then; afterwards it blocks nobody.
    hold_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The order the hold was extended for (confirm-for-order confirms only for it).
    hold_order_id: Mapped[int | None] = mapped_column(BigInteger)
    # The hold it had before hold-for-order held it for that order (a cart's: no order), which
    # release-for-order puts back when that order was rolled back (it never existed).
    prior_hold_order_id: Mapped[int | None] = mapped_column(BigInteger)
    prior_hold_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The cart's own hold, kept while orders hold it, whichever order held it after which:
    # what a give-back goes back to when the orders before it were given back too.
    cart_hold_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The client network (an address, an IPv6 client's /64) an anonymous hold was made from,
    # counted against EVENTS_ANONYMOUS_HOLDS_PER_ADDRESS while it is held, adopted at sign-in
    # or not; NULL for a signed-in hold and an unknown address, cleared when the entry is open
    # again or confirmed.
    hold_network: Mapped[str | None] = mapped_column(INET)


class Ticket(IdentityPkMixin, TimestampedMixin, Base):
    """A ticket for an entry, priced when it is added; pending until its order is paid."""

    __tablename__ = "tickets"
    __table_args__ = (
        CheckConstraint("price >= 0", name="price_not_negative"),
        CheckConstraint(f"state IN {TICKET_STATES!r}", name="state_known"),
        CheckConstraint(
            f"state <> 'pending' OR ({ONE_OWNER} AND order_id IS NULL)",
            name="pending_has_one_owner",
        ),
        CheckConstraint(
            f"state <> 'confirmed' OR ({ONE_OWNER} AND order_id IS NOT NULL)",
            name="confirmed_has_owner_and_order",
        ),
        CheckConstraint(PENDING_HAS_HOLD, name="pending_has_hold"),
        Index("ix_tickets_calendar_entry_id", "calendar_entry_id"),
        Index("ix_tickets_pending_user", "user_id", postgresql_where=text("state = 'pending'")),
        Index(
            "ix_tickets_pending_session", "session_id", postgresql_where=text("state = 'pending'")
        ),
        Index("ix_tickets_order_id", "order_id"),
        Index(
            "ix_tickets_hold_order_id",
            "hold_order_id",
            postgresql_where=text("hold_order_id IS NOT NULL"),
        ),
    )

    calendar_entry_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("events.calendar_entries.id"), nullable=False
    )
    ticket_type: Mapped[str] = mapped_column(String(64), nullable=False)
    price: Mapped[Decimal] = mapped_column(Numeric(10, 2), nullable=False)
    currency: Mapped[str] = mapped_column(CHAR(3), nullable=False, server_default=DEFAULT_CURRENCY)
    state: Mapped[str] = mapped_column(String(16), nullable=False, server_default="pending")
    user_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    session_id: Mapped[str | None] = mapped_column(String(SESSION_ID_LENGTH), nullable=True)
    order_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # A pending booking is held for its owner until then; afterwards it blocks nobody.
    hold_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The order the hold was extended for (confirm-for-order confirms only for it).
    hold_order_id: Mapped[int | None] = mapped_column(BigInteger)
    # The hold it had before hold-for-order held it for that order (a cart's: no order), which
    # release-for-order puts back when that order was rolled back (it never existed).
    prior_hold_order_id: Mapped[int | None] = mapped_column(BigInteger)
    prior_hold_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The cart's own hold, kept while orders hold it, whichever order held it after which:
    # what a give-back goes back to when the orders before it were given back too.
    cart_hold_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ReleasedHold(Base):
    """A booking the sweeper released because its hold ended, and whose it was: the sweep takes
    the owner off an entry, so this is how its cart can still say why the booking left it
    (export.ended_holds). Kept a day; the cart says it for an hour."""

    __tablename__ = "released_holds"
    __table_args__ = (
        CheckConstraint("kind IN ('entry', 'ticket')", name="kind_known"),
        CheckConstraint(ONE_OWNER, name="one_owner"),
        Index("ix_released_holds_user_id", "user_id"),
        Index("ix_released_holds_session_id", "session_id"),
        Index("ix_released_holds_released_at", "released_at"),
    )

    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    booking_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    ended_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    user_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    session_id: Mapped[str | None] = mapped_column(String(SESSION_ID_LENGTH), nullable=True)
    released_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )


class GivenBackOrder(Base):
    """An order orders let go of (release-for-order): create-order failed (``rolled_back``: it
    never existed), it expired, or its payment went back whole (``paid_back``). A hold for it
    that arrives later (sent before orders gave up, and slower than the give-back) holds
    nothing, a later order's give-back never returns a booking to its hold, and a confirm for
    it confirms nothing. Kept a day: a hold is sent within create-order's deadline, and orders
    never makes an order id twice. A paid-back order is kept for good: its confirm may be a
    dead message a person resends any time later."""

    __tablename__ = "given_back_orders"
    __table_args__ = (Index("ix_given_back_orders_given_back_at", "given_back_at"),)

    order_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    given_back_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )
    paid_back: Mapped[bool] = mapped_column(Boolean, server_default=text("false"), nullable=False)


# Anonymous sessions sign-in adopted (apps.common.adoption): a booking still carrying one is
# refused, and a checkout the session started is told why its bookings moved.
adopted_sessions = adopted_sessions_table(metadata)
idempotency_keys = idempotency_table(metadata)
request_nonces = nonce_table(metadata)
# The undos relations could not be given when due (apps.relations.contract.RelationsLink).
outbox = outbox_table(metadata)

# -- foreign tables: other services' export views, as their contracts declare them ------------
foreign_pages = blog.PAGES.foreign_table()

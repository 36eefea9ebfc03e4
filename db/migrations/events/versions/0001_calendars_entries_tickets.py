"""calendars, calendar_entries, tickets, idempotency keys, export view pending_bookings

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

from apps.common.migration_helpers import create_idempotency_keys, timestamps

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# A booking belongs to exactly one identity: a signed-in user or an anonymous session.
ONE_OWNER = "num_nonnulls(user_id, session_id) = 1"


def booking_columns() -> list[sa.Column]:
    """Who holds a booking and which order paid for it (entries and tickets alike)."""
    return [
        sa.Column("user_id", sa.BigInteger, nullable=True),
        sa.Column("session_id", sa.String(64), nullable=True),
        sa.Column("order_id", sa.BigInteger, nullable=True),
    ]


def booking_checks(table: str) -> list[sa.CheckConstraint]:
    return [
        sa.CheckConstraint(
            f"state <> 'pending' OR ({ONE_OWNER} AND order_id IS NULL)",
            name=op.f(f"ck_{table}_pending_has_one_owner"),
        ),
        sa.CheckConstraint(
            f"state <> 'confirmed' OR ({ONE_OWNER} AND order_id IS NOT NULL)",
            name=op.f(f"ck_{table}_confirmed_has_owner_and_order"),
        ),
    ]


def pending_indexes(table: str) -> None:
    """The pending bookings of one identity: the remote scan behind cart's reads through FDW
    (``WHERE user_id = $1`` or ``session_id = $1`` on export.pending_bookings)."""
    for column in ("user_id", "session_id"):
        op.create_index(
            f"ix_{table}_pending_{column.removesuffix('_id')}",
            table,
            [column],
            schema="events",
            postgresql_where=sa.text("state = 'pending'"),
        )
    # confirm-for-order counts what one order confirmed.
    op.create_index(f"ix_{table}_order_id", table, ["order_id"], schema="events")


def upgrade() -> None:
    op.create_table(
        "calendars",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), nullable=False),
        sa.Column("slug", sa.String(64), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        # The page the calendar belongs to, ('page', blog post id); both null while detached.
        sa.Column("container_type", sa.String(32), nullable=True),
        sa.Column("container_id", sa.BigInteger, nullable=True),
        *timestamps(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_calendars")),
        sa.UniqueConstraint("slug", name=op.f("uq_calendars_slug")),
        sa.CheckConstraint(
            "(container_type IS NULL) = (container_id IS NULL)",
            name=op.f("ck_calendars_container_complete"),
        ),
        schema="events",
    )
    op.create_index(
        "ix_calendars_container", "calendars", ["container_type", "container_id"], schema="events"
    )

    op.create_table(
        "calendar_entries",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), nullable=False),
        sa.Column("calendar_id", sa.BigInteger, nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("starts_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cost", sa.Numeric(10, 2), nullable=False),
        sa.Column("currency", sa.CHAR(3), nullable=False, server_default="EUR"),
        sa.Column("state", sa.String(16), nullable=False, server_default="open"),
        *booking_columns(),
        *timestamps(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_calendar_entries")),
        sa.ForeignKeyConstraint(
            ["calendar_id"],
            ["events.calendars.id"],
            name=op.f("fk_calendar_entries_calendar_id_calendars"),
        ),
        sa.CheckConstraint("cost >= 0", name=op.f("ck_calendar_entries_cost_not_negative")),
        sa.CheckConstraint(
            "state IN ('open', 'pending', 'confirmed', 'cancelled')",
            name=op.f("ck_calendar_entries_state_known"),
        ),
        # An open slot is nobody's; booking it and releasing it are one UPDATE each.
        sa.CheckConstraint(
            "state <> 'open' OR (user_id IS NULL AND session_id IS NULL AND order_id IS NULL)",
            name=op.f("ck_calendar_entries_open_has_no_booking"),
        ),
        *booking_checks("calendar_entries"),
        schema="events",
    )
    # A calendar's entries in time order (the public listing).
    op.create_index(
        "ix_calendar_entries_calendar_id_starts_at",
        "calendar_entries",
        ["calendar_id", "starts_at"],
        schema="events",
    )
    pending_indexes("calendar_entries")

    op.create_table(
        "tickets",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), nullable=False),
        sa.Column("calendar_entry_id", sa.BigInteger, nullable=False),
        sa.Column("ticket_type", sa.String(64), nullable=False),
        sa.Column("price", sa.Numeric(10, 2), nullable=False),
        sa.Column("currency", sa.CHAR(3), nullable=False, server_default="EUR"),
        sa.Column("state", sa.String(16), nullable=False, server_default="pending"),
        *booking_columns(),
        *timestamps(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tickets")),
        sa.ForeignKeyConstraint(
            ["calendar_entry_id"],
            ["events.calendar_entries.id"],
            name=op.f("fk_tickets_calendar_entry_id_calendar_entries"),
        ),
        sa.CheckConstraint("price >= 0", name=op.f("ck_tickets_price_not_negative")),
        sa.CheckConstraint(
            "state IN ('pending', 'confirmed', 'cancelled')", name=op.f("ck_tickets_state_known")
        ),
        *booking_checks("tickets"),
        schema="events",
    )
    op.create_index(
        "ix_tickets_calendar_entry_id", "tickets", ["calendar_entry_id"], schema="events"
    )
    pending_indexes("tickets")

    create_idempotency_keys("events")

    # What cart reads through postgres_fdw (cart <- events): every pending booking, entries and
    # tickets alike, with the title and price to show in the cart and the calendar's page for
    # page carts. A ticket's title is the entry name, an en dash, the ticket type. Nothing
    # else: no confirmed or cancelled rows, no order ids, nothing soft-deleted. The casts pin
    # the column types, which the consumer's imported foreign table copies.
    op.execute(
        """
        CREATE VIEW export.pending_bookings AS
        SELECT 'entry'::text AS kind,
               entry.id,
               entry.user_id,
               entry.session_id,
               entry.name::text AS title,
               entry.cost::numeric(10, 2) AS price,
               entry.currency,
               entry.calendar_id,
               entry.starts_at,
               calendar.container_type,
               calendar.container_id
        FROM events.calendar_entries AS entry
        JOIN events.calendars AS calendar ON calendar.id = entry.calendar_id
        WHERE entry.state = 'pending'
          AND entry.deleted_at IS NULL
          AND calendar.deleted_at IS NULL
        UNION ALL
        SELECT 'ticket'::text,
               ticket.id,
               ticket.user_id,
               ticket.session_id,
               (entry.name || ' \u2013 ' || ticket.ticket_type)::text,
               ticket.price::numeric(10, 2),
               ticket.currency,
               entry.calendar_id,
               entry.starts_at,
               calendar.container_type,
               calendar.container_id
        FROM events.tickets AS ticket
        JOIN events.calendar_entries AS entry ON entry.id = ticket.calendar_entry_id
        JOIN events.calendars AS calendar ON calendar.id = entry.calendar_id
        WHERE ticket.state = 'pending'
          AND ticket.deleted_at IS NULL
          AND entry.deleted_at IS NULL
          AND calendar.deleted_at IS NULL
        """
    )


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS export.pending_bookings")
    op.drop_table("idempotency_keys", schema="events")
    op.drop_table("tickets", schema="events")
    op.drop_table("calendar_entries", schema="events")
    op.drop_table("calendars", schema="events")

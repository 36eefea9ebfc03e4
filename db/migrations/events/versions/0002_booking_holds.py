"""Holds on bookings: a pending entry or ticket is held until hold_expires_at, then blocks nobody

- ``hold_expires_at`` on entries and tickets: when a booking stops being held for its owner
  (bookings pending when this runs are held for 15 minutes more);
- ``hold_order_id``: the order orders held the booking for (confirm-for-order confirms only
  for that order);
- ``export.pending_bookings`` lists only bookings whose hold has not ended (same columns, so
  the view is replaced in place and keeps its grants).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TABLES = ("calendar_entries", "tickets")


def upgrade() -> None:
    for table in TABLES:
        op.add_column(
            table, sa.Column("hold_expires_at", sa.DateTime(timezone=True)), schema="events"
        )
        op.add_column(table, sa.Column("hold_order_id", sa.BigInteger), schema="events")
        op.execute(
            f"UPDATE events.{table} SET hold_expires_at = now() + interval '15 minutes' "
            "WHERE state = 'pending'"
        )
        op.create_check_constraint(
            op.f(f"ck_{table}_pending_has_hold"),
            table,
            "state <> 'pending' OR hold_expires_at IS NOT NULL",
            schema="events",
        )
        # The sweeper's scan: holds that have ended.
        op.create_index(
            f"ix_{table}_pending_hold",
            table,
            ["hold_expires_at"],
            schema="events",
            postgresql_where=sa.text("state = 'pending'"),
        )
    op.execute(
        """
        CREATE OR REPLACE VIEW export.pending_bookings AS
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
          AND entry.hold_expires_at > now()
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
          AND ticket.hold_expires_at > now()
          AND ticket.deleted_at IS NULL
          AND entry.deleted_at IS NULL
          AND calendar.deleted_at IS NULL
        """
    )


def downgrade() -> None:
    op.execute(
        """
        CREATE OR REPLACE VIEW export.pending_bookings AS
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
    for table in TABLES:
        op.drop_index(f"ix_{table}_pending_hold", table, schema="events")
        op.drop_constraint(op.f(f"ck_{table}_pending_has_hold"), table, schema="events")
        op.drop_column(table, "hold_order_id", schema="events")
        op.drop_column(table, "hold_expires_at", schema="events")

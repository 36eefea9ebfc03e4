"""the export views are security barriers: a reader's own conditions run after the view's

Each export view hides rows its readers may not see (other buyers' bookings and holds that are
not pending or not ended). A reader's condition that PostgreSQL judged cheaper than the view's
ran first, on every row, and a function that fails saying its argument (`decode('00', col)`:
"unrecognized encoding: <the value>") read the hidden rows through the consumer's foreign table.
As security barriers, the view's conditions run first; the FDW's own conditions (=, IN, ANY on
ids and slugs) are leakproof and still reach the indexes. A later CREATE OR REPLACE VIEW must
say WITH (security_barrier) again (tests/integration/test_provisioning.py checks every export
view).

pending_bookings is a UNION ALL at its top, which PostgreSQL flattens into its branches, the
barrier ignored (review H1: cart's `decode(session_id, 'hex')` still ran on another buyer's
ended hold). It is made again as one query over the union (same columns, so its grants stay):
the barrier then holds, and an `id = ANY(...)` still reaches each branch's index.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06
"""

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

# 0002's union, as it is.
PENDING_BOOKINGS = """
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


def upgrade() -> None:
    # A moment's ACCESS EXCLUSIVE on each view, beside the running release: wait at most 1 s
    # (the consumers' reads give up after 2 s; queued behind this, they would time out).
    op.execute("SET LOCAL lock_timeout = '1s'")
    op.execute("ALTER VIEW export.ended_holds SET (security_barrier = true)")
    op.execute(
        "CREATE OR REPLACE VIEW export.pending_bookings WITH (security_barrier = true) AS "
        f"SELECT * FROM ({PENDING_BOOKINGS}) AS booking"
    )


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '1s'")
    op.execute("ALTER VIEW export.ended_holds RESET (security_barrier)")
    op.execute(f"CREATE OR REPLACE VIEW export.pending_bookings AS {PENDING_BOOKINGS}")
    op.execute("ALTER VIEW export.pending_bookings RESET (security_barrier)")

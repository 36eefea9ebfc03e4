"""export.ended_holds leaves out what its owner holds or has paid for again

A booking whose hold ended and that its owner then booked again (the same entry; a ticket of
the same entry and type) and holds or has confirmed is not lost: the view no longer lists it.
Before, the cart left out only what was still in the cart, so a booking paid for after its
first hold ended was announced as "left your cart" (and the same title in another calendar hid
one that was lost). Same columns: the view is replaced in place and keeps its grants.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

ENDED = """
        WITH ended AS (
            -- Ended and not swept yet: the booking still names its owner.
            SELECT 'entry'::text AS kind, id, user_id, session_id, hold_expires_at AS ended_at
            FROM events.calendar_entries
            WHERE state = 'pending' AND hold_expires_at <= now()
            UNION ALL
            SELECT 'ticket'::text, id, user_id, session_id, hold_expires_at
            FROM events.tickets
            WHERE state = 'pending' AND hold_expires_at <= now()
            UNION ALL
            -- Swept: the sweeper kept whose it was.
            SELECT kind::text, booking_id, user_id, session_id, ended_at
            FROM events.released_holds
        )
        SELECT ended.kind,
               ended.id,
               ended.user_id,
               ended.session_id,
               CASE WHEN ended.kind = 'entry' THEN entry.name::text
                    ELSE (entry.name || ' \u2013 ' || ticket.ticket_type)::text END AS title,
               entry.starts_at,
               ended.ended_at,
               calendar.container_type,
               calendar.container_id
        FROM ended
        LEFT JOIN events.tickets AS ticket ON ended.kind = 'ticket' AND ticket.id = ended.id
        JOIN events.calendar_entries AS entry
          ON entry.id = CASE WHEN ended.kind = 'entry' THEN ended.id
                             ELSE ticket.calendar_entry_id END
        JOIN events.calendars AS calendar ON calendar.id = entry.calendar_id
        WHERE ended.ended_at > now() - interval '1 hour'
          AND entry.deleted_at IS NULL
          AND calendar.deleted_at IS NULL
"""

# Booked again by the same owner, and held or paid for: not lost.
NOT_BOOKED_AGAIN = """
          AND NOT (ended.kind = 'entry'
                   AND entry.user_id IS NOT DISTINCT FROM ended.user_id
                   AND entry.session_id IS NOT DISTINCT FROM ended.session_id
                   AND (entry.state = 'confirmed'
                        OR (entry.state = 'pending' AND entry.hold_expires_at > now())))
          AND NOT EXISTS (
              SELECT FROM events.tickets AS again
              WHERE ended.kind = 'ticket'
                AND again.calendar_entry_id = ticket.calendar_entry_id
                AND again.ticket_type = ticket.ticket_type
                AND again.user_id IS NOT DISTINCT FROM ended.user_id
                AND again.session_id IS NOT DISTINCT FROM ended.session_id
                AND (again.state = 'confirmed'
                     OR (again.state = 'pending' AND again.hold_expires_at > now())))
"""


def upgrade() -> None:
    op.execute(f"CREATE OR REPLACE VIEW export.ended_holds AS {ENDED}{NOT_BOOKED_AGAIN}")


def downgrade() -> None:
    op.execute(f"CREATE OR REPLACE VIEW export.ended_holds AS {ENDED}")

"""released_holds and export.ended_holds: which bookings left a cart because their hold ended

The sweeper takes the owner off an entry whose hold ended (a ticket it cancels), so nothing said
whose it had been, and the cart could not tell its buyer why a booking was gone. The sweep now
records each booking it releases, with its owner, in ``events.released_holds`` (kept a day).
``export.ended_holds`` lists, for the last hour, those and the ended holds not swept yet (they
still name their owner): what cart reads through postgres_fdw to say so.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "released_holds",
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("booking_id", sa.BigInteger, primary_key=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), primary_key=True),
        sa.Column("user_id", sa.BigInteger),
        sa.Column("session_id", sa.String(64)),
        sa.Column(
            "released_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.CheckConstraint(
            "kind IN ('entry', 'ticket')", name=op.f("ck_released_holds_kind_known")
        ),
        sa.CheckConstraint(
            "num_nonnulls(user_id, session_id) = 1", name=op.f("ck_released_holds_one_owner")
        ),
        schema="events",
    )
    for column in ("user_id", "session_id", "released_at"):
        op.create_index(f"ix_released_holds_{column}", "released_holds", [column], schema="events")
    op.execute(
        """
        CREATE VIEW export.ended_holds AS
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
    )


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS export.ended_holds")
    op.drop_table("released_holds", schema="events")

"""adopted_sessions for a database made by the first 0006 (audit U1)

Two commits of main (6702985, b47c182) shipped 0006 as ``signed_in_sessions``; 0006 was then
rewritten under the same revision id as ``adopted_sessions`` (the same rows: which user an
anonymous session signed in as, and when). A database those commits made was at 0006 already,
so it never got ``adopted_sessions``, and every anonymous booking failed. This renames the old
table, its column, its index and its primary key to what 0006 makes now, keeping the rows (its
grants go with it). A database made by today's 0006 has nothing to change. A released revision
is never rewritten again: a change is a new revision.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        DO $$
        DECLARE
            old_name name;
            column_name name;
        BEGIN
            IF to_regclass('events.signed_in_sessions') IS NOT NULL
               AND to_regclass('events.adopted_sessions') IS NULL THEN
                ALTER TABLE events.signed_in_sessions RENAME TO adopted_sessions;
                ALTER TABLE events.adopted_sessions RENAME COLUMN signed_in_at TO adopted_at;
                ALTER INDEX events.ix_signed_in_sessions_signed_in_at
                    RENAME TO ix_adopted_sessions_adopted_at;
                -- Named by the metadata's convention (pk_signed_in_sessions) when 0006 made
                -- it, PostgreSQL's default if made by hand: whichever, the name 0006 gives now.
                EXECUTE format(
                    'ALTER TABLE events.adopted_sessions '
                    'RENAME CONSTRAINT %I TO pk_adopted_sessions',
                    (SELECT conname FROM pg_constraint
                     WHERE conrelid = 'events.adopted_sessions'::regclass AND contype = 'p'));
                -- PostgreSQL 18 names NOT NULL constraints after the table and column too.
                FOR old_name, column_name IN
                    SELECT c.conname, a.attname
                    FROM pg_constraint AS c
                    JOIN pg_attribute AS a
                      ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
                    WHERE c.conrelid = 'events.adopted_sessions'::regclass AND c.contype = 'n'
                LOOP
                    EXECUTE format(
                        'ALTER TABLE events.adopted_sessions RENAME CONSTRAINT %I TO %I',
                        old_name, format('adopted_sessions_%s_not_null', column_name));
                END LOOP;
            END IF;
        END
        $$
        """
    )


def downgrade() -> None:
    # 0006 as it is now makes adopted_sessions: going back leaves it as 0006 made it.
    pass

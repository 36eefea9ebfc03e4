"""the export views are security barriers: a reader's own conditions run after the view's

Each export view hides rows its readers may not see (detached relations). A reader's condition
that PostgreSQL judged cheaper than the view's ran first, on every row, and a function that
fails saying its argument (`decode('00', col)`: "unrecognized encoding: <the value>") read the
hidden rows through the consumer's foreign table. As security barriers, the view's conditions
run first; the FDW's own conditions (=, IN, ANY on ids and slugs) are leakproof and still reach
the indexes. A later CREATE OR REPLACE VIEW must say WITH (security_barrier) again
(tests/integration/test_provisioning.py checks every export view).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

VIEWS = ("container_relations",)


def upgrade() -> None:
    # A moment's ACCESS EXCLUSIVE on each view, beside the running release: wait at most 1 s
    # (the consumers' reads give up after 2 s; queued behind this, they would time out).
    op.execute("SET LOCAL lock_timeout = '1s'")
    for view in VIEWS:
        op.execute(f"ALTER VIEW export.{view} SET (security_barrier = true)")


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '1s'")
    for view in VIEWS:
        op.execute(f"ALTER VIEW export.{view} RESET (security_barrier)")

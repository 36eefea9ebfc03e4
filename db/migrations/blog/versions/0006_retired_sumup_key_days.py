"""retired_sumup_keys: an entry past BLOG_RETIRED_SUMUP_KEY_DAYS is not readable, whoever writes

Entries older than the setting were deleted only by the next page-config write: while nobody
edited a config, orders could read such a key for ever (blog has no background job). Now the
days blog runs with are recorded here (blog writes them when it starts), and the export view
orders reads returns only entries younger than that: still the one view, so orders' single FDW
query is unchanged. Blog deletes the older entries when it starts and with each config write
(apps/blog/service.py).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # One row: the days of BLOG_RETIRED_SUMUP_KEY_DAYS blog last started with (written by
    # blog when it starts, not here: a restore copies the row into the migrated database).
    # Until then (and if it is ever missing), 90, the setting's default.
    op.create_table(
        "retired_sumup_key_days",
        sa.Column("one", sa.Boolean, server_default=sa.true(), nullable=False),
        sa.Column("days", sa.Integer, nullable=False),
        sa.CheckConstraint("one", name="ck_retired_sumup_key_days_one_row"),
        sa.CheckConstraint("days BETWEEN 1 AND 3650", name="ck_retired_sumup_key_days_days"),
        sa.PrimaryKeyConstraint("one", name="pk_retired_sumup_key_days"),
        schema="blog",
    )
    # Same columns: orders' foreign table and grants are unchanged.
    op.execute(
        """
        CREATE OR REPLACE VIEW export.retired_sumup_keys AS
        SELECT page_config_id, sumup_merchant_code, sumup_api_key, retired_at
        FROM blog.retired_sumup_keys
        WHERE retired_at > now() - make_interval(
            days => coalesce((SELECT days FROM blog.retired_sumup_key_days), 90))
        """
    )


def downgrade() -> None:
    op.execute(
        """
        CREATE OR REPLACE VIEW export.retired_sumup_keys AS
        SELECT page_config_id, sumup_merchant_code, sumup_api_key, retired_at
        FROM blog.retired_sumup_keys
        """
    )
    op.drop_table("retired_sumup_key_days", schema="blog")

"""Column sets and tables every service's migrations create the same way.

Frozen: a released migration calls these, and a database that ran it keeps what it made, so a
definition here never changes. db/migrations/released.toml lists each top-level definition with
the sha256 of its source (tests/unit/test_released_migrations.py fails when one changes); a
different table is a new helper called by a new revision. The lengths are literals, not the
apps' constants: a change there is a new revision altering the column, never a change here."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

# apps.common.idempotency.MAX_KEY_LENGTH and apps.common.signing.MAX_NONCE_LENGTH when the
# tables were first made.
MAX_KEY_LENGTH = 200
MAX_NONCE_LENGTH = 64


def timestamps() -> list[sa.Column]:
    return [
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
    ]


def create_idempotency_keys(schema: str) -> None:
    """The table behind :func:`apps.common.idempotency.run_idempotent` in ``schema``."""
    op.create_table(
        "idempotency_keys",
        sa.Column("action", sa.String(64), primary_key=True),
        sa.Column("key", sa.String(MAX_KEY_LENGTH), primary_key=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("response", sa.dialects.postgresql.JSONB, nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        schema=schema,
    )


def create_outbox(schema: str) -> None:
    """The table behind :mod:`apps.common.outbox` in ``schema``."""
    op.create_table(
        "outbox",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
        sa.Column("service", sa.String(32), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("payload", sa.dialects.postgresql.JSONB, nullable=False),
        sa.Column("idempotency_key", sa.String(200), nullable=False, unique=True),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        schema=schema,
    )
    # The relay's scan: undelivered messages by due time.
    op.create_index(
        f"ix_{schema}_outbox_due",
        "outbox",
        ["next_attempt_at"],
        schema=schema,
        postgresql_where=sa.text("delivered_at IS NULL"),
    )


def create_request_nonces(schema: str) -> None:
    """The table behind :mod:`apps.common.nonces` in ``schema``."""
    op.create_table(
        "request_nonces",
        sa.Column("nonce", sa.String(MAX_NONCE_LENGTH), primary_key=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        schema=schema,
    )
    op.create_index(
        op.f("ix_request_nonces_expires_at"), "request_nonces", ["expires_at"], schema=schema
    )


def create_adopted_sessions(schema: str) -> None:
    """The table behind :mod:`apps.common.adoption` in ``schema``: the anonymous sessions
    sign-in gave to a user, a day's worth."""
    op.create_table(
        "adopted_sessions",
        sa.Column("session_id", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.BigInteger, nullable=False),
        sa.Column(
            "adopted_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        schema=schema,
    )
    op.create_index(
        "ix_adopted_sessions_adopted_at", "adopted_sessions", ["adopted_at"], schema=schema
    )

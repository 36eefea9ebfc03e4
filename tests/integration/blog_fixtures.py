"""Helpers of the blog tests: posts written straight into db_blog, a signed-in browser, the
statements the blog app sends, and a provider made unreachable for a while."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from litestar import Litestar
from sqlalchemy import event

from tests.conftest import admin_connect

SANDBOX_KEY = "sup_sk_sandbox_rose"


def insert_post(
    server: Any,
    slug: str,
    *,
    title: str | None = None,
    body: str = "Some words.",
    is_page: bool = False,
    status: str = "published",
    age_days: float = 1.0,
) -> int:
    published_at = datetime.now(UTC) - timedelta(days=age_days) if status == "published" else None
    with admin_connect(server, "blog") as connection:
        row = connection.execute(
            """
            INSERT INTO blog.posts (slug, title, body, is_page, status, published_at)
            VALUES (%s, %s, %s, %s, %s, %s) RETURNING id
            """,
            (slug, title or slug.replace("-", " ").title(), body, is_page, status, published_at),
        ).fetchone()
    assert row is not None
    return int(row[0])


def config_rows(server: Any) -> list[tuple]:
    with admin_connect(server, "blog") as connection:
        return connection.execute(
            """
            SELECT container_type, container_id, features, sumup_merchant_code, sumup_api_key,
                   sumup_checkout_prefix, deleted_at IS NULL
            FROM blog.page_configs ORDER BY id
            """
        ).fetchall()


def relation_rows(server: Any) -> list[tuple]:
    with admin_connect(server, "relations") as connection:
        return connection.execute(
            """
            SELECT parent_type, parent_id, child_type, child_id, label, deleted_at IS NULL
            FROM relations.container_relations ORDER BY id
            """
        ).fetchall()


def like_rows(server: Any) -> list[tuple]:
    with admin_connect(server, "likes") as connection:
        return connection.execute(
            """
            SELECT user_id, target_type, target_id, deleted_at IS NULL
            FROM likes.likes ORDER BY id
            """
        ).fetchall()


async def sign_in(browser: httpx.AsyncClient, user_id: int = 1) -> str:
    """Sign the browser in (dev login); returns the CSRF token of its session."""
    response = await browser.get(
        "/auth/dev-login", params={"user_id": user_id}, headers={"Accept": "application/json"}
    )
    assert response.status_code == 200, response.text
    return response.json()["csrf_token"]


async def anonymous_csrf(browser: httpx.AsyncClient) -> str:
    response = await browser.get("/auth/session")
    return response.json()["csrf_token"]


HTML = {"Accept": "text/html"}
JSON = {"Accept": "application/json"}


@contextmanager
def recorded_statements(app: Litestar) -> Iterator[list[tuple[str, Any]]]:
    """Every SQL statement (and its parameters) the app's engine sends while the block runs."""
    statements: list[tuple[str, Any]] = []
    engine = app.state.platform.engine.sync_engine

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        statements.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


@contextmanager
def provider_unreachable(server: Any, consumer: str, foreign_server: str) -> Iterator[None]:
    """Point the consumer's foreign server at a closed port; restore it afterwards."""
    with admin_connect(server, consumer) as connection:
        row = connection.execute(
            """
            SELECT option_value FROM pg_options_to_table(
                (SELECT srvoptions FROM pg_foreign_server WHERE srvname = %s))
            WHERE option_name = 'port'
            """,
            (foreign_server,),
        ).fetchone()
        assert row is not None
        port = row[0]
        connection.execute(f"ALTER SERVER {foreign_server} OPTIONS (SET port '1')")
    try:
        yield
    finally:
        with admin_connect(server, consumer) as connection:
            connection.execute(f"ALTER SERVER {foreign_server} OPTIONS (SET port '{port}')")

"""What other services read of blog through postgres_fdw: cart sees page configs without the
SumUp API key and cannot reach the key by any path; orders sees the key. Plus the demo data."""

from __future__ import annotations

import psycopg
import pytest
from sqlalchemy.engine import make_url

from ops.db.check import check
from ops.stack.demo import seed_demo_data
from tests.conftest import admin_connect
from tests.integration.blog_fixtures import SANDBOX_KEY, insert_post

PAGE_CONFIG_COLUMNS = [
    "id",
    "container_type",
    "container_id",
    "page_slug",
    "page_title",
    "features",
    "sumup_merchant_code",
    "sumup_checkout_prefix",
    "sumup_configured",
    "created_at",
    "updated_at",
]
PAYMENT_CONFIG_COLUMNS = [
    "id",
    "container_type",
    "container_id",
    "sumup_merchant_code",
    "sumup_api_key",
    "sumup_checkout_prefix",
]


def role_url(server, credentials, service: str, role: str) -> str:
    """A DSN of ``service``'s database as ``role`` (an FDW reader role, say)."""
    url = make_url(server.topology.app_url(service, credentials))
    return url.set(username=role, password=credentials.role_password(role)).render_as_string(
        hide_password=False
    )


def insert_config(server, container_type: str, container_id: int, **fields) -> int:
    values = {
        "features": '{"cart": true}',
        "sumup_merchant_code": "MSANDBOX1",
        "sumup_api_key": SANDBOX_KEY,
        "sumup_checkout_prefix": "rose-farm-",
        **fields,
    }
    with admin_connect(server, "blog") as connection:
        row = connection.execute(
            """
            INSERT INTO blog.page_configs (container_type, container_id, features,
                sumup_merchant_code, sumup_api_key, sumup_checkout_prefix, deleted_at)
            VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id
            """,
            (
                container_type,
                container_id,
                values["features"],
                values["sumup_merchant_code"],
                values["sumup_api_key"],
                values["sumup_checkout_prefix"],
                values.get("deleted_at"),
            ),
        ).fetchone()
    assert row is not None
    return int(row[0])


def columns_of(connection: psycopg.Connection, schema: str, name: str) -> list[str]:
    rows = connection.execute(
        """
        SELECT column_name FROM information_schema.columns
        WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position
        """,
        (schema, name),
    ).fetchall()
    return [row[0] for row in rows]


def test_export_views_have_exactly_the_agreed_columns(provisioned):
    with admin_connect(provisioned, "blog") as connection:
        assert columns_of(connection, "export", "page_configs") == PAGE_CONFIG_COLUMNS
        assert columns_of(connection, "export", "page_payment_configs") == PAYMENT_CONFIG_COLUMNS


def test_cart_reads_page_configs_without_any_key_column(clean_db, credentials):
    page_id = insert_post(clean_db, "farm-shop", title="Farm shop", is_page=True)
    insert_config(clean_db, "page", page_id)
    insert_config(clean_db, "site", 0, sumup_api_key=None)
    insert_config(clean_db, "page", page_id, deleted_at="2026-01-01T00:00:00Z")

    with psycopg.connect(clean_db.topology.app_url("cart", credentials)) as cart:
        # cart's edge declares only the columns cart reads (db/fdw/manifest.toml): not the
        # timestamps, nor the SumUp merchant (orders reads that, through its own edge).
        assert columns_of(cart, "blog", "page_configs") == PAGE_CONFIG_COLUMNS[:6]
        cursor = cart.execute("SELECT * FROM blog.page_configs ORDER BY id")
        names = [column.name for column in cursor.description]
        rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        assert not any("key" in name for name in names)
        assert SANDBOX_KEY not in repr(rows)
        assert "MSANDBOX1" not in repr(rows)
        # Active rows only; the page's slug and title come along.
        assert [
            (
                row["container_type"],
                row["container_id"],
                row["page_slug"],
                row["page_title"],
                row["features"],
            )
            for row in rows
        ] == [
            ("page", page_id, "farm-shop", "Farm shop", {"cart": True}),
            ("site", 0, None, None, {"cart": True}),
        ]
        with pytest.raises(psycopg.errors.UndefinedColumn):
            cart.execute("SELECT sumup_api_key FROM blog.page_configs")
    with psycopg.connect(clean_db.topology.app_url("cart", credentials)) as cart:
        # cart was given no foreign table with the key.
        assert columns_of(cart, "blog", "page_payment_configs") == []
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            cart.execute("UPDATE blog.page_configs SET page_title = 'STOLEN1'")


def test_the_cart_reader_role_cannot_read_the_key_by_any_path(clean_db, credentials):
    page_id = insert_post(clean_db, "farm-shop", is_page=True)
    insert_config(clean_db, "page", page_id)

    reader = role_url(clean_db, credentials, "blog", "blog_ro_cart")
    with psycopg.connect(reader) as connection:
        assert connection.execute("SELECT count(*) FROM export.page_configs").fetchone() == (1,)
    for forbidden in (
        # Nor the SumUp merchant, which cart never reads.
        "SELECT sumup_merchant_code FROM export.page_configs",
        "SELECT sumup_checkout_prefix FROM export.page_configs",
        "SELECT sumup_configured FROM export.page_configs",
        "SELECT sumup_api_key FROM blog.page_configs",
        "SELECT sumup_api_key FROM export.page_payment_configs",
        "SELECT * FROM blog.page_configs",
    ):
        with (
            psycopg.connect(reader) as connection,
            pytest.raises(psycopg.errors.InsufficientPrivilege),
        ):
            connection.execute(forbidden)

    # Even a foreign table pointed at the key's view or base table through the cart edge's own
    # server (which only a superuser or cart's owner could create) gets nothing: the remote
    # role has no privilege there.
    sneaky = {
        "sneaky_payment": ("export", "page_payment_configs"),
        "sneaky_base": ("blog", "page_configs"),
    }
    with admin_connect(clean_db, "cart") as admin:
        for name, (schema, table) in sneaky.items():
            admin.execute(
                f"""
                CREATE FOREIGN TABLE blog.{name} (id bigint, sumup_api_key text)
                SERVER blog_server OPTIONS (schema_name '{schema}', table_name '{table}')
                """
            )
            admin.execute(f"GRANT SELECT ON blog.{name} TO cart_app")
    try:
        for name in sneaky:
            with (
                psycopg.connect(clean_db.topology.app_url("cart", credentials)) as cart,
                pytest.raises(psycopg.errors.InsufficientPrivilege) as refused,
            ):
                cart.execute(f"SELECT sumup_api_key FROM blog.{name}")
            # Refused by db_blog itself, not by a local grant.
            assert "permission denied" in str(refused.value)
            assert "remote SQL command" in (refused.value.diag.context or "")
    finally:
        with admin_connect(clean_db, "cart") as admin:
            for name in sneaky:
                admin.execute(f"DROP FOREIGN TABLE IF EXISTS blog.{name}")


def test_orders_reads_the_key_through_page_payment_configs(clean_db, credentials):
    page_id = insert_post(clean_db, "farm-shop", is_page=True)
    config_id = insert_config(clean_db, "page", page_id)
    with psycopg.connect(clean_db.topology.app_url("orders", credentials)) as orders:
        assert columns_of(orders, "blog", "page_payment_configs") == PAYMENT_CONFIG_COLUMNS
        assert orders.execute(
            "SELECT id, sumup_merchant_code, sumup_api_key, sumup_checkout_prefix "
            "FROM blog.page_payment_configs WHERE container_type = 'page' AND container_id = %s",
            (page_id,),
        ).fetchall() == [(config_id, "MSANDBOX1", SANDBOX_KEY, "rose-farm-")]
        assert orders.execute("SELECT page_slug FROM blog.page_configs").fetchall() == [
            ("farm-shop",)
        ]
    # And only orders: its reader role, not cart's, is granted the view.
    with admin_connect(clean_db, "blog") as connection:
        grantees = connection.execute(
            """
            SELECT DISTINCT grantee FROM information_schema.column_privileges
            WHERE table_schema = 'export' AND table_name = 'page_payment_configs'
              AND grantee <> 'blog_owner'
            """
        ).fetchall()
    assert grantees == [("blog_ro_orders",)]


def test_blog_edges_are_provisioned_without_drift(provisioned):
    differences, notes = check(provisioned.topology)
    assert [line for line in differences if "blog" in line] == []
    assert [note for note in notes if "<- blog" in note or "blog <-" in note] == []


def test_demo_data_seeds_once(clean_db):
    said: list[str] = []
    seed_demo_data(clean_db.topology, ["blog"], said.append)
    assert len(said) == 1
    assert "12 posts" in said[0]
    seed_demo_data(clean_db.topology, ["blog"], said.append)
    assert len(said) == 1  # not empty any more: nothing seeded, nothing said

    with admin_connect(clean_db, "blog") as connection:
        published_posts = connection.execute(
            "SELECT count(*) FROM blog.posts WHERE NOT is_page AND status = 'published'"
        ).fetchone()
        pages = connection.execute(
            "SELECT id, slug FROM blog.posts WHERE is_page ORDER BY slug"
        ).fetchall()
        configs = connection.execute(
            """
            SELECT coalesce(p.slug, pc.container_type), pc.sumup_merchant_code,
                   pc.sumup_api_key, pc.sumup_checkout_prefix IS NOT NULL
            FROM blog.page_configs AS pc
            LEFT JOIN blog.posts AS p ON pc.container_type = 'page' AND p.id = pc.container_id
            ORDER BY 1
            """
        ).fetchall()
    assert published_posts == (12,)
    # Pages 1 and 2: the containers market's and events' demo data use.
    assert pages == [(1, "farm-shop"), (2, "market-hall")]
    assert configs == [
        ("farm-shop", "MSANDBOX1", SANDBOX_KEY, True),
        ("market-hall", "MSANDBOX1", SANDBOX_KEY, True),
        ("site", "MSANDBOX1", SANDBOX_KEY, True),
    ]


def test_demo_data_leaves_a_service_whose_tables_already_hold_rows(clean_db):
    """Probe (December 2026): a practice split on a stack started with --no-demo moves the
    monolith's page configs into blog.page_configs (its posts stay in legacy.posts); the next
    plain `rose up` (demo data is its default) found blog.posts empty, inserted the demo's page
    configs and died on uq_page_configs_active_container with a traceback, every service left
    unstarted. Market the same, with market places and no products. Demo data goes only into a
    service whose tables it fills are all empty, and not into those whose rows name that
    service's demo rows (market's places and events' calendars sit on blog's demo pages 1 and
    2); one line names why."""
    with admin_connect(clean_db, "blog") as connection:
        connection.execute(
            "INSERT INTO blog.page_configs (container_type, container_id, features) "
            "VALUES ('site', 0, '{}')"
        )
    said: list[str] = []
    seed_demo_data(clean_db.topology, ["blog", "market", "events", "relations"], said.append)
    assert said == [
        "demo data for blog: not added, blog.page_configs holds rows",
        "demo data for market: not added, it names the demo rows of blog, which were not added",
        "demo data for events: not added, it names the demo rows of blog, which were not added",
        "demo data for relations: not added, it names the demo rows of blog, market, events, "
        "which were not added",
    ]
    with admin_connect(clean_db, "blog") as connection:
        assert connection.execute("SELECT count(*) FROM blog.posts").fetchone() == (0,)
        assert connection.execute("SELECT count(*) FROM blog.page_configs").fetchone() == (1,)
    with admin_connect(clean_db, "market") as connection:
        assert connection.execute("SELECT count(*) FROM market.market_places").fetchone() == (0,)
    with admin_connect(clean_db, "events") as connection:
        assert connection.execute("SELECT count(*) FROM events.calendars").fetchone() == (0,)

    # Market on its own: a market place of the home's, no products.
    with admin_connect(clean_db, "market") as connection:
        connection.execute(
            "INSERT INTO market.market_places (slug, name, container_type, container_id) "
            "VALUES ('farm-shop-market', 'The farm''s own', 'page', 1)"
        )
    said.clear()
    seed_demo_data(clean_db.topology, ["market"], said.append)
    assert said == ["demo data for market: not added, market.market_places holds rows"]
    with admin_connect(clean_db, "market") as connection:
        assert connection.execute("SELECT count(*) FROM market.products").fetchone() == (0,)


def a_page_of_the_homes_own(server) -> None:
    """A published page of the home's own in blog, with its page config (no demo rows)."""
    with admin_connect(server, "blog") as connection:
        page = connection.execute(
            "INSERT INTO blog.posts (slug, title, is_page, status, published_at) "
            "VALUES ('our-shop', 'Our shop', true, 'published', now()) RETURNING id"
        ).fetchone()[0]
        connection.execute(
            "INSERT INTO blog.page_configs (container_type, container_id, features) "
            "VALUES ('page', %s, '{}')",
            (page,),
        )


# What a start says when blog holds the home's own pages, not the demo's.
NOT_ON_THE_HOMES_PAGES = [
    "demo data for market: not added, it names the demo rows of blog, which were not added",
    "demo data for events: not added, it names the demo rows of blog, which were not added",
    "demo data for relations: not added, it names the demo rows of blog, market, events, "
    "which were not added",
]


def test_demo_data_names_no_page_of_the_homes_own(clean_db):
    """Probe (upgrade): a home started with --no-demo whose blog holds its own pages (and page
    configs), restarted without --no-demo: market's 300 demo products went on sale on the
    home's pages 1 and 2, events' demo calendars with them, and relations attached both (as a
    home made before relations had demo data got attachments on its upgrade). Demo rows that
    name blog's pages go in only where blog holds the demo's pages."""
    a_page_of_the_homes_own(clean_db)
    said: list[str] = []
    seed_demo_data(clean_db.topology, ["blog", "market", "events", "relations"], said.append)
    assert said == NOT_ON_THE_HOMES_PAGES
    with admin_connect(clean_db, "market") as connection:
        assert connection.execute("SELECT count(*) FROM market.products").fetchone() == (0,)
    with admin_connect(clean_db, "events") as connection:
        assert connection.execute("SELECT count(*) FROM events.calendars").fetchone() == (0,)
    with admin_connect(clean_db, "relations") as connection:
        assert connection.execute(
            "SELECT count(*) FROM relations.container_relations"
        ).fetchone() == (0,)


def test_a_start_without_blog_puts_no_demo_data_on_the_homes_own_pages(clean_db):
    """Review 4: `rose up --only market,events,relations` in a home whose blog holds its own
    pages: blog was not looked at, so market's demo places went on the home's page 1 and on a
    page 2 it does not have. A service left out of the start counts as one that got none,
    unless it holds its demo rows (`rose up --only blog` before: they go on those)."""
    a_page_of_the_homes_own(clean_db)
    said: list[str] = []
    seed_demo_data(clean_db.topology, ["market", "events", "relations"], said.append)
    assert said == NOT_ON_THE_HOMES_PAGES
    with admin_connect(clean_db, "market") as connection:
        assert connection.execute("SELECT count(*) FROM market.market_places").fetchone() == (0,)
    with admin_connect(clean_db, "events") as connection:
        assert connection.execute("SELECT count(*) FROM events.calendars").fetchone() == (0,)


def test_a_start_without_blog_puts_demo_data_on_the_demo_pages_blog_holds(clean_db):
    said: list[str] = []
    seed_demo_data(clean_db.topology, ["blog"], said.append)
    said.clear()
    seed_demo_data(clean_db.topology, ["market", "events"], said.append)
    assert [line.split(":")[0] for line in said] == ["demo data for market", "demo data for events"]
    assert all("not added" not in line for line in said), said


def test_demo_data_goes_on_the_demo_pages_blog_got_before(clean_db):
    """`rose up --only blog` and then `rose up`: blog's demo pages are there, so market's,
    events' and relations' demo rows go on them, and a restart adds nothing and says nothing."""
    said: list[str] = []
    seed_demo_data(clean_db.topology, ["blog"], said.append)
    said.clear()
    seed_demo_data(clean_db.topology, ["blog", "market", "events", "relations"], said.append)
    assert [line.split(":")[0] for line in said] == [
        "demo data for market",
        "demo data for events",
        "demo data for relations",
    ]
    assert all("not added" not in line for line in said), said
    said.clear()
    seed_demo_data(clean_db.topology, ["blog", "market", "events", "relations"], said.append)
    assert said == []


RETIRED_KEY_COLUMNS = ["page_config_id", "sumup_merchant_code", "sumup_api_key", "retired_at"]


def test_only_orders_reads_the_retired_sumup_keys(clean_db, credentials):
    """A key a page config stopped using (its merchant changed) is kept for orders' late
    payments and refunds: orders reads it through its foreign table; every other service's
    reader role is refused by db_blog (permission denied) and has no foreign table of it."""
    page_id = insert_post(clean_db, "farm-shop", is_page=True)
    config_id = insert_config(clean_db, "page", page_id)
    with admin_connect(clean_db, "blog") as connection:
        connection.execute(
            "UPDATE blog.page_configs SET sumup_merchant_code = 'MOTHER2', "
            "sumup_api_key = 'sup_sk_other_merchant' WHERE id = %s",
            (config_id,),
        )
        readers = [
            row[0]
            for row in connection.execute(
                "SELECT rolname FROM pg_roles WHERE rolname LIKE 'blog\\_ro\\_%' ORDER BY 1"
            )
        ]
        grantees = connection.execute(
            """
            SELECT DISTINCT grantee FROM information_schema.column_privileges
            WHERE table_schema = 'export' AND table_name = 'retired_sumup_keys'
              AND grantee <> 'blog_owner'
            """
        ).fetchall()
    assert grantees == [("blog_ro_orders",)]
    with psycopg.connect(clean_db.topology.app_url("orders", credentials)) as orders:
        assert columns_of(orders, "blog", "retired_sumup_keys") == RETIRED_KEY_COLUMNS
        assert orders.execute(
            "SELECT page_config_id, sumup_merchant_code, sumup_api_key FROM blog.retired_sumup_keys"
        ).fetchall() == [(config_id, "MSANDBOX1", SANDBOX_KEY)]
    with psycopg.connect(role_url(clean_db, credentials, "blog", "blog_ro_orders")) as reader:
        assert reader.execute("SELECT sumup_api_key FROM export.retired_sumup_keys").fetchall() == [
            (SANDBOX_KEY,)
        ]
    others = [role for role in readers if role != "blog_ro_orders"]
    assert others, readers  # cart, market, events read blog too
    for role in others:
        reader = role_url(clean_db, credentials, "blog", role)
        for forbidden in (
            "SELECT sumup_api_key FROM export.retired_sumup_keys",
            "SELECT sumup_api_key FROM blog.retired_sumup_keys",
        ):
            with (
                psycopg.connect(reader) as connection,
                pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"),
            ):
                connection.execute(forbidden)
    for consumer in ("cart", "market", "events", "likes", "relations"):
        with psycopg.connect(clean_db.topology.app_url(consumer, credentials)) as connection:
            assert columns_of(connection, "blog", "retired_sumup_keys") == [], consumer

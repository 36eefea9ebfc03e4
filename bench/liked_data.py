"""Data of the liked-listing benchmark: products in db_market, likes in db_likes, and the
monolith baseline database holding both.

Everything is generated with set-based SQL (``INSERT ... SELECT generate_series``) under
``SET ROLE <svc>_owner``, so the rows live in tables the services own, as migrations made them.
The generation is deterministic: the same options give the same data.
"""

from __future__ import annotations

import json
import math
from urllib.parse import quote

import psycopg
from sqlalchemy.engine import make_url

from ops.db.credentials import Credentials
from ops.db.migrate import migrate
from ops.db.monolith import monolith_declaration
from ops.db.sqlfiles import converge_file
from ops.db.topology import Topology
from ops.paths import DB_DIR

MONOLITH_DATABASE = "db_bench_monolith"
MONOLITH_APP_ROLE = "bench_monolith_app"

# Steps through the product ids: coprime with the product count, so one user's likes are
# distinct products (the likes table allows one row per user and product).
_STRIDE_CANDIDATES = (997, 991, 983, 977)


def connect(url: str) -> psycopg.Connection:
    return psycopg.connect(url, autocommit=True)


def product_stride(products: int) -> int:
    for stride in _STRIDE_CANDIDATES:
        if math.gcd(stride, products) == 1:
            return stride
    raise ValueError(f"no stride coprime with {products} products")


def load_products(topology: Topology, products: int) -> None:
    """Two market places and ``products`` products, 1% of them soft-deleted."""
    with connect(topology.admin_url("market")) as connection:
        connection.execute("SET ROLE market_owner")
        place_ids = [
            connection.execute(
                "INSERT INTO market.market_places (slug, name, container_type, container_id) "
                "VALUES (%s, %s, 'page', %s) RETURNING id",
                (f"bench-place-{page}", f"Bench place {page}", page),
            ).fetchone()[0]  # type: ignore[index]
            for page in (1, 2)
        ]
        connection.execute(
            """
            INSERT INTO market.products (slug, title, image, regular_price, special_price,
                                         price_currency, market_place_id, deleted_at)
            SELECT format('product-%%s', lpad(i::text, 7, '0')),
                   -- Titles in an order unrelated to the slugs: the listing sorts by title.
                   format('%%s %%s %%s',
                          (ARRAY['Amber', 'Blue', 'Copper', 'Dusty', 'Emerald', 'Fern',
                                 'Golden', 'Hazel', 'Ivory', 'Jade'])[1 + (i * 7) %% 10],
                          (ARRAY['apron', 'bowl', 'candle', 'dish', 'ewer', 'flask', 'glass',
                                 'hook', 'jar', 'kettle', 'lamp', 'mug'])[1 + (i * 13) %% 12],
                          substr(md5(i::text), 1, 8)),
                   format('/media/products/%%s.jpg', i),
                   (1 + (i %% 9000) / 100.0)::numeric(10, 2),
                   CASE WHEN i %% 7 = 0 THEN (0.5 + (i %% 9000) / 200.0)::numeric(10, 2) END,
                   'EUR',
                   (ARRAY[%(first)s, %(second)s]::bigint[])[1 + i %% 2],
                   CASE WHEN i %% 100 = 42 THEN now() - interval '3 days' END
            FROM generate_series(1, %(products)s) AS i
            """,
            {"products": products, "first": place_ids[0], "second": place_ids[1]},
        )


def load_likes(topology: Topology, *, users: int, likes_per_user: int, products: int) -> None:
    """Likes of products by ``users`` users: from likes_per_user/2 to likes_per_user*3/2
    distinct products each (mean likes_per_user); about 3% soft-deleted (unliked)."""
    low = likes_per_user // 2
    if low + likes_per_user > products:
        raise ValueError("more likes per user than products")
    with connect(topology.admin_url("likes")) as connection:
        connection.execute("SET ROLE likes_owner")
        connection.execute(
            """
            INSERT INTO likes.likes (user_id, target_type, target_slug, created_at, updated_at,
                                     deleted_at)
            SELECT u, 'product', format('product-%%s', lpad(product::text, 7, '0')),
                   liked_at, liked_at,
                   CASE WHEN (u * 31 + k * 17) %% 100 < 3 THEN liked_at + interval '1 day' END
            FROM generate_series(1, %(users)s) AS u
            CROSS JOIN LATERAL generate_series(0, %(low)s - 1 + (u * 37) %% (%(spread)s + 1))
                AS k
            CROSS JOIN LATERAL (
                SELECT 1 + (u::bigint * 7919 + k * %(stride)s) %% %(products)s AS product,
                       now() - make_interval(mins => ((u * 13 + k * 7) %% 500000)::int)
                           AS liked_at
            ) AS generated
            """,
            {
                "users": users,
                "low": low,
                "spread": likes_per_user,
                "stride": product_stride(products),
                "products": products,
            },
        )


def build_monolith(topology: Topology, credentials: Credentials) -> str:
    """The monolith baseline: one database with market's schema (market's own migrations) and a
    local ``likes.likes`` with the columns of likes' export view, filled from db_market and
    db_likes. Returns the DSN its market process uses (a login role that can read it)."""
    app_role = {
        "name": MONOLITH_APP_ROLE,
        "login": True,
        "inherit": False,
        "password": credentials.role_password(MONOLITH_APP_ROLE),
        "settings": {},
    }
    database = {"name": MONOLITH_DATABASE, "owner": "market_owner", "connect": [MONOLITH_APP_ROLE]}
    # The same provisioning SQL as a service database: its app role, the database, schemas, grants.
    with connect(topology.maintenance_url("market")) as connection:
        cluster = {"namespace": "^bench_", "known": json.dumps([MONOLITH_APP_ROLE])}
        converge_file(
            connection,
            DB_DIR / "schemas" / "roles.sql",
            {**cluster, "roles": json.dumps([app_role])},
            apply=True,
        )
        converge_file(
            connection,
            DB_DIR / "schemas" / "databases.sql",
            {
                **cluster,
                "known": json.dumps([MONOLITH_DATABASE]),
                "databases": json.dumps([database]),
                "monolith": json.dumps(monolith_declaration(())),
            },
            apply=True,
        )
    monolith_admin = topology.admin_url("market", MONOLITH_DATABASE)
    with connect(monolith_admin) as connection:
        variables = {"svc": "market", "owner": "market_owner", "app": MONOLITH_APP_ROLE}
        converge_file(
            connection,
            DB_DIR / "schemas" / "service_database.sql",
            {**variables, "providers": "[]", "monolith": json.dumps(monolith_declaration(()))},
            apply=True,
        )
    migrate({"market": monolith_admin}, ["market"])

    with connect(monolith_admin) as connection:
        connection.execute("SET ROLE market_owner")
        connection.execute("CREATE SCHEMA likes")
        # Exactly the columns (and types) of db_likes' export.likes: active likes only.
        connection.execute(
            """
            CREATE TABLE likes.likes (
                id bigint PRIMARY KEY,
                user_id bigint NOT NULL,
                target_type varchar(32) NOT NULL,
                target_slug varchar(255),
                target_id bigint,
                created_at timestamptz NOT NULL
            )
            """
        )
        connection.execute(f"GRANT USAGE ON SCHEMA likes TO {MONOLITH_APP_ROLE}")
        connection.execute(f"GRANT SELECT ON likes.likes TO {MONOLITH_APP_ROLE}")
        for table in ("market.market_places", "market.products"):
            with connect(topology.admin_url("market")) as source:
                _copy(source, connection, f"SELECT * FROM {table} ORDER BY id", table)
            connection.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                f"(SELECT max(id) FROM {table}) + 1, false)"
            )
        with connect(topology.admin_url("likes")) as source:
            _copy(
                source,
                connection,
                "SELECT id, user_id, target_type, target_slug, target_id, created_at "
                "FROM export.likes",
                "likes.likes",
            )
        # Built after loading (faster); the local equivalent of ix_likes_user_active.
        connection.execute(
            "CREATE INDEX ix_likes_user_type ON likes.likes (user_id, target_type) "
            "INCLUDE (target_slug)"
        )
    address = make_url(topology.admin_url("market"))
    password = quote(credentials.role_password(MONOLITH_APP_ROLE), safe="")
    return (
        f"postgresql://{MONOLITH_APP_ROLE}:{password}@{address.host}:{address.port}"
        f"/{MONOLITH_DATABASE}"
    )


def _copy(
    source: psycopg.Connection, target: psycopg.Connection, select_sql: str, table: str
) -> None:
    """Stream rows between databases with binary COPY (identical column types both sides)."""
    with (
        source.cursor().copy(f"COPY ({select_sql}) TO STDOUT (FORMAT BINARY)") as out,
        target.cursor().copy(f"COPY {table} FROM STDIN (FORMAT BINARY)") as into,
    ):
        for block in out:
            into.write(block)


def vacuum_analyze(topology: Topology) -> None:
    """Fresh statistics and visibility maps (index-only scans), as a settled database has."""
    for service, database, tables in (
        ("market", "db_market", ("market.market_places", "market.products")),
        ("likes", "db_likes", ("likes.likes",)),
        ("market", MONOLITH_DATABASE, ("market.market_places", "market.products", "likes.likes")),
    ):
        with connect(topology.admin_url(service, database)) as connection:
            for table in tables:
                connection.execute(f"VACUUM (ANALYZE) {table}")


def users_with_likes(topology: Topology) -> list[int]:
    with connect(topology.admin_url("likes")) as connection:
        rows = connection.execute(
            "SELECT DISTINCT user_id FROM likes.likes "
            "WHERE deleted_at IS NULL AND target_type = 'product' ORDER BY user_id"
        ).fetchall()
    return [row[0] for row in rows]


def row_counts(topology: Topology) -> dict[str, int]:
    queries = {
        "products (live)": ("market", "db_market", "SELECT count(*) FROM export.products"),
        "likes (all rows)": ("likes", "db_likes", "SELECT count(*) FROM likes.likes"),
        "likes (active)": ("likes", "db_likes", "SELECT count(*) FROM export.likes"),
        "monolith likes": ("market", MONOLITH_DATABASE, "SELECT count(*) FROM likes.likes"),
    }
    counts = {}
    for label, (service, database, sql) in queries.items():
        with connect(topology.admin_url(service, database)) as connection:
            counts[label] = connection.execute(sql).fetchone()[0]  # type: ignore[index]
    return counts

"""Every kind of drift, one at a time, on one provisioned cluster: inject it, `rose db check`
names it and exits 1, `rose db provision --dry-run` shows the fix and changes nothing,
`rose db provision` repairs it, `rose db check` exits 0, and the security property behind it
holds again."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg
import pytest

from apps.registry import SERVICES
from ops.db.connections import Connections
from ops.db.schema_drift import schema_differences
from ops.db.schema_shape import shape_differences, stale_files, write_files
from tests.integration.db_fixtures import (
    SUMUP_KEY,
    Cluster,
    catalog_snapshot,
    differing_keys,
)

Property = Callable[[Cluster], None]


@pytest.fixture(scope="module")
def cluster(db_cluster: Cluster) -> Cluster:
    if os.environ.get("ROSE_WRITE_SHAPES") == "1":
        write_files(db_cluster.topology)  # before the check below, which compares with them
    check = db_cluster.rose("db", "check")
    assert check.exit_code == 0, check.output
    return db_cluster


def run_as(cluster: Cluster, service: str, role: str, sql: str) -> list[tuple]:
    with cluster.as_role(service, role) as connection:
        return connection.execute(sql).fetchall()


def denied(cluster: Cluster, service: str, role: str, sql: str) -> None:
    with pytest.raises(psycopg.Error) as failure:
        run_as(cluster, service, role, sql)
    assert isinstance(
        failure.value,
        psycopg.errors.InsufficientPrivilege
        | psycopg.errors.UndefinedColumn
        | psycopg.errors.UndefinedTable
        | psycopg.OperationalError,
    ), failure.value


# -- the security properties ---------------------------------------------------------------------
def cart_cannot_read_the_key(cluster: Cluster) -> None:
    """Not through any foreign table of db_cart, not as cart's reader role in db_blog."""
    with cluster.as_role("cart", "cart_app") as cart:
        tables = cart.execute(
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_foreign_table AS f "
            "JOIN pg_class AS c ON c.oid = f.ftrelid "
            "JOIN pg_namespace AS n ON n.oid = c.relnamespace"
        ).fetchall()
        for (table,) in tables:
            try:
                rows = cart.execute(f"SELECT * FROM {table}").fetchall()
            except psycopg.Error:
                continue  # unreadable is fine too
            assert SUMUP_KEY not in repr(rows), table
    denied(cluster, "blog", "blog_ro_cart", "SELECT sumup_api_key FROM export.page_payment_configs")
    denied(cluster, "blog", "blog_ro_cart", "SELECT sumup_api_key FROM export.page_configs")
    denied(cluster, "blog", "blog_ro_cart", "SELECT sumup_api_key FROM export.retired_sumup_keys")


def edge_works(consumer: str, table: str) -> Property:
    def holds(cluster: Cluster) -> None:
        assert run_as(cluster, consumer, f"{consumer}_app", f"SELECT count(*) FROM {table}")

    return holds


def all_of(*properties: Property) -> Property:
    def holds(cluster: Cluster) -> None:
        for check in properties:
            check(cluster)

    return holds


def cannot(service: str, role: str, sql: str) -> Property:
    return lambda cluster: denied(cluster, service, role, sql)


def can(service: str, role: str, sql: str) -> Property:
    return lambda cluster: run_as(cluster, service, role, sql) and None


def role_absent(name: str) -> Property:
    def holds(cluster: Cluster) -> None:
        with cluster.admin() as admin:
            assert (
                admin.execute("SELECT FROM pg_roles WHERE rolname = %s", (name,)).fetchone() is None
            )

    return holds


def connect_denied(role: str, database: str) -> Property:
    def holds(cluster: Cluster) -> None:
        with pytest.raises(psycopg.OperationalError, match=r"permission denied|CONNECT"):
            cluster.as_role("likes", role, database).close()

    return holds


def mallory(cluster: Cluster) -> psycopg.Connection:
    return psycopg.connect(
        host="127.0.0.1", port=cluster.server.port, dbname="db_likes", user="mallory",
        password="mallory-pw", connect_timeout=5, autocommit=True,
    )  # fmt: skip


def mallory_deletes_likes(cluster: Cluster) -> None:
    with mallory(cluster) as connection:
        connection.execute("DELETE FROM likes.likes WHERE false")


def mallory_cannot_delete_likes(cluster: Cluster) -> None:
    with pytest.raises(psycopg.OperationalError, match=r"permission denied|CONNECT"):
        mallory(cluster).close()


# -- the kinds of drift --------------------------------------------------------------------------
PAGE_CONFIGS_WITH_KEY = """
CREATE OR REPLACE VIEW export.page_configs AS
SELECT pc.id, pc.container_type, pc.container_id,
       CASE WHEN pc.container_type = 'page' THEN p.slug END AS page_slug,
       CASE WHEN pc.container_type = 'page' THEN p.title END AS page_title,
       pc.features, pc.sumup_merchant_code, pc.sumup_checkout_prefix,
       (pc.sumup_merchant_code IS NOT NULL AND pc.sumup_api_key IS NOT NULL) AS sumup_configured,
       pc.created_at, pc.updated_at, pc.sumup_api_key
FROM blog.page_configs AS pc
LEFT JOIN blog.posts AS p ON pc.container_type = 'page' AND p.id = pc.container_id
WHERE pc.deleted_at IS NULL
"""
# The key under a declared name: only the view's dependency on the key column shows it.
PAGE_CONFIGS_KEY_AS_PREFIX = PAGE_CONFIGS_WITH_KEY.replace(
    "pc.sumup_checkout_prefix,", "left(pc.sumup_api_key, 40)::varchar(40) AS sumup_checkout_prefix,"
).replace(", pc.sumup_api_key\n", "\n")


def reader_purges_likes(cluster: Cluster) -> None:
    """The audit's way in: the reader switches its read-only default off (it is its own to
    set), then calls a SECURITY DEFINER function of export that deletes likes."""
    with cluster.as_role("likes", "likes_ro_market") as reader:
        reader.execute("SET default_transaction_read_only = off")
        reader.execute("SELECT export.purge(424242)").fetchall()


def reader_cannot_purge_likes(cluster: Cluster) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        reader_purges_likes(cluster)


@dataclass(frozen=True)
class Drift:
    name: str
    inject: list[tuple[str | None, str]]  # (service whose database, or None: postgres; SQL)
    names: list[str]  # what `rose db check` says (substrings of its lines)
    fix: list[str]  # what `rose db provision --dry-run` prints (substrings)
    holds: Property  # the property behind it, after the repair
    broken: Property | None = None  # the same property failing, before (proves the drift)
    provision_args: tuple[str, ...] = ()
    # Provisioning cannot repair it alone: it says what is left (exit 1), a person does this.
    left: list[str] = field(default_factory=list)
    while_left: Property | None = None  # what already holds before the person's fix
    by_hand: list[tuple[str | None, str]] = field(default_factory=list)
    cleanup: list[tuple[str | None, str]] = field(default_factory=list)

    def __str__(self) -> str:
        return self.name


DRIFTS = [
    Drift(
        "export view leaks the key (CREATE OR REPLACE VIEW adds sumup_api_key)",
        [("blog", "SET ROLE blog_owner"), ("blog", PAGE_CONFIGS_WITH_KEY)],
        names=[
            "db_blog: export view export.page_configs exposes undeclared column sumup_api_key",
            "db_blog: export view page_configs reads secret column blog.page_configs.sumup_api_key",
        ],
        fix=["REVOKE SELECT (id) ON export.page_configs FROM blog_ro_cart"],
        left=["exposes undeclared column sumup_api_key", "reads secret column"],
        # by hand: the view's definition from before (the test restores it)
        while_left=all_of(
            cart_cannot_read_the_key,
            cannot("blog", "blog_ro_cart", "SELECT id FROM export.page_configs"),
        ),
        holds=all_of(cart_cannot_read_the_key, edge_works("cart", "blog.page_configs")),
    ),
    Drift(
        "export view hands out the key under a declared column's name",
        [
            ("blog", "SET ROLE blog_owner"),
            ("blog", "DROP VIEW export.page_configs"),
            ("blog", PAGE_CONFIGS_KEY_AS_PREFIX.replace("CREATE OR REPLACE", "CREATE")),
        ],
        names=["export view page_configs reads secret column blog.page_configs.sumup_api_key"],
        fix=[
            "reads secret column blog.page_configs.sumup_api_key (only page_payment_configs "
            "may): closed to every reader"
        ],
        left=["reads secret column"],
        # The dropped view took its grants; provisioning must not give them back.
        while_left=all_of(
            cart_cannot_read_the_key,
            cannot("blog", "blog_ro_cart", "SELECT sumup_checkout_prefix FROM export.page_configs"),
        ),
        holds=all_of(cart_cannot_read_the_key, edge_works("cart", "blog.page_configs")),
    ),
    Drift(
        "cart's reader is granted the payment view",
        [("blog", "GRANT SELECT ON export.page_payment_configs TO blog_ro_cart")],
        names=[
            "db_blog: extra privilege SELECT on view export.page_payment_configs for blog_ro_cart"
        ],
        fix=["REVOKE SELECT ON export.page_payment_configs FROM blog_ro_cart CASCADE"],
        broken=can("blog", "blog_ro_cart", "SELECT sumup_api_key FROM export.page_payment_configs"),
        holds=cart_cannot_read_the_key,
    ),
    # Audit s20b M1: REVOKE ... CASCADE of a table-wide grant takes the reader's column grants
    # with it; one provision must give them back (not a second one).
    Drift(
        "orders' reader is granted its payment view table-wide",
        [("blog", "GRANT SELECT ON export.page_payment_configs TO blog_ro_orders")],
        names=[
            "db_blog: extra privilege SELECT on view export.page_payment_configs for blog_ro_orders"
        ],
        fix=[
            "REVOKE SELECT ON export.page_payment_configs FROM blog_ro_orders CASCADE;\n"
            "GRANT SELECT (id, container_type, container_id, sumup_merchant_code, sumup_api_key, "
            "sumup_checkout_prefix) ON export.page_payment_configs TO blog_ro_orders"
        ],
        holds=all_of(
            edge_works("orders", "blog.page_payment_configs"),
            cannot("blog", "blog_ro_orders", "SELECT created_at FROM export.page_payment_configs"),
        ),
    ),
    Drift(
        "cart's reader is granted every export view table-wide",
        [("blog", "GRANT SELECT ON ALL TABLES IN SCHEMA export TO blog_ro_cart")],
        names=["db_blog: extra privilege SELECT on view export.page_configs for blog_ro_cart"],
        fix=["REVOKE SELECT ON export.page_configs FROM blog_ro_cart CASCADE;\nGRANT SELECT ("],
        holds=all_of(cart_cannot_read_the_key, edge_works("cart", "blog.page_configs")),
    ),
    Drift(
        "orders' reader's column grants and schema use carry grant options",
        [
            (
                "blog",
                "GRANT SELECT (sumup_api_key) ON export.page_payment_configs TO blog_ro_orders "
                "WITH GRANT OPTION",
            ),
            ("blog", "GRANT USAGE ON SCHEMA export TO blog_ro_orders WITH GRANT OPTION"),
        ],
        names=[
            "db_blog: extra grant option for SELECT on column sumup_api_key of view "
            "export.page_payment_configs for blog_ro_orders",
            "db_blog: extra grant option for USAGE on schema export for blog_ro_orders",
        ],
        fix=[
            "REVOKE GRANT OPTION FOR SELECT (sumup_api_key) ON export.page_payment_configs "
            "FROM blog_ro_orders CASCADE",
            "REVOKE GRANT OPTION FOR USAGE ON SCHEMA export FROM blog_ro_orders CASCADE",
        ],
        holds=edge_works("orders", "blog.page_payment_configs"),
    ),
    Drift(
        "a consumer's app may pass on its foreign table",
        [("orders", "GRANT SELECT ON blog.page_payment_configs TO orders_app WITH GRANT OPTION")],
        names=[
            "db_orders: extra grant option for SELECT on foreign table "
            "blog.page_payment_configs for orders_app"
        ],
        fix=["REVOKE GRANT OPTION FOR SELECT ON blog.page_payment_configs FROM orders_app CASCADE"],
        holds=edge_works("orders", "blog.page_payment_configs"),
    ),
    # Audit s20b M2: the monolith's tables hold every merchant's SumUp key and every order;
    # `legacy` is its owner's alone, like every other schema rose manages.
    Drift(
        "cart's app is granted the monolith's page configs and orders",
        [
            ("cart", "CREATE SCHEMA legacy AUTHORIZATION cart_owner"),
            ("cart", "SET ROLE cart_owner"),
            ("cart", "CREATE TABLE legacy.page_configs (id serial, sumup_api_key text)"),
            ("cart", "INSERT INTO legacy.page_configs (sumup_api_key) VALUES ('sup_sk_legacy')"),
            ("cart", "CREATE TABLE legacy.orders (id serial, total numeric)"),
            ("cart", "RESET ROLE"),
            ("cart", "GRANT USAGE ON SCHEMA legacy TO cart_app"),
            ("cart", "GRANT SELECT ON legacy.page_configs TO cart_app"),
            ("cart", "GRANT INSERT, UPDATE, DELETE ON legacy.orders TO cart_app"),
            ("cart", "GRANT UPDATE (total) ON legacy.orders TO PUBLIC"),
            ("cart", "GRANT USAGE ON SEQUENCE legacy.orders_id_seq TO cart_app"),
        ],
        names=[
            "db_cart: extra privilege USAGE on schema legacy for cart_app",
            "db_cart: extra privilege SELECT on table legacy.page_configs for cart_app",
            "db_cart: extra privilege INSERT on table legacy.orders for cart_app",
            "db_cart: extra privilege UPDATE on column total of table legacy.orders for PUBLIC",
            "db_cart: extra privilege USAGE on sequence legacy.orders_id_seq for cart_app",
        ],
        fix=[
            "REVOKE USAGE ON SCHEMA legacy FROM cart_app CASCADE",
            "REVOKE SELECT ON TABLE legacy.page_configs FROM cart_app CASCADE",
            "REVOKE DELETE ON TABLE legacy.orders FROM cart_app CASCADE",
            "REVOKE UPDATE (total) ON TABLE legacy.orders FROM PUBLIC CASCADE",
        ],
        broken=can("cart", "cart_app", "SELECT sumup_api_key FROM legacy.page_configs"),
        holds=all_of(
            cannot("cart", "cart_app", "SELECT sumup_api_key FROM legacy.page_configs"),
            cannot("cart", "cart_app", "DELETE FROM legacy.orders"),
        ),
        cleanup=[("cart", "DROP SCHEMA IF EXISTS legacy CASCADE")],
    ),
    # Audit s20b M4: row-level security and disabled triggers decide what a role reads or may
    # write as much as grants do; the models declare none.
    Drift(
        "a policy empties every cart, another opens blog's page configs",
        [
            ("cart", "CREATE POLICY p ON cart.cart_items USING (false)"),
            ("cart", "ALTER TABLE cart.cart_items ENABLE ROW LEVEL SECURITY"),
            ("blog", "CREATE POLICY open ON blog.page_configs TO blog_app USING (true)"),
        ],
        names=[
            "db_cart: unexpected policy p on table cart.cart_items (PERMISSIVE FOR ALL TO public "
            "USING (false))",
            "db_cart: row-level security is enabled on table cart.cart_items",
            "db_blog: unexpected policy open on table blog.page_configs",
        ],
        fix=[
            "DROP POLICY p ON cart.cart_items",
            "ALTER TABLE cart.cart_items DISABLE ROW LEVEL SECURITY",
            "DROP POLICY open ON blog.page_configs",
        ],
        broken=lambda c: _row_security_is(c, "cart", "cart.cart_items", True),
        holds=all_of(
            lambda c: _row_security_is(c, "cart", "cart.cart_items", False),
            lambda c: _no_policies(c, "blog"),
        ),
        cleanup=[
            ("cart", "DROP POLICY IF EXISTS p ON cart.cart_items"),
            ("cart", "ALTER TABLE cart.cart_items DISABLE ROW LEVEL SECURITY"),
            ("blog", "DROP POLICY IF EXISTS open ON blog.page_configs"),
        ],
    ),
    Drift(
        "row-level security forced on likes, triggers (foreign keys') disabled on cart's lines",
        [
            ("likes", "ALTER TABLE likes.likes FORCE ROW LEVEL SECURITY"),
            ("cart", "ALTER TABLE cart.cart_items DISABLE TRIGGER ALL"),
        ],
        names=[
            "db_likes: row-level security is forced on table likes.likes",
            "db_cart: trigger ",
            " on table cart.cart_items is disabled",
        ],
        fix=[
            "ALTER TABLE likes.likes NO FORCE ROW LEVEL SECURITY",
            "ALTER TABLE cart.cart_items ENABLE TRIGGER ",
        ],
        broken=lambda c: _triggers_disabled(c, "cart", expected=True),
        holds=lambda c: _triggers_disabled(c, "cart", expected=False),
        cleanup=[
            ("likes", "ALTER TABLE likes.likes NO FORCE ROW LEVEL SECURITY"),
            ("cart", "ALTER TABLE cart.cart_items ENABLE TRIGGER ALL"),
        ],
    ),
    Drift(
        "cart's reader is granted the key column",
        [("blog", "GRANT SELECT (sumup_api_key) ON export.page_payment_configs TO blog_ro_cart")],
        names=[
            "db_blog: extra privilege SELECT on column sumup_api_key of view "
            "export.page_payment_configs for blog_ro_cart"
        ],
        fix=["REVOKE SELECT (sumup_api_key) ON export.page_payment_configs FROM blog_ro_cart"],
        broken=can("blog", "blog_ro_cart", "SELECT sumup_api_key FROM export.page_payment_configs"),
        holds=cart_cannot_read_the_key,
    ),
    Drift(
        "a foreign table of the payment view appears in db_cart",
        [
            (
                "cart",
                "CREATE FOREIGN TABLE blog.page_payment_configs (id bigint, sumup_api_key text) "
                "SERVER blog_server "
                "OPTIONS (schema_name 'export', table_name 'page_payment_configs')",
            ),
            ("cart", "GRANT SELECT ON blog.page_payment_configs TO cart_app"),
        ],
        names=["db_cart: unexpected foreign table blog.page_payment_configs"],
        fix=["DROP FOREIGN TABLE blog.page_payment_configs"],
        holds=all_of(
            cart_cannot_read_the_key,
            cannot("cart", "cart_app", "SELECT * FROM blog.page_payment_configs"),
        ),
    ),
    Drift(
        "a foreign table grows the key column",
        [("cart", "ALTER FOREIGN TABLE blog.page_configs ADD COLUMN sumup_api_key text")],
        names=["db_cart: foreign table blog.page_configs is out of date"],
        fix=["DROP FOREIGN TABLE blog.page_configs;", "CREATE FOREIGN TABLE blog.page_configs ("],
        holds=all_of(
            cart_cannot_read_the_key,
            edge_works("cart", "blog.page_configs"),
            cannot("cart", "cart_app", "SELECT sumup_api_key FROM blog.page_configs"),
        ),
    ),
    Drift(
        "a declared foreign table is dropped",
        [("market", "DROP FOREIGN TABLE likes.likes")],
        names=["db_market: missing foreign table likes.likes"],
        fix=["CREATE FOREIGN TABLE likes.likes (id bigint, user_id bigint"],
        broken=cannot("market", "market_app", "SELECT count(*) FROM likes.likes"),
        holds=edge_works("market", "likes.likes"),
    ),
    Drift(
        "a foreign table is made updatable",
        [("market", "ALTER FOREIGN TABLE likes.likes OPTIONS (ADD updatable 'true')")],
        names=["db_market: foreign table likes.likes has undeclared option updatable"],
        fix=["ALTER FOREIGN TABLE likes.likes OPTIONS (DROP updatable)"],
        holds=edge_works("market", "likes.likes"),
    ),
    Drift(
        "a foreign server is made updatable",
        [("market", "ALTER SERVER likes_server OPTIONS (SET updatable 'true')")],
        names=[
            "db_market: foreign server likes_server option updatable is 'true', declared 'false'"
        ],
        fix=["ALTER SERVER likes_server OPTIONS (SET updatable 'false')"],
        holds=edge_works("market", "likes.likes"),
    ),
    Drift(
        "a foreign server points at the wrong port",
        [("blog", "ALTER SERVER relations_server OPTIONS (SET port '1')")],
        names=[
            "db_blog: foreign server relations_server option port is '1'",
            "db_blog: edge blog <- relations: relations.container_relations cannot be read",
        ],
        fix=["ALTER SERVER relations_server OPTIONS (SET port "],
        broken=cannot("blog", "blog_app", "SELECT count(*) FROM relations.container_relations"),
        holds=edge_works("blog", "relations.container_relations"),
    ),
    Drift(
        "a user mapping's password is wrong",
        [
            (
                "market",
                "ALTER USER MAPPING FOR market_app SERVER likes_server "
                "OPTIONS (SET password 'wrong')",
            )
        ],
        names=[
            "db_market: user mapping for market_app on likes_server: option password differs",
            "db_market: edge market <- likes: likes.likes cannot be read as market_app",
        ],
        fix=["ALTER USER MAPPING FOR market_app SERVER likes_server OPTIONS (SET password '***')"],
        broken=cannot("market", "market_app", "SELECT count(*) FROM likes.likes"),
        holds=edge_works("market", "likes.likes"),
    ),
    Drift(
        "an extra user mapping (PUBLIC, as orders' reader) in db_cart",
        [
            (
                "cart",
                "CREATE USER MAPPING FOR PUBLIC SERVER blog_server "
                "OPTIONS (user 'blog_ro_orders', password 'x')",
            )
        ],
        names=["db_cart: extra user mapping for public on blog_server"],
        fix=["DROP USER MAPPING FOR PUBLIC SERVER blog_server"],
        holds=cart_cannot_read_the_key,
    ),
    Drift(
        "a reader's password changed by hand",
        [(None, "ALTER ROLE likes_ro_market PASSWORD 'changed-by-hand'")],
        names=[
            "cluster: role likes_ro_market password is not the declared one",
            "db_market: edge market <- likes: likes.likes cannot be read as market_app",
            'password authentication failed for user "likes_ro_market"',
        ],
        fix=["ALTER ROLE likes_ro_market PASSWORD '***'"],
        broken=cannot("market", "market_app", "SELECT count(*) FROM likes.likes"),
        holds=edge_works("market", "likes.likes"),
    ),
    Drift(
        "a reader's grant on its view is revoked",
        [("likes", "REVOKE SELECT (target_slug) ON export.likes FROM likes_ro_market")],
        names=[
            "db_likes: missing privilege SELECT on column target_slug of view export.likes "
            "for likes_ro_market",
            "db_market: edge market <- likes: likes.likes cannot be read as market_app: "
            "permission denied",
        ],
        fix=["GRANT SELECT (target_slug) ON export.likes TO likes_ro_market"],
        broken=cannot("market", "market_app", "SELECT target_slug FROM likes.likes"),
        holds=edge_works("market", "likes.likes"),
    ),
    Drift(
        "a reader is no longer read-only",
        [(None, "ALTER ROLE likes_ro_market RESET default_transaction_read_only")],
        names=[
            "cluster: role likes_ro_market setting default_transaction_read_only is not set, "
            "declared on"
        ],
        fix=["ALTER ROLE likes_ro_market SET default_transaction_read_only = 'on'"],
        holds=lambda c: (
            run_as(c, "likes", "likes_ro_market", "SHOW default_transaction_read_only") == [("on",)]
            or pytest.fail("reader not read-only")
        ),
    ),
    Drift(
        "a login role is granted likes_owner (it connected and ran DELETE)",
        [
            (None, "CREATE ROLE mallory LOGIN PASSWORD 'mallory-pw'"),
            (None, "GRANT likes_owner TO mallory"),
        ],
        names=["cluster: extra membership: mallory (LOGIN) is a member of likes_owner"],
        fix=["REVOKE likes_owner FROM mallory GRANTED BY postgres CASCADE"],
        broken=lambda c: mallory_deletes_likes(c),
        holds=mallory_cannot_delete_likes,
        cleanup=[(None, "DROP ROLE mallory")],
    ),
    Drift(
        "an unknown role in rose's namespace (removed only with --prune)",
        [
            (None, "CREATE ROLE likes_admin LOGIN PASSWORD 'admin-pw'"),
            (None, "GRANT CONNECT ON DATABASE db_likes TO likes_admin"),
            ("likes", "GRANT SELECT, DELETE ON likes.likes TO likes_admin"),
        ],
        names=[
            "cluster: unknown role likes_admin (LOGIN) in rose's namespace",
            "extra privilege DELETE on table likes.likes for likes_admin",
        ],
        fix=[
            "REVOKE DELETE ON TABLE likes.likes FROM likes_admin CASCADE",
            "DROP ROLE likes_admin",
        ],
        provision_args=("--prune",),
        holds=role_absent("likes_admin"),
    ),
    Drift(
        "the app role loses a privilege on its table",
        [("likes", "REVOKE INSERT ON likes.likes FROM likes_app")],
        names=["db_likes: missing privilege INSERT on table likes.likes for likes_app"],
        fix=["GRANT INSERT ON TABLE likes.likes TO likes_app"],
        broken=cannot(
            "likes",
            "likes_app",
            "INSERT INTO likes.likes (user_id, target_type, "
            "target_slug) VALUES (1, 'product', 'x') RETURNING id",
        ),
        holds=can("likes", "likes_app", "SELECT count(*) FROM likes.likes"),
    ),
    Drift(
        "the app role may rewrite its migrations' version (as an earlier release granted)",
        [("likes", "GRANT SELECT, INSERT, UPDATE, DELETE ON likes.alembic_version TO likes_app")],
        names=[
            "db_likes: extra privilege UPDATE on table likes.alembic_version for likes_app",
            "db_likes: extra privilege SELECT on table likes.alembic_version for likes_app",
        ],
        fix=["REVOKE UPDATE ON TABLE likes.alembic_version FROM likes_app CASCADE"],
        broken=can(
            "likes",
            "likes_app",
            "UPDATE likes.alembic_version SET version_num = version_num RETURNING 1",
        ),
        holds=all_of(
            cannot(
                "likes",
                "likes_app",
                "UPDATE likes.alembic_version SET version_num = 'x' RETURNING 1",
            ),
            cannot("likes", "likes_app", "SELECT version_num FROM likes.alembic_version"),
        ),
    ),
    Drift(
        "a public SECURITY DEFINER function in export (market's reader deleted likes with it)",
        [
            (
                "likes",
                "CREATE FUNCTION export.purge(u bigint) RETURNS bigint LANGUAGE sql "
                "SECURITY DEFINER AS 'WITH d AS (DELETE FROM likes.likes WHERE user_id = u "
                "RETURNING 1) SELECT count(*) FROM d'",
            ),
            ("likes", "ALTER FUNCTION export.purge(bigint) OWNER TO likes_owner"),
        ],
        names=[
            "db_likes: extra privilege EXECUTE on function export.purge(u bigint) for PUBLIC",
            "db_likes: function export.purge(u bigint) is SECURITY DEFINER",
        ],
        fix=["REVOKE EXECUTE ON ROUTINE export.purge(u bigint) FROM PUBLIC CASCADE"],
        broken=reader_purges_likes,
        left=["function export.purge(u bigint) is SECURITY DEFINER"],
        while_left=reader_cannot_purge_likes,
        by_hand=[("likes", "DROP FUNCTION export.purge(bigint)")],
        holds=lambda c: _no_routines_in(c, "likes", "export"),
    ),
    Drift(
        "a function in the service's schema that every role may execute",
        [("cart", "CREATE FUNCTION cart.peek() RETURNS bigint LANGUAGE sql AS 'SELECT 1::bigint'")],
        names=["db_cart: extra privilege EXECUTE on function cart.peek() for PUBLIC"],
        fix=["REVOKE EXECUTE ON ROUTINE cart.peek() FROM PUBLIC CASCADE"],
        broken=can("cart", "cart_app", "SELECT cart.peek()"),
        holds=cannot("cart", "cart_app", "SELECT cart.peek()"),
        cleanup=[("cart", "DROP FUNCTION cart.peek()")],
    ),
    Drift(
        "a SECURITY DEFINER function in public, where every role may look",
        [
            (
                "likes",
                "CREATE FUNCTION public.purge(u bigint) RETURNS bigint LANGUAGE sql "
                "SECURITY DEFINER AS 'WITH d AS (DELETE FROM likes.likes WHERE user_id = u "
                "RETURNING 1) SELECT count(*) FROM d'",
            ),
        ],
        names=[
            "db_likes: extra privilege EXECUTE on function public.purge(u bigint) for PUBLIC",
            "db_likes: function public.purge(u bigint) is SECURITY DEFINER",
        ],
        fix=["REVOKE EXECUTE ON ROUTINE public.purge(u bigint) FROM PUBLIC CASCADE"],
        broken=can("likes", "likes_app", "SELECT public.purge(424242)"),
        left=["function public.purge(u bigint) is SECURITY DEFINER"],
        while_left=all_of(
            cannot("likes", "likes_app", "SELECT public.purge(424242)"),
            cannot("likes", "likes_ro_market", "SELECT public.purge(424242)"),
        ),
        by_hand=[("likes", "DROP FUNCTION public.purge(bigint)")],
        holds=lambda c: _no_routines_in(c, "likes", "public"),
    ),
    Drift(
        "an extension nobody declared (dblink) in a service database",
        [("cart", "CREATE EXTENSION dblink")],
        names=["db_cart: unexpected extension dblink"],
        fix=["-- db_cart: unexpected extension dblink"],
        left=["unexpected extension dblink"],
        by_hand=[("cart", "DROP EXTENSION dblink")],
        holds=lambda c: _no_extension(c, "cart", "dblink"),
    ),
    Drift(
        "the app role gets TRUNCATE",
        [("orders", "GRANT TRUNCATE ON orders.orders TO orders_app")],
        names=["db_orders: extra privilege TRUNCATE on table orders.orders for orders_app"],
        fix=["REVOKE TRUNCATE ON TABLE orders.orders FROM orders_app CASCADE"],
        holds=cannot("orders", "orders_app", "TRUNCATE orders.orders CASCADE"),
    ),
    Drift(
        "the app role may create in its schema",
        [("likes", "GRANT CREATE ON SCHEMA likes TO likes_app")],
        names=["db_likes: extra privilege CREATE on schema likes for likes_app"],
        fix=["REVOKE CREATE ON SCHEMA likes FROM likes_app CASCADE"],
        holds=cannot("likes", "likes_app", "CREATE TABLE likes.scratch (id int)"),
    ),
    Drift(
        "another service's app may connect to db_orders",
        [("orders", "GRANT CONNECT ON DATABASE db_orders TO cart_app")],
        names=["cluster: extra privilege CONNECT on database db_orders for cart_app"],
        fix=["REVOKE CONNECT ON DATABASE db_orders FROM cart_app CASCADE"],
        holds=lambda c: connect_denied("cart_app", "db_orders")(c),
    ),
    Drift(
        "PUBLIC may connect to postgres and template1 again",
        [
            (None, "GRANT CONNECT, TEMPORARY ON DATABASE postgres TO PUBLIC"),
            (None, "GRANT CONNECT ON DATABASE template1 TO PUBLIC"),
        ],
        names=[
            "cluster: extra privilege CONNECT on database postgres for PUBLIC",
            "cluster: extra privilege TEMPORARY on database postgres for PUBLIC",
            "cluster: extra privilege CONNECT on database template1 for PUBLIC",
        ],
        fix=["REVOKE CONNECT ON DATABASE postgres FROM PUBLIC"],
        broken=lambda c: c.as_role("likes", "likes_app", "postgres").close(),
        holds=all_of(
            connect_denied("likes_app", "postgres"), connect_denied("likes_ro_market", "template1")
        ),
    ),
    Drift(
        "an unknown database in rose's namespace that cart_app may enter",
        [
            (None, "CREATE DATABASE db_intruder"),
            (None, "GRANT CONNECT ON DATABASE db_intruder TO cart_app"),
        ],
        names=[
            "cluster: unknown database db_intruder in rose's namespace",
            "cluster: extra privilege CONNECT on database db_intruder for cart_app",
        ],
        fix=[
            "REVOKE CONNECT ON DATABASE db_intruder FROM cart_app CASCADE",
            "REVOKE CONNECT ON DATABASE db_intruder FROM PUBLIC",
        ],
        left=["unknown database db_intruder"],
        while_left=connect_denied("cart_app", "db_intruder"),
        by_hand=[(None, "DROP DATABASE db_intruder")],
        broken=lambda c: c.as_role("cart", "cart_app", "db_intruder").close(),
        holds=connect_denied("cart_app", "postgres"),
    ),
    Drift(
        "the owner role can log in, the app role cannot",
        [(None, "ALTER ROLE likes_owner LOGIN"), (None, "ALTER ROLE cart_app NOLOGIN")],
        names=[
            "cluster: role likes_owner should be NOLOGIN",
            "cluster: role cart_app should be LOGIN",
        ],
        fix=["ALTER ROLE likes_owner NOLOGIN", "ALTER ROLE cart_app LOGIN"],
        broken=cannot("cart", "cart_app", "SELECT 1"),
        holds=can("cart", "cart_app", "SELECT 1"),
    ),
    Drift(
        "an app role becomes superuser",
        [(None, "ALTER ROLE market_app SUPERUSER CREATEROLE")],
        names=[
            "cluster: role market_app should be NOSUPERUSER",
            "cluster: role market_app should be NOCREATEROLE",
        ],
        fix=["ALTER ROLE market_app NOSUPERUSER", "ALTER ROLE market_app NOCREATEROLE"],
        holds=cannot("market", "market_app", "SELECT count(*) FROM pg_authid"),
    ),
    Drift(
        "an app role gets a setting in one database",
        [(None, "ALTER ROLE likes_app IN DATABASE db_likes SET statement_timeout = 0")],
        names=["cluster: role likes_app has undeclared settings in database db_likes"],
        fix=["ALTER ROLE likes_app IN DATABASE db_likes RESET ALL"],
        holds=lambda c: (
            run_as(c, "likes", "likes_app", "SHOW statement_timeout") == [("30s",)]
            or pytest.fail("statement_timeout not the declared one")
        ),
    ),
    Drift(
        "default privileges give another app every new likes table",
        [
            (
                "likes",
                "ALTER DEFAULT PRIVILEGES FOR ROLE likes_owner IN SCHEMA likes "
                "GRANT SELECT ON TABLES TO market_app",
            )
        ],
        names=[
            "db_likes: extra default privilege SELECT on new tables of likes_owner in schema "
            "likes for market_app"
        ],
        fix=[
            "ALTER DEFAULT PRIVILEGES FOR ROLE likes_owner IN SCHEMA likes REVOKE SELECT ON "
            "TABLES FROM market_app"
        ],
        holds=lambda c: _no_default_acl_for(c, "market_app"),
    ),
    Drift(
        "a table changes owner",
        [("relations", "ALTER TABLE relations.container_relations OWNER TO postgres")],
        names=[
            "db_relations: table relations.container_relations is owned by postgres, not "
            "relations_owner"
        ],
        fix=["ALTER TABLE relations.container_relations OWNER TO relations_owner"],
        holds=edge_works("blog", "relations.container_relations"),
    ),
]


def _no_routines_in(cluster: Cluster, service: str, schema: str) -> None:
    with cluster.admin(service) as connection:
        rows = connection.execute(
            "SELECT p.proname FROM pg_proc AS p WHERE p.pronamespace = %s::regnamespace "
            "AND NOT EXISTS (SELECT FROM pg_depend AS d WHERE d.objid = p.oid "
            "AND d.classid = 'pg_proc'::regclass AND d.deptype = 'e')",
            (schema,),
        ).fetchall()
    assert rows == []


def _row_security_is(cluster: Cluster, service: str, table: str, active: bool) -> None:
    """Whether row-level security filters what the service's app reads of the table."""
    rows = run_as(cluster, service, f"{service}_app", f"SELECT row_security_active('{table}')")
    assert rows == [(active,)]


def _no_policies(cluster: Cluster, service: str) -> None:
    with cluster.admin(service) as connection:
        assert connection.execute("SELECT policyname FROM pg_policies").fetchall() == []


def _triggers_disabled(cluster: Cluster, service: str, *, expected: bool) -> None:
    with cluster.admin(service) as connection:
        disabled = connection.execute(
            "SELECT tgname FROM pg_trigger WHERE tgenabled = 'D'"
        ).fetchall()
    assert bool(disabled) is expected, disabled


def _no_extension(cluster: Cluster, service: str, name: str) -> None:
    with cluster.admin(service) as connection:
        assert (
            connection.execute("SELECT FROM pg_extension WHERE extname = %s", (name,)).fetchall()
            == []
        )


def _no_default_acl_for(cluster: Cluster, role: str) -> None:
    with cluster.admin("likes") as likes:
        rows = likes.execute(
            "SELECT FROM pg_default_acl AS d, aclexplode(d.defaclacl) AS a "
            "WHERE a.grantee = %s::regrole",
            (role,),
        ).fetchall()
    assert rows == []


def execute(cluster: Cluster, statements: list[tuple[str | None, str]]) -> None:
    """Statements in order; consecutive ones on the same database share a session."""
    connection, current = None, object()
    try:
        for service, sql in statements:
            if service != current:
                if connection is not None:
                    connection.close()
                connection, current = cluster.admin(service), service
            connection.execute(sql)
    finally:
        if connection is not None:
            connection.close()


def test_at_least_fifteen_kinds_of_drift_are_covered():
    assert len(DRIFTS) >= 15
    assert len({drift.name for drift in DRIFTS}) == len(DRIFTS)


@pytest.mark.parametrize("drift", DRIFTS, ids=str)
def test_drift_is_named_shown_repaired_and_the_property_holds(cluster: Cluster, drift: Drift):
    # The cluster starts clean: checked when it was made, and at the end of every case.
    with cluster.admin("blog") as blog:
        page_configs = blog.execute(
            "SELECT pg_get_viewdef('export.page_configs'::regclass)"
        ).fetchone()[0]
    restore_view = [
        ("blog", "SET ROLE blog_owner"),
        ("blog", "DROP VIEW export.page_configs"),
        ("blog", f"CREATE VIEW export.page_configs AS {page_configs}"),
    ]
    by_hand = drift.by_hand or (restore_view if "view" in drift.name and drift.left else [])
    execute(cluster, drift.inject)
    try:
        if drift.broken is not None:
            drift.broken(cluster)

        check = cluster.rose("db", "check")
        assert check.exit_code == 1, check.output
        for line in drift.names:
            assert line in check.output, f"check does not name {line!r}:\n{check.output}"

        before = catalog_snapshot(cluster.admin)
        dry_run = cluster.rose("db", "provision", "--dry-run", *drift.provision_args)
        for statement in drift.fix:
            assert statement in dry_run.output, f"dry run lacks {statement!r}:\n{dry_run.output}"
        assert "dry run (nothing changed)" in dry_run.output
        assert differing_keys(before, catalog_snapshot(cluster.admin)) == []

        repaired = cluster.rose("db", "provision", *drift.provision_args)
        if drift.left:
            assert repaired.exit_code == 1, repaired.output
            for line in drift.left:
                assert line in repaired.output
            if drift.while_left is not None:
                drift.while_left(cluster)
            execute(cluster, by_hand)
            repaired = cluster.rose("db", "provision", *drift.provision_args)
        assert repaired.exit_code == 0, repaired.output

        healed = cluster.rose("db", "check")
        assert healed.exit_code == 0, healed.output
        drift.holds(cluster)
    finally:
        execute(cluster, drift.cleanup)


# -- a column's type or nullability, altered by hand ----------------------------------------------
COLUMNS_ALTERED_BY_HAND = [
    # The idempotency key column narrower than the keys the app accepts (apps.common.idempotency.
    # MAX_KEY_LENGTH): a longer key would be a 500, not a 422.
    (
        "orders",
        "ALTER TABLE orders.idempotency_keys ALTER COLUMN key TYPE varchar(100)",
        "ALTER TABLE orders.idempotency_keys ALTER COLUMN key TYPE varchar(200)",
    ),
    # An amount without its scale: Alembic compares only the arguments both sides have.
    (
        "orders",
        "ALTER TABLE orders.orders ALTER COLUMN total TYPE numeric",
        "ALTER TABLE orders.orders ALTER COLUMN total TYPE numeric(12, 2)",
    ),
    ("likes", "ALTER TABLE likes.likes ALTER COLUMN user_id DROP NOT NULL",
     "ALTER TABLE likes.likes ALTER COLUMN user_id SET NOT NULL"),
    ("orders", "ALTER TABLE orders.orders ALTER COLUMN paid_at SET NOT NULL",
     "ALTER TABLE orders.orders ALTER COLUMN paid_at DROP NOT NULL"),
]  # fmt: skip


def test_a_fresh_database_has_every_column_as_its_models_declare(cluster: Cluster):
    """Types and nullability compared too, and nothing to report on databases the migrations
    just made: the models declare what the migrations make."""
    assert schema_differences(cluster.topology, SERVICES) == []


def check_names_what_was_altered_by_hand(
    cluster: Cluster, altered: list[tuple[str, str, str]], lines: list[str]
) -> None:
    """Each (service, alter, restore) altered: `rose db check` exits 1 naming every one of
    ``lines``; restored, it exits 0."""
    for service, alter, _ in altered:
        execute(cluster, [(service, alter)])
    try:
        check = cluster.rose("db", "check")
        assert check.exit_code == 1, check.output
        said = " ".join(check.output.split())
        for line in lines:
            assert line in said, f"check does not name {line!r}:\n{check.output}"
    finally:
        for service, _, restore in reversed(altered):
            execute(cluster, [(service, restore)])
    healed = cluster.rose("db", "check")
    assert healed.exit_code == 0, healed.output


def test_check_names_a_column_whose_type_or_nullability_was_changed_by_hand(cluster: Cluster):
    check_names_what_was_altered_by_hand(
        cluster,
        COLUMNS_ALTERED_BY_HAND,
        [
            "db_orders: column orders.idempotency_keys.key is VARCHAR(100), "
            "the models declare VARCHAR(200)",
            "db_orders: column orders.orders.total is NUMERIC, the models declare NUMERIC(12, 2)",
            "db_likes: column likes.likes.user_id is nullable, the models declare it NOT NULL",
            "db_orders: column orders.orders.paid_at is NOT NULL, the models declare it nullable",
        ],
    )


# -- indexes, constraints, defaults and identities: db/migrations/<service>/shape.toml -----------
def test_every_shape_file_is_what_the_migrations_make(cluster: Cluster):
    """Each service's shape.toml is what its migrations made in these fresh databases: a
    migration added without its file, or a file edited by hand, fails here. ROSE_WRITE_SHAPES=1
    writes the files instead (as `python -m ops.db.schema_shape --write` does)."""
    if os.environ.get("ROSE_WRITE_SHAPES") == "1":
        write_files(cluster.topology)
    assert stale_files(cluster.topology) == [], (
        "run ROSE_WRITE_SHAPES=1 pytest -k shape_file, or python -m ops.db.schema_shape --write"
    )
    with Connections() as connections:
        assert shape_differences(cluster.topology, SERVICES, connections) == []


SHAPE_ALTERED_BY_HAND = [
    # A refund recorded twice for one payment: the unique key that makes it once is gone.
    (
        "orders",
        "ALTER TABLE orders.refunds DROP CONSTRAINT uq_refunds_order_id_reason_key",
        "ALTER TABLE orders.refunds ADD CONSTRAINT uq_refunds_order_id_reason_key "
        "UNIQUE (order_id, reason_key)",
    ),
    # A status no code knows let in.
    (
        "orders",
        "ALTER TABLE orders.orders DROP CONSTRAINT ck_orders_status_known",
        "ALTER TABLE orders.orders ADD CONSTRAINT ck_orders_status_known CHECK (status IN "
        "('pending', 'paid', 'superseded', 'expired', 'cancelled', 'refund_due', 'refunded'))",
    ),
    # Rows written otherwise: every new order flagged.
    (
        "orders",
        "ALTER TABLE orders.orders ALTER COLUMN flagged SET DEFAULT true",
        "ALTER TABLE orders.orders ALTER COLUMN flagged SET DEFAULT false",
    ),
    # An index made by hand, and one the migrations make, made otherwise.
    (
        "likes",
        "CREATE INDEX by_hand ON likes.likes (created_at)",
        "DROP INDEX likes.by_hand",
    ),
    # An index a failed CREATE INDEX CONCURRENTLY (or REINDEX) left invalid: it serves nothing.
    (
        "orders",
        "UPDATE pg_index SET indisvalid = false "
        "WHERE indexrelid = 'orders.ix_orders_user'::regclass",
        "UPDATE pg_index SET indisvalid = true "
        "WHERE indexrelid = 'orders.ix_orders_user'::regclass",
    ),
    (
        "orders",
        "DROP INDEX orders.ix_orders_pending; CREATE INDEX ix_orders_pending ON orders.orders (id)",
        "DROP INDEX orders.ix_orders_pending; CREATE INDEX ix_orders_pending ON orders.orders "
        "(id) WHERE status = 'pending'",
    ),
]  # fmt: skip


def test_check_names_indexes_constraints_and_defaults_changed_by_hand(cluster: Cluster):
    """Before, `rose db check` compared tables and columns only: a unique key dropped by hand
    (a refund could be recorded twice) passed it with exit 0."""
    check_names_what_was_altered_by_hand(
        cluster,
        SHAPE_ALTERED_BY_HAND,
        [
            "db_orders: constraint uq_refunds_order_id_reason_key of orders.refunds is missing "
            "(the migrations make it: UNIQUE (order_id, reason_key))",
            "db_orders: constraint ck_orders_status_known of orders.orders is missing",
            "db_orders: default of orders.orders.flagged is true, the migrations make false",
            "db_likes: index by_hand of likes.likes is not made by the migrations (made by "
            "hand?): CREATE INDEX by_hand ON likes.likes USING btree (created_at)",
            "db_orders: index ix_orders_pending of orders.orders is CREATE INDEX "
            "ix_orders_pending ON orders.orders USING btree (id), the migrations make CREATE "
            "INDEX ix_orders_pending ON orders.orders USING btree (id) WHERE ((status)::text = "
            "'pending'::text)",
            "db_orders: index ix_orders_user of orders.orders is CREATE INDEX ix_orders_user ON "
            "orders.orders USING btree (user_id, id) (INVALID), the migrations make CREATE "
            "INDEX ix_orders_user ON orders.orders USING btree (user_id, id)",
        ],
    )


def test_a_missing_or_stale_shape_file_is_named_not_passed(cluster: Cluster, tmp_path, monkeypatch):
    """A release whose shape.toml is missing, or written at another head than its migrations,
    compared nothing and said nothing: now `rose db check` names it."""
    import ops.db.schema_shape as shapes

    written = shapes.shape_path("likes").read_text()
    monkeypatch.setattr(shapes, "shape_path", lambda service: tmp_path / f"{service}.toml")
    with Connections() as connections:
        missing = shape_differences(cluster.topology, ["likes"], connections)
        (tmp_path / "likes.toml").write_text(written.replace('head = ["', 'head = ["0000-'))
        stale = shape_differences(cluster.topology, ["likes"], connections)
        (tmp_path / "likes.toml").write_text(written)
        fine = shape_differences(cluster.topology, ["likes"], connections)
    assert missing == [
        f"db_likes: {tmp_path / 'likes.toml'} is missing: its indexes, constraints and defaults "
        "cannot be compared (regenerate it: python -m ops.db.schema_shape --write)"
    ]
    assert stale == [
        f"db_likes: {tmp_path / 'likes.toml'} is not at the migrations head: its indexes, "
        "constraints and defaults cannot be compared (regenerate it: python -m "
        "ops.db.schema_shape --write)"
    ]
    assert fine == []


def test_check_names_triggers_and_functions_changed_by_hand(cluster: Cluster):
    """Blog's trigger keeps the SumUp key a page config stops using, for orders' late payments
    and refunds (blog 0004). Dropped by hand, or its function made to do nothing, every key
    change lost the old key, and `rose db check` exited 0: triggers and the service's own
    functions were not compared with what the migrations make."""
    check_names_what_was_altered_by_hand(
        cluster,
        [
            (
                "blog",
                "DROP TRIGGER page_configs_retire_sumup_key ON blog.page_configs",
                "CREATE TRIGGER page_configs_retire_sumup_key AFTER INSERT OR DELETE OR "
                "UPDATE OF sumup_merchant_code, sumup_api_key, deleted_at ON blog.page_configs "
                "FOR EACH ROW EXECUTE FUNCTION blog.retire_sumup_key()",
            ),
            (
                "likes",
                "CREATE FUNCTION likes.by_hand() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RETURN NEW; END $$; CREATE TRIGGER by_hand BEFORE INSERT ON "
                "likes.likes FOR EACH ROW EXECUTE FUNCTION likes.by_hand()",
                "DROP TRIGGER by_hand ON likes.likes; DROP FUNCTION likes.by_hand()",
            ),
        ],
        [
            "db_blog: trigger page_configs_retire_sumup_key of blog.page_configs is missing",
            "db_likes: trigger by_hand of likes.likes is not made by the migrations",
            "db_likes: function likes.by_hand() is not made by the migrations",
        ],
    )

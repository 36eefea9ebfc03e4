"""A backup restores onto a new server, as docs/deployment.md ("Backups and a restore") says:
each service's database dumped with pg_dump; the new server provisioned and migrated by `rose`
with the same secrets; the rows put back with pg_restore. Every row comes back, the sequences go
on after them, the FDW edges read the new server (not the old one), and `rose db check` is
clean."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from apps.registry import SERVICES, service_spec
from ops.db.binaries import pg_binary
from ops.db.lifecycle import converge_databases
from ops.db.topology import Topology
from ops.stack.pgserver import throwaway_postgres
from tests.integration.db_fixtures import Cluster, start_cluster


@pytest.fixture(scope="module")
def source() -> Iterator[Cluster]:
    yield from start_cluster()


def seed(cluster: Cluster) -> None:
    """Rows a restore must bring back: likes, cart lines, an order with its items and payment
    attempt (blog's page and its config, with the SumUp key, come with the cluster)."""
    with cluster.admin("blog") as blog:
        config_id = blog.execute("SELECT id FROM blog.page_configs").fetchone()[0]
    with cluster.admin("likes") as likes:
        likes.execute(
            "INSERT INTO likes.likes (user_id, target_type, target_slug) "
            "SELECT n, 'product', 'jam-' || n FROM generate_series(1, 50) AS n"
        )
    with cluster.admin("cart") as cart:
        cart.execute(
            "INSERT INTO cart.cart_items (user_id, product_id, quantity, "
            "market_place_container_id) SELECT n, n, 1, 1 FROM generate_series(1, 20) AS n"
        )
    with cluster.admin("orders") as orders:
        order = orders.execute(
            "INSERT INTO orders.orders (user_id, status, currency, product_total, "
            "calendar_total, ticket_total, total, description, page_config_id, merchant_code, "
            "checkout_prefix, paid_at) VALUES (5, 'paid', 'EUR', 20, 0, 0, 20, 'jam', %s, "
            "'MSANDBOX1', 'rose-farm-', now()) RETURNING id",
            (config_id,),
        ).fetchone()[0]
        orders.execute(
            "INSERT INTO orders.order_items (order_id, kind, source_id, title, unit_price, "
            "currency, quantity) VALUES (%s, 'product', 31, 'Jam', 10, 'EUR', 2)",
            (order,),
        )
        orders.execute(
            "INSERT INTO orders.payment_attempts (order_id, number, checkout_reference, "
            "sumup_checkout_id, hosted_url, status, amount, currency) "
            "VALUES (%s, 1, 'rose-farm-1-1', 'c-1', 'https://x.test/', 'PAID', 20, 'EUR')",
            (order,),
        )


def digests(admin: Callable[[str], psycopg.Connection]) -> dict[str, tuple[int, str]]:
    """Every table of every service's own schema: its row count and a digest of its rows."""
    found: dict[str, tuple[int, str]] = {}
    for name in SERVICES:
        schema = service_spec(name).name
        with admin(name) as connection:
            tables = connection.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = %s ORDER BY 1", (schema,)
            ).fetchall()
            for (table,) in tables:
                count, digest = connection.execute(
                    f"SELECT count(*), md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), "
                    f"'')) FROM {schema}.{table} AS t"
                ).fetchone()
                found[f"{schema}.{table}"] = (count, digest)
    return found


def run(*command: str | Path) -> None:
    done = subprocess.run([str(part) for part in command], capture_output=True, text=True)
    assert done.returncode == 0, (command, done.stderr)


def test_a_backup_restores_onto_a_new_server_with_every_row(source: Cluster, tmp_path: Path):
    seed(source)
    before = digests(source.admin)
    assert before["likes.likes"][0] == 50
    assert before["orders.orders"][0] == 1
    # The backup: one file per service database (the version table's row is the migrations'
    # business: the new server is migrated to the same release before the rows go in).
    for name in SERVICES:
        database = service_spec(name).database
        run(
            pg_binary("pg_dump"),
            "--format=custom",
            "--exclude-table-data=*.alembic_version",
            f"--file={tmp_path / f'{database}.dump'}",
            f"--dbname={source.topology.admin_url(name)}",
        )

    with throwaway_postgres("rose-test-restore-") as server:
        topology = Topology.single_server(server.superuser_url(), environ={})
        # The same secrets: the roles get the passwords the services are configured with.
        converge_databases(topology, source.credentials, say=lambda _: None)
        for name in SERVICES:
            database = service_spec(name).database
            run(
                pg_binary("pg_restore"),
                "--data-only",
                "--disable-triggers",
                "--single-transaction",
                f"--dbname={topology.admin_url(name)}",
                tmp_path / f"{database}.dump",
            )
        restored = Cluster(server, topology, source.credentials, source.home)

        def admin(service: str) -> psycopg.Connection:
            return psycopg.connect(topology.admin_url(service), autocommit=True)

        assert digests(admin) == before
        check = restored.rose("db", "check")
        assert check.exit_code == 0, check.output
        # The sequences go on after the restored rows.
        with restored.as_role("likes", "likes_app") as likes:
            new_id = likes.execute(
                "INSERT INTO likes.likes (user_id, target_type, target_slug) "
                "VALUES (99, 'product', 'after') RETURNING id"
            ).fetchone()[0]
        assert new_id > 50
        # The FDW edges read the new server, not the old one (still up, with 50 likes).
        with restored.as_role("market", "market_app") as market:
            assert market.execute("SELECT count(*) FROM likes.likes").fetchone()[0] == 51

"""The database-level split: one database and role set per service, least privilege, drift
detection, idempotent provisioning, FDW edges that are read-only."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

import psycopg
import pytest
from typer.testing import CliRunner

from apps.registry import SERVICES
from ops.cli import app as rose_cli
from ops.db.migrate import current_heads
from ops.db.provision import provision
from tests.conftest import REPO_ROOT, admin_connect, in_process_stack
from tests.integration.db_fixtures import catalog_snapshot, differing_keys
from tests.pg import docker_engine_available
from tests.signed import internal_post

runner = CliRunner()


def test_provisioning_twice_changes_nothing(provisioned, credentials):
    def connect(service: str | None) -> psycopg.Connection:
        return admin_connect(provisioned, service)

    before = catalog_snapshot(connect)
    report = provision(provisioned.topology, credentials, say=lambda _: None)
    assert report.statements == []
    assert differing_keys(before, catalog_snapshot(connect)) == []


def test_each_app_role_connects_only_to_its_own_database(provisioned):
    with admin_connect(provisioned) as connection:
        for role_service, db_service in itertools.product(SERVICES, SERVICES):
            allowed = connection.execute(
                "SELECT has_database_privilege(%s, %s, 'CONNECT')",
                (f"{role_service}_app", f"db_{db_service}"),
            ).fetchone()[0]
            assert allowed is (role_service == db_service), (role_service, db_service)
        public_connect = connection.execute(
            """
            SELECT d.datname FROM pg_database AS d,
                   aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) AS a
            WHERE a.grantee = 0 AND a.privilege_type IN ('CONNECT', 'TEMPORARY')
              AND d.datname LIKE 'db\\_%%'
            """
        ).fetchall()
    assert public_connect == []


def test_an_app_role_really_cannot_connect_to_another_database(provisioned, credentials):
    own = provisioned.topology.app_url("cart", credentials)
    with psycopg.connect(own) as connection:
        assert connection.execute("SELECT current_user").fetchone() == ("cart_app",)
    other = own.replace("/db_cart", "/db_relations")
    with pytest.raises(psycopg.OperationalError, match="CONNECT privilege"):
        psycopg.connect(other)


def test_owner_roles_cannot_log_in_and_own_the_objects(provisioned):
    with admin_connect(provisioned) as connection:
        owners = connection.execute(
            "SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname = ANY(%s)",
            ([f"{name}_owner" for name in SERVICES],),
        ).fetchall()
    assert sorted(owners) == sorted((f"{name}_owner", False) for name in SERVICES)
    with admin_connect(provisioned, "relations") as connection:
        table_owner = connection.execute(
            "SELECT tableowner FROM pg_tables WHERE schemaname = 'relations' "
            "AND tablename = 'container_relations'"
        ).fetchone()
        version_table = connection.execute(
            "SELECT schemaname, tableowner FROM pg_tables WHERE tablename = 'alembic_version'"
        ).fetchall()
    assert table_owner == ("relations_owner",)
    assert version_table == [("relations", "relations_owner")]
    assert current_heads("relations", provisioned.topology.admin_url("relations")) == {"0003"}


def test_db_check_passes_then_names_an_injected_grant(provisioned, credentials):
    url = provisioned.admin_url
    # The CLI reads the session's credentials (passwords are compared too).
    env = {"ROSE_HOME": str(credentials.path.parent), "ROSE_ENV": "dev"}
    clean = runner.invoke(rose_cli, ["db", "check", "--database-url", url], env=env)
    assert clean.exit_code == 0, clean.output

    with admin_connect(provisioned, "relations") as connection:
        connection.execute("GRANT SELECT ON relations.container_relations TO cart_app")
    try:
        drift = runner.invoke(rose_cli, ["db", "check", "--database-url", url], env=env)
    finally:
        with admin_connect(provisioned, "relations") as connection:
            connection.execute("REVOKE SELECT ON relations.container_relations FROM cart_app")
    assert drift.exit_code == 1
    output = " ".join(drift.output.split())
    assert "extra privilege SELECT on table relations.container_relations for cart_app" in output

    healed = runner.invoke(rose_cli, ["db", "check", "--database-url", url], env=env)
    assert healed.exit_code == 0, healed.output


def test_db_check_names_missing_roles_privileges_and_stale_foreign_tables(provisioned, credentials):
    from ops.db.check import check

    topology = provisioned.topology
    with admin_connect(provisioned, "relations") as relations_db:
        relations_db.execute("REVOKE CONNECT ON DATABASE db_relations FROM relations_app")
        relations_db.execute("GRANT CONNECT ON DATABASE db_relations TO PUBLIC")
    with admin_connect(provisioned, "blog") as blog_db:
        blog_db.execute("ALTER FOREIGN TABLE relations.container_relations DROP COLUMN label")
    try:
        differences, _ = check(topology)
    finally:
        with admin_connect(provisioned, "relations") as relations_db:
            relations_db.execute("GRANT CONNECT ON DATABASE db_relations TO relations_app")
            relations_db.execute("REVOKE CONNECT ON DATABASE db_relations FROM PUBLIC")
        # Provisioning repairs the out-of-date foreign table by importing it again.
        provision(topology, credentials, say=lambda _: None)
    text = "\n".join(differences)
    assert "missing privilege CONNECT on database db_relations for relations_app" in text
    assert "extra privilege CONNECT on database db_relations for PUBLIC" in text
    assert "foreign table relations.container_relations is out of date" in text
    assert check(topology)[0] == []


async def test_blog_reads_relations_through_fdw_read_only(provisioned, credentials, clean_db):
    async with in_process_stack(clean_db, credentials, ["relations"]) as running:
        response = await internal_post(
            running.client("relations"),
            "attach-child",
            {"parent_type": "page", "parent_id": 5, "child_type": "calendar", "child_id": 3},
        )
        assert response.status_code == 200
    with psycopg.connect(provisioned.topology.app_url("blog", credentials)) as blog:
        rows = blog.execute(
            "SELECT parent_id, child_type, child_id FROM relations.container_relations"
        ).fetchall()
        assert rows == [(5, "calendar", 3)]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            blog.execute("DELETE FROM relations.container_relations")
    # Even the consumer's owner, who owns the foreign table, cannot write through it.
    with admin_connect(provisioned, "blog") as blog_admin:
        blog_admin.execute("SET ROLE blog_owner")
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="does not allow"):
            blog_admin.execute("DELETE FROM relations.container_relations")
        # And with the local guard removed, the remote side still refuses: the reader role is
        # read-only by default and has only SELECT.
        blog_admin.execute("RESET ROLE")
        blog_admin.execute(
            "ALTER FOREIGN TABLE relations.container_relations OPTIONS (ADD updatable 'true')"
        )
        try:
            blog_admin.execute("SET ROLE blog_owner")
            with pytest.raises(
                (psycopg.errors.ReadOnlySqlTransaction, psycopg.errors.InsufficientPrivilege)
            ):
                blog_admin.execute("DELETE FROM relations.container_relations")
        finally:
            blog_admin.execute("RESET ROLE")
            blog_admin.execute(
                "ALTER FOREIGN TABLE relations.container_relations OPTIONS (DROP updatable)"
            )


def test_reader_role_sees_only_the_export_view_and_is_read_only(provisioned, credentials):
    password = credentials.role_password("relations_ro_blog")
    url = provisioned.topology.app_url("relations", credentials)
    reader_url = url.replace("relations_app:", "relations_ro_blog:").replace(
        url.split(":")[2].split("@")[0], password
    )
    with psycopg.connect(reader_url) as reader:
        assert reader.execute("SELECT count(*) FROM export.container_relations").fetchone()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            reader.execute("SELECT * FROM relations.container_relations")
    with psycopg.connect(reader_url) as reader:
        assert reader.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            reader.execute("CREATE TEMP TABLE scratch (id int)")


def test_container_backend_needs_a_docker_engine():
    """The testcontainers path of the test database; it needs a Docker engine to run."""
    available, reason = docker_engine_available()
    if not available:
        pytest.skip(f"PostgreSQL 18 container backend: {reason}")
    from tests.pg import container_server

    with container_server() as server, psycopg.connect(server.admin_url) as connection:
        assert connection.execute("SHOW server_version_num").fetchone()[0].startswith("18")


def test_every_service_database_sorts_text_by_code_point_with_the_builtin_provider(provisioned):
    """Every service database uses PostgreSQL's builtin C.UTF-8 locale, whatever the server's
    initdb chose: text sorts by code point in every environment (the same order as before, on
    libc's C.UTF-8), its indexes cannot be reordered by an operating system's C library upgrade,
    and comparisons take the fast path (no strcoll)."""
    with admin_connect(provisioned) as connection:
        found = connection.execute(
            "SELECT datname, datlocprovider, datlocale, datcollate, datctype FROM pg_database "
            "WHERE datname LIKE 'db\\_%%' ORDER BY 1"
        ).fetchall()
    assert [name for name, *_ in found] == sorted(f"db_{service}" for service in SERVICES)
    assert {tuple(rest) for _, *rest in found} == {("b", "C.UTF-8", "C.UTF-8", "C.UTF-8")}
    with admin_connect(provisioned, "likes") as connection:
        ordered = connection.execute(
            "SELECT array_agg(word ORDER BY word), array_agg(upper(word) ORDER BY word) "
            "FROM (VALUES ('b'), ('B'), ('a'), ('é'), ('Z')) AS words (word)"
        ).fetchone()
    assert ordered == (["B", "Z", "a", "b", "é"], ["B", "Z", "A", "B", "É"])


def test_a_filter_of_the_reader_never_sees_the_rows_an_export_view_hides(
    provisioned, credentials, clean_db
):
    """export.retired_sumup_keys hides the SumUp keys retired longer ago than blog's days (blog
    0006: "not readable, whoever writes"), and orders reads it through FDW. A condition of the
    reader's own, shipped to blog, ran on every row before the view's (it is cheaper) and said
    the value it choked on: `decode('00', key)` fails with "unrecognized encoding: <the key>".
    So orders' app role read a key the view hides (and cart's, the holds of other buyers the
    events views hide). The export views are security barriers: the view's own condition
    first, then the reader's."""
    with admin_connect(provisioned, "blog") as blog:
        config_id = blog.execute(
            "INSERT INTO blog.page_configs (container_type, container_id, features) "
            "VALUES ('page', 987654, '{}') RETURNING id"
        ).fetchone()[0]
        blog.execute(
            "INSERT INTO blog.retired_sumup_keys (page_config_id, sumup_merchant_code, "
            "sumup_api_key, retired_at) VALUES (%s, 'MOLD', 'sup_sk_retired_long_ago', "
            "now() - interval '400 days')",
            (config_id,),
        )
    with psycopg.connect(provisioned.topology.app_url("orders", credentials)) as orders:
        rows = orders.execute(
            "SELECT page_config_id FROM blog.retired_sumup_keys WHERE decode('00', "
            "CASE WHEN sumup_merchant_code = 'MOLD' THEN sumup_api_key ELSE 'hex' END) IS NULL"
        ).fetchall()
    assert rows == []
    # Every provider's every export view (a view a migration makes again must say so too).
    not_barriers = []
    for service in SERVICES:
        with admin_connect(provisioned, service) as connection:
            not_barriers += [
                f"{connection.info.dbname} export.{row[0]}"
                for row in connection.execute(
                    "SELECT c.relname FROM pg_class AS c "
                    "JOIN pg_namespace AS n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = 'export' AND c.relkind = 'v' "
                    "AND NOT coalesce('security_barrier=true' = ANY(c.reloptions), false) "
                    "ORDER BY 1"
                ).fetchall()
            ]
    assert not_barriers == []


def test_a_filter_of_the_reader_never_sees_other_buyers_ended_holds(provisioned, credentials):
    """Review H1 (December 2026): export.pending_bookings is a UNION ALL at its top, and
    PostgreSQL flattens such a view into its branches, its security_barrier ignored. So a
    cheap condition of cart's (`decode(session_id, 'hex')`, shipped to events) still ran on
    a hold that ended two days ago, another buyer's, and said its session id. The view is now
    one query over the union: its own conditions run first."""
    with admin_connect(provisioned, "events") as events:
        calendar_id = events.execute(
            "INSERT INTO events.calendars (slug, name) VALUES ('barrier', 'Barrier') RETURNING id"
        ).fetchone()[0]
        events.execute(
            "INSERT INTO events.calendar_entries (calendar_id, name, starts_at, cost, state, "
            "session_id, hold_expires_at) VALUES (%s, 'Hidden', now() + interval '3 days', "
            "2.00, 'pending', 'someone_elses_session', now() - interval '2 days')",
            (calendar_id,),
        )
    try:
        with psycopg.connect(provisioned.topology.app_url("cart", credentials)) as cart:
            rows = cart.execute(
                "SELECT id FROM events.pending_bookings WHERE decode(session_id, 'hex') IS NULL"
            ).fetchall()
        assert rows == []
    finally:
        with admin_connect(provisioned, "events") as events:
            events.execute(
                "DELETE FROM events.calendar_entries WHERE calendar_id = %s", (calendar_id,)
            )
            events.execute("DELETE FROM events.calendars WHERE id = %s", (calendar_id,))


def test_an_export_view_that_is_no_security_barrier_is_drift_and_provisioning_restores_it(
    provisioned, credentials
):
    """Review M1 (December 2026): an export view made again by hand (CREATE OR REPLACE VIEW
    without WITH (security_barrier)) or reset lost the barrier, and neither `rose db check`
    nor provisioning noticed: its readers' cheap conditions saw its hidden rows again."""
    topology = provisioned.topology
    from ops.db.check import check

    with admin_connect(provisioned, "likes") as likes_db:
        likes_db.execute("ALTER VIEW export.likes RESET (security_barrier)")
    differences, _ = check(topology)
    provision(topology, credentials, say=lambda _: None)
    with admin_connect(provisioned, "likes") as likes_db:
        options = likes_db.execute(
            "SELECT reloptions FROM pg_class WHERE oid = 'export.likes'::regclass"
        ).fetchone()[0]
    assert "export view likes is not a security barrier" in "\n".join(differences)
    assert options == ["security_barrier=true"]
    assert check(topology)[0] == []


def test_usage_on_the_foreign_data_wrapper_is_drift_and_provisioning_revokes_it(
    provisioned, credentials
):
    """USAGE on postgres_fdw lets a role create foreign servers of its own: connections from
    the database server to any host and database it names, as any role whose password it
    knows. db/ declares it for nobody (the servers are the superuser's, their USAGE the
    consumer owner's), yet `rose db check` said nothing of it and provisioning kept it."""
    topology = provisioned.topology
    with admin_connect(provisioned, "cart") as cart_db:
        cart_db.execute("GRANT USAGE ON FOREIGN DATA WRAPPER postgres_fdw TO cart_app")
    try:
        with psycopg.connect(topology.app_url("cart", credentials)) as cart:
            cart.execute(
                "CREATE SERVER elsewhere FOREIGN DATA WRAPPER postgres_fdw "
                "OPTIONS (host '127.0.0.1', dbname 'postgres')"
            )
        from ops.db.check import check

        differences, _ = check(topology)
        provision(topology, credentials, say=lambda _: None)
        with admin_connect(provisioned, "cart") as cart_db:
            usage = cart_db.execute(
                "SELECT has_foreign_data_wrapper_privilege('cart_app', 'postgres_fdw', 'USAGE')"
            ).fetchone()[0]
    finally:
        with admin_connect(provisioned, "cart") as cart_db:
            cart_db.execute("DROP SERVER IF EXISTS elsewhere CASCADE")
            cart_db.execute("REVOKE USAGE ON FOREIGN DATA WRAPPER postgres_fdw FROM cart_app")
    text = "\n".join(differences)
    assert "unexpected foreign server elsewhere" in text
    assert "extra privilege USAGE on foreign data wrapper postgres_fdw for cart_app" in text
    assert usage is False
    assert check(topology)[0] == []


def test_a_parameter_granted_to_a_rose_role_is_drift_and_provisioning_revokes_it(
    provisioned, credentials
):
    """PostgreSQL 15+ grants the right to set a superuser-only parameter (`GRANT SET ON
    PARAMETER`). session_replication_role = replica switches off every trigger of the session's
    writes, the foreign keys' included: cart_app could write lines whose merged_into_id names
    no line. db/ declares no such grant, yet `rose db check` said nothing and provisioning kept
    it."""
    topology = provisioned.topology
    with admin_connect(provisioned) as admin:
        admin.execute("GRANT SET ON PARAMETER session_replication_role TO cart_app")
    try:
        with psycopg.connect(topology.app_url("cart", credentials)) as cart:
            cart.execute("SET session_replication_role = replica")  # the grant works
        from ops.db.check import check

        differences, _ = check(topology)
        provision(topology, credentials, say=lambda _: None)
        with (
            psycopg.connect(topology.app_url("cart", credentials)) as cart,
            pytest.raises(psycopg.errors.InsufficientPrivilege),
        ):
            cart.execute("SET session_replication_role = replica")
    finally:
        with admin_connect(provisioned) as admin:
            admin.execute("REVOKE SET ON PARAMETER session_replication_role FROM cart_app")
    text = "\n".join(differences)
    assert "extra privilege SET on parameter session_replication_role for cart_app" in text
    assert check(topology)[0] == []

    # One granted to PUBLIC is the server's (review M2): reported, and left as it is, as
    # every database's settings are; check fails until a person revokes it.
    with admin_connect(provisioned) as admin:
        admin.execute("GRANT SET ON PARAMETER log_statement_stats TO PUBLIC")
    try:
        provision(topology, credentials, say=lambda _: None)
        with admin_connect(provisioned) as admin:
            kept = admin.execute(
                "SELECT has_parameter_privilege('public', 'log_statement_stats', 'SET')"
            ).fetchone()[0]
        public = "\n".join(check(topology)[0])
    finally:
        with admin_connect(provisioned) as admin:
            admin.execute("REVOKE SET ON PARAMETER log_statement_stats FROM PUBLIC")
    assert kept is True
    assert "every role may SET parameter log_statement_stats (granted to PUBLIC)" in public
    assert check(topology)[0] == []


def test_rose_db_provision_through_a_pipe_keeps_its_lines_in_order(provisioned, credentials):
    """Probe (2026-12-06): `rose db provision 2>&1 | cat` (or `| tee notes`) printed its
    "left:" line (stderr) before the repairs it had printed first (stdout, block-buffered
    into a pipe until the process ended). Every `rose` command's output now reaches a pipe
    line by line, in the order it was written. Run as its own process, stdout and stderr
    into one pipe."""
    assert credentials.path is not None
    with admin_connect(provisioned) as admin:
        # One difference provisioning repairs (printed), one it leaves (stderr: "left:").
        admin.execute("GRANT SET ON PARAMETER session_replication_role TO cart_app")
        admin.execute("GRANT SET ON PARAMETER log_statement_stats TO PUBLIC")
    try:
        done = subprocess.run(
            [sys.executable, "-m", "ops.cli", "db", "provision"],
            cwd=REPO_ROOT,
            # As a DBA's shell runs it: Python's own buffering (no PYTHONUNBUFFERED).
            env={
                **{k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"},
                "ROSE_HOME": str(credentials.path.parent),
                "ROSE_ENV": "dev",
                "ROSE_ADMIN_URL": provisioned.admin_url,
                "COLUMNS": "200",
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=120,
        )
    finally:
        with admin_connect(provisioned) as admin:
            admin.execute("REVOKE SET ON PARAMETER session_replication_role FROM cart_app")
            admin.execute("REVOKE SET ON PARAMETER log_statement_stats FROM PUBLIC")
    assert done.returncode == 1, done.stdout  # something left for a person
    lines = done.stdout.splitlines()
    repaired = next(index for index, line in enumerate(lines) if "session_replication_role" in line)
    left = next(index for index, line in enumerate(lines) if line.startswith("left: "))
    assert "log_statement_stats" in lines[left], lines
    summary = next(index for index, line in enumerate(lines) if "left for a person" in line)
    assert repaired < left < summary, lines


def test_a_setting_of_a_service_database_is_drift_and_provisioning_resets_it(
    provisioned, credentials
):
    """`ALTER DATABASE db_cart SET session_replication_role = replica` (or `ALTER ROLE ALL IN
    DATABASE db_cart SET ...`) applies to every session there, cart_app's included: its writes
    fired no trigger, the foreign keys' included. db/ declares no database-wide setting, yet
    `rose db check` said nothing and provisioning kept it."""
    topology = provisioned.topology
    with admin_connect(provisioned) as admin:
        admin.execute("ALTER DATABASE db_cart SET session_replication_role = replica")
    try:
        with psycopg.connect(topology.app_url("cart", credentials)) as cart:
            assert cart.execute("SHOW session_replication_role").fetchone() == ("replica",)
        from ops.db.check import check

        differences, _ = check(topology)
        provision(topology, credentials, say=lambda _: None)
        with psycopg.connect(topology.app_url("cart", credentials)) as cart:
            role = cart.execute("SHOW session_replication_role").fetchone()
    finally:
        with admin_connect(provisioned) as admin:
            admin.execute("ALTER DATABASE db_cart RESET ALL")
    text = "\n".join(differences)
    assert "database db_cart has settings (session_replication_role=replica)" in text
    assert role == ("origin",)
    assert check(topology)[0] == []

"""`rose db` for a DBA: a second provision runs nothing (on the server's own log), plain Alembic
keeps every grant, `psql`/`pgcli` sessions as each role with no password on the command line,
`edges` and `check --json`, and the upgrade of a database an earlier rose provisioned."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from alembic import command as alembic_command
from alembic.script import ScriptDirectory

from apps.registry import SERVICES, service_spec
from ops.db.dba import Login, command, environment, passfile
from ops.db.lifecycle import converge_databases
from ops.db.manifest import load_edges
from ops.db.migrate import alembic_config, services_with_migrations
from tests.integration.db_fixtures import Cluster, environ_without_rose
from tests.waiting import eventually_sync

REPO = Path(__file__).resolve().parents[2]


def statements_logged(cluster: Cluster, action, options: bool = True) -> list[str]:  # type: ignore[no-untyped-def]
    """The statements the server logged while ``action`` ran, with log_statement = 'mod'
    (every DDL, GRANT, REVOKE and data change) for the connections it opened. ``options``
    False: the roles it logs in as have that setting already (a non-superuser may not set it
    in PGOPTIONS)."""
    log = cluster.server.log_file
    start = log.stat().st_size
    previous = os.environ.get("PGOPTIONS")
    if options:
        os.environ["PGOPTIONS"] = "-c log_statement=mod"
    try:
        action()
    finally:
        if previous is None:
            os.environ.pop("PGOPTIONS", None)
        else:
            os.environ["PGOPTIONS"] = previous
    # The logging collector writes the log after the statements ran: a line logged after
    # them all marks where their lines are all in.
    end = f"statements_logged: end {secrets.token_hex(8)}"
    with psycopg.connect(cluster.admin_url, autocommit=True) as admin:
        admin.execute(f"DO $$ BEGIN RAISE LOG '{end}'; END $$".encode())

    def logged_since_start() -> str:
        with log.open("rb") as handle:
            handle.seek(start)
            return handle.read().decode("utf-8", "replace")

    assert eventually_sync(lambda: end in logged_since_start(), timeout=10)
    text = logged_since_start()
    # An entry starts with the line prefix's timestamp; a multi-line statement continues it.
    entries = re.split(r"\n(?=\d{4}-\d\d-\d\d )", text)
    return [entry.split("statement: ", 1)[1] for entry in entries if "statement: " in entry]


def test_a_second_provision_runs_no_ddl_or_grant_on_the_server(db_cluster: Cluster):
    with db_cluster.admin("likes") as likes:
        likes.execute("GRANT TRUNCATE ON likes.likes TO likes_app")
    # The method sees what provisioning runs: the repair is in the server's log.
    first = statements_logged(db_cluster, lambda: db_cluster.rose("db", "provision"))
    assert any("REVOKE TRUNCATE ON TABLE likes.likes FROM likes_app" in s for s in first), first

    second = []
    result = None

    def run() -> None:
        nonlocal result
        result = db_cluster.rose("db", "provision")

    second = statements_logged(db_cluster, run)
    assert result is not None
    assert result.exit_code == 0, result.output
    assert second == []
    assert "0 created, 0 changed" in result.output
    assert "(0 statements)" in result.output


def test_plain_alembic_down_and_up_keeps_every_edge(db_cluster: Cluster):
    env = {**environ_without_rose(), "ROSE_ADMIN_URL": db_cluster.admin_url}
    alembic = str(Path(sys.executable).parent / "alembic")
    for step in (["downgrade", "base"], ["upgrade", "head"]):
        done = subprocess.run(
            [alembic, "-c", "db/alembic.ini", "-n", "likes", *step],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
    check = db_cluster.rose("db", "check")
    assert check.exit_code == 0, check.output
    with db_cluster.as_role("market", "market_app") as market:
        assert market.execute("SELECT count(*) FROM likes.likes").fetchone() == (0,)


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def watch(process: subprocess.Popen[str]) -> tuple[str, str, list[bytes]]:
    """Wait for the process, reading the command line of it and its children meanwhile."""
    command_lines: list[bytes] = []
    while process.poll() is None:
        for pid in [process.pid, *descendants(process.pid)]:
            with contextlib.suppress(OSError):  # it may have ended meanwhile
                command_lines.append(Path(f"/proc/{pid}/cmdline").read_bytes())
        time.sleep(0.05)
    out, err = process.communicate()
    return out, err, command_lines


def rose_process(
    cluster: Cluster, *args: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    env = {
        **environ_without_rose(),
        "ROSE_HOME": str(cluster.home),
        "ROSE_ADMIN_URL": cluster.admin_url,
        "ROSE_ENV": "dev",
        **(env or {}),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "ops.cli", *args],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_psql_as_app_prints_its_role_and_no_password_is_on_any_command_line(db_cluster: Cluster):
    password = db_cluster.credentials.role_password("likes_app")
    process = rose_process(
        db_cluster, "db", "psql", "likes", "--as", "app", "-c",
        "SELECT current_user FROM pg_sleep(1)",
    )  # fmt: skip
    out, err, command_lines = watch(process)
    assert process.returncode == 0, err
    assert "likes_app" in out
    assert any(b"psql" in line for line in command_lines), "psql was never seen running"
    assert not [line for line in command_lines if password.encode() in line]


def test_pgcli_as_app_lists_the_databases_without_a_password_on_any_command_line(
    db_cluster: Cluster,
):
    password = db_cluster.credentials.role_password("likes_app")
    process = rose_process(db_cluster, "db", "pgcli", "likes", "--as", "app", "--list")
    out, err, command_lines = watch(process)
    assert process.returncode == 0, err
    assert "db_likes" in out
    assert any(b"pgcli" in line for line in command_lines), "pgcli was never seen running"
    assert not [line for line in command_lines if password.encode() in line]


@pytest.mark.parametrize(
    ("as_role", "role"),
    [("owner", "likes_owner"), ("reader:market", "likes_ro_market"), ("app", "likes_app")],
)
def test_psql_logs_in_as_each_role(db_cluster: Cluster, as_role: str, role: str):
    process = rose_process(db_cluster, "db", "psql", "likes", "--as", as_role, "-At", "-c",
                           "SELECT current_user, current_database()")  # fmt: skip
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert out.strip() == f"{role}|db_likes"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["likes", "--as", "reader:cart"], "no FDW edge cart <- likes"),
        (["likes", "--as", "root"], "expected owner, app or reader:<consumer>"),
        (["nowhere"], "unknown service 'nowhere'"),
    ],
)
def test_psql_names_bad_input_in_one_line(db_cluster: Cluster, args: list[str], message: str):
    result = db_cluster.rose("db", "psql", *args, "-c", "SELECT 1")
    assert result.exit_code == 1
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("mode", [None, 0o644, 0o755])
def test_a_rose_psql_that_is_no_program_is_one_line_naming_it(
    db_cluster: Cluster, monkeypatch, tmp_path, mode: int | None
):
    """Probe newuser: ROSE_PSQL naming no program (nothing there, a file not executable, or
    one the kernel cannot run) was a FileNotFoundError or OSError traceback."""
    chosen = tmp_path / "psql"
    if mode is not None:
        chosen.write_text("not a program\n")
        chosen.chmod(mode)
    monkeypatch.setenv("ROSE_PSQL", str(chosen))
    result = db_cluster.rose("db", "psql", "likes", "-c", "SELECT 1")
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert f"ROSE_PSQL={chosen}" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


def test_client_commands_carry_no_password_and_the_passfile_is_private_and_removed():
    login = Login("127.0.0.1", 5432, "db_likes", "likes_app", "s3cret:pw\\x")
    for binary in ("psql", "pgcli"):
        argv = command(binary, login, ["-c", "SELECT 1"])
        assert not [arg for arg in argv if "s3cret" in arg]
    with passfile(login) as path:
        assert path.stat().st_mode & 0o777 == 0o600
        assert path.parent.stat().st_mode & 0o777 == 0o700
        assert path.read_text() == "127.0.0.1:5432:db_likes:likes_app:s3cret\\:pw\\\\x\n"
        env = environment(Login(*login.__dict__.values()), path)
        assert env["PGPASSFILE"] == str(path)
        assert "PGPASSWORD" not in env
    assert not path.exists()


def test_edges_lists_every_edge_and_names_one_that_does_not_answer(db_cluster: Cluster):
    listed = db_cluster.rose("db", "edges", "--json")
    assert listed.exit_code == 0, listed.output
    edges = json.loads(listed.output)
    assert [(e["consumer"], e["provider"]) for e in edges] == [
        (edge.consumer, edge.provider) for edge in load_edges()
    ]
    assert all(edge["reachable"] for edge in edges), edges
    orders = next(e for e in edges if e["consumer"] == "orders")
    assert orders["reader"] == "blog_ro_orders"
    assert orders["server_options"]["updatable"] == "false"
    assert [view["view"] for view in orders["views"]] == [
        "page_configs",
        "page_payment_configs",
        "retired_sumup_keys",
    ]
    assert "sumup_api_key character varying(255)" in orders["views"][1]["columns"]
    assert "sumup_api_key character varying(255)" in orders["views"][2]["columns"]

    with db_cluster.admin("cart") as cart:
        cart.execute(
            "ALTER USER MAPPING FOR cart_app SERVER events_server OPTIONS (SET password 'no')"
        )
    try:
        broken = json.loads(db_cluster.rose("db", "edges", "--json").output)
        events = next(e for e in broken if (e["consumer"], e["provider"]) == ("cart", "events"))
        assert not events["reachable"]
        assert "password authentication failed" in events["views"][0]["error"]
        text = db_cluster.rose("db", "edges").output
        assert "cart <- events  reader events_ro_cart  NOT reachable" in text
    finally:
        assert db_cluster.rose("db", "provision").exit_code == 0


def test_check_json_and_app_and_reader_roles_cannot_enter_postgres_or_templates(
    db_cluster: Cluster,
):
    result = db_cluster.rose("db", "check", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["ok"] is True
    for role, service in [("likes_app", "likes"), ("likes_ro_market", "likes")]:
        for database in ("postgres", "template1"):
            with pytest.raises(psycopg.OperationalError, match="CONNECT privilege"):
                db_cluster.as_role(service, role, database).close()


def test_upgrade_of_a_database_an_earlier_rose_provisioned(db_cluster: Cluster):
    """The earlier shape: foreign tables imported from the views (IMPORT FOREIGN SCHEMA), readers
    with table-wide SELECT, PUBLIC in postgres and template1. `rose up`'s steps converge it,
    keep the data and recreate only the foreign table whose columns differ."""
    with db_cluster.admin("likes") as likes:
        likes.execute(
            "INSERT INTO likes.likes (user_id, target_type, target_slug) "
            "VALUES (7, 'product', 'jam')"
        )
        likes.execute("GRANT SELECT ON export.likes TO likes_ro_market, likes_ro_blog")
        likes.execute("REVOKE SELECT (id, user_id) ON export.likes FROM likes_ro_market")
    with db_cluster.admin("blog") as blog:
        blog.execute("GRANT SELECT ON export.page_configs TO blog_ro_cart")
    with db_cluster.admin() as admin:
        admin.execute("GRANT CONNECT, TEMPORARY ON DATABASE postgres, template1 TO PUBLIC")
    imported = {}
    for consumer, provider, view in [
        ("market", "likes", "likes"),
        ("cart", "blog", "page_configs"),
    ]:
        with db_cluster.admin(consumer) as connection:
            connection.execute(f"DROP FOREIGN TABLE {provider}.{view}")
            connection.execute(f"SET ROLE {consumer}_owner")
            connection.execute(
                f"IMPORT FOREIGN SCHEMA export LIMIT TO ({view}) "
                f"FROM SERVER {provider}_server INTO {provider}"
            )
            connection.execute(f"GRANT SELECT ON {provider}.{view} TO {consumer}_app")
            imported[consumer] = connection.execute(
                f"SELECT '{provider}.{view}'::regclass::oid"
            ).fetchone()[0]
    assert db_cluster.rose("db", "check").exit_code == 1

    topology, credentials = db_cluster.topology, db_cluster.credentials
    converge_databases(topology, credentials, say=lambda _: None)

    check = db_cluster.rose("db", "check")
    assert check.exit_code == 0, check.output
    with db_cluster.as_role("market", "market_app") as market:
        assert market.execute("SELECT user_id, target_slug FROM likes.likes").fetchall() == [
            (7, "jam")
        ]
        # Its columns were the declared ones: kept as it was.
        assert (
            market.execute("SELECT 'likes.likes'::regclass::oid").fetchone()[0]
            == imported["market"]
        )
    with db_cluster.as_role("cart", "cart_app") as cart:
        # It had the view's two timestamps, which cart's edge does not declare: created anew.
        assert (
            cart.execute("SELECT 'blog.page_configs'::regclass::oid").fetchone()[0]
            != imported["cart"]
        )
        assert cart.execute("SELECT page_slug FROM blog.page_configs").fetchall() == [
            ("farm-shop",)
        ]
    with db_cluster.admin("likes") as likes:
        likes.execute("DELETE FROM likes.likes")


# -- the migrations' version table is the owner's (audit O3) ---------------------------------------
def test_no_app_role_may_read_or_write_its_migrations_version(db_cluster: Cluster):
    """The services never read alembic_version; a runtime role that could write it could make
    `rose db migrate` skip or re-run migrations."""
    for service in services_with_migrations():
        app = service_spec(service).app_role
        for sql in (
            f"SELECT version_num FROM {service}.alembic_version",
            f"UPDATE {service}.alembic_version SET version_num = 'x' RETURNING 1",
            f"DELETE FROM {service}.alembic_version RETURNING 1",
        ):
            with (
                db_cluster.as_role(service, app) as connection,
                pytest.raises(psycopg.errors.InsufficientPrivilege),
            ):
                connection.execute(sql).fetchall()


def test_plain_alembic_creating_the_version_table_leaves_the_app_role_out(db_cluster: Cluster):
    """The version table is created by the first migration, as the owner, whose default
    privileges give the app role its tables: the migration environment takes them back."""
    env = {**environ_without_rose(), "ROSE_ADMIN_URL": db_cluster.admin_url}
    alembic = str(Path(sys.executable).parent / "alembic")

    def run(*step: str) -> None:
        done = subprocess.run(
            [alembic, "-c", "db/alembic.ini", "-n", "likes", *step],
            cwd=REPO, env=env, capture_output=True, text=True,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr

    run("downgrade", "base")
    with db_cluster.admin("likes") as likes:
        likes.execute("DROP TABLE likes.alembic_version")  # a database never migrated
    run("upgrade", "head")
    with (
        db_cluster.as_role("likes", "likes_app") as app,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        app.execute("SELECT version_num FROM likes.alembic_version").fetchall()
    check = db_cluster.rose("db", "check")
    assert check.exit_code == 0, check.output


def _set_version(cluster: Cluster, version: str) -> None:
    with cluster.admin("likes") as likes:
        likes.execute("UPDATE likes.alembic_version SET version_num = %s", (version,))


def test_check_and_migrate_name_a_version_no_migration_knows_in_one_line(db_cluster: Cluster):
    head = ScriptDirectory.from_config(alembic_config("likes")).get_current_head()
    _set_version(db_cluster, "x")
    try:
        check = db_cluster.rose("db", "check")
        assert check.exit_code == 1, check.output
        assert (
            "db_likes: likes.alembic_version is at 'x', which db/migrations/likes does not know"
            in (check.output)
        )
        migrate = db_cluster.rose("db", "migrate", "--service", "likes")
        assert migrate.exit_code == 1, migrate.output
        assert migrate.output.strip().splitlines() == [
            "error: db_likes: likes.alembic_version is at 'x', which db/migrations/likes does not "
            "know (a newer release's, or written by hand): nothing migrated"
        ]
    finally:
        _set_version(db_cluster, head)
    assert db_cluster.rose("db", "check").exit_code == 0


def test_check_names_a_database_behind_its_head(db_cluster: Cluster):
    """Audit s20b L3: the schema at head, the version row behind. `rose db migrate` would run the
    head's migration again (and fail): check says which database is behind and what to run."""
    script = ScriptDirectory.from_config(alembic_config("likes"))
    head = script.get_revision(script.get_current_head())
    assert isinstance(head.down_revision, str)
    _set_version(db_cluster, head.down_revision)
    try:
        check = db_cluster.rose("db", "check")
        assert check.exit_code == 1, check.output
        assert (
            f"db_likes at {head.down_revision}, head {head.revision}: run rose db migrate"
            in check.output.splitlines()
        ), check.output
        as_json = json.loads(db_cluster.rose("db", "check", "--json").output)
        assert as_json["ok"] is False
        assert (
            f"db_likes at {head.down_revision}, head {head.revision}: run rose db migrate"
            in as_json["differences"]
        )
    finally:
        _set_version(db_cluster, head.revision)
    assert db_cluster.rose("db", "check").exit_code == 0


def test_a_migration_that_fails_is_one_line_naming_it(db_cluster: Cluster):
    script = ScriptDirectory.from_config(alembic_config("likes"))
    head = script.get_revision(script.get_current_head())
    # likes 0002 creates a table (the head, 0003, only sets view options: it runs again fine).
    failing = script.get_revision("0002")
    assert isinstance(failing.down_revision, str)
    _set_version(db_cluster, failing.down_revision)  # 0002's table exists: it cannot run again
    try:
        migrate = db_cluster.rose("db", "migrate", "--service", "likes")
        assert migrate.exit_code == 1, migrate.output
        lines = migrate.output.strip().splitlines()
        assert len(lines) == 1, migrate.output
        assert lines[0].startswith(f"error: db_likes: migration {failing.revision} failed: "), lines
        assert "already exists" in lines[0]
    finally:
        _set_version(db_cluster, head.revision)
    assert db_cluster.rose("db", "check").exit_code == 0


def _orders_one_migration_behind(cluster: Cluster) -> tuple[str, str]:
    """orders one revision behind its head, by the head's own downgrade (so that its upgrade
    runs again whatever it does; a migration taking a lock on orders.orders since orders
    0019): (behind, head)."""
    script = ScriptDirectory.from_config(alembic_config("orders"))
    head = script.get_revision(script.get_current_head())
    assert isinstance(head.down_revision, str)
    alembic_command.downgrade(
        alembic_config("orders", cluster.topology.admin_url("orders")), head.down_revision
    )
    return head.down_revision, head.revision


def _migrate_orders_beside(
    cluster: Cluster, holder: psycopg.Connection, **settings: str
) -> subprocess.Popen[str]:
    """`rose db migrate --service orders` while ``holder`` keeps a transaction open that holds
    orders.orders in SHARE mode (a report's or a stuck session's): the migration's UPDATE waits
    for it, and every writer of orders queues behind that wait."""
    holder.execute("SET application_name = 'nightly-report'")
    holder.execute("BEGIN")
    holder.execute("LOCK TABLE orders.orders IN SHARE MODE")
    return rose_process(
        cluster, "db", "migrate", "--service", "orders",
        env={"PYTHONUNBUFFERED": "1", **settings},
    )  # fmt: skip


def test_a_migration_blocked_by_an_open_transaction_gives_up_naming_it(db_cluster: Cluster):
    """Probe on-call: a migration waited without limit, and said nothing, for a lock an open
    transaction held, while the writers queued behind it. It waits a bounded time per try, tries
    a bounded number of times, says each time who holds it, and gives up naming them."""
    behind, head = _orders_one_migration_behind(db_cluster)
    holder = db_cluster.admin("orders")
    holder_pid = holder.info.backend_pid
    try:
        process = _migrate_orders_beside(
            db_cluster, holder, ROSE_MIGRATION_LOCK_TIMEOUT="0.3", ROSE_MIGRATION_LOCK_TRIES="2"
        )
        try:
            out, err = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
            pytest.fail(f"the migration still waits on the lock after 60 s: {out}{err}")
        assert process.returncode == 1, out + err
        waiting = [line for line in out.splitlines() if "trying again" in line]
        assert len(waiting) == 1, out
        assert waiting[0].startswith(f"db_orders: migration {head} waited 0.3 s for a lock"), out
        assert f"pid {holder_pid} (nightly-report, idle in transaction" in waiting[0], out
        error = err.strip().splitlines()
        assert len(error) == 1, err
        assert error[0].startswith(f"error: db_orders: migration {head} failed: "), err
        assert "lock timeout" in error[0], err
        assert "2 tries of 0.3 s" in error[0], err
        assert f"pid {holder_pid} (nightly-report" in error[0], err
        with db_cluster.admin("orders") as orders:
            assert orders.execute("SELECT version_num FROM orders.alembic_version").fetchall() == [
                (behind,)
            ]
    finally:
        holder.close()
    migrate = db_cluster.rose("db", "migrate", "--service", "orders")
    assert migrate.exit_code == 0, migrate.output
    assert f"migrated: orders {behind} -> {head}" in migrate.output, migrate.output


def test_a_migration_goes_on_once_the_transaction_in_its_way_ends(db_cluster: Cluster):
    behind, head = _orders_one_migration_behind(db_cluster)
    holder = db_cluster.admin("orders")
    try:
        process = _migrate_orders_beside(
            db_cluster, holder, ROSE_MIGRATION_LOCK_TIMEOUT="0.3", ROSE_MIGRATION_LOCK_TRIES="50"
        )
        assert process.stdout is not None
        lines = []
        try:
            for line in process.stdout:  # the first refusal, then the holder ends its transaction
                lines.append(line)
                if "trying again" in line:
                    holder.execute("COMMIT")
                    break
            out, err = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            pytest.fail(f"the migration still waits: {''.join(lines)}")
        assert process.returncode == 0, "".join(lines) + out + err
        assert f"migrated: orders {behind} -> {head}" in out, out
    finally:
        holder.close()
    with db_cluster.admin("orders") as orders:
        assert orders.execute("SELECT version_num FROM orders.alembic_version").fetchall() == [
            (head,)
        ]


def test_an_index_built_concurrently_waits_out_a_long_transaction_and_says_so(
    db_cluster: Cluster,
):
    """A build CONCURRENTLY waits for the writers' transactions older than it, holding nothing
    anyone queues behind: no lock timeout cuts it short (beside a checkout that holds its
    transaction while SumUp answers, it would fail every try), and a long wait is said."""
    index = "ix_calendar_entries_network_holds"
    script = ScriptDirectory.from_config(alembic_config("events"))
    head = script.get_revision(script.get_current_head())
    assert head.revision == "0017"  # events 0017 builds the index again when it is missing
    with db_cluster.admin("events") as events:
        events.execute(f"DROP INDEX events.{index}")
        events.execute("UPDATE events.alembic_version SET version_num = '0016'")
    holder = db_cluster.admin("events")
    try:
        holder.execute("SET application_name = 'a booking'")
        holder.execute("BEGIN")
        holder.execute("UPDATE events.calendar_entries SET state = state WHERE false")
        process = rose_process(
            db_cluster, "db", "migrate", "--service", "events",
            env={
                "PYTHONUNBUFFERED": "1",
                "ROSE_MIGRATION_LOCK_TIMEOUT": "0.3",
                "ROSE_MIGRATION_LOCK_TRIES": "2",
            },
        )  # fmt: skip
        assert process.stdout is not None
        lines = []
        try:
            for line in process.stdout:
                lines.append(line)
                if line.startswith("waiting: CREATE INDEX CONCURRENTLY"):
                    assert f"held by pid {holder.info.backend_pid} (a booking" in line, line
                    holder.execute("COMMIT")
                    break
            out, err = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            pytest.fail(f"the build still waits: {''.join(lines)}")
        assert process.returncode == 0, "".join(lines) + out + err
        assert "migrated: events 0016 -> 0017" in out, "".join(lines) + out
    finally:
        holder.close()
    with db_cluster.admin("events") as events:
        valid = events.execute(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)",
            (f"events.{index}",),
        ).fetchone()
    assert valid == (True,)


def test_migrate_provisions_first_on_a_server_missing_a_service_database(db_cluster: Cluster):
    """Audit s20b L5: the README's "provision, migrate, provision again" for `rose db migrate`
    too, where it matters: a new server, or a database dropped as restore's message advises."""
    with db_cluster.admin() as admin:
        admin.execute("DROP DATABASE db_likes WITH (FORCE)")
    migrate = db_cluster.rose("db", "migrate")
    assert migrate.exit_code == 0, migrate.output
    assert "provisioning likes first: db_likes is missing" in migrate.output, migrate.output
    with db_cluster.admin("likes") as likes:
        assert likes.execute("SELECT count(*) FROM likes.likes").fetchone() == (0,)
    check = db_cluster.rose("db", "check")
    assert check.exit_code == 0, check.output
    with db_cluster.as_role("market", "market_app") as market:
        assert market.execute("SELECT count(*) FROM likes.likes").fetchone() == (0,)


def test_migrate_provisions_only_the_services_that_are_missing(db_cluster: Cluster):
    """The closing note's defect 2: a missing db_likes made `rose db migrate` provision every
    service before migrating: a hand grant in db_market was revoked in that first pass, among
    likes' repairs. Only likes is provisioned first now; every other database is converged
    after the migrations, as a plain `rose db migrate` converges it."""
    with db_cluster.admin("market") as market:
        market.execute("GRANT TRUNCATE ON market.products TO market_app")
    with db_cluster.admin() as admin:
        admin.execute("DROP DATABASE db_likes WITH (FORCE)")
    migrate = db_cluster.rose("db", "migrate")
    assert migrate.exit_code == 0, migrate.output
    lines = migrate.output.splitlines()
    assert lines[0] == "provisioning likes first: db_likes is missing", migrate.output
    migrated = next(i for i, line in enumerate(lines) if line.startswith("migrated: "))
    first_pass = lines[1:migrated]
    assert "cluster: missing database db_likes" in first_pass, migrate.output
    # Nothing of another service's before the migrations: only likes' database and roles.
    others = [
        line
        for line in first_pass
        if not re.match(r"(db_likes|cluster: .*db_likes)\b", line)
        and not line.startswith("provisioned: ")  # the pass's summary
    ]
    assert others == [], migrate.output
    repair = "db_market: extra privilege TRUNCATE on table market.products for market_app"
    assert repair in lines[migrated + 1 :], migrate.output
    with db_cluster.as_role("market", "market_app") as market:
        assert market.execute("SELECT count(*) FROM likes.likes").fetchone() == (0,)
    check = db_cluster.rose("db", "check")
    assert check.exit_code == 0, check.output


# -- a non-superuser admin DSN (audit s20b L4) ----------------------------------------------------
@pytest.fixture
def not_a_superuser(db_cluster: Cluster) -> Iterator[str]:
    """A DSN for a role that may create roles and databases and connect everywhere, but is no
    superuser (pg_authid, SET ROLE to the service roles and their tables are closed to it)."""
    password = secrets.token_hex(12)
    databases = ["postgres", *(service_spec(name).database for name in SERVICES)]
    with db_cluster.admin() as admin:
        admin.execute(f"CREATE ROLE helper_admin LOGIN CREATEROLE CREATEDB PASSWORD '{password}'")
        # Whatever it changes is in the server's log (it may not ask for that in PGOPTIONS).
        admin.execute("ALTER ROLE helper_admin SET log_statement = 'mod'")
        for database in databases:
            admin.execute(f'GRANT CONNECT ON DATABASE "{database}" TO helper_admin')
    try:
        yield f"postgresql://helper_admin:{password}@127.0.0.1:{db_cluster.server.port}/postgres"
    finally:
        with db_cluster.admin() as admin:
            for database in databases:
                admin.execute(f'REVOKE CONNECT ON DATABASE "{database}" FROM helper_admin')
            admin.execute("DROP ROLE helper_admin")


@pytest.mark.parametrize(
    "command",
    [
        ["check"],
        ["check", "--json"],
        ["provision"],
        ["provision", "--dry-run"],
        ["migrate"],
        ["edges"],
        ["backup", "{tmp}/backup"],
        ["restore", "{tmp}/backup"],
    ],
    ids=" ".join,
)
def test_a_db_command_given_no_superuser_says_so_in_one_line(
    db_cluster: Cluster, not_a_superuser: str, command: list[str], tmp_path: Path
):
    arguments = [part.replace("{tmp}", str(tmp_path)) for part in command]
    done = db_cluster.rose("db", *arguments, "--database-url", not_a_superuser)
    assert done.exit_code == 1, done.output
    assert done.exception is None or isinstance(done.exception, SystemExit), done.exception
    assert done.output.strip().splitlines() == [
        f"error: rose db {command[0]} needs a superuser connection: helper_admin is not one"
    ]
    assert not (tmp_path / "backup").exists()


@pytest.mark.parametrize("command", [["db", "check"], ["split", "status"]], ids=" ".join)
def test_a_services_own_dsn_given_as_the_admin_one_is_refused_as_no_superuser(
    db_cluster: Cluster, command: list[str]
):
    """Probe docs: the README promises that a role other than a superuser is refused up front
    in one line ("rose db check needs a superuser connection: x is not one"). The likeliest
    such DSN, a service's own (DATABASE_URL_LIKES: likes_app), got "error: connection failed:
    ... permission denied for database "postgres" DETAIL: User does not have CONNECT
    privilege", which reads as a grant to add: rose revokes CONNECT from everyone on
    `postgres`, where the tools connect first, and a superuser needs none."""
    dsn = db_cluster.topology.app_url("likes", db_cluster.credentials)
    done = db_cluster.rose(*command, "--database-url", dsn)
    assert done.exit_code == 1, done.output
    assert done.exception is None or isinstance(done.exception, SystemExit), done.exception
    name = " ".join(command)
    assert done.output.strip().splitlines() == [
        f"error: rose {name} needs a superuser connection: likes_app is not one"
    ]


SPLIT_COMMANDS = [
    ["seed-legacy"],
    ["plan"],
    ["run"],
    ["verify"],
    ["finalize", "--backup-dir", "{tmp}/backups"],
    ["status"],
    ["abort"],
    ["restore", "{tmp}/db_cart.legacy.dump"],
    ["sync", "--once"],
    ["cutover"],
]


@pytest.mark.parametrize(
    "command", [["split", *words] for words in SPLIT_COMMANDS] + [["up"]], ids=" ".join
)
def test_split_and_up_given_no_superuser_say_so_in_one_line_and_change_nothing(
    db_cluster: Cluster, not_a_superuser: str, command: list[str], tmp_path: Path
):
    """The closing note's defect 1: the superuser check covered `rose db` only. `rose split`
    given a lesser admin DSN stopped on the first permission error half way (a psycopg message
    of its own), and `rose up --database-url` made its home (credentials, log) and then raised
    a traceback from provisioning's read of pg_authid."""
    arguments = [part.replace("{tmp}", str(tmp_path)) for part in command]
    if command == ["up"]:
        arguments += ["--only", "relations", "--port-offset", "22000", "--no-demo"]
    home = tmp_path / "home"
    done: list = []

    def run() -> None:
        done.append(
            db_cluster.rose(
                *arguments, "--database-url", not_a_superuser, env={"ROSE_HOME": str(home)}
            )
        )

    changed = statements_logged(db_cluster, run, options=False)
    result = done[0]
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    name = " ".join(command[:2]) if command[0] == "split" else "up"
    assert result.output.strip().splitlines() == [
        f"error: rose {name} needs a superuser connection: helper_admin is not one"
    ]
    assert changed == []
    assert not home.exists() or not any(home.iterdir()), list(home.iterdir())
    assert not (tmp_path / "backups").exists()


# -- the passfile goes whatever ends the session (audit O10) ------------------------------------
@pytest.mark.parametrize("ending", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_psql_ended_by_a_signal_removes_its_passfile(db_cluster: Cluster, ending: signal.Signals):
    process = rose_process(db_cluster, "db", "psql", "likes", "-c", "SELECT pg_sleep(20)")
    passfile_path = None
    children: list[int] = []
    try:
        deadline = time.monotonic() + 30
        while passfile_path is None and time.monotonic() < deadline:
            children = descendants(process.pid)
            for pid in children:
                with contextlib.suppress(OSError):
                    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                    for entry in environ:
                        if entry.startswith(b"PGPASSFILE="):
                            passfile_path = Path(entry.split(b"=", 1)[1].decode())
            time.sleep(0.05)
        assert passfile_path is not None, "psql was never seen running"
        assert passfile_path.exists()
        process.send_signal(ending)
        process.communicate(timeout=30)
        assert process.returncode != 0
        assert not passfile_path.exists()
        assert not passfile_path.parent.exists()
    finally:
        for pid in [process.pid, *children]:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        if passfile_path is not None and passfile_path.parent.exists():
            for leftover in passfile_path.parent.iterdir():
                leftover.unlink()
            passfile_path.parent.rmdir()


def test_migrate_provisions_first_a_database_whose_provisioning_was_cut_off(db_cluster: Cluster):
    """Probe (December 2026): `rose db migrate` killed on a new server while provisioning left
    db_likes made (CREATE DATABASE runs on its own) without its schemas; the next `rose db
    migrate` saw the database and the roles, provisioned nothing first and failed on every run
    with `migration 0001 failed: schema "likes" does not exist`. The service's schemas count as
    what its migrations need, like its database and roles."""
    with db_cluster.admin() as admin:
        admin.execute("DROP DATABASE db_likes WITH (FORCE)")
        admin.execute("CREATE DATABASE db_likes OWNER likes_owner TEMPLATE template0")
    migrate = db_cluster.rose("db", "migrate")
    assert migrate.exit_code == 0, migrate.output
    assert migrate.output.splitlines()[0] == (
        "provisioning likes first: schema likes of db_likes, schema export of db_likes are missing"
    ), migrate.output
    check = db_cluster.rose("db", "check")
    assert check.exit_code == 0, check.output
    with db_cluster.as_role("market", "market_app") as market:
        assert market.execute("SELECT count(*) FROM likes.likes").fetchone() == (0,)


def test_prune_names_where_a_role_it_cannot_drop_owns_objects(db_cluster: Cluster):
    """Probe (December 2026): db/schemas/prune_roles.sql says a role that still owns objects is
    not dropped and DROP ROLE names them; `rose db provision --prune` printed only the error's
    first line, "cannot be dropped because some objects depend on it", naming nothing. The
    server's detail (which database holds them) comes with it now."""
    with db_cluster.admin() as admin:
        admin.execute("CREATE ROLE likes_reporting LOGIN PASSWORD 'reporting-pw'")
    with db_cluster.admin("likes") as likes:
        likes.execute("CREATE TABLE public.report (n int)")
        likes.execute("ALTER TABLE public.report OWNER TO likes_reporting")
    try:
        pruned = db_cluster.rose("db", "provision", "--prune")
        assert pruned.exit_code == 1, pruned.output
        assert isinstance(pruned.exception, SystemExit), pruned.exception
        line = " ".join(pruned.output.split())
        assert "role likes_reporting in rose's namespace" in line, pruned.output
        assert "some objects depend on it (1 object in database db_likes)" in line, pruned.output
    finally:
        with db_cluster.admin("likes") as likes:
            likes.execute("DROP TABLE public.report")
        with db_cluster.admin() as admin:
            admin.execute("DROP ROLE likes_reporting")
    assert db_cluster.rose("db", "check").exit_code == 0


def test_a_convergence_waits_while_another_converges_the_server(db_cluster: Cluster):
    """Probe (December 2026): two `rose db migrate` at once on a new server (two operators, a
    deploy's migrate job beside a by-hand provision) raced each other's statements: one failed
    half way with `cluster: missing role relations_ro_blog: duplicate key value violates unique
    constraint "pg_authid_rolname_index"`. A convergence holds the server (an advisory lock of
    its maintenance database's); another waits, says so, then finds the work done."""
    with db_cluster.admin() as admin:
        admin.execute("DROP DATABASE db_likes WITH (FORCE)")
    # What a running `rose db migrate` holds.
    holder = db_cluster.admin()
    holder.execute("SELECT pg_advisory_lock(hashtextextended('rose:converge', 0))")
    process = rose_process(db_cluster, "db", "migrate")
    try:
        assert process.stdout is not None
        said = []
        for line in process.stdout:
            said.append(line)
            if line.startswith("waiting: "):
                break
        assert said[-1].startswith(
            "waiting: another rose provisioning or migration is converging 127.0.0.1:"
        ), said
        time.sleep(1)  # it would have made db_likes by now, had it not waited
        with db_cluster.admin() as admin:
            assert admin.execute(
                "SELECT count(*) FROM pg_database WHERE datname = 'db_likes'"
            ).fetchone() == (0,)
        assert process.poll() is None
    finally:
        holder.close()
        out, err = process.communicate(timeout=120)
    assert process.returncode == 0, out + err
    assert "migrated: " in out
    assert db_cluster.rose("db", "check").exit_code == 0


def test_check_without_the_homes_passwords_says_where_it_looked(
    db_cluster: Cluster, tmp_path: Path
):
    """Probe (December 2026): `rose db check` from a home without credentials.json (a DBA's
    own checkout, in development) noted "role passwords not compared: missing required setting
    ROSE_DB_PASSWORD_BLOG_APP", as if that variable were required; in development the
    passwords are in the home's credentials.json, which the note did not name."""
    checked = db_cluster.rose("db", "check", env={"ROSE_HOME": str(tmp_path)})
    assert checked.exit_code == 0, checked.output
    line = " ".join(checked.output.split())
    assert (
        "role passwords not compared: no password for blog_app in ROSE_DB_PASSWORD_BLOG_APP "
        f"or {tmp_path / 'credentials.json'}"
    ) in line, checked.output
    assert not (tmp_path / "credentials.json").exists()


def test_one_server_under_two_addresses_is_held_once_not_waited_for_by_itself(
    db_cluster: Cluster,
):
    """Review-2 (LOW): servers are told apart by their URLs as written, so one server that two
    services' URLs spell differently (localhost and 127.0.0.1) was locked twice by one
    convergence: the second lock waited for the first, held by the same thread, for ever.
    A lock its own thread holds under another address is taken as held."""
    from ops.db.exclusive import _server_lock

    url = db_cluster.admin_url
    other = url.replace("127.0.0.1", "localhost")
    assert other != url
    said: list[str] = []
    finished = threading.Event()

    def converge() -> None:
        with _server_lock(url, said.append), _server_lock(other, said.append):
            finished.set()

    worker = threading.Thread(target=converge, daemon=True)
    worker.start()
    assert finished.wait(20), said
    worker.join(10)
    assert said == []

"""Audit O4: each SQL file of db/schemas and db/fdw says in its header how to run it by hand
with psql. Run exactly as written (the embedded PostgreSQL's psql, the superuser's password in
PGPASSWORD) against a provisioned server, it must change nothing: every file converges the server
to exactly the values it is given, so an example with partial values revokes, resets or drops
what it leaves out."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from ops.db.binaries import postgres_bin_dir
from tests.integration.db_fixtures import (
    Cluster,
    catalog_snapshot,
    differing_keys,
    environ_without_rose,
    start_cluster,
)

REPO = Path(__file__).resolve().parents[2]
SQL_FILES = sorted(
    str(path.relative_to(REPO))
    for folder in ("db/schemas", "db/fdw")
    for path in (REPO / folder).glob("*.sql")
)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    yield from start_cluster()


def header_commands(path: str) -> list[str]:
    """The shell commands of the file's header comment (``--   psql ...`` or ``--   .venv/bin/rose
    ...``, with their backslash continuations)."""
    commands: list[str] = []
    continuing = False
    for line in (REPO / path).read_text().splitlines():
        if not line.startswith("--"):
            break
        text = line[2:].strip()
        if continuing:
            commands[-1] += " " + text.removesuffix("\\").strip()
        elif text.startswith(("psql ", ".venv/bin/rose ")):
            commands.append(text.removesuffix("\\").strip())
        else:
            continue
        # A line ending in a backslash, or inside a quoted value, continues on the next.
        continuing = text.endswith("\\") or commands[-1].count("'") % 2 == 1
    return commands


def environment(cluster: Cluster) -> dict[str, str]:
    url = make_url(cluster.admin_url)
    return {
        **environ_without_rose(),
        "PATH": f"{postgres_bin_dir()}{os.pathsep}{os.environ.get('PATH', '')}",
        "PGHOST": url.host or "127.0.0.1",
        "PGPORT": str(url.port),
        "PGUSER": url.username or "postgres",
        "PGDATABASE": "postgres",
        "PGPASSWORD": str(url.password),
        "ROSE_HOME": str(cluster.home),
        "ROSE_ADMIN_URL": cluster.admin_url,
        "ROSE_ENV": "dev",
    }


def shell(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = command.replace(".venv/bin/rose ", f"{Path(sys.executable).parent / 'rose'} ", 1)
    return subprocess.run(
        ["bash", "-c", command], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


def test_every_sql_file_has_a_header_command():
    for path in SQL_FILES:
        assert header_commands(path), f"{path}: no command in its header"


@pytest.mark.parametrize("path", SQL_FILES)
def test_the_header_command_run_as_written_changes_nothing(cluster: Cluster, path: str):
    env = environment(cluster)
    before = catalog_snapshot(cluster.admin)
    try:
        for command in header_commands(path):
            done = shell(command, env)
            assert done.returncode == 0, done.stderr
            assert "ERROR" not in done.stderr, done.stderr
            if command.startswith(".venv/bin/rose "):
                # It prints the psql commands themselves, complete: run what it printed.
                printed = [line for line in done.stdout.splitlines() if line.strip()]
                assert printed, done.stdout
                assert all(line.startswith("psql ") for line in printed), done.stdout
                assert str(make_url(cluster.admin_url).password) not in done.stdout
                for line in printed:
                    ran = shell(line, env)
                    assert ran.returncode == 0, ran.stderr
                    assert "ERROR" not in ran.stderr, ran.stderr
        assert differing_keys(before, catalog_snapshot(cluster.admin)) == []
    finally:
        cluster.rose("db", "provision")
    check = cluster.rose("db", "check")
    assert check.exit_code == 0, check.output


def test_print_psql_names_a_file_it_does_not_know_in_one_line(cluster: Cluster):
    result = cluster.rose("db", "print-psql", "db/schemas/nope.sql")
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert "schemas/nope.sql: not one of db/'s SQL files" in result.output


def test_the_printed_commands_run_from_any_directory(cluster: Cluster, tmp_path: Path):
    """Probe docs: `rose db print-psql` printed `-f db/schemas/roles.sql`, a path relative to a
    checkout's root. The installed package is the product (the image copies no source): there,
    and from any other directory, psql answered "db/schemas/roles.sql: No such file or
    directory". Each command names the file the installed rose reads."""
    env = environment(cluster)
    before = catalog_snapshot(cluster.admin)
    result = cluster.rose("db", "print-psql")
    assert result.exit_code == 0, result.output
    printed = [line for line in result.output.splitlines() if line.startswith("psql ")]
    assert len(printed) > 3, result.output
    for line in printed:
        ran = subprocess.run(
            ["bash", "-c", line], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
        )
        assert ran.returncode == 0, ran.stderr
        assert "ERROR" not in ran.stderr, ran.stderr
    assert differing_keys(before, catalog_snapshot(cluster.admin)) == []


# db/legacy's and db/split's files a DBA may run by hand, in the order their headers say, each
# with the psql command its header gives. (The move files and checksum views are run by `rose
# split` only; drop_sources.sql's header is a template it refuses: its own test below.)
LEGACY_AND_SPLIT_HEADERS = [
    "db/legacy/blog.sql",
    "db/legacy/market.sql",
    "db/legacy/cart.sql",
    "db/legacy/seed_blog.sql",
    "db/legacy/seed_market.sql",
    "db/legacy/seed_cart.sql",
    "db/split/ledger.sql",
    "db/split/dropped.sql",
    "db/split/freeze.sql",
    "db/split/unfreeze.sql",
    "db/split/capture.sql",
    "db/split/uncapture.sql",
]


def test_the_legacy_and_split_headers_run_as_written(cluster: Cluster):
    """Probe split: the psql commands in the headers of db/legacy and db/split were run by no
    test. Pasted as written, the seed files' were a bash syntax error ("psql ... -f
    db/legacy/seed_blog.sql     (after db/legacy/blog.sql)"). Each runs, and does what its
    header says: a practice monolith plan reads, a ledger and finalize's records owned by the
    database's owner, a freeze that refuses writes, a capture that records a change."""
    env = environment(cluster)
    try:
        for path in LEGACY_AND_SPLIT_HEADERS:
            commands = header_commands(path)
            assert commands, f"{path}: no command in its header"
            for command in commands:
                done = shell(command, env)
                assert done.returncode == 0, (path, done.stderr)
                assert "ERROR" not in done.stderr, (path, done.stderr)
            if path == "db/legacy/seed_cart.sql":
                planned = cluster.rose("split", "plan")
                assert planned.exit_code == 0, planned.output
                assert "orders: db_cart legacy.orders" in planned.output
        with cluster.admin("likes") as likes:
            assert likes.execute(
                "SELECT c.relowner::regrole::text, obj_description(c.oid) FROM pg_class AS c "
                "WHERE c.oid = 'split.ledger'::regclass"
            ).fetchone() == ("likes_owner", "by-hand")
        with cluster.admin("market") as market:
            owner = (
                "SELECT relowner::regrole::text FROM pg_class WHERE oid = 'split.dropped'::regclass"
            )
            assert market.execute(owner).fetchone() == ("market_owner",)
            market.execute(
                "UPDATE legacy.product_likes SET deleted_at = now() AT TIME ZONE 'UTC' "
                "WHERE id = (SELECT min(id) FROM legacy.product_likes)"
            )
            assert market.execute("SELECT count(*) FROM split_capture.likes").fetchone() == (1,)
        with cluster.admin("cart") as cart, pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            cart.execute("DELETE FROM legacy.orders")
    finally:
        for service in ("cart", "market", "blog", "likes"):
            with cluster.admin(service) as connection:
                for schema in ("legacy", "split", "split_capture"):
                    connection.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        cluster.rose("db", "provision")
    check = cluster.rose("db", "check")
    assert check.exit_code == 0, check.output


def test_the_drop_sources_header_refuses_as_written_and_drops_nothing(cluster: Cluster):
    """Probe split: drop_sources.sql's header command is a template (its manifest's "..." are
    finalize's values). Pasted as written, psql dropped the tables in its transaction, failed
    on the manifest, went on through errors and rolled back at the end, exit 0: safe only by
    luck, and saying nothing useful. It refuses before any drop, saying why and what to run,
    psql stops (exit 3), and every legacy table and row is there."""
    env = environment(cluster)
    try:
        # The practice monolith's db_cart, and finalize's records there (dropped.sql's header
        # names db_market).
        commands = [
            *header_commands("db/legacy/cart.sql"),
            *header_commands("db/legacy/seed_cart.sql"),
        ]
        commands.append("psql -d db_cart -v owner=cart_owner -f db/split/dropped.sql")
        for command in commands:
            done = shell(command, env)
            assert done.returncode == 0, (command, done.stderr)
            assert "ERROR" not in done.stderr, (command, done.stderr)
        with cluster.admin("cart") as cart:
            before = cart.execute(
                "SELECT (SELECT count(*) FROM legacy.orders), "
                "(SELECT count(*) FROM legacy.order_items)"
            ).fetchone()
        (command,) = header_commands("db/split/drop_sources.sql")
        refused = shell(command, env)
        assert refused.returncode == 3, (refused.returncode, refused.stderr)
        said = " ".join(refused.stderr.split())
        assert "the manifest is not JSON, so nothing is dropped" in said, said
        assert "Run rose split finalize" in said, said
        with cluster.admin("cart") as cart:
            after = cart.execute(
                "SELECT (SELECT count(*) FROM legacy.orders), "
                "(SELECT count(*) FROM legacy.order_items)"
            ).fetchone()
            assert after == before
            assert cart.execute("SELECT count(*) FROM split.dropped").fetchone() == (0,)
    finally:
        with cluster.admin("cart") as connection:
            for schema in ("legacy", "split"):
                connection.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        cluster.rose("db", "provision")
    check = cluster.rose("db", "check")
    assert check.exit_code == 0, check.output

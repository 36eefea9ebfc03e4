"""Benchmark: ``rose db backup`` and ``rose db restore`` against plain ``pg_dump`` / ``pg_restore``.

On throwaway embedded PostgreSQL 18 servers (durability off, the same for both sides), every
service database as the project provisions and migrates it, with ``--rows`` likes, half as many
cart lines and a quarter as many paid orders (one item each). Measured back to back, alternating
which goes first, ``--rounds`` times:

- backup: ``ops.db.backup.back_up`` (a snapshot exported per database, every table's checksum
  read in it, ``pg_dump`` in that snapshot, fsync, the manifest) against the baseline, a plain
  ``pg_dump --format=custom --schema=<service>`` of each database in turn;
- restore, onto a second server whose service databases are dropped before each round:
  ``ops.db.backup.restore`` (every check, provisioning, migrations to the backup's revision,
  ``pg_restore``, every table verified, migrations to head, the FDW edges, the cluster check)
  against the baseline, provisioning and migrations (``converge_databases``) then a plain
  ``pg_restore --data-only --disable-triggers --single-transaction`` of each archive.

``python -m bench.backup [--rows 200000] [--rounds 3]``. Prints each measurement, the medians and
the ratios to the baselines. Exits 1 when a restore does not verify.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import psycopg

from apps.registry import SERVICES, service_spec
from bench.checkout_stack import set_up_databases
from ops.db.backup import BackupError, back_up, restore, run_client_tool
from ops.db.binaries import pg_binary
from ops.db.credentials import Credentials
from ops.db.lifecycle import converge_databases
from ops.db.topology import Topology
from ops.stack.pgserver import throwaway_postgres


def seed(topology: Topology, rows: int) -> int:
    """The rows a backup carries; returns how many there are in all."""
    statements = {
        "likes": [
            "INSERT INTO likes.likes (user_id, target_type, target_slug) "
            "SELECT n, 'product', 'jam-' || n FROM generate_series(1, %(rows)s) AS n"
        ],
        "cart": [
            "INSERT INTO cart.cart_items (user_id, product_id, quantity, "
            "market_place_container_id) "
            "SELECT n, n, 1, 1 FROM generate_series(1, %(rows)s / 2) AS n"
        ],
        "orders": [
            "INSERT INTO orders.orders (user_id, status, currency, product_total, "
            "calendar_total, ticket_total, total, description, page_config_id, merchant_code, "
            "checkout_prefix, paid_at) SELECT n, 'paid', 'EUR', 20, 0, 0, 20, 'jam', 1, "
            "'MSANDBOX1', 'rose-farm-', now() FROM generate_series(1, %(rows)s / 4) AS n",
            "INSERT INTO orders.order_items (order_id, kind, source_id, title, unit_price, "
            "currency, quantity) SELECT id, 'product', id, 'Jam', 10, 'EUR', 2 FROM orders.orders",
        ],
    }
    total = 0
    for service, texts in statements.items():
        with psycopg.connect(topology.admin_url(service), autocommit=True) as connection:
            for text in texts:
                total += connection.execute(text, {"rows": rows}).rowcount
            connection.execute("VACUUM ANALYZE")
    return total


def baseline_backup(topology: Topology, directory: Path) -> None:
    directory.mkdir()
    for service in SERVICES:
        spec = service_spec(service)
        run_client_tool(
            [
                str(pg_binary("pg_dump")),
                "--format=custom",
                f"--schema={spec.name}",
                # The version row is the migrations' (a restore migrates first), as rose's.
                f"--exclude-table-data={spec.name}.alembic_version",
                f"--file={directory / f'{spec.database}.dump'}",
            ],
            topology.admin_url(service),
            f"pg_dump of {spec.database}",
        )


def baseline_restore(topology: Topology, credentials: Credentials, directory: Path) -> None:
    converge_databases(topology, credentials, say=lambda _line: None)
    for service in SERVICES:
        database = service_spec(service).database
        run_client_tool(
            [
                str(pg_binary("pg_restore")),
                "--data-only",
                "--disable-triggers",
                "--single-transaction",
                "--exit-on-error",
                str(directory / f"{database}.dump"),
            ],
            topology.admin_url(service),
            f"pg_restore of {database}",
        )


def drop_databases(topology: Topology) -> None:
    with psycopg.connect(topology.admin_url(None, "postgres"), autocommit=True) as connection:
        for service in SERVICES:
            connection.execute(
                f'DROP DATABASE IF EXISTS "{service_spec(service).database}" WITH (FORCE)'
            )


def quiet(_line: str) -> None:
    pass


def timed(step: Callable[[], object]) -> float:
    started = time.perf_counter()
    step()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    say: Callable[[str], None] = lambda line: print(line, flush=True)  # noqa: E731
    work = Path(tempfile.mkdtemp(prefix="rose-bench-backup-"))
    credentials = Credentials(work / "credentials.json", environ={})
    times: dict[str, list[float]] = {"backup": [], "pg_dump": [], "restore": [], "pg_restore": []}
    with (
        throwaway_postgres(prefix="rose-bench-backup-a-") as source_pg,
        throwaway_postgres(prefix="rose-bench-backup-b-") as target_pg,
    ):
        source = set_up_databases(source_pg, credentials)
        target = Topology.single_server(target_pg.superuser_url(), environ={})
        total = seed(source, args.rows)
        say(f"{total:,} rows in the service databases (--rows {args.rows:,})")
        for number in range(1, args.rounds + 1):
            first_ours = number % 2 == 1
            ours = work / f"ours-{number}"
            plain = work / f"plain-{number}"
            steps: list[tuple[str, Callable[[], object]]] = [
                ("backup", partial(back_up, source, ours, say=quiet)),
                ("pg_dump", partial(baseline_backup, source, plain)),
            ]
            for name, step in steps if first_ours else reversed(steps):
                times[name].append(timed(step))
                say(f"round {number}: {name:<10} {times[name][-1]:6.2f} s")
            restores: list[tuple[str, Callable[[], object]]] = [
                ("restore", partial(restore, target, credentials, ours, say=quiet)),
                ("pg_restore", partial(baseline_restore, target, credentials, plain)),
            ]
            for name, step in restores if first_ours else reversed(restores):
                drop_databases(target)
                try:
                    times[name].append(timed(step))
                except BackupError as exc:
                    say(f"round {number}: {name} did not verify: {exc}")
                    return 1
                say(f"round {number}: {name:<10} {times[name][-1]:6.2f} s")
    medians = {name: statistics.median(values) for name, values in times.items()}
    say("")
    say(f"median of {args.rounds} rounds, {total:,} rows")
    say(
        f"  rose db backup  {medians['backup']:6.2f} s   pg_dump per database "
        f"{medians['pg_dump']:6.2f} s   ratio {medians['backup'] / medians['pg_dump']:.2f}"
    )
    say(
        f"  rose db restore {medians['restore']:6.2f} s   migrate + pg_restore "
        f"{medians['pg_restore']:6.2f} s   ratio {medians['restore'] / medians['pg_restore']:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: ``rose split run`` (which verifies each move) against a plain copy of the same tables.

On a throwaway embedded PostgreSQL 18 (durability off, the same for both sides) with the
project's own provisioning and migrations, a practice monolith at ``--scale`` (10: ~150,000
legacy rows). Measured back to back, alternating which goes first, ``--rounds`` times:

- the split: ``rose split run`` of every move, as the command runs it (``ops.split.run.run_all``:
  each move verified, sources against target, in its transaction before it commits) in this
  process, from empty targets with the sources unfrozen (``rose split abort`` in between, then
  the targets emptied);
  with ``--separate-verify``, ``run --no-verify`` then ``rose split verify``
  (``ops.split.verify.verify_moves``), the two commands as they were before;
- the baseline: for each source database in turn, ``pg_dump --data-only`` of the legacy tables
  the moves read piped into ``psql`` of an empty copy of them (same DDL, db/legacy/*.sql, in
  databases of their own): no transform, no checksums, no ledger.

``python -m bench.split [--scale 10] [--rounds 2] [--jobs N]``. Prints each measurement, the
medians and the ratio split / baseline (target <= 1.5). Exits 1 when a verify fails.

``python -m bench.split --online [--scale 10] [--sync-seconds 10]``: the online split (issue 16)
under the writer load of bench/split_load.py, against the offline one under the same load: the
offline ``run`` (verifying; its write pause is the whole of it), then, after an abort, ``sync``
(snapshot, then rounds for ``--sync-seconds`` while the lag is sampled) and ``cutover``; prints
each move's write pause (freeze to verified; target <= 2 s), the lag during the sync and the
total times.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
from psycopg import sql

from apps.registry import service_spec
from bench.checkout_stack import set_up_databases
from bench.split_load import WriterLoad, monolith_writer
from ops.db.binaries import client_tool_target, pg_binary
from ops.db.credentials import Credentials
from ops.db.topology import Topology
from ops.split.abort import abort
from ops.split.common import DEFAULT_JOBS, ensure_ledger
from ops.split.moves import LEGACY_DIR, LEGACY_SERVICES, LEGACY_TABLES, MOVES
from ops.split.run import run_all
from ops.split.seed import seed_legacy
from ops.split.verify import verify_moves
from ops.stack.pgserver import throwaway_postgres

TARGET_RATIO = 1.5


def quiet(_: str) -> None:
    return None


def copy_database(service: str) -> str:
    return f"bench_copy_{service}"


def read_tables(service: str) -> list[str]:
    """The legacy tables of ``service`` that some move reads (moved or looked up)."""
    return [declared.table for declared in LEGACY_TABLES if declared.service == service]


def create_copies(topology: Topology) -> None:
    """Empty copies of the legacy tables, same DDL, one database per source database."""
    for service in LEGACY_SERVICES:
        with psycopg.connect(topology.maintenance_url(service), autocommit=True) as connection:
            connection.execute(
                sql.SQL("CREATE DATABASE {}").format(sql.Identifier(copy_database(service)))
            )
        dsn, environment = client_tool_target(topology.admin_url(service, copy_database(service)))
        subprocess.run(
            [
                str(pg_binary("psql")),
                "--quiet",
                "--set=ON_ERROR_STOP=1",
                f"--set=owner={service_spec(service).owner_role}",
                f"--file={LEGACY_DIR / f'{service}.sql'}",
                dsn,
            ],
            check=True,
            capture_output=True,
            env=environment,
        )


def make_ledgers(topology: Topology) -> None:
    """The split's ledger in each target database, made once before the rounds as the copies'
    tables are (not timed): the first command of a night makes it, and every round after the
    first finds it there (abort keeps it). Round 1 alone paid for it, ~40 ms."""
    for service in dict.fromkeys(move.target for move in MOVES):
        with psycopg.connect(topology.admin_url(service), autocommit=True) as connection:
            ensure_ledger(connection, service)


def baseline(topology: Topology) -> float:
    """Empty the copies (not timed), then time pg_dump --data-only | psql per database."""
    for service in LEGACY_SERVICES:
        url = topology.admin_url(service, copy_database(service))
        with psycopg.connect(url, autocommit=True) as connection:
            tables = sql.SQL(", ").join(
                sql.Identifier("legacy", table) for table in read_tables(service)
            )
            connection.execute(sql.SQL("TRUNCATE {}").format(tables))
            connection.execute(sql.SQL("VACUUM ANALYZE {}").format(tables))
    targets = {
        service: (
            client_tool_target(topology.admin_url(service)),
            client_tool_target(topology.admin_url(service, copy_database(service))),
        )
        for service in LEGACY_SERVICES
    }
    started = time.perf_counter()
    for service in LEGACY_SERVICES:
        (source, source_env), (copy, copy_env) = targets[service]
        dump = subprocess.Popen(
            [
                str(pg_binary("pg_dump")),
                "--data-only",
                *[f"--table=legacy.{table}" for table in read_tables(service)],
                f"--dbname={source}",
            ],
            stdout=subprocess.PIPE,
            env=source_env,
        )
        load = subprocess.run(
            [str(pg_binary("psql")), "--quiet", "--set=ON_ERROR_STOP=1", copy],
            stdin=dump.stdout,
            capture_output=True,
            env=copy_env,
        )
        assert dump.stdout is not None
        dump.stdout.close()
        if dump.wait() != 0 or load.returncode != 0:
            raise RuntimeError(f"the baseline copy of {service} failed: {load.stderr!r}")
    return time.perf_counter() - started


def reset_split(topology: Topology) -> None:
    """Abort every move (targets emptied by the ledger, sources unfrozen), then TRUNCATE the
    targets so each round starts from tables as empty as the first (not timed)."""
    result = abort(topology, list(MOVES), quiet)
    if result.refused:
        raise RuntimeError(f"abort refused: {result.refused}")
    for move in MOVES:
        with psycopg.connect(topology.admin_url(move.target), autocommit=True) as connection:
            tables = sql.SQL(", ").join(
                sql.Identifier(*table.split(".")) for table in move.target_tables
            )
            connection.execute(sql.SQL("TRUNCATE {} CASCADE").format(tables))
            connection.execute(sql.SQL("VACUUM ANALYZE {}").format(tables))


def split(
    topology: Topology, jobs: int, verbose: bool, separate_verify: bool
) -> tuple[float, str, bool]:
    """One split from empty targets: ``rose split run`` (each move verified before it commits), or
    with ``separate_verify`` ``run --no-verify`` then ``verify``. The seconds, how they
    divide, and whether every move verified."""
    reset_split(topology)
    started = time.perf_counter()

    def timeline(line: str) -> None:
        if verbose:
            print(f"    {time.perf_counter() - started:6.3f} {line}", flush=True)

    result = run_all(topology, list(MOVES), timeline, jobs=jobs, verify=not separate_verify)
    if result.failed:
        raise RuntimeError(f"run failed: {result.failed}")
    moved = time.perf_counter()
    if not separate_verify:
        return moved - started, "run, each move verified before it commits", result.verified
    verified = all(found.ok for found in verify_moves(topology, list(MOVES), jobs))
    ended = time.perf_counter()
    parts = f"run {moved - started:.2f} s, then verify {ended - moved:.2f} s"
    return ended - started, parts, verified


def online(topology: Topology, jobs: int, sync_seconds: float, say: Callable[[str], None]) -> bool:
    """Offline then online, each under the writer load; True when every verify passed."""
    from ops.split.sync import cutover, lag, sync

    reset_split(topology)
    with WriterLoad(topology, seed=10) as load:
        time.sleep(1.0)
        started = time.perf_counter()
        result = run_all(topology, list(MOVES), quiet, jobs=jobs)
        if result.failed:
            raise RuntimeError(f"run failed: {result.failed}")
        verified = result.verified
        offline_seconds = time.perf_counter() - started
    say(
        f"offline: run (verifying) {offline_seconds:.2f} s under the load; writes refused from the "
        f"freeze to the end: {load.report.refused:,} (of {load.report.writes:,} made); the "
        f"write pause of every move is the run, {offline_seconds:.2f} s"
    )
    reset_split(topology)
    samples: dict[str, list[tuple[int, float]]] = {move.name: [] for move in MOVES}
    # As the monolith's app writes: its own login role with DML grants, not the superuser.
    with monolith_writer(topology) as urls, WriterLoad(topology, seed=11, urls=urls) as load:
        time.sleep(1.0)
        started = time.perf_counter()
        stop_at = [float("inf")]
        snapshot_done = [0.0]

        def note(line: str) -> None:
            if "snapshot committed" in line:
                snapshot_done[0] = time.perf_counter()
                if line.startswith(MOVES[-1].name + ":"):
                    stop_at[0] = time.perf_counter() + sync_seconds

        syncing = threading.Thread(
            target=sync,
            args=(topology, list(MOVES), note),
            kwargs={"should_stop": lambda: time.perf_counter() >= stop_at[0]},
        )
        syncing.start()
        while syncing.is_alive():
            time.sleep(0.5)
            if stop_at[0] == float("inf"):
                continue
            for move in MOVES:
                found = lag(topology, move)
                samples[move.name].append((found.pending, found.seconds_behind))
        snapshot_seconds = snapshot_done[0] - started
        cut_started = time.perf_counter()
        reports = cutover(topology, list(MOVES), quiet)
        cut_seconds = time.perf_counter() - cut_started
        total = time.perf_counter() - started
    say(
        f"online: snapshot {snapshot_seconds:.2f} s, sync {sync_seconds:.0f} s, cutover "
        f"{cut_seconds:.2f} s; {load.report.writes:,} writes made, {load.report.refused:,} "
        "refused (during the cutovers)"
    )
    for report in reports:
        pending = [p for p, _ in samples[report.move.name]] or [0]
        behind = [b for _, b in samples[report.move.name]] or [0.0]
        ok = report.verification is not None and report.verification.ok
        verified &= ok
        say(
            f"  {report.move.name:<13} write pause {report.write_pause:5.2f} s "
            f"(drained {report.drained:,} changes){'' if ok else ' VERIFY FAILED'}; lag "
            f"during sync: pending median {statistics.median(pending):,.0f} max {max(pending):,}, "
            f"behind median {statistics.median(behind):.2f} s max {max(behind):.2f} s"
        )
    worst = max(report.write_pause for report in reports)
    say(
        f"worst write pause {worst:.2f} s (target <= 2 s: {'met' if worst <= 2 else 'NOT MET'}); "
        f"total online {total:.2f} s (sync time chosen) against offline {offline_seconds:.2f} s"
    )
    return verified


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=DEFAULT_JOBS)
    parser.add_argument(
        "--verbose", action="store_true", help="print run's steps with their times (from start)"
    )
    parser.add_argument(
        "--separate-verify",
        action="store_true",
        help="time `run --no-verify` then `verify` (as before run verified each move itself)",
    )
    parser.add_argument("--online", action="store_true", help="sync + cutover under load")
    parser.add_argument("--sync-seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    say: Callable[[str], None] = lambda line: print(line, flush=True)  # noqa: E731
    with throwaway_postgres(prefix="rose-bench-checkout-pg-") as pg:
        credentials = Credentials(Path(tempfile.mkdtemp()) / "credentials.json", environ={})
        topology = set_up_databases(pg, credentials)
        seeded = seed_legacy(topology, args.scale, replace=False, say=quiet)
        say(f"scale {args.scale}: {sum(seeded.rows.values()):,} legacy rows; jobs {args.jobs}")
        if args.online:
            return 0 if online(topology, args.jobs, args.sync_seconds, say) else 1
        create_copies(topology)
        make_ledgers(topology)
        splits: list[float] = []
        baselines: list[float] = []
        all_verified = True
        for number in range(1, args.rounds + 1):
            order = ("split", "baseline") if number % 2 else ("baseline", "split")
            for which in order:
                if which == "split":
                    seconds, parts, verified = split(
                        topology, args.jobs, args.verbose, args.separate_verify
                    )
                    all_verified &= verified
                    splits.append(seconds)
                    say(
                        f"round {number}: split    {seconds:6.2f} s ({parts}"
                        f"{'' if verified else ', VERIFY FAILED'})"
                    )
                else:
                    seconds = baseline(topology)
                    baselines.append(seconds)
                    say(f"round {number}: baseline {seconds:6.2f} s (pg_dump --data-only | psql)")
        split_median = statistics.median(splits)
        baseline_median = statistics.median(baselines)
        ratio = split_median / baseline_median
        met = "met" if ratio <= TARGET_RATIO else "NOT MET"
        each = ", ".join(f"{s / b:.2f}" for s, b in zip(splits, baselines, strict=True))
        say(
            f"median: split {split_median:.2f} s, baseline {baseline_median:.2f} s; "
            f"ratio {ratio:.2f} (target <= {TARGET_RATIO}: {met}; each round's ratio: {each})"
        )
    return 0 if all_verified else 1


if __name__ == "__main__":
    sys.exit(main())

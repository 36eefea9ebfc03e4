"""``rose split``: the commands of the one-time data migration (ops.split, DESIGN.md section 6).

A DBA runs, in order: ``plan`` (read-only: what would move, and what becomes of every legacy
table), ``run`` (freeze, copy, transform, fix sequences, record in the ledger; one target
transaction per move, independent moves at the same time; idempotent and resumable), ``verify``
(counts and checksums of source and target; exit 1 naming each difference) and ``finalize``
(verify again, back up, drop the moved sources). ``status`` shows the ledgers; ``abort`` undoes
moves that are not finalized. ``seed-legacy`` makes a practice monolith. The night step by step:
docs/runbook-split.md. The SQL is in ``db/legacy`` and ``db/split``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import psycopg
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ops.cli.common import DatabaseUrlOption, superuser_topology
from ops.split.common import ServicesConnected, SplitError
from ops.split.moves import LEGACY_TABLES, Move, select_moves
from ops.split.run import BULK_LOAD_MIN_ROWS, MovePlan, MoveReport, Outcome
from ops.split.verify import MoveVerification

split_app = typer.Typer(
    help="The split: move the monolith's data into the new services (plan, run, verify, finalize).",
    no_args_is_help=True,
    rich_markup_mode=None,
)
# Into a file or a pipe (the night's notes) the tables keep their columns whole: Rich would
# otherwise lay them out for 80 columns.
console = Console(
    highlight=False,
    soft_wrap=True,
    width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 240,
)

MoveOption = Annotated[
    list[str] | None,
    typer.Option(
        "--move",
        metavar="MOVE",
        help="Only this move (relations, likes, page_configs, cart, orders); repeatable.",
    ),
]
SHOWN_IDS = 12


def _moves(names: list[str] | None) -> list[Move]:
    try:
        return select_moves(names)
    except ValueError as exc:
        raise _fail(str(exc)) from None


def _fail(message: str) -> typer.Exit:
    # One line: libpq's words about a server that does not answer come over several.
    console.print(f"[red]error:[/red] {escape(' '.join(message.split()))}")
    return typer.Exit(1)


def _refused_while_services_run(refusal: ServicesConnected) -> typer.Exit:
    """A line per database whose service is connected, and what to do; exit 1."""
    first, *rest = refusal.lines()
    console.print(f"[red]error:[/red] {escape(first)}")
    for line in rest:
        console.print(escape(line))
    return typer.Exit(1)


def _say(line: str) -> None:
    console.print(escape(line))


def _ids(rows: dict[str, list[int]]) -> str:
    parts = []
    for table, ids in rows.items():
        shown = ", ".join(str(source_id) for source_id in ids[:SHOWN_IDS])
        more = f" and {len(ids) - SHOWN_IDS:,} more" if len(ids) > SHOWN_IDS else ""
        parts.append(f"legacy.{table} {shown}{more}")
    return "; ".join(parts)


def _reason_lines(reasons: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    lines = []
    for outcome in ("skipped", "collapsed", "moved"):
        for reason, entry in sorted(reasons.get(outcome, {}).items()):
            label = "moved, noted" if outcome == "moved" else outcome
            lines.append(f"{entry['count']:,} {label}: {reason} (ids {_ids(entry['rows'])})")
    return lines


# -- seed-legacy ---------------------------------------------------------------------------------
@split_app.command("seed-legacy")
def seed_legacy_command(
    scale: Annotated[
        int,
        typer.Option(
            min=1, metavar="N", help="1: ~15,000 rows; 10: ~100,000 likes, 10,000 orders."
        ),
    ] = 1,
    replace: Annotated[
        bool,
        typer.Option(
            help="Drop schema legacy (and its freeze triggers) and seed again. Refused, as "
            "seeding is, while the split records a move not aborted or a dropped table."
        ),
    ] = False,
    database_url: DatabaseUrlOption = None,
) -> None:
    """Create schema legacy in db_cart, db_market, db_blog and fill a practice monolith."""
    from ops.split.seed import seed_legacy

    try:
        result = seed_legacy(
            superuser_topology(database_url, "rose split seed-legacy"),
            scale,
            replace=replace,
            say=_say,
        )
    except (SplitError, psycopg.Error) as exc:
        raise _fail(str(exc)) from None
    console.print(
        f"seeded {sum(result.rows.values()):,} legacy rows at scale {scale} "
        f"in {result.seconds:.2f} s"
    )


# -- plan ----------------------------------------------------------------------------------------
def _distinct(outcome: Outcome, table: str) -> int:
    counts = outcome.by_table.get(table, {})
    return sum(counts.values()) - counts.get("collapsed", 0)


def _print_plan(plan: MovePlan) -> None:
    move = plan.move
    sources = ", ".join(str(source) for source in move.sources if source.moved)
    console.print(
        f"[bold]{move.name}[/bold]: {escape(sources)} -> {move.target_database} "
        f"{', '.join(move.target_tables)}"
    )
    state = plan.ledger.state() if plan.ledger is not None else "not started"
    console.print(f"  ledger:     {escape(state)}")
    targets = ", ".join(f"{table} {rows:,} rows" for table, rows in plan.target_rows.items())
    console.print(f"  target now: {targets}")
    if plan.ledger is not None and plan.ledger.done:
        console.print("  run will:   nothing (the move is done)")
        return
    if plan.missing_sources:
        console.print(
            f"  source:     [red]missing[/red] {escape(', '.join(plan.missing_sources))}; "
            "run will refuse (`rose split seed-legacy` makes a practice monolith)"
        )
        return
    outcome = plan.outcome
    assert outcome is not None
    described = []
    for source in move.sources:
        rows = plan.source_rows[str(source)]
        if not source.moved:
            described.append(f"{source} {rows:,} rows (looked up)")
        elif outcome.by_table[source.table].get("collapsed"):
            distinct = _distinct(outcome, source.table)
            described.append(f"{source} {rows:,} rows ({distinct:,} distinct)")
        else:
            described.append(f"{source} {rows:,} rows")
    console.print(f"  source:     {escape('; '.join(described))}")
    quirks = _reason_lines(outcome.reasons)
    console.print(f"  quirks:     {escape(quirks[0]) if quirks else 'none found'}")
    for line in quirks[1:]:
        console.print(f"              {escape(line)}")
    frozen = ", ".join(str(source) for source in move.sources)
    inserts = ", ".join(f"{rows:,} into {table}" for table, rows in outcome.planned.items())
    console.print(
        f"  run will:   freeze {escape(frozen)}; copy {sum(plan.source_rows.values()):,} rows; "
        f"move {outcome.total('moved'):,}, collapse {outcome.total('collapsed'):,}, skip "
        f"{outcome.total('skipped'):,} (listed in the ledger); insert {inserts}; "
        + ("keep the ids and move the id sequences past them; " if move.keeps_ids else "")
        + "record the move"
    )


def _print_classification() -> None:
    console.print("[bold]legacy tables[/bold] (ops/split/moves.py, LEGACY_TABLES):")
    width = max(len(str(declared)) for declared in LEGACY_TABLES)
    for declared in LEGACY_TABLES:
        console.print(f"  {escape(str(declared)):<{width}}  {escape(declared.describe())}")


@split_app.command("plan")
def plan_command(move: MoveOption = None, database_url: DatabaseUrlOption = None) -> None:
    """What would move, what run would do, and what becomes of every legacy table. Reads only
    (a rolled-back, read-only dry run)."""
    from ops.split.run import plan_move

    topology = superuser_topology(database_url, "rose split plan")
    _print_classification()
    for selected in _moves(move):
        try:
            _print_plan(plan_move(topology, selected))
        except (SplitError, psycopg.Error) as exc:
            raise _fail(f"{selected.name}: {exc}") from None


# -- run -----------------------------------------------------------------------------------------
def _print_run_summary(reports: list[MoveReport]) -> None:
    table = Table("move", "source rows", "moved", "collapsed", "skipped", "seconds", "rows/s")
    for report in reports:
        if report.outcome is None:
            table.add_row(report.move.name, "already done", "", "", "", "", "")
            continue
        outcome = report.outcome
        table.add_row(
            report.move.name,
            f"{outcome.source_rows:,}",
            f"{outcome.total('moved'):,}",
            f"{outcome.total('collapsed'):,}",
            f"{outcome.total('skipped'):,}",
            f"{report.seconds:.2f}",
            f"{report.rows_per_second:,.0f}",
        )
    console.print(table)


JobsOption = Annotated[
    int | None,
    typer.Option(
        "--jobs", min=1, metavar="N", help="Moves run at the same time (default: cores, max 4)."
    ),
]


@split_app.command("run")
def run_command(
    move: MoveOption = None,
    jobs: JobsOption = None,
    lock_timeout: Annotated[
        float,
        typer.Option(
            min=0.1, metavar="SECONDS", help="Seconds freezing waits for a table's writers."
        ),
    ] = 10.0,
    verify: Annotated[
        bool,
        typer.Option(
            help="Verify each move (what rose split verify does) in its transaction, before it "
            "commits: a move whose target does not match its sources is not committed."
        ),
    ] = True,
    bulk_load_min_rows: Annotated[
        int,
        typer.Option(
            min=0,
            metavar="ROWS",
            help="Rows a move inserts from which its empty targets' indexes and foreign keys "
            "are dropped for the insert and built once after it (0: always).",
        ),
    ] = BULK_LOAD_MIN_ROWS,
    database_url: DatabaseUrlOption = None,
) -> None:
    """Move what is not moved yet: freeze, copy, transform, fix sequences, verify and record,
    each move in one transaction. Idempotent."""
    from ops.split.common import DEFAULT_JOBS
    from ops.split.freeze import describe_frozen
    from ops.split.moves import LEGACY_SERVICES
    from ops.split.run import MoveNotVerified, run_all

    topology = superuser_topology(database_url, "rose split run")
    try:
        result = run_all(
            topology,
            _moves(move),
            _say,
            jobs=jobs or DEFAULT_JOBS,
            lock_timeout=lock_timeout,
            verify=verify,
            bulk_load_min_rows=bulk_load_min_rows,
        )
    except ServicesConnected as refusal:
        raise _refused_while_services_run(refusal) from None
    except (SplitError, psycopg.Error) as exc:
        frozen = "" if "frozen now" in str(exc) else describe_frozen(topology, LEGACY_SERVICES)
        raise _fail(f"{exc}\nNothing was moved by this run. {frozen}".rstrip()) from None
    if result.failed:
        _print_reports(result.reports)
        for name, error in result.failed.items():
            if isinstance(error, MoveNotVerified):
                _print_verification(error.verification)
            console.print(f"[red]error:[/red] {escape(name)}: {escape(str(error))}")
        console.print(
            f"Nothing of {', '.join(result.failed)} was committed; the other moves are done. "
            f"{escape(describe_frozen(topology, LEGACY_SERVICES))}. Run again to resume, or "
            "`rose split abort` to give up and unfreeze."
        )
        raise typer.Exit(1)
    if all(report.outcome is None for report in result.reports):
        console.print("nothing to do: every move is already done (0 rows moved)")
        return
    _print_reports(result.reports)


def _print_reports(reports: list[MoveReport]) -> None:
    """The run's table, then each verification as `rose split verify` prints it."""
    if not reports:
        return
    _print_run_summary(reports)
    for report in reports:
        if report.verification is not None:
            _print_verification(report.verification)


# -- verify --------------------------------------------------------------------------------------
def _print_verification(result: MoveVerification) -> None:
    name = result.move.name
    ledger = result.ledger
    if result.finalized and ledger is not None:
        status = "[green]ok[/green]" if result.ok else "[red]LOST ROWS[/red]"
        dropped = (
            f"finalized (sources dropped {_when(ledger.finalized_at)} UTC)"
            if ledger.finalized_at is not None
            else "finalizing (its sources are being dropped; `rose split finalize` completes it)"
        )
        console.print(
            f"{status} {name}: {dropped}; the target against the checksums of the move's commit"
        )
        for check in result.checks:
            if check.ok:
                console.print(
                    f"  commit:     {escape(check.target_table)}: unchanged since the move"
                )
        for note in result.notes:
            console.print(f"  changed:    {escape(note)}")
        for problem in result.problems:
            console.print(f"  [red]problem[/red]:    {escape(problem)}")
        return
    status = "[green]ok[/green]" if result.ok else "[red]DIFFERENT[/red]"
    console.print(f"{status} {name}")
    if ledger is not None and ledger.done and ledger.source_rows is not None:
        console.print(
            f"  accounting: {ledger.source_rows:,} source rows = {ledger.moved_rows:,} moved "
            f"+ {ledger.collapsed_rows:,} collapsed + {ledger.skipped_rows:,} skipped"
        )
        for line in _reason_lines(ledger.reasons or {}):
            console.print(f"  listed:     {escape(line)}")
    for check in result.checks:
        console.print(f"  checksum:   {escape(check.describe())}")
    for problem in result.problems:
        console.print(f"  [red]problem[/red]:    {escape(problem)}")


@split_app.command("verify")
def verify_command(
    move: MoveOption = None, jobs: JobsOption = None, database_url: DatabaseUrlOption = None
) -> None:
    """Compare each move's source and target: counts and checksums; exit 1 naming each
    difference. Records the result in the ledger. After finalize: the target against the
    checksums of the move's commit (a lost row is a difference)."""
    from ops.split.common import DEFAULT_JOBS
    from ops.split.verify import verify_moves

    topology = superuser_topology(database_url, "rose split verify")
    failed = []
    try:
        results = verify_moves(topology, _moves(move), jobs or DEFAULT_JOBS)
    except (SplitError, psycopg.Error) as exc:
        raise _fail(str(exc)) from None
    for result in results:
        _print_verification(result)
        if not result.ok:
            failed.append(result)
    if failed:
        for result in failed:
            for difference in result.differences():
                console.print(f"[red]difference[/red] {result.move.name}: {escape(difference)}")
        raise typer.Exit(1)


# -- finalize ------------------------------------------------------------------------------------
def _default_backup_dir() -> Path:
    from ops.paths import rose_home

    return rose_home() / "split-backups"


@split_app.command("finalize")
def finalize_command(
    backup_dir: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR", help="Where the pg_dump backups go (default: .rose/split-backups)."
        ),
    ] = None,
    lock_timeout: Annotated[
        float,
        typer.Option(
            min=0.1, metavar="SECONDS", help="Seconds each attempt waits for a table's lock."
        ),
    ] = 5.0,
    lock_attempts: Annotated[
        int, typer.Option(min=1, metavar="N", help="Attempts at the locks before giving up.")
    ] = 3,
    database_url: DatabaseUrlOption = None,
) -> None:
    """Verify every move again under the freeze, back the moved sources up (pg_dump -Fc), then
    drop them, recording each drop with it. Keeps the ledgers and the lookup tables."""
    from ops.split.finalize import FinalizeOptions, finalize

    options = FinalizeOptions(backup_dir or _default_backup_dir(), lock_timeout, lock_attempts)
    try:
        result = finalize(superuser_topology(database_url, "rose split finalize"), options, _say)
    except (SplitError, psycopg.Error) as exc:
        raise _fail(f"finalize: {exc}") from None
    if result.refused:
        console.print("[red]refused[/red]: nothing was dropped:")
        for line in result.refused:
            console.print(f"  {escape(line)}")
        raise typer.Exit(1)
    if result.already_finalized:
        console.print("already finalized: nothing left to drop")
    else:
        console.print(
            f"finalized {', '.join(result.finalized)}: the moved sources are dropped (backups "
            "above); the ledgers and the kept tables stay"
        )


# -- status and abort ----------------------------------------------------------------------------
def _when(moment: Any) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else ""


@split_app.command("status")
def status_command(database_url: DatabaseUrlOption = None) -> None:
    """The ledgers as a table, what is frozen and what finalize dropped. Reads only."""
    from apps.registry import service_spec
    from ops.split.status import split_status

    try:
        status = split_status(superuser_topology(database_url, "rose split status"))
    except (SplitError, psycopg.Error) as exc:
        raise _fail(str(exc)) from None
    table = Table("move", "state", "source rows", "checksums (at commit)", "when (UTC)", "by")
    for move in status.moves:
        table.add_row(
            move.move.name,
            escape(move.state),
            move.rows(),
            escape(move.checksums()),
            _when(move.when),
            escape(move.by or ""),
        )
    console.print(table)
    console.print("frozen: " + (escape("; ".join(status.frozen)) if status.frozen else "nothing"))
    for record in status.dropped:
        console.print(
            f"dropped: {service_spec(record['service']).database} "
            f"legacy.{escape(record['source_table'])} ({escape(record['move'])}) at "
            f"{_when(record['dropped_at'])} by {escape(record['dropped_by'])}, "
            f"{record['rows']:,} rows; backup {escape(record['backup_file'])} "
            f"sha256 {record['backup_sha256']}"
        )


@split_app.command("abort")
def abort_command(move: MoveOption = None, database_url: DatabaseUrlOption = None) -> None:
    """Undo moves that are not finalized: delete the rows they put in their targets (by the
    ledger) and lift their freeze. Idempotent; safe to run again after a crash."""
    from ops.split.abort import abort

    try:
        result = abort(superuser_topology(database_url, "rose split abort"), _moves(move), _say)
    except ServicesConnected as refusal:
        raise _refused_while_services_run(refusal) from None
    except (SplitError, psycopg.Error) as exc:
        raise _fail(str(exc)) from None
    for line in result.refused:
        console.print(f"[red]refused[/red]: {escape(line)}")
    if result.aborted:
        console.print(f"aborted {', '.join(reversed(result.aborted))}")
    if result.not_aborted:
        console.print(f"not aborted: {', '.join(reversed(result.not_aborted))} (refused above)")
        raise typer.Exit(1)


@split_app.command("restore")
def restore_command(
    archive: Annotated[
        Path,
        typer.Argument(metavar="ARCHIVE", help="A backup finalize took (<database>.legacy.dump)."),
    ],
    database_url: DatabaseUrlOption = None,
) -> None:
    """Put back the legacy tables finalize dropped, from its backup (checked against the
    sha256 and the row checksums it recorded). Moves whose sources are all back can then be
    aborted, or finalized again."""
    from ops.split.restore import restore

    try:
        result = restore(superuser_topology(database_url, "rose split restore"), archive, _say)
    except (SplitError, psycopg.Error, OSError) as exc:
        raise _fail(f"restore: {exc}") from None
    tables = ", ".join(f"legacy.{table} ({rows:,} rows)" for table, rows in result.tables.items())
    console.print(f"restored {tables}")


# -- the online split ----------------------------------------------------------------------------
@split_app.command("sync")
def sync_command(
    move: MoveOption = None,
    once: Annotated[
        bool, typer.Option("--once", help="Apply what is captured once, then stop.")
    ] = False,
    database_url: DatabaseUrlOption = None,
) -> None:
    """The online split, first half: capture the changes of the legacy tables, copy a snapshot
    through the moves' transforms, then apply the captured changes continuously, printing the
    lag, until Ctrl-C (or once). Resumable at any point; "rose split cutover" finishes."""
    from ops.split.sync import sync

    try:
        sync(superuser_topology(database_url, "rose split sync"), _moves(move), _say, once=once)
    except (SplitError, psycopg.Error) as exc:
        raise _fail(f"{exc}\nNothing is frozen by sync; run it again to resume.") from None


@split_app.command("cutover")
def cutover_command(move: MoveOption = None, database_url: DatabaseUrlOption = None) -> None:
    """The online split, second half, a move at a time: freeze its sources, drain the changes
    left, record it, verify it, remove the capture; prints the write pause of each move."""
    from ops.split.freeze import describe_frozen
    from ops.split.moves import LEGACY_SERVICES
    from ops.split.sync import cutover

    topology = superuser_topology(database_url, "rose split cutover")
    try:
        reports = cutover(topology, _moves(move), _say)
    except ServicesConnected as refusal:
        raise _refused_while_services_run(refusal) from None
    except (SplitError, psycopg.Error) as exc:
        raise _fail(f"{exc}\n{describe_frozen(topology, LEGACY_SERVICES)}") from None
    for report in reports:
        if not report.done_before:
            console.print(f"write pause {report.move.name}: {report.write_pause:.2f} s")

"""Alembic, one environment per service.

Migrations connect as a superuser (or any role allowed to ``SET ROLE <svc>_owner``) and run as
``<svc>_owner``, so every object they create belongs to the owner and gets the default privileges
provisioning declared. Each migration runs in its own transaction.

They run beside the release before, which goes on serving. A statement waiting for a lock an
open transaction holds queues every writer of that table behind it, so each waits at most
``ROSE_MIGRATION_LOCK_TIMEOUT`` seconds (its transaction rolls back) and the upgrade tries again,
up to ``ROSE_MIGRATION_LOCK_TRIES`` times, saying each time who holds the lock.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import psycopg
from alembic import command, context
from alembic.config import Config
from alembic.script import Script, ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, MetaData, create_engine, event, pool, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from apps.registry import SERVICES, service_spec
from ops.paths import ALEMBIC_INI, DB_DIR, stack_state_path

MIGRATIONS_DIR = DB_DIR / "migrations"

Say = Callable[[str], None]


@dataclass(frozen=True)
class LockPatience:
    """How long a migration's statement waits for a lock, and how many times the upgrade tries.

    The services' reads give up after 2 s; queued behind a migration's wait they would fail, so
    one wait is short. A transaction in the way usually ends soon: the upgrade tries again."""

    timeout: float = 1.0
    tries: int = 10

    @classmethod
    def from_environment(cls) -> LockPatience:
        default = cls()
        timeout = _setting("ROSE_MIGRATION_LOCK_TIMEOUT", float, default.timeout)
        tries = _setting("ROSE_MIGRATION_LOCK_TRIES", int, default.tries)
        if not 0 < timeout <= 600:
            raise MigrateError(
                f"ROSE_MIGRATION_LOCK_TIMEOUT={timeout:g}: seconds, above 0, at most 600"
            )
        if not 1 <= tries <= 1000:
            raise MigrateError(f"ROSE_MIGRATION_LOCK_TRIES={tries}: a whole number from 1 to 1000")
        return cls(timeout, tries)

    @property
    def setting(self) -> str:
        return f"{max(1, round(self.timeout * 1000))}ms"


def _setting(name: str, kind: Callable[[str], Any], default: Any) -> Any:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return kind(value)
    except ValueError:
        raise MigrateError(f"{name}={value!r}: not a number") from None


def services_with_migrations() -> list[str]:
    return [name for name in SERVICES if (MIGRATIONS_DIR / name / "env.py").exists()]


def alembic_config(service: str, admin_url: str | None = None) -> Config:
    config = Config(str(ALEMBIC_INI), ini_section=service)
    config.set_main_option("script_location", str(MIGRATIONS_DIR / service))
    if admin_url:
        config.attributes["admin_url"] = admin_url
    return config


def _admin_url_for(service: str) -> str:
    """The superuser DSN when alembic runs from the command line."""
    x_args = context.get_x_argument(as_dictionary=True)
    url = x_args.get("url") or os.environ.get("ROSE_ADMIN_URL")
    if not url:
        state = stack_state_path()
        if state.exists():
            url = json.loads(state.read_text())["database_url"]
    if not url:
        raise RuntimeError(
            "no database: set ROSE_ADMIN_URL (a superuser DSN), pass -x url=..., "
            "or start the stack with `rose up`"
        )
    return make_url(url).set(database=service_spec(service).database).render_as_string(False)


def run_env(
    service: str,
    target_metadata: MetaData | None,
    after_migrations: Callable[[psycopg.Connection, str], object] | None = None,
) -> None:
    """The body of every ``db/migrations/<svc>/env.py`` (online mode only).

    ``after_migrations`` runs on the same connection, still as the owner, in a transaction of
    its own (the environments restore the FDW readers' grants on views a migration recreated)."""
    spec = service_spec(service)
    attributes = context.config.attributes
    url = attributes.get("admin_url") or _admin_url_for(service)
    url = make_url(url).set(drivername="postgresql+psycopg")
    patience = attributes.get("lock_patience") or LockPatience.from_environment()
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        connection.execute(text(f'SET ROLE "{spec.owner_role}"'))
        connection.execute(text(f"SET lock_timeout = '{patience.setting}'"))
        connection.commit()
        _no_lock_timeout_for_concurrent_builds(connection, patience.setting)
        attributes["backend_pid"] = _driver_connection(connection).info.backend_pid
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            version_table_schema=spec.name,
            transaction_per_migration=True,
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        _version_table_for_the_owner_only(connection, spec.name, spec.app_role)
        if after_migrations is not None:
            raw = _driver_connection(connection)
            after_migrations(raw, service)
            raw.commit()
    engine.dispose()


def _driver_connection(connection: Connection) -> psycopg.Connection[Any]:
    raw = connection.connection.driver_connection
    if not isinstance(raw, psycopg.Connection):  # postgresql+psycopg's own connection
        raise TypeError(f"expected a psycopg connection, not {type(raw).__name__}")
    return raw


_CONCURRENTLY = re.compile(r"\bCONCURRENTLY\b", re.IGNORECASE)


def _no_lock_timeout_for_concurrent_builds(connection: Connection, setting: str) -> None:
    """An index built or dropped ``CONCURRENTLY`` waits for the transactions older than it, and
    nobody queues behind that wait (it holds no lock a reader or writer needs): it waits as long
    as they last. Under the lock timeout it would fail over and over beside a long checkout. (A
    build that fails ends the connection: nothing runs after it without the timeout.)"""

    def before(_conn: Any, cursor: Any, statement: str, *_args: Any) -> None:
        if _CONCURRENTLY.search(statement):
            cursor.execute("SET lock_timeout = 0")  # outside a transaction (CONCURRENTLY must be)

    def after(_conn: Any, cursor: Any, statement: str, *_args: Any) -> None:
        if _CONCURRENTLY.search(statement):
            cursor.execute(f"SET lock_timeout = '{setting}'")

    event.listen(connection, "before_cursor_execute", before)
    event.listen(connection, "after_cursor_execute", after)


def _version_table_for_the_owner_only(connection: Connection, schema: str, app: str) -> None:
    """Alembic creates its version table as the owner, whose default privileges give the app role
    every new table of the schema: take them back (db/schemas/service_database.sql declares the
    table the migrations' alone). Nothing runs when there is nothing to take back."""
    granted = connection.execute(
        text(
            "SELECT EXISTS (SELECT FROM pg_class AS c "
            "JOIN pg_namespace AS n ON n.oid = c.relnamespace "
            "CROSS JOIN LATERAL aclexplode(c.relacl) AS a "
            "JOIN pg_roles AS r ON r.oid = a.grantee "
            "WHERE n.nspname = :schema AND c.relname = 'alembic_version' AND r.rolname = :app)"
        ),
        {"schema": schema, "app": app},
    ).scalar()
    if granted:
        connection.execute(text(f'REVOKE ALL ON TABLE "{schema}".alembic_version FROM "{app}"'))
    connection.commit()


class MigrateError(RuntimeError):
    """A service's migrations could not run: the message says which database and why."""


def known_revisions(service: str) -> set[str]:
    script = ScriptDirectory.from_config(alembic_config(service))
    return {revision.revision for revision in script.walk_revisions()}


def unknown_version(service: str, versions: Iterable[str]) -> str | None:
    """The difference, when the version table holds a revision the service's migrations do not
    know (a newer release migrated this database, or someone wrote the table by hand)."""
    unknown = sorted(set(versions) - known_revisions(service))
    if not unknown:
        return None
    spec = service_spec(service)
    return (
        f"{spec.database}: {spec.name}.alembic_version is at "
        f"{', '.join(repr(version) for version in unknown)}, which db/migrations/{service} "
        "does not know (a newer release's, or written by hand)"
    )


def head_revisions(service: str) -> set[str]:
    return set(ScriptDirectory.from_config(alembic_config(service)).get_heads())


def behind_head(service: str, versions: Iterable[str]) -> str | None:
    """The difference, when the version table is not at the service's head: the schema may even
    be at head (written by hand), but `rose db migrate` goes by the version table alone. A
    revision no migration knows is :func:`unknown_version`'s to name."""
    current = set(versions)
    heads = head_revisions(service)
    if current == heads or current - known_revisions(service):
        return None
    at = ", ".join(sorted(current)) or "no revision (never migrated)"
    return (
        f"{service_spec(service).database} at {at}, head {', '.join(sorted(heads))}: "
        "run rose db migrate"
    )


def versions_in(connection: psycopg.Connection, service: str) -> list[str]:
    """What the service's version table holds (nothing when it has none yet)."""
    schema = service_spec(service).name
    found = connection.execute(
        "SELECT to_regclass(format('%%I.alembic_version', %s::text)) IS NOT NULL", (schema,)
    ).fetchone()
    if not found or not found[0]:
        return []
    rows = connection.execute(f'SELECT version_num FROM "{schema}".alembic_version').fetchall()
    return [row[0] for row in rows]


def _error_line(exc: BaseException) -> str:
    cause = getattr(exc, "orig", None) or exc  # SQLAlchemy's wrapper: the driver's own error
    lines = str(cause).strip().splitlines()
    return lines[0] if lines else type(cause).__name__


def _down_revisions(revision: Script) -> set[str]:
    down = revision.down_revision
    if down is None:
        return set()
    return {down} if isinstance(down, str) else set(down)


class _LockWatch:
    """Beside a migration, every 0.1 s: whom its connection waits for (``pg_blocking_pids``),
    read on a connection of its own. What it last saw names the holders when the wait gives up;
    a wait longer than ``say_after`` (a build that waits without limit) is said while it lasts."""

    def __init__(self, admin_url: str, config: Config, say: Say, say_after: float = 5.0) -> None:
        self.admin_url, self.config, self.say, self.say_after = admin_url, config, say, say_after
        self.holders = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="migration-lock-watch")

    def __enter__(self) -> _LockWatch:
        self.config.attributes.pop("backend_pid", None)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        try:
            with psycopg.connect(
                self.admin_url, autocommit=True, connect_timeout=5,
                application_name="rose migrate: lock watch",
            ) as connection:  # fmt: skip
                self._poll(connection)
        except psycopg.Error:
            pass  # a watch that cannot read names nobody; the migration goes on without it

    def _poll(self, connection: psycopg.Connection[Any]) -> None:
        waiting_since: float | None = None
        said = ""
        while not self._stop.wait(0.1):
            pid = self.config.attributes.get("backend_pid")
            if pid is None:
                continue
            rows = connection.execute(_BLOCKERS, (pid,)).fetchall()
            if not rows:
                waiting_since = None
                continue
            self.holders = "; ".join(_holder(*row) for row in rows)
            waiting_since = waiting_since or time.monotonic()
            if time.monotonic() - waiting_since >= self.say_after and self.holders != said:
                said = self.holders
                waiting = connection.execute(_STATEMENT, (pid,)).fetchone()
                statement = _one_line(waiting[0] if waiting else "a migration")
                self.say(f"waiting: {statement} waits for a lock held by {said}")


_BLOCKERS = """
    SELECT a.query, a.pid, coalesce(nullif(a.application_name, ''), a.usename::text), a.state,
           extract(epoch FROM now() - coalesce(a.xact_start, a.query_start))::int
    FROM pg_stat_activity AS a
    WHERE a.pid = ANY (pg_blocking_pids(%s))
    ORDER BY a.xact_start
"""
_STATEMENT = "SELECT query FROM pg_stat_activity WHERE pid = %s"


def _one_line(statement: str | None, width: int = 70) -> str:
    line = " ".join((statement or "").split())
    return line if len(line) <= width else line[: width - 3] + "..."


def _holder(query: str, pid: int, application: str, state: str, seconds: int | None) -> str:
    since = f" for {seconds} s" if seconds is not None else ""
    return f"pid {pid} ({application}, {state}{since}: {_one_line(query, 50)})"


def _waited_for_a_lock(exc: BaseException) -> bool:
    """The statement gave up waiting for a lock (lock_timeout), or lost a deadlock: its
    migration's transaction rolled back whole, and a later try may find the lock free."""
    cause = getattr(exc, "orig", None) or exc
    return isinstance(cause, (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected))


def _running_revisions(config: Config, admin_url: str, current: list[str]) -> str:
    """The migration that failed: the one after the revisions the version table holds now."""
    try:
        with psycopg.connect(admin_url, connect_timeout=10) as connection:
            reached = set(versions_in(connection, service_of(config)))
    except psycopg.Error:
        reached = set(current)
    script = ScriptDirectory.from_config(config)
    failed = [
        revision.revision
        for revision in script.walk_revisions()
        if (_down_revisions(revision) & reached) or (not reached and not _down_revisions(revision))
    ]
    return f"migration {', '.join(failed)}" if failed else "migrating"


def service_of(config: Config) -> str:
    return config.config_ini_section


def upgrade(service: str, admin_url: str, say: Say | None = None) -> tuple[list[str], list[str]]:
    """One service to head, or :class:`MigrateError` in one line (nothing is half-applied: each
    migration runs in its own transaction). Its versions before and after. A migration that
    gave up waiting for a lock is tried again (:class:`LockPatience`), each time said."""
    say = say or (lambda _line: None)
    database = service_spec(service).database
    try:
        with psycopg.connect(admin_url, connect_timeout=10) as connection:
            current = versions_in(connection, service)
    except psycopg.Error as exc:
        raise MigrateError(f"{database}: {_error_line(exc)}") from exc
    problem = unknown_version(service, current)
    if problem:
        raise MigrateError(f"{problem}: nothing migrated")
    patience = LockPatience.from_environment()
    config = alembic_config(service, admin_url)
    config.attributes["lock_patience"] = patience
    for attempt in range(1, patience.tries + 1):
        watch = _LockWatch(admin_url, config, say)
        try:
            with watch:
                command.upgrade(config, "head")
            break
        except (CommandError, SQLAlchemyError, psycopg.Error) as exc:
            what = _running_revisions(config, admin_url, current)
            if not _waited_for_a_lock(exc):
                raise MigrateError(f"{database}: {what} failed: {_error_line(exc)}") from exc
            held = watch.holders or "a transaction that has ended since"
            if attempt == patience.tries:
                raise MigrateError(
                    f"{database}: {what} failed: {_error_line(exc)} ({patience.tries} tries of "
                    f"{patience.timeout:g} s; the lock held by {held})"
                ) from exc
            say(
                f"{database}: {what} waited {patience.timeout:g} s for a lock held by {held}; "
                f"trying again ({attempt + 1} of {patience.tries})"
            )
            time.sleep(min(1.0, patience.timeout))
    try:
        with psycopg.connect(admin_url, connect_timeout=10) as connection:
            return current, versions_in(connection, service)
    except psycopg.Error as exc:
        raise MigrateError(f"{database}: {_error_line(exc)}") from exc


def migrate(admin_url_for: dict[str, str], services: Iterable[str] | None = None) -> list[str]:
    """Upgrade each service to head. ``admin_url_for`` maps service -> superuser DSN of its db."""
    return [step.service for step in migrate_steps(admin_url_for, services)]


@dataclass(frozen=True)
class Step:
    """What migrating one service did: its versions before (none: a new database) and after."""

    service: str
    before: list[str]
    after: list[str]

    @property
    def moved(self) -> bool:
        return set(self.before) != set(self.after)

    def text(self) -> str:
        after = "+".join(self.after)
        return (
            f"{self.service} {'+'.join(self.before)} -> {after}"
            if self.before
            else (f"{self.service} to {after}")
        )


def migrate_steps(
    admin_url_for: dict[str, str], services: Iterable[str] | None = None, say: Say | None = None
) -> list[Step]:
    """``migrate``, with each service's versions before and after."""
    return [
        Step(service, *upgrade(service, admin_url_for[service], say))
        for service in services or services_with_migrations()
    ]


def steps_line(steps: Iterable[Step], label: str = "migrated") -> str:
    """One line an operator reads after an upgrade: which services moved, from which revision to
    which, and which were at head already (a plain restart: nothing)."""
    steps = list(steps)
    moved = [step.text() for step in steps if step.moved]
    still = [step.service for step in steps if not step.moved]
    line = f"{label}: {', '.join(moved) or 'nothing'}"
    return f"{line}; at head already: {', '.join(still)}" if still else line


def current_heads(service: str, admin_url: str) -> set[str]:
    from alembic.runtime.migration import MigrationContext

    engine = create_engine(make_url(admin_url).set(drivername="postgresql+psycopg"))
    with engine.connect() as connection:
        migration = MigrationContext.configure(
            connection, opts={"version_table_schema": service_spec(service).name}
        )
        heads = set(migration.get_current_heads())
    engine.dispose()
    return heads

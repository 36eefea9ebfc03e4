"""Alembic, one environment per service.

Migrations connect as a superuser (or any role allowed to ``SET ROLE <svc>_owner``) and run as
``<svc>_owner``, so every object they create belongs to the owner and gets the default privileges
provisioning declared. Each migration runs in its own transaction.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable

import psycopg
from alembic import command, context
from alembic.config import Config
from sqlalchemy import MetaData, create_engine, pool, text
from sqlalchemy.engine import make_url

from apps.registry import SERVICES, service_spec
from ops.paths import ALEMBIC_INI, DB_DIR, stack_state_path

MIGRATIONS_DIR = DB_DIR / "migrations"


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
    url = context.config.attributes.get("admin_url") or _admin_url_for(service)
    url = make_url(url).set(drivername="postgresql+psycopg")
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        connection.execute(text(f'SET ROLE "{spec.owner_role}"'))
        connection.commit()
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            version_table_schema=spec.name,
            transaction_per_migration=True,
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        if after_migrations is not None:
            raw = connection.connection.driver_connection
            if not isinstance(raw, psycopg.Connection):  # postgresql+psycopg's own connection
                raise TypeError(f"expected a psycopg connection, not {type(raw).__name__}")
            after_migrations(raw, service)
            raw.commit()
    engine.dispose()


def migrate(admin_url_for: dict[str, str], services: Iterable[str] | None = None) -> list[str]:
    """Upgrade each service to head. ``admin_url_for`` maps service -> superuser DSN of its db."""
    done = []
    for service in services or services_with_migrations():
        command.upgrade(alembic_config(service, admin_url_for[service]), "head")
        done.append(service)
    return done


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

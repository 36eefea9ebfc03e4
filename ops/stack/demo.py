"""Demo data for ``rose up``: each service may ship ``apps/<svc>/demo.py`` with
``seed(connection)``, which fills its own tables when they are empty (and does nothing else), and
``FILLS``, those tables ("schema.table"): a service whose tables any of them already holds rows
of (a split's, the operator's own) gets none, and a line says which. ``ATTACHES_TO``: the
services whose demo rows its own name by id (blog's pages 1 and 2): when one of them got none,
neither does it (its rows would name the home's own pages)."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Iterable

from sqlalchemy import create_engine, pool, text
from sqlalchemy.engine import Connection, make_url

from apps.registry import service_spec
from ops.db.topology import Topology


def _holding_rows(connection: Connection, tables: Iterable[str]) -> list[str]:
    """Of ``tables``, those that hold a row."""
    return [
        table
        for table in tables
        # The names are the demo modules' own constants, never input.
        if connection.scalar(text(f"SELECT EXISTS (SELECT FROM {table})"))
    ]


def seed_demo_data(topology: Topology, services: Iterable[str], say: Callable[[str], None]) -> None:
    left: list[str] = []
    for name in services:
        module_name = f"apps.{name}.demo"
        if importlib.util.find_spec(module_name) is None:
            continue
        module = importlib.import_module(module_name)
        without = [other for other in getattr(module, "ATTACHES_TO", ()) if other in left]
        if without:
            left.append(name)
            say(
                f"demo data for {name}: not added, it names the demo rows of "
                f"{', '.join(without)}, which were not added"
            )
            continue
        url = make_url(topology.admin_url(name)).set(drivername="postgresql+psycopg")
        engine = create_engine(url, poolclass=pool.NullPool)
        with engine.begin() as connection:
            # As the owner, like migrations: the rows belong to the service, not to a superuser.
            connection.execute(text(f'SET LOCAL ROLE "{service_spec(name).owner_role}"'))
            fills: tuple[str, ...] = module.FILLS
            # Every table it fills, not only the one its seed looks at: a split's page configs
            # without blog's posts (they stay in legacy.posts) made the demo's own collide.
            holding = _holding_rows(connection, fills)
            summary = None if holding else module.seed(connection)
        engine.dispose()
        if holding and len(holding) < len(fills):
            left.append(name)
            verb = "holds" if len(holding) == 1 else "hold"
            say(f"demo data for {name}: not added, {', '.join(holding)} {verb} rows")
        elif summary:
            say(f"demo data for {name}: {summary}")

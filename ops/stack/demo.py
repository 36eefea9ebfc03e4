"""Demo data for ``rose up``: each service may ship ``apps/<svc>/demo.py`` with
``seed(connection)``, which fills its own tables when they are empty (and does nothing else), and
``FILLS``, those tables ("schema.table"): a service whose tables any of them already holds rows
of (a split's, the operator's own) gets none, and a line says which. ``ATTACHES_TO``: the
services whose demo rows its own name by id (blog's pages 1 and 2): when one of them got none,
neither does it (its rows would name the home's own pages). One whose tables hold rows already
got none, unless they are the demo's (``holds_demo(connection)``: an earlier start's, or
``rose up --only``'s): a home's own pages 1 and 2 get no demo goods, calendars or attachments."""

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
        url = make_url(topology.admin_url(name)).set(drivername="postgresql+psycopg")
        engine = create_engine(url, poolclass=pool.NullPool)
        summary = None
        with engine.begin() as connection:
            # As the owner, like migrations: the rows belong to the service, not to a superuser.
            connection.execute(text(f'SET LOCAL ROLE "{service_spec(name).owner_role}"'))
            fills: tuple[str, ...] = module.FILLS
            # Every table it fills, not only the one its seed looks at: a split's page configs
            # without blog's posts (they stay in legacy.posts) made the demo's own collide.
            holding = _holding_rows(connection, fills)
            holds_demo = getattr(module, "holds_demo", None)
            if len(holding) == len(fills) and holds_demo is not None:
                # The home's own rows (no line: every restart of such a home has them).
                if not holds_demo(connection):
                    left.append(name)
            elif not holding and not without:
                summary = module.seed(connection)
        engine.dispose()
        if without and not holding:
            left.append(name)
            say(
                f"demo data for {name}: not added, it names the demo rows of "
                f"{', '.join(without)}, which were not added"
            )
        elif holding and len(holding) < len(fills):
            left.append(name)
            verb = "holds" if len(holding) == 1 else "hold"
            say(f"demo data for {name}: not added, {', '.join(holding)} {verb} rows")
        elif summary:
            say(f"demo data for {name}: {summary}")

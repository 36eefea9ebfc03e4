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
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from types import ModuleType

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


def _demo_module(name: str) -> ModuleType | None:
    module_name = f"apps.{name}.demo"
    if importlib.util.find_spec(module_name) is None:
        return None
    return importlib.import_module(module_name)


@contextmanager
def _as_owner(topology: Topology, name: str) -> Iterator[Connection]:
    """A transaction on ``name``'s database as its owner, like migrations: the rows belong to
    the service, not to a superuser."""
    url = make_url(topology.admin_url(name)).set(drivername="postgresql+psycopg")
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.begin() as connection:
            connection.execute(text(f'SET LOCAL ROLE "{service_spec(name).owner_role}"'))
            yield connection
    finally:
        engine.dispose()


def _holds_its_demo(topology: Topology, name: str) -> bool:
    """Whether a service this start does not seed holds its demo rows (an earlier start's, or
    ``rose up --only``'s), so that another's demo rows may name them."""
    module = _demo_module(name)
    holds_demo = getattr(module, "holds_demo", None)
    if module is None or holds_demo is None:
        return False
    with _as_owner(topology, name) as connection:
        fills: tuple[str, ...] = module.FILLS
        return len(_holding_rows(connection, fills)) == len(fills) and bool(holds_demo(connection))


def seed_demo_data(topology: Topology, services: Iterable[str], say: Callable[[str], None]) -> None:
    services = list(services)
    # A service whose demo rows another's name, not seeded by this start (``rose up --only``):
    # as one that got none unless it holds its demo's (review 4: market's went on the home's
    # own pages 1 and 2 when blog was left out of the start).
    attached = {
        other
        for name in services
        for other in getattr(_demo_module(name), "ATTACHES_TO", ())
        if other not in services
    }
    left: list[str] = [other for other in sorted(attached) if not _holds_its_demo(topology, other)]
    for name in services:
        module = _demo_module(name)
        if module is None:
            continue
        without = [other for other in getattr(module, "ATTACHES_TO", ()) if other in left]
        summary = None
        with _as_owner(topology, name) as connection:
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

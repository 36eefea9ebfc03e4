"""Demo data for ``rose up``: each service may ship ``apps/<svc>/demo.py`` with
``seed(connection)``, which fills its own tables when they are empty (and does nothing else)."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Iterable

from sqlalchemy import create_engine, pool, text
from sqlalchemy.engine import make_url

from apps.registry import service_spec
from ops.db.topology import Topology


def seed_demo_data(topology: Topology, services: Iterable[str], say: Callable[[str], None]) -> None:
    for name in services:
        module_name = f"apps.{name}.demo"
        if importlib.util.find_spec(module_name) is None:
            continue
        module = importlib.import_module(module_name)
        url = make_url(topology.admin_url(name)).set(drivername="postgresql+psycopg")
        engine = create_engine(url, poolclass=pool.NullPool)
        with engine.begin() as connection:
            # As the owner, like migrations: the rows belong to the service, not to a superuser.
            connection.execute(text(f'SET LOCAL ROLE "{service_spec(name).owner_role}"'))
            summary = module.seed(connection)
        engine.dispose()
        if summary:
            say(f"demo data for {name}: {summary}")

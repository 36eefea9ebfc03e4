"""A request's dependencies are resolved one after another, in the request's own task.

Litestar resolves the dependencies of a request that do not depend on each other at once, each
in a task of an anyio task group (litestar-org/litestar#4563). Every provider of this platform
hands out an object it already has, or reads the database through the request's one session,
which two tasks must never use at once; the task group only cost each request (bench/README.md,
issue #14's nineteenth pass)."""

from __future__ import annotations

import asyncio
import importlib

from litestar import Litestar, get
from litestar.di import NamedDependency, Provide
from litestar.routes import HTTPRoute
from litestar.testing import TestClient

from apps.common.app_factory import resolve_dependencies_in_order
from apps.registry import CONTRACTS, service_spec, settings_for

ENVIRON = {
    "ROSE_ENV": "dev",
    # Never connected to: an app opens its pool in its lifespan, which is not run here.
    "DATABASE_URL": "postgresql+psycopg://nobody:nothing@127.0.0.1:9/none",
    "INTERNAL_SECRET": "unit-test-internal-secret-0123456789",
    "SESSION_SECRET": "unit-test-session-secret-0123456789",
}


def test_independent_dependencies_run_in_the_request_task_one_after_another() -> None:
    tasks: dict[str, asyncio.Task[object] | None] = {}

    def provide_first() -> int:
        tasks["first"] = asyncio.current_task()
        return 1

    def provide_second() -> int:
        tasks["second"] = asyncio.current_task()
        return 2

    @get("/")
    async def both(first: NamedDependency[int], second: NamedDependency[int]) -> dict[str, int]:
        tasks["handler"] = asyncio.current_task()
        return {"sum": first + second}

    app = Litestar(
        [both],
        dependencies={
            "first": Provide(provide_first, sync_to_thread=False),
            "second": Provide(provide_second, sync_to_thread=False),
        },
    )
    resolve_dependencies_in_order(app)
    with TestClient(app) as client:
        assert client.get("/").json() == {"sum": 3}
    assert tasks["handler"] is not None
    assert tasks["first"] is tasks["handler"]
    assert tasks["second"] is tasks["handler"]


def test_every_route_of_every_service_resolves_its_dependencies_one_at_a_time() -> None:
    """Every service's app, as ``rose up`` builds it: no route resolves two dependencies at once
    (the orders webhook's database session and runtime did, as did most routes)."""
    at_once = []
    for name, contract in CONTRACTS.items():
        module = importlib.import_module(service_spec(name).app_module)
        app = module.create_app(settings_for(contract, ENVIRON))
        for route in app.routes:
            if not isinstance(route, HTTPRoute):
                continue
            for method, (_, model) in route.route_handler_map.items():
                if any(len(batch) > 1 for batch in model.dependency_batches):
                    at_once.append(f"{name} {method} {route.path}")
    assert at_once == []

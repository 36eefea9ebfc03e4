"""The services of the system, their dev ports and whether browsers reach them.

One table, used by settings, provisioning, the local stack and the tests, so that adding a service
is one line here plus its package.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    dev_port: int
    public: bool

    @property
    def database(self) -> str:
        return f"db_{self.name}"

    @property
    def owner_role(self) -> str:
        return f"{self.name}_owner"

    @property
    def app_role(self) -> str:
        return f"{self.name}_app"

    @property
    def app_module(self) -> str:
        return f"apps.{self.name}.app"


SERVICES: dict[str, ServiceSpec] = {
    spec.name: spec
    for spec in (
        ServiceSpec("blog", 8001, public=True),
        ServiceSpec("market", 8002, public=True),
        ServiceSpec("cart", 8003, public=True),
        ServiceSpec("events", 8004, public=True),
        ServiceSpec("relations", 8008, public=False),
        ServiceSpec("likes", 8009, public=False),
        ServiceSpec("orders", 8010, public=True),
    )
}


def service_spec(name: str) -> ServiceSpec:
    try:
        return SERVICES[name]
    except KeyError:
        known = ", ".join(sorted(SERVICES))
        raise ValueError(f"unknown service {name!r}; known services: {known}") from None

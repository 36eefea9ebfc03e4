"""What the operations side knows of a service: its name, dev port, whether browsers reach it,
and the names that follow from them (database, roles, app module). The table of the system's
services is apps.registry.SERVICES, derived from the contracts.
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

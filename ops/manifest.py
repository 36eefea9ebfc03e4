"""The FDW edge manifest (``db/fdw/manifest.toml``)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from apps.common.services import service_spec
from ops.sqlfiles import DB_DIR

MANIFEST_PATH = DB_DIR / "fdw" / "manifest.toml"


@dataclass(frozen=True)
class Edge:
    consumer: str
    provider: str
    views: tuple[str, ...]
    purpose: str

    @property
    def reader_role(self) -> str:
        return f"{self.provider}_ro_{self.consumer}"

    @property
    def server_name(self) -> str:
        """The foreign server in the consumer database that points at the provider."""
        return f"{self.provider}_server"

    def __str__(self) -> str:
        return f"{self.consumer} <- {self.provider} ({', '.join(self.views)})"


def load_edges(path: Path = MANIFEST_PATH) -> list[Edge]:
    data = tomllib.loads(path.read_text())
    edges = []
    for entry in data.get("edge", []):
        edge = Edge(
            consumer=entry["consumer"],
            provider=entry["provider"],
            views=tuple(entry["views"]),
            purpose=entry.get("purpose", ""),
        )
        service_spec(edge.consumer)
        service_spec(edge.provider)
        if edge.consumer == edge.provider:
            raise ValueError(f"edge {edge}: a service does not read itself through FDW")
        edges.append(edge)
    return edges

"""The FDW edge manifest (``db/fdw/manifest.toml``): edges, the columns each one reads, secrets."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from apps.registry import service_spec
from ops.paths import DB_DIR

MANIFEST_PATH = DB_DIR / "fdw" / "manifest.toml"

# "name type", the type as format_type() spells it: the SQL files put it into CREATE FOREIGN TABLE.
_COLUMN = re.compile(r"^(?P<name>[a-z_][a-z0-9_]*)\s+(?P<type>[a-z][a-z0-9 ,()]*[a-z0-9)])$")
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")


class ManifestError(ValueError):
    pass


@dataclass(frozen=True)
class Column:
    name: str
    type: str

    def __str__(self) -> str:
        return f"{self.name} {self.type}"


@dataclass(frozen=True)
class Edge:
    consumer: str
    provider: str
    views: tuple[str, ...]
    purpose: str
    # view -> the columns this edge reads, in order
    columns: Mapping[str, tuple[Column, ...]] = field(default_factory=dict, compare=False)

    @property
    def reader_role(self) -> str:
        return f"{self.provider}_ro_{self.consumer}"

    @property
    def server_name(self) -> str:
        """The foreign server in the consumer database that points at the provider."""
        return f"{self.provider}_server"

    def __str__(self) -> str:
        return f"{self.consumer} <- {self.provider} ({', '.join(self.views)})"


@dataclass(frozen=True)
class Secret:
    """A provider column that only the listed export views may read."""

    provider: str
    schema: str
    table: str
    column: str
    only_in: tuple[str, ...]
    why: str

    def __str__(self) -> str:
        return f"{self.schema}.{self.table}.{self.column}"


def _column(text: str, where: str) -> Column:
    match = _COLUMN.match(" ".join(text.split()))
    if match is None:
        raise ManifestError(f"{where}: column {text!r} is not 'name type'")
    return Column(match["name"], match["type"])


def _edge(entry: dict[str, object]) -> Edge:
    consumer, provider = str(entry["consumer"]), str(entry["provider"])
    service_spec(consumer)
    service_spec(provider)
    where = f"edge {consumer} <- {provider}"
    if consumer == provider:
        raise ManifestError(f"{where}: a service does not read itself through FDW")
    views = entry.get("views")
    if not isinstance(views, dict) or not views:
        raise ManifestError(f"{where}: views must map each view to its columns")
    columns: dict[str, tuple[Column, ...]] = {}
    for view, declared in views.items():
        if not _IDENTIFIER.match(view):
            raise ManifestError(f"{where}: {view!r} is not a plain view name")
        if not isinstance(declared, list) or not declared:
            raise ManifestError(f"{where}: view {view} declares no columns")
        parsed = tuple(_column(str(text), f"{where} view {view}") for text in declared)
        names = [column.name for column in parsed]
        if len(set(names)) != len(names):
            raise ManifestError(f"{where}: view {view} declares a column twice")
        columns[view] = parsed
    return Edge(consumer, provider, tuple(columns), str(entry.get("purpose", "")), columns)


def _secret(entry: dict[str, object]) -> Secret:
    provider = str(entry["provider"])
    service_spec(provider)
    parts = str(entry["column"]).split(".")
    if len(parts) != 3 or not all(_IDENTIFIER.match(part) for part in parts):
        raise ManifestError(f"secret {entry['column']!r}: expected schema.table.column")
    only_in = entry.get("only_in", [])
    if not isinstance(only_in, list):
        raise ManifestError(f"secret {entry['column']}: only_in must list view names")
    schema, table, column = parts
    views = tuple(str(view) for view in only_in)
    return Secret(provider, schema, table, column, views, str(entry.get("why", "")))


def _load(path: Path) -> dict[str, object]:
    return tomllib.loads(path.read_text())


def load_edges(path: Path = MANIFEST_PATH) -> list[Edge]:
    entries = _load(path).get("edge", [])
    assert isinstance(entries, list)
    edges = [_edge(entry) for entry in entries]
    pairs = [(edge.consumer, edge.provider) for edge in edges]
    if len(set(pairs)) != len(pairs):
        raise ManifestError("an edge (consumer, provider) is declared twice")
    return edges


def load_secrets(path: Path = MANIFEST_PATH) -> list[Secret]:
    entries = _load(path).get("secret", [])
    assert isinstance(entries, list)
    return [_secret(entry) for entry in entries]

"""The four moves of the split (docs/DESIGN.md section 6): which legacy tables each reads, where it
writes, and the SQL that does it. The SQL lives in ``db/migrations/split`` and ``db/legacy``;
this module only names it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from apps.common.services import service_spec
from ops.sqlfiles import DB_DIR

SPLIT_DIR = DB_DIR / "migrations" / "split"
CHECKSUM_DIR = SPLIT_DIR / "checksums"
LEGACY_DIR = DB_DIR / "legacy"

# The databases of the monolith, in the order seed-legacy fills them.
LEGACY_SERVICES = ("market", "blog", "cart")


@dataclass(frozen=True)
class SourceTable:
    """A table in schema ``legacy`` of a source database that a move reads.

    ``moved`` tables are accounted row by row (each row is moved, collapsed or skipped);
    the others are only looked up while transforming (a product's slug, a page's config)."""

    service: str
    table: str
    moved: bool = True

    @property
    def database(self) -> str:
        return service_spec(self.service).database

    @property
    def stage(self) -> str:
        """The temporary table in the target's transaction that holds this table's rows."""
        return f"stage_{self.table}"

    def __str__(self) -> str:
        return f"{self.database} legacy.{self.table}"


@dataclass(frozen=True)
class Check:
    """One checksum comparison: the view ``split_check_<name>`` on both sides."""

    name: str
    target_table: str
    # What the view's ``bucket`` column is, for the messages that locate a difference.
    bucket: str = "id"

    @property
    def view(self) -> str:
        return f"split_check_{self.name}"


@dataclass(frozen=True)
class Move:
    name: str
    target: str
    sources: tuple[SourceTable, ...]
    target_tables: tuple[str, ...]
    checks: tuple[Check, ...]
    # The source databases whose checksum file (checksums/<move>.<service>.sql) builds the
    # source side of the check views; a lookup-only database has none.
    checked_in: tuple[str, ...]
    # Whether the target rows keep the source ids (and the move fixes the sequences).
    keeps_ids: bool = True

    @property
    def target_database(self) -> str:
        return service_spec(self.target).database

    @property
    def transform_file(self) -> Path:
        return SPLIT_DIR / f"{self.name}.sql"

    @property
    def source_services(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(source.service for source in self.sources))

    def checksum_file(self, side: str) -> Path:
        """``side`` is a source service or ``target``."""
        return CHECKSUM_DIR / f"{self.name}.{side}.sql"

    def sources_in(self, service: str) -> list[SourceTable]:
        return [source for source in self.sources if source.service == service]

    @property
    def moved_tables(self) -> list[SourceTable]:
        return [source for source in self.sources if source.moved]


MOVES: tuple[Move, ...] = (
    Move(
        name="relations",
        target="relations",
        sources=(SourceTable("cart", "container_relations"),),
        target_tables=("relations.container_relations",),
        checks=(Check("container_relations", "relations.container_relations"),),
        checked_in=("cart",),
    ),
    Move(
        name="likes",
        target="likes",
        sources=(
            SourceTable("market", "product_likes"),
            SourceTable("market", "products", moved=False),
            SourceTable("blog", "post_likes"),
            SourceTable("blog", "posts", moved=False),
        ),
        target_tables=("likes.likes",),
        checks=(Check("likes", "likes.likes", bucket="user_id"),),
        checked_in=("market", "blog"),
        keeps_ids=False,
    ),
    Move(
        name="page_configs",
        target="blog",
        sources=(SourceTable("cart", "page_configs"),),
        target_tables=("blog.page_configs",),
        checks=(Check("page_configs", "blog.page_configs"),),
        checked_in=("cart",),
    ),
    Move(
        name="orders",
        target="orders",
        sources=(
            SourceTable("cart", "orders"),
            SourceTable("cart", "order_items"),
            SourceTable("cart", "page_configs", moved=False),
            SourceTable("market", "products", moved=False),
        ),
        target_tables=("orders.orders", "orders.order_items", "orders.payment_attempts"),
        checks=(
            Check("orders", "orders.orders"),
            Check("order_items", "orders.order_items"),
            Check("payment_attempts", "orders.payment_attempts", bucket="order_id"),
        ),
        checked_in=("cart",),
    ),
)

MOVES_BY_NAME = {move.name: move for move in MOVES}


def select_moves(names: list[str] | None) -> list[Move]:
    """The moves named (in the split's order), or all of them."""
    if not names:
        return list(MOVES)
    unknown = [name for name in names if name not in MOVES_BY_NAME]
    if unknown:
        known = ", ".join(MOVES_BY_NAME)
        raise ValueError(f"unknown move {', '.join(unknown)}; the moves are {known}")
    return [move for move in MOVES if move.name in names]


def tables_read_in(service: str) -> list[str]:
    """Every legacy table of ``service``'s database that some move reads (what finalize drops)."""
    tables = [
        source.table for move in MOVES for source in move.sources if source.service == service
    ]
    return list(dict.fromkeys(tables))

"""The moves of the split (docs/DESIGN.md section 6) and the classification of every legacy table:
which move moves it (and finalize drops it), or why it is kept. The SQL lives in
``db/split`` and ``db/legacy``; this module only names it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apps.registry import service_spec
from ops.paths import DB_DIR

SPLIT_DIR = DB_DIR / "split"
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


def recorded_definition(recorded: Mapping[str, Any]) -> int:
    """The check definition a ledger's checksum ``recorded`` was taken with (none: the first)."""
    return int(recorded.get("definition", 1))


@dataclass(frozen=True)
class Check:
    """One checksum comparison: the view ``split_check_<name>`` on both sides."""

    name: str
    target_table: str
    # What the view's ``bucket`` column is, for the messages that locate a difference.
    bucket: str = "id"
    # Which columns the view covers, numbered from 1; the ledger records the number with each
    # checksum of the commit. A view that changes gets the next number, and its checksum files
    # keep each earlier one as ``<view>_v<n>``: a ledger's checksums are compared with the
    # definition they were taken with, so an honest split recorded before is not "changed".
    definition: int = 1

    @property
    def view(self) -> str:
        return f"split_check_{self.name}"

    def view_for(self, recorded: Mapping[str, Any]) -> str:
        """The view of the definition a ledger's checksum ``recorded`` was taken with (no
        number: the first)."""
        number = recorded_definition(recorded)
        if number == self.definition:
            return self.view
        if number > self.definition:
            raise ValueError(
                f"{self.target_table}: the ledger's checksum was taken with check definition "
                f"{number}, newer than this version's {self.definition}: use the newer rose"
            )
        return f"{self.view}_v{number}"


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
        name="cart",
        target="cart",
        sources=(
            SourceTable("cart", "cart_items"),
            SourceTable("market", "products", moved=False),
        ),
        target_tables=("cart.cart_items",),
        checks=(Check("cart_items", "cart.cart_items"),),
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
            # 2: payable_until, which the move fills, covered too (audit s20b L1).
            Check("orders", "orders.orders", definition=2),
            Check("order_items", "orders.order_items"),
            # 2: whether it is the attempt its order was paid with (orders 0015). 3: the attempt
            # of an expired or cancelled legacy order is open (PENDING), which only the source
            # side derives differently.
            Check("payment_attempts", "orders.payment_attempts", bucket="order_id", definition=3),
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


@dataclass(frozen=True)
class LegacyTable:
    """What the split does with one table of schema ``legacy``: moved by ``moved_by`` (finalize
    drops it once that move and every move that reads it are finalized), or kept (``kept``
    says why: a lookup the split reads but does not own)."""

    service: str
    table: str
    moved_by: str | None = None
    kept: str | None = None

    def __post_init__(self) -> None:
        if (self.moved_by is None) == (self.kept is None):
            raise ValueError(f"legacy.{self.table}: either moved by a move or kept, not both")

    @property
    def database(self) -> str:
        return service_spec(self.service).database

    @property
    def read_by(self) -> tuple[str, ...]:
        """Every move that reads the table (its mover first)."""
        return tuple(
            move.name
            for move in MOVES
            if any(s.service == self.service and s.table == self.table for s in move.sources)
        )

    def describe(self) -> str:
        readers = [name for name in self.read_by if name != self.moved_by]
        looked_up = f"; looked up by {', '.join(readers)}" if readers else ""
        if self.moved_by is not None:
            after = ", ".join(dict.fromkeys((self.moved_by, *readers)))
            return (
                f"moved by {self.moved_by}{looked_up}; dropped by finalize "
                f"(after {after} {'is' if after == self.moved_by else 'are'} verified)"
            )
        return f"kept ({self.kept}){looked_up}; finalize keeps it and lifts its freeze"

    def __str__(self) -> str:
        return f"{self.database} legacy.{self.table}"


# Every table of the monolith, in ONE place: `rose split plan` prints this, finalize drops only
# the moved ones, and a legacy table missing here is reported (and never dropped).
LEGACY_TABLES: tuple[LegacyTable, ...] = (
    LegacyTable("cart", "container_relations", moved_by="relations"),
    LegacyTable("cart", "page_configs", moved_by="page_configs"),
    LegacyTable("cart", "orders", moved_by="orders"),
    LegacyTable("cart", "order_items", moved_by="orders"),
    LegacyTable("cart", "cart_items", moved_by="cart"),
    LegacyTable("market", "product_likes", moved_by="likes"),
    LegacyTable(
        "market",
        "products",
        kept="market's catalogue: no move owns it; likes, orders and cart only look slugs up",
    ),
    LegacyTable("blog", "post_likes", moved_by="likes"),
    LegacyTable("blog", "posts", kept="blog's posts: no move owns it; likes only checks ids"),
)


def legacy_table(service: str, table: str) -> LegacyTable | None:
    for declared in LEGACY_TABLES:
        if (declared.service, declared.table) == (service, table):
            return declared
    return None


def tables_dropped_in(service: str, moves: list[str] | None = None) -> list[str]:
    """The legacy tables of ``service``'s database that finalize drops (all, or those whose
    mover and readers are all among ``moves``)."""
    return [
        declared.table
        for declared in LEGACY_TABLES
        if declared.service == service
        and declared.moved_by is not None
        and (moves is None or set(declared.read_by) <= set(moves))
    ]


def tables_read_in(service: str) -> list[str]:
    """The legacy tables of ``service``'s database that the split drops at finalize (``rose db
    check`` notes them as "not finalized" while they exist). Lookups it keeps are not listed."""
    return tables_dropped_in(service)


def _check_classification() -> None:
    """Every table a move reads is classified, and a moved table is a moved source of its
    mover: checked at import, so a new move cannot forget its tables."""
    for move in MOVES:
        for source in move.sources:
            declared = legacy_table(source.service, source.table)
            if declared is None:
                raise ValueError(f"{source} (read by {move.name}) is not in LEGACY_TABLES")
            if source.moved != (declared.moved_by == move.name):
                raise ValueError(f"{source}: LEGACY_TABLES and move {move.name} disagree")


_check_classification()

"""Change capture for ``rose split sync``: trigger-based change tables in the source databases.

Why triggers and not logical replication (measured and reasoned in docs/runbook-split.md,
"Online: why trigger capture"): a change row commits in the writer's own transaction, so a
crash of anything loses or invents nothing; it needs no ``wal_level=logical`` (no restart of a
production server, no slot that holds WAL and fills a disk when the sync stops); and the
moves' transforms are set-based SQL over whole groups of rows (likes collapse per user and
target, relations per parent and child, orders take their merchant from page configs), so the
sync needs WHICH groups changed, not the row images a logical stream carries.

What is captured is the GROUP KEY of every changed row (``Captured.key``): the sync re-runs the
move's transform for every captured key from the source rows as they are when it applies them,
replacing the target rows of that key. Applying a key is therefore idempotent and order-free,
which is what makes the snapshot handover and the crash recovery simple (see ops/split/sync.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg

from apps.registry import service_spec
from ops.db.topology import Topology
from ops.split.common import SplitError, connect, execute_sql
from ops.split.moves import LEGACY_SERVICES, SPLIT_DIR, Move

CAPTURE_SCHEMA = "split_capture"
CAPTURE_LOCK_TIMEOUT = "10s"
SYNC_DIR = SPLIT_DIR / "sync"


@dataclass(frozen=True)
class Captured:
    """One legacy table whose changes a move captures.

    ``key`` is the group key as SQL over a row named ``{r}`` (NEW, OLD, the legacy table, a
    staged row); ``prefilter`` is an indexed column and its position in the key (so staging
    the rows of some keys does not scan the whole table). A lookup table (the move reads it but
    does not move it) has ``expand``: SQL run in a source database (``expand_in``, else the
    lookup's own) that turns the captured lookup keys (``%(keys)s``, a jsonb array) into keys
    of the moved table ``expands_to``; with ``keep_keys`` the lookup keys themselves also reach
    the round's ``sync_keys`` (under the lookup table's name), for a delete file that needs
    what the lookup row was (a product's slug before a rename). A moved table with
    ``expands_to`` and no ``expand`` shares that table's keys."""

    service: str
    table: str
    key: str
    prefilter: tuple[str, int, str] | None = None
    expands_to: str | None = None
    expand: str | None = None
    # The columns whose change matters to the move (an update of the others is not captured);
    # None: every column.
    columns: tuple[str, ...] | None = None
    expand_in: str | None = None
    keep_keys: bool = False

    def update_when(self) -> str:
        if self.columns is None:
            # As jsonb: a json column has no equality operator.
            return "to_jsonb(OLD) IS DISTINCT FROM to_jsonb(NEW)"
        old = ", ".join(f"OLD.{column}" for column in self.columns)
        new = ", ".join(f"NEW.{column}" for column in self.columns)
        return f"row({old}) IS DISTINCT FROM row({new})"

    @property
    def key_space(self) -> str:
        """The moved table whose keys this table's changes become (its own, by default)."""
        return self.expands_to or self.table

    def key_of(self, row: str) -> str:
        return self.key.format(r=row)

    def stage_condition(self) -> str:
        """The WHERE of the rows of the keys in ``%(keys)s`` (a jsonb array of keys)."""
        exact = (
            f"{self.key_of(f'legacy.{self.table}')} IN "
            "(SELECT jsonb_array_elements(%(keys)s::jsonb))"
        )
        if self.prefilter is None:
            return exact
        column, position, type_name = self.prefilter
        return (
            f"{column} = ANY(ARRAY(SELECT DISTINCT (k ->> {position})::{type_name} "
            f"FROM jsonb_array_elements(%(keys)s::jsonb) AS k)) AND {exact}"
        )


@dataclass(frozen=True)
class SyncRules:
    """How ``sync`` applies a move's changes: what it captures, which rows of the lookup tables
    it stages (``lookups``: table -> SQL run in the target after the moved rows are staged,
    giving the ids to stage as a bigint[]; a table not listed is staged whole), and the SQL that
    deletes the target rows of the keys in ``sync_keys`` (``db/split/sync/<move>.sql``)."""

    move: str
    captured: tuple[Captured, ...]
    lookups: dict[str, str] = field(default_factory=dict)

    @property
    def delete_file(self) -> Any:
        return SYNC_DIR / f"{self.move}.sql"

    def captured_in(self, service: str) -> list[Captured]:
        return [item for item in self.captured if item.service == service]

    def of(self, table: str) -> Captured:
        return next(item for item in self.captured if item.table == table)


_PRODUCT_LIKES_OF_PRODUCTS = """
SELECT DISTINCT jsonb_build_array(l.user_id, l.product_id)
FROM legacy.product_likes AS l
WHERE l.product_id IN (SELECT (k ->> 0)::integer FROM jsonb_array_elements(%(keys)s::jsonb) AS k)
"""

_POST_LIKES_OF_POSTS = """
SELECT DISTINCT jsonb_build_array(l.user_id, l.post_id)
FROM legacy.post_likes AS l
WHERE l.post_id IN (SELECT (k ->> 0)::integer FROM jsonb_array_elements(%(keys)s::jsonb) AS k)
"""

# In db_cart: the lines of the products (db_market) whose rows changed.
_CART_LINES_OF_PRODUCTS = """
SELECT DISTINCT jsonb_build_array(c.user_id, CASE WHEN c.user_id IS NULL THEN c.session_id END,
                                  c.product_id)
FROM legacy.cart_items AS c
WHERE c.product_id IN (SELECT (k ->> 0)::integer FROM jsonb_array_elements(%(keys)s::jsonb) AS k)
"""

_ORDERS_OF_PAGE_CONFIGS = """
SELECT DISTINCT jsonb_build_array(o.id)
FROM jsonb_array_elements(%(keys)s::jsonb) AS k
JOIN legacy.orders AS o
  ON o.page_config_id = (k ->> 0)::bigint
  OR (k ->> 1 = 'page' AND o.page_post_id = (k ->> 2)::bigint)
  OR k ->> 1 = 'site'
"""

RULES: dict[str, SyncRules] = {
    "relations": SyncRules(
        "relations",
        (
            Captured(
                "cart",
                "container_relations",
                "jsonb_build_array({r}.parent_type, {r}.parent_id, {r}.child_type, {r}.child_id)",
                prefilter=("parent_id", 1, "integer"),
            ),
        ),
    ),
    "likes": SyncRules(
        "likes",
        (
            Captured(
                "market",
                "product_likes",
                "jsonb_build_array({r}.user_id, {r}.product_id)",
                prefilter=("user_id", 0, "integer"),
            ),
            Captured(
                "blog",
                "post_likes",
                "jsonb_build_array({r}.user_id, {r}.post_id)",
                prefilter=("user_id", 0, "integer"),
            ),
            # Lookups: a like names its product by slug, so a product renamed or removed
            # re-applies its likes; the keys keep the slug before and after (the target rows
            # carry the old one). A post removed (or back) re-applies its likes too.
            Captured(
                "market",
                "products",
                "jsonb_build_array({r}.id, {r}.slug)",
                expands_to="product_likes",
                expand=_PRODUCT_LIKES_OF_PRODUCTS,
                columns=("id", "slug"),
                keep_keys=True,
            ),
            Captured(
                "blog",
                "posts",
                "jsonb_build_array({r}.id)",
                expands_to="post_likes",
                expand=_POST_LIKES_OF_POSTS,
                columns=("id",),
            ),
        ),
        lookups={
            # From the keys, not the staged likes: a key whose likes are all gone still needs
            # its product's slug to find its row in the target.
            "products": "SELECT array_agg(DISTINCT (key ->> 1)::bigint) FROM sync_keys "
            "WHERE source_table = 'product_likes'",
            "posts": "SELECT array_agg(DISTINCT (key ->> 1)::bigint) FROM sync_keys "
            "WHERE source_table = 'post_likes'",
        },
    ),
    "page_configs": SyncRules(
        "page_configs",
        (Captured("cart", "page_configs", "jsonb_build_array({r}.id)", ("id", 0, "integer")),),
    ),
    "cart": SyncRules(
        "cart",
        (
            Captured(
                "cart",
                "cart_items",
                "jsonb_build_array({r}.user_id, CASE WHEN {r}.user_id IS NULL "
                "THEN {r}.session_id END, {r}.product_id)",
            ),
            # A lookup: the lines of a product removed (or back) are skipped (or moved) again.
            # Whether it is withdrawn changes only a note, not a row: not captured.
            Captured(
                "market",
                "products",
                "jsonb_build_array({r}.id)",
                expands_to="cart_items",
                expand=_CART_LINES_OF_PRODUCTS,
                expand_in="cart",
                columns=("id",),
            ),
        ),
        lookups={
            "products": "SELECT array_agg(DISTINCT product_id) FROM stage_cart_items",
        },
    ),
    "orders": SyncRules(
        "orders",
        (
            Captured("cart", "orders", "jsonb_build_array({r}.id)", ("id", 0, "integer")),
            Captured(
                "cart",
                "order_items",
                "jsonb_build_array({r}.order_id)",
                ("order_id", 0, "integer"),
                # An order's items are staged and applied with their order: the same keys.
                expands_to="orders",
            ),
            # A lookup: the merchant an order takes comes from its own config, its page's, or
            # the site's; an edit re-applies the orders that may take it (the site's: all).
            Captured(
                "cart",
                "page_configs",
                "jsonb_build_array({r}.id, {r}.container_type, {r}.container_id)",
                expands_to="orders",
                expand=_ORDERS_OF_PAGE_CONFIGS,
                # What orders.sql reads of a page config (an edit of features is not one).
                columns=(
                    "id",
                    "container_type",
                    "container_id",
                    "sumup_merchant_code",
                    "sumup_checkout_prefix",
                    "deleted_at",
                ),
            ),
        ),
        lookups={
            "products": "SELECT array_agg(DISTINCT product_id) FROM stage_order_items",
        },
    ),
}


def rules_of(move: Move) -> SyncRules:
    return RULES[move.name]


def install(topology: Topology, move: Move) -> None:
    """Install the move's capture (idempotent): per source database, one transaction."""
    rules = rules_of(move)
    for service in move.source_services:
        captured = rules.captured_in(service)
        if not captured:
            continue
        spec = service_spec(service)
        try:
            with connect(topology, service) as source, source.transaction():
                for item in captured:
                    execute_sql(
                        source,
                        (SPLIT_DIR / "capture.sql").read_text(),
                        {
                            "owner": spec.owner_role,
                            "move": move.name,
                            "table": item.table,
                            "key_new": item.key_of("NEW"),
                            "key_old": item.key_of("OLD"),
                            "update_when": item.update_when(),
                            "lock_timeout": CAPTURE_LOCK_TIMEOUT,
                        },
                    )
        except psycopg.Error as exc:
            raise SplitError(
                f"{move.name}: could not install the change capture in {spec.database}: {exc}"
            ) from exc


def remove(topology: Topology, move: Move) -> list[str]:
    """Remove the move's capture from every source database (idempotent); what was removed."""
    removed = []
    for service in move.source_services:
        with connect(topology, service) as source:
            if not capture_objects(source, move.name):
                continue
            with source.transaction():
                execute_sql(
                    source,
                    (SPLIT_DIR / "uncapture.sql").read_text(),
                    {"move": move.name, "lock_timeout": CAPTURE_LOCK_TIMEOUT},
                )
            removed.append(service_spec(service).database)
    return removed


def _move_of_trigger(name: str) -> str:
    rest = name.removeprefix("split_capture_")
    for kind in ("truncate_", "update_"):
        rest = rest.removeprefix(kind)
    return rest


def capture_objects(connection: psycopg.Connection[Any], move: str | None = None) -> list[str]:
    """The capture triggers and change tables in this database (of one move, or all)."""
    found = [
        f"trigger {name} on {table}"
        for name, table in connection.execute(
            "SELECT t.tgname, t.tgrelid::regclass::text FROM pg_trigger AS t "
            "WHERE t.tgname LIKE 'split\\_capture\\_%%' ORDER BY 1, 2"
        )
        if move is None or _move_of_trigger(name) == move
    ]
    found += [
        f"change table {CAPTURE_SCHEMA}.{name}"
        for (name,) in connection.execute(
            "SELECT c.relname FROM pg_class AS c JOIN pg_namespace AS n "
            "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind = 'r' ORDER BY 1",
            (CAPTURE_SCHEMA,),
        )
        if move is None or name == move
    ]
    return found


def leftover_capture(topology: Topology) -> dict[str, list[str]]:
    """Every capture object in the source databases, by database (``rose db check``)."""
    found = {}
    for service in LEGACY_SERVICES:
        with connect(topology, service) as connection:
            objects = capture_objects(connection)
            if objects:
                found[service_spec(service).database] = objects
    return found


def capture_drift(topology: Topology, services: list[str]) -> tuple[list[str], list[str]]:
    """(differences, notes) for ``rose db check``: a capture object of a move that is not
    syncing (done, aborted, never started) is drift; one of a move syncing now is a note."""
    from ops.split.common import read_ledger
    from ops.split.moves import MOVES

    syncing = set()
    for move in MOVES:
        if move.target not in services:
            continue
        try:
            with connect(topology, move.target) as target:
                ledger = read_ledger(target, move.name)
        except psycopg.OperationalError:
            continue
        if ledger is not None and ledger.sync_started_at is not None and not ledger.done:
            syncing.add(move.name)
    differences, notes = [], []
    for service in LEGACY_SERVICES:
        if service not in services:
            continue
        try:
            with connect(topology, service) as connection:
                found = capture_objects(connection)
        except psycopg.OperationalError:
            continue
        database = service_spec(service).database
        for item in found:
            owner = item.rsplit(".", 1)[-1] if item.startswith("change table") else None
            if owner is None:
                owner = _move_of_trigger(item.split()[1])
            if owner in syncing:
                notes.append(f"{database}: {item}: move {owner} is syncing (`rose split cutover`)")
            else:
                differences.append(
                    f"{database}: leftover split change capture {item} (move {owner} is not "
                    f"syncing): `rose split abort --move {owner}` or finalize removes it"
                )
    return differences, notes

"""A writer load against the legacy monolith, for the online split (`rose split sync` and
`cutover`): the writes the monolith's shop keeps making while its data moves. Used by
tests/integration/test_split_online.py and `python -m bench.split --online`.

Each write is one transaction, as the monolith made them: likes and unlikes of products and
posts (liking again inserts a new row: duplicates), new orders with items and status changes,
page-config edits, relation attaches and detaches, cart lines. A write refused because the
table is frozen (SQLSTATE 25006) is counted, with when the first and the last refusal came; a
lost connection (PostgreSQL restarting) is retried after a short wait.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import errors

from ops.db.topology import Topology

Write = Callable[[dict[str, psycopg.Connection[Any]], random.Random], None]


def _one(connection: psycopg.Connection[Any], query: str, params: tuple[Any, ...] = ()) -> Any:
    row = connection.execute(query, params).fetchone()
    return row[0] if row else None


def _liker(service: str, likes: str, targets: str, column: str) -> Write:
    """Like a random product or post (liking again inserts another row: a duplicate)."""

    def like(c: dict[str, psycopg.Connection[Any]], rng: random.Random) -> None:
        target = _one(c[service], f"SELECT id FROM legacy.{targets} ORDER BY random() LIMIT 1")
        c[service].execute(
            f"INSERT INTO legacy.{likes} (user_id, {column}) VALUES (%s, %s)",
            (rng.randint(1, 60), target),
        )

    return like


def _unliker(service: str, likes: str) -> Write:
    """Unlike: one live like of a random user gets deleted_at, as the monolith did."""

    def unlike(c: dict[str, psycopg.Connection[Any]], rng: random.Random) -> None:
        c[service].execute(
            f"UPDATE legacy.{likes} SET deleted_at = now() AT TIME ZONE 'UTC', "
            f"updated_at = now() AT TIME ZONE 'UTC' WHERE id = (SELECT id FROM legacy.{likes} "
            "WHERE deleted_at IS NULL AND user_id = %s LIMIT 1)",
            (rng.randint(1, 60),),
        )

    return unlike


like_product = _liker("market", "product_likes", "products", "product_id")
unlike_product = _unliker("market", "product_likes")
like_post = _liker("blog", "post_likes", "posts", "post_id")
unlike_post = _unliker("blog", "post_likes")


def new_order(c: dict[str, psycopg.Connection[Any]], rng: random.Random) -> None:
    cart = c["cart"]
    page = _one(
        cart,
        "SELECT container_id FROM legacy.page_configs WHERE container_type = 'page' "
        "ORDER BY random() LIMIT 1",
    )
    price, quantity = rng.randint(100, 5000) / 100, rng.randint(1, 3)
    with cart.transaction():
        order = _one(
            cart,
            "INSERT INTO legacy.orders (user_id, page_post_id, status, product_total, "
            "total_amount, description, sumup_checkout_id) "
            "VALUES (%s, %s, 'pending', %s, %s, 'online order', %s) RETURNING id",
            (rng.randint(1, 60), page, price * quantity, price * quantity, f"co-{rng.random()}"),
        )
        cart.execute(
            "INSERT INTO legacy.order_items (order_id, product_id, product_title, product_slug, "
            "unit_price, quantity) VALUES (%s, %s, 'Thing', 'thing', %s, %s)",
            (order, rng.randint(1, 50), price, quantity),
        )


def order_status(c: dict[str, psycopg.Connection[Any]], rng: random.Random) -> None:
    c["cart"].execute(
        "UPDATE legacy.orders SET status = %s, updated_at = now() AT TIME ZONE 'UTC' "
        "WHERE id = (SELECT id FROM legacy.orders WHERE status = 'pending' "
        "ORDER BY id DESC LIMIT 1 OFFSET %s)",
        (rng.choice(["paid", "failed", "cancelled", "expired"]), rng.randint(0, 20)),
    )


def edit_page_config(c: dict[str, psycopg.Connection[Any]], rng: random.Random) -> None:
    """Mostly features (a page's settings); one edit in ten changes its checkout prefix,
    which the page's orders take as their snapshot."""
    prefix = f"shop{rng.randint(1, 9)}-" if rng.random() < 0.1 else None
    c["cart"].execute(
        "UPDATE legacy.page_configs SET features = json_build_object('calendar', %s), "
        "sumup_checkout_prefix = coalesce(%s, sumup_checkout_prefix), "
        "updated_at = now() AT TIME ZONE 'UTC' "
        "WHERE id = (SELECT id FROM legacy.page_configs WHERE container_type = 'page' "
        "ORDER BY random() LIMIT 1)",
        (rng.random() < 0.5, prefix),
    )


def attach(c: dict[str, psycopg.Connection[Any]], rng: random.Random) -> None:
    c["cart"].execute(
        "INSERT INTO legacy.container_relations (parent_type, parent_id, child_type, child_id) "
        "VALUES ('page', %s, 'market', %s)",
        (rng.randint(1, 20), rng.randint(1, 20)),
    )


def detach(c: dict[str, psycopg.Connection[Any]], rng: random.Random) -> None:
    c["cart"].execute(
        "UPDATE legacy.container_relations SET deleted_at = now() AT TIME ZONE 'UTC' "
        "WHERE id = (SELECT id FROM legacy.container_relations WHERE deleted_at IS NULL "
        "AND parent_id = %s LIMIT 1)",
        (rng.randint(1, 20),),
    )


def cart_line(c: dict[str, psycopg.Connection[Any]], rng: random.Random) -> None:
    c["cart"].execute(
        "INSERT INTO legacy.cart_items (user_id, product_id, quantity, "
        "market_place_container_id) VALUES (%s, %s, %s, 1)",
        (rng.randint(1, 60), rng.randint(1, 50), rng.randint(1, 3)),
    )


WRITES: tuple[Write, ...] = (
    like_product,
    like_product,
    unlike_product,
    like_post,
    unlike_post,
    new_order,
    order_status,
    edit_page_config,
    attach,
    detach,
    cart_line,
)


@dataclass
class LoadReport:
    writes: int = 0
    refused: int = 0
    # Writes cut off by a lost connection (PostgreSQL restarting) ...
    failed: int = 0
    # ... and writes that failed otherwise (none should).
    errored: int = 0
    first_refused: float | None = None
    last_refused: float | None = None
    errors: list[str] = field(default_factory=list)


class WriterLoad:
    """Writes in a thread until stopped (``with WriterLoad(...) as load:``)."""

    def __init__(self, topology: Topology, seed: int = 16, pause: float = 0.002) -> None:
        self.topology = topology
        self.rng = random.Random(seed)
        self.pause = pause
        self.report = LoadReport()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> WriterLoad:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _connect(self) -> dict[str, psycopg.Connection[Any]]:
        return {
            service: psycopg.connect(
                self.topology.admin_url(service), autocommit=True, connect_timeout=5
            )
            for service in ("market", "blog", "cart")
        }

    def _run(self) -> None:
        connections: dict[str, psycopg.Connection[Any]] | None = None
        while not self._stop.is_set():
            try:
                if connections is None:
                    connections = self._connect()
                self.rng.choice(WRITES)(connections, self.rng)
                self.report.writes += 1
            except errors.ReadOnlySqlTransaction:
                now = time.monotonic()
                self.report.refused += 1
                self.report.first_refused = self.report.first_refused or now
                self.report.last_refused = now
            except psycopg.OperationalError as exc:
                self.report.failed += 1
                if len(self.report.errors) < 5:
                    self.report.errors.append(str(exc).strip().splitlines()[0])
                for connection in (connections or {}).values():
                    connection.close()
                connections = None
                time.sleep(0.2)
            except psycopg.Error as exc:
                self.report.errored += 1
                if len(self.report.errors) < 5:
                    self.report.errors.append(f"{type(exc).__name__}: {exc}")
            time.sleep(self.pause)
        for connection in (connections or {}).values():
            connection.close()

"""A writer load against the legacy monolith, for the online split (`rose split sync` and
`cutover`): the writes the monolith's shop keeps making while its data moves. Used by
tests/integration/test_split_online.py and `python -m bench.split --online`.

Each write is one transaction, as the monolith made them: likes and unlikes of products and
posts (liking again inserts a new row: duplicates), new orders with items and status changes,
page-config edits, relation attaches and detaches, cart lines. A write refused because the
table is frozen (SQLSTATE 25006) is counted, with when the first and the last refusal came; a
lost connection (PostgreSQL restarting) is retried after a short wait.

It writes as the monolith's app would (``monolith_writer``): a login role of its own with DML
grants on the legacy tables, neither a superuser nor their owner, so a practice round meets
every permission the real monolith meets (the split's change capture included).
"""

from __future__ import annotations

import os
import random
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import errors, sql
from psycopg.conninfo import make_conninfo

from apps.registry import service_spec
from ops.db.topology import MONOLITH_ROLES_ENV, Topology

MONOLITH_SERVICES = ("market", "blog", "cart")
MONOLITH_WRITER = "monolith_writer"


@contextmanager
def monolith_writer(
    topology: Topology, role: str = MONOLITH_WRITER, services: tuple[str, ...] = MONOLITH_SERVICES
) -> Iterator[dict[str, str]]:
    """A login role writing the legacy tables as the monolith's deployed app does: CONNECT on
    the databases, USAGE on schema ``legacy``, SELECT, INSERT, UPDATE and DELETE on its tables
    and USAGE on its sequences; not a superuser, not the tables' owner (``<svc>_owner``), a
    member of no role. Yields each service's DSN as that role; dropped afterwards (its grants
    with it). While it lives the role is declared as production declares it, in
    ROSE_MONOLITH_ROLES of this process's environment (children inherit it), so a ``rose db
    provision`` of the practice round leaves its grants alone as it would the real monolith's
    (undeclared, provision revokes its CONNECT)."""
    password = secrets.token_hex(16)
    with psycopg.connect(topology.admin_url(None, "postgres"), autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(password)
            )
        )
    declared = os.environ.get(MONOLITH_ROLES_ENV)
    os.environ[MONOLITH_ROLES_ENV] = ",".join(filter(None, [declared, role]))
    try:
        urls = {}
        for service in services:
            database = service_spec(service).database
            with psycopg.connect(topology.admin_url(service), autocommit=True) as admin:
                for grant in (
                    "GRANT CONNECT ON DATABASE {database} TO {role}",
                    "GRANT USAGE ON SCHEMA legacy TO {role}",
                    "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA legacy TO {role}",
                    "GRANT USAGE ON ALL SEQUENCES IN SCHEMA legacy TO {role}",
                ):
                    admin.execute(
                        sql.SQL(grant).format(
                            database=sql.Identifier(database), role=sql.Identifier(role)
                        )
                    )
            urls[service] = make_conninfo(topology.admin_url(service), user=role, password=password)
        yield urls
    finally:
        for service in services:
            with psycopg.connect(topology.admin_url(service), autocommit=True) as admin:
                admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
                admin.execute(
                    sql.SQL("REVOKE ALL ON DATABASE {} FROM {}").format(
                        sql.Identifier(service_spec(service).database), sql.Identifier(role)
                    )
                )
        with psycopg.connect(topology.admin_url(None, "postgres"), autocommit=True) as admin:
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
        if declared is None:
            os.environ.pop(MONOLITH_ROLES_ENV, None)
        else:
            os.environ[MONOLITH_ROLES_ENV] = declared


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
    """Writes in a thread until stopped (``with WriterLoad(...) as load:``), as the superuser
    or, given ``urls`` (``monolith_writer``'s), as the monolith's own role."""

    def __init__(
        self,
        topology: Topology,
        seed: int = 16,
        pause: float = 0.002,
        urls: dict[str, str] | None = None,
    ) -> None:
        self.topology = topology
        self.urls = urls or {service: topology.admin_url(service) for service in MONOLITH_SERVICES}
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
            service: psycopg.connect(url, autocommit=True, connect_timeout=5)
            for service, url in self.urls.items()
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

"""The split (`rose split`): a seeded monolith moved into the new services' databases, checked
against expectations computed from the legacy rows here, not by the split's own SQL."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import fields
from datetime import UTC, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import pytest

from apps.orders.settings import OrdersSettings
from apps.sumup_sandbox.app import DEFAULT_API_KEY, DEFAULT_MERCHANT_CODE
from bench.split_load import monolith_writer
from ops.db.check import check
from ops.split.common import CRASH_ENV, CRASH_EXIT_CODE, SplitError, connect
from ops.split.moves import MOVES, MOVES_BY_NAME, Move
from ops.split.run import (
    BULK_LOAD_MIN_ROWS,
    MoveNotVerified,
    copy_table,
    plan_move,
    run_all,
    run_moves,
    source_snapshot,
)
from tests.conftest import REPO_ROOT, admin_connect, in_process_stack
from tests.integration.orders_fixtures import orders_stack, webhook
from tests.integration.split_fixtures import (
    STATUS_MAPPING,
    freeze_triggers,
    ledger,
    listed_ids,
    rose_db_check,
    rose_split,
    rows,
    seeded_monolith,
    service_sessions,
    target_counts,
    value,
)
from tests.signed import internal_get, internal_post

if TYPE_CHECKING:
    from tests.pg import TestServer


@pytest.fixture
def monolith(clean_db: TestServer) -> Iterator[TestServer]:
    yield from seeded_monolith(clean_db)


def expected_target_counts(server: TestServer) -> dict[str, int]:
    """What the targets must hold, from the legacy rows and the documented rules."""
    relations = value(
        server,
        "cart",
        # Detached rows all move; active rows collapse to one per parent/child pair.
        """
        SELECT count(*) FILTER (WHERE deleted_at IS NOT NULL)
               + count(DISTINCT (parent_type, parent_id, child_type, child_id))
                     FILTER (WHERE deleted_at IS NULL)
        FROM legacy.container_relations
        """,
    )
    product_likes = value(
        server,
        "market",
        "SELECT count(DISTINCT (l.user_id, p.slug)) FROM legacy.product_likes AS l "
        "JOIN legacy.products AS p ON p.id = l.product_id",
    )
    post_likes = value(
        server,
        "blog",
        "SELECT count(DISTINCT (l.user_id, l.post_id)) FROM legacy.post_likes AS l "
        "JOIN legacy.posts AS p ON p.id = l.post_id",
    )
    owned = "(o.user_id IS NOT NULL OR o.session_id IS NOT NULL)"
    orders, attempts = rows(
        server,
        "cart",
        f"SELECT count(*), count(sumup_checkout_id) FROM legacy.orders AS o WHERE {owned}",
    )[0]
    items = value(
        server,
        "cart",
        "SELECT count(*) FROM legacy.order_items AS i JOIN legacy.orders AS o "
        f"ON o.id = i.order_id WHERE {owned} AND i.quantity > 0",
    )
    return {
        "cart.cart_items": expected_cart_lines(server),
        "relations.container_relations": relations,
        "likes.likes": product_likes + post_likes,
        "blog.page_configs": value(server, "cart", "SELECT count(*) FROM legacy.page_configs"),
        "orders.orders": orders,
        "orders.order_items": items,
        "orders.payment_attempts": attempts,
    }


def expected_cart_lines(server: TestServer) -> int:
    """Lines of the new cart: every line with an owner, a product that exists, a page and a
    quantity; removed lines as they are, live lines one per cart (user or session) and product."""
    products = {row[0] for row in rows(server, "market", "SELECT id FROM legacy.products")}
    removed, live = 0, set()
    for user_id, session_id, product_id, quantity, page, deleted_at in rows(
        server,
        "cart",
        "SELECT user_id, session_id, product_id, quantity, market_place_container_id, deleted_at "
        "FROM legacy.cart_items",
    ):
        if (user_id is None and not session_id) or product_id not in products:
            continue
        if page is None or quantity <= 0:
            continue
        if deleted_at is not None:
            removed += 1
        else:
            live.add((user_id, None if user_id else session_id, product_id))
    return removed + len(live)


# -- plan, run, the moved rows -----------------------------------------------------------------
def test_plan_reads_only_and_run_does_what_it_said(monolith):
    expected = expected_target_counts(monolith)
    planned = rose_split(monolith, "plan")
    assert planned.exit_code == 0, planned.output
    for table in expected:
        assert f"{expected[table]:,} into {table}" in planned.output
    assert "the product no longer exists" in planned.output
    # Read only: no row, no ledger, no freeze trigger.
    assert set(target_counts(monolith).values()) == {0}
    assert ledger(monolith, "likes") is None
    assert value(monolith, "market", "SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal") == 0

    moved = rose_split(monolith, "run")
    assert moved.exit_code == 0, moved.output
    assert target_counts(monolith) == expected
    for move in MOVES:
        assert f"{move.name}: committed in" in moved.output
        assert "rows/s" in moved.output
        entry = ledger(monolith, move.name)
        assert entry is not None
        assert entry["finished_at"] is not None
        assert entry["source_rows"] == (
            entry["moved_rows"] + entry["collapsed_rows"] + entry["skipped_rows"]
        )
    assert ledger(monolith, "likes")["inserted"] == {"likes.likes": expected["likes.likes"]}
    # Each move was verified as it committed, as `rose split verify` does it, and recorded.
    for move in MOVES:
        assert f"{move.name}: verified: ok" in moved.output
        assert f"ok {move.name}\n" in moved.output
        entry = ledger(monolith, move.name)
        assert entry["verified_at"] is not None
        assert entry["verification"]["ok"] is True
    likes = expected["likes.likes"]
    assert f"checksum:   likes.likes: {likes:,} rows, checksums match" in moved.output


def test_plan_through_a_pipe_keeps_its_lines_in_order(monolith):
    """Probe (2026-12-06): `rose split plan 2>&1 | cat` was said to interleave its stderr and
    stdout out of order (stdout block-buffered into a pipe). Every `rose` command now writes
    both line by line (ops.cli.main); here the plan of a monolith whose cart source cannot be
    read, as its own process with stdout and stderr into one pipe and no PYTHONUNBUFFERED (as
    a DBA's shell runs it): the plans of the moves before come first, the error last."""
    with admin_connect(monolith, "cart") as cart:
        cart.execute("ALTER TABLE legacy.cart_items RENAME COLUMN quantity TO amount")
    command = ["split", "plan", "--database-url", monolith.admin_url]
    try:
        planned = subprocess.run(
            [sys.executable, "-m", "ops.cli", *command],
            cwd=REPO_ROOT,
            env={k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=120,
        )
    finally:
        with admin_connect(monolith, "cart") as cart:
            cart.execute("ALTER TABLE legacy.cart_items RENAME COLUMN amount TO quantity")
    assert planned.returncode == 1, planned.stdout
    lines = planned.stdout.splitlines()
    assert lines[0].startswith("legacy tables"), lines
    names = [move.name for move in MOVES]
    before = names[: names.index("cart")]
    headings = [line.split(":")[0] for line in lines[1:] if not line.startswith(" ")]
    assert headings == [*before, "error"], lines
    assert lines[-1].startswith("error: cart: column"), lines


def test_a_source_error_in_the_middle_of_a_copy_is_raised_and_stages_nothing(monolith):
    """The relay of a source's COPY takes the rows libpq has received itself: an error the
    source sends after some rows (here on the last one) still reaches the caller as that
    error, the target's copy of it is abandoned, and both connections stay usable."""
    move = MOVES_BY_NAME["likes"]
    [product_likes] = [
        table for table in move.sources_in("market") if table.table == "product_likes"
    ]
    with (
        source_snapshot(monolith.topology, "market") as source,
        connect(monolith.topology, "likes") as target,
    ):
        last = source.execute("SELECT max(id) FROM legacy.product_likes").fetchone()[0]
        with target.transaction(force_rollback=True), pytest.raises(psycopg.errors.DivisionByZero):
            copy_table(
                source,
                target,
                product_likes,
                where="1 / (id - %(last)s) IS NOT NULL",
                params={"last": last},
            )
        assert target.execute("SELECT to_regclass('pg_temp.stage_product_likes')").fetchone() == (
            None,
        )
    with connect(monolith.topology, "likes") as target, target.transaction(force_rollback=True):
        with source_snapshot(monolith.topology, "market") as source:
            staged = copy_table(source, target, product_likes)
        assert staged == value(monolith, "market", "SELECT count(*) FROM legacy.product_likes")
        assert target.execute("SELECT count(*) FROM stage_product_likes").fetchone() == (staged,)


def test_a_source_changed_under_the_move_is_found_before_the_commit(monolith):
    """The verification inside ``run`` is a real one, and runs before the commit: a source row
    deleted after the copy (its freeze bypassed) is found, and nothing of that move is
    committed; the other moves are, verified; the next run moves what the sources hold then."""

    def delete_a_like_after_the_copy(move: str, point: str) -> None:
        if (move, point) == ("likes", "after-copy"):
            with admin_connect(monolith, "market") as connection:
                # A superuser's replica role fires no ordinary trigger: the freeze's included.
                connection.execute("SET session_replication_role = replica")
                connection.execute(
                    "DELETE FROM legacy.product_likes "
                    "WHERE id = (SELECT max(id) FROM legacy.product_likes)"
                )

    moves = [MOVES_BY_NAME[name] for name in ("likes", "relations")]
    messages: list[str] = []
    result = run_all(monolith.topology, moves, messages.append, delete_a_like_after_the_copy)
    assert set(result.failed) == {"likes"}
    refused = result.failed["likes"]
    assert isinstance(refused, MoveNotVerified)
    assert "the move was not committed" in str(refused)
    assert any("the move read" in line for line in refused.verification.differences())
    assert "likes: verified: DIFFERENT" in messages
    assert not any(line.startswith("likes: committed") for line in messages)
    assert value(monolith, "likes", "SELECT count(*) FROM likes.likes") == 0
    entry = ledger(monolith, "likes")
    assert entry["finished_at"] is None
    assert entry["verified_at"] is None
    [relations] = result.reports
    assert relations.verification is not None
    assert relations.verification.ok
    assert ledger(monolith, "relations")["verified_at"] is not None

    again = rose_split(monolith, "run")
    assert again.exit_code == 0, again.output
    assert "ok likes\n" in again.output
    assert ledger(monolith, "likes")["verified_at"] is not None


def test_a_verification_that_cannot_run_leaves_nothing_of_the_move(monolith):
    """The sources' connections die just before the verification: the move's transaction
    rolls back with the error (never a move committed unverified), and the next run moves it."""

    def cut_the_sources_before_verify(move: str, point: str) -> None:
        if (move, point) == ("likes", "before-verify"):
            for service in ("market", "blog"):
                with admin_connect(monolith, service) as connection:
                    connection.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND application_name = 'rose split'"
                    )

    result = run_all(
        monolith.topology, [MOVES_BY_NAME["likes"]], lambda _: None, cut_the_sources_before_verify
    )
    assert isinstance(result.failed["likes"], psycopg.OperationalError)
    assert result.reports == []
    assert value(monolith, "likes", "SELECT count(*) FROM likes.likes") == 0
    assert ledger(monolith, "likes")["finished_at"] is None
    again = rose_split(monolith, "run", "--move", "likes")
    assert again.exit_code == 0, again.output
    assert ledger(monolith, "likes")["verified_at"] is not None


def test_a_target_trigger_that_alters_rows_refuses_the_move_at_its_verification(monolith):
    """A trigger on a target table (a DBA's, say) that changes rows on their way in: run's
    verification finds the target different from its sources, prints where, and commits
    nothing of the move, exit 1."""
    with admin_connect(monolith, "relations") as connection:
        connection.execute(
            "CREATE FUNCTION relations.split_test_shift() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN NEW.sort_order := NEW.sort_order + 1; RETURN NEW; END $$"
        )
        connection.execute(
            "CREATE TRIGGER split_test_shift BEFORE INSERT ON relations.container_relations "
            "FOR EACH ROW EXECUTE FUNCTION relations.split_test_shift()"
        )
    try:
        ran = rose_split(monolith, "run", "--move", "relations")
    finally:
        # The test databases are emptied between tests, not rebuilt: a trigger would stay.
        with admin_connect(monolith, "relations") as connection:
            connection.execute("DROP FUNCTION relations.split_test_shift() CASCADE")
    assert ran.exit_code == 1, ran.output
    assert "DIFFERENT relations" in ran.output
    assert "checksums differ; differences at" in ran.output
    assert "relations: its target does not match its sources" in ran.output
    assert "Nothing of relations was committed" in ran.output
    assert "relations: committed in" not in ran.output
    assert value(monolith, "relations", "SELECT count(*) FROM relations.container_relations") == 0
    entry = ledger(monolith, "relations")
    assert entry["finished_at"] is None
    assert entry["verified_at"] is None


def test_run_without_verify_leaves_it_to_verify(monolith):
    moved = rose_split(monolith, "run", "--move", "relations", "--no-verify")
    assert moved.exit_code == 0, moved.output
    assert "verified" not in moved.output
    assert ledger(monolith, "relations")["verified_at"] is None


def test_duplicate_likes_collapse_to_one_row_and_orphans_are_listed(monolith):
    twice_one_deleted = rows(
        monolith,
        "market",
        """
        SELECT l.user_id, p.slug, min(l.created_at) AT TIME ZONE 'UTC'
        FROM legacy.product_likes AS l JOIN legacy.products AS p ON p.id = l.product_id
        GROUP BY l.user_id, p.slug
        HAVING count(*) = 2 AND count(l.deleted_at) = 1
        ORDER BY 1, 2 LIMIT 5
        """,
    )
    all_unliked = rows(
        monolith,
        "blog",
        """
        SELECT l.user_id, l.post_id, max(l.deleted_at) AT TIME ZONE 'UTC'
        FROM legacy.post_likes AS l JOIN legacy.posts AS p ON p.id = l.post_id
        GROUP BY l.user_id, l.post_id
        HAVING count(*) = 2 AND count(l.deleted_at) = 2
        ORDER BY 1, 2 LIMIT 5
        """,
    )
    orphans = [
        row[0]
        for row in rows(
            monolith,
            "market",
            "SELECT id FROM legacy.product_likes WHERE product_id NOT IN "
            "(SELECT id FROM legacy.products) ORDER BY id",
        )
    ]
    assert twice_one_deleted
    assert all_unliked
    assert orphans
    assert rose_split(monolith, "run", "--move", "likes").exit_code == 0

    for user_id, slug, earliest in twice_one_deleted:
        assert rows(
            monolith,
            "likes",
            "SELECT deleted_at, created_at FROM likes.likes "
            "WHERE user_id = %s AND target_type = 'product' AND target_slug = %s",
            (user_id, slug),
        ) == [(None, earliest)]
    for user_id, post_id, latest in all_unliked:
        assert rows(
            monolith,
            "likes",
            "SELECT deleted_at FROM likes.likes "
            "WHERE user_id = %s AND target_type = 'post' AND target_id = %s",
            (user_id, post_id),
        ) == [(latest,)]
    entry = ledger(monolith, "likes")
    assert listed_ids(entry, "skipped", "the product no longer exists", "product_likes") == orphans


def test_orders_map_every_status_and_keep_their_snapshots(monolith):
    legacy_orders = {
        row[0]: row[1:]
        for row in rows(
            monolith,
            "cart",
            "SELECT id, status, sumup_checkout_id, sumup_reference FROM legacy.orders",
        )
    }
    assert {status for status, _, _ in legacy_orders.values()} == set(STATUS_MAPPING)
    products = {row[0] for row in rows(monolith, "market", "SELECT id FROM legacy.products")}
    gone_product_items = {
        row[0]: row[1:]
        for row in rows(
            monolith,
            "cart",
            "SELECT i.id, i.product_title, i.unit_price, i.quantity FROM legacy.order_items AS i "
            "JOIN legacy.orders AS o ON o.id = i.order_id "
            "WHERE i.quantity > 0 AND (o.user_id IS NOT NULL OR o.session_id IS NOT NULL) "
            "AND NOT i.product_id = ANY(%s)",
            (list(products),),
        )
    }
    assert gone_product_items
    assert rose_split(monolith, "run", "--move", "page_configs", "--move", "orders").exit_code == 0

    # A pending order is payable for the service's window from its last change, like the
    # service's own orders (a buyer on SumUp's page at the cut-over can finish; older ones are
    # overdue and expire the usual way), never without end at a price from before the split.
    last_change = dict(rows(monolith, "cart", "SELECT id, updated_at FROM legacy.orders"))
    window = timedelta(seconds=OrdersSettings().payable_seconds)
    deadlines = rows(monolith, "orders", "SELECT id, status, payable_until FROM orders.orders")
    assert {status for _, status, _ in deadlines} >= {"pending", "paid", "cancelled"}
    for order_id, status, payable_until in deadlines:
        if status == "pending":
            assert payable_until == last_change[order_id].replace(tzinfo=UTC) + window
        else:
            assert payable_until is None, status

    moved = rows(
        monolith,
        "orders",
        """
        SELECT o.id, o.status, a.status, a.sumup_checkout_id, a.checkout_reference,
               o.paid_at IS NOT NULL, o.paid_attempt_id IS NOT DISTINCT FROM a.id,
               o.paid_attempt_id IS NOT NULL
        FROM orders.orders AS o LEFT JOIN orders.payment_attempts AS a ON a.order_id = o.id
        """,
    )
    assert moved
    for (
        order_id,
        status,
        attempt_status,
        checkout_id,
        reference,
        has_paid_at,
        paid_with_it,
        paid_with_one,
    ) in moved:
        legacy_status, legacy_checkout, legacy_reference = legacy_orders[order_id]
        order_status, expected_attempt = STATUS_MAPPING[legacy_status]
        assert status == order_status, order_id
        assert has_paid_at == (legacy_status == "paid")
        # A paid order was paid with its one checkout (orders 0015); a free one with none.
        assert paid_with_one == (legacy_status == "paid" and legacy_checkout is not None)
        assert paid_with_it == (legacy_checkout is None or legacy_status == "paid"), order_id
        assert checkout_id == legacy_checkout
        if legacy_checkout is None:
            assert attempt_status is None
        else:
            assert attempt_status == expected_attempt, order_id
            assert reference == legacy_reference or (
                legacy_reference is None and reference.endswith(f"{order_id}-1")
            )
    assert {
        row[0]: row[1:]
        for row in rows(
            monolith,
            "orders",
            "SELECT id, title, unit_price, quantity FROM orders.order_items WHERE id = ANY(%s)",
            (list(gone_product_items),),
        )
    } == gone_product_items
    # Lines with quantity 0 do not move; the ledger lists each.
    zero_lines = [
        row[0]
        for row in rows(
            monolith, "cart", "SELECT id FROM legacy.order_items WHERE quantity = 0 ORDER BY id"
        )
    ]
    reason = "quantity 0: a line removed from the order before checkout"
    assert listed_ids(ledger(monolith, "orders"), "skipped", reason, "order_items") == zero_lines


def test_a_free_order_needs_no_merchant_and_a_payable_one_still_does(monolith):
    """Since orders 0011 an order with nothing to pay needs no merchant (its page config,
    merchant code and checkout prefix may be NULL when its total is 0): a legacy free order
    no merchant resolves for moves with NULL ones and its items; one with something to pay
    (or a SumUp checkout, which only a merchant's order has) is still skipped and named."""
    with admin_connect(monolith, "cart") as cart:
        # No site default: an order of no page, with no config of its own, resolves no merchant.
        cart.execute(
            "UPDATE legacy.page_configs SET deleted_at = updated_at WHERE container_type = 'site'"
        )
        orders = {}
        for name, price, checkout in (
            ("free", "0.00", None),
            ("payable", "4.50", None),
            ("free with a checkout", "0.00", "co_free_without_merchant"),
        ):
            orders[name] = cart.execute(
                "INSERT INTO legacy.orders (user_id, status, product_total, total_amount, "
                "description, sumup_checkout_id) VALUES (7, 'paid', %s, %s, %s, %s) RETURNING id",
                (price, price, name, checkout),
            ).fetchone()[0]
            cart.execute(
                "INSERT INTO legacy.order_items (order_id, product_id, product_title, "
                "unit_price, quantity) VALUES (%s, 1, 'Product 1', %s, 1)",
                (orders[name], price),
            )
    items = dict(rows(monolith, "cart", "SELECT order_id, id FROM legacy.order_items"))

    moved = rose_split(monolith, "run", "--move", "page_configs", "--move", "orders")
    assert moved.exit_code == 0, moved.output
    assert "orders: verified: ok" in moved.output

    free = orders["free"]
    assert rows(
        monolith,
        "orders",
        "SELECT status, total, page_config_id, merchant_code, checkout_prefix "
        "FROM orders.orders WHERE id = %s",
        (free,),
    ) == [("paid", 0, None, None, None)]
    assert rows(
        monolith, "orders", "SELECT id FROM orders.order_items WHERE order_id = %s", (free,)
    ) == [(items[free],)]
    assert (
        value(
            monolith,
            "orders",
            "SELECT count(*) FROM orders.payment_attempts WHERE order_id = %s",
            (free,),
        )
        == 0
    )

    entry = ledger(monolith, "orders")
    assert entry is not None
    payable, with_checkout = orders["payable"], orders["free with a checkout"]
    no_merchant = "no page config with a SumUp merchant (its own, its page's or the site's)"
    assert payable in listed_ids(entry, "skipped", no_merchant, "orders")
    assert free not in listed_ids(entry, "skipped", no_merchant, "orders")
    checkout_reason = (
        "nothing to pay but a SumUp checkout, and no page config with a SumUp merchant "
        "(its own, its page's or the site's)"
    )
    assert listed_ids(entry, "skipped", checkout_reason, "orders") == [with_checkout]
    not_moved = listed_ids(entry, "skipped", "its order is not moved", "order_items")
    assert {items[payable], items[with_checkout]} <= set(not_moved)
    assert items[free] not in not_moved
    assert (
        value(
            monolith,
            "orders",
            "SELECT count(*) FROM orders.orders WHERE id = ANY(%s)",
            ([payable, with_checkout],),
        )
        == 0
    )
    assert entry["source_rows"] == (
        entry["moved_rows"] + entry["collapsed_rows"] + entry["skipped_rows"]
    )
    # What moved is what the verification expects, again on demand.
    verified = rose_split(monolith, "verify", "--move", "orders")
    assert verified.exit_code == 0, verified.output


def test_a_free_order_never_paid_moves_as_cancelled_not_waiting_for_sumup(monolith):
    """Audit s20c LOW 4: the orders service pays an order with nothing to pay as it is made,
    without SumUp, so a legacy free order without a SumUp checkout that was never paid (pending,
    failed, expired) cannot be waited for or paid again there. It moved as pending: the buyer
    saw "Waiting for SumUp", "Pay again" was a 409 (no merchant) or a checkout of 0.00, and it
    expired half an hour later. It moves as cancelled, the service's own end for a free order
    that did not go through, with no deadline and a note in the ledger; a paid one as paid."""
    with admin_connect(monolith, "cart") as cart:
        # No site default: an order of no page, with no config of its own, resolves no merchant.
        cart.execute(
            "UPDATE legacy.page_configs SET deleted_at = updated_at WHERE container_type = 'site'"
        )
        merchant_config = cart.execute(
            "SELECT id FROM legacy.page_configs WHERE sumup_merchant_code IS NOT NULL "
            "ORDER BY id LIMIT 1"
        ).fetchone()[0]
        orders = {}
        for name, status, config in (
            ("pending", "pending", None),
            ("failed", "failed", None),
            ("expired", "expired", None),
            ("cancelled", "cancelled", None),
            ("paid", "paid", None),
            ("pending with a merchant", "pending", merchant_config),
        ):
            orders[name] = cart.execute(
                "INSERT INTO legacy.orders (user_id, status, product_total, total_amount, "
                "description, page_config_id) VALUES (7, %s, 0, 0, %s, %s) RETURNING id",
                (status, name, config),
            ).fetchone()[0]
            cart.execute(
                "INSERT INTO legacy.order_items (order_id, product_id, product_title, "
                "unit_price, quantity) VALUES (%s, 1, 'Product 1', 0, 1)",
                (orders[name],),
            )

    moved = rose_split(monolith, "run", "--move", "page_configs", "--move", "orders")
    assert moved.exit_code == 0, moved.output
    assert "orders: verified: ok" in moved.output

    found = dict(
        (row[0], row[1:])
        for row in rows(
            monolith,
            "orders",
            "SELECT id, status, payable_until IS NULL, merchant_code IS NULL "
            "FROM orders.orders WHERE id = ANY(%s)",
            (list(orders.values()),),
        )
    )
    assert {name: found.get(order_id) for name, order_id in orders.items()} == {
        "pending": ("cancelled", True, True),
        "failed": ("cancelled", True, True),
        "expired": ("cancelled", True, True),
        "cancelled": ("cancelled", True, True),
        "paid": ("paid", True, True),
        "pending with a merchant": ("cancelled", True, False),
    }
    assert (
        value(
            monolith,
            "orders",
            "SELECT count(*) FROM orders.payment_attempts WHERE order_id = ANY(%s)",
            (list(orders.values()),),
        )
        == 0
    )

    entry = ledger(monolith, "orders")
    assert entry is not None
    never_paid = (
        "nothing to pay, no SumUp checkout and never paid: moved as cancelled (the orders "
        "service pays an order with nothing to pay as it is made)"
    )
    assert sorted(listed_ids(entry, "moved", never_paid, "orders")) == sorted(
        orders[name] for name in ("pending", "failed", "expired", "pending with a merchant")
    )
    assert entry["source_rows"] == (
        entry["moved_rows"] + entry["collapsed_rows"] + entry["skipped_rows"]
    )
    verified = rose_split(monolith, "verify", "--move", "orders")
    assert verified.exit_code == 0, verified.output


def test_an_order_whose_description_is_longer_than_the_target_allows_moves_cut_and_noted(
    monolith,
):
    """Probe split: the legacy description is text, the orders service's varchar(255). A paid
    order with a longer one (non-ASCII here) was in no quirk of plan, and run failed the whole
    move with "value too long for type character varying(255)", naming neither the order nor
    the column; run again failed the same way. It moves with the first 255 characters, noted
    in the ledger (the whole text stays in the legacy table and finalize's backup)."""
    long_description = "Tarte tatin à la crème fraîche, " + "é" * 300
    with admin_connect(monolith, "cart") as cart:
        order = cart.execute(
            "INSERT INTO legacy.orders (user_id, status, product_total, total_amount, "
            "description, page_config_id) VALUES (7, 'paid', 12.5, 12.5, %s, "
            "(SELECT min(id) FROM legacy.page_configs WHERE sumup_merchant_code IS NOT NULL)) "
            "RETURNING id",
            (long_description,),
        ).fetchone()[0]
    cut = "description longer than 255 characters: moved as its first 255"

    planned = rose_split(monolith, "plan", "--move", "orders")
    assert planned.exit_code == 0, planned.output
    assert cut in planned.output

    moved = rose_split(monolith, "run", "--move", "page_configs", "--move", "orders")
    assert moved.exit_code == 0, moved.output
    assert "orders: verified: ok" in moved.output
    assert rows(
        monolith, "orders", "SELECT status, description FROM orders.orders WHERE id = %s", (order,)
    ) == [("paid", long_description[:255])]
    entry = ledger(monolith, "orders")
    assert entry is not None
    assert listed_ids(entry, "moved", cut, "orders") == [order]
    verified = rose_split(monolith, "verify", "--move", "orders")
    assert verified.exit_code == 0, verified.output


def test_two_active_configs_of_one_page_are_named_before_anything_moves(monolith):
    """Probe split: legacy.page_configs has no unique index, so a page (or the site) can have
    two active configs (deleted_at NULL), two SumUp merchants; the target allows one. plan
    listed no quirk; run of page_configs failed saying the TARGET already held the key
    ("resolve it in the target"; it was empty), and plan and run of orders failed with
    'duplicate key value violates unique constraint "split_orders_pkey"', a table of the
    split's own. Which merchant a page's orders pay is a person's decision: plan and run refuse
    both moves naming the page and the ids, and nothing is moved."""
    with admin_connect(monolith, "cart") as cart:
        kept, page = cart.execute(
            "SELECT id, container_id FROM legacy.page_configs WHERE container_type = 'page' "
            "AND deleted_at IS NULL AND sumup_merchant_code IS NOT NULL ORDER BY id LIMIT 1"
        ).fetchone()
        second = cart.execute(
            "INSERT INTO legacy.page_configs (container_type, container_id, features, "
            "sumup_merchant_code, sumup_checkout_prefix) VALUES ('page', %s, '{}', "
            "'MSECOND', 'second-') RETURNING id",
            (page,),
        ).fetchone()[0]
    named = f"page {page} (ids {kept}, {second})"

    for move in ("page_configs", "orders"):
        planned = rose_split(monolith, "plan", "--move", move)
        assert planned.exit_code == 1, planned.output
        assert named in planned.output, planned.output
        assert "more than one active config" in planned.output, planned.output

    moved = rose_split(monolith, "run", "--move", "page_configs", "--move", "orders")
    assert moved.exit_code == 1, moved.output
    assert named in moved.output, moved.output
    assert "already holds" not in moved.output
    assert "split_orders_pkey" not in moved.output
    assert value(monolith, "blog", "SELECT count(*) FROM blog.page_configs") == 0
    assert value(monolith, "orders", "SELECT count(*) FROM orders.orders") == 0


def test_orders_sharing_a_sumup_checkout_are_named_before_anything_moves(monolith):
    """Probe split: two legacy orders with one SumUp checkout (its id, or its reference) were in
    no quirk of plan; run failed saying 'a row the target already holds' under
    uq_payment_attempts_sumup_checkout_id ('resolve it in the target': it was empty). Which
    order a payment of that checkout paid is a person's decision: plan and run refuse the move
    naming the checkout and the orders, and nothing is moved."""
    with admin_connect(monolith, "cart") as cart:
        first, checkout, reference = cart.execute(
            "SELECT id, sumup_checkout_id, sumup_reference FROM legacy.orders "
            "WHERE status = 'paid' AND sumup_checkout_id IS NOT NULL "
            "AND sumup_reference IS NOT NULL AND (user_id IS NOT NULL OR session_id IS NOT NULL) "
            "ORDER BY id LIMIT 1"
        ).fetchone()
        insert = (
            "INSERT INTO legacy.orders (user_id, status, product_total, total_amount, "
            "page_config_id, sumup_checkout_id, sumup_reference) VALUES (7, 'paid', 5, 5, "
            "(SELECT page_config_id FROM legacy.orders WHERE id = %s), %s, %s) RETURNING id"
        )
        same_checkout = cart.execute(insert, (first, checkout, "another-reference")).fetchone()[0]
        same_reference = cart.execute(insert, (first, "co_another", reference)).fetchone()[0]
    named = (
        f"checkout {checkout} (ids {first}, {same_checkout}); "
        f"reference {reference} (ids {first}, {same_reference})"
    )

    planned = rose_split(monolith, "plan", "--move", "orders")
    assert planned.exit_code == 1, planned.output
    assert named in planned.output, planned.output

    moved = rose_split(monolith, "run", "--move", "page_configs", "--move", "orders")
    assert moved.exit_code == 1, moved.output
    assert named in moved.output, moved.output
    assert "already holds" not in moved.output
    assert value(monolith, "orders", "SELECT count(*) FROM orders.orders") == 0


def test_an_order_whose_hosted_url_is_too_long_is_named_before_anything_moves(monolith):
    """Probe split: a legacy order whose sumup_hosted_url is longer than the 1,024 characters
    orders.payment_attempts.hosted_url holds failed the orders run with 'value too long for type
    character varying(1024)', naming no row. Cut, the URL would send its buyer to a page that
    is not their checkout; without it, the order would move changed. Which URL is right is a
    person's decision: plan and run refuse the move naming the orders, and nothing is moved."""
    with admin_connect(monolith, "cart") as cart:
        orders = [
            row[0]
            for row in cart.execute(
                "SELECT id FROM legacy.orders WHERE status = 'pending' "
                "AND sumup_checkout_id IS NOT NULL ORDER BY id LIMIT 2"
            )
        ]
        cart.execute(
            "UPDATE legacy.orders SET sumup_hosted_url = %s WHERE id = ANY(%s)",
            ("https://pay.example/" + "x" * 1100, orders),
        )
    named = f"ids {orders[0]}, {orders[1]}"

    planned = rose_split(monolith, "plan", "--move", "orders")
    assert planned.exit_code == 1, planned.output
    said = " ".join(planned.output.split())
    assert named in said, said
    assert "sumup_hosted_url longer than 1,024 characters" in said, said

    moved = rose_split(monolith, "run", "--move", "page_configs", "--move", "orders")
    assert moved.exit_code == 1, moved.output
    assert named in " ".join(moved.output.split()), moved.output
    assert "value too long" not in moved.output
    assert value(monolith, "orders", "SELECT count(*) FROM orders.orders") == 0


def test_a_page_config_whose_features_are_not_an_object_keeps_its_merchant(monolith):
    """Probe split: a legacy config whose features json was not an object (an array) was
    skipped, merchant code and SumUp key with it, while orders moved its paid orders with
    page_config_id pointing at it: blog had no key for them (no refund, no settling), and the
    page fell back to the site's merchant. One whose json PostgreSQL's jsonb cannot hold
    ("\\u0000") failed the whole move with "unsupported Unicode escape sequence", naming no
    row. Both move with features {} (noted), so every moved order's config is in blog."""
    with admin_connect(monolith, "cart") as cart:
        array_config, unicode_config = (
            row[0]
            for row in cart.execute(
                "SELECT page_config_id FROM legacy.orders WHERE status = 'paid' "
                "AND page_config_id IS NOT NULL GROUP BY 1 ORDER BY 1 LIMIT 2"
            ).fetchall()
        )
        cart.execute(
            "UPDATE legacy.page_configs SET features = '[1]' WHERE id = %s", (array_config,)
        )
        cart.execute(
            "UPDATE legacy.page_configs SET features = %s WHERE id = %s",
            ('{"note": "\\u0000"}', unicode_config),
        )
    legacy = dict(
        (row[0], row[1:])
        for row in rows(
            monolith,
            "cart",
            "SELECT id, sumup_merchant_code, sumup_api_key FROM legacy.page_configs "
            "WHERE id = ANY(%s)",
            ([array_config, unicode_config],),
        )
    )

    moved = rose_split(monolith, "run", "--move", "page_configs", "--move", "orders")
    assert moved.exit_code == 0, moved.output
    assert "page_configs: verified: ok" in moved.output

    assert dict(
        (row[0], row[1:])
        for row in rows(
            monolith,
            "blog",
            "SELECT id, sumup_merchant_code, sumup_api_key, features FROM blog.page_configs "
            "WHERE id = ANY(%s)",
            ([array_config, unicode_config],),
        )
    ) == {config: (*legacy[config], {}) for config in (array_config, unicode_config)}
    configs = {row[0] for row in rows(monolith, "blog", "SELECT id FROM blog.page_configs")}
    referenced = {
        row[0]
        for row in rows(
            monolith,
            "orders",
            "SELECT DISTINCT page_config_id FROM orders.orders WHERE page_config_id IS NOT NULL",
        )
    }
    assert referenced <= configs
    entry = ledger(monolith, "page_configs")
    assert entry is not None
    noted = "features was not a JSON object the target can hold: moved as {}"
    assert sorted(listed_ids(entry, "moved", noted, "page_configs")) == sorted(
        [array_config, unicode_config]
    )
    verified = rose_split(monolith, "verify", "--move", "page_configs")
    assert verified.exit_code == 0, verified.output


def test_page_configs_relation_history_and_sequences(monolith):
    keys = rows(monolith, "cart", "SELECT id, sumup_api_key FROM legacy.page_configs ORDER BY id")
    detached = rows(
        monolith,
        "cart",
        "SELECT id, parent_id, child_type, child_id, deleted_at AT TIME ZONE 'UTC' "
        "FROM legacy.container_relations WHERE deleted_at IS NOT NULL ORDER BY id",
    )
    assert any(key for _, key in keys)
    assert detached
    assert rose_split(monolith, "run").exit_code == 0

    moved_keys = rows(
        monolith, "blog", "SELECT id, sumup_api_key FROM blog.page_configs ORDER BY id"
    )
    assert moved_keys == keys
    moved_history = rows(
        monolith,
        "relations",
        "SELECT id, parent_id, child_type, child_id, deleted_at "
        "FROM relations.container_relations WHERE deleted_at IS NOT NULL ORDER BY id",
    )
    assert moved_history == detached
    for table in ("blog.page_configs", "orders.orders", "orders.order_items"):
        service = table.split(".")[0]
        assert value(
            monolith,
            service,
            f"SELECT nextval(pg_get_serial_sequence('{table}', 'id')) > max(id) FROM {table}",
        ), table


async def test_the_services_serve_the_moved_rows(monolith, credentials):
    active = rows(
        monolith,
        "cart",
        "SELECT DISTINCT child_type, child_id FROM legacy.container_relations "
        "WHERE parent_type = 'page' AND parent_id = 10 AND deleted_at IS NULL ORDER BY 1, 2",
    )
    liked_twice = rows(
        monolith,
        "market",
        """
        SELECT l.user_id, p.slug FROM legacy.product_likes AS l
        JOIN legacy.products AS p ON p.id = l.product_id
        GROUP BY 1, 2 HAVING count(*) = 2 AND count(l.deleted_at) = 1 LIMIT 1
        """,
    )[0]
    assert len(active) == 2  # page 10: its market and its calendar, attached twice
    assert rose_split(monolith, "run").exit_code == 0
    largest_id = value(monolith, "relations", "SELECT max(id) FROM relations.container_relations")

    async with in_process_stack(monolith, credentials, ["relations", "likes"]) as stack:
        relations = stack.client("relations")
        children = await internal_get(
            relations, "get-children", {"parent_type": "page", "parent_id": 10}
        )
        assert children.status_code == 200
        assert sorted((child["child_type"], child["child_id"]) for child in children.json()) == (
            active
        )
        attached = await internal_post(
            relations,
            "attach-child",
            {"parent_type": "page", "parent_id": 10, "child_type": "market", "child_id": 999},
        )
        assert attached.status_code == 200
        assert attached.json()["id"] > largest_id

        user_id, slug = liked_twice
        liked = await internal_get(
            stack.client("likes"),
            "is-liked",
            {"user_id": user_id, "target_type": "product", "target_slug": slug},
        )
        assert liked.json() == {"liked": True}


@pytest.mark.parametrize(
    ("legacy_status", "after"),
    # The cancelled one's money goes back (refunded once SumUp has answered the refund).
    [("cancelled", ("refund_due", "refunded")), ("expired", ("paid",))],
)
async def test_a_payment_sumup_takes_for_a_legacy_closed_order_is_not_ignored(
    monolith, credentials, sandbox, legacy_status, after
):
    """Probe split: the monolith's 'cancelled' and 'expired' are its own word, not SumUp's, and
    their attempts moved as EXPIRED, final for orders. A buyer paying the checkout, still open
    at SumUp, after the cut-over: SumUp took the money, its webhook was answered 204 and
    ignored, the order stayed cancelled (or pending, then expired by reconciliation without
    asking), no refund. The attempt moves open (PENDING): the webhook applies the payment, a
    refund for the cancelled order, the expired one paid."""
    reference = f"legacy-{legacy_status}-1"
    made = sandbox.client.post(
        "/v0.1/checkouts",
        json={
            "checkout_reference": reference,
            "amount": 12.5,
            "currency": "GBP",
            "merchant_code": DEFAULT_MERCHANT_CODE,
            "description": "legacy",
        },
        headers={"Authorization": f"Bearer {DEFAULT_API_KEY}"},
    )
    assert made.status_code in (200, 201), made.text
    checkout = made.json()["id"]
    with admin_connect(monolith, "cart") as cart:
        config = cart.execute(
            "INSERT INTO legacy.page_configs (container_type, container_id, features, "
            "sumup_merchant_code, sumup_api_key, sumup_checkout_prefix) VALUES "
            "('page', 9999, '{}', %s, %s, 'legacy-') RETURNING id",
            (DEFAULT_MERCHANT_CODE, DEFAULT_API_KEY),
        ).fetchone()[0]
        order = cart.execute(
            "INSERT INTO legacy.orders (user_id, status, product_total, total_amount, "
            "page_config_id, sumup_checkout_id, sumup_reference) "
            "VALUES (7, %s, 12.5, 12.5, %s, %s, %s) RETURNING id",
            (legacy_status, config, checkout, reference),
        ).fetchone()[0]
    moved = rose_split(monolith, "run", "--move", "page_configs", "--move", "orders")
    assert moved.exit_code == 0, moved.output
    assert "orders: verified: ok" in moved.output

    # The buyer pays in a tab left open while orders starts (its first reconciliation pass
    # closes such checkouts at SumUp); SumUp then sends its webhook.
    sandbox.pay(checkout)
    async with orders_stack(monolith, credentials, sandbox.server) as stack:
        answered = await webhook(stack, order, checkout)
        assert answered.status_code in (200, 204), answered.text
    status = rows(monolith, "orders", "SELECT status FROM orders.orders WHERE id = %s", (order,))
    assert status in ([(state,)] for state in after), status
    assert rows(
        monolith,
        "orders",
        "SELECT status FROM orders.payment_attempts WHERE order_id = %s",
        (order,),
    ) == [("PAID",)]
    refunds = rows(
        monolith, "orders", "SELECT amount FROM orders.refunds WHERE order_id = %s", (order,)
    )
    assert refunds == ([(Decimal("12.50"),)] if legacy_status == "cancelled" else [])


# -- freeze, idempotence, crashes --------------------------------------------------------------
def test_the_sources_are_frozen_once_moved(monolith):
    with admin_connect(monolith, "market") as connection:
        connection.execute("UPDATE legacy.product_likes SET deleted_at = NULL WHERE id = 1")
    assert rose_split(monolith, "run", "--move", "likes").exit_code == 0
    for service, statement in (
        ("market", "UPDATE legacy.product_likes SET deleted_at = NULL WHERE id = 1"),
        ("market", "INSERT INTO legacy.products (slug, title, regular_price) VALUES ('x', 'x', 1)"),
        ("blog", "DELETE FROM legacy.post_likes"),
        ("blog", "TRUNCATE legacy.post_likes"),
    ):
        frozen = pytest.raises(psycopg.errors.ReadOnlySqlTransaction, match="move likes")
        with admin_connect(monolith, service) as connection, frozen:
            connection.execute(statement)
    # Tables of moves not run yet are still writable.
    with admin_connect(monolith, "cart") as connection:
        connection.execute("UPDATE legacy.orders SET description = description WHERE id = 1")


def test_run_refuses_while_a_service_is_connected_to_a_target_before_anything(
    monolith, credentials
):
    """Probe split: the runbook's "Before the night" step 2 wants the services stopped, and run
    did not check: with every service running, orders' reconciliation took up the moved orders
    (expired those past their time to pay), and verify, finalize and abort then refused, the
    target changed. Refused now, one line per database, before anything is frozen or written;
    a service whose database no move of the run writes does not stop it."""
    with service_sessions(monolith, credentials, "orders", 2):
        with service_sessions(monolith, credentials, "likes", 1):
            refused = rose_split(monolith, "run")
        assert refused.exit_code == 1, refused.output
        lines = refused.output.splitlines()
        assert lines[0].startswith("error: rose split run refused: ")
        assert "  db_likes: likes_app (1 session)" in lines
        assert "  db_orders: orders_app (2 sessions)" in lines
        assert lines[-1].startswith(
            'Stop the services first (docs/runbook-split.md, "Before the night", step 2)'
        )
        assert lines[-1].endswith("Nothing was frozen or written.")
        assert freeze_triggers(monolith) == []
        assert all(ledger(monolith, move.name) is None for move in MOVES)
        assert set(target_counts(monolith).values()) == {0}

        # Orders still connected: a run of the other moves goes ahead.
        moved = rose_split(monolith, "run", "--move", "likes", "--move", "relations")
        assert moved.exit_code == 0, moved.output
        refused = rose_split(monolith, "run")
        assert refused.exit_code == 1, refused.output
        assert "  db_orders: orders_app (2 sessions)" in refused.output.splitlines()
        assert "db_likes" not in refused.output  # done: this run would not write it
    assert rose_split(monolith, "run").exit_code == 0


def schema_of_targets(server: TestServer) -> dict[str, list[tuple[str, str]]]:
    """Every index and constraint of every target table, by its definition."""
    found = {}
    for move in MOVES:
        for table in move.target_tables:
            found[table] = rows(
                server,
                move.target,
                "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
                "WHERE conrelid = %s::regclass UNION ALL "
                # The stored trees too: a predicate printed alike can be a different tree.
                "SELECT indexrelid::regclass::text, pg_get_indexdef(indexrelid) || ' ' || "
                "regexp_replace(concat(indpred::text, '|', indexprs::text), "
                "':location -?[0-9]+', '', 'g') FROM pg_index "
                "WHERE indrelid = %s::regclass ORDER BY 1",
                (table, table),
            )
    return found


def index_objects(server: TestServer, service: str, table: str) -> dict[str, int]:
    """The indexes of ``table`` by name, with the object each one is (its oid)."""
    return dict(
        rows(
            server,
            service,
            "SELECT indexrelid::regclass::text, indexrelid::int8 FROM pg_index "
            "WHERE indrelid = %s::regclass",
            (table,),
        )
    )


def planned_rows(server: TestServer, name: str) -> int:
    outcome = plan_move(server.topology, MOVES_BY_NAME[name]).outcome
    assert outcome is not None
    return sum(outcome.planned.values())


def test_only_a_move_of_many_rows_rebuilds_its_targets_indexes(monolith):
    """A bulk load (indexes and keys dropped for the insert, built once after it) pays for itself
    only from ``--bulk-load-min-rows`` rows: a smaller move inserts with its indexes in place
    (the same objects after it), a larger one rebuilds them (new objects, the same names)."""
    assert BULK_LOAD_MIN_ROWS == 10_000  # the default; this practice monolith is smaller
    small = index_objects(monolith, "relations", "relations.container_relations")
    large = index_objects(monolith, "likes", "likes.likes")
    threshold = 1_000
    assert planned_rows(monolith, "relations") < threshold <= planned_rows(monolith, "likes")
    moved = rose_split(
        monolith,
        "run",
        "--move",
        "relations",
        "--move",
        "likes",
        "--bulk-load-min-rows",
        str(threshold),
    )
    assert moved.exit_code == 0, moved.output
    assert index_objects(monolith, "relations", "relations.container_relations") == small
    rebuilt = index_objects(monolith, "likes", "likes.likes")
    assert rebuilt.keys() == large.keys()
    assert set(rebuilt.values()).isdisjoint(large.values())


def test_the_bulk_load_leaves_every_index_and_constraint_as_it_was(monolith):
    """run drops the secondary indexes and foreign keys of empty targets for the insert and
    creates them again: the tables end with exactly the definitions they had."""
    before = schema_of_targets(monolith)
    assert any("FOREIGN KEY" in definition for found in before.values() for _, definition in found)
    assert rose_split(monolith, "run", "--bulk-load-min-rows", "0").exit_code == 0
    after = schema_of_targets(monolith)
    for table, found in before.items():
        assert set(after[table]) ^ set(found) == set(), table


def test_an_index_of_any_name_in_a_target_does_not_stop_the_bulk_load(monolith):
    """The bulk load tries each partial index's printed definition under a name of its own: an
    index the DBA added, whatever its name, neither clashes with it nor is lost."""
    with admin_connect(monolith, "relations") as connection:
        connection.execute(
            "CREATE INDEX split_trial_index ON relations.container_relations (child_id) "
            "WHERE deleted_at IS NOT NULL"
        )
    try:
        before = schema_of_targets(monolith)["relations.container_relations"]
        ran = rose_split(monolith, "run", "--move", "relations", "--bulk-load-min-rows", "0")
        assert ran.exit_code == 0, ran.output
        after = schema_of_targets(monolith)["relations.container_relations"]
        assert set(after) == set(before)
        assert any(name == "relations.split_trial_index" for name, _ in after)
    finally:
        # The database outlives the test (clean_db empties tables, not indexes): the index
        # made by hand would be drift to every later `rose db check`.
        with admin_connect(monolith, "relations") as connection:
            connection.execute("DROP INDEX IF EXISTS relations.split_trial_index")


def test_a_row_the_target_holds_under_another_unique_key_refuses_the_move(monolith):
    """The classification looks for rows already in the target by id; a row held under another
    unique key (here the active parent/child pair, under a new id) must refuse the move with
    the key named, never lose the source row silently or leave half a move."""
    parent_type, parent_id, child_type, child_id = rows(
        monolith,
        "cart",
        "SELECT parent_type, parent_id, child_type, child_id FROM legacy.container_relations "
        "WHERE deleted_at IS NULL ORDER BY id LIMIT 1",
    )[0]
    with admin_connect(monolith, "relations") as connection:
        connection.execute(
            "INSERT INTO relations.container_relations "
            "(id, parent_type, parent_id, child_type, child_id, created_at, updated_at) "
            "VALUES (900000, %s, %s, %s, %s, now(), now())",
            (parent_type, parent_id, child_type, child_id),
        )
    refused = rose_split(monolith, "run", "--move", "relations")
    assert refused.exit_code != 0, refused.output
    assert "uq_container_relations_active_pair" in refused.output
    assert "already holds" in refused.output
    assert "relations.container_relations id 900000" in " ".join(refused.output.split())
    assert "two of the rows this move inserts" not in refused.output
    assert "Nothing of the move was committed" in refused.output
    assert value(monolith, "relations", "SELECT count(*) FROM relations.container_relations") == 1
    assert ledger(monolith, "relations")["finished_at"] is None


def test_two_moved_rows_under_one_unique_key_are_not_blamed_on_the_target(monolith, tmp_path):
    """Probe split: below the bulk threshold, a unique violation always said the TARGET already
    held the row ('resolve it in the target') though the target was empty and two rows of the
    move itself collided. Now the refusal says which: here two active attachments of one pair
    that a faulty move file lets through both, the target empty; and still the target's row
    when it held one (test_a_row_the_target_holds_under_another_unique_key_refuses_the_move)."""
    parent_type, parent_id, child_type, child_id = rows(
        monolith,
        "cart",
        "SELECT parent_type, parent_id, child_type, child_id FROM legacy.container_relations "
        "WHERE deleted_at IS NULL ORDER BY id LIMIT 1",
    )[0]
    with admin_connect(monolith, "cart") as connection:
        connection.execute(
            "INSERT INTO legacy.container_relations "
            "(parent_type, parent_id, child_type, child_id, created_at, updated_at) "
            "VALUES (%s, %s, %s, %s, now(), now())",
            (parent_type, parent_id, child_type, child_id),
        )
    # A move file that forgets the collapse: every second active attachment moves too.
    faulty = MoveWithFaultyClassification(
        MOVES_BY_NAME["relations"],
        tmp_path / "relations.sql",
        "UPDATE split_outcome SET outcome = 'moved', reason = NULL WHERE outcome = 'collapsed'",
    )
    with pytest.raises(SplitError) as ran:
        run_moves(monolith.topology, [faulty], lambda _: None)
    said = str(ran.value)
    assert "uq_container_relations_active_pair" in said, said
    # The key named is a pair the monolith holds more than once, active (the seed has some).
    doubled = rows(
        monolith,
        "cart",
        "SELECT parent_type, parent_id, child_type, child_id FROM legacy.container_relations "
        "WHERE deleted_at IS NULL GROUP BY 1, 2, 3, 4 HAVING count(*) > 1",
    )
    assert any(f"=({a}, {b}, {c}, {d})" in said for a, b, c, d in doubled), said
    assert "already holds" not in said, said
    assert "resolve it in the target" not in said, said
    assert "two of the rows this move inserts" in said, said
    assert "the target holds no such row" in said, said
    assert "Nothing of the move was committed" in said, said
    assert value(monolith, "relations", "SELECT count(*) FROM relations.container_relations") == 0


class MoveWithFaultyClassification(Move):
    """A move whose classification ends with ``extra`` SQL (the move file's ``-- split:apply``
    part follows it unchanged): how a mistake in a move's file would look to `rose split`."""

    faulty_file: Path

    def __init__(self, move: Move, file: Path, extra: str) -> None:
        super().__init__(**{field.name: getattr(move, field.name) for field in fields(move)})
        text = move.transform_file.read_text()
        head, marker, tail = text.partition("\n-- split:apply")
        file.write_text(f"{head}\n{extra}\n\n{marker}{tail}")
        object.__setattr__(self, "faulty_file", file)

    @property
    def transform_file(self) -> Path:
        return self.faulty_file


FIRST = "(SELECT min(id) FROM stage_container_relations)"
FAULTY_CLASSIFICATIONS = {
    "a row twice": (
        "INSERT INTO split_outcome SELECT source_table, source_id, 'skipped', 'again' "
        f"FROM split_outcome WHERE source_id = {FIRST}",
        "with more than one outcome: id ",
    ),
    "a row left out": (
        f"DELETE FROM split_outcome WHERE source_id = {FIRST}",
        "without an outcome: id ",
    ),
    "a row twice and another left out": (
        "INSERT INTO split_outcome SELECT source_table, source_id, 'skipped', 'again' "
        f"FROM split_outcome WHERE source_id = {FIRST}; "
        "DELETE FROM split_outcome WHERE source_id = "
        "(SELECT max(id) FROM stage_container_relations)",
        "with more than one outcome: id ",
    ),
    # The counts match and no row has two outcomes: only the ids tell.
    "an outcome of a row never staged": (
        f"UPDATE split_outcome SET source_id = -7 WHERE source_id = {FIRST}",
        "never copied: id -7",
    ),
}
# likes classifies every row in split_like_targets (split_outcomes derives the outcomes), not by
# an outcome row each.
FIRST_KEEPER = (
    "(SELECT min(source_id) FROM split_like_targets WHERE moved AND source_table = 'product_likes')"
)
FAULTY_LIKES_CLASSIFICATIONS = {
    "a moved keeper given a second outcome": (
        f"INSERT INTO split_outcome VALUES ('product_likes', {FIRST_KEEPER}, 'skipped', 'again')",
        "with more than one outcome: id ",
    ),
    "a keeper left out": (
        f"DELETE FROM split_like_targets WHERE source_table = 'product_likes' "
        f"AND source_id = {FIRST_KEEPER}",
        "without an outcome: id ",
    ),
}


FAULTS = [("relations", fault, *found) for fault, found in FAULTY_CLASSIFICATIONS.items()] + [
    ("likes", fault, *found) for fault, found in FAULTY_LIKES_CLASSIFICATIONS.items()
]


@pytest.mark.parametrize(
    ("name", "fault", "extra", "named"), FAULTS, ids=[f"{f[0]}: {f[1]}" for f in FAULTS]
)
def test_a_move_file_that_does_not_give_every_row_one_outcome_is_refused(
    monolith, tmp_path, name, fault, extra, named
):
    """Every copied row must get exactly one outcome, and nothing else may: a move file that
    breaks this is refused by plan and by run, naming the rows, and nothing is committed."""
    move = MOVES_BY_NAME[name]
    faulty = MoveWithFaultyClassification(move, tmp_path / f"{name}.sql", extra)
    source_table = move.moved_tables[0].table
    with pytest.raises(SplitError) as planned:
        plan_move(monolith.topology, faulty)
    assert source_table in str(planned.value)
    assert named in str(planned.value)
    with pytest.raises(SplitError) as ran:
        run_moves(monolith.topology, [faulty], lambda _: None)
    assert named in str(ran.value)
    (target_table,) = move.target_tables
    assert value(monolith, move.target, f"SELECT count(*) FROM {target_table}") == 0
    assert ledger(monolith, name)["finished_at"] is None


def test_a_second_run_moves_nothing(monolith):
    assert rose_split(monolith, "run").exit_code == 0
    counts = target_counts(monolith)
    again = rose_split(monolith, "run")
    assert again.exit_code == 0, again.output
    assert "nothing to do: every move is already done" in again.output
    for move in MOVES:
        assert f"{move.name}: already done" in again.output
    assert target_counts(monolith) == counts


def test_a_run_killed_before_commit_leaves_nothing_and_the_rerun_completes(monolith):
    expected = expected_target_counts(monolith)
    indexes = schema_of_targets(monolith)
    # Bulk loads: the kill comes with the targets' indexes and keys dropped in the transaction.
    crashed = subprocess.run(
        [
            sys.executable,
            "-m",
            "ops.cli",
            "split",
            "run",
            "--bulk-load-min-rows",
            "0",
            "--database-url",
            monolith.admin_url,
        ],
        cwd=REPO_ROOT,
        env={**os.environ, CRASH_ENV: "likes:before-commit"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert crashed.returncode == CRASH_EXIT_CODE, crashed.stdout + crashed.stderr
    assert "likes: crashing before-commit" in crashed.stdout
    # The moves run at the same time: each one that committed before the crash is complete, every
    # other one (likes at least) left nothing in its target.
    counts = target_counts(monolith)
    assert counts["likes.likes"] == 0
    for move in MOVES:
        committed = ledger(monolith, move.name)["finished_at"] is not None
        for table in move.target_tables:
            assert counts[table] == (expected[table] if committed else 0), table
    interrupted = ledger(monolith, "likes")
    assert interrupted["finished_at"] is None
    assert interrupted["runs"] == 1
    assert schema_of_targets(monolith)["likes.likes"] == indexes["likes.likes"]

    # An error inside the transaction (not a crash) rolls the move back the same way.
    def fail_after_copy(move: str, point: str) -> None:
        if (move, point) == ("likes", "after-copy"):
            raise SplitError("injected failure")

    moves = [MOVES_BY_NAME[name] for name in ("likes", "page_configs", "orders")]
    with pytest.raises(SplitError, match="injected failure"):
        run_moves(monolith.topology, moves, lambda _: None, fail_after_copy)
    assert target_counts(monolith)["likes.likes"] == 0
    assert ledger(monolith, "likes")["finished_at"] is None

    resumed = rose_split(monolith, "run")
    assert resumed.exit_code == 0, resumed.output
    assert "page_configs: already done" in resumed.output
    assert target_counts(monolith) == expected
    # Started by the crashed run, the failed one and the resumed one.
    assert ledger(monolith, "likes")["runs"] == 3
    verified = rose_split(monolith, "verify")
    assert verified.exit_code == 0, verified.output


# -- verify and finalize -----------------------------------------------------------------------
def test_verify_locates_a_tampered_row_and_finalize_refuses(monolith):
    assert rose_split(monolith, "run").exit_code == 0
    item_id = value(monolith, "orders", "SELECT min(id) + 17 FROM orders.order_items")
    user_id = value(monolith, "likes", "SELECT user_id FROM likes.likes ORDER BY id LIMIT 1")
    with admin_connect(monolith, "orders") as connection:
        connection.execute(
            "UPDATE orders.order_items SET quantity = quantity + 1 WHERE id = %s", (item_id,)
        )
    with admin_connect(monolith, "likes") as connection:
        connection.execute(
            "DELETE FROM likes.likes WHERE id = (SELECT min(id) FROM likes.likes "
            "WHERE user_id = %s)",
            (user_id,),
        )

    verified = rose_split(monolith, "verify")
    assert verified.exit_code == 1
    output = verified.output
    assert "ok relations" in output
    assert "ok page_configs" in output
    assert "difference orders: orders.order_items: " in output
    assert f"differences at id {item_id} (source 1 rows, target 1 rows)" in output
    assert "orders.orders: " in output
    assert "orders.orders: source" not in output
    assert f"at user_id {user_id} " in output
    entry = ledger(monolith, "orders")
    assert entry["verified_at"] is None
    assert entry["verification"]["ok"] is False
    assert entry["verification"]["checks"]["order_items"]["differences"][0]["from"] == item_id

    refused = rose_split(monolith, "finalize")
    assert refused.exit_code == 1
    assert "likes: the last verify found differences" in refused.output
    assert "orders: the last verify found differences" in refused.output
    assert value(monolith, "cart", "SELECT to_regclass('legacy.orders') IS NOT NULL")


def test_finalize_refuses_before_verification_then_drops_the_sources(monolith, tmp_path):
    refused = rose_split(monolith, "finalize")
    assert refused.exit_code == 1
    assert "relations: not moved" in refused.output
    assert rose_split(monolith, "run", "--no-verify").exit_code == 0
    refused = rose_split(monolith, "finalize")
    assert refused.exit_code == 1
    assert "likes: moved, not verified" in refused.output

    verified = rose_split(monolith, "verify")
    assert verified.exit_code == 0, verified.output
    assert all(ledger(monolith, move.name)["verified_at"] is not None for move in MOVES)

    # A backup directory that cannot be made: one line naming it, and nothing dropped.
    (tmp_path / "a-file").write_text("")
    unwritable = rose_split(monolith, "finalize", "--backup-dir", str(tmp_path / "a-file" / "x"))
    assert unwritable.exit_code == 1
    assert isinstance(unwritable.exception, SystemExit), unwritable.exception
    assert f"cannot write {tmp_path / 'a-file' / 'x'}" in unwritable.output
    assert value(monolith, "cart", "SELECT to_regclass('legacy.cart_items') IS NOT NULL")

    finalized = rose_split(monolith, "finalize", "--backup-dir", str(tmp_path / "backups"))
    assert finalized.exit_code == 0, finalized.output
    # The archives hold merchants' SumUp keys and buyers' rows: the owner's alone, whatever
    # the umask.
    (directory,) = (tmp_path / "backups").iterdir()
    assert directory.stat().st_mode & 0o777 == 0o700
    archives = sorted(directory.iterdir())
    assert [path.name for path in archives] == [
        "db_blog.legacy.dump",
        "db_cart.legacy.dump",
        "db_market.legacy.dump",
    ]
    assert {path.stat().st_mode & 0o777 for path in archives} == {0o600}
    legacy_tables = {
        service: {
            row[0]
            for row in rows(
                monolith, service, "SELECT tablename FROM pg_tables WHERE schemaname = 'legacy'"
            )
        }
        for service in ("cart", "market", "blog")
    }
    # The lookups stay (and say so); db_cart's schema legacy is empty, so it is gone.
    assert legacy_tables == {"cart": set(), "market": {"products"}, "blog": {"posts"}}
    assert "kept db_market legacy.products" in finalized.output
    assert value(monolith, "cart", "SELECT to_regnamespace('legacy') IS NULL")
    assert all(ledger(monolith, move.name)["finalized_at"] is not None for move in MOVES)

    again = rose_split(monolith, "finalize", "--backup-dir", str(tmp_path / "backups"))
    assert again.exit_code == 0
    assert "already finalized" in again.output
    after = rose_split(monolith, "verify")
    assert after.exit_code == 0
    assert "ok likes: finalized (sources dropped " in after.output
    assert "likes.likes: unchanged since the move" in after.output


def test_db_check_accepts_the_ledger_and_notes_legacy_tables(monolith):
    assert rose_split(monolith, "run", "--move", "likes").exit_code == 0
    differences, notes = check(monolith.topology)
    assert not [line for line in differences if "split" in line or "legacy" in line]
    assert any("db_market: legacy tables present" in note for note in notes)

    with admin_connect(monolith, "likes") as connection:
        connection.execute("GRANT SELECT ON split.ledger TO likes_app")
        connection.execute("GRANT USAGE ON SCHEMA split TO likes_app")
    differences, _ = check(monolith.topology)
    assert "db_likes: extra privilege SELECT on table split.ledger for likes_app" in differences
    assert "db_likes: extra privilege USAGE on schema split for likes_app" in differences


def test_rose_db_check_is_clean_through_the_offline_night_and_after_finalize(
    monolith, credentials, tmp_path
):
    """The runbook's offline night, `rose db check` (the CLI, passwords compared) between its
    steps, the monolith's login role declared (ROSE_MONOLITH_ROLES) until the DBA drops it after
    finalize: clean before the night ("Before the night" 1), after `run` and `verify` (sources
    frozen, ledgers written: notes, not differences), after `finalize` and step 6's verify, and
    once the role is dropped and no longer declared: exit 0, no difference at all, the kept
    lookups a note. The split's own objects (ledgers, split.dropped, freeze triggers), the moved
    rows and the monolith role's grants are no drift."""
    with monolith_writer(monolith.topology):
        code, found = rose_db_check(monolith, credentials)
        # Not the split's yet: an earlier test left drift in the session's cluster.
        assert (code, found["differences"]) == (0, []), ("drift before the night", found)
        assert not [note for note in found["notes"] if "passwords not compared" in note], found

        ran = rose_split(monolith, "run")
        assert ran.exit_code == 0, ran.output
        assert rose_split(monolith, "verify").exit_code == 0
        code, found = rose_db_check(monolith, credentials)
        assert (code, found["differences"]) == (0, []), found
        assert any("db_cart: legacy tables present" in note for note in found["notes"]), found

        finalized = rose_split(monolith, "finalize", "--backup-dir", str(tmp_path))
        assert finalized.exit_code == 0, finalized.output
        after = rose_split(monolith, "verify")
        assert after.exit_code == 0, after.output
        code, found = rose_db_check(monolith, credentials)
        assert (code, found["differences"]) == (0, []), found
    # The DBA dropped the monolith's role (monolith_writer's exit) and took it out of
    # ROSE_MONOLITH_ROLES.
    code, found = rose_db_check(monolith, credentials)
    assert (code, found["ok"], found["differences"]) == (0, True, []), found
    assert sorted(found["notes"]) == [
        "db_blog: legacy tables outside the split remain (posts)",
        "db_market: legacy tables outside the split remain (products)",
    ], found


SEED_REFUSED = "seed-legacy refused"


def _legacy_counts(server: TestServer) -> dict[str, int]:
    return {
        f"{service}.{table}": value(server, service, f"SELECT count(*) FROM legacy.{table}")
        for service, table in (
            ("cart", "container_relations"),
            ("cart", "orders"),
            ("market", "products"),
            ("blog", "posts"),
        )
        if value(server, service, "SELECT to_regclass(%s) IS NOT NULL", (f"legacy.{table}",))
    }


def test_seed_legacy_refuses_while_a_ledger_records_a_move_not_aborted(monolith):
    """Audit s20b M3: seeding (with or without --replace) over a monolith a ledger records a
    move of would replace the sources that move came from; refused with one line saying why
    and how to start afresh. Once every recorded move is aborted, --replace seeds again."""
    assert rose_split(monolith, "run", "--move", "relations").exit_code == 0
    before = _legacy_counts(monolith)
    for args in (("--replace",), ()):
        refused = rose_split(monolith, "seed-legacy", *args)
        assert refused.exit_code == 1, refused.output
        assert isinstance(refused.exception, SystemExit), refused.exception
        line = " ".join(refused.output.split())
        assert SEED_REFUSED in line
        assert "relations (moved" in line
        # The runbook's practice stack: no service the split moves rows into runs.
        assert "rose up --fresh --no-demo --only events" in line
        assert "rose split abort" in line
        assert "rows" not in line  # no "seeded ... rows" line
    assert _legacy_counts(monolith) == before
    assert ledger(monolith, "relations")["finished_at"] is not None

    assert rose_split(monolith, "abort", "--move", "relations").exit_code == 0
    seeded = rose_split(monolith, "seed-legacy", "--replace")
    assert seeded.exit_code == 0, seeded.output
    assert "seeded" in seeded.output


def test_seed_legacy_refuses_after_finalize_and_keeps_its_records(monolith, tmp_path):
    """Audit s20b M3, after finalize: --replace dropped the kept lookups (legacy.products,
    legacy.posts) and finalize's records of its backups (split.dropped), after which `rose
    split restore` refused the genuine archives. Refused instead, also when only finalize's
    records are left (the ledgers gone)."""
    assert rose_split(monolith, "run").exit_code == 0
    finalized = rose_split(monolith, "finalize", "--backup-dir", str(tmp_path))
    assert finalized.exit_code == 0, finalized.output
    kept = _legacy_counts(monolith)
    dropped = {
        service: value(monolith, service, "SELECT count(*) FROM split.dropped")
        for service in ("cart", "market", "blog")
    }
    assert all(dropped.values())
    for args in (("--replace",), ()):
        refused = rose_split(monolith, "seed-legacy", *args)
        assert refused.exit_code == 1, refused.output
        line = " ".join(refused.output.split())
        assert SEED_REFUSED in line
        assert "orders (finalized" in line
        assert "db_market, db_blog, db_cart record tables finalize dropped" in line
        assert "rose split restore" in line
    assert _legacy_counts(monolith) == kept
    assert {
        service: value(monolith, service, "SELECT count(*) FROM split.dropped")
        for service in ("cart", "market", "blog")
    } == dropped

    # Only finalize's records left (say, the targets' ledgers lost): still refused.
    for move in MOVES:
        with admin_connect(monolith, move.target) as connection:
            connection.execute("DELETE FROM split.ledger")
    refused = rose_split(monolith, "seed-legacy", "--replace")
    assert refused.exit_code == 1, refused.output
    line = " ".join(refused.output.split())
    assert "record tables finalize dropped" in line
    assert "ledgers record" not in line
    assert _legacy_counts(monolith) == kept


def test_verify_and_the_commit_checksums_cover_payable_until(monolith):
    """Audit s20b L1: the orders move fills orders.payable_until (a pending order's deadline,
    which holds its bookings), but verify and the ledger's commit checksums left it out: a
    migrated pending order made payable for 30 days more passed verify, and abort's check that
    nothing wrote to the target since."""
    assert rose_split(monolith, "run", "--move", "orders").exit_code == 0
    with admin_connect(monolith, "orders") as connection:
        changed = connection.execute(
            "UPDATE orders.orders SET payable_until = payable_until + interval '30 days' "
            "WHERE id = (SELECT min(id) FROM orders.orders WHERE status = 'pending') RETURNING id"
        ).fetchone()[0]
    verified = rose_split(monolith, "verify", "--move", "orders")
    assert verified.exit_code == 1, verified.output
    assert "difference orders: orders.orders: " in verified.output
    assert f"differences at id {changed} " in verified.output
    refused = rose_split(monolith, "abort", "--move", "orders")
    assert refused.exit_code == 1, refused.output
    assert "orders.orders: " in refused.output
    assert "changed since the move" in refused.output
    assert value(monolith, "orders", "SELECT count(*) FROM orders.orders") > 0

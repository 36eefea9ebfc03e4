"""Upgrades keep data: a database at the schema an earlier main left (orders 0002, events 0001,
cart 0001) with a shop mid-checkout in it is brought to head by `rose up`'s steps (provision,
migrate, edges); orders, carts, bookings and likes are intact, and the order that was pending
before the upgrade is paid after it, clearing the cart and confirming its booking."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
import sqlalchemy as sa
import sqlalchemy.exc
from alembic import command
from alembic.migration import MigrationContext
from alembic.operations import Operations
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, pool, text
from sqlalchemy.engine import make_url

from apps.events.models import metadata as events_metadata
from apps.sumup_sandbox.app import DEFAULT_API_KEY, DEFAULT_MERCHANT_CODE
from ops.db.lifecycle import converge_databases
from ops.db.migrate import alembic_config
from tests.integration.db_fixtures import Cluster, start_cluster
from tests.integration.orders_fixtures import Sandbox, orders_overrides
from tests.pg import TestServer
from tests.waiting import eventually

EARLIER_HEADS = {"orders": "0002", "events": "0001", "cart": "0001"}


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    yield from start_cluster()


def earlier_shop(cluster: Cluster, sandbox: Sandbox) -> dict[str, int | str]:
    """The schema and data an earlier main left: a pending order whose SumUp checkout is open,
    a paid order, cart lines, a pending booking without a hold, a like."""
    for service, revision in EARLIER_HEADS.items():
        command.downgrade(alembic_config(service, cluster.topology.admin_url(service)), revision)
    with cluster.admin("blog") as blog:
        config_id = blog.execute("SELECT id FROM blog.page_configs").fetchone()[0]
        blog.execute("UPDATE blog.page_configs SET sumup_api_key = %s", (DEFAULT_API_KEY,))
    with cluster.admin("likes") as likes:
        likes.execute(
            "INSERT INTO likes.likes (user_id, target_type, target_slug) "
            "VALUES (5, 'product', 'jam')"
        )
        likes.execute(
            "INSERT INTO likes.likes (user_id, target_type, target_id) VALUES (5, 'post', 7)"
        )
    with cluster.admin("cart") as cart:
        line = cart.execute(
            "INSERT INTO cart.cart_items (user_id, product_id, quantity, "
            "market_place_container_id) VALUES (5, 31, 2, 1) RETURNING id"
        ).fetchone()[0]
        cart.execute(
            "INSERT INTO cart.cart_items (session_id, product_id, quantity, "
            "market_place_container_id) VALUES ('visitor', 32, 1, 1)"
        )
    with cluster.admin("events") as events:
        calendar = events.execute(
            "INSERT INTO events.calendars (slug, name, container_type, container_id) "
            "VALUES ('tours', 'Tours', 'page', 1) RETURNING id"
        ).fetchone()[0]
        entry = events.execute(
            "INSERT INTO events.calendar_entries (calendar_id, name, starts_at, cost, state, "
            "user_id) VALUES (%s, 'Walk', now() + interval '3 days', 5.00, 'pending', 5) "
            "RETURNING id",
            (calendar,),
        ).fetchone()[0]
    checkout = httpx.post(
        f"{sandbox.server.url}/v0.1/checkouts",
        headers={"Authorization": f"Bearer {DEFAULT_API_KEY}"},
        json={
            "checkout_reference": "rose-farm-1-1",
            "amount": 25.0,
            "currency": "EUR",
            "merchant_code": DEFAULT_MERCHANT_CODE,
            "hosted_checkout": {"enabled": True},
        },
    ).json()
    with cluster.admin("orders") as orders:
        pending = orders.execute(
            "INSERT INTO orders.orders (user_id, session_id, currency, product_total, "
            "calendar_total, ticket_total, total, description, page_config_id, merchant_code, "
            "checkout_prefix) VALUES (5, 's5', 'EUR', 20, 5, 0, 25, 'rose-ash order #1', %s, "
            "%s, 'rose-farm-') RETURNING id",
            (config_id, DEFAULT_MERCHANT_CODE),
        ).fetchone()[0]
        orders.execute(
            "INSERT INTO orders.order_items (order_id, kind, source_id, title, unit_price, "
            "currency, quantity) VALUES (%s, 'product', 31, 'Jam', 10, 'EUR', 2), "
            "(%s, 'calendar_entry', %s, 'Walk', 5, 'EUR', 1)",
            (pending, pending, entry),
        )
        orders.execute(
            "INSERT INTO orders.payment_attempts (order_id, number, checkout_reference, "
            "sumup_checkout_id, hosted_url, status, amount, currency) "
            "VALUES (%s, 1, 'rose-farm-1-1', %s, %s, 'PENDING', 25, 'EUR')",
            (pending, checkout["id"], checkout["hosted_checkout_url"]),
        )
        paid = orders.execute(
            "INSERT INTO orders.orders (user_id, status, currency, product_total, "
            "calendar_total, ticket_total, total, description, page_config_id, merchant_code, "
            "checkout_prefix, paid_at) VALUES (6, 'paid', 'EUR', 3, 0, 0, 3, 'paid before', %s, "
            "%s, 'rose-farm-', now()) RETURNING id",
            (config_id, DEFAULT_MERCHANT_CODE),
        ).fetchone()[0]
    return {
        "pending": pending,
        "paid": paid,
        "entry": entry,
        "line": line,
        "checkout": checkout["id"],
    }


async def test_an_earlier_database_upgrades_with_its_data_and_keeps_working(
    cluster: Cluster, sandbox: Sandbox
) -> None:
    shop = earlier_shop(cluster, sandbox)

    topology, credentials = cluster.topology, cluster.credentials
    converge_databases(topology, credentials, say=lambda _: None)
    check = cluster.rose("db", "check")
    assert check.exit_code == 0, check.output

    with cluster.admin("orders") as orders:
        rows = orders.execute(
            "SELECT id, status, total, payable_until > now() + interval '25 minutes' "
            "FROM orders.orders ORDER BY id"
        ).fetchall()
        claims = orders.execute("SELECT kind, ref_id, order_id FROM orders.order_claims").fetchall()
    assert [(row[0], row[1], str(row[2])) for row in rows] == [
        (shop["pending"], "pending", "25.00"),
        (shop["paid"], "paid", "3.00"),
    ]
    assert rows[0][3] is True  # a pending order gets its payable time from the upgrade
    assert claims == [("calendar_entry", shop["entry"], shop["pending"])]
    with cluster.admin("events") as events:
        [(state, held)] = events.execute(
            "SELECT state, hold_expires_at > now() FROM events.calendar_entries"
        ).fetchall()
    assert (state, held) == ("pending", True)
    with cluster.admin("cart") as cart:
        lines = cart.execute(
            "SELECT user_id, session_id, product_id, quantity FROM cart.cart_items "
            "WHERE deleted_at IS NULL ORDER BY id"
        ).fetchall()
    assert lines == [(5, None, 31, 2), (None, "visitor", 32, 1)]
    with cluster.as_role("market", "market_app") as market:
        assert market.execute(
            "SELECT target_slug FROM likes.likes WHERE target_type = 'product'"
        ).fetchall() == [("jam",)]
    with cluster.admin("likes") as likes:
        assert likes.execute(
            "SELECT user_id, target_type, target_slug, target_id FROM likes.likes ORDER BY id"
        ).fetchall() == [(5, "product", "jam", None), (5, "post", None, 7)]
        # Each target key still refuses a second row for one user and target.
        for again in (
            "target_slug) VALUES (5, 'product', 'jam')",
            "target_id) VALUES (5, 'post', 7)",
        ):
            with pytest.raises(psycopg.errors.UniqueViolation):
                likes.execute(f"INSERT INTO likes.likes (user_id, target_type, {again}")

    # The order pending before the upgrade is paid after it: cart cleared, booking confirmed.
    from tests.conftest import in_process_stack

    server = TestServer(cluster.admin_url, topology, "embedded")
    overrides = orders_overrides(sandbox.server.url, ORDERS_OUTBOX_POLL_SECONDS="0.2")
    services = ["orders", "blog", "cart", "events", "market"]
    async with in_process_stack(
        server, credentials, services, settings_overrides=overrides
    ) as stack:
        sandbox.pay(shop["checkout"])
        answer = await stack.client("orders").post(
            f"/checkout/webhook/{shop['pending']}/",
            json={"event_type": "CHECKOUT_STATUS_CHANGED", "id": shop["checkout"]},
        )
        assert answer.status_code == 204

        def settled() -> bool:
            with cluster.admin("cart") as cart, cluster.admin("events") as events:
                live = cart.execute(
                    "SELECT count(*) FROM cart.cart_items WHERE user_id = 5 AND deleted_at IS NULL"
                ).fetchone()[0]
                entry = events.execute(
                    "SELECT state, order_id FROM events.calendar_entries"
                ).fetchone()
            return live == 0 and entry == ("confirmed", shop["pending"])

        assert await eventually(settled)
    with cluster.admin("orders") as orders:
        assert orders.execute(
            "SELECT status FROM orders.orders WHERE id = %s", (shop["pending"],)
        ).fetchone() == ("paid",)
        assert orders.execute("SELECT count(*) FROM orders.refunds").fetchone() == (0,)
        # orders 0005: the messages queued by the webhook carry its trace context, and the
        # start-up reconciliation pass was recorded.
        traced = orders.execute(
            "SELECT count(*) FROM orders.outbox WHERE traceparent LIKE '00-%%'"
        ).fetchone()
        assert traced == (2,)
        assert orders.execute(
            "SELECT count(*) > 0 FROM orders.reconciliation_passes WHERE finished_at IS NOT NULL"
        ).fetchone() == (True,)


def test_a_split_pending_order_without_a_deadline_gets_one_and_none_can_lack_it(
    cluster: Cluster,
) -> None:
    """A split by an earlier main left moved pending orders without `payable_until`: payable
    without end, never expired. The upgrade gives them the 30 minutes an upgrade gives (as
    orders 0003 did), and from then on the database refuses a pending order without one."""
    command.downgrade(alembic_config("orders", cluster.topology.admin_url("orders")), "0005")
    with cluster.admin("orders") as orders:
        config_id, merchant = orders.execute(
            "SELECT page_config_id, merchant_code FROM orders.orders LIMIT 1"
        ).fetchone()
        moved = orders.execute(
            "INSERT INTO orders.orders (user_id, currency, product_total, calendar_total, "
            "ticket_total, total, description, page_config_id, merchant_code, checkout_prefix, "
            "created_at, updated_at) VALUES (7, 'EUR', 4, 0, 0, 4, 'moved by the split', %s, %s, "
            "'rose-', now() - interval '40 days', now() - interval '40 days') RETURNING id",
            (config_id, merchant),
        ).fetchone()[0]

    converge_databases(cluster.topology, cluster.credentials, say=lambda _: None)
    assert cluster.rose("db", "check").exit_code == 0

    with cluster.admin("orders") as orders:
        [(deadline_set, within)] = orders.execute(
            "SELECT payable_until IS NOT NULL, payable_until <= now() + interval '30 minutes' "
            "FROM orders.orders WHERE id = %s",
            (moved,),
        ).fetchall()
        assert (deadline_set, within) == (True, True)
        assert orders.execute(
            "SELECT count(*) FROM orders.orders WHERE status = 'pending' AND payable_until IS NULL"
        ).fetchone() == (0,)
        with pytest.raises(psycopg.errors.CheckViolation, match="pending_has_deadline"):
            orders.execute(
                "INSERT INTO orders.orders (user_id, currency, product_total, calendar_total, "
                "ticket_total, total, description, page_config_id, merchant_code, "
                "checkout_prefix) VALUES (7, 'EUR', 4, 0, 0, 4, 'no deadline', %s, %s, 'rose-')",
                (config_id, merchant),
            )


def test_claims_kept_on_bookings_a_paid_order_could_not_confirm_are_dropped(
    cluster: Cluster,
) -> None:
    """Audit F4: before this release, a paid order kept its claim on a booking events could not
    confirm (its price refunded), and that entry could never be checked out again. The upgrade
    drops such claims; an order without that refund keeps its own."""
    command.downgrade(alembic_config("orders", cluster.topology.admin_url("orders")), "0009")
    with cluster.admin("orders") as orders:
        config_id, merchant = orders.execute(
            "SELECT page_config_id, merchant_code FROM orders.orders LIMIT 1"
        ).fetchone()

        def paid_order(reference: str) -> tuple[int, int]:
            order_id = orders.execute(
                "INSERT INTO orders.orders (user_id, status, currency, product_total, "
                "calendar_total, ticket_total, total, description, page_config_id, "
                "merchant_code, checkout_prefix) VALUES (8, 'paid', 'EUR', 4, 7, 0, 11, 'paid', "
                "%s, %s, 'rose-') RETURNING id",
                (config_id, merchant),
            ).fetchone()[0]
            attempt_id = orders.execute(
                "INSERT INTO orders.payment_attempts (order_id, number, checkout_reference, "
                "sumup_checkout_id, status, amount, currency) VALUES (%s, 1, %s, %s, 'PAID', "
                "11, 'EUR') RETURNING id",
                (order_id, reference, f"checkout-{reference}"),
            ).fetchone()[0]
            orders.execute(
                "INSERT INTO orders.order_claims (kind, ref_id, order_id) VALUES "
                "('cart_line', %s, %s), ('calendar_entry', %s, %s), ('ticket', %s, %s)",
                (order_id * 10, order_id, order_id * 10, order_id, order_id * 10, order_id),
            )
            return order_id, attempt_id

        lost, lost_attempt = paid_order("upgrade-lost")
        orders.execute(
            "INSERT INTO orders.refunds (order_id, attempt_id, reason_key, reason, amount, "
            "currency, status) VALUES (%s, %s, %s, 'bookings that could not be confirmed: a', "
            "7, 'EUR', 'done')",
            (lost, lost_attempt, f"unconfirmed-bookings:{lost_attempt}"),
        )
        kept, _ = paid_order("upgrade-kept")

    converge_databases(cluster.topology, cluster.credentials, say=lambda _: None)

    with cluster.admin("orders") as orders:
        claims = orders.execute(
            "SELECT order_id, kind FROM orders.order_claims WHERE order_id IN (%s, %s) "
            "ORDER BY order_id, kind",
            (lost, kept),
        ).fetchall()
    assert claims == [
        (lost, "cart_line"),
        (kept, "calendar_entry"),
        (kept, "cart_line"),
        (kept, "ticket"),
    ]


def test_events_made_by_the_first_0006_gets_its_adopted_sessions(cluster: Cluster) -> None:
    """Audit U1: two commits of main shipped events 0006 as ``signed_in_sessions``; it was
    rewritten later under the same revision as ``adopted_sessions``. A database those commits
    made is at 0006 already, so before 0007 it never got the table the code reads (every
    anonymous booking a 500). `rose db check` names the table the models declare and the
    database lacks, and the upgrade renames the old one, keeping its rows."""
    events_url = cluster.topology.admin_url("events")
    command.downgrade(alembic_config("events", events_url), "0005")
    # 0006 as 6702985 and b47c182 shipped it, run as Alembic runs a migration (as the owner,
    # with the models' naming convention: its primary key is pk_signed_in_sessions).
    engine = create_engine(
        make_url(events_url).set(drivername="postgresql+psycopg"), poolclass=pool.NullPool
    )
    with engine.begin() as connection:
        connection.execute(text("SET ROLE events_owner"))
        early = Operations(
            MigrationContext.configure(connection, opts={"target_metadata": events_metadata})
        )
        early.create_table(
            "signed_in_sessions",
            sa.Column("session_id", sa.String(64), primary_key=True),
            sa.Column("user_id", sa.BigInteger, nullable=False),
            sa.Column(
                "signed_in_at",
                sa.DateTime(timezone=True),
                server_default=sa.func.now(),
                nullable=False,
            ),
            schema="events",
        )
        early.create_index(
            "ix_signed_in_sessions_signed_in_at",
            "signed_in_sessions",
            ["signed_in_at"],
            schema="events",
        )
        connection.execute(
            text("INSERT INTO events.signed_in_sessions (session_id, user_id) VALUES ('before', 9)")
        )
        connection.execute(text("UPDATE events.alembic_version SET version_num = '0006'"))
    engine.dispose()

    broken = cluster.rose("db", "check")
    assert broken.exit_code == 1, broken.output
    assert "events.adopted_sessions" in broken.output, broken.output
    assert "events.signed_in_sessions" in broken.output, broken.output

    converge_databases(cluster.topology, cluster.credentials, say=lambda _: None)

    mended = cluster.rose("db", "check")
    assert mended.exit_code == 0, mended.output
    with cluster.admin("events") as events:
        assert events.execute(
            "SELECT session_id, user_id, adopted_at IS NOT NULL FROM events.adopted_sessions"
        ).fetchall() == [("before", 9, True)]
        assert events.execute("SELECT to_regclass('events.signed_in_sessions')").fetchone() == (
            None,
        )
        # Named as a database made by today's 0006 names them.
        constraints = [
            name
            for (name,) in events.execute(
                "SELECT conname FROM pg_constraint "
                "WHERE conrelid = 'events.adopted_sessions'::regclass ORDER BY 1"
            )
        ]
        assert "pk_adopted_sessions" in constraints
        assert not [name for name in constraints if "signed_in" in name], constraints
        assert events.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'adopted_sessions' ORDER BY 1"
        ).fetchall() == [("ix_adopted_sessions_adopted_at",), ("pk_adopted_sessions",)]
    # The app role reads and writes it as it does any table of its service.
    with cluster.as_role("events", "events_app") as app:
        app.execute(
            "INSERT INTO events.adopted_sessions (session_id, user_id) VALUES ('after', 10)"
        )
        assert app.execute("SELECT count(*) FROM events.adopted_sessions").fetchone() == (2,)


def test_check_names_columns_the_models_do_not_match(cluster: Cluster) -> None:
    """A column added or dropped by hand is named by `rose db check`, as a table is."""
    with cluster.admin("likes") as likes:
        likes.execute("SET ROLE likes_owner")
        likes.execute("ALTER TABLE likes.likes ADD COLUMN by_hand integer")
        likes.execute("ALTER TABLE likes.request_nonces DROP COLUMN expires_at")
    try:
        check = cluster.rose("db", "check")
        assert check.exit_code == 1, check.output
        assert "db_likes: column likes.likes.by_hand is not declared by the models" in check.output
        assert "db_likes: column likes.request_nonces.expires_at is missing" in check.output
    finally:
        with cluster.admin("likes") as likes:
            likes.execute("ALTER TABLE likes.likes DROP COLUMN by_hand")
            likes.execute("SET ROLE likes_owner")
            likes.execute(
                "ALTER TABLE likes.request_nonces ADD COLUMN expires_at timestamptz NOT NULL"
            )
            likes.execute(
                "CREATE INDEX ix_request_nonces_expires_at ON likes.request_nonces (expires_at)"
            )
        assert cluster.rose("db", "check").exit_code == 0


def test_orders_keep_their_merchant_and_a_free_one_may_have_none(cluster: Cluster) -> None:
    """An order with nothing to pay needs no payment configuration (a site with only free
    places has no SumUp merchant): orders 0011 lets an order's page config, merchant code and
    checkout prefix be NULL when its total is 0, and nowhere else. The orders made before it
    keep theirs."""
    command.downgrade(alembic_config("orders", cluster.topology.admin_url("orders")), "0010")
    with cluster.admin("orders") as orders:
        config_id, merchant = orders.execute(
            "SELECT page_config_id, merchant_code FROM orders.orders LIMIT 1"
        ).fetchone()
        before = orders.execute(
            "SELECT id, status, total, page_config_id, merchant_code, checkout_prefix "
            "FROM orders.orders ORDER BY id"
        ).fetchall()
        free = orders.execute(
            "INSERT INTO orders.orders (user_id, status, currency, product_total, "
            "calendar_total, ticket_total, total, description, page_config_id, merchant_code, "
            "checkout_prefix, paid_at) VALUES (9, 'paid', 'EUR', 0, 0, 0, 0, 'free before', "
            "%s, %s, 'rose-', now()) RETURNING id, status, total, page_config_id, "
            "merchant_code, checkout_prefix",
            (config_id, merchant),
        ).fetchone()

    converge_databases(cluster.topology, cluster.credentials, say=lambda _: None)
    assert cluster.rose("db", "check").exit_code == 0

    columns = "user_id, status, currency, product_total, calendar_total, ticket_total, total, "
    columns += "description, page_config_id, merchant_code, checkout_prefix, paid_at"
    with cluster.admin("orders") as orders:
        assert orders.execute(
            "SELECT id, status, total, page_config_id, merchant_code, checkout_prefix "
            "FROM orders.orders ORDER BY id"
        ).fetchall() == [*before, free]
        nothing_to_pay = orders.execute(
            f"INSERT INTO orders.orders ({columns}) VALUES (9, 'paid', 'EUR', 0, 0, 0, 0, "
            "'free, no merchant', NULL, NULL, NULL, now()) RETURNING page_config_id"
        ).fetchone()
        assert nothing_to_pay == (None,)
        with pytest.raises(sqlalchemy.exc.DBAPIError, match="cannot be undone"):
            command.downgrade(
                alembic_config("orders", cluster.topology.admin_url("orders")), "0010"
            )
        # Anything to pay still names where it is paid: each of the three, one missing at a time.
        for missing in range(3):
            given = [str(config_id), f"'{merchant}'", "'rose-'"]
            given[missing] = "NULL"
            refused = pytest.raises(psycopg.errors.CheckViolation, match="free_or_has_merchant")
            with refused, orders.transaction():
                orders.execute(
                    f"INSERT INTO orders.orders ({columns}) VALUES (9, 'pending', 'EUR', 4, "
                    f"0, 0, 4, 'no merchant', {', '.join(given)}, now() + interval '1 hour')"
                )
        # The revision before cannot hold it (the downgrade refuses while it is there).
        orders.execute("DELETE FROM orders.orders WHERE page_config_id IS NULL")


def test_bookings_events_could_not_confirm_are_recorded_where_the_claims_tell(
    cluster: Cluster,
) -> None:
    """orders 0012: a line records when events could not confirm its booking (unconfirmed_at).
    The upgrade keeps every line as it was and fills it in where the claims an order lost say
    it (only events' answer drops a booking claim, and 0010 every booking claim of an order
    refunded for unconfirmed bookings): at the time the confirmation was delivered, else when
    the order was paid. Elsewhere it stays NULL; only a booking line can have it."""
    command.downgrade(alembic_config("orders", cluster.topology.admin_url("orders")), "0010")
    with cluster.admin("orders") as orders:
        config_id, merchant = orders.execute(
            "SELECT page_config_id, merchant_code FROM orders.orders LIMIT 1"
        ).fetchone()
        before = orders.execute(
            "SELECT id, order_id, kind, source_id, title, unit_price, quantity "
            "FROM orders.order_items ORDER BY id"
        ).fetchall()

        def order(total: int, reference: str | None) -> tuple[int, int | None]:
            order_id = orders.execute(
                "INSERT INTO orders.orders (user_id, status, currency, product_total, "
                "calendar_total, ticket_total, total, description, page_config_id, "
                "merchant_code, checkout_prefix, paid_at) VALUES (9, 'paid', 'EUR', %s, 0, 0, "
                "%s, 'paid', %s, %s, 'rose-', timestamptz '2026-12-01 10:00+00') RETURNING id",
                (total, total, config_id, merchant),
            ).fetchone()[0]
            if reference is None:
                return order_id, None
            attempt_id = orders.execute(
                "INSERT INTO orders.payment_attempts (order_id, number, checkout_reference, "
                "sumup_checkout_id, status, amount, currency) VALUES (%s, 1, %s, %s, 'PAID', "
                "%s, 'EUR') RETURNING id",
                (order_id, reference, f"checkout-{reference}", total),
            ).fetchone()[0]
            return order_id, attempt_id

        def lines(order_id: int, *kinds: str) -> list[int]:
            return [
                orders.execute(
                    "INSERT INTO orders.order_items (order_id, kind, source_id, title, "
                    "unit_price, currency, quantity) VALUES (%s, %s, %s, %s, 0, 'EUR', 1) "
                    "RETURNING id",
                    (order_id, kind, order_id * 10 + number, f"{kind} {number}"),
                ).fetchone()[0]
                for number, kind in enumerate(kinds)
            ]

        def claim(order_id: int, kind: str, ref_id: int) -> None:
            orders.execute(
                "INSERT INTO orders.order_claims (kind, ref_id, order_id) VALUES (%s, %s, %s)",
                (kind, ref_id, order_id),
            )

        def refund(order_id: int, attempt_id: int | None) -> None:
            orders.execute(
                "INSERT INTO orders.refunds (order_id, attempt_id, reason_key, reason, amount, "
                "currency) VALUES (%s, %s, %s, 'bookings that could not be confirmed: x', 2, "
                "'EUR')",
                (order_id, attempt_id, f"unconfirmed-bookings:{attempt_id}"),
            )

        # A free order: one booking confirmed (still claimed), one not (its claim dropped);
        # its confirmation's delivery is known.
        free, _ = order(0, None)
        free_kept, free_lost = lines(free, "calendar_entry", "calendar_entry")
        claim(free, "calendar_entry", free * 10)
        orders.execute(
            "INSERT INTO orders.outbox (service, action, payload, idempotency_key, "
            "delivered_at) VALUES ('events', 'confirm-for-order', '{}', %s, "
            "timestamptz '2026-12-01 10:00:02+00')",
            (f"orders:{free}:confirm-bookings",),
        )
        # A paid order after 0010: a free ticket lost, a product and an entry kept.
        paid, _ = order(4, "upgrade-0012-paid")
        paid_product, paid_kept, paid_lost = lines(paid, "product", "calendar_entry", "ticket")
        claim(paid, "cart_line", 77)
        claim(paid, "calendar_entry", paid * 10 + 1)
        # A paid order refunded before 0010, which dropped all its booking claims: which
        # booking was lost is not known here.
        refunded, refunded_attempt = order(4, "upgrade-0012-refunded")
        refunded_lines = lines(refunded, "product", "calendar_entry", "calendar_entry")
        claim(refunded, "cart_line", 78)
        refund(refunded, refunded_attempt)
        # The same refund, with a booking still claimed: 0010 did not touch it.
        later, later_attempt = order(4, "upgrade-0012-later")
        later_kept, later_lost = lines(later, "calendar_entry", "calendar_entry")
        claim(later, "calendar_entry", later * 10)
        refund(later, later_attempt)
        # Moved by the split: no claims at all.
        moved, _ = order(0, None)
        moved_lines = lines(moved, "calendar_entry")

    converge_databases(cluster.topology, cluster.credentials, say=lambda _: None)
    assert cluster.rose("db", "check").exit_code == 0

    with cluster.admin("orders") as orders:
        after = orders.execute(
            "SELECT id, order_id, kind, source_id, title, unit_price, quantity "
            "FROM orders.order_items WHERE id <= %s ORDER BY id",
            (before[-1][0],),
        ).fetchall()
        recorded = dict(
            orders.execute(
                "SELECT id, unconfirmed_at FROM orders.order_items WHERE order_id IN "
                "(%s, %s, %s, %s, %s)",
                (free, paid, refunded, later, moved),
            ).fetchall()
        )
        earlier = orders.execute(
            "SELECT count(*) FROM orders.order_items WHERE id <= %s AND unconfirmed_at IS NULL",
            (before[-1][0],),
        ).fetchone()
        with pytest.raises(psycopg.errors.CheckViolation, match="unconfirmed_is_a_booking"):
            orders.execute(
                "UPDATE orders.order_items SET unconfirmed_at = now() WHERE id = %s",
                (paid_product,),
            )
    assert after == before  # the lines there were are intact
    assert earlier == (len(before),)
    found = {line: at.isoformat() if at else None for line, at in recorded.items()}
    assert found == {
        free_kept: None,
        free_lost: "2026-12-01T10:00:02+00:00",
        paid_product: None,
        paid_kept: None,
        paid_lost: "2026-12-01T10:00:00+00:00",
        **dict.fromkeys(refunded_lines, None),
        later_kept: None,
        later_lost: "2026-12-01T10:00:00+00:00",
        **dict.fromkeys(moved_lines, None),
    }


def columns_of_orders(orders: Any) -> str:
    """The columns orders.orders has at the revision the database is at, for a select that
    compares its rows before and after an upgrade (a later revision's new column, NULL in every
    row there was, is not part of what the upgrade under test kept)."""
    return ", ".join(
        row[0]
        for row in orders.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = "
            "'orders' AND table_name = 'orders' ORDER BY ordinal_position"
        ).fetchall()
    )


def test_a_paid_order_records_the_attempt_it_was_paid_with(cluster: Cluster) -> None:
    """orders 0015: the attempt an order was paid with is recorded (paid_attempt_id). The
    upgrade fills it in for every paid order: its first attempt held PAID whose money does not
    go back as another payment's (a review's or a second payment's refund), and leaves it NULL
    where there is none: an order paid with
    nothing to pay, one never paid. Nothing else changes; it must be an attempt of the order,
    and only a paid order has one."""
    command.downgrade(alembic_config("orders", cluster.topology.admin_url("orders")), "0014")
    with cluster.admin("orders") as orders:
        config_id, merchant = orders.execute(
            "SELECT page_config_id, merchant_code FROM orders.orders "
            "WHERE merchant_code IS NOT NULL LIMIT 1"
        ).fetchone()
        columns = columns_of_orders(orders)
        before = orders.execute(f"SELECT {columns} FROM orders.orders ORDER BY id").fetchall()

        def order(total: int, paid: bool, *attempts: str) -> tuple[int, list[int]]:
            order_id = orders.execute(
                "INSERT INTO orders.orders (user_id, status, currency, product_total, "
                "calendar_total, ticket_total, total, description, page_config_id, "
                "merchant_code, checkout_prefix, paid_at, payable_until) VALUES (9, %s, 'EUR', "
                "%s, 0, 0, %s, 'o', %s, %s, 'rose-', %s, now()) RETURNING id",
                (
                    "paid" if paid else "pending",
                    total,
                    total,
                    config_id,
                    merchant,
                    "2026-12-01 10:00+00" if paid else None,
                ),
            ).fetchone()[0]
            ids = [
                orders.execute(
                    "INSERT INTO orders.payment_attempts (order_id, number, checkout_reference, "
                    "sumup_checkout_id, status, amount, currency) VALUES (%s, %s, %s, %s, %s, "
                    "%s, 'EUR') RETURNING id",
                    (
                        order_id,
                        number,
                        f"u15-{order_id}-{number}",
                        f"c15-{order_id}-{number}",
                        status,
                        total,
                    ),
                ).fetchone()[0]
                for number, status in enumerate(attempts, start=1)
            ]
            return order_id, ids

        # An earlier run of 0015 interrupted while it built its index CONCURRENTLY left it
        # invalid: dropped and built again.
        orders.execute(
            "CREATE UNIQUE INDEX uq_payment_attempts_id_order_id "
            "ON orders.payment_attempts (id, order_id)"
        )
        orders.execute(
            "UPDATE pg_index SET indisvalid = false "
            "WHERE indexrelid = 'orders.uq_payment_attempts_id_order_id'::regclass"
        )
        paid_second, paid_second_attempts = order(4, True, "EXPIRED", "PAID", "PAID")
        paid_free, _ = order(0, True)
        pending, _ = order(4, False, "PENDING")
        # Third review M1: paid with its second attempt; a review found the first paid too and
        # gave it back (recorded PAID). Another's first payment went back as a second payment.
        reviewed, reviewed_attempts = order(4, True, "PAID", "PAID")
        late, late_attempts = order(4, True, "PAID", "PAID")
        for order_id, attempt_id, kind in (
            (reviewed, reviewed_attempts[0], "review"),
            (late, late_attempts[0], "late-payment"),
        ):
            orders.execute(
                "INSERT INTO orders.refunds (order_id, attempt_id, reason_key, reason, amount, "
                "currency, status) VALUES (%s, %s, %s, 'went back', 4, 'EUR', 'done')",
                (order_id, attempt_id, f"{kind}:{attempt_id}"),
            )

    converge_databases(cluster.topology, cluster.credentials, say=lambda _: None)
    assert cluster.rose("db", "check").exit_code == 0

    with cluster.admin("orders") as orders:
        recorded = dict(
            orders.execute(
                "SELECT id, paid_attempt_id FROM orders.orders WHERE id = ANY(%s)",
                ([paid_second, paid_free, pending, reviewed, late],),
            ).fetchall()
        )
        after = orders.execute(
            f"SELECT {columns} FROM orders.orders WHERE id <= %s ORDER BY id",
            (before[-1][0] if before else 0,),
        ).fetchall()
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            orders.execute(
                "UPDATE orders.orders SET paid_attempt_id = -1 WHERE id = %s", (paid_second,)
            )
    with cluster.admin("orders") as orders, pytest.raises(psycopg.errors.ForeignKeyViolation):
        orders.execute(  # another order's attempt
            "UPDATE orders.orders SET paid_attempt_id = %s WHERE id = %s",
            (late_attempts[1], reviewed),
        )
    with (
        cluster.admin("orders") as orders,
        pytest.raises(psycopg.errors.CheckViolation, match="paid_attempt_is_paid"),
    ):
        orders.execute(
            "UPDATE orders.orders SET paid_attempt_id = %s WHERE id = %s",
            (paid_second_attempts[0], pending),
        )
    assert recorded == {
        paid_second: paid_second_attempts[1],
        paid_free: None,
        pending: None,
        reviewed: reviewed_attempts[1],
        late: late_attempts[1],
    }
    assert after == before  # every order there was is as it was


def test_paid_orders_refunded_whole_for_unconfirmed_bookings_say_so(cluster: Cluster) -> None:
    """orders 0018: a paid order none of whose lines events could confirm had its money given
    back whole and still said "paid". The upgrade moves it to refunded (its refunds done) or
    refund_due (one still going back); an order with a line confirmed, a flagged one, and one
    with no such refund stay as they were, and so does every other column."""
    command.downgrade(alembic_config("orders", cluster.topology.admin_url("orders")), "0017")
    config_id, merchant = 1, DEFAULT_MERCHANT_CODE
    with cluster.admin("orders") as orders:

        def order(*lines: bool, refund: str | None, flagged: bool = False) -> int:
            """A paid order of bookings, ``lines`` saying which could not be confirmed, and a
            refund of them in state ``refund``."""
            order_id = orders.execute(
                "INSERT INTO orders.orders (user_id, status, currency, product_total, "
                "calendar_total, ticket_total, total, description, page_config_id, "
                "merchant_code, checkout_prefix, paid_at, flagged, flag_reason) VALUES (9, "
                "'paid', 'EUR', 0, %s, 0, %s, 'o', %s, %s, 'rose-', now(), %s, %s) RETURNING id",
                (
                    2 * len(lines),
                    2 * len(lines),
                    config_id,
                    merchant,
                    flagged,
                    "a person's" if flagged else None,
                ),
            ).fetchone()[0]
            attempt_id = orders.execute(
                "INSERT INTO orders.payment_attempts (order_id, number, checkout_reference, "
                "sumup_checkout_id, status, amount, currency) VALUES (%s, 1, %s, %s, 'PAID', "
                "%s, 'EUR') RETURNING id",
                (order_id, f"u18-{order_id}", f"c18-{order_id}", 2 * len(lines)),
            ).fetchone()[0]
            orders.execute(
                "UPDATE orders.orders SET paid_attempt_id = %s WHERE id = %s",
                (attempt_id, order_id),
            )
            for number, lost in enumerate(lines):
                orders.execute(
                    "INSERT INTO orders.order_items (order_id, kind, source_id, title, "
                    "unit_price, currency, quantity, unconfirmed_at) VALUES (%s, "
                    "'calendar_entry', %s, 'tour', 2, 'EUR', 1, %s)",
                    (order_id, order_id * 10 + number, "2026-12-01 10:00+00" if lost else None),
                )
            if refund is not None:
                orders.execute(
                    "INSERT INTO orders.refunds (order_id, attempt_id, reason_key, reason, "
                    "amount, currency, status) VALUES (%s, %s, %s, 'bookings that could not "
                    "be confirmed: tour', %s, 'EUR', %s)",
                    (
                        order_id,
                        attempt_id,
                        f"unconfirmed-bookings:{attempt_id}",
                        2 * sum(lines),
                        refund,
                    ),
                )
            return order_id

        given_back = order(True, True, refund="done")
        going_back = order(True, refund="requested")
        partly = order(True, False, refund="done")
        flagged = order(True, refund="done", flagged=True)
        never_refunded = order(True, refund=None)
        ours = [given_back, going_back, partly, flagged, never_refunded]
        columns = columns_of_orders(orders)
        before = orders.execute(
            f"SELECT {columns} FROM orders.orders WHERE NOT (id = ANY(%s)) ORDER BY id", (ours,)
        ).fetchall()

    converge_databases(cluster.topology, cluster.credentials, say=lambda _: None)
    assert cluster.rose("db", "check").exit_code == 0

    with cluster.admin("orders") as orders:
        states = dict(
            orders.execute(
                "SELECT id, status FROM orders.orders WHERE id = ANY(%s)", (ours,)
            ).fetchall()
        )
        after = orders.execute(
            f"SELECT {columns} FROM orders.orders WHERE NOT (id = ANY(%s)) ORDER BY id", (ours,)
        ).fetchall()
    assert states == {
        given_back: "refunded",
        going_back: "refund_due",
        partly: "paid",
        flagged: "paid",
        never_refunded: "paid",
    }
    assert after == before


def test_0015_run_again_after_its_fill_failed_finishes_it(cluster: Cluster) -> None:
    """orders 0015 commits its index and its constraints (NOT VALID) before it fills the column
    and validates them, each without holding the writers. A run that fails after that (its
    fill here, refused by a trigger standing in for a terminated backend) leaves the database
    at 0014 with the new column and constraints in it; run again, it finishes: the column
    filled, both constraints validated, `rose db check` clean."""
    orders_url = cluster.topology.admin_url("orders")
    command.downgrade(alembic_config("orders", orders_url), "0014")
    with cluster.admin("orders") as orders:
        config_id, merchant = orders.execute(
            "SELECT page_config_id, merchant_code FROM orders.orders "
            "WHERE merchant_code IS NOT NULL LIMIT 1"
        ).fetchone()
        order_id = orders.execute(
            "INSERT INTO orders.orders (user_id, status, currency, product_total, "
            "calendar_total, ticket_total, total, description, page_config_id, merchant_code, "
            "checkout_prefix, paid_at, payable_until) VALUES (9, 'paid', 'EUR', 4, 0, 0, 4, "
            "'o', %s, %s, 'rose-', '2026-12-01 10:00+00', now()) RETURNING id",
            (config_id, merchant),
        ).fetchone()[0]
        attempt_id = orders.execute(
            "INSERT INTO orders.payment_attempts (order_id, number, checkout_reference, "
            "sumup_checkout_id, status, amount, currency) VALUES (%s, 1, %s, %s, 'PAID', 4, "
            "'EUR') RETURNING id",
            (order_id, f"r15-{order_id}", f"r15c-{order_id}"),
        ).fetchone()[0]
        orders.execute(
            "CREATE FUNCTION orders.refuse_fill() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'the fill was interrupted'; END $$"
        )
        orders.execute(
            "CREATE TRIGGER refuse_fill BEFORE UPDATE ON orders.orders "
            "FOR EACH ROW EXECUTE FUNCTION orders.refuse_fill()"
        )

    def state() -> dict[str, object]:
        with cluster.admin("orders") as orders:
            return {
                "version": orders.execute(
                    "SELECT version_num FROM orders.alembic_version"
                ).fetchone()[0],
                "paid_attempt_id": orders.execute(
                    "SELECT paid_attempt_id FROM orders.orders WHERE id = %s", (order_id,)
                ).fetchone()[0],
                "constraints": dict(
                    orders.execute(
                        "SELECT conname, convalidated FROM pg_constraint WHERE conname IN "
                        "('fk_orders_paid_attempt_id_payment_attempts', "
                        "'ck_orders_paid_attempt_is_paid', 'uq_payment_attempts_id_order_id')"
                    ).fetchall()
                ),
            }

    try:
        with pytest.raises(sqlalchemy.exc.DBAPIError, match="the fill was interrupted"):
            command.upgrade(alembic_config("orders", orders_url), "0015")
        assert state() == {
            "version": "0014",
            "paid_attempt_id": None,
            "constraints": {
                "fk_orders_paid_attempt_id_payment_attempts": False,
                "ck_orders_paid_attempt_is_paid": False,
                "uq_payment_attempts_id_order_id": True,
            },
        }
    finally:
        with cluster.admin("orders") as orders:
            orders.execute("DROP TRIGGER IF EXISTS refuse_fill ON orders.orders")
            orders.execute("DROP FUNCTION IF EXISTS orders.refuse_fill()")

    command.upgrade(alembic_config("orders", orders_url), "0015")
    assert state() == {
        "version": "0015",
        "paid_attempt_id": attempt_id,
        "constraints": {
            "fk_orders_paid_attempt_id_payment_attempts": True,
            "ck_orders_paid_attempt_is_paid": True,
            "uq_payment_attempts_id_order_id": True,
        },
    }
    converge_databases(cluster.topology, cluster.credentials, say=lambda _: None)
    assert cluster.rose("db", "check").exit_code == 0


def test_the_upgrade_says_which_revisions_it_applied() -> None:
    """Probe (upgrade): every `rose up` said `migrated: blog, market, cart, ...`, whether the
    start migrated anything or not, and never from which revision to which: an operator could
    not tell an upgrade that moved orders from 0002 to head from a plain restart. Each service
    moved is named with its revisions, and those that were at head; a start with nothing to migrate
    says so."""
    clusters = start_cluster()
    cluster = next(clusters)
    try:
        config = alembic_config("likes", cluster.topology.admin_url("likes"))
        head = ScriptDirectory.from_config(config).get_current_head()
        command.downgrade(config, "0001")
        said: list[str] = []
        converge_databases(cluster.topology, cluster.credentials, say=said.append)
        assert [line for line in said if line.startswith("migrated: ")] == [
            f"migrated: likes 0001 -> {head}; at head already: blog, market, cart, events, "
            "relations, orders"
        ]
        said.clear()
        converge_databases(cluster.topology, cluster.credentials, say=said.append)
        assert said == [
            "migrated: nothing; at head already: blog, market, cart, events, relations, likes, "
            "orders"
        ]
        # A pass that repairs something says so after its lines (a first start printed some
        # 270 lines of "cluster: missing role blog_app" and the like, never that they were made).
        with cluster.admin("market") as market:
            market.execute("GRANT TRUNCATE ON market.products TO market_app")
        said.clear()
        converge_databases(cluster.topology, cluster.credentials, say=said.append)
        repair = "db_market: extra privilege TRUNCATE on table market.products for market_app"
        assert said[:2] == [repair, said[1]], said
        assert said[1].startswith("provisioned: 0 created, 1 changed, "), said
        assert said[2].startswith("migrated: nothing; "), said
        assert len(said) == 3, said
    finally:
        clusters.close()


def test_a_view_column_the_migrations_add_is_not_left_for_a_person(cluster: Cluster) -> None:
    """Probe (upgrade2): `rose up` on a home an earlier main made (blog at 0007) said, before
    migrating, "db_blog: export view export.pages lacks column published declared by edge events
    <- blog" and "provisioned: ...; 1 left for a person", though blog 0008, run next, adds the
    column and nothing was left for anyone. Before the migrations such a difference is pending
    (they may make it); the pass after them says what remains."""
    command.downgrade(alembic_config("blog", cluster.topology.admin_url("blog")), "0007")
    said: list[str] = []
    converge_databases(cluster.topology, cluster.credentials, say=said.append)

    lacking = [line for line in said if "lacks column published" in line]
    assert lacking == [
        "db_blog: pending: export view export.pages lacks column published declared by edge "
        "events <- blog (the migrations run next make the views; the pass after them says what "
        "remains)"
    ], said
    assert not [line for line in said if "left for a person" in line], said
    assert [line for line in said if line.startswith("migrated: ")] == [
        "migrated: blog 0007 -> 0009; at head already: market, cart, events, relations, likes, "
        "orders"
    ]
    assert cluster.rose("db", "check").exit_code == 0

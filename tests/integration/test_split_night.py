"""The split night (issue 10): nothing left behind, a finalize that cannot lose data, status,
abort after a crash at any point, and verify after finalize. Each test is a finding of a DBA's
trial of `rose split`; the monolith is checked row for row (an ordered md5 of each legacy table)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from ops.db.binaries import client_tool_target, pg_binary
from ops.db.checksums import Checksum
from ops.split.checksum import checksum
from ops.split.common import CRASH_ENV, CRASH_EXIT_CODE, as_json, operator, run_file
from ops.split.moves import LEGACY_SERVICES, LEGACY_TABLES, MOVES, MOVES_BY_NAME
from ops.split.run import run_all
from ops.split.status import split_status
from tests.conftest import REPO_ROOT, admin_connect, in_process_stack
from tests.integration.split_fixtures import (
    freeze_triggers,
    ledger,
    rose_split,
    rows,
    seeded_monolith,
    service_sessions,
    target_counts,
    value,
)
from tests.signed import internal_get

if TYPE_CHECKING:
    from tests.pg import TestServer


@pytest.fixture
def monolith(clean_db: TestServer) -> Iterator[TestServer]:
    yield from seeded_monolith(clean_db)


Snapshot = dict[str, tuple[int, str]]


def legacy_snapshot(server: TestServer) -> Snapshot:
    """Every legacy table: its row count and the md5 of its rows in order, row for row."""
    snapshot = {}
    for service in LEGACY_SERVICES:
        with admin_connect(server, service) as connection:
            tables = connection.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'legacy' ORDER BY 1"
            ).fetchall()
            for (table,) in tables:
                count, digest = connection.execute(
                    f"SELECT count(*), md5(string_agg(t::text, E'\\n' ORDER BY t.id)) "
                    f"FROM legacy.{table} AS t"
                ).fetchone()
                snapshot[f"{service}.{table}"] = (count, digest)
    return snapshot


def dropped_records(server: TestServer) -> list[str]:
    found = []
    for service in LEGACY_SERVICES:
        if value(server, service, "SELECT to_regclass('split.dropped') IS NOT NULL"):
            found += [
                f"{service}.{row[0]}"
                for row in rows(server, service, "SELECT source_table FROM split.dropped")
            ]
    return found


def rose_split_process(
    server: TestServer, *args: str, crash: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`rose split ...` as its own process (so it can be killed, or crash like a killed one)."""
    env = {**os.environ, "COLUMNS": "200"}
    if crash:
        env[CRASH_ENV] = crash
    return subprocess.run(
        [sys.executable, "-m", "ops.cli", "split", *args, "--database-url", server.admin_url],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_and_verify(server: TestServer) -> None:
    moved = rose_split(server, "run")
    assert moved.exit_code == 0, moved.output
    verified = rose_split(server, "verify")
    assert verified.exit_code == 0, verified.output


def finalize(server: TestServer, backups: Path, *options: str) -> Any:
    return rose_split(server, "finalize", "--backup-dir", str(backups), *options)


def assert_writable(server: TestServer) -> None:
    """Every legacy table takes a write again (rolled back: the snapshot stays as it was)."""
    for service in LEGACY_SERVICES:
        with admin_connect(server, service) as connection:
            tables = connection.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'legacy'"
            ).fetchall()
            with connection.transaction(force_rollback=True):
                for (table,) in tables:
                    connection.execute(
                        f"UPDATE legacy.{table} SET id = id WHERE id = (SELECT min(id) FROM "
                        f"legacy.{table})"
                    )


def not_finalized(server: TestServer) -> bool:
    return all(
        (entry := ledger(server, move.name)) is not None
        and entry["finalized_at"] is None
        and entry["finalizing_at"] is None
        for move in MOVES
    )


# -- nothing left behind ------------------------------------------------------------------------
def test_plan_classifies_every_legacy_table_and_finalize_keeps_the_lookups(monolith, tmp_path):
    planned = rose_split(monolith, "plan")
    assert planned.exit_code == 0, planned.output
    for declared in LEGACY_TABLES:
        assert f"{declared}  " in planned.output
    assert "db_market legacy.products" in planned.output
    assert "kept (market's catalogue" in planned.output
    assert "db_cart legacy.cart_items" in planned.output
    assert "moved by cart" in planned.output
    before = legacy_snapshot(monolith)
    run_and_verify(monolith)

    finalized = finalize(monolith, tmp_path)
    assert finalized.exit_code == 0, finalized.output
    after = legacy_snapshot(monolith)
    # The lookups survive row for row, and their freeze is lifted; every moved table is gone.
    assert after == {key: before[key] for key in ("market.products", "blog.posts")}
    assert freeze_triggers(monolith) == []
    assert_writable(monolith)
    # Each backup printed with its path, size and sha256, which are the file's.
    backups = sorted(tmp_path.glob("*/*.dump"))
    assert [path.name for path in backups] == [
        "db_blog.legacy.dump",
        "db_cart.legacy.dump",
        "db_market.legacy.dump",
    ]
    for path in backups:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert f"backup {path}: {path.stat().st_size:,} bytes, sha256 {digest}" in finalized.output


def test_the_backups_restore_the_dropped_rows_and_abort_goes_back(monolith, tmp_path):
    """After finalize, the way back (docs/runbook-split.md): restore each backup, then abort."""
    before = legacy_snapshot(monolith)
    run_and_verify(monolith)
    assert finalize(monolith, tmp_path).exit_code == 0
    # Found before the tampered copy exists: a glob afterwards may pick the copy instead.
    archives = {path.name: path for path in tmp_path.glob("*/*.legacy.dump")}
    assert len(archives) == 3, archives
    tampered = archives["db_blog.legacy.dump"]
    copy = tmp_path / "copy" / tampered.name
    copy.parent.mkdir()
    copy.write_bytes(tampered.read_bytes() + b"x")
    refused = rose_split(monolith, "restore", str(copy))
    assert refused.exit_code == 1
    assert "not the archive it took" in refused.output
    assert str(tampered) in refused.output.replace("\n", "")  # where the right one is
    directory = rose_split(monolith, "restore", str(tampered.parent))
    assert directory.exit_code == 1
    assert "is a directory: give one of the archives in it" in directory.output
    # The services ran after finalize: likes took a like the monolith never had.
    written = value(
        monolith,
        "likes",
        "INSERT INTO likes.likes (user_id, target_type, target_slug) "
        "VALUES (999999, 'product', 'after-finalize') RETURNING id",
    )
    said = ""
    for service in ("cart", "market", "blog"):
        archive = archives[f"db_{service}.legacy.dump"]
        restored = rose_split(monolith, "restore", str(archive))
        assert restored.exit_code == 0, restored.output
        said += restored.output
    again = rose_split(monolith, "restore", str(archives["db_cart.legacy.dump"]))
    assert again.exit_code == 1
    assert "it is restored already" in again.output
    # A move whose sources are back is verified again, not declared verified: likes differs.
    assert "likes: its sources are all back; verify found differences" in said, said
    assert "orders: its sources are all back; verified" in said, said
    # The target took the new like: the service's write, told apart by the commit's checksums.
    assert "verify found differences (the service wrote to its target since" in " ".join(
        said.split()
    ), said
    states = {status.move.name: status.state for status in split_status(monolith.topology).moves}
    assert states["likes"].startswith("moved, verify found differences"), states
    assert states["orders"].startswith("verified"), states
    with admin_connect(monolith, "likes") as connection:
        connection.execute("DELETE FROM likes.likes WHERE id = %s", (written,))
    assert legacy_snapshot(monolith) == before
    assert dropped_records(monolith) == []
    aborted = rose_split(monolith, "abort")
    assert aborted.exit_code == 0, aborted.output
    assert legacy_snapshot(monolith) == before
    assert freeze_triggers(monolith) == []
    assert set(target_counts(monolith).values()) == {0}
    assert_writable(monolith)


def _restore_by_hand(server: TestServer, archive: Path) -> None:
    """docs/runbook-split.md's by-hand restore of db_cart's archive: the wheel's pg_restore, in
    one transaction, everything but the schema (finalize dropped legacy from db_cart)."""
    dsn, environment = client_tool_target(server.topology.admin_url("cart"))
    with admin_connect(server, "cart") as connection:
        connection.execute("CREATE SCHEMA IF NOT EXISTS legacy AUTHORIZATION cart_owner")
    listing = subprocess.run(
        [str(pg_binary("pg_restore")), "--list", str(archive)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    selection = archive.parent / "restore.list"
    selection.write_text(
        "\n".join(line for line in listing.splitlines() if " SCHEMA - legacy " not in line)
    )
    subprocess.run(
        [
            str(pg_binary("pg_restore")),
            "--single-transaction",
            "--exit-on-error",
            f"--use-list={selection}",
            f"--dbname={dsn}",
            str(archive),
        ],
        env=environment,
        check=True,
        capture_output=True,
    )


def test_a_restore_by_hand_is_taken_back_by_rose_split_restore(monolith, tmp_path):
    """Carried note 'restore by hand leaves moves finalized': restored by hand (the runbook's
    pg_restore), the tables were back but their moves stayed finalized, and `rose split
    restore` refused ('exist already'), so neither abort nor finalize could take them. Now
    restore finds them back, checks each is as dropped, and reopens the moves (frozen,
    verified), which abort then takes back."""
    before = legacy_snapshot(monolith)
    run_and_verify(monolith)
    assert finalize(monolith, tmp_path).exit_code == 0
    archive = next(tmp_path.glob("*/db_cart.legacy.dump"))
    _restore_by_hand(monolith, archive)

    restored = rose_split(monolith, "restore", str(archive))
    assert restored.exit_code == 0, restored.output
    said = " ".join(restored.output.split())
    assert "restored db_cart legacy.orders: " in said, said
    assert "as dropped (restored by hand)" in said, said
    assert "orders: its sources are all back; verified, no longer finalized" in said, said
    assert [name for name in dropped_records(monolith) if name.startswith("cart.")] == []
    assert "cart.orders.split_freeze_orders" in freeze_triggers(monolith)
    aborted = rose_split(monolith, "abort", "--move", "orders", "--move", "cart")
    assert aborted.exit_code == 0, aborted.output
    assert legacy_snapshot(monolith)["cart.orders"] == before["cart.orders"]
    assert value(monolith, "orders", "SELECT count(*) FROM orders.orders") == 0


def test_a_restore_by_hand_whose_rows_changed_is_refused(monolith, tmp_path):
    """A table restored by hand and then written (its freeze dropped, say) is not what finalize
    dropped: restore refuses it, naming it, and the moves stay finalized with their records."""
    run_and_verify(monolith)
    assert finalize(monolith, tmp_path).exit_code == 0
    archive = next(tmp_path.glob("*/db_cart.legacy.dump"))
    _restore_by_hand(monolith, archive)
    with admin_connect(monolith, "cart") as connection:
        connection.execute("ALTER TABLE legacy.order_items DISABLE TRIGGER USER")
        connection.execute(
            "DELETE FROM legacy.order_items WHERE id = (SELECT max(id) FROM legacy.order_items)"
        )
        connection.execute("ALTER TABLE legacy.order_items ENABLE TRIGGER USER")
    refused = rose_split(monolith, "restore", str(archive))
    assert refused.exit_code == 1, refused.output
    said = " ".join(refused.output.split())
    assert "db_cart legacy.order_items is back (restored by hand) with" in said, said
    assert "was dropped" in said, said
    assert "cart.orders" in dropped_records(monolith)
    assert ledger(monolith, "orders")["finalized_at"] is not None


def test_restore_says_the_monolith_changed_a_kept_lookup_not_the_service(monolith, tmp_path):
    """Audit s20b L2: after finalize the kept lookups are writable again, and the monolith may
    write them. Restoring brings the likes move back with a difference its target did not cause
    (the commit checksums say the target is as the move committed it): the message must say the
    sources changed, not blame the service. The refreeze reaches the kept lookups too."""
    # A post with likes, deleted by the monolith after finalize (blog's posts are kept).
    post = value(
        monolith,
        "blog",
        "SELECT post_id FROM legacy.post_likes GROUP BY post_id ORDER BY count(*) DESC LIMIT 1",
    )
    run_and_verify(monolith)
    assert finalize(monolith, tmp_path).exit_code == 0
    archives = {path.name: path for path in tmp_path.glob("*/*.legacy.dump")}
    with admin_connect(monolith, "blog") as blog:
        blog.execute("DELETE FROM legacy.posts WHERE id = %s", (post,))
    said = ""
    for service in ("cart", "market", "blog"):
        restored = rose_split(monolith, "restore", str(archives[f"db_{service}.legacy.dump"]))
        assert restored.exit_code == 0, restored.output
        said += restored.output
    said = " ".join(said.split())
    assert "likes: its sources are all back; verify found differences" in said, said
    assert "the service wrote to its target" not in said, said
    assert (
        "its target is as the move committed it, so its sources changed since: "
        "the kept lookups db_market legacy.products, db_blog legacy.posts were written "
        "after finalize"
    ) in said, said
    # The kept lookups are frozen again, as before finalize.
    assert "blog.posts.split_freeze_likes" in freeze_triggers(monolith)


# -- carts survive the cut-over -----------------------------------------------------------------
def _catalogue(server: TestServer, product_ids: list[int], page: int) -> None:
    """Market's own catalogue (market keeps its products; the split moves none): the legacy
    product ids, sold through ``page``."""
    with admin_connect(server, "market") as connection:
        connection.execute("SET ROLE market_owner")
        place = connection.execute(
            "INSERT INTO market.market_places (slug, name, container_type, container_id) "
            "VALUES ('night-market', 'Night market', 'page', %s) RETURNING id",
            (page,),
        ).fetchone()[0]
        for product_id in product_ids:
            connection.execute(
                "INSERT INTO market.products (id, slug, title, regular_price, price_currency, "
                "market_place_id) VALUES (%s, %s, %s, 4.50, 'GBP', %s)",
                (product_id, f"product-{product_id}", f"Product {product_id}", place),
            )


async def test_carts_survive_the_cut_over_and_the_services_serve_the_moved_data(
    monolith, credentials, tmp_path
):
    # A user whose cart had two live lines of one product (the monolith's concurrent adds),
    # and an anonymous cart.
    user_id, product_id, quantities = rows(
        monolith,
        "cart",
        """
        SELECT user_id, product_id, array_agg(quantity ORDER BY id) FROM legacy.cart_items
        WHERE user_id IS NOT NULL AND deleted_at IS NULL AND quantity BETWEEN 1 AND 99
          AND market_place_container_id IS NOT NULL
        GROUP BY 1, 2 HAVING count(*) = 2 ORDER BY 1 LIMIT 1
        """,
    )[0]
    lines = {
        row[0]: row[1]
        for row in rows(
            monolith,
            "cart",
            "SELECT product_id, least(sum(quantity), 99) FROM legacy.cart_items "
            "WHERE user_id = %s AND deleted_at IS NULL AND quantity > 0 "
            "AND market_place_container_id IS NOT NULL GROUP BY 1",
            (user_id,),
        )
    }
    existing = {row[0] for row in rows(monolith, "market", "SELECT id FROM legacy.products")}
    lines = {product: quantity for product, quantity in lines.items() if product in existing}
    session_id, anonymous_product = rows(
        monolith,
        "cart",
        "SELECT session_id, product_id FROM legacy.cart_items WHERE user_id IS NULL "
        "AND session_id IS NOT NULL AND deleted_at IS NULL AND quantity BETWEEN 1 AND 99 "
        "AND market_place_container_id IS NOT NULL AND product_id = ANY(%s) ORDER BY id LIMIT 1",
        (sorted(existing),),
    )[0]
    _catalogue(monolith, sorted(set(lines) | {anonymous_product}), page=1)
    page_config_id = value(monolith, "cart", "SELECT max(id) FROM legacy.page_configs")
    order_id = value(monolith, "cart", "SELECT min(id) FROM legacy.orders WHERE status = 'paid'")
    run_and_verify(monolith)
    assert finalize(monolith, tmp_path).exit_code == 0

    services = ["cart", "relations", "likes", "blog", "orders"]
    # Orders reconciles pending orders with SumUp at start-up: here nothing answers (refused at
    # once, logged); it does not touch what it reads.
    unreachable = {
        "orders": {
            "extra": {
                "ORDERS_SUMUP_BASE_URL": "http://127.0.0.1:9",
                "ORDERS_SUMUP_TIMEOUT": "1",
                "ORDERS_RECONCILE_SECONDS": "3600",
            }
        }
    }
    async with in_process_stack(
        monolith, credentials, services, settings_overrides=unreachable
    ) as stack:
        cart = await internal_get(stack.client("cart"), "cart-items", {"user_id": user_id})
        assert cart.status_code == 200, cart.text
        shown = {line["product_id"]: line for line in cart.json()["lines"]}
        assert {product: line["quantity"] for product, line in shown.items()} == lines
        assert shown[product_id]["quantity"] == min(sum(quantities), 99)
        assert shown[product_id]["title"] == f"Product {product_id}"
        assert shown[product_id]["available"] is True
        anonymous = await internal_get(
            stack.client("cart"), "cart-items", {"session_id": session_id}
        )
        assert anonymous_product in [line["product_id"] for line in anonymous.json()["lines"]]

        children = await internal_get(
            stack.client("relations"), "get-children", {"parent_type": "page", "parent_id": 10}
        )
        assert children.status_code == 200
        assert children.json()
        config = await internal_get(
            stack.client("blog"), "page-config-by-id", {"id": page_config_id}
        )
        assert config.status_code == 200, config.text
        order = await internal_get(stack.client("orders"), "order", {"order_id": order_id})
        assert order.status_code == 200, order.text
        assert order.json()["status"] == "paid"
        liked = await internal_get(
            stack.client("likes"), "liked-slugs", {"user_id": 2, "target_type": "product"}
        )
        assert liked.status_code == 200
        assert liked.json()


# -- a finalize that cannot lose data ----------------------------------------------------------
def test_finalize_gives_up_on_a_held_lock_and_drops_nothing(monolith, tmp_path):
    run_and_verify(monolith)
    before = legacy_snapshot(monolith)
    with admin_connect(monolith, "cart") as reader:
        reader.autocommit = False
        reader.execute("SELECT count(*) FROM legacy.orders")  # holds ACCESS SHARE
        reader_pid = reader.info.backend_pid
        refused = rose_split_process(
            monolith,
            "finalize",
            "--backup-dir",
            str(tmp_path),
            "--lock-timeout",
            "0.3",
            "--lock-attempts",
            "2",
            timeout=60,
        )
        assert refused.returncode == 1, refused.stdout + refused.stderr
        output = " ".join(refused.stdout.split())
        assert "could not lock db_cart legacy." in output
        assert f"pid {reader_pid}" in output
        assert "Nothing was dropped" in output
        assert legacy_snapshot(monolith) == before
        assert dropped_records(monolith) == []
        assert not_finalized(monolith)
        reader.rollback()
    assert finalize(monolith, tmp_path).exit_code == 0


def _wait_for(condition: Any, seconds: float, what: str) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"waited {seconds} s for {what}")


def test_a_killed_finalize_takes_its_server_side_drop_with_it(monolith, tmp_path):
    run_and_verify(monolith)
    before = legacy_snapshot(monolith)
    waiting_query = (
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'rose split' "
        "AND wait_event_type = 'Lock' AND datname = 'db_cart'"
    )
    with admin_connect(monolith, "cart") as reader:
        reader.autocommit = False
        reader.execute("SELECT count(*) FROM legacy.orders")
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ops.cli",
                "split",
                "finalize",
                "--backup-dir",
                str(tmp_path),
                "--lock-timeout",
                "120",
                "--lock-attempts",
                "1",
                "--database-url",
                monolith.admin_url,
            ],
            cwd=REPO_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            backend = _wait_for(
                lambda: rows(monolith, "cart", waiting_query), 60, "finalize to wait for the lock"
            )[0][0]
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
        # The server notices the dead client while the lock is still held, and ends the work.
        _wait_for(
            lambda: (
                not rows(
                    monolith, "cart", "SELECT 1 FROM pg_stat_activity WHERE pid = %s", (backend,)
                )
            ),
            10,
            "the killed finalize's backend to end",
        )
        reader.rollback()
    time.sleep(0.5)
    assert legacy_snapshot(monolith) == before
    assert dropped_records(monolith) == []
    assert not_finalized(monolith)


def test_a_finalize_killed_at_any_point_leaves_everything_or_nothing(monolith, tmp_path):
    run_and_verify(monolith)
    before = legacy_snapshot(monolith)
    for point in ("after-backup", "after-lock", "after-drop"):
        crashed = rose_split_process(
            monolith, "finalize", "--backup-dir", str(tmp_path), crash=f"finalize:{point}"
        )
        assert crashed.returncode == CRASH_EXIT_CODE, crashed.stdout + crashed.stderr
        assert legacy_snapshot(monolith) == before, point
        assert dropped_records(monolith) == [], point
        assert all(ledger(monolith, move.name)["finalized_at"] is None for move in MOVES)
    # Killed between the commits of two databases: the first one's drops are complete and
    # recorded, with their backup; the others untouched. Status says so; finalize completes.
    crashed = rose_split_process(
        monolith, "finalize", "--backup-dir", str(tmp_path), crash="finalize:between-commits"
    )
    assert crashed.returncode == CRASH_EXIT_CODE
    first = LEGACY_SERVICES[0]
    assert dropped_records(monolith) == [f"{first}.product_likes"]
    now = legacy_snapshot(monolith)
    assert now == {key: seen for key, seen in before.items() if key != f"{first}.product_likes"}
    record = rows(monolith, first, "SELECT backup_file, backup_sha256, rows FROM split.dropped")[0]
    assert hashlib.sha256(Path(record[0]).read_bytes()).hexdigest() == record[1]
    assert record[2] == before[f"{first}.product_likes"][0]
    status = rose_split_process(monolith, "status")
    assert "finalizing: 1 of 2 sources dropped" in status.stdout

    completed = finalize(monolith, tmp_path)
    assert completed.exit_code == 0, completed.output
    assert legacy_snapshot(monolith).keys() == {"market.products", "blog.posts"}
    assert all(ledger(monolith, move.name)["finalized_at"] is not None for move in MOVES)
    assert rose_split(monolith, "verify").exit_code == 0


def test_a_row_deleted_after_verify_makes_finalize_refuse(monolith, tmp_path):
    run_and_verify(monolith)
    with admin_connect(monolith, "likes") as connection:
        user_id = connection.execute(
            "DELETE FROM likes.likes WHERE id = (SELECT min(id) FROM likes.likes) RETURNING user_id"
        ).fetchone()[0]
    before = legacy_snapshot(monolith)
    refused = finalize(monolith, tmp_path)
    assert refused.exit_code == 1
    assert "refused" in refused.output
    assert "likes: likes.likes: source" in refused.output
    assert f"user_id {user_id}" in refused.output
    assert legacy_snapshot(monolith) == before
    assert not list(tmp_path.glob("*/*.dump"))
    assert not_finalized(monolith)


def test_verify_after_finalize_catches_a_later_loss(monolith, tmp_path):
    run_and_verify(monolith)
    assert finalize(monolith, tmp_path).exit_code == 0
    # A change by the service is not a loss ...
    with admin_connect(monolith, "likes") as connection:
        connection.execute(
            "UPDATE likes.likes SET deleted_at = now() WHERE id = (SELECT max(id) FROM likes.likes)"
        )
    changed = rose_split(monolith, "verify")
    assert changed.exit_code == 0, changed.output
    assert "likes.likes: " in changed.output
    assert "changed since the move" in changed.output
    # ... a downgrade that deletes the moved likes is.
    with admin_connect(monolith, "likes") as connection:
        deleted = connection.execute("DELETE FROM likes.likes").rowcount
    lost = rose_split(monolith, "verify")
    assert lost.exit_code == 1
    assert f"likes.likes: {deleted:,} of the rows the move inserted are gone" in lost.output
    assert "ok relations" in lost.output
    # And a finalized move cannot be aborted.
    refused = rose_split(monolith, "abort", "--move", "likes")
    assert refused.exit_code == 1
    assert "likes: finalized (its sources are dropped)" in refused.output


# -- status and abort --------------------------------------------------------------------------
def test_status_prints_the_ledger_as_a_table(monolith):
    fresh = rose_split_process(monolith, "status")
    assert fresh.returncode == 0, fresh.stderr
    assert "not started" in fresh.stdout
    assert "frozen: nothing" in fresh.stdout
    assert rose_split(monolith, "run", "--move", "likes", "--no-verify").exit_code == 0
    entry = ledger(monolith, "likes")
    status = rose_split_process(monolith, "status")
    line = next(line for line in status.stdout.splitlines() if "│ likes " in line)
    assert "moved, not verified" in line
    assert f"{entry['source_rows']:,} = {entry['moved_rows']:,} moved" in line
    assert (
        f"likes.likes {entry['moved_rows']:,} rows xor {entry['checksums']['likes']['xor'][:8]}"
        in line
    )
    assert entry["finished_at"].strftime("%Y-%m-%d %H:%M:%S") in line
    assert operator() in line
    assert "db_market legacy.product_likes (likes)" in status.stdout


def test_abort_after_a_crash_at_any_point_leaves_the_monolith_as_before(monolith):
    before = legacy_snapshot(monolith)
    for crash in (
        "likes:after-freeze",
        "likes:after-copy",
        "likes:after-transform",
        "likes:before-commit",
        None,  # a run that completed
        "abort:after-target",  # (below: an abort killed half way, then run again)
    ):
        if crash is not None and crash.startswith("abort"):
            assert rose_split(monolith, "run").exit_code == 0
            crashed = rose_split_process(monolith, "abort", crash=crash)
        else:
            crashed = rose_split_process(monolith, "run", crash=crash)
        assert crashed.returncode == (CRASH_EXIT_CODE if crash else 0), crashed.stdout
        if crash is not None and not crash.startswith("abort"):
            # A run that crashed after an earlier abort is that run's state, not the abort's.
            states = {
                status.move.name: status.state for status in split_status(monolith.topology).moves
            }
            assert states["likes"].startswith("started, not finished"), (crash, states)
        aborted = rose_split(monolith, "abort")
        assert aborted.exit_code == 0, aborted.output
        # Probe split: a run that failed or crashed after an earlier abort was left "started,
        # not finished" by the next abort, which said "nothing of it ... (aborted before)" and
        # "aborted likes"; seed-legacy then refused the practice round the runbook prescribes.
        state = next(
            status.state
            for status in split_status(monolith.topology).moves
            if status.move.name == "likes"
        )
        assert state.startswith("aborted"), (crash, state, aborted.output)
        assert legacy_snapshot(monolith) == before, crash
        assert freeze_triggers(monolith) == [], crash
        assert set(target_counts(monolith).values()) == {0}, crash
        assert_writable(monolith)
        again = rose_split(monolith, "abort")
        assert again.exit_code == 0, again.output
        assert legacy_snapshot(monolith) == before
    assert all(ledger(monolith, move.name)["aborted_at"] is not None for move in MOVES)
    # The night can start over.
    run_and_verify(monolith)


def test_abort_refuses_to_lose_what_was_written_after_the_move(monolith):
    assert rose_split(monolith, "run", "--move", "orders", "--move", "page_configs").exit_code == 0
    with admin_connect(monolith, "orders") as connection:
        connection.execute("UPDATE orders.orders SET status = 'cancelled' WHERE id = 1")
    refused = rose_split(monolith, "abort", "--move", "orders")
    assert refused.exit_code == 1
    assert "orders.orders" in refused.output
    assert "abort would lose it" in refused.output
    assert ledger(monolith, "orders")["finished_at"] is not None
    assert "orders" in str(freeze_triggers(monolith))
    # Both asked for: the other move is aborted, the table both read stays frozen by orders,
    # and the last lines say which move was aborted and which was not.
    both = rose_split(monolith, "abort", "--move", "orders", "--move", "page_configs")
    assert both.exit_code == 1
    assert "unfroze db_cart legacy.page_configs (page_configs); still frozen by orders" in (
        both.output
    )
    assert "othing was aborted" not in both.output
    assert both.output.strip().splitlines()[-2:] == [
        "aborted page_configs",
        "not aborted: orders (refused above)",
    ]
    assert ledger(monolith, "page_configs")["aborted_at"] is not None


def test_a_ledger_recorded_with_md5_checksums_still_compares(monolith):
    """Ledgers written before the row hash changed recorded md5 checksums without a method:
    abort (and verify after finalize) compare with them by md5, so an untouched target is
    still the commit's and a changed one is still caught."""
    assert rose_split(monolith, "run", "--move", "relations").exit_code == 0
    move = MOVES_BY_NAME["relations"]
    with admin_connect(monolith, "relations") as connection:
        run_file(connection, move.checksum_file("target"))
        md5 = {
            check.name: {
                "target_table": check.target_table,
                **{
                    key: found
                    for key, found in checksum([connection], check.view, "md5")[0].as_dict().items()
                    if key != "hash"
                },
            }
            for check in move.checks
        }
        recorded = ledger(monolith, "relations")["checksums"]
        assert {entry["hash"] for entry in recorded.values()} == {"record"}
        assert md5 != recorded
        connection.execute(
            "UPDATE split.ledger SET checksums = %s WHERE move = 'relations'", (as_json(md5),)
        )
        connection.execute(
            "UPDATE relations.container_relations SET label = 'changed' "
            "WHERE id = (SELECT min(id) FROM relations.container_relations)"
        )
    refused = rose_split(monolith, "abort", "--move", "relations")
    assert refused.exit_code == 1, refused.output
    assert "abort would lose it" in refused.output
    # Put the row back as the move wrote it: the md5 record matches again and abort goes on.
    original = value(
        monolith,
        "cart",
        "SELECT label FROM legacy.container_relations WHERE id = %s",
        (value(monolith, "relations", "SELECT min(id) FROM relations.container_relations"),),
    )
    with admin_connect(monolith, "relations") as connection:
        connection.execute(
            "UPDATE relations.container_relations SET label = %s "
            "WHERE id = (SELECT min(id) FROM relations.container_relations)",
            (original,),
        )
    aborted = rose_split(monolith, "abort", "--move", "relations")
    assert aborted.exit_code == 0, aborted.output
    assert value(monolith, "relations", "SELECT count(*) FROM relations.container_relations") == 0


# orders.orders as its check view covered it before payable_until (definition 1), written out
# here rather than read from the view that keeps it.
ORDERS_ROW_BEFORE_PAYABLE_UNTIL = (
    "row(id, user_id, session_id, page_post_id, status, currency, product_total, calendar_total, "
    "ticket_total, total, description, page_config_id, merchant_code, checkout_prefix, flagged, "
    "flag_reason, paid_at, created_at, updated_at)"
)
# Payment attempts' definition 1, before orders 0015 (whether it paid its order).
ATTEMPTS_ROW_BEFORE_PAID_ATTEMPT = (
    "row(order_id, number, checkout_reference, sumup_checkout_id, hosted_url, status, amount, "
    "currency, created_at, updated_at)"
)


def checksum_as_before(connection, target_table: str, row: str) -> dict:
    """The commit checksum of ``target_table`` as a ledger from before check definitions
    recorded it: the columns of ``row`` (its definition 1), no definition named."""
    rows_count, xor, total = connection.execute(
        "SELECT count(*), coalesce(bit_xor(h), 0), coalesce(sum(h), 0) FROM ("
        f"SELECT hashint8extended(hash_record_extended({row}, 0), 0) AS h "
        f"FROM {target_table}) AS hashed"
    ).fetchone()
    return {
        "target_table": target_table,
        **Checksum(int(rows_count), int(xor), int(total)).as_dict(),
    }


def test_a_ledger_recorded_before_payable_until_was_checked_still_compares(monolith):
    """Audit s20b L1, the upgrade: the orders check now covers payable_until (definition 2). A
    ledger whose commit checksums were taken before (no definition recorded) is compared with
    the columns it covered: an untouched target is still the commit's (abort goes on), and a
    change of a column it covered is still caught. The same for payment attempts, whose check
    covers whether each paid its order since orders 0015 (their definition 2)."""
    assert rose_split(monolith, "run", "--move", "orders").exit_code == 0
    recorded = ledger(monolith, "orders")["checksums"]
    assert recorded["orders"]["definition"] == 2
    # 3 since the attempts of expired and cancelled legacy orders move open (probe split).
    assert recorded["payment_attempts"]["definition"] == 3
    with admin_connect(monolith, "orders") as connection:
        before = checksum_as_before(connection, "orders.orders", ORDERS_ROW_BEFORE_PAYABLE_UNTIL)
        assert before != {key: found for key, found in recorded["orders"].items()}
        old = {
            name: {key: found for key, found in entry.items() if key != "definition"}
            for name, entry in recorded.items()
        }
        old["orders"] = before
        # The attempts' checksum too, as it was taken before their definition 2 (orders 0015).
        old["payment_attempts"] = checksum_as_before(
            connection, "orders.payment_attempts", ATTEMPTS_ROW_BEFORE_PAID_ATTEMPT
        )
        connection.execute(
            "UPDATE split.ledger SET checksums = %s WHERE move = 'orders'", (as_json(old),)
        )
        first = value(monolith, "orders", "SELECT min(id) FROM orders.orders")
        connection.execute(
            "UPDATE orders.orders SET description = 'changed' WHERE id = %s", (first,)
        )
    refused = rose_split(monolith, "abort", "--move", "orders")
    assert refused.exit_code == 1, refused.output
    assert "orders.orders: " in refused.output
    assert "abort would lose it" in refused.output
    with admin_connect(monolith, "orders") as connection:
        # Back as the move wrote it (orders.sql: the legacy description, or its stand-in).
        connection.execute(
            "UPDATE orders.orders SET description = %s WHERE id = %s",
            (
                value(
                    monolith,
                    "cart",
                    "SELECT coalesce(nullif(description, ''), 'rose-ash order #' || id) "
                    "FROM legacy.orders WHERE id = %s",
                    (first,),
                ),
                first,
            ),
        )
    aborted = rose_split(monolith, "abort", "--move", "orders")
    assert aborted.exit_code == 0, aborted.output
    assert value(monolith, "orders", "SELECT count(*) FROM orders.orders") == 0


def test_abort_refuses_while_the_service_runs(monolith, credentials):
    """Abort empties the target and makes the monolith writable again: with the service still
    running, what it wrote after would be in neither, and it would serve without the moved
    rows. Refused before anything changes; moves with nothing in their targets are no reason."""
    assert rose_split(monolith, "run", "--move", "relations").exit_code == 0
    moved = value(monolith, "relations", "SELECT count(*) FROM relations.container_relations")
    frozen = freeze_triggers(monolith)
    with service_sessions(monolith, credentials, "relations", 2):
        with service_sessions(monolith, credentials, "orders", 1):
            refused = rose_split(monolith, "abort")
        assert refused.exit_code == 1, refused.output
        lines = refused.output.splitlines()
        assert lines[0].startswith("error: rose split abort refused: "), lines
        assert lines[1:-1] == ["  db_relations: relations_app (2 sessions)"]
        assert lines[-1].startswith("Stop them first")
        assert (
            value(monolith, "relations", "SELECT count(*) FROM relations.container_relations")
            == moved
        )
        assert freeze_triggers(monolith) == frozen
        assert ledger(monolith, "relations")["aborted_at"] is None
    aborted = rose_split(monolith, "abort")
    assert aborted.exit_code == 0, aborted.output
    assert value(monolith, "relations", "SELECT count(*) FROM relations.container_relations") == 0


def test_abort_refuses_while_the_service_keeps_rows_of_its_own_on_the_moved_ones(monolith):
    """Carried note 'split abort ignores cascading rows': abort compared only the move's own
    target tables with the commit, then deleted the moved rows; a refund orders recorded
    since for a moved order (orders.refunds, ON DELETE CASCADE from the order and its
    attempt) went with them, silently: money owed to a buyer forgotten. Abort refuses,
    naming the table and its rows, and deletes nothing; once that row is dealt with, it aborts."""
    assert rose_split(monolith, "run", "--move", "orders").exit_code == 0
    with admin_connect(monolith, "orders") as connection:
        order_id, attempt_id, amount, currency = connection.execute(
            "SELECT order_id, id, amount, currency FROM orders.payment_attempts "
            "WHERE status = 'PAID' ORDER BY id LIMIT 1"
        ).fetchone()
        refund = connection.execute(
            "INSERT INTO orders.refunds (order_id, attempt_id, reason_key, reason, amount, "
            "currency, status) VALUES (%s, %s, 'duplicate', 'paid twice', %s, %s, 'due') "
            "RETURNING id",
            (order_id, attempt_id, amount, currency),
        ).fetchone()[0]
    moved = target_counts(monolith)

    refused = rose_split(monolith, "abort", "--move", "orders")
    assert refused.exit_code == 1, refused.output
    said = " ".join(refused.output.split())
    assert "orders.refunds" in said, said
    assert f"ids {refund}" in said, said
    assert value(monolith, "orders", "SELECT count(*) FROM orders.refunds") == 1
    assert target_counts(monolith) == moved
    assert ledger(monolith, "orders")["aborted_at"] is None

    with admin_connect(monolith, "orders") as connection:
        connection.execute("DELETE FROM orders.refunds WHERE id = %s", (refund,))
    aborted = rose_split(monolith, "abort", "--move", "orders")
    assert aborted.exit_code == 0, aborted.output
    assert value(monolith, "orders", "SELECT count(*) FROM orders.orders") == 0


def test_a_move_an_earlier_release_committed_otherwise_is_not_verified_clean(monolith):
    """Probe split: the attempts of expired and cancelled legacy orders now move PENDING
    (payment attempts' definition 3), so that orders asks SumUp about a payment still taken for
    them; a move committed by the release before holds them EXPIRED (final: such a payment
    ignored) and its ledger names definition 2. Review 5: verify compared it by its own
    definition and passed it, so finalize would have kept the money bug. It is held to this
    release's definition, and the difference says to abort and run the move again, which
    moves them open."""
    assert rose_split(monolith, "run", "--move", "orders").exit_code == 0
    closed = "SELECT id FROM legacy.orders WHERE status IN ('expired', 'cancelled')"
    closed_ids = [row[0] for row in rows(monolith, "cart", closed)]
    move = MOVES_BY_NAME["orders"]
    with admin_connect(monolith, "orders") as connection:
        # As the release before wrote them, and recorded them (with its definition's view).
        connection.execute(
            "UPDATE orders.payment_attempts SET status = 'EXPIRED' WHERE order_id = ANY(%s)",
            (closed_ids,),
        )
        run_file(connection, move.checksum_file("target"))
        before = checksum([connection], "split_check_payment_attempts_v2")[0]
        connection.execute(
            "UPDATE split.ledger SET checksums = jsonb_set(checksums, '{payment_attempts}', "
            "checksums->'payment_attempts' || %s::jsonb) WHERE move = 'orders'",
            (as_json({**before.as_dict(), "definition": 2}),),
        )
    verified = rose_split(monolith, "verify", "--move", "orders")
    assert verified.exit_code == 1, verified.output
    said = " ".join(verified.output.split())
    assert "orders.payment_attempts: moved by an earlier release (check definition 2, now 3)" in (
        said
    ), said
    assert "rose split abort --move orders" in said, said
    assert rose_split(monolith, "abort", "--move", "orders").exit_code == 0
    assert rose_split(monolith, "run", "--move", "orders").exit_code == 0
    again = rose_split(monolith, "verify", "--move", "orders")
    assert again.exit_code == 0, again.output
    with admin_connect(monolith, "orders") as connection:
        statuses = connection.execute(
            "SELECT DISTINCT status FROM orders.payment_attempts WHERE order_id = ANY(%s)",
            (closed_ids,),
        ).fetchall()
    assert statuses == [("PENDING",)]


def test_a_lock_timeout_while_freezing_tells_what_is_frozen(monolith):
    with admin_connect(monolith, "cart") as writer:
        writer.autocommit = False
        writer.execute("UPDATE legacy.orders SET description = description WHERE id = 1")
        failed = rose_split(monolith, "run", "--lock-timeout", "0.3")
        writer.rollback()
    assert failed.exit_code == 1
    output = " ".join(failed.output.split())
    assert "could not freeze the sources in db_cart" in output
    assert "stay frozen" not in output
    assert "frozen now: nothing" in output
    assert freeze_triggers(monolith) == []
    assert set(target_counts(monolith).values()) == {0}


def test_two_runs_at_once_move_each_row_once(monolith):
    """Two DBAs start `run` at the same moment: each move commits once, neither run fails."""
    results: list[Any] = []

    def one_run() -> None:
        results.append(run_all(monolith.topology, list(MOVES), lambda _: None, jobs=2))

    runs = [threading.Thread(target=one_run) for _ in range(2)]
    for started in runs:
        started.start()
    for started in runs:
        started.join(timeout=300)
    assert [result.failed for result in results] == [{}, {}]
    committed = [
        report.move.name for result in results for report in result.reports if report.outcome
    ]
    assert sorted(committed) == sorted(move.name for move in MOVES)
    verified = rose_split(monolith, "verify")
    assert verified.exit_code == 0, verified.output

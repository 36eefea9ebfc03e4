"""The online split (issue 16): `rose split sync` copies while the monolith keeps writing,
`cutover` pauses writes for the drain and the verify only. The targets after the cutover must
equal, row for row, what the offline `rose split run` makes of the final legacy state: the
tests abort the online result (the sources are frozen, so the legacy state is final), run the
offline split over the same rows, and compare every target table row for row."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from traceback import format_exception
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

from bench.split_load import MONOLITH_WRITER, WriterLoad, monolith_writer
from ops.db.credentials import Credentials
from ops.db.provision import provision
from ops.db.topology import MONOLITH_ROLES_ENV, monolith_roles_of
from ops.split.capture import install
from ops.split.common import CRASH_ENV, CRASH_EXIT_CODE
from ops.split.moves import LEGACY_SERVICES, MOVES
from ops.split.seed import seed_legacy
from ops.split.status import split_status
from tests.conftest import REPO_ROOT, admin_connect
from tests.integration.db_fixtures import start_cluster
from tests.integration.split_fixtures import (
    freeze_triggers,
    ledger,
    rose_db_check,
    rose_split,
    rows,
    seeded_monolith,
    service_sessions,
    value,
)
from tests.pg import TestServer as Server

if TYPE_CHECKING:
    from tests.pg import TestServer


@pytest.fixture
def monolith(clean_db: TestServer) -> Iterator[TestServer]:
    yield from seeded_monolith(clean_db)


# Every target table row for row, in a fixed order; likes and payment attempts without their
# ids (the move gives new ones, run or sync).
TARGET_ROWS = {
    "relations": ["SELECT t::text FROM relations.container_relations AS t ORDER BY id"],
    "likes": [
        "SELECT row(user_id, target_type, target_slug, target_id, created_at, updated_at, "
        "deleted_at)::text FROM likes.likes "
        "ORDER BY user_id, target_type, target_slug, target_id"
    ],
    "page_configs": ["SELECT t::text FROM blog.page_configs AS t ORDER BY id"],
    "cart": ["SELECT t::text FROM cart.cart_items AS t ORDER BY id"],
    "orders": [
        # The attempt an order was paid with by its number: attempt ids are new each time.
        "SELECT jsonb_set(to_jsonb(t), '{paid_attempt_id}', coalesce(to_jsonb(a.number), "
        "'null'))::text FROM orders.orders AS t "
        "LEFT JOIN orders.payment_attempts AS a ON a.id = t.paid_attempt_id ORDER BY t.id",
        "SELECT t::text FROM orders.order_items AS t ORDER BY id",
        "SELECT row(order_id, number, checkout_reference, sumup_checkout_id, hosted_url, "
        "status, amount, currency, created_at, updated_at)::text FROM orders.payment_attempts "
        "ORDER BY order_id, number",
    ],
}


def target_rows(server: Any, topology: Any = None) -> dict[str, tuple[int, str]]:
    """Per target query: the row count and the md5 of the rows in order."""
    found = {}
    for move in MOVES:
        with admin_connect(server, move.target) as connection:
            connection.execute("SET TimeZone = 'UTC'")
            for query in TARGET_ROWS[move.name]:
                lines = [row[0] for row in connection.execute(query)]
                digest = hashlib.md5("\n".join(lines).encode()).hexdigest()
                found[query.split(" FROM ")[1].split()[0]] = (len(lines), digest)
    return found


def offline_of_final_state(server: TestServer) -> dict[str, tuple[int, str]]:
    """Abort the online result (back to the monolith, which the cutover left frozen: its state
    is final), run the offline split over it, and read the targets."""
    aborted = rose_split(server, "abort")
    assert aborted.exit_code == 0, aborted.output
    ran = rose_split(server, "run")
    assert ran.exit_code == 0, ran.output
    return target_rows(server)


def capture_objects(server: Any) -> list[str]:
    found = []
    for service in LEGACY_SERVICES:
        with admin_connect(server, service) as connection:
            found += [
                row[0]
                for row in connection.execute(
                    "SELECT tgname FROM pg_trigger WHERE tgname LIKE 'split_capture%%' "
                    "UNION ALL SELECT relname FROM pg_class AS c JOIN pg_namespace AS n "
                    "ON n.oid = c.relnamespace WHERE n.nspname = 'split_capture'"
                )
            ]
    return found


def test_sync_then_cutover_equals_the_offline_run_of_the_final_state(
    monolith, credentials: Credentials
):
    server = monolith
    first = rose_split(server, "sync", "--once")
    assert first.exit_code == 0, first.output
    assert "snapshot committed" in first.output
    assert capture_objects(server)
    # The load writes as the monolith's app does: its own login role, DML grants only.
    with (
        monolith_writer(server.topology) as urls,
        WriterLoad(server.topology, seed=1, urls=urls) as load,
    ):
        for _ in range(3):
            again = rose_split(server, "sync", "--once")
            assert again.exit_code == 0, again.output
        # A provisioning mid-night (the deploy's migrate job, `rose up`), with the monolith's
        # role declared as in production: its grants stay, it still connects and writes.
        declared = replace(
            server.topology, monolith_roles=monolith_roles_of(os.environ[MONOLITH_ROLES_ENV])
        )
        assert MONOLITH_WRITER in declared.monolith_roles
        provisioned = provision(declared, credentials, say=lambda _: None)
        assert not [c.line for c in provisioned.changes if MONOLITH_WRITER in c.line]
        for url in urls.values():
            with psycopg.connect(url) as writer:
                assert writer.execute(
                    "SELECT has_schema_privilege('legacy', 'USAGE')"
                ).fetchone() == (True,)
        # A sync left running through the cutover ends by itself once every move is cut over.
        syncing = _split_process(server, "sync")
        time.sleep(3)
        cut = rose_split(server, "cutover")
        code, output = _finish(syncing, timeout=60)
    assert cut.exit_code == 0, cut.output
    assert code == 0, output
    assert "orders: cut over; its sync ends" in output
    assert load.report.writes > 50, load.report
    assert load.report.failed == 0, load.report.errors
    assert load.report.errored == 0, load.report.errors
    assert all(
        status.state.startswith("verified (online; write pause")
        for status in split_status(server.topology).moves
    )
    for move in MOVES:
        assert f"write pause {move.name}:" in cut.output
        entry = ledger(server, move.name)
        assert entry is not None
        assert entry["verified_at"] is not None
        assert entry["write_pause"] is not None
    assert capture_objects(server) == []
    online = target_rows(server)
    assert online == offline_of_final_state(server)


def test_the_monolith_writing_as_its_own_role_keeps_writing_while_captured(monolith):
    """Audit s20b H1: the monolith's app writes as an ordinary login role (DML grants on the
    legacy tables; not a superuser, not their owner). Once the capture is installed its
    inserts, updates and deletes must still succeed and be captured, and the next round move
    them, while schema split_capture stays closed to it."""
    server = monolith
    first = rose_split(server, "sync", "--once", "--move", "cart")
    assert first.exit_code == 0, first.output
    with (
        monolith_writer(server.topology, services=("cart",)) as urls,
        psycopg.connect(urls["cart"], autocommit=True) as writer,
    ):
        added = writer.execute(
            "INSERT INTO legacy.cart_items (user_id, product_id, quantity, "
            "market_place_container_id) VALUES (5, 2, 1, 1) RETURNING id"
        ).fetchone()[0]
        writer.execute("UPDATE legacy.cart_items SET quantity = 3 WHERE id = %s", (added,))
        removed = writer.execute(
            "DELETE FROM legacy.cart_items WHERE user_id IS NOT NULL AND deleted_at IS NULL "
            "AND quantity > 0 AND id <> %s RETURNING user_id, product_id",
            (added,),
        ).fetchone()
        # The capture is the split's: the writer can neither read it nor call its functions.
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            writer.execute("SELECT count(*) FROM split_capture.cart")
        assert not writer.execute(
            "SELECT bool_or(has_function_privilege(p.oid, 'EXECUTE')) FROM pg_proc AS p "
            "JOIN pg_namespace AS n ON n.oid = p.pronamespace WHERE n.nspname = 'split_capture'"
        ).fetchone()[0]
    captured = [
        row[0] for row in rows(server, "cart", "SELECT key FROM split_capture.cart ORDER BY id")
    ]
    assert [5, None, 2] in captured
    assert [removed[0], None, removed[1]] in captured
    again = rose_split(server, "sync", "--once", "--move", "cart")
    assert again.exit_code == 0, again.output
    assert (
        value(
            server,
            "cart",
            "SELECT sum(quantity) FROM cart.cart_items WHERE user_id = 5 AND product_id = 2 "
            "AND deleted_at IS NULL",
        )
        >= 3
    )
    assert value(server, "cart", "SELECT count(*) FROM split_capture.cart") == 0
    cut = rose_split(server, "cutover", "--move", "cart")
    assert cut.exit_code == 0, cut.output
    assert "cart: verified" in cut.output


def test_lookup_edits_during_sync_reach_the_moved_rows(monolith):
    """Products and posts are lookups (no move owns them), but their edits change moved rows:
    a product renamed or removed while the sync runs changes its likes (they name it by slug)
    and its cart lines (a removed product's lines are skipped); a post removed orphans its
    likes. The sync applies them, the cutover's verify passes, and the targets equal the
    offline run of the final state."""
    server = monolith
    first = rose_split(server, "sync", "--once")
    assert first.exit_code == 0, first.output
    with admin_connect(server, "cart") as cart:
        in_carts = [
            row[0]
            for row in cart.execute(
                "SELECT DISTINCT product_id FROM legacy.cart_items "
                "WHERE deleted_at IS NULL AND quantity > 0 ORDER BY 1"
            )
        ]
    with admin_connect(server, "market") as market:
        liked = [
            row[0]
            for row in market.execute(
                "SELECT DISTINCT product_id FROM legacy.product_likes WHERE product_id = ANY(%s) "
                "ORDER BY 1",
                (in_carts,),
            )
        ]
        renamed, removed = liked[0], liked[1]
        market.execute(
            "UPDATE legacy.products SET slug = slug || '-renamed' WHERE id = %s", (renamed,)
        )
        market.execute("DELETE FROM legacy.products WHERE id = %s", (removed,))
    with admin_connect(server, "blog") as blog:
        blog.execute(
            "DELETE FROM legacy.posts WHERE id = (SELECT post_id FROM legacy.post_likes "
            "JOIN legacy.posts AS p ON p.id = post_id ORDER BY post_id LIMIT 1)"
        )
    again = rose_split(server, "sync", "--once")
    assert again.exit_code == 0, again.output
    cut = rose_split(server, "cutover")
    assert cut.exit_code == 0, cut.output
    assert value(
        server,
        "likes",
        "SELECT count(*) FROM likes.likes WHERE target_slug LIKE '%%-renamed'",
    )
    online = target_rows(server)
    assert online == offline_of_final_state(server)


def test_abort_during_sync_leaves_the_monolith_and_removes_the_capture(monolith):
    server = monolith
    synced = rose_split(server, "sync", "--once", "--move", "likes")
    assert synced.exit_code == 0, synced.output
    assert value(server, "likes", "SELECT count(*) FROM likes.likes") > 0
    drift = _db_check(server)
    # Syncing: the capture (its triggers, change table, sequence and schema) is a note, not drift.
    assert "change capture" not in drift
    assert "split_capture" not in drift, drift
    states = {status.move.name: status.state for status in split_status(server.topology).moves}
    assert states["likes"].startswith("syncing online (snapshot committed")
    offline = rose_split(server, "run", "--move", "likes")
    assert offline.exit_code == 1
    assert "being synced online" in offline.output
    aborted = rose_split(server, "abort", "--move", "likes")
    assert aborted.exit_code == 0, aborted.output
    assert value(server, "likes", "SELECT count(*) FROM likes.likes") == 0
    assert capture_objects(server) == []


def test_db_check_names_a_leftover_capture(monolith):
    server = monolith
    synced = rose_split(server, "sync", "--once", "--move", "relations")
    assert synced.exit_code == 0, synced.output
    with admin_connect(server, "relations") as connection:
        # As if the ledger's sync were gone (a dropped ledger, a hand-made trigger).
        connection.execute("UPDATE split.ledger SET sync_started_at = NULL")
    found = _db_check(server)
    assert "leftover split change capture" in found
    assert "split_capture_relations" in found


def _split_process(server: Any, *args: str, crash: str | None = None) -> subprocess.Popen[str]:
    env = {**os.environ, "COLUMNS": "200"}
    if crash:
        env[CRASH_ENV] = crash
    return subprocess.Popen(
        [sys.executable, "-m", "ops.cli", "split", *args, "--database-url", server.admin_url],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(process: subprocess.Popen[str], timeout: float = 120) -> tuple[int, str]:
    output, _ = process.communicate(timeout=timeout)
    return process.returncode, output


@pytest.fixture
def own_cluster() -> Iterator[Server]:
    """A cluster of its own: the test restarts PostgreSQL."""
    clusters = start_cluster()
    cluster = next(clusters)
    server = Server(cluster.admin_url, cluster.topology, "embedded", cluster.server)
    with cluster.admin("blog") as blog:
        blog.execute("DELETE FROM blog.page_configs")  # the sync moves into empty targets
    seed_legacy(server.topology, 1, replace=False, say=lambda _: None)
    try:
        yield server
    finally:
        clusters.close()


def test_cutover_refuses_while_the_service_of_a_move_to_cut_over_runs(monolith, credentials):
    """The runbook starts each move's service once its move is cut over: the cutover records
    the target as it is (what the service wrote before would count as moved). A cutover with
    the service running is refused before its freeze; a move cut over already is no reason."""
    server = monolith
    synced = rose_split(server, "sync", "--once", "--move", "relations", "--move", "likes")
    assert synced.exit_code == 0, synced.output
    assert rose_split(server, "cutover", "--move", "likes").exit_code == 0
    with service_sessions(server, credentials, "relations", 1):
        with service_sessions(server, credentials, "likes", 1):
            refused = rose_split(server, "cutover", "--move", "likes", "--move", "relations")
        assert refused.exit_code == 1, refused.output
        lines = refused.output.splitlines()
        assert lines[0].startswith("error: rose split cutover refused: "), lines
        assert lines[1:-1] == ["  db_relations: relations_app (1 session)"]
        assert lines[-1].startswith("Stop them until their moves are cut over")
        assert not ledger(server, "relations")["finished_at"]
        assert [name for name in freeze_triggers(server) if "relations" in name] == []
    cut = rose_split(server, "cutover", "--move", "likes", "--move", "relations")
    assert cut.exit_code == 0, cut.output
    assert "relations: verified: the frozen sources match the target as cut over" in cut.output


def test_a_cutover_killed_after_its_record_is_named_and_completed_by_the_next(monolith):
    """Killed between the end of the write pause and the move's record (ids, checksums): verify
    and abort say what happened and what finishes it, no traceback; the next cutover records,
    verifies and keeps the write pause, and abort then goes back."""
    server = monolith
    synced = rose_split(server, "sync", "--once", "--move", "relations")
    assert synced.exit_code == 0, synced.output
    # While the move syncs, plan and verify point at the cutover, not at `run`.
    planned = rose_split(server, "plan", "--move", "relations")
    assert planned.exit_code == 0, planned.output
    assert "syncing online" in planned.output
    assert "run starts it again" not in planned.output
    syncing = rose_split(server, "verify", "--move", "relations")
    assert syncing.exit_code == 1
    assert "rose split cutover --move relations" in syncing.output
    assert "rose split run" not in syncing.output

    code, output = _finish(
        _split_process(
            server, "cutover", "--move", "relations", crash="relations:cutover-after-record"
        )
    )
    assert code == CRASH_EXIT_CODE, output
    unrecorded = "its cutover stopped before recording it: `rose split cutover --move relations`"
    verified = rose_split(server, "verify", "--move", "relations")
    assert verified.exit_code == 1
    assert isinstance(verified.exception, SystemExit), "".join(format_exception(*verified.exc_info))
    assert unrecorded in verified.output
    refused = rose_split(server, "abort", "--move", "relations")
    assert refused.exit_code == 1
    assert unrecorded in refused.output
    assert "earlier version" not in refused.output
    states = {status.move.name: status.state for status in split_status(server.topology).moves}
    assert "cutover stopped before recording it" in states["relations"]

    again = rose_split(server, "cutover", "--move", "relations")
    assert again.exit_code == 0, again.output
    assert "relations: verified: the frozen sources match the target as cut over" in again.output
    assert ledger(server, "relations")["write_pause"] is not None
    assert capture_objects(server) == []
    aborted = rose_split(server, "abort", "--move", "relations")
    assert aborted.exit_code == 0, aborted.output
    assert value(server, "relations", "SELECT count(*) FROM relations.container_relations") == 0


def _as_begun_by_an_earlier_release(server: Any, definitions: dict[str, int] | None) -> list[int]:
    """The orders sync's snapshot as a release with ``definitions`` (None: a release that
    recorded none) took it: the attempts of expired and cancelled legacy orders EXPIRED, as
    payment attempts' definition 2 moved them. The ids of those orders."""
    closed = rows(
        server, "cart", "SELECT id FROM legacy.orders WHERE status IN ('expired', 'cancelled')"
    )
    closed_ids = [row[0] for row in closed]
    assert closed_ids
    with admin_connect(server, "orders") as connection:
        connection.execute(
            "UPDATE orders.payment_attempts SET status = 'EXPIRED' WHERE order_id = ANY(%s)",
            (closed_ids,),
        )
        connection.execute(
            "UPDATE split.ledger SET sync_definitions = %s WHERE move = 'orders'",
            (None if definitions is None else json.dumps(definitions),),
        )
    return closed_ids


@pytest.mark.parametrize(
    ("definitions", "said"),
    [
        (
            {"orders": 2, "order_items": 1, "payment_attempts": 2},
            "with other check definitions (orders.payment_attempts 2, here 3)",
        ),
        (None, "by a release that recorded no check definitions"),
        (
            # Review 6 L1: a check the snapshot's release recorded nothing of was taken as
            # definition 1, so a release adding a check would have passed it.
            {"orders": 2, "payment_attempts": 3},
            "with other check definitions (orders.order_items none, here 1)",
        ),
    ],
    ids=["definition-2", "none-recorded", "one-check-unrecorded"],
)
def test_a_sync_an_earlier_release_began_is_refused_before_the_freeze(
    monolith, definitions: dict[str, int] | None, said: str
):
    """Review M1: the snapshot of a sync an earlier release began holds its rows as that
    release moved them; the cutover froze the sources, then its verify failed on them, and the
    shop stayed frozen until an abort. It is refused before anything is frozen, naming what to
    do; abort and a new sync then cut over clean, the attempts PENDING."""
    server = monolith
    synced = rose_split(server, "sync", "--once", "--move", "orders")
    assert synced.exit_code == 0, synced.output
    assert ledger(server, "orders")["sync_definitions"] == {
        "orders": 2,
        "order_items": 1,
        "payment_attempts": 3,
    }
    closed_ids = _as_begun_by_an_earlier_release(server, definitions)

    again = rose_split(server, "sync", "--once", "--move", "orders")
    assert again.exit_code == 0, again.output
    assert said in " ".join(again.output.split())
    states = {status.move.name: status.state for status in split_status(server.topology).moves}
    assert states["orders"].startswith("syncing online, snapshot taken by another release")
    refused = rose_split(server, "cutover", "--move", "orders")
    assert refused.exit_code == 1, refused.output
    output = " ".join(refused.output.split())
    assert said in output, output
    assert "refuses it before freezing anything" in output, output
    assert "rose split abort --move orders`, then `rose split sync --move orders`" in output
    assert freeze_triggers(server) == []
    entry = ledger(server, "orders")
    assert entry["finished_at"] is None
    assert entry["snapshot_at"] is not None
    with admin_connect(server, "cart") as connection:
        # The monolith still writes (nothing frozen), and the capture still takes it.
        connection.execute(
            "UPDATE legacy.orders SET description = description WHERE id = %s", (closed_ids[0],)
        )

    assert rose_split(server, "abort", "--move", "orders").exit_code == 0
    assert rose_split(server, "sync", "--once", "--move", "orders").exit_code == 0
    cut = rose_split(server, "cutover", "--move", "orders")
    assert cut.exit_code == 0, cut.output
    statuses = rows(
        server,
        "orders",
        "SELECT DISTINCT status FROM orders.payment_attempts WHERE order_id = ANY(%s)",
        (closed_ids,),
    )
    assert statuses == [("PENDING",)]


@pytest.mark.slow
def test_kills_and_restarts_during_sync_and_cutover_lose_and_double_nothing(own_cluster):
    """The writer load runs through the whole sync and cutover; the sync is SIGKILLed at random
    moments and at the points that matter (a snapshot or a round about to commit, a round
    committed but its change rows not yet deleted), PostgreSQL is restarted (immediate stop:
    a crash) under it, and the cutover dies once between recording a move and verifying it."""
    server = own_cluster
    assert server.embedded is not None
    rng = random.Random(int(os.environ.get("ROSE_TEST_SEED", "16")))
    with WriterLoad(server.topology, seed=rng.randint(0, 10**6)) as load:
        # Deterministic crash points first, then random kills and restarts.
        for crash in ("likes:snapshot-before-commit", "orders:after-capture"):
            code, output = _finish(_split_process(server, "sync", "--once", crash=crash))
            assert code == CRASH_EXIT_CODE, output
            assert f"crashing {crash.split(':')[1]}" in output
        for crash in ("likes:round-before-commit", "orders:round-after-commit"):
            time.sleep(0.5)
            code, output = _finish(_split_process(server, "sync", "--once", crash=crash))
            assert code in (CRASH_EXIT_CODE, 0), output
        for round_number in range(5):
            sync = _split_process(server, "sync")
            time.sleep(rng.uniform(0.5, 3.0))
            if round_number % 2 == 1:
                server.embedded.stop(mode="immediate")
                time.sleep(rng.uniform(0.1, 1.0))
                server.embedded.start()
                time.sleep(rng.uniform(0.2, 1.5))
            sync.send_signal(signal.SIGKILL)
            sync.wait(timeout=30)
        code, output = _finish(_split_process(server, "sync", "--once"))
        assert code == 0, output
        code, output = _finish(
            _split_process(server, "cutover", crash="likes:cutover-after-record")
        )
        assert code == CRASH_EXIT_CODE, output
        code, output = _finish(_split_process(server, "cutover"))
        assert code == 0, output
    assert load.report.writes > 200, load.report
    assert load.report.refused > 0, load.report
    assert load.report.failed > 0, load.report  # the writes PostgreSQL's restarts cut off
    assert load.report.errored == 0, load.report.errors
    for move in MOVES:
        entry = ledger(server, move.name)
        assert entry is not None
        assert entry["verified_at"] is not None, move.name
    assert capture_objects(server) == []
    online = target_rows(server)
    assert online == offline_of_final_state(server)


def test_finalize_removes_a_capture_left_behind(monolith, credentials: Credentials, tmp_path):
    """A capture a cutover did not get to remove (it died after recording its move) goes with
    finalize, like the sources it watched."""
    server = monolith
    for command in (("sync", "--once"), ("cutover",)):
        done = rose_split(server, *command)
        assert done.exit_code == 0, done.output
    install(server.topology, next(move for move in MOVES if move.name == "orders"))
    assert capture_objects(server)
    assert "leftover split change capture" in _db_check(server)
    finalized = rose_split(server, "finalize", "--backup-dir", str(tmp_path))
    assert finalized.exit_code == 0, finalized.output
    assert "orders: removed the change capture from db_cart" in finalized.output
    assert capture_objects(server) == []
    code, found = rose_db_check(server, credentials)
    assert (code, found["differences"]) == (0, []), found


def test_rose_db_check_is_clean_through_the_online_night_and_after_finalize(
    monolith, credentials: Credentials, tmp_path
):
    """The runbook's online night: the monolith writes as its declared login role while
    `sync` copies; `cutover`; `finalize` as on the offline night; the DBA drops the role. `rose
    db check` (the CLI, passwords compared) is clean at every step: the capture of a syncing
    move is a note, the frozen sources and the ledgers are the split's, and once finalized and
    the role gone: exit 0, no difference at all, the kept lookups a note."""
    server = monolith
    with monolith_writer(server.topology) as urls:
        first = rose_split(server, "sync", "--once")
        assert first.exit_code == 0, first.output
        with psycopg.connect(urls["market"], autocommit=True) as market:
            product = market.execute("SELECT min(id) FROM legacy.products").fetchone()[0]
            market.execute(
                "INSERT INTO legacy.product_likes (user_id, product_id) VALUES (7, %s)", (product,)
            )
        with psycopg.connect(urls["blog"], autocommit=True) as blog:
            blog.execute(
                "INSERT INTO legacy.post_likes (user_id, post_id) "
                "SELECT 7, min(id) FROM legacy.posts"
            )
        with psycopg.connect(urls["cart"], autocommit=True) as cart:
            cart.execute(
                "INSERT INTO legacy.cart_items (user_id, product_id, quantity, "
                "market_place_container_id) VALUES (7, %s, 2, 1)",
                (product,),
            )
            cart.execute(
                "DELETE FROM legacy.container_relations WHERE id = "
                "(SELECT min(id) FROM legacy.container_relations)"
            )
        # The writes are captured, not yet applied: the check sees change rows pending.
        assert value(server, "cart", "SELECT count(*) FROM split_capture.cart") > 0
        assert value(server, "market", "SELECT count(*) FROM split_capture.likes") > 0
        code, found = rose_db_check(server, credentials)
        assert (code, found["differences"]) == (0, []), found
        assert any("is syncing" in note for note in found["notes"]), found
        assert not [note for note in found["notes"] if "passwords not compared" in note], found

        for command in (("sync", "--once"), ("cutover",)):
            done = rose_split(server, *command)
            assert done.exit_code == 0, done.output
        assert capture_objects(server) == []
        code, found = rose_db_check(server, credentials)
        assert (code, found["differences"]) == (0, []), found
        assert any("db_cart: legacy tables present" in note for note in found["notes"]), found

        finalized = rose_split(server, "finalize", "--backup-dir", str(tmp_path))
        assert finalized.exit_code == 0, finalized.output
        code, found = rose_db_check(server, credentials)
        assert (code, found["differences"]) == (0, []), found
    # The DBA dropped the monolith's role (monolith_writer's exit) and took it out of
    # ROSE_MONOLITH_ROLES.
    code, found = rose_db_check(server, credentials)
    assert (code, found["ok"], found["differences"]) == (0, True, []), found
    assert sorted(found["notes"]) == [
        "db_blog: legacy tables outside the split remain (posts)",
        "db_market: legacy tables outside the split remain (products)",
    ], found


def _db_check(server: TestServer) -> str:
    from ops.db.check import check

    differences, _ = check(server.topology)
    return "\n".join(differences)

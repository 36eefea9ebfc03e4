"""The split's reused connections (``ops.split.common.session``): within one command a connection
is handed out again, reset to how it was opened; one left in a transaction or by an error is
closed, never handed to the next user."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import psycopg
import pytest
from sqlalchemy.engine import make_url

from ops.db.topology import Topology
from ops.split.common import open_sessions, reused_sessions, session, submit_in_context
from tests.conftest import admin_connect

if TYPE_CHECKING:
    from tests.pg import TestServer


def backend(server: TestServer) -> int:
    with session(server.topology, "cart") as connection:
        return int(connection.execute("SELECT pg_backend_pid()").fetchone()[0])


def test_a_reused_session_is_reset_to_how_it_was_opened(provisioned: TestServer) -> None:
    with reused_sessions():
        with session(provisioned.topology, "cart") as connection:
            first = connection.execute("SELECT pg_backend_pid()").fetchone()[0]
            connection.read_only = True
            connection.execute("SET ROLE cart_owner")
            connection.execute("SET lock_timeout = '1s'")
            connection.execute("CREATE TEMP VIEW leftover AS SELECT 1")
        with session(provisioned.topology, "cart") as connection:
            pid, role, lock_timeout, view, timezone = connection.execute(
                "SELECT pg_backend_pid(), current_user, current_setting('lock_timeout'), "
                "to_regclass('pg_temp.leftover'), current_setting('TimeZone')"
            ).fetchone()
            assert pid == first  # the same backend, handed out again
            assert (role, lock_timeout, view, timezone) == ("postgres", "0", None, "UTC")
            connection.execute("CREATE TEMP TABLE written (id int)")  # not read-only
    # Outside the block every session is a new connection.
    assert backend(provisioned) != backend(provisioned)


def test_a_session_left_in_a_transaction_or_by_an_error_is_not_reused(
    provisioned: TestServer,
) -> None:
    with reused_sessions():
        with session(provisioned.topology, "cart") as connection:
            open_transaction = connection.execute("SELECT pg_backend_pid()").fetchone()[0]
            connection.execute("BEGIN")
        assert backend(provisioned) != open_transaction
        failed: list[int] = []

        def fail_in_session() -> None:
            with session(provisioned.topology, "cart") as connection:
                failed.append(connection.execute("SELECT pg_backend_pid()").fetchone()[0])
                raise RuntimeError("the user of the session failed")

        with pytest.raises(RuntimeError):
            fail_in_session()
        assert backend(provisioned) != failed[0]


def test_threads_share_the_pool_of_the_command(provisioned: TestServer) -> None:
    with reused_sessions():
        before = backend(provisioned)
        with ThreadPoolExecutor(max_workers=1) as threads:
            in_thread = submit_in_context(threads, backend, provisioned).result()
    assert in_thread == before


def test_sessions_opened_ahead_are_the_ones_handed_out(provisioned: TestServer) -> None:
    """open_sessions opens one connection per database at the same time; the sessions that
    follow take those (one per database, not a second one) and close with the command."""
    with reused_sessions():
        open_sessions(provisioned.topology, ["cart", "likes", "cart"])
        with admin_connect(provisioned, "cart") as observer:
            opened = {
                datname: count
                for datname, count in observer.execute(
                    "SELECT datname, count(*) FROM pg_stat_activity "
                    "WHERE application_name = 'rose split' GROUP BY 1"
                )
            }
        assert opened == {"db_cart": 1, "db_likes": 1}
        first = backend(provisioned)
        assert backend(provisioned) == first
    with admin_connect(provisioned, "cart") as observer:
        left = observer.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'rose split'"
        ).fetchone()[0]
    assert left == 0


def test_a_database_that_cannot_be_reached_fails_opening_ahead(provisioned: TestServer) -> None:
    url = make_url(provisioned.topology.admin_url("cart"))
    closed_port = url.set(port=1).render_as_string(hide_password=False)
    unreachable = Topology(
        default_admin_url=url.render_as_string(hide_password=False),
        admin_urls={"cart": closed_port},
    )
    with reused_sessions(), pytest.raises(psycopg.OperationalError):
        open_sessions(unreachable, ["cart"])

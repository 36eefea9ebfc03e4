"""A background loop's failures are logged once per streak (audit O16: with the database down,
the outbox relay logged a ~40-line traceback every 2 s for as long as it lasted)."""

from __future__ import annotations

import logging

import pytest

from apps.common.streaks import FailureStreak


def test_a_streak_is_one_traceback_then_a_line_a_minute_then_one_recovery(caplog):
    now = [0.0]
    streak = FailureStreak(
        logging.getLogger("rose.test"), "outbox relay pass", clock=lambda: now[0]
    )
    with caplog.at_level(logging.INFO, logger="rose.test"):
        for _ in range(30):  # a minute at one pass every 2 s
            streak.failed(ConnectionError("database unreachable"))
            now[0] += 2.0
        streak.failed(ConnectionError("database unreachable"))
        streak.succeeded()
        streak.succeeded()
    records = [(r.levelname, r.getMessage(), r.exc_info is not None) for r in caplog.records]
    assert records == [
        ("ERROR", "outbox relay pass failed: ConnectionError: database unreachable", True),
        (
            "ERROR",
            "outbox relay pass still failing (31 passes in a row): ConnectionError: database "
            "unreachable",
            False,
        ),
        ("WARNING", "outbox relay pass works again after 31 failed passes", False),
    ]


@pytest.mark.parametrize("passes", [1, 2])
def test_a_new_streak_logs_its_traceback_again(caplog, passes):
    streak = FailureStreak(logging.getLogger("rose.test"), "sweep", clock=lambda: 0.0)
    with caplog.at_level(logging.INFO, logger="rose.test"):
        for _ in range(passes):
            streak.failed(RuntimeError("first"))
        streak.succeeded()
        streak.failed(RuntimeError("second"))
    tracebacks = [r.getMessage() for r in caplog.records if r.exc_info is not None]
    assert tracebacks == ["sweep failed: RuntimeError: first", "sweep failed: RuntimeError: second"]


async def test_the_outbox_relay_with_its_database_down_logs_one_traceback(caplog):
    """The relay itself: ten passes against a database that does not answer (a closed port)."""
    import asyncio
    import socket

    from apps.common.db import create_engine, sessionmaker_for
    from apps.common.internal_client import InternalClient
    from apps.common.outbox import OutboxRelay
    from apps.orders.models import outbox

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    engine = create_engine(
        f"postgresql+psycopg://nobody:x@127.0.0.1:{closed_port}/nothing",
        application_name="streak-test",
    )
    client = InternalClient(caller="orders", secret="s" * 32)
    relay = OutboxRelay(sessionmaker_for(engine), outbox, poll_seconds=0.01, client=client)
    with caplog.at_level(logging.INFO, logger="rose"):
        relay.start()
        try:
            await asyncio.sleep(1.0)  # a pass every 10 ms: scores of failed passes
        finally:
            await relay.stop()
            await engine.dispose()
    tracebacks = [r for r in caplog.records if r.exc_info is not None]
    assert relay.failures.count >= 10
    assert [r.getMessage().split(":")[0] for r in tracebacks] == ["outbox relay pass failed"]
    assert "Connection refused" in tracebacks[0].getMessage()


@pytest.mark.parametrize(
    ("error", "cause"),
    [
        (
            "database",
            "OperationalError: connection failed: connection to server at "
            '"127.0.0.1", port 15433 failed: FATAL:  the database system is shutting down',
        ),
        (
            "pool",
            "every database connection stayed busy (QueuePool limit of size 10 overflow 0 "
            "reached, connection timed out)",
        ),
        ("other", "RuntimeError: first line"),
    ],
)
def test_the_first_line_of_a_streak_names_its_cause(caplog, error, cause):
    """probe_oncall: with PostgreSQL stopped, each outbox relay logged "outbox relay pass
    failed" and some 60 lines of traceback; the cause was the last of them. The first line
    says it now (the traceback still follows it)."""
    import psycopg
    from sqlalchemy.exc import OperationalError
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    exc: BaseException = {
        "database": OperationalError(
            "SELECT 1",
            {},
            psycopg.OperationalError(
                'connection failed: connection to server at "127.0.0.1", port 15433 failed: '
                "FATAL:  the database system is shutting down\nMore detail"
            ),
        ),
        "pool": PoolTimeout("QueuePool limit of size 10 overflow 0 reached, connection timed out"),
        "other": RuntimeError("first line\nsecond line"),
    }[error]
    now = [0.0]
    streak = FailureStreak(
        logging.getLogger("rose.test"), "outbox relay pass", clock=lambda: now[0]
    )
    with caplog.at_level(logging.INFO, logger="rose.test"):
        streak.failed(exc)
        now[0] += 61.0
        streak.failed(exc)
    assert [(r.getMessage(), r.exc_info is not None) for r in caplog.records] == [
        (f"outbox relay pass failed: {cause}", True),
        (f"outbox relay pass still failing (2 passes in a row): {cause}", False),
    ]

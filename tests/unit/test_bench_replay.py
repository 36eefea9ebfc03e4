"""The liked-listing breakdown replays, raw, exactly the statements the app was seen to send."""

from __future__ import annotations

import pytest

from bench.liked_breakdown import around_the_query


def test_the_raw_replay_is_what_the_server_log_shows_around_the_query():
    logged = [
        "statement: BEGIN",
        "statement: SET LOCAL statement_timeout = 2000",
        "execute <unnamed>: WITH liked AS MATERIALIZED (SELECT ...",
        "statement: ROLLBACK",
    ]
    assert around_the_query(logged) == (
        ("BEGIN", "SET LOCAL statement_timeout = 2000"),
        ("ROLLBACK",),
    )


@pytest.mark.parametrize(
    "logged",
    [
        ["statement: BEGIN", "statement: ROLLBACK"],
        ["execute <unnamed>: SELECT 1", "execute <unnamed>: SELECT 2"],
        ["statement: BEGIN", "execute <unnamed>: SELECT 1", "duration: 0.1 ms"],
    ],
)
def test_a_log_of_another_shape_is_refused_not_guessed(logged):
    with pytest.raises(RuntimeError, match="expected one query"):
        around_the_query(logged)

"""Create-order's placing statement, as its driver sees it."""

from __future__ import annotations

import itertools

import pytest
from psycopg import _queries as psycopg_queries
from sqlalchemy.dialects.postgresql import psycopg as psycopg_dialect

from apps.orders.service import (
    NEW_ORDER_KEYS,
    _order_slot,
    _place_order,
    candidate_parameters,
)

SHAPES = [
    shape
    for shape in itertools.product((False, True), repeat=4)
    if shape[2] or shape[3]  # a buyer is known by user, session or both
]


@pytest.mark.parametrize(("has_claims", "has_goods", "by_user", "by_session"), SHAPES)
def test_the_placing_statement_is_parsed_once_by_psycopg(
    has_claims, has_goods, by_user, by_session
):
    """Found in a profile of create-order: psycopg parsed the placing statement's text anew on
    every call (0.4 ms of CPU a checkout), because it caches the parse only of statements of at
    most 4 kB and 50 parameters, and this one was longer. Every shape, with the columns
    create-order names (place_order refuses a row naming others), must stay within both."""
    statement = _place_order(NEW_ORDER_KEYS, has_claims, has_goods, by_user, by_session)
    compiled = statement.compile(dialect=psycopg_dialect.dialect())
    assert len(str(compiled).encode()) <= psycopg_queries.MAX_CACHED_STATEMENT_LENGTH
    assert len(compiled.params) <= psycopg_queries.MAX_CACHED_STATEMENT_PARAMS


@pytest.mark.parametrize(
    "candidates",
    [[("site", 0)], [("page", 4), ("site", 0)]],
)
def test_the_slot_read_is_one_text_for_one_or_two_page_config_candidates(candidates):
    """The slot read (with its FDW read of the candidates' page configs) was a list expanded
    per call, so it could not run as a DirectStatement: now one or two candidates bind the
    same four values, and the one statement text stays within psycopg's parse cache."""
    parameters = candidate_parameters(candidates)
    assert {(parameters["first_type"], parameters["first_id"])} | {
        (parameters["second_type"], parameters["second_id"])
    } == set(candidates)
    statement = _order_slot(True, True)
    assert len(statement.sql.encode()) <= psycopg_queries.MAX_CACHED_STATEMENT_LENGTH
    assert statement.sql.count("%(") <= psycopg_queries.MAX_CACHED_STATEMENT_PARAMS


@pytest.mark.parametrize("candidates", [[], [("page", 1), ("page", 2), ("site", 0)]])
def test_the_slot_read_refuses_a_candidate_list_it_cannot_bind(candidates):
    with pytest.raises(ValueError, match="one or two page config candidates"):
        candidate_parameters(candidates)

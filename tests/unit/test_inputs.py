"""The shared strict readers of typed numbers (apps.common.inputs): ASCII digits only."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest

from apps.common.inputs import (
    CONTAINER_TYPE,
    CURRENCY,
    URL_SLUG,
    decimal_number,
    one_line_name,
    whole_number,
)
from apps.common.problems import InvalidInput


@pytest.mark.parametrize(
    ("value", "number"), [("12", 12), (" 7 ", 7), ("-3", -3), ("+4", 4), (5, 5), ("007", 7)]
)
def test_whole_numbers_in_ascii_digits_are_read(value: object, number: int) -> None:
    assert whole_number(value, "quantity") == number


@pytest.mark.parametrize(
    "value",
    [
        "\uff13",
        "\u0663",
        "\u096a",
        "1_0",
        "3.0",
        "",
        " ",
        "1e3",
        "0x10",
        2.0,
        True,
        None,
        "9" * 5000,
    ],
)
def test_anything_else_is_a_422_naming_the_field(value: object) -> None:
    with pytest.raises(InvalidInput) as refused:
        whole_number(value, "quantity")
    assert refused.value.status_code == 422
    assert refused.value.field == "quantity"


@pytest.mark.parametrize(
    ("value", "number"),
    [("12.50", Decimal("12.50")), ("5", Decimal(5)), (".5", Decimal("0.5")), ("-1", Decimal(-1))],
)
def test_decimals_in_ascii_digits_are_read(value: str, number: Decimal) -> None:
    assert decimal_number(value, "cost") == number


@pytest.mark.parametrize(
    "value", ["\uff15", "\u0661\u0662.50", "1_0", "1e1", "NaN", "Infinity", "1.2.3", ".", 2.5]
)
def test_other_decimals_are_a_422_naming_the_field(value: object) -> None:
    with pytest.raises(InvalidInput) as refused:
        decimal_number(value, "cost")
    assert refused.value.field == "cost"


@pytest.mark.parametrize(
    ("typed", "kept"),
    [
        ("  Veg stall ", "Veg stall"),
        ("\u00a0Caf\u00e9\u3000", "Caf\u00e9"),
        ("\u05e9\u05d5\u05e7", "\u05e9\u05d5\u05e7"),  # right-to-left text is text
        ("Stall \u200d\U0001f955", "Stall \u200d\U0001f955"),  # a joiner inside an emoji
    ],
)
def test_names_are_kept_without_surrounding_whitespace(typed: str, kept: str) -> None:
    assert one_line_name(typed, "name") == kept


@pytest.mark.parametrize(
    "typed",
    ["a\tb", "a\nb", "a\rb", "a\x1b[0m", "a\x7f", "a\x85", "a\x9f", "a\u2028b", "\u202ea",
     "a\u202a", "a\u2066b\u2069", "", "   ", "\u3000", "\u200b", "\u200e\u200f"],
)  # fmt: skip
def test_control_and_direction_characters_and_blanks_are_refused(typed: str) -> None:
    _assert_refused(typed)


# Probe: these show nothing either (Hangul fillers, the blank Braille pattern, a combining mark
# with nothing to combine with), and a buyer's ticket type of one went into the cart as "".
@pytest.mark.parametrize(
    "typed", ["\u3164", "\u115f\u1160", "\uffa0", "\u2800", "\u0301", " \u20dd "]
)
def test_letters_that_show_nothing_are_blank(typed: str) -> None:
    _assert_refused(typed)


def test_a_mark_on_a_letter_is_a_name() -> None:
    assert one_line_name("e\u0301t\u00e9", "name") == "e\u0301t\u00e9"


def _assert_refused(typed: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        one_line_name(typed, "ticket_type")
    assert refused.value.field == "ticket_type"
    assert refused.value.message.startswith("Ticket type must")


@pytest.mark.parametrize(
    ("pattern", "good"), [(URL_SLUG, "farm-shop"), (CONTAINER_TYPE, "page"), (CURRENCY, "EUR")]
)
def test_a_whole_pattern_refuses_a_final_newline(pattern: str, good: str) -> None:
    # msgspec and Litestar check a pattern with re.search, where $ also matches before a final
    # newline; the schema's ECMA-262 reads the same pattern (its lookahead is valid there).
    assert re.search(pattern, good)
    for wrong in (f"{good}\n", f"\n{good}", f"{good}\n\n", f"{good} ", ""):
        assert not re.search(pattern, wrong), repr(wrong)

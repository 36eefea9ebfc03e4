"""The shared strict readers of typed numbers (apps.common.inputs): ASCII digits only."""

from __future__ import annotations

from decimal import Decimal

import pytest

from apps.common.inputs import decimal_number, whole_number
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

"""What people type, read strictly, for every service: the one place a form's or a JSON body's
text becomes a number, and where a typed name is checked to be one readable line. Each refusal
is a 422 naming the field.

Python's ``int()`` and ``Decimal()`` also read full-width digits (U+FF13), other scripts'
digits (U+0663), underscores ("1_0") and, for decimals, exponents and NaN: none of that is a
number a person meant to type here, so only ASCII digits (with the sign and decimal point the
field allows) are read. Typed parameters parsed by Litestar and msgspec (an ``int`` query
parameter, an ``int`` field of a form struct) already take ASCII digits only; an ``int`` path
parameter, which Litestar reads with ``int()``, is held to them by
``apps.common.web.path_numbers_in_ascii``."""

from __future__ import annotations

import re
import unicodedata
from decimal import Decimal

from apps.common.problems import InvalidInput


def whole_pattern(body: str) -> str:
    """``body`` as the pattern of a whole value, for msgspec's and Litestar's checks (Python's
    ``re.search``) and for the OpenAPI schema (ECMA-262) alike. In Python ``$`` also matches
    before a final newline, so "slug\\n" would pass a plain ``^...$``; the lookahead refuses it,
    and means nothing in ECMA-262, where ``$`` is the end already (``\\Z`` is not ECMA-262)."""
    return f"^(?:{body})(?!\\n)$"


# A slug in a URL (a post, a page, a product, a market place): lowercase letters, digits and '-'.
URL_SLUG = whole_pattern("[a-z0-9][a-z0-9-]{0,254}")
# A type of container or child in relations ("page", "market", "calendar").
CONTAINER_TYPE = whole_pattern("[a-z][a-z0-9_]{0,31}")
# An ISO 4217 currency code ("EUR").
CURRENCY = whole_pattern("[A-Z]{3}")

# [0-9], never \d: \d matches every script's digits.
_WHOLE = re.compile(r"[+-]?[0-9]+")
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")
# Longer is no amount or count anyone types (and int() refuses more than 4300 digits).
_MAX_DIGITS = 40


def whole_number(value: object, field: str, message: str | None = None) -> int:
    """A whole number from a form field ("12", surrounding spaces allowed) or a JSON body (an
    integer, or a string as a form sends it). Anything else, a JSON float or boolean included,
    is a 422 naming ``field`` (``message`` says it in the caller's words)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip()
        if len(text) <= _MAX_DIGITS and _WHOLE.fullmatch(text):
            return int(text)
    raise InvalidInput(message or f"{field} must be a whole number", field=field)


def decimal_number(value: object, field: str, message: str | None = None) -> Decimal:
    """A decimal number written with ASCII digits and at most one decimal point ("12.50",
    "-3", ".5"); no exponent, no NaN or Infinity. A JSON integer is taken as it is; a JSON
    float is refused (it may already have lost the cents it was meant to carry)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return Decimal(value)
    if isinstance(value, str):
        text = value.strip()
        if len(text) <= _MAX_DIGITS and _DECIMAL.fullmatch(text):
            return Decimal(text)
    raise InvalidInput(
        message or f"{field} must be a number written with digits, like 12.50", field=field
    )


# Not in a one-line name: C0 and C1 control characters and DEL (a tab, a newline, a terminal's
# escape sequence), the line and paragraph separators, and the bidirectional embeddings,
# overrides (U+202A-U+202E) and isolates (U+2066-U+2069), which make text show in another
# order than it is stored ("gpj.exe" shown as "exe.jpg").
_NOT_IN_A_NAME = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
# What shows nothing on a page: whitespace, format characters such as a zero-width space, and
# combining marks (on nothing, they mark nothing); and letters drawn as blanks: the Hangul
# fillers and the blank Braille pattern.
_INVISIBLE = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp", "Mn", "Me"})
_BLANK_LETTERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")


def shows_nothing(value: str) -> bool:
    """Whether ``value`` shows nothing on a page (whitespace, zero-width and combining
    characters, letters drawn as blanks): a blank name or label."""
    return all(
        unicodedata.category(character) in _INVISIBLE or character in _BLANK_LETTERS
        for character in value
    )


def one_line_name(value: str, field: str, *, blank: str | None = None) -> str:
    """A name or label as a person typed it on one line, surrounding whitespace taken off. A
    control or text-direction override character anywhere in it, or nothing visible, is a 422
    naming ``field`` (``blank`` says the latter in the caller's words)."""
    what = field.replace("_", " ").capitalize()
    if _NOT_IN_A_NAME.search(value):
        raise InvalidInput(
            f"{what} must be one line of text, without control characters or text-direction "
            "overrides.",
            field=field,
        )
    name = value.strip()
    if shows_nothing(name):
        raise InvalidInput(blank or f"{what} must not be blank.", field=field)
    return name

"""The edge's UTF-8 check of URL-encoded pairs (a form body or a query string), byte for byte:
HTTP clients percent-encode what is not ASCII, so raw bytes are tested here."""

from __future__ import annotations

from apps.common.limits import Refusal, _utf8_pairs


def test_raw_utf8_is_percent_encoded_to_be_read_as_utf8() -> None:
    # Litestar reads the raw bytes as Latin-1: "Café" unencoded would become "CafÃ©".
    assert _utf8_pairs("q=Caf\u00e9&page=2".encode(), "parameter") == b"q=Caf%C3%A9&page=2"
    assert _utf8_pairs(b"q=plain+words&page=2", "parameter") == b"q=plain+words&page=2"
    assert _utf8_pairs(b"", "parameter") == b""


def test_bytes_that_are_not_utf8_are_refused_naming_the_field() -> None:
    assert _utf8_pairs(b"a=1&page=%FF", "parameter") == Refusal(
        400, "page: is not valid UTF-8", "page"
    )
    assert _utf8_pairs(b"page=\xff", "parameter") == Refusal(
        400, "page: is not valid UTF-8", "page"
    )
    # A name that cannot be read: the whole is named instead.
    assert _utf8_pairs(b"%FF=1", "parameter") == Refusal(
        400, "parameter: is not valid UTF-8", "parameter"
    )
    assert _utf8_pairs(b"%FF=1", "body") == Refusal(400, "body: is not valid UTF-8", "body")

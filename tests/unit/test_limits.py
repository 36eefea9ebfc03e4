"""The edge's checks of URL-encoded pairs (a form body or a query string) and JSON bodies, byte
for byte: UTF-8 (HTTP clients percent-encode what is not ASCII, so raw bytes are tested here),
and no field given more than once unless the app reads it as a list (audit O12), a query
parameter only if the app reads it as one value (audit s20 A1)."""

from __future__ import annotations

import json
from typing import Annotated
from urllib.parse import urlencode

import pytest
from hypothesis import given
from hypothesis import strategies as st
from litestar import Litestar, Request, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromHeader, FromQuery, JSONBody, QueryParameter, QueryParams

from apps.common.limits import (
    LIST_FIELDS,
    READS_QUERY,
    Refusal,
    _check_body,
    _utf8_pairs,
    list_fields,
    query_parameters_read_once,
)


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


# -- a field given more than once (audit O12) ---------------------------------------------------
def given_twice(name: str) -> Refusal:
    return Refusal(422, f"{name}: given more than once", name)


def test_a_form_or_query_field_given_twice_is_refused_naming_it() -> None:
    assert _utf8_pairs(b"quantity=1&quantity=2", "body") == given_twice("quantity")
    assert _utf8_pairs(b"page=&per_page=1&page=2", "parameter") == given_twice("page")
    # Spelt differently, read the same: percent-encoded, or "+" for a space.
    assert _utf8_pairs(b"quantity=1&quantit%79=2", "body") == given_twice("quantity")
    assert _utf8_pairs(b"a+b=1&a%20b=2", "body") == given_twice("a b")
    # Raw UTF-8 names are compared as the characters they are.
    assert _utf8_pairs("caf\u00e9=1&caf%C3%A9=2".encode(), "body") == given_twice("caf\u00e9")
    # Empty pairs ("&&") and distinct names are no repeat.
    assert _utf8_pairs(b"a=1&&b=2&", "parameter") == b"a=1&&b=2&"


def test_a_field_that_is_a_list_may_be_repeated() -> None:
    lists = frozenset({"features", "ids"})
    form = b"features=&features=cart&features=market&next=%2F"
    assert _utf8_pairs(form, "body", lists) == form
    assert _utf8_pairs(b"ids=1&ids=1&ids=2", "parameter", lists) == b"ids=1&ids=1&ids=2"
    assert _utf8_pairs(b"ids=1&page=1&page=2", "parameter", lists) == given_twice("page")
    assert _check_body("application/x-www-form-urlencoded", form, lists) == form
    assert _check_body("application/x-www-form-urlencoded", b"next=a&next=b", lists) == (
        given_twice("next")
    )


def test_only_a_query_parameter_read_as_one_value_is_refused_when_repeated() -> None:
    """Audit s20 A1: a parameter nothing reads (a tracking link's) may repeat; one a handler
    reads as one value may not."""
    read_once = frozenset({"page", "per_page"})
    query = b"utm=a&utm=b&ids=1&ids=2&page=1"
    assert _utf8_pairs(query, "parameter", read_once=read_once) == query
    assert _utf8_pairs(b"utm=a&page=1&utm=b&page=2", "parameter", read_once=read_once) == (
        given_twice("page")
    )
    # Nothing read: nothing refused.
    assert _utf8_pairs(b"page=1&page=2", "parameter", read_once=frozenset()) == b"page=1&page=2"


def test_a_json_key_given_twice_is_refused_naming_where_it_is() -> None:
    json_type = "application/json"
    assert _check_body(json_type, b'{"quantity":1,"quantity":2}') == given_twice("quantity")
    assert _check_body(json_type, b'{"quantity":1,"\\u0071uantity":2}') == given_twice("quantity")
    nested = b'{"lines":[{"id":1},{"id":2,"qty":1,"qty":3}]}'
    assert _check_body(json_type, nested) == given_twice("lines[1].qty")
    assert _check_body("application/merge-patch+json", b'{"a":{"b":1,"b":1}}') == (
        given_twice("a.b")
    )
    # JSON's lists are arrays: a key that is a list elsewhere is still one key here.
    assert _check_body(json_type, b'{"ids":1,"ids":2}', frozenset({"ids"})) == given_twice("ids")
    # Repeats in different objects, in arrays, and in strings are no duplicate keys.
    fine = b'{"a":{"id":1},"b":{"id":1},"c":[1,1],"d":"\\"d\\":1,\\"d\\":2"}'
    assert _check_body(json_type, fine) == fine
    # Not JSON at all: passed on, for the parser to say so.
    assert _check_body(json_type, b'{"a":1,"a":') == b'{"a":1,"a":'


@given(st.lists(st.sampled_from(["a", "b", "page", "caf\u00e9", "a b", ""]), max_size=8))
def test_a_query_is_refused_exactly_when_a_name_repeats(names: list[str]) -> None:
    encoded = urlencode([(name, str(index)) for index, name in enumerate(names)]).encode()
    seen: set[str] = set()
    repeated = None
    for name in names:
        if name in seen and name:
            repeated = name
            break
        seen.add(name)
    expected = encoded if repeated is None else given_twice(repeated)
    assert _utf8_pairs(encoded, "parameter") == expected
    # Declared a list, any name may repeat.
    assert _utf8_pairs(encoded, "parameter", frozenset(names)) == encoded


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "id", "\u00e9", "x y"]),
            st.integers() | st.text(st.characters(exclude_characters="\x00")),
        ),
        max_size=6,
    )
)
def test_a_json_object_is_refused_exactly_when_a_key_repeats(
    pairs: list[tuple[str, object]],
) -> None:
    body = ("{" + ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in pairs) + "}").encode()
    seen: set[str] = set()
    repeated = None
    for key, _ in pairs:
        if key in seen:
            repeated = key
            break
        seen.add(key)
    expected = body if repeated is None else given_twice(repeated)
    assert _check_body("application/json", body) == expected


def per_page(per_page: FromQuery[int] = 10) -> int:
    return per_page


def test_the_names_an_app_reads() -> None:
    """The form fields a handler declares it reads as lists; the query parameters read as one
    value: its signature's and its dependencies' that are not lists (by their name in the
    query), and those it declares it reads itself; nothing else."""

    @get("/batch", dependencies={"size": Provide(per_page, sync_to_thread=False)})
    async def batch(
        size: NamedDependency[int],
        ids: FromQuery[list[int] | None] = None,
        tags: Annotated[list[str] | None, QueryParameter(name="tag")] = None,
        page: FromQuery[int] = 1,
        sort: Annotated[str, QueryParameter(name="order")] = "",
        x_trace: FromHeader[list[str] | None] = None,
    ) -> None:
        return None

    @post("/form", opt={LIST_FIELDS: ("features",)}, sync_to_thread=False)
    def form(data: JSONBody[list[int]]) -> None:
        return None

    @get("/search", opt={READS_QUERY: ("q",)}, sync_to_thread=False)
    def search(request: Request) -> str:
        return str(request.query_params.get("q"))

    app = Litestar([batch, form, search], openapi_config=None)
    assert list_fields(app) == frozenset({"features"})
    assert query_parameters_read_once(app) == frozenset({"page", "order", "per_page", "q"})


def test_an_app_whose_query_reading_the_edge_cannot_know_is_refused() -> None:
    @get("/all", sync_to_thread=False)
    def everything(query: QueryParams) -> None:
        return None

    with pytest.raises(ValueError, match="takes the whole query"):
        query_parameters_read_once(Litestar([everything], openapi_config=None))

    @get("/list", sync_to_thread=False)
    def listed(ids: FromQuery[list[int]]) -> None:
        return None

    @get("/one", sync_to_thread=False)
    def single(ids: FromQuery[int]) -> None:
        return None

    with pytest.raises(ValueError, match="'ids': a list for"):
        query_parameters_read_once(Litestar([listed, single], openapi_config=None))

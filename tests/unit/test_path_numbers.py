"""``apps.common.web.path_numbers_in_ascii`` on a tiny app of its own: every whole-number path
parameter of a matched route is checked, whatever else the route's path holds."""

from __future__ import annotations

from pathlib import Path

from litestar import Litestar, get
from litestar.params import FromPath
from litestar.testing import AsyncTestClient

from apps.common.problems import problem_details_plugin
from apps.common.web import path_numbers_in_ascii


@get("/item/{item_id:int}/", sync_to_thread=False)
def item(item_id: FromPath[int]) -> dict[str, int]:
    return {"item_id": item_id}


@get("/files/{page:int}/{rest:path}", sync_to_thread=False)
def files(page: FromPath[int], rest: FromPath[Path]) -> dict[str, object]:
    return {"page": page, "rest": str(rest)}


def tiny_app() -> Litestar:
    return Litestar(
        route_handlers=[item, files],
        plugins=[problem_details_plugin()],
        middleware=[path_numbers_in_ascii],
        debug=False,
    )


async def test_a_number_beside_a_path_parameter_is_checked_too():
    """Probe (2026-12-06): a route with a `{x:path}` parameter (none exists yet) spans more
    segments than its template has, and the guard gave up on it without a word: its numbers
    were read from any digits (Arabic-Indic, fullwidth). Now they are found as the router
    finds them, and refused like any other."""
    async with AsyncTestClient(tiny_app()) as client:
        ok = await client.get("/files/3/a/b/c.txt")
        assert ok.status_code == 200, ok.text
        assert ok.json()["page"] == 3
        for written in ("%D9%A3", "%EF%BC%93"):  # 3 in Arabic-Indic and in fullwidth digits
            refused = await client.get(f"/files/{written}/a/b/c.txt")
            assert refused.status_code == 404, (written, refused.text)
            assert "page is not written in digits 0-9" in refused.json()["detail"], refused.text

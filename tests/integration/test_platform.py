"""Platform behaviour every service relies on: the development sign-in exists only in dev, the
internal client retries only what is safe to repeat, and errors keep one format."""

from __future__ import annotations

import pytest
from litestar import Litestar
from litestar.params import JSONBody

from apps.common.contracts import Action, Contract, NoParams, Query
from apps.common.internal import action_route, data_route, internal_router
from apps.common.internal_client import InternalCallError, InternalClient
from tests.conftest import INTERNAL_SECRET, in_process_stack


@pytest.mark.parametrize("env", ["prod", "test"])
async def test_dev_login_exists_only_in_dev(clean_db, credentials, env):
    async with in_process_stack(clean_db, credentials, ["market"], env=env) as stack:
        response = await stack.client("market").get("/auth/dev-login?user_id=1")
        session = await stack.client("market").get("/auth/session")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")
    assert session.json()["signed_in"] is False


async def test_dev_login_signs_in_and_the_cookie_is_shared_by_public_services(
    clean_db, credentials
):
    async with in_process_stack(clean_db, credentials, ["market", "blog"]) as stack:
        market = stack.browser("market")
        signed = await market.get(
            "/auth/dev-login?user_id=12", headers={"accept": "application/json"}
        )
        cookie = market.cookies.get("rose_session", domain="market.test")
        blog = stack.browser("blog")
        blog.cookies.set("rose_session", cookie, domain="blog.test")
        on_blog = (await blog.get("/auth/session")).json()
        forged = stack.browser("blog")
        forged.cookies.set("rose_session", cookie[:-2] + "xx", domain="blog.test")
        forged_session = (await forged.get("/auth/session")).json()
    assert signed.json()["user_id"] == 12
    assert on_blog["user_id"] == 12
    assert forged_session["signed_in"] is False


THING = Query("flaky", "thing", NoParams, dict[str, str])
DO = Action("flaky", "do", NoParams, dict[str, str])
FLAKY = Contract("flaky", dev_port=1, public=False, calls=[THING, DO])


class Flaky:
    """A real ASGI app whose routes fail with 503 a given number of times, then succeed."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: dict[str, int] = {}

        @data_route(THING)
        async def thing() -> dict[str, str]:
            return self._answer("thing")

        @action_route(DO)
        async def do(data: JSONBody[NoParams]) -> dict[str, str]:
            return self._answer("do")

        self.app = Litestar([internal_router(FLAKY, INTERNAL_SECRET, [thing, do])])

    def _answer(self, name: str) -> dict[str, str]:
        from litestar.exceptions import HTTPException

        self.calls[name] = self.calls.get(name, 0) + 1
        if self.calls[name] <= self.failures:
            raise HTTPException(status_code=503, detail="try later")
        return {"ok": name}


async def test_client_retries_gets_and_keyed_actions_but_not_plain_actions():
    flaky = Flaky(failures=2)
    client = InternalClient(caller="tests", secret=INTERNAL_SECRET, asgi_apps={"flaky": flaky.app})
    try:
        assert await client.fetch_data("flaky", "thing") == {"ok": "thing"}
        assert flaky.calls["thing"] == 3
        with pytest.raises(InternalCallError) as plain:
            await client.call_action("flaky", "do", {})
        assert flaky.calls["do"] == 1
        assert plain.value.http_status == 503
        assert await client.call_action("flaky", "do", {}, idempotency_key="k") == {"ok": "do"}
        assert flaky.calls["do"] == 3
    finally:
        await client.aclose()


async def test_client_gives_up_after_its_retries_with_a_typed_error():
    flaky = Flaky(failures=10)
    client = InternalClient(caller="tests", secret=INTERNAL_SECRET, asgi_apps={"flaky": flaky.app})
    try:
        with pytest.raises(InternalCallError) as failed:
            await client.fetch_data("flaky", "thing")
    finally:
        await client.aclose()
    assert flaky.calls["thing"] == 3
    assert failed.value.remote_status == 503
    assert failed.value.http_status == 503


async def test_unreachable_service_is_a_503_typed_error():
    client = InternalClient(
        caller="tests", secret=INTERNAL_SECRET, base_urls={"gone": "http://127.0.0.1:1"}
    )
    try:
        with pytest.raises(InternalCallError) as failed:
            await client.fetch_data("gone", "anything")
    finally:
        await client.aclose()
    assert failed.value.http_status == 503
    assert "unreachable" in str(failed.value)


def test_a_provider_serves_exactly_its_contract():
    @data_route(THING)
    async def thing() -> dict[str, str]:
        return {}

    with pytest.raises(ValueError, match="missing"):
        internal_router(FLAKY, INTERNAL_SECRET, [thing])

    @action_route(DO)
    async def do(data: JSONBody[Contract]) -> dict[str, str]:
        return {}

    with pytest.raises(ValueError, match="the contract says"):
        internal_router(FLAKY, INTERNAL_SECRET, [thing, do])


async def test_a_response_a_shared_cache_may_keep_carries_no_session_cookie(clean_db, credentials):
    """Audit s20c: a static file (Cache-Control: public) was answered with the visitor's session
    cookie, a signed-in one too once past the middle of its life: a shared cache (a CDN, a
    caching proxy) keeping it would hand that session to the next visitor. Pages still issue it."""
    async with in_process_stack(clean_db, credentials, ["market", "orders"]) as stack:
        image = await stack.browser("market").get("/static/products/apple.svg")
        script = await stack.browser("orders").get("/static/look-again.js")
        page = await stack.browser("market").get("/", headers={"accept": "text/html"})
    for static in (image, script):
        assert static.status_code == 200, static.text
        assert "public" in static.headers["cache-control"]
        assert "set-cookie" not in static.headers, static.headers
    assert page.status_code == 200
    assert "rose_session=" in page.headers["set-cookie"]

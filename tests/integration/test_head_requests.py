"""HEAD is answered wherever GET is (RFC 9110, 9.3.2: every general-purpose server supports
both): the same status and headers, no body. Monitors, link checkers and `curl -I` use it;
before, every page answered 405."""

from __future__ import annotations

import logging

import pytest

from tests.integration.commerce_fixtures import shop_stack

PUBLIC = ["blog", "market", "cart", "events", "orders"]
HTML = {"accept": "text/html"}


@pytest.fixture
async def stack(clean_db, credentials, sandbox, shop):
    async with shop_stack(clean_db, credentials, sandbox.server) as running:
        yield running


@pytest.mark.parametrize("service", PUBLIC)
async def test_a_page_answers_head_as_it_answers_get_without_the_body(stack, service, caplog):
    browser = stack.browser(service)
    page = await browser.get("/", headers=HTML)
    with caplog.at_level(logging.INFO, logger=f"rose.{service}.access"):
        head = await browser.head("/", headers=HTML)
    assert page.status_code == 200, page.text[:300]
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-type"] == page.headers["content-type"]
    assert int(head.headers["content-length"]) == len(page.content)
    assert "x-request-id" in head.headers
    # The access log says what was asked.
    assert any(r.getMessage().startswith("HEAD / 200") for r in caplog.records), caplog.text


async def test_head_of_what_get_refuses_is_refused_alike(stack):
    market = stack.browser("market")
    unknown = await market.head("/no/such/page/")
    assert unknown.status_code == 404
    assert unknown.headers["content-type"].startswith("application/problem+json")
    assert unknown.content == b""
    # A route that only takes POST: HEAD is as wrong there as GET.
    post_only = await market.head("/auth/logout")
    assert post_only.status_code == (await market.get("/auth/logout")).status_code == 405
    internal = await stack.client("relations").head("/healthz")
    assert internal.status_code == 200
    assert internal.content == b""


async def test_the_allowed_methods_name_head_wherever_get_is_allowed(stack):
    market = stack.browser("market")
    options = await market.options("/")
    assert options.status_code == 204
    assert options.headers["allow"] == "GET, HEAD, OPTIONS"
    wrong = await market.request("TRACE", "/", headers={"accept": "application/json"})
    assert wrong.status_code == 405
    assert wrong.headers["allow"] == "GET, HEAD, OPTIONS"
    # Where GET is not allowed, neither is HEAD.
    post_only = await market.options("/auth/logout")
    assert "HEAD" not in post_only.headers["allow"]

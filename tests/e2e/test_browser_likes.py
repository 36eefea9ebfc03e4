"""In a real browser against real processes: sign in, like products on market, filter by likes."""

from __future__ import annotations

import pytest

from tests.conftest import truncate_all
from tests.e2e.conftest import live_stack
from tests.integration.blog_fixtures import insert_post
from tests.integration.market_fixtures import seed_products


@pytest.fixture(scope="module")
def likes_stack(provisioned, credentials):
    truncate_all(provisioned)
    with live_stack(provisioned, credentials, ["likes", "market", "blog"]) as stack:
        yield stack
    truncate_all(provisioned)


def test_like_two_products_then_see_exactly_those_when_filtering(likes_stack, provisioned, page):
    slugs = seed_products(provisioned, 30, prefix="browser")
    market = likes_stack.url("market")

    page.goto(likes_stack.url("market", "/auth/dev-login?user_id=42&next=/"))
    assert "signed in as user 42" in page.locator("header").inner_text()

    for slug in (slugs[3], slugs[7]):
        card = page.locator(f'.product[data-slug="{slug}"]')
        card.get_by_role("button", name="♡ Like").click()
        page.wait_for_url(market + "/")
        assert page.locator(f'.product[data-slug="{slug}"]').get_attribute("data-liked") == "true"

    page.locator("#liked-filter").click()
    page.wait_for_url(market + "/?liked=true")
    shown = page.locator(".product").evaluate_all("cards => cards.map(c => c.dataset.slug)")
    assert shown == [slugs[3], slugs[7]]

    # Unlike one from the filtered list: it leaves the list.
    page.locator(f'.product[data-slug="{slugs[3]}"]').get_by_role("button").click()
    page.wait_for_url(market + "/?liked=true")
    shown = page.locator(".product").evaluate_all("cards => cards.map(c => c.dataset.slug)")
    assert shown == [slugs[7]]


def test_like_a_post_on_blog_and_see_it_liked_after_reload(likes_stack, provisioned, page):
    insert_post(provisioned, "hedgerow-walk", title="Hedgerow walk")
    blog = likes_stack.url("blog")
    # Signed in on market: the session cookie is shared by every service on this host.
    page.goto(likes_stack.url("market", "/auth/dev-login?user_id=43&next=/"))
    page.goto(f"{blog}/hedgerow-walk/")
    button = page.locator("form.like-form button")
    assert button.get_attribute("aria-pressed") == "false"
    button.click()
    page.wait_for_load_state()
    page.reload()
    assert page.locator("form.like-form button").get_attribute("aria-pressed") == "true"

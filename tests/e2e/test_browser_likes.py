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
        page.wait_for_url(f"{market}/#like-{slug}")
        assert page.locator(f'.product[data-slug="{slug}"]').get_attribute("data-liked") == "true"

    page.locator("#liked-filter").click()
    page.wait_for_url(market + "/?liked=true")
    shown = page.locator(".product").evaluate_all("cards => cards.map(c => c.dataset.slug)")
    assert shown == [slugs[3], slugs[7]]

    # Unlike one from the filtered list: it leaves the list.
    page.locator(f'.product[data-slug="{slugs[3]}"]').get_by_role("button").click()
    page.wait_for_url(f"{market}/?liked=true#like-{slugs[3]}")
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


FOCUSED_LIKE = r"""() => {
    const button = document.activeElement;
    const card = button && button.closest('[data-slug]');
    return card && button.matches('button.like')
        ? [card.dataset.slug, button.getAttribute('aria-pressed'),
           button.textContent.replace(/\s+/g, ' ').trim()]
        : [null, null, button ? button.outerHTML.slice(0, 80) : null];
}"""


def like_by_keyboard(page, card_selector: str) -> None:
    """Tab (only) to the like button of the card, and press Enter on it."""
    button = page.locator(f"{card_selector} button.like")
    for _ in range(200):
        page.keyboard.press("Tab")
        if button.evaluate("b => b === document.activeElement"):
            break
    else:
        raise AssertionError(f"Tab never reached the like button of {card_selector}")
    with page.expect_navigation():
        page.keyboard.press("Enter")


def test_a_keyboard_user_who_likes_from_a_list_goes_on_from_that_button(
    likes_stack, provisioned, page
):
    """Liking reloads the page: it came back at its top, so the next Tab went to the first link
    of the header and a keyboard user had to tab through the list again to the card they were
    at. Now the page comes back at the like form: the next Tab is that button, pressed, and
    a screen reader hears which product or post it likes."""
    slugs = seed_products(provisioned, 12, prefix="keys")
    insert_post(provisioned, "keys-walk", title="Keys walk")
    page.goto(likes_stack.url("market", "/auth/dev-login?user_id=44&next=/?per_page=50"))
    card = f'.product[data-slug="{slugs[9]}"]'
    assert page.locator(f"{card} button.like").get_attribute("aria-pressed") == "false"
    like_by_keyboard(page, card)
    page.keyboard.press("Tab")
    assert page.evaluate(FOCUSED_LIKE) == [slugs[9], "true", "♥ Liked Item 009"]
    # Pressed again (Space, the other key a button takes), it is unliked, and still in reach.
    with page.expect_navigation():
        page.keyboard.press("Space")
    page.keyboard.press("Tab")
    assert page.evaluate(FOCUSED_LIKE) == [slugs[9], "false", "♡ Like Item 009"]

    page.goto(likes_stack.url("blog", "/"))
    like_by_keyboard(page, '.post[data-slug="keys-walk"]')
    page.keyboard.press("Tab")
    assert page.evaluate(FOCUSED_LIKE) == ["keys-walk", "true", "♥ Liked Keys walk"]

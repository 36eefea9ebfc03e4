"""Plan verification 4 in a real browser against real processes and the SumUp sandbox process:
add to cart, checkout, SumUp's hosted page, pay, webhook, order paid, cart empty, order listed."""

from __future__ import annotations

import os
import re
import signal

import httpx
import pytest
from playwright.sync_api import expect

from apps.orders.public import NO_SCRIPT_LOOKS
from tests.conftest import admin_connect, lock_waiters, truncate_all
from tests.e2e.conftest import (
    axe_source,
    axe_violations,
    axe_violations_without_scripts,
    buy_in_the_browser,
    live_stack,
)
from tests.integration.commerce_fixtures import (
    ALL_SERVICES,
    Shop,
    cart_rows,
    confirmation_held,
    entry_state,
    free_entry,
    next_order_id,
    open_shop,
)
from tests.integration.orders_fixtures import order_rows
from tests.waiting import eventually_sync


@pytest.fixture(scope="module")
def shop_live(provisioned, credentials):
    truncate_all(provisioned)
    with live_stack(provisioned, credentials, ALL_SERVICES, sandbox=True) as stack:
        yield stack
    truncate_all(provisioned)


@pytest.fixture(scope="module")
def shop(shop_live, provisioned) -> Shop:
    """One shop for the module's buyers (each test buys as a user of its own)."""
    return open_shop(provisioned)


def test_buy_in_the_browser_from_product_page_to_paid_order(shop_live, provisioned, shop, page):
    product_id = shop.product_ids[3]
    market, cart, orders = (shop_live.url(name) for name in ("market", "cart", "orders"))

    page.goto(f"{market}/auth/dev-login?user_id=31&next=/product/shop-003/")
    assert page.locator("h1").inner_text() == "Item 003"
    page.locator("#add-to-cart").click()
    page.wait_for_url(f"{cart}/")
    line = page.locator(f'.line[data-product-id="{product_id}"]')
    assert line.get_attribute("data-quantity") == "1"

    # A booking from events joins the same cart.
    page.goto(f"{shop_live.url('events')}/")
    page.locator(f'form[action="/entries/{shop.entry_id}/book/"] button').click()
    page.goto(f"{cart}/")
    assert page.locator(f'.booking[data-id="{shop.entry_id}"]').count() == 1

    page.locator("#checkout").click()
    page.wait_for_url(re.compile(re.escape(shop_live.sandbox_url) + r"/pay/.+"))
    assert "12.00" in page.content()  # 4.50 + 7.50, the total SumUp is asked to take
    page.get_by_role("button", name=re.compile("Pay", re.I)).first.click()

    page.wait_for_url(re.compile(re.escape(orders) + r"/checkout/return/\d+/"))
    order_id = int(re.search(r"/checkout/return/(\d+)/", page.url).group(1))
    assert eventually_sync(lambda: order_rows(provisioned)[0][1] == "paid")
    page.reload()
    assert page.locator("#payment-state").get_attribute("data-state") == "paid"

    assert eventually_sync(lambda: not [row for row in cart_rows(provisioned) if row[6]])
    assert eventually_sync(
        lambda: entry_state(provisioned, shop.entry_id) == ("confirmed", order_id)
    )
    page.goto(f"{cart}/")
    assert page.locator("#empty-cart").count() == 1
    page.goto(f"{orders}/")
    assert page.locator(f'.order[data-order-id="{order_id}"]').get_attribute("data-state") == "paid"
    # Its link says what it opens to a screen reader's list of links, not "#1" (probe a11y).
    assert page.get_by_role("link", name=f"Order #{order_id}", exact=True).count() == 1
    deliveries = httpx.get(f"{shop_live.sandbox_url}/_sandbox/deliveries").json()
    assert any(entry["outcome"] == "delivered" for entry in deliveries)


def test_the_page_back_from_paying_shows_the_cart_emptied(shop_live, provisioned, shop, page):
    """The README's promise, on the first page the buyer sees after paying (no reload): the
    order paid and the cart empty in the navigation."""
    urls = {name: shop_live.url(name) for name in ("market", "cart", "orders")}
    page.goto(f"{urls['market']}/auth/dev-login?user_id=32&next=/")
    assert page.locator(".cart-mini").inner_text() == "Cart (0)"
    order_id = buy_in_the_browser(page, urls, shop_live.sandbox_url, user_id=32, product=5)
    assert page.locator("#payment-state").get_attribute("data-state") == "paid"
    assert f"order #{order_id} is paid" in page.locator("#payment-state").inner_text()
    assert page.locator(".cart-mini").inner_text() == "Cart (0)"
    assert not [row for row in cart_rows(provisioned) if row[0] == 32 and row[6]]


def test_a_free_booking_is_confirmed_without_sumup(shop_live, provisioned, shop, page):
    """Audit M4: a free event could be booked but never checked out. Now Check out confirms
    it and shows the order's return page; SumUp is never opened."""
    entry_id = free_entry(provisioned, "Free walk")
    events, orders = shop_live.url("events"), shop_live.url("orders")
    page.goto(f"{events}/auth/dev-login?user_id=33&next=/")
    with page.expect_navigation():
        page.locator(f'tr.entry[data-id="{entry_id}"]').get_by_role("button", name="Book").click()
    page.goto(shop_live.url("cart", "/"))
    assert page.locator(".cart-mini").inner_text() == "Cart (1)"
    page.locator("#checkout").click()
    page.wait_for_url(re.compile(re.escape(orders) + r"/checkout/return/\d+/"))
    state = page.locator("#payment-state")
    assert state.get_attribute("data-state") == "paid"
    assert "is confirmed; there was nothing to pay" in state.inner_text()
    assert page.locator(".cart-mini").inner_text() == "Cart (0)"
    order_id = int(page.url.rstrip("/").rsplit("/", 1)[-1])
    assert entry_state(provisioned, entry_id) == ("confirmed", order_id)
    assert axe_violations(page, axe_source()) == []


def test_a_free_booking_slow_to_confirm_says_being_confirmed_until_it_is(
    shop_live, provisioned, shop, page
):
    """A free booking's checkout while events is slow to confirm it (its confirmation held up
    by a second transaction holding its key in events): the return page says the order is
    being confirmed, not confirmed, and with no reload by the buyer (or the test) it shows the
    order confirmed, and the cart emptied in its navigation, once events has confirmed it."""
    entry_id = free_entry(provisioned, "Slow walk")
    events, orders = shop_live.url("events"), shop_live.url("orders")
    page.goto(f"{events}/auth/dev-login?user_id=34&next=/")
    with page.expect_navigation():
        page.locator(f'tr.entry[data-id="{entry_id}"]').get_by_role("button", name="Book").click()
    page.goto(shop_live.url("cart", "/"))
    expect(page.locator(".cart-mini")).to_have_text("Cart (1)")
    order_id = next_order_id(provisioned)
    state = page.locator("#payment-state")
    with confirmation_held(provisioned, order_id):
        page.locator("#checkout").click()
        page.wait_for_url(f"{orders}/checkout/return/{order_id}/", timeout=30_000)
        expect(state).to_have_attribute("data-state", "confirming")
        expect(state).to_contain_text(f"order #{order_id} is being confirmed")
        assert entry_state(provisioned, entry_id)[0] != "confirmed"
        assert axe_violations(page, axe_source()) == []
    # Events confirms it now; the page, looking again by itself, says so.
    expect(state).to_have_attribute("data-state", "paid", timeout=45_000)
    expect(state).to_contain_text(f"order #{order_id} is confirmed; there was nothing to pay")
    expect(page.locator(".cart-mini")).to_have_text("Cart (0)")
    assert page.url == f"{orders}/checkout/return/{order_id}/"
    assert entry_state(provisioned, entry_id) == ("confirmed", order_id)


def test_without_javascript_the_return_page_reloads_until_the_order_is_confirmed(
    shop_live, provisioned, shop, browser
):
    """A browser without JavaScript saw "being confirmed" for ever on the return page: only
    look-again.js reloaded it. Now the page reloads itself on a timer while the outcome is not
    known (its <noscript> refresh), says so and offers to stop, and shows the order confirmed
    once events has confirmed it; the confirmed page does not reload."""
    entry_id = free_entry(provisioned, "Walk without scripts")
    events, orders = shop_live.url("events"), shop_live.url("orders")
    context = browser.new_context(java_script_enabled=False)
    try:
        page = context.new_page()
        page.set_default_timeout(15_000)
        page.goto(f"{events}/auth/dev-login?user_id=35&next=/")
        with page.expect_navigation():
            page.locator(f'tr.entry[data-id="{entry_id}"]').get_by_role(
                "button", name="Book"
            ).click()
        page.goto(shop_live.url("cart", "/"))
        order_id = next_order_id(provisioned)
        state = page.locator("#payment-state")
        with confirmation_held(provisioned, order_id):
            page.locator("#checkout").click()
            page.wait_for_url(f"{orders}/checkout/return/{order_id}/", timeout=30_000)
            expect(state).to_have_attribute("data-state", "confirming")
            # It reloads by itself (the address counts the reloads), still confirming, and
            # says so.
            page.wait_for_url(f"{orders}/checkout/return/{order_id}/?looked=1", timeout=15_000)
            expect(state).to_have_attribute("data-state", "confirming")
            # (Playwright's own text matching skips <noscript>; what the buyer sees is the
            # rendered text.)
            expect(page.locator("#looking-again")).to_contain_text(
                "reloads by itself", use_inner_text=True
            )
            expect(page.locator("#stop-reloading")).to_be_visible()
            reloading = page.content()
            assert (
                axe_violations_without_scripts(
                    browser, page.url, reloading, shows="#stop-reloading"
                )
                == []
            )
            # Stopped (the last look): no refresh, the page as the buyer keeps it.
            page.locator("#stop-reloading").click()
            page.wait_for_url(f"{orders}/checkout/return/{order_id}/?looked={NO_SCRIPT_LOOKS}")
            expect(state).to_have_attribute("data-state", "confirming")
            assert page.locator('meta[http-equiv="refresh"]').count() == 0
            expect(page.locator("#looking-again")).to_contain_text(
                "no longer reloads by itself", use_inner_text=True
            )
            assert (
                axe_violations_without_scripts(
                    browser, page.url, page.content(), shows="#looking-again"
                )
                == []
            )
            # "Check now" looks again, and the reloads start again from there.
            page.get_by_role("link", name="check now").click()
            page.wait_for_url(f"{orders}/checkout/return/{order_id}/")
        # Events confirms it now; a later reload shows it, and the page stops reloading.
        expect(state).to_have_attribute("data-state", "paid", timeout=45_000)
        expect(state).to_contain_text(f"order #{order_id} is confirmed; there was nothing to pay")
        assert page.locator('meta[http-equiv="refresh"]').count() == 0
        assert page.locator("#looking-again").count() == 0
        assert entry_state(provisioned, entry_id) == ("confirmed", order_id)
    finally:
        context.close()


def test_the_check_again_button_undone_for_a_deadlock_looks_again_until_paid(
    shop_live, provisioned, shop, page
):
    """The order page's "Check again" button, its check undone by PostgreSQL for a deadlock
    (with the test's own transaction: it holds the attempt, the check locks the order and waits
    on it, then the test asks for the order): the buyer saw the generic error page. Now the
    answer is the return page's "still checking" state, and with no reload by the buyer (or
    the test) its script looks again at the return page and goes there once the order is paid
    (the button's own address is a POST: looking again there was a 405 for ever)."""
    orders = shop_live.url("orders")
    controls = f"{shop_live.sandbox_url}/_sandbox/controls"
    webhooks = httpx.get(controls).json()["webhooks"]
    httpx.post(controls, json={"webhooks": "drop"}).raise_for_status()
    try:
        page.goto(f"{shop_live.url('market')}/auth/dev-login?user_id=38&next=/product/shop-004/")
        page.locator("#add-to-cart").click()
        page.wait_for_url(f"{shop_live.url('cart')}/")
        order_id = next_order_id(provisioned)
        page.locator("#checkout").click()
        page.wait_for_url(re.compile(re.escape(shop_live.sandbox_url) + r"/pay/.+"))
        checkout_id = page.url.rstrip("/").rsplit("/", 1)[-1]
        # Paid at SumUp in another tab, say; no webhook arrives.
        httpx.post(
            f"{shop_live.sandbox_url}/_sandbox/checkouts/{checkout_id}/pay"
        ).raise_for_status()
        page.goto(f"{orders}/order/{order_id}/")
        assert page.locator("#order-state").get_attribute("data-state") == "waiting"
        with admin_connect(provisioned, "orders") as holder:
            holder.execute("BEGIN")
            holder.execute(
                "SELECT 1 FROM orders.payment_attempts WHERE sumup_checkout_id = %s FOR UPDATE",
                (checkout_id,),
            )
            # Clicked without waiting for the answer, which waits on the test's lock.
            page.evaluate("document.getElementById('recheck').click()")
            assert eventually_sync(lambda: lock_waiters(provisioned, "orders") == 1)
            holder.execute("SELECT 1 FROM orders.orders WHERE id = %s FOR UPDATE", (order_id,))
            expect(page.locator("#still-checking")).to_contain_text("still checking your payment")
            holder.execute("ROLLBACK")
        state = page.locator("#payment-state")
        expect(state).to_have_attribute("data-state", "paid", timeout=30_000)
        assert page.url == f"{orders}/checkout/return/{order_id}/"
        assert dict(row[:2] for row in order_rows(provisioned))[order_id] == "paid"
    finally:
        httpx.post(controls, json={"webhooks": webhooks}).raise_for_status()


def test_paying_while_cart_is_down_shows_paid_and_the_cart_is_cleared_later(
    shop_live, provisioned, shop, page
):
    """Cart's process is gone when the buyer comes back from SumUp: the page still says paid
    (cart's slot left out of the navigation); once cart is back, the outbox clears the cart."""
    urls = {name: shop_live.url(name) for name in ("market", "cart", "orders")}
    sandbox = shop_live.sandbox_url
    page.goto(f"{urls['market']}/auth/dev-login?user_id=33&next=/product/shop-004/")
    page.locator("#add-to-cart").click()
    page.wait_for_url(f"{urls['cart']}/")
    page.locator("#checkout").click()
    page.wait_for_url(re.compile(re.escape(sandbox) + r"/pay/.+"))
    cart = shop_live.group.processes["cart"]
    assert cart.process is not None
    os.killpg(cart.process.pid, signal.SIGKILL)
    cart.process.wait()
    try:
        page.get_by_role("button", name=re.compile("Pay", re.I)).first.click()
        page.wait_for_url(re.compile(re.escape(urls["orders"]) + r"/checkout/return/\d+/"))
        assert page.locator("#payment-state").get_attribute("data-state") == "paid"
        assert page.locator(".cart-mini").count() == 0
        assert [row for row in cart_rows(provisioned) if row[0] == 33 and row[6]]
    finally:
        shop_live.group.restart("cart")
        assert not shop_live.group.wait_ready(["cart"], timeout=60)
    assert eventually_sync(
        lambda: not [row for row in cart_rows(provisioned) if row[0] == 33 and row[6]],
        timeout=60,
    )
    page.reload()
    assert page.locator(".cart-mini").inner_text() == "Cart (0)"

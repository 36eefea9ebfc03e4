"""cart after the split: lines only, products / bookings / page configs read through FDW,
checkout handed to orders and SumUp, cleared by orders' outbox once paid."""

from __future__ import annotations

import asyncio
import itertools
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apps.cart.models import metadata as cart_metadata
from apps.common.app_factory import platform_of
from tests.conftest import admin_connect, in_process_stack, lock_waiters
from tests.integration.commerce_fixtures import (
    ALL_SERVICES,
    ServiceDown,
    browser_of,
    cart_rows,
    entry_state,
    hung_server,
    session_cookie,
    share_cookies,
    shop_stack,
    table_locked,
)
from tests.integration.orders_fixtures import (
    checkout_id_of,
    order_rows,
    orders_overrides,
    outbox_rows,
    webhook,
)
from tests.signed import internal_get, internal_post
from tests.waiting import eventually

HTML = {"accept": "text/html"}
# A line of an order's page: kind, title, unit price, quantity, line total.
ORDER_LINE = re.compile(
    r'<tr class="item" data-kind="(\w+)"><td>([^<]*)</td><td>([^<]*)</td><td>([^<]*)</td>'
    r"<td>([^<]*)</td></tr>"
)
JSON = {"accept": "application/json"}


@pytest.fixture
async def stack(clean_db, credentials, sandbox, shop):
    async with shop_stack(clean_db, credentials, sandbox.server) as running:
        yield running


async def test_add_change_remove_and_group_by_page(stack, clean_db, shop):
    cart = await browser_of(stack, "cart", user_id=5)
    first, second, third = shop.product_ids[:3]
    assert (await cart.post(f"/add/{first}/", json={"quantity": 2})).json()["quantity"] == 2
    assert (await cart.post(f"/add/{first}/")).json()["quantity"] == 3
    await cart.post(f"/add/{second}/")
    line = (await cart.post(f"/add/{third}/")).json()

    view = (await cart.get("/api/cart")).json()
    assert [page["page_id"] for page in view["pages"]] == [1, 2]
    assert view["pages"][0]["page_title"] == "Farm Shop"
    assert [(x["product_id"], x["quantity"]) for x in view["pages"][0]["lines"]] == [
        (first, 3),
        (third, 1),
    ]
    assert view["pages"][0]["lines"][0]["title"] == "Item 000"
    assert view["pages"][0]["lines"][0]["unit_price"] == "1.00"  # special price of item 0
    assert view["total"] == "9.00"  # 3 x 1.00 (special price) + 2.50 + 3.50

    changed = await cart.post(f"/item/{line['id']}/quantity/", json={"quantity": 4})
    assert changed.json()["quantity"] == 4
    removed = await cart.post(f"/item/{line['id']}/delete/")
    assert removed.json()["deleted"] is True
    page_two = (await cart.get("/api/page/market-hall")).json()
    assert [x["product_id"] for x in page_two["pages"][0]["lines"]] == [second]
    assert [row[2] for row in cart_rows(clean_db) if row[6]] == [first, second]


async def test_bad_cart_input_is_a_clear_problem(stack, shop):
    cart = await browser_of(stack, "cart", user_id=5)
    unknown = await cart.post("/add/999999/")
    assert unknown.status_code == 404
    too_many = await cart.post(f"/add/{shop.product_ids[0]}/", json={"quantity": 500})
    assert too_many.status_code == 422
    assert "quantity" in too_many.json()["detail"]
    not_a_number = await cart.post(f"/add/{shop.product_ids[0]}/", json={"quantity": "lots"})
    assert not_a_number.status_code == 422
    # A body it cannot read adds nothing (it used to add 1): JSON that is not an object, and a
    # type that is neither a form nor JSON.
    not_an_object = await cart.post(f"/add/{shop.product_ids[0]}/", json="x")
    assert not_an_object.status_code == 422
    assert "JSON object" in not_an_object.json()["detail"]
    as_text = await cart.post(
        f"/add/{shop.product_ids[0]}/",
        content=b"quantity=5",
        headers={"content-type": "text/plain"},
    )
    assert as_text.status_code == 415
    assert "text/plain" in as_text.json()["detail"]
    assert (await cart.get("/api/cart")).json()["pages"] == []
    # Issue 15: the same rule as the form (1 to 99); 0 no longer quietly removes the line.
    other = await browser_of(stack, "cart", user_id=6)
    await other.post(f"/add/{shop.product_ids[0]}/")
    line_id = (await other.get("/api/cart")).json()["pages"][0]["lines"][0]["id"]
    for wrong in (0, 100, -1):
        refused = await other.post(f"/item/{line_id}/quantity/", json={"quantity": wrong})
        assert refused.status_code == 422, wrong
        assert refused.json()["errors"] == [
            {
                "field": "quantity",
                "message": "Choose a quantity from 1 to 99 (Remove takes the line out).",
            }
        ]
    assert (await other.get("/api/cart")).json()["pages"][0]["lines"][0]["quantity"] == 1
    someone_elses = await cart.post("/item/12345/delete/")
    assert someone_elses.status_code == 404
    no_page = await cart.get("/api/page/no-such-page")
    assert no_page.status_code == 404
    empty_checkout = await cart.post("/checkout/")
    assert empty_checkout.status_code == 409
    assert "empty" in empty_checkout.json()["detail"]


async def test_quantities_are_ascii_digits_only(stack, clean_db, shop):
    """Audit: Python's int() reads full-width and other scripts' digits (and underscores), so
    a full-width 3 (U+FF13) added 3. A quantity is ASCII digits (a form field or a JSON string)
    or a JSON integer; anything else is a 422 naming the field, and the cart does not change."""
    cart = await browser_of(stack, "cart", user_id=7)
    product = shop.product_ids[0]
    wrong_forms = ("\uff13", "\u0663", "\u096a", "1_0", "3.0", "+\uff13")
    for wrong in wrong_forms:
        refused = await cart.post(f"/add/{product}/", data={"quantity": wrong})
        assert refused.status_code == 422, (wrong, refused.text)
        assert refused.json()["errors"][0]["field"] == "quantity"
    for wrong_json in ("\uff13", "1_0", 2.5, 3.0, True):
        refused = await cart.post(f"/add/{product}/", json={"quantity": wrong_json})
        assert refused.status_code == 422, (wrong_json, refused.text)
        assert refused.json()["errors"][0]["field"] == "quantity"
    assert cart_rows(clean_db) == []

    added = await cart.post(f"/add/{product}/", data={"quantity": " 2 "})
    assert added.status_code == 200, added.text
    line_id = added.json()["id"]
    assert (await cart.post(f"/add/{product}/", json={"quantity": "1"})).json()["quantity"] == 3
    for wrong in ("\uff15", "\u0665"):
        refused = await cart.post(f"/item/{line_id}/quantity/", data={"quantity": wrong})
        assert refused.status_code == 422, (wrong, refused.text)
        assert refused.json()["errors"][0]["field"] == "quantity"
        page = await cart.post(f"/item/{line_id}/quantity/", data={"quantity": wrong}, headers=HTML)
        assert page.status_code == 422
        assert f'id="quantity-{line_id}-error"' in page.text
        assert "whole number" in page.text
    assert [row[3] for row in cart_rows(clean_db)] == [3]


async def test_anonymous_cart_is_adopted_on_sign_in(stack, clean_db, shop):
    cart = await browser_of(stack, "cart")
    first, second = shop.product_ids[:2]
    await cart.post(f"/add/{first}/")
    await cart.post(f"/add/{second}/", json={"quantity": 2})
    assert {row[0] for row in cart_rows(clean_db)} == {None}
    events = stack.browser("events")
    share_cookies(cart, events)
    assert (await events.post(f"/entries/{shop.entry_id}/book/")).status_code == 200

    # The user already has one of these products in their cart from another device.
    other_device = await browser_of(stack, "cart", user_id=9)
    await other_device.post(f"/add/{second}/")

    market = stack.browser("market")
    share_cookies(cart, market)
    signed = await market.get("/auth/dev-login?user_id=9")  # sign in on market
    assert signed.status_code == 200
    share_cookies(market, cart)
    view = (await cart.get("/api/cart")).json()
    lines = sorted(
        (x["product_id"], x["quantity"]) for page in view["pages"] for x in page["lines"]
    )
    assert lines == [(first, 1), (second, 3)]
    active = [row for row in cart_rows(clean_db) if row[6]]
    assert {row[0] for row in active} == {9}
    # The anonymous booking joined the user too (events' adopt-bookings-for-user).
    assert [booking["id"] for booking in view["pages"][0]["bookings"]] == [shop.entry_id]


async def test_sign_in_keeps_every_unit_and_paying_before_it_takes_only_its_own(
    stack, clean_db, shop, sandbox
):
    """The user's 60 on another device and the anonymous session's 60, checked out before
    signing in: the merged line holds 120 (nothing dropped at the 99 an add stops at), and
    paying the anonymous order leaves the user's own 60."""
    product = shop.product_ids[0]
    other_device = await browser_of(stack, "cart", user_id=70)
    await other_device.post(f"/add/{product}/", json={"quantity": 60})
    cart = await browser_of(stack, "cart")
    await cart.post(f"/add/{product}/", json={"quantity": 60})
    order_id = (await cart.post("/checkout/")).json()["order_id"]

    market = stack.browser("market")
    share_cookies(cart, market)
    assert (await market.get("/auth/dev-login?user_id=70")).status_code == 200
    share_cookies(market, cart)
    view = (await cart.get("/api/cart")).json()
    assert [(x["product_id"], x["quantity"]) for x in view["pages"][0]["lines"]] == [(product, 120)]

    checkout_id = checkout_id_of(clean_db, order_id)
    sandbox.pay(checkout_id)
    assert (await webhook(stack, order_id, checkout_id)).status_code == 204

    def quantity_left() -> int | None:
        live = [row[3] for row in cart_rows(clean_db) if row[6]]
        return live[0] if live else None

    assert await eventually(lambda: quantity_left() == 60)
    line_id = (await cart.get("/api/cart")).json()["pages"][0]["lines"][0]["id"]
    with admin_connect(clean_db, "cart") as connection:
        connection.execute("UPDATE cart.cart_items SET quantity = 120 WHERE id = %s", (line_id,))
    # A merged quantity past 99 may be kept or lowered, not raised.
    cart.headers["x-csrf-token"] = (await cart.get("/auth/session")).json()["csrf_token"]
    kept = await cart.post(f"/item/{line_id}/quantity/", json={"quantity": 120})
    assert kept.status_code == 200, kept.text
    raised = await cart.post(f"/item/{line_id}/quantity/", json={"quantity": 121})
    assert raised.status_code == 422
    assert "from 1 to 120" in raised.json()["detail"]


async def test_an_add_never_lowers_a_line_sign_in_took_past_99(stack, clean_db, shop):
    """Audit s20 M4: the anonymous 99 and the account's 99 make 198 at sign-in; one more
    "Add to cart" made it 99 without a word. An add keeps such a line and says nothing was
    added; an add that reaches the 99 says how many it added."""
    product, other_product = shop.product_ids[0], shop.product_ids[2]
    account = await browser_of(stack, "cart", user_id=71)
    await account.post(f"/add/{product}/", json={"quantity": 99})
    cart = await browser_of(stack, "cart")
    await cart.post(f"/add/{product}/", json={"quantity": 99})
    market = stack.browser("market")
    share_cookies(cart, market)
    assert (await market.get("/auth/dev-login?user_id=71")).status_code == 200
    share_cookies(market, cart)
    cart.headers["x-csrf-token"] = (await cart.get("/auth/session")).json()["csrf_token"]
    view = (await cart.get("/api/cart")).json()
    assert [(x["product_id"], x["quantity"]) for x in view["pages"][0]["lines"]] == [(product, 198)]

    one_more = await cart.post(f"/add/{product}/", json={"quantity": 1})
    assert one_more.status_code == 409, one_more.text
    assert one_more.headers["content-type"] == "application/problem+json"
    assert one_more.json()["detail"] == (
        "Nothing was added: your cart already holds 198 of this product, and an add takes a "
        "line to 99 at most (the line is kept as it is)"
    )
    as_page = await cart.post(f"/add/{product}/", data={"quantity": "1"}, headers=HTML)
    assert as_page.status_code == 409
    assert "Nothing was added" in as_page.text
    view = (await cart.get("/api/cart")).json()
    assert [(x["product_id"], x["quantity"]) for x in view["pages"][0]["lines"]] == [(product, 198)]

    # Up to the 99, an add says what it added.
    assert (await cart.post(f"/add/{other_product}/", json={"quantity": 97})).json()["added"] == 97
    reaching = await cart.post(f"/add/{other_product}/", json={"quantity": 5})
    assert reaching.status_code == 200, reaching.text
    assert (reaching.json()["quantity"], reaching.json()["added"]) == (99, 2)
    at_most = await cart.post(f"/add/{other_product}/", json={"quantity": 1})
    assert at_most.status_code == 409
    assert "already holds 99 of this product" in at_most.json()["detail"]


async def test_a_browser_told_when_only_part_of_an_add_fits(stack, clean_db, shop):
    """The line holds 97 of at most 99 and the buyer's form adds 5: JSON said ``added`` 2, but
    the browser was sent back to the cart with not a word of the 3 left out. Now the page it
    lands on says so, once (a notice the page shows and then forgets)."""
    product = shop.product_ids[2]
    cart = await browser_of(stack, "cart")
    assert (await cart.post(f"/add/{product}/", json={"quantity": 97})).json()["added"] == 97
    token = cart.headers.pop("x-csrf-token")

    # As the market's product form posts it: a URL-encoded form with its CSRF field.
    form = {"quantity": "5", "_csrf_token": token}
    sent = await cart.post(f"/add/{product}/", data=form, headers=HTML)
    assert sent.status_code == 303, sent.text
    landed = await cart.get(sent.headers["location"], headers=HTML)
    assert landed.status_code == 200, landed.text
    notice = (
        "Only 2 of the 5 you asked for were added: your cart now holds 99 of Item 002, "
        "the most one line can hold."
    )
    assert notice in landed.text
    view = (await cart.get("/api/cart")).json()
    assert [(x["product_id"], x["quantity"]) for x in view["pages"][0]["lines"]] == [(product, 99)]
    # Shown once: the next page does not say it again.
    again = await cart.get("/", headers=HTML)
    assert again.status_code == 200
    assert "you asked for" not in again.text

    # Followed as a browser does, from the market's page (its form names no ``next``).
    await cart.post(
        f"/item/{view['pages'][0]['lines'][0]['id']}/quantity/",
        data={"quantity": "97", "_csrf_token": token},
    )
    followed = await cart.post(f"/add/{product}/", data=form, headers=HTML, follow_redirects=True)
    assert followed.status_code == 200
    assert notice in followed.text
    # A whole add says nothing more than the cart it shows.
    await cart.post(
        f"/item/{view['pages'][0]['lines'][0]['id']}/quantity/",
        data={"quantity": "90", "_csrf_token": token},
    )
    whole = await cart.post(f"/add/{product}/", data=form, headers=HTML, follow_redirects=True)
    assert whole.status_code == 200
    assert "you asked for" not in whole.text


async def test_a_head_of_the_page_leaves_the_notice_for_the_get(stack, clean_db, shop):
    """A HEAD of the page a partial add lands on (a link checker, a prefetcher, ``curl -I``)
    ran the page's GET handler, which took the notice, and its answer forgot the notice
    cookie: the GET that followed showed the cart without a word of what was left out. A
    HEAD renders no page, so it leaves the notice for the GET that shows it."""
    product = shop.product_ids[2]
    cart = await browser_of(stack, "cart")
    assert (await cart.post(f"/add/{product}/", json={"quantity": 97})).json()["added"] == 97
    token = cart.headers.pop("x-csrf-token")
    sent = await cart.post(
        f"/add/{product}/", data={"quantity": "5", "_csrf_token": token}, headers=HTML
    )
    assert sent.status_code == 303, sent.text
    assert "rose_notice" in cart.cookies

    head = await cart.head(sent.headers["location"], headers=HTML)
    assert head.status_code == 200
    assert head.content == b""
    assert not any(
        value.startswith("rose_notice=") for value in head.headers.get_list("set-cookie")
    )
    landed = await cart.get(sent.headers["location"], headers=HTML)
    assert landed.status_code == 200, landed.text
    assert "Only 2 of the 5 you asked for were added" in landed.text
    # The GET that showed it forgets it, as before.
    again = await cart.get("/", headers=HTML)
    assert "you asked for" not in again.text


@pytest.mark.parametrize(
    "prefetch",
    [
        {"sec-purpose": "prefetch"},
        {"sec-purpose": "prefetch;prerender"},
        {"purpose": "prefetch"},
        {"x-purpose": "preview"},
        {"x-moz": "prefetch"},
    ],
)
async def test_a_prefetch_of_the_page_leaves_the_notice_for_the_visit(
    stack, clean_db, shop, prefetch
):
    """A browser prefetching the page a partial add lands on (a link's prefetch, speculation
    rules, Safari's preview) sent a GET that took the notice and forgot its cookie: the visit
    itself then showed the cart without a word of what was left out. A prefetch is answered
    like a HEAD: the page, with the notice, and the notice kept for the visit."""
    product = shop.product_ids[2]
    cart = await browser_of(stack, "cart")
    assert (await cart.post(f"/add/{product}/", json={"quantity": 97})).json()["added"] == 97
    token = cart.headers.pop("x-csrf-token")
    sent = await cart.post(
        f"/add/{product}/", data={"quantity": "5", "_csrf_token": token}, headers=HTML
    )
    assert sent.status_code == 303, sent.text
    assert "rose_notice" in cart.cookies

    fetched = await cart.get(sent.headers["location"], headers={**HTML, **prefetch})
    assert fetched.status_code == 200, fetched.text
    assert "Only 2 of the 5 you asked for were added" in fetched.text
    landed = await cart.get(sent.headers["location"], headers=HTML)
    assert landed.status_code == 200, landed.text
    assert "Only 2 of the 5 you asked for were added" in landed.text
    # The prefetch's answer did not forget it (Max-Age=0); the visit's did.
    assert not any(
        value.startswith("rose_notice=") for value in fetched.headers.get_list("set-cookie")
    )
    assert any(value.startswith("rose_notice=;") for value in landed.headers.get_list("set-cookie"))
    again = await cart.get("/", headers=HTML)
    assert "you asked for" not in again.text


async def test_checkout_pays_and_clears_the_cart_and_confirms_bookings(
    stack, clean_db, shop, sandbox
):
    """Plan verification 4: add to cart, checkout, hosted page, pay, webhook, order paid, cart
    empty, bookings confirmed, order in the list and detail pages."""
    cart = await browser_of(stack, "cart", user_id=3)
    events = stack.browser("events")
    orders = stack.browser("orders")
    share_cookies(cart, events, orders)
    await cart.post(f"/add/{shop.product_ids[0]}/", json={"quantity": 2})
    await cart.post(f"/add/{shop.product_ids[2]}/")
    booked = await events.post(f"/entries/{shop.entry_id}/book/")
    assert booked.status_code == 200, booked.text
    view = (await cart.get("/api/cart")).json()
    assert [b["id"] for b in view["pages"][0]["bookings"]] == [shop.entry_id]

    checkout = await cart.post("/checkout/", headers=HTML)
    assert checkout.status_code == 303
    hosted_url = checkout.headers["location"]
    assert hosted_url.startswith(sandbox.server.url + "/pay/")
    [(order_id, status, _, total, _)] = order_rows(clean_db)
    assert (status, str(total)) == ("pending", "13.00")  # 2 x 1.00 + 3.50 + 7.50
    assert len([row for row in cart_rows(clean_db) if row[6]]) == 2  # untouched until paid

    hosted_page = sandbox.client.get(hosted_url)
    assert "13.00" in hosted_page.text
    sandbox.client.post(hosted_url + "/pay")  # the buyer pays on SumUp's page
    assert (await webhook(stack, order_id, checkout_id_of(clean_db, order_id))).status_code == 204
    assert order_rows(clean_db)[0][1] == "paid"

    assert await eventually(lambda: not [row for row in cart_rows(clean_db) if row[6]])
    assert {row[5] for row in cart_rows(clean_db)} == {order_id}
    assert await eventually(lambda: entry_state(clean_db, shop.entry_id) == ("confirmed", order_id))
    listing = (await orders.get("/api/orders")).json()
    assert [item["id"] for item in listing["items"]] == [order_id]
    detail = await orders.get(f"/order/{order_id}/", headers=HTML)
    assert 'data-state="paid"' in detail.text


async def test_page_checkout_uses_the_page_config_and_only_its_lines(stack, clean_db, shop):
    cart = await browser_of(stack, "cart", user_id=4)
    await cart.post(f"/add/{shop.product_ids[0]}/")  # page 1
    await cart.post(f"/add/{shop.product_ids[1]}/")  # page 2
    created = (await cart.post("/page/market-hall/checkout/")).json()
    assert created["sumup_reference"].startswith("page2-")
    with admin_connect(clean_db, "orders") as connection:
        order = connection.execute(
            "SELECT page_post_id, total FROM orders.orders WHERE id = %s", (created["order_id"],)
        ).fetchone()
    assert (order[0], str(order[1])) == (2, "2.50")


async def test_a_page_carts_title_names_the_page_not_its_address(stack, shop):
    """A screen reader says a page's title first: "Cart for farm-shop" was the page's slug
    (probe a11y). Its title is the page's, from blog, whether or not the cart has lines."""
    cart = await browser_of(stack, "cart", user_id=17)
    empty = await cart.get("/page/farm-shop/", headers=HTML)
    await cart.post(f"/add/{shop.product_ids[0]}/")  # page 1, the farm shop
    with_a_line = await cart.get("/page/farm-shop/", headers=HTML)
    for page in (empty, with_a_line):
        assert page.status_code == 200, page.text
        assert "<title>Cart for Farm Shop \u00b7 cart</title>" in page.text


async def test_a_page_whose_editor_switched_its_cart_off_has_no_page_cart(stack, clean_db, shop):
    """Probe: the page admin's "Cart: a page cart with its own checkout", unticked, was saved
    and read by nothing: the page's cart and its checkout went on. Now the page has none (a
    404 saying where its lines are); the cart page offers neither; the whole cart still checks
    out, the page's lines with it."""
    with admin_connect(clean_db, "blog") as connection:
        connection.execute(
            "UPDATE blog.page_configs SET features = '{\"cart\": false}' "
            "WHERE container_type = 'page' AND container_id = %s",
            (shop.page_ids["market-hall"],),
        )
    cart = await browser_of(stack, "cart", user_id=16)
    await cart.post(f"/add/{shop.product_ids[0]}/")  # page 1
    await cart.post(f"/add/{shop.product_ids[1]}/")  # page 2

    page = await cart.get("/", headers=HTML)
    assert 'action="/page/farm-shop/checkout/"' in page.text
    assert 'href="/page/farm-shop/"' in page.text
    assert "/page/market-hall/" not in page.text
    view = (await cart.get("/api/cart")).json()
    assert [(p["page_slug"], p["own_cart"]) for p in view["pages"]] == [
        ("farm-shop", True),
        ("market-hall", False),
    ]
    for method, path in (
        ("GET", "/page/market-hall/"),
        ("GET", "/api/page/market-hall"),
        ("POST", "/page/market-hall/checkout/"),
    ):
        refused = await cart.request(method, path)
        assert refused.status_code == 404, (path, refused.text)
        assert "has no cart of its own" in refused.json()["detail"]
    assert order_rows(clean_db) == []

    assert (await cart.get("/page/farm-shop/")).status_code == 200
    whole = await cart.post("/checkout/")
    assert whole.status_code == 200, whole.text
    [(_, status, _, total, _)] = order_rows(clean_db)
    assert (status, str(total)) == ("pending", "3.50")


async def test_sumup_unavailable_at_checkout_leaves_the_cart_and_no_order(
    stack, clean_db, shop, sandbox
):
    cart = await browser_of(stack, "cart", user_id=3)
    await cart.post(f"/add/{shop.product_ids[0]}/")
    before = cart_rows(clean_db)
    sandbox.controls(api_unavailable=True)
    page = await cart.post("/checkout/", headers=HTML)
    assert page.status_code == 503
    assert "Checkout failed" in page.text
    assert "Your cart has not changed" in page.text
    api = await cart.post("/checkout/")
    assert api.headers["content-type"].startswith("application/problem+json")
    # The buyer is told which part is down and when to try again, not SumUp's own words.
    assert "payments (SumUp) cannot be reached" in api.json()["detail"]
    assert "sandbox" not in api.json()["detail"]
    assert int(api.headers["retry-after"]) > 0
    assert cart_rows(clean_db) == before
    assert order_rows(clean_db) == []


async def test_a_checkout_orders_could_not_make_names_who_was_unavailable(
    clean_db, credentials, sandbox, shop
):
    """Audit s21 F6: orders answered 503 because blog's page configs (its FDW read: the
    problem names the ``provider``) or SumUp (too slow) were unavailable, and the buyer was
    told "orders cannot be reached". The buyer is told which party was unavailable; orders
    itself only when it did not answer. Nothing is made."""
    async with shop_stack(clean_db, credentials, sandbox.server, ORDERS_SUMUP_TIMEOUT="1") as stack:
        cart = await browser_of(stack, "cart", user_id=3)
        await cart.post(f"/add/{shop.product_ids[0]}/")
        with table_locked(clean_db, "blog", "blog.page_configs"):
            refused = await answer(cart.post("/checkout/"))
        assert refused.status_code == 503, refused.text
        detail = refused.json()["detail"]
        assert "blog" in detail, detail
        assert "orders" not in detail, detail
        assert "Your cart has not changed" in detail
        assert refused.json()["service"] == "blog"
        assert order_rows(clean_db) == []

        sandbox.controls(api_latency=3)  # SumUp answers after orders gave up on it
        try:
            refused = await answer(cart.post("/checkout/"))
        finally:
            sandbox.controls(api_latency=0)
        assert refused.status_code == 503, refused.text
        detail = refused.json()["detail"]
        assert "payments (SumUp) cannot be reached" in detail, detail
        assert "orders" not in detail, detail
        assert refused.json()["service"] == "sumup"
        assert order_rows(clean_db) == []

        # Orders itself down: orders is named.
        platform_of(stack.apps["cart"]).client.route("orders", ServiceDown("orders"))
        refused = await answer(cart.post("/checkout/"))
        assert refused.status_code == 503, refused.text
        assert "orders cannot be reached" in refused.json()["detail"]
        assert refused.json()["service"] == "orders"
        await cart.aclose()


async def answer(request):  # a hang guard, not a measurement
    return await asyncio.wait_for(request, timeout=60)


async def test_checkouts_waiting_on_a_slow_sumup_leave_orders_connections_for_the_rest(
    clean_db, credentials, sandbox, shop
):
    """Probe on-call: with SumUp slow, every create-order held a database connection while it
    waited, so 30 checkouts took all 10 of orders' connections: order pages took 6 s, readiness
    said not ready, webhooks and return pages waited behind them. At most
    ORDERS_CHECKOUTS_AT_ONCE are handled at once; the rest wait for a turn holding no
    connection, and one whose turn does not come within the pool's wait is told orders is busy
    (nothing made). Here: a pool of 4, 2 checkouts at once, SumUp answering in 3 s."""
    overrides = orders_overrides(
        sandbox.server.url,
        ORDERS_OUTBOX_POLL_SECONDS="0.2",
        ORDERS_SUMUP_TIMEOUT="8",
        ORDERS_CHECKOUTS_AT_ONCE="2",
    )
    overrides["orders"].update(database_pool_size=4, database_pool_timeout=1.0)
    async with in_process_stack(
        clean_db, credentials, ALL_SERVICES, settings_overrides=overrides
    ) as stack:
        buyers = [await browser_of(stack, "cart", user_id=user_id) for user_id in (41, 42, 43, 44)]
        for buyer in buyers:
            await buyer.post(f"/add/{shop.product_ids[0]}/")
        orders = await browser_of(stack, "orders", user_id=41)
        sandbox.controls(api_latency=3)
        try:
            checkouts = [asyncio.create_task(answer(buyer.post("/checkout/"))) for buyer in buyers]
            assert await eventually(lambda: sandbox.delayed_calls() >= 2)
            # While the checkouts wait on SumUp, orders still answers everything else.
            listing = await answer(orders.get("/api/orders"))
            ready = await answer(orders.get("/readyz"))
            answers = await asyncio.gather(*checkouts)
        finally:
            sandbox.controls(api_latency=0)
        assert listing.status_code == 200, listing.text
        assert ready.status_code == 200, ready.text
        made = [checkout for checkout in answers if checkout.status_code == 200]
        busy = [checkout for checkout in answers if checkout.status_code != 200]
        assert len(made) == 2, [checkout.text for checkout in answers]
        for refused in busy:
            assert refused.status_code == 503, refused.text
            detail = refused.json()["detail"]
            assert "orders is busy with other checkouts" in detail, detail
            assert "Your cart has not changed" in detail, detail
        assert len(order_rows(clean_db)) == 2
        for client in (*buyers, orders):
            await client.aclose()


async def test_a_checkout_orders_never_answers_ends_at_the_buyers_wait(clean_db, credentials, shop):
    """Probe (2026-12-06): orders accepted the connection and never answered (stuck), and the
    buyer waited ~27 s for "Checkout not confirmed": cart waited CREATE_ORDER_MAX_SECONDS
    (orders' own budget, 25 s) + 2 s for every checkout. Now cart waits
    CART_CHECKOUT_WAIT_SECONDS (10 s by default; far beyond a working orders' answer) for the
    whole call, then says the checkout was not confirmed and how long it waited. Set small
    here: the answer names it, so it is what ended the wait. Orders is a real socket that
    accepts and never answers; the request reached it once (no retry)."""
    async with hung_server() as orders:
        overrides = {
            "cart": {
                "internal_urls": {"orders": orders.url},
                "extra": {"CART_CHECKOUT_WAIT_SECONDS": "0.5"},
            }
        }
        async with in_process_stack(
            clean_db, credentials, ["cart"], settings_overrides=overrides
        ) as stack:
            # Anonymous: signing in asks orders too (adopt-orders), which does not answer.
            cart = await browser_of(stack, "cart")
            assert (await cart.post(f"/add/{shop.product_ids[0]}/")).status_code == 200
            before = cart_rows(clean_db)
            checkout = await answer(cart.post("/checkout/"))
            page = await answer(cart.post("/checkout/", headers=HTML))
            await cart.aclose()
    assert checkout.status_code == 503, checkout.text
    problem = checkout.json()
    assert problem["title"] == "Checkout not confirmed", problem
    assert "within 0.5 seconds" in problem["detail"], problem
    assert problem["waited_seconds"] == 0.5, problem
    assert "checking out again is safe" in problem["detail"].lower(), problem
    assert page.status_code == 503
    assert "Checkout not confirmed" in page.text
    assert orders.connections >= 1
    assert orders.received.count(b"POST /internal/actions/create-order ") == 2  # one each
    assert cart_rows(clean_db) == before


async def test_a_checkout_whose_orders_process_died_mid_call_does_not_say_in_time(
    clean_db, credentials, shop
):
    """Probe (load, 2026-12-06): an orders worker killed while it made an order broke the
    connection 0.2 s into the call, and the buyer read "We could not confirm your checkout in
    time": nothing had been slow. Orders here is a real socket that reads the request and
    closes the connection without an answer, as a killed process does."""
    received = bytearray()

    async def dies(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        received.extend(head)
        writer.close()

    server = await asyncio.start_server(dies, "127.0.0.1", 0)
    orders_url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    overrides = {"cart": {"internal_urls": {"orders": orders_url}}}
    async with (
        server,
        in_process_stack(clean_db, credentials, ["cart"], settings_overrides=overrides) as stack,
    ):
        cart = await browser_of(stack, "cart")
        assert (await cart.post(f"/add/{shop.product_ids[0]}/")).status_code == 200
        checkout = await answer(cart.post("/checkout/"))
        await cart.aclose()
    assert b"POST /internal/actions/create-order " in received
    assert checkout.status_code == 503, checkout.text
    problem = checkout.json()
    assert problem["title"] == "Checkout not confirmed", problem
    assert "in time" not in problem["detail"], problem
    assert "the connection to orders broke before it answered" in problem["detail"], problem
    assert "checking out again is safe" in problem["detail"].lower(), problem


async def test_a_checkout_while_cart_cannot_read_events_is_refused_naming_events(
    stack, clean_db, shop, sandbox
):
    """Audit s21 F5: while cart's read of events fails (events' table locked: its FDW read
    gives up at its timeout), the cart shows no bookings (degraded, for display), and a
    checkout made an order of the products only (the buyer sent to pay part of the cart), or
    for a cart of bookings only said "The cart is empty". Every checkout (the whole cart, a
    page's; JSON and a browser's) is a 503 naming events and saying the cart has not changed;
    nothing is created, nothing held; once events answers, the checkout orders everything."""
    cart = await browser_of(stack, "cart", user_id=3)
    events = stack.browser("events")
    share_cookies(cart, events)
    line = (await cart.post(f"/add/{shop.product_ids[0]}/")).json()  # page 1, 1.00
    assert (await events.post(f"/entries/{shop.entry_id}/book/")).status_code == 200  # 7.50
    before = (cart_rows(clean_db), entry_state(clean_db, shop.entry_id))

    def refused_naming_events(refused) -> None:
        assert refused.status_code == 503, refused.text
        assert "events" in refused.text
        assert "Your cart has not changed" in refused.text
        assert "empty" not in refused.text

    with table_locked(clean_db, "events", "events.calendar_entries"):
        for path in ("/checkout/", "/page/farm-shop/checkout/"):
            refused = await answer(cart.post(path))
            refused_naming_events(refused)
            assert refused.headers["content-type"].startswith("application/problem+json")
            assert int(refused.headers["retry-after"]) > 0
        refused_naming_events(await answer(cart.post("/checkout/", headers=HTML)))
    assert order_rows(clean_db) == []
    assert sandbox.checkouts() == []
    assert (cart_rows(clean_db), entry_state(clean_db, shop.entry_id)) == before

    # A cart of bookings only is not "empty" while events cannot be read.
    assert (await cart.post(f"/item/{line['id']}/delete/")).status_code == 200
    with table_locked(clean_db, "events", "events.calendar_entries"):
        refused_naming_events(await answer(cart.post("/checkout/")))
    assert order_rows(clean_db) == []

    await cart.post(f"/add/{shop.product_ids[0]}/")
    created = await cart.post("/checkout/")
    assert created.status_code == 200, created.text
    [(_, status, _, total, _)] = order_rows(clean_db)
    assert (status, str(total)) == ("pending", "8.50")  # the product and the booking
    for browser in (cart, events):
        await browser.aclose()


async def test_a_cart_in_two_currencies_adds_neither_and_names_the_lines(stack, clean_db, shop):
    """A page's tour priced in USD beside its EUR products: no total adds the two, and a
    checkout says which lines are in which currency (one order is paid in one), on the page
    too, where "one page at a time" cannot help."""
    with admin_connect(clean_db, "events") as connection:
        connection.execute(
            "UPDATE events.calendar_entries SET currency = 'USD' WHERE id = %s", (shop.entry_id,)
        )
    cart = await browser_of(stack, "cart", user_id=6)
    events = stack.browser("events")
    share_cookies(cart, events)
    await cart.post(f"/add/{shop.product_ids[0]}/")  # page 1, 1.00 EUR
    assert (await events.post(f"/entries/{shop.entry_id}/book/")).status_code == 200  # 7.50 USD
    view = (await cart.get("/api/cart")).json()
    assert (view["total"], view["currency"]) == (None, None)
    assert view["totals"] == {"EUR": "1.00", "USD": "7.50"}
    assert view["pages"][0]["total"] is None
    assert view["pages"][0]["totals"] == {"EUR": "1.00", "USD": "7.50"}
    summary = (await internal_get(stack.client("cart"), "cart-summary", {"user_id": 6})).json()
    assert (summary["total"], summary["currency"], summary["pages"][0]["total"]) == (
        None,
        None,
        None,
    )
    page = await cart.get("/", headers=HTML)
    assert "1.00 EUR + 7.50 USD" in page.text
    assert "8.50" not in page.text
    for path in ("/checkout/", "/page/farm-shop/checkout/"):
        refused = await cart.post(path)
        assert refused.status_code == 409
        detail = refused.json()["detail"]
        assert "EUR: Item 000" in detail, detail
        assert "USD: Morning tour" in detail, detail
        assert "one page at a time" not in detail
    assert order_rows(clean_db) == []


async def test_a_checkout_orders_refuses_says_why_and_not_to_try_again(stack, clean_db, shop):
    """More than an order can hold (an editor's price times a quantity): orders' reason, in
    words, and no advice to try again that cannot work; the cart stays."""
    with admin_connect(clean_db, "market") as connection:
        connection.execute(
            "UPDATE market.products SET regular_price = 99999999.99, special_price = NULL"
        )
    cart = await browser_of(stack, "cart", user_id=3)
    for product in shop.product_ids[:2]:
        await cart.post(f"/add/{product}/")
    with admin_connect(clean_db, "cart") as connection:
        connection.execute("UPDATE cart.cart_items SET quantity = 99")  # 2 x 9,899,999,999.01
    before = cart_rows(clean_db)
    for accept in (HTML, JSON):
        answer = await cart.post("/checkout/", headers=accept)
        assert answer.status_code == 422, answer.text
        assert "is more than one order can hold" in answer.text
        assert "numeric" not in answer.text
        assert "try again" not in answer.text
        assert "Your cart has not changed" in answer.text
    assert cart_rows(clean_db) == before
    assert order_rows(clean_db) == []


async def test_double_submitted_checkout_creates_one_order(stack, clean_db, shop, sandbox):
    cart = await browser_of(stack, "cart", user_id=3)
    await cart.post(f"/add/{shop.product_ids[0]}/")
    first = (await cart.post("/checkout/")).json()
    second = (await cart.post("/checkout/")).json()
    assert first == second
    assert len(order_rows(clean_db)) == 1
    await cart.post(f"/add/{shop.product_ids[0]}/")  # the cart changed: a new order
    third = (await cart.post("/checkout/")).json()
    assert third["order_id"] != first["order_id"]


async def test_one_account_checking_out_its_cart_in_two_browsers_makes_one_order(
    stack, clean_db, shop, sandbox
):
    """Signed in on a laptop and a phone (two browser sessions), the account's one cart checked
    out on both, one after the other and at once: one order, payable once (a load probe paid
    two orders for one cart, the second refunded whole)."""
    laptop = await browser_of(stack, "cart", user_id=3)
    phone = await browser_of(stack, "cart", user_id=3)
    assert session_cookie(laptop) != session_cookie(phone)
    await laptop.post(f"/add/{shop.product_ids[0]}/")
    first = await laptop.post("/checkout/")
    second = await phone.post("/checkout/")
    assert (first.status_code, second.status_code) == (200, 200), second.text
    assert first.json() == second.json()
    await phone.post(f"/add/{shop.product_ids[1]}/")  # the cart changed: one new order
    answers = await asyncio.gather(laptop.post("/checkout/"), phone.post("/checkout/"))
    assert [answer.status_code for answer in answers] == [200, 200], answers[1].text
    assert answers[0].json() == answers[1].json()
    assert answers[0].json()["order_id"] != first.json()["order_id"]
    assert len(order_rows(clean_db)) == 2


def limited_stack(clean_db, credentials, sandbox):
    """Cart admits 3 new anonymous carts a minute per address; orders' own limit is out of the
    way (each session is a new buyer to it anyway)."""
    return shop_stack(
        clean_db,
        credentials,
        sandbox.server,
        extra_overrides={"cart": {"extra": {"CART_ANONYMOUS_CHECKOUTS_PER_ADDRESS": "3"}}},
        ORDERS_CHECKOUTS_PER_MINUTE="100",
    )


async def _anonymous_checkout(running, shop, address: str) -> Any:
    """A new browser session at ``address`` (as a client minting sessions makes) checks out."""
    cart = await browser_of(running, "cart", address=address)
    await cart.post(f"/add/{shop.product_ids[0]}/")
    return cart, await cart.post("/checkout/")


async def test_a_client_minting_sessions_is_bounded_per_address(
    clean_db, credentials, sandbox, shop
):
    """The per-buyer limit counts per session; a client that starts a new session for every
    checkout is bounded by its address (an IPv6 client by its /64): new anonymous carts only,
    a replay of the same cart and a signed-in buyer are not counted."""
    async with limited_stack(clean_db, credentials, sandbox) as running:
        first_cart, first = await _anonymous_checkout(running, shop, "203.0.113.7")
        for _ in range(2):
            assert (await _anonymous_checkout(running, shop, "203.0.113.7"))[1].status_code == 200
        before = cart_rows(clean_db)
        _, refused = await _anonymous_checkout(running, shop, "203.0.113.7")
        assert refused.status_code == 429, refused.text
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert "sign in" in refused.json()["detail"]
        assert len(order_rows(clean_db)) == 3
        # The refused session's line is all that changed: nothing of the other carts.
        assert cart_rows(clean_db)[: len(before)] == before

        # The same cart again is the same order (not a new one): not counted, not refused.
        again = await first_cart.post("/checkout/")
        assert again.status_code == 200
        assert again.json()["order_id"] == first.json()["order_id"]
        # Another address, and a signed-in buyer at this one (bounded per user by orders).
        assert (await _anonymous_checkout(running, shop, "203.0.113.8"))[1].status_code == 200
        user = await browser_of(running, "cart", user_id=7, address="203.0.113.7")
        await user.post(f"/add/{shop.product_ids[1]}/")
        assert (await user.post("/checkout/")).status_code == 200

        # One IPv6 client holds a /64: its addresses count together.
        for host in ("2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff::3"):
            assert (await _anonymous_checkout(running, shop, host))[1].status_code == 200
        _, same_network = await _anonymous_checkout(running, shop, "2001:db8:1:2::4")
        assert same_network.status_code == 429
        _, next_network = await _anonymous_checkout(running, shop, "2001:db8:1:3::1")
        assert next_network.status_code == 200

        # A browser gets the same refusal as a page.
        browser = await browser_of(running, "cart", address="203.0.113.7")
        await browser.post(f"/add/{shop.product_ids[0]}/")
        page = await browser.post("/checkout/", headers=HTML)
        assert page.status_code == 429
        assert "text/html" in page.headers["content-type"]
        assert "Too many checkouts" in page.text

        # A minute on, the network's starts have ended, and the next checkout deletes them.
        with admin_connect(clean_db, "cart") as connection:
            connection.execute(
                "UPDATE cart.checkout_starts SET started_at = started_at - interval '61 seconds'"
                " WHERE network = '203.0.113.7'"
            )
        assert (await _anonymous_checkout(running, shop, "203.0.113.7"))[1].status_code == 200
        with admin_connect(clean_db, "cart") as connection:
            networks = connection.execute(
                "SELECT network::text, count(*) FROM cart.checkout_starts GROUP BY 1 ORDER BY 1"
            ).fetchall()
        assert networks == [
            ("2001:db8:1:2::/64", 3),
            ("2001:db8:1:3::/64", 1),
            ("203.0.113.7/32", 1),
            ("203.0.113.8/32", 1),
        ]


async def test_concurrent_new_sessions_at_one_address_get_the_limit_exactly(
    clean_db, credentials, sandbox, shop
):
    async with limited_stack(clean_db, credentials, sandbox) as running:
        carts = [await browser_of(running, "cart", address="198.51.100.9") for _ in range(8)]
        for cart in carts:
            await cart.post(f"/add/{shop.product_ids[0]}/")
        answers = await asyncio.gather(*(cart.post("/checkout/") for cart in carts))
        assert sorted(answer.status_code for answer in answers) == [200] * 3 + [429] * 5
        assert len(order_rows(clean_db)) == 3


async def test_cart_down_when_paid_is_cleared_once_it_is_back(clean_db, credentials, sandbox, shop):
    without_cart = ["orders", "market", "blog", "events"]
    async with shop_stack(clean_db, credentials, sandbox.server) as running:
        cart = await browser_of(running, "cart", user_id=6)
        await cart.post(f"/add/{shop.product_ids[0]}/")
        order_id = (await cart.post("/checkout/")).json()["order_id"]
    sandbox.pay(checkout_id_of(clean_db, order_id))

    async with shop_stack(clean_db, credentials, sandbox.server, services=without_cart) as down:
        assert (
            await webhook(down, order_id, checkout_id_of(clean_db, order_id))
        ).status_code == 204

        def attempted() -> bool:
            with admin_connect(clean_db, "orders") as connection:
                return bool(
                    connection.execute(
                        "SELECT attempts > 0 AND delivered_at IS NULL FROM orders.outbox "
                        "WHERE action = 'clear-cart-for-order'"
                    ).fetchone()[0]
                )

        assert await eventually(attempted)
    assert [row[6] for row in cart_rows(clean_db)] == [True]  # still in the cart

    async with shop_stack(clean_db, credentials, sandbox.server):
        assert await eventually(lambda: cart_rows(clean_db)[0][6] is False, timeout=30)
    assert cart_rows(clean_db)[0][5] == order_id
    delivered = [row for row in outbox_rows(clean_db) if row[1] == "clear-cart-for-order"]
    assert len(delivered) == 1


async def test_clear_cart_for_order_is_idempotent_and_keeps_later_lines(stack, clean_db, shop):
    cart_client = stack.client("cart")
    owner = {"user_id": 8}
    for product_id in shop.product_ids[:2]:
        browser = await browser_of(stack, "cart", user_id=8)
        await browser.post(f"/add/{product_id}/")
    payload = {
        "order_id": 77,
        **owner,
        "session_id": None,
        "page_post_id": None,
        "product_ids": [shop.product_ids[0]],
    }
    first = await internal_post(cart_client, "clear-cart-for-order", payload)
    again = await internal_post(cart_client, "clear-cart-for-order", payload)
    assert first.json() == again.json() == {"cleared": 1}
    assert [(row[2], row[6]) for row in cart_rows(clean_db)] == [
        (shop.product_ids[0], False),
        (shop.product_ids[1], True),
    ]
    bad = await internal_post(cart_client, "clear-cart-for-order", {"order_id": -1})
    assert bad.status_code == 422
    assert "order_id" in bad.json()["detail"]


async def test_a_repeated_clear_removes_nothing_added_after_the_first(stack, clean_db, shop):
    """The relay repeats a delivery whose answer it lost. An order's lines that name no cart
    lines were cleared product by product, each product checked on its own: a product the
    buyer had no line of at the first delivery, added since, was removed by the repeat."""
    cart_client = stack.client("cart")
    bought_before, bought_later = shop.product_ids[:2]
    browser = await browser_of(stack, "cart", user_id=12)
    await browser.post(f"/add/{bought_before}/")
    payload = {
        "order_id": 78,
        "user_id": 12,
        "lines": [
            {"product_id": bought_before, "quantity": 1},
            {"product_id": bought_later, "quantity": 1},
        ],
    }
    first = await internal_post(cart_client, "clear-cart-for-order", payload)
    assert first.json() == {"cleared": 1}
    await browser.post(f"/add/{bought_later}/")  # after the order was cleared
    again = await internal_post(cart_client, "clear-cart-for-order", payload)
    assert again.json() == {"cleared": 1}
    assert live_lines(clean_db) == [(12, bought_later, 1)]


async def test_a_repeated_clear_that_first_cleared_nothing_removes_nothing(stack, clean_db, shop):
    """A first delivery that found nothing to clear (the buyer had removed the line) left no
    line recording the order: a repeat then cleared a line of the product added since."""
    cart_client = stack.client("cart")
    product = shop.product_ids[0]
    payload = {"order_id": 79, "user_id": 13, "product_ids": [product]}
    first = await internal_post(cart_client, "clear-cart-for-order", payload)
    assert first.json() == {"cleared": 0}
    browser = await browser_of(stack, "cart", user_id=13)
    await browser.post(f"/add/{product}/")  # after the order was cleared
    again = await internal_post(cart_client, "clear-cart-for-order", payload)
    assert again.json() == {"cleared": 0}
    assert live_lines(clean_db) == [(13, product, 1)]


async def test_concurrent_deliveries_of_one_order_clear_it_once(stack, clean_db, shop):
    """Four deliveries of one order at once (two relays, or a retry racing the first), held
    together by a lock on the cart's lines until all four are in: each waits on the order's
    record, then answers what the first cleared."""
    cart_client = stack.client("cart")
    first_product, second_product = shop.product_ids[:2]
    browser = await browser_of(stack, "cart", user_id=16)
    await browser.post(f"/add/{first_product}/")
    await browser.post(f"/add/{second_product}/")
    payload = {"order_id": 80, "user_id": 16, "product_ids": [first_product, second_product]}

    def waiting() -> bool:
        return lock_waiters(clean_db, "cart") >= 4

    with admin_connect(clean_db, "cart") as holder:
        with holder.transaction():
            holder.execute("SELECT id FROM cart.cart_items FOR UPDATE")
            deliveries = asyncio.gather(
                *(internal_post(cart_client, "clear-cart-for-order", payload) for _ in range(4))
            )
            assert await eventually(waiting)
        answers = await deliveries
    assert [answer.json() for answer in answers] == [{"cleared": 2}] * 4
    assert live_lines(clean_db) == []
    assert [row[5] for row in cart_rows(clean_db)] == [80, 80]


async def test_data_endpoints_and_fragment(stack, shop):
    browser = await browser_of(stack, "cart", user_id=2)
    await browser.post(f"/add/{shop.product_ids[0]}/", json={"quantity": 3})
    await browser.post(f"/add/{shop.product_ids[1]}/")
    client = stack.client("cart")
    summary = (await internal_get(client, "cart-summary", {"user_id": 2})).json()
    assert summary["count"] == 4
    assert summary["total"] == "5.50"
    assert [page["page_slug"] for page in summary["pages"]] == ["farm-shop", "market-hall"]
    items = (await internal_get(client, "cart-items", {"user_id": 2, "page_post_id": 1})).json()
    assert [line["quantity"] for line in items["lines"]] == [3]
    mini = await internal_get(client, "cart-mini", {"user_id": 2}, kind="fragments")
    assert "Cart (4)" in mini.text
    missing = await internal_get(client, "cart-summary", {})
    assert missing.status_code == 422
    assert "user_id" in missing.json()["detail"]
    adopted = await internal_post(client, "adopt-cart-for-user", {"user_id": 2})
    assert adopted.status_code == 422
    assert "session_id" in adopted.json()["detail"]


async def test_cart_is_exactly_what_the_plan_leaves_it(stack, clean_db):
    """The plan's post-split cart state: table, Alembic environment, routes, data, actions."""
    # cart_items, the platform's table of accepted signed requests (replay protection), the
    # ids of the activities the inbox applied (the plan's inbox handlers, idempotent by id),
    # the paid orders clear-cart-for-order cleared (the plan's "idempotent per order"), the
    # last minute's anonymous checkouts per client network (what bounds minted sessions), and
    # the last day's sessions sign-in adopted (whose late adds are refused).
    assert set(cart_metadata.tables) == {
        "cart.adopted_sessions",
        "cart.cart_items",
        "cart.checkout_starts",
        "cart.cleared_orders",
        "cart.inbox_activities",
        "cart.request_nonces",
    }
    with admin_connect(clean_db, "cart") as connection:
        tables = connection.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'cart' ORDER BY 1"
        ).fetchall()
    assert tables == [
        ("adopted_sessions",),
        ("alembic_version",),
        ("cart_items",),
        ("checkout_starts",),
        ("cleared_orders",),
        ("inbox_activities",),
        ("request_nonces",),
    ]
    schema = (await stack.client("cart").get("/schema/openapi.json")).json()
    paths = set(schema["paths"])
    internal = {path for path in paths if path.startswith("/internal/")}
    assert internal == {
        "/internal/data/cart-summary",
        "/internal/data/cart-items",
        "/internal/actions/adopt-cart-for-user",
        "/internal/actions/clear-cart-for-order",
        "/internal/fragments/cart-mini",
        "/internal/actions/inbox",
    }
    public = {path for path in paths if not path.startswith(("/internal/", "/auth/"))}
    assert public == {
        "/",
        "/api/cart",
        "/page/{page_slug}",
        "/api/page/{page_slug}",
        "/add/{product_id}",
        "/item/{item_id}/quantity",
        "/item/{item_id}/delete",
        "/checkout",
        "/page/{page_slug}/checkout",
        "/booking/{kind}/{booking_id}/delete",
        "/healthz",
        "/readyz",
    }


async def pay(stack, sandbox, server, order_id: int) -> None:
    checkout_id = checkout_id_of(server, order_id)
    sandbox.pay(checkout_id)
    assert (await webhook(stack, order_id, checkout_id)).status_code == 204


def live_lines(server) -> list[tuple[int | None, int, int]]:
    """(user id, product id, quantity) of every line still in a cart."""
    return [(row[0], row[2], row[3]) for row in cart_rows(server) if row[6]]


async def test_a_paid_order_clears_what_it_bought_and_keeps_what_came_after(
    stack, clean_db, shop, sandbox
):
    cart = await browser_of(stack, "cart", user_id=3)
    product = shop.product_ids[0]
    line_id = (await cart.post(f"/add/{product}/", json={"quantity": 2})).json()["id"]
    order_id = (await cart.post("/checkout/")).json()["order_id"]
    await cart.post(f"/item/{line_id}/quantity/", json={"quantity": 5})  # after checkout
    await pay(stack, sandbox, clean_db, order_id)
    assert await eventually(lambda: live_lines(clean_db) == [(3, product, 3)])
    # The paid line records its order; the 3 added later are a line of their own.
    assert [(row[3], row[5], row[6]) for row in cart_rows(clean_db)] == [
        (5, order_id, False),
        (3, None, True),
    ]


async def test_an_order_made_before_sign_in_clears_the_merged_line(stack, clean_db, shop, sandbox):
    product = shop.product_ids[0]
    other_device = await browser_of(stack, "cart", user_id=9)
    await other_device.post(f"/add/{product}/", json={"quantity": 2})
    cart = await browser_of(stack, "cart")
    market, orders = stack.browser("market"), stack.browser("orders")
    share_cookies(cart, market, orders)
    await cart.post(f"/add/{product}/")
    order_id = (await cart.post("/checkout/")).json()["order_id"]
    assert (await market.get("/auth/dev-login?user_id=9")).status_code == 200
    assert live_lines(clean_db) == [(9, product, 3)]  # merged into the user's line

    await pay(stack, sandbox, clean_db, order_id)
    # The one bought before sign-in comes off the merged line; the user's own 2 stay.
    assert await eventually(lambda: live_lines(clean_db) == [(9, product, 2)])
    share_cookies(market, orders)
    listing = (await orders.get("/api/orders", headers={"accept": "application/json"})).json()
    assert [item["id"] for item in listing["items"]] == [order_id]


async def test_tickets_of_one_entry_and_type_are_one_line_with_a_quantity(
    stack, clean_db, shop, sandbox
):
    """Issue 15: 2 tickets were two cart lines of quantity 1."""
    cart = await browser_of(stack, "cart", user_id=14)
    events = stack.browser("events")
    share_cookies(cart, events)
    for ticket_type, quantity in (("adult", "2"), ("child", "1")):
        added = await events.post(
            f"/entries/{shop.entry_id}/tickets/",
            data={"ticket_type": ticket_type, "quantity": quantity},
        )
        assert added.status_code == 201, added.text
    view = (await cart.get("/api/cart")).json()
    bookings = view["pages"][0]["bookings"]
    assert [(b["title"], b["quantity"], len(b["ids"])) for b in bookings] == [
        ("Morning tour \u2013 adult", 2, 2),
        ("Morning tour \u2013 child", 1, 1),
    ]
    assert (view["count"], view["total"]) == (3, "22.50")  # 3 x 7.50

    # Checkout sends orders each ticket (it confirms and refunds them one by one).
    checkout = await cart.post("/checkout/")
    assert checkout.status_code == 200
    [(_, _, _, total, _)] = order_rows(clean_db)
    assert str(total) == "22.50"
    # The order's page shows them as the cart did: one line per entry and type, not per ticket.
    orders = stack.browser("orders")
    share_cookies(cart, orders)
    page = await orders.get(f"/order/{checkout.json()['order_id']}/", headers=HTML)
    assert page.status_code == 200, page.text
    assert ORDER_LINE.findall(page.text) == [
        ("ticket", "Morning tour \u2013 adult", "7.50", "2", "15.00"),
        ("ticket", "Morning tour \u2013 child", "7.50", "1", "7.50"),
    ]

    # Removing the line releases every ticket of it.
    adult = bookings[0]
    removed = await cart.post(f"/booking/ticket/{adult['id']}/delete/")
    assert removed.status_code == 200, removed.text
    left = (await cart.get("/api/cart")).json()["pages"][0]["bookings"]
    assert [(b["title"], b["quantity"]) for b in left] == [("Morning tour \u2013 child", 1)]


async def test_a_ticket_whose_title_is_longer_than_an_orders_line_is_still_checked_out(
    stack, clean_db, shop
):
    """Probe: a ticket's title is its entry's name (up to 255 characters), an en dash and the
    ticket type the buyer typed (up to 64): events and the cart took it, but every checkout
    was a 422 naming orders' contract ("tickets[0].title: must be at most 255 characters"),
    which the buyer could do nothing about. The order's line keeps as much as fits."""
    name = ("A long evening of cider, perry, cheese and stories " * 5)[:255]
    with admin_connect(clean_db, "events") as connection:
        entry_id = connection.execute(
            "INSERT INTO events.calendar_entries (calendar_id, name, starts_at, cost) "
            "SELECT id, %s, now() + interval '5 days', 4.00 FROM events.calendars "
            "WHERE slug = 'farm-tours' RETURNING id",
            (name,),
        ).fetchone()[0]
    cart = await browser_of(stack, "cart", user_id=15)
    events = stack.browser("events")
    share_cookies(cart, events)
    added = await events.post(
        f"/entries/{entry_id}/tickets/", data={"ticket_type": "adult " * 10 + "pass"}
    )
    assert added.status_code == 201, added.text

    checkout = await cart.post("/checkout/")
    assert checkout.status_code == 200, checkout.text
    [(order_id, status, _, total, _)] = order_rows(clean_db)
    assert (status, str(total)) == ("pending", "4.00")
    with admin_connect(clean_db, "orders") as connection:
        [(title,)] = connection.execute(
            "SELECT title FROM orders.order_items WHERE order_id = %s", (order_id,)
        ).fetchall()
    assert len(title) == 255
    assert title.startswith(name[:200])
    assert title.endswith("\u2026")


# One product of a paid order: in the cart before checkout (quantity, or 0: not), whether the
# order names its line, and a quantity the buyer adds after the first clear (0: none).
PAID_PRODUCT = st.tuples(
    st.integers(min_value=0, max_value=3), st.booleans(), st.integers(min_value=0, max_value=2)
)


@pytest.mark.slow
def test_a_repeated_clear_never_changes_the_cart(clean_db, credentials, sandbox, shop) -> None:
    """Property: whatever an order named and whatever the buyer did after the first clear, a
    repeated delivery of clear-cart-for-order answers what the first did and leaves every line
    as it found it."""
    loop = asyncio.new_event_loop()
    context = shop_stack(clean_db, credentials, sandbox.server, services=["cart", "market"])
    stack = loop.run_until_complete(context.__aenter__())
    orders = itertools.count(1)

    @settings(max_examples=25, deadline=None, database=None, derandomize=True)
    @given(paid=st.lists(PAID_PRODUCT, min_size=1, max_size=3))
    def clear_twice(paid: list[tuple[int, bool, int]]) -> None:
        n = next(orders)
        buyer, order_id = 20_000 + n, 90_000 + n

        async def scenario() -> tuple[dict[str, Any], dict[str, Any], list, list]:
            browser = await browser_of(stack, "cart", user_id=buyer)
            lines = []
            for product, (before, named, _) in zip(shop.product_ids, paid, strict=False):
                line: dict[str, Any] = {"product_id": product, "quantity": max(before, 1)}
                if before:
                    added = await browser.post(f"/add/{product}/", json={"quantity": before})
                    if named:
                        line["cart_line_ids"] = [added.json()["id"]]
                lines.append(line)
            payload = {"order_id": order_id, "user_id": buyer, "lines": lines}
            client = stack.client("cart")
            first = (await internal_post(client, "clear-cart-for-order", payload)).json()
            for product, (_, _, later) in zip(shop.product_ids, paid, strict=False):
                if later:
                    await browser.post(f"/add/{product}/", json={"quantity": later})
            before_repeat = cart_rows(clean_db)
            again = (await internal_post(client, "clear-cart-for-order", payload)).json()
            return first, again, before_repeat, cart_rows(clean_db)

        first, again, before_repeat, after_repeat = loop.run_until_complete(scenario())
        assert again == first
        assert after_repeat == before_repeat

    try:
        clear_twice()
    finally:
        loop.run_until_complete(context.__aexit__(None, None, None))
        loop.close()


async def test_a_draft_pages_title_is_not_shown_in_the_cart(stack, clean_db, shop):
    """Probe fix_ux: blog exports every page with a config, drafts included (an editor prepares
    a page and its market before publishing), and cart named a draft page by its title in the
    cart's groups and at its page cart: a title nobody may read yet. A draft page is named by
    its number (its page cart by its address, which the buyer followed)."""
    with admin_connect(clean_db, "blog") as blog:
        blog.execute(
            "UPDATE blog.posts SET title = 'Secret harvest fair', status = 'draft', "
            "published_at = NULL WHERE id = 2"
        )
    cart = await browser_of(stack, "cart", user_id=5)
    first, second = shop.product_ids[:2]
    await cart.post(f"/add/{first}/")
    await cart.post(f"/add/{second}/")
    view = await cart.get("/api/cart")
    assert [(page["page_id"], page["page_title"]) for page in view.json()["pages"]] == [
        (1, "Farm Shop"),
        (2, "Page 2"),
    ]
    for path in ("/", "/page/market-hall/", "/api/page/market-hall"):
        answer = await cart.get(path, headers=HTML)
        assert answer.status_code == 200, (path, answer.text)
        assert "Secret harvest fair" not in answer.text, path
    summary = await internal_get(stack.client("cart"), "cart-summary", {"user_id": 5})
    assert "Secret harvest fair" not in summary.text


async def test_two_legacy_orders_cleared_at_once_take_a_merged_quantity_once(stack, clean_db, shop):
    """Review 7 L3: two legacy orders paid late, of the same product and owner, both placed
    after an anonymous line that sign-in merged into the account's newer line: cleared at
    once, each read the merged quantity before locking that line, and both took it off, so
    the unit the account added after the orders left too. Shown with the account's line held
    locked while both clears reach it."""
    product = shop.product_ids[0]
    with admin_connect(clean_db, "cart") as connection:
        into = connection.execute(
            "INSERT INTO cart.cart_items (user_id, product_id, quantity, "
            "market_place_container_id) VALUES (41, %s, 2, 1) RETURNING id",
            (product,),
        ).fetchone()[0]
        connection.execute(
            "INSERT INTO cart.cart_items (session_id, product_id, quantity, created_at, "
            "deleted_at, merged_into_id, market_place_container_id) "
            "VALUES ('anon-41', %s, 1, now() - interval '3 days', now(), %s, 1)",
            (product, into),
        )
    placed = {101: "2 days", 102: "1 day"}
    cart_client = stack.client("cart")
    with admin_connect(clean_db, "cart") as holder:
        holder.autocommit = False
        holder.execute("SELECT 1 FROM cart.cart_items WHERE id = %s FOR UPDATE", (into,))
        clears = []
        for order_id, age in placed.items():
            with admin_connect(clean_db, "cart") as clock:
                placed_at = clock.execute("SELECT now() - %s::interval", (age,)).fetchone()[0]
            payload = {
                "order_id": order_id,
                "user_id": 41,
                "lines": [{"product_id": product, "quantity": 1}],
                "placed_at": placed_at.isoformat(),
            }
            clears.append(
                asyncio.ensure_future(internal_post(cart_client, "clear-cart-for-order", payload))
            )
        try:
            assert await eventually(lambda: lock_waiters(clean_db, "cart") == 2)
        finally:
            holder.rollback()
        answers = await asyncio.gather(*clears)
    assert [answer.status_code for answer in answers] == [200, 200], [a.text for a in answers]
    # One order took the merged unit; the unit added after both orders is still in the cart.
    assert live_lines(clean_db) == [(41, product, 1)]

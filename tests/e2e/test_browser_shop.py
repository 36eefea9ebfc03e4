"""The shop a person sees (issue 15), in Debian's chromium against real processes: the cart count
and the orders link in every page's navigation, market places owned by market and attached by
blog, messages beside the field, tickets as one line with a quantity."""

from __future__ import annotations

import signal

import pytest

from tests.conftest import admin_connect, truncate_all
from tests.e2e.conftest import axe_source, axe_violations, live_stack
from tests.integration.commerce_fixtures import ALL_SERVICES, open_shop

PUBLIC = ["blog", "market", "cart", "events", "orders"]


@pytest.fixture(scope="module")
def shop_live(provisioned, credentials):
    truncate_all(provisioned)
    with live_stack(provisioned, credentials, ALL_SERVICES) as stack:
        yield stack
    truncate_all(provisioned)


@pytest.fixture(scope="module")
def shop(shop_live, provisioned):
    return open_shop(provisioned)


def nav_text(page) -> str:
    return page.locator("header").inner_text()


def test_every_public_page_shows_the_cart_count_and_the_orders_link(shop_live, shop, page):
    market = shop_live.url("market")
    page.goto(f"{market}/auth/dev-login?user_id=61&next=/product/shop-002/")
    assert "Cart (0)" in nav_text(page)
    page.locator("#add-to-cart").click()
    page.wait_for_url(shop_live.url("cart", "/"))
    for service in PUBLIC:
        page.goto(shop_live.url(service, "/"))
        header = page.locator("header")
        assert header.locator("a.cart-mini").inner_text() == "Cart (1)", service
        assert header.locator("a.account-nav-item").inner_text() == "Orders (0)", service
        assert header.locator("a.cart-mini").get_attribute("href") == shop_live.url("cart", "/")
        # A page that does not exist is a page of the site too: the same navigation.
        missing = page.goto(shop_live.url(service, "/no-such-page/"))
        assert missing is not None
        assert missing.status == 404
        assert header.locator("a.cart-mini").inner_text() == "Cart (1)", service
        assert header.locator("a.account-nav-item").inner_text() == "Orders (0)", service


def test_a_wrong_quantity_is_one_message_beside_the_field(shop_live, shop, page):
    cart = shop_live.url("cart")
    page.goto(f"{shop_live.url('market')}/auth/dev-login?user_id=62&next=/product/shop-001/")
    page.locator("#add-to-cart").click()
    page.wait_for_url(f"{cart}/")
    line = page.locator(".line").first
    line.locator('input[name="quantity"]').fill("0")
    line.get_by_role("button", name="Update").click()
    line = page.locator(".line").first
    field = line.locator('input[name="quantity"]')
    message = line.locator(".field-error")
    assert message.count() == 1
    assert message.inner_text() == "Choose a quantity from 1 to 99 (Remove takes the line out)."
    assert field.get_attribute("aria-describedby") == message.get_attribute("id")
    assert page.get_by_text("Choose a quantity").count() == 1
    page.goto(f"{cart}/")
    assert page.locator(".line").first.get_attribute("data-quantity") == "1"  # 0 removed nothing


def test_a_wrong_quantity_typed_by_keyboard_is_announced_and_keeps_the_focus(shop_live, shop, page):
    """The cart's message beside a wrong quantity was neither an alert (the admin forms' are)
    nor where the focus was: after Enter, a screen reader started again at the top of a page
    that looked like the one before and said nothing of what was wrong. Now the page comes
    back with the focus in that field, which names its message, an alert."""
    cart = shop_live.url("cart")
    page.goto(f"{shop_live.url('market')}/auth/dev-login?user_id=67&next=/product/shop-003/")
    page.locator("#add-to-cart").click()
    page.wait_for_url(f"{cart}/")
    field = page.locator(".line input[name='quantity']").first
    for _ in range(40):
        page.keyboard.press("Tab")
        if field.evaluate("f => f === document.activeElement"):
            break
    page.keyboard.press("Control+A")
    page.keyboard.type("0")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    focused = page.evaluate(
        """() => {
        const e = document.activeElement;
        const message = document.getElementById(e.getAttribute('aria-describedby'));
        return [e.name, e.getAttribute('aria-invalid'), message && message.getAttribute('role'),
                message && message.innerText];
    }"""
    )
    assert focused == [
        "quantity",
        "true",
        "alert",
        "Choose a quantity from 1 to 99 (Remove takes the line out).",
    ]


def test_a_wrong_merchant_code_is_one_message_in_words_beside_the_field(shop_live, shop, page):
    blog = shop_live.url("blog")
    page.goto(f"{blog}/auth/dev-login?user_id=1&next=/farm-shop/admin/page-config/")
    page.locator('input[name="sumup_merchant_code"]').fill("not valid")
    page.get_by_role("button", name="Save").click()
    message = page.locator("#error-sumup_merchant_code")
    assert message.count() == 1
    assert "sumup_merchant_code" not in message.inner_text()
    assert message.inner_text().startswith("Merchant code must be 6 to 12 capital letters")
    assert page.locator(".field-error").count() == 1
    assert page.get_by_text("Merchant code must be").count() == 1


# Text nodes of the entries' table broken over more than one line (none, at 1280 px).
WRAPPED = """table => {
  const walker = document.createTreeWalker(table, NodeFilter.SHOW_TEXT);
  const wrapped = [];
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    if (!node.textContent.trim()) continue;
    const range = document.createRange();
    range.selectNodeContents(node);
    const tops = new Set([...range.getClientRects()].map(r => Math.round(r.top)));
    if (tops.size > 1) wrapped.push(node.textContent.trim());
  }
  for (const cell of table.querySelectorAll('td.actions')) {
    const tops = new Set([...cell.querySelectorAll('button, input:not([type=hidden])')]
      .map(e => Math.round(e.getBoundingClientRect().top)));
    if (tops.size > 1) wrapped.push('actions of ' + cell.parentElement.dataset.id);
  }
  return wrapped;
}"""


def test_tickets_are_one_line_with_a_quantity_and_the_page_says_what_was_added(
    shop_live, shop, page
):
    events = shop_live.url("events")
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(f"{events}/auth/dev-login?user_id=63&next=/")
    assert page.locator("table").first.evaluate(WRAPPED) == []
    row = page.locator(f'tr.entry[data-id="{shop.entry_id}"]')
    row.locator('input[name="quantity"]').fill("2")
    row.get_by_role("button", name="Add tickets").click()
    page.wait_for_url(f"{events}/?added={shop.entry_id}#entry-{shop.entry_id}")
    added = page.locator("#added")
    assert "2 \u00d7 adult" in added.inner_text()
    assert "Morning tour" in added.inner_text()
    assert "in your cart: 2 \u00d7 adult" in page.locator(f"#entry-{shop.entry_id}").inner_text()
    assert page.locator("table").first.evaluate(WRAPPED) == []

    page.goto(shop_live.url("cart", "/"))
    lines = page.locator('tr.booking[data-kind="ticket"]')
    assert lines.count() == 1
    assert lines.first.get_attribute("data-quantity") == "2"
    assert lines.first.locator(".booking-quantity").inner_text() == "2"
    assert page.locator("a.cart-mini").inner_text() == "Cart (2)"


def test_the_cart_page_says_which_bookings_left_it_when_their_hold_ended(
    shop_live, shop, provisioned, page
):
    events = shop_live.url("events")
    page.goto(f"{events}/auth/dev-login?user_id=64&next=/")
    row = page.locator(f'tr.entry[data-id="{shop.entry_id}"]')
    row.get_by_role("button", name="Add tickets").click()
    page.wait_for_url(f"{events}/?added={shop.entry_id}#entry-{shop.entry_id}")
    with admin_connect(provisioned, "events") as connection:
        connection.execute(
            "UPDATE events.tickets SET hold_expires_at = now() - interval '1 second' "
            "WHERE user_id = 64"
        )
    page.goto(shop_live.url("cart", "/"))
    notice = page.locator("#ended-holds")
    assert "Morning tour \u2013 adult" in notice.inner_text()
    assert "hold ended" in notice.inner_text()
    assert page.locator("#empty-cart").is_visible()
    assert axe_violations(page, axe_source()) == []


def test_an_error_pages_back_link_goes_back_to_the_page_of_the_form(
    shop_live, shop, provisioned, page
):
    """A form's error page (tickets of an entry gone since the page was shown, from a page's
    calendars) had a link named Back that went to the service's home, not to the calendars the
    buyer was on. Back is the page the request came from, on this site; a page reached from
    nowhere says Home."""
    with admin_connect(provisioned, "events") as connection:
        connection.execute("SET ROLE events_owner")
        gone = connection.execute(
            "INSERT INTO events.calendar_entries (calendar_id, name, starts_at, cost) "
            "SELECT calendar_id, 'Night walk', starts_at + interval '12 hours', cost "
            "FROM events.calendar_entries WHERE id = %s RETURNING id",
            (shop.entry_id,),
        ).fetchone()[0]
    events = shop_live.url("events")
    page.goto(f"{events}/auth/dev-login?user_id=69&next=/?page_id=1")
    row = page.locator(f'tr.entry[data-id="{gone}"]')
    with admin_connect(provisioned, "events") as connection:
        connection.execute("SET ROLE events_owner")
        connection.execute(
            "UPDATE events.calendar_entries SET deleted_at = now() WHERE id = %s", (gone,)
        )
    with page.expect_navigation() as sent:
        row.get_by_role("button", name="Add tickets").click()
    assert sent.value.status == 404
    assert f"There is no calendar entry {gone}" in page.locator('[role="alert"]').inner_text()
    back = page.locator("#back")
    assert (back.inner_text(), back.get_attribute("href")) == ("Back", "/?page_id=1")
    with page.expect_navigation():
        back.click()
    assert page.url == f"{events}/?page_id=1"

    page.goto(f"{events}/no-such-page/")
    assert (back.inner_text(), back.get_attribute("href")) == ("Home", "/")


# Each field of the calendars' tickets forms, the words its label shows (the entry's name after
# them is for screen readers) and whether the label is shown.
FIELD_LABELS = """() => [...document.querySelectorAll('form.tickets input:not([type=hidden])')]
  .map(field => {
    const label = field.labels[0];
    const box = label && label.getBoundingClientRect();
    return [field.name, label ? label.firstChild.textContent.trim() : null,
            Boolean(box && box.width > 8 && box.height > 8)];
  })"""


def test_a_refused_tickets_form_says_why_beside_it_with_what_was_typed_at_phone_width(
    shop_live, shop, browser
):
    """probe a11y, at 320 px: the ticket fields were named only for screen readers (no label
    shown: the table's header is hidden on a phone), and a tickets form the server refused
    was a page of its own, what was typed lost. Each field has a label shown; a refused form
    is the calendars again, the focus in the field it names, an alert beside it, the values
    typed kept; corrected, it goes back to the page it was sent from."""
    context = browser.new_context(viewport={"width": 320, "height": 640})
    page = context.new_page()
    page.set_default_timeout(15_000)
    try:
        events = shop_live.url("events")
        page.goto(f"{events}/auth/dev-login?user_id=70&next=/?page_id=1")
        assert page.evaluate(FIELD_LABELS) == [
            ["ticket_type", "Ticket type", True],
            ["quantity", "Number", True],
        ]
        assert axe_violations(page, axe_source()) == []
        row = page.locator(f'tr.entry[data-id="{shop.entry_id}"]')
        row.get_by_label("Ticket type").fill("   ")
        row.get_by_label("Number").fill("3")
        with page.expect_navigation() as sent:
            row.get_by_role("button", name="Add tickets").click()
        assert sent.value.status == 422
        focused = page.evaluate(
            """() => {
            const e = document.activeElement;
            const message = document.getElementById(e.getAttribute('aria-describedby'));
            return [e.name, e.getAttribute('aria-invalid'), message && message.getAttribute('role'),
                    message && message.innerText];
        }"""
        )
        assert focused == ["ticket_type", "true", "alert", "Ticket type must not be blank."]
        row = page.locator(f'tr.entry[data-id="{shop.entry_id}"]')
        assert row.get_by_label("Number").input_value() == "3"
        assert page.evaluate("document.documentElement.scrollWidth") <= 320
        assert axe_violations(page, axe_source()) == []
        row.get_by_label("Ticket type").fill("child")
        row.get_by_role("button", name="Add tickets").click()
        page.wait_for_url(f"{events}/?page_id=1&added={shop.entry_id}#entry-{shop.entry_id}")
        assert "3 \u00d7 child" in page.locator("#added").inner_text()
    finally:
        context.close()


def test_market_owns_its_market_places_and_blog_attaches_them_by_name(shop_live, shop, page):
    market, blog = shop_live.url("market"), shop_live.url("blog")
    page.goto(f"{market}/auth/dev-login?user_id=1&next=/admin/market-places/")
    form = page.locator("#new-market-place form")
    # Wrong first: one message beside the field, in words.
    form.locator('input[name="name"]').fill("Orchard")
    form.locator('input[name="slug"]').fill("Orchard Stall")
    form.locator('select[name="page_id"]').select_option(label="Market Hall")
    form.get_by_role("button", name="Add market place").click()
    assert page.locator(".field-error").count() == 1
    assert page.locator("#error-slug").inner_text().startswith("The web address name may use")
    form = page.locator("#new-market-place form")
    form.locator('input[name="slug"]').fill("orchard")
    form.get_by_role("button", name="Add market place").click()
    page.wait_for_url(f"{market}/admin/market-places/")
    row = page.locator('tr.market-place[data-slug="orchard"]')
    assert "Market Hall" in row.inner_text()

    page.goto(f"{blog}/farm-shop/admin/page-config/")
    choice = page.locator('#attach-form select[name="market_place_id"]')
    assert "Orchard" in choice.inner_text()
    choice.select_option(label="Orchard")
    page.locator("#attach-form").get_by_role("button", name="Attach").click()
    page.wait_for_url(f"{blog}/farm-shop/admin/page-config/")
    assert "Orchard" in page.locator("#attached-markets").inner_text()

    # Renamed in market: the page shows market's name.
    page.goto(f"{market}/admin/market-places/")
    row = page.locator('tr.market-place[data-slug="orchard"]')
    row.locator('input[name="name"]').fill("Orchard and apples")
    row.get_by_role("button", name="Rename").click()
    page.wait_for_url(f"{market}/admin/market-places/")
    page.goto(f"{blog}/farm-shop/")
    assert "Orchard and apples" in page.locator("#markets").inner_text()

    # Calendars are shown with their page's title.
    page.goto(shop_live.url("events", "/"))
    assert "on Farm Shop" in page.locator(".calendar").first.inner_text()


def test_the_first_tab_on_every_page_offers_to_skip_the_navigation(shop_live, shop, browser):
    """A keyboard user tabbed through the header's eight links and buttons on every page before
    the page's own (on a phone, the header is a fifth of the screen). The first Tab is a link
    to the page's content, shown while it has the focus; after it, the next Tab is the page's
    first control (on a product page, Add to cart)."""
    context = browser.new_context(viewport={"width": 375, "height": 667})
    page = context.new_page()
    page.set_default_timeout(15_000)
    focused = """() => {
        const e = document.activeElement, box = e.getBoundingClientRect();
        return [e.tagName, e.id, e.innerText, !!e.closest('main'),
                box.width > 0 && box.height > 0 && box.top >= 0 && box.bottom <= innerHeight];
    }"""
    try:
        pages = [shop_live.url(service, "/") for service in PUBLIC]
        pages += [shop_live.url("market", "/product/shop-001/"), shop_live.url("cart", "/x/")]
        for url in pages:
            page.goto(url)
            page.keyboard.press("Tab")
            assert page.evaluate(focused) == ["A", "", "Skip to content", False, True], url
            page.keyboard.press("Enter")
            page.keyboard.press("Tab")
            tag, id_, _, in_main, shown = page.evaluate(focused)
            # A page with nothing to focus in it (an empty cart) goes round to the skip link.
            has_controls = page.locator("main").locator("a[href], button, input").count() > 0
            assert (in_main, shown) == (has_controls, True), (url, tag, id_)
            if "/product/" in url:
                assert id_ == "add-to-cart"
        assert page.locator("main").get_attribute("id") == "content"
    finally:
        context.close()


BUTTON_NAMES = """() => [...document.querySelectorAll('main button')].map(
    b => b.getAttribute('aria-label') || b.textContent.replace(/\\s+/g, ' ').trim())"""


def repeated(names: list[str]) -> list[str]:
    return sorted({name for name in names if names.count(name) > 1})


def test_each_button_of_the_cart_and_calendars_says_what_it_acts_on(
    shop_live, shop, provisioned, page
):
    """A screen reader's list of a page's buttons read Remove, Remove, Remove, Update, Update,
    and on the calendars Book, Add tickets once per entry: which was which could be told only
    by reading the table around each. Each says the product, booking or entry it acts on."""
    with admin_connect(provisioned, "events") as connection:
        connection.execute("SET ROLE events_owner")
        connection.execute(
            "INSERT INTO events.calendar_entries (calendar_id, name, starts_at, cost) "
            "SELECT calendar_id, 'Evening tour', starts_at + interval '8 hours', cost "
            "FROM events.calendar_entries WHERE id = %s",
            (shop.entry_id,),
        )
    events = shop_live.url("events")
    page.goto(f"{events}/auth/dev-login?user_id=66&next=/")
    names = page.evaluate(BUTTON_NAMES)
    assert len(names) == 4
    assert repeated(names) == []
    assert names[0].startswith("Book Morning tour, ")
    row = page.locator(f'tr.entry[data-id="{shop.entry_id}"]')
    row.get_by_role("button", name="Add tickets").click()
    page.wait_for_url(f"{events}/?added={shop.entry_id}#entry-{shop.entry_id}")
    for slug in ("shop-001", "shop-002"):
        page.goto(f"{shop_live.url('market')}/product/{slug}/")
        page.locator("#add-to-cart").click()
        page.wait_for_url(shop_live.url("cart", "/"))
    names = page.evaluate(BUTTON_NAMES)
    assert repeated(names) == []
    assert "Remove Item 001" in names
    assert "Update the quantity of Item 002" in names


def test_signed_in_pages_fit_a_320_px_screen(shop_live, shop, browser):
    """WCAG 1.4.10 (reflow): at 320 CSS px nothing runs off the side. Signed in, the header's
    cart count, orders link, "signed in as user N" and Sign out did not wrap: every page
    scrolled sideways, Sign out half off the screen."""
    context = browser.new_context(viewport={"width": 320, "height": 640})
    page = context.new_page()
    page.set_default_timeout(15_000)
    try:
        page.goto(f"{shop_live.url('market')}/auth/dev-login?user_id=68&next=/product/shop-001/")
        page.locator("#add-to-cart").click()
        page.wait_for_url(shop_live.url("cart", "/"))
        wider = {}
        for service in PUBLIC:
            page.goto(shop_live.url(service, "/"))
            assert "signed in as user 68" in nav_text(page)
            width = page.evaluate("document.documentElement.scrollWidth")
            if width > 320:
                wider[service] = width
        assert wider == {}
    finally:
        context.close()


def test_a_provider_that_is_down_leaves_its_slot_out(shop_live, shop, page):
    """Last in this module: it stops the cart process."""
    cart = shop_live.group.processes["cart"].process
    assert cart is not None
    cart.send_signal(signal.SIGTERM)
    cart.wait(15)
    for service in ("blog", "market", "events", "orders"):
        response = page.goto(shop_live.url(service, "/"))
        assert response is not None
        assert response.status == 200, service
        header = page.locator("header")
        assert header.locator("a.cart-mini").count() == 0, service
        assert header.locator("a.account-nav-item").count() == 1, service

"""The demo a person meets after rose up (issue 15), in Debian's chromium against real processes:
pages with their market places and calendars, product images served by market, a favicon; and
axe-core over every public page: no serious or critical accessibility violation."""

from __future__ import annotations

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from ops.stack.demo import seed_demo_data
from ops.stack.screenshots import tour
from tests.conftest import truncate_all
from tests.e2e.conftest import axe_source, axe_violations, live_stack
from tests.integration.commerce_fixtures import ALL_SERVICES


@pytest.fixture(scope="module")
def demo_live(provisioned, credentials):
    truncate_all(provisioned)
    seed_demo_data(provisioned.topology, ALL_SERVICES, lambda _: None)
    with live_stack(provisioned, credentials, ALL_SERVICES, sandbox=True) as stack:
        yield stack
    truncate_all(provisioned)


def test_the_demo_pages_show_their_markets_calendars_and_images(demo_live, page):
    page.goto(demo_live.url("blog", "/farm-shop/"))
    assert page.locator("#markets").inner_text().count("Farm Shop Market") == 1
    assert "Farm tours" in page.locator("#calendars").inner_text()
    assert page.locator('link[rel="icon"]').count() == 1

    page.goto(demo_live.url("market", "/"))
    images = page.locator("img.product-image")
    assert images.count() >= 12
    # The listing's images load lazily: they need not be in before the page's load event, so
    # wait for them (a busy machine answered them just after it) rather than race them.
    every_image_in = (
        "() => [...document.querySelectorAll('img.product-image')]"
        ".every(i => i.complete && i.naturalWidth > 0)"
    )
    try:
        page.wait_for_function(every_image_in, timeout=15_000)
    except PlaywrightTimeout:
        loaded = images.evaluate_all("imgs => imgs.map(i => i.complete && i.naturalWidth > 0)")
        raise AssertionError(f"product images not shown: {loaded}") from None
    response = page.request.get(demo_live.url("market", "/static/products/apple.svg"))
    assert response.status == 200
    assert response.headers["content-type"].startswith("image/svg+xml")

    page.goto(demo_live.url("events", "/"))
    assert "on Farm shop" in page.locator("#calendar-1").inner_text()


def test_axe_finds_no_serious_or_critical_violation_on_any_public_page(demo_live, browser):
    source = axe_source()
    # axe is injected into pages whose CSP allows no inline script: the test's context only.
    context = browser.new_context(bypass_csp=True, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)
    try:
        found: dict[str, list[dict]] = {}
        wider: dict[str, int] = {}
        pages = tour(demo_live.urls, page)
        for width in (1280, 390):
            page.set_viewport_size({"width": width, "height": 900})
            for name, url in pages:
                page.goto(url)
                violations = axe_violations(page, source)
                if violations:
                    found[f"{name}@{width}"] = violations
                # A phone's screen: nothing runs off the side (no sideways scrolling).
                scroll = page.evaluate("document.documentElement.scrollWidth")
                if scroll > width:
                    wider[f"{name}@{width}"] = scroll
        assert len(pages) == 15
        assert found == {}
        assert wider == {}
        # The check can fail: an image without a text alternative is a critical violation.
        page.set_content('<!doctype html><html lang="en"><title>t</title><img src="x.png">')
        assert [v["id"] for v in axe_violations(page, source)] == ["image-alt"]
    finally:
        context.close()

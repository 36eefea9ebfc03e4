"""In a real browser with the Content-Security-Policy enforced: every public page renders and
works (signing in, liking, adding to the cart) without a single policy violation."""

from __future__ import annotations

import pytest

from tests.conftest import truncate_all
from tests.e2e.conftest import live_stack
from tests.integration.commerce_fixtures import open_shop

PUBLIC = ["blog", "market", "cart", "events", "orders"]


@pytest.fixture(scope="module")
def shop_live(provisioned, credentials):
    truncate_all(provisioned)
    open_shop(provisioned)
    with live_stack(provisioned, credentials, [*PUBLIC, "relations", "likes"]) as stack:
        yield stack
    truncate_all(provisioned)


def csp_violations(page) -> list[str]:
    """The page's Content Security Policy violations from now on, as the browser reports them
    (directive and blocked address)."""
    violations: list[str] = []
    page.on(
        "console",
        lambda message: (
            violations.append(message.text) if "Content Security Policy" in message.text else None
        ),
    )
    page.add_init_script(
        "document.addEventListener('securitypolicyviolation', e => "
        "console.error('Content Security Policy violation: ' + e.violatedDirective + ' '"
        " + e.blockedURI))"
    )
    return violations


def test_public_pages_satisfy_their_content_security_policy(shop_live, page):
    violations = csp_violations(page)
    page.goto(shop_live.url("market", "/auth/dev-login?user_id=1&next=/"))
    for service in PUBLIC:
        answer = page.goto(shop_live.url(service, "/"))
        assert answer is not None
        assert answer.status == 200, service
        csp = answer.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp
    page.goto(shop_live.url("market", "/"))
    page.locator(".product form button").first.click()  # like, a form post
    page.wait_for_load_state()
    page.goto(shop_live.url("blog", "/farm-shop/admin/page-config/"))
    page.goto(shop_live.url("events", "/"))
    assert violations == []


@pytest.mark.parametrize("service", ["orders", "relations"])
def test_schema_page_renders_offline_within_its_policy(shop_live, page, service):
    """/schema is a page for developers (internal hosts, localhost): in a browser with no way
    out of this machine it shows the service's operations, and breaks no policy doing so."""
    violations = csp_violations(page)
    # Offline: whatever the page asks of another host is refused, and named.
    outside: list[str] = []
    own = shop_live.url(service)

    def only_own(route) -> None:
        if route.request.url.startswith(own):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", only_own)
    answer = page.goto(shop_live.url(service, "/schema"))
    assert answer is not None
    assert answer.status == 200
    # An operation of the service's own, as the viewer lists it.
    operation = "/internal/actions/attach-child" if service == "relations" else "/api/orders"
    page.get_by_text(operation, exact=True).first.wait_for()
    assert outside == []
    assert violations == []

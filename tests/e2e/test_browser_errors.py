"""In a real browser, on every public service: a page that does not exist, a path that only
looks internal, and a form sent with a method the route does not take are themed pages of the
site (404, 405), never a server error."""

from __future__ import annotations

import pytest

from tests.conftest import truncate_all
from tests.e2e.conftest import live_stack

PUBLIC = ["blog", "market", "cart", "events", "orders"]


@pytest.fixture(scope="module")
def public_stack(provisioned, credentials):
    truncate_all(provisioned)
    with live_stack(provisioned, credentials, [*PUBLIC, "relations", "likes"]) as stack:
        yield stack
    truncate_all(provisioned)


@pytest.mark.parametrize("service", PUBLIC)
def test_unknown_pages_and_wrong_methods_are_themed_pages(public_stack, page, service):
    base = public_stack.url(service)
    for path in ("/no-such-page", "/no/such/page/", "/internal-memo/"):
        answer = page.goto(base + path)
        assert answer is not None
        assert answer.status == 404, (service, path, answer.status)
        assert page.locator("header nav, header").first.is_visible()
        assert "404" in page.locator('[role="alert"] h1').inner_text()

    # A form (with its CSRF token, as pages write them) posted to a route that only answers GET.
    page.goto(base + "/auth/session")
    token = page.evaluate("JSON.parse(document.body.innerText).csrf_token")
    page.goto(base + "/no-such-page")
    page.evaluate(
        """([action, token]) => {
            const form = document.createElement("form");
            form.method = "post";
            form.action = action;
            const field = document.createElement("input");
            field.name = "_csrf_token";
            field.value = token;
            form.appendChild(field);
            document.body.appendChild(form);
            form.submit();
        }""",
        [base + "/schema/openapi.json", token],
    )
    page.wait_for_load_state()
    assert "405" in page.locator('[role="alert"] h1').inner_text(), page.content()[:500]

"""No input and no outage produces a 500 (issue "one error boundary"): every finding of the
fuzzing and the outage trials, as a request through the real apps."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from apps.common.identity import CSRF_FIELD as CSRF
from apps.common.limits import list_fields
from apps.common.problems import Problem
from apps.common.signing import sign_headers
from tests.conftest import INTERNAL_SECRET, admin_connect, in_process_stack
from tests.integration.commerce_fixtures import ALL_SERVICES, browser_of, shop_stack
from tests.signed import internal_get, internal_post

HTML = {"accept": "text/html"}
JSON = {"accept": "application/json"}
PUBLIC = ["blog", "market", "cart", "events", "orders"]


def assert_problem(response: httpx.Response, status: int, *words: str) -> dict:
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    for word in words:
        assert word in problem["detail"], problem
    return problem


@pytest.fixture
async def stack(clean_db, credentials, sandbox, shop):
    async with shop_stack(clean_db, credentials, sandbox.server) as running:
        yield running


# Where this clone is installed: no answer may name it.
INSTALLED_AT = str(Path(__file__).resolve().parents[2])
# Each static files router: market's product images, and every service's schema viewer files.
STATIC_MISSES = [
    ("market", "/static/products/"),
    ("market", "/static/products"),
    ("market", "/static/no-such.svg"),
    ("market", "/schema/static/no-such.js"),
    ("orders", "/schema/static/no-such.js"),
    ("blog", "/schema/static/products/x.css"),
]


@pytest.mark.parametrize(("service", "path"), STATIC_MISSES)
async def test_a_static_miss_is_a_plain_404_naming_the_request_path_only(stack, service, path):
    """Audit s20 L3: GET /static/products/ on market answered "no file or directory match the
    path /work/.../apps/market/static/products was found" (Litestar's message, as the page)."""
    browser = stack.browser(service)
    problem = assert_problem(await browser.get(path, headers=JSON), 404)
    assert problem["detail"] == f"Nothing is served at {path.rstrip('/')}"
    page = await browser.get(path, headers=HTML)
    assert page.status_code == 404
    assert page.headers["content-type"].startswith("text/html")
    assert INSTALLED_AT not in page.text
    assert "no file or directory" not in page.text


# A static path the file system cannot even look up: a NUL (Python refuses it: ValueError), a
# name longer than the file system's limit (ENAMETOOLONG), a file taken for a directory
# (ENOTDIR). Each was a 500 (a traceback in the log for the NUL), for a client's mistake.
UNLOOKABLE_STATIC = [
    ("market", "/static/%00"),
    ("market", "/static/products/a%00b.svg"),
    ("market", "/static/" + "a" * 300),
    ("market", "/static/products/apple.svg/x"),
    ("orders", "/static/%00"),
    ("blog", "/schema/static/%00"),
    ("cart", "/schema/static/" + "a" * 300),
    ("events", "/schema/static/swagger-ui.css/x"),
]


@pytest.mark.parametrize(("service", "path"), UNLOOKABLE_STATIC)
async def test_a_static_path_no_file_can_have_is_a_404_not_a_500(stack, service, path, caplog):
    browser = stack.browser(service)
    problem = assert_problem(await browser.get(path, headers=JSON), 404, "Nothing is served at")
    assert INSTALLED_AT not in problem["detail"]
    head = await browser.head(path, headers=JSON)
    assert head.status_code == 404
    page = await browser.get(path, headers=HTML)
    assert page.status_code == 404
    assert page.headers["content-type"].startswith("text/html")
    assert "unhandled error" not in caplog.text


@pytest.mark.parametrize("service", PUBLIC)
async def test_unknown_urls_and_wrong_methods_are_themed_pages_for_browsers(stack, service):
    browser = stack.browser(service)
    for path, status in (("/nope", 404), ("/no/such/page/", 404), ("/checkout/", None)):
        response = await browser.get(path, headers=HTML)
        assert response.status_code != 500, (service, path)
        if status is not None:
            assert response.status_code == status
        assert response.headers["content-type"].startswith("text/html"), (service, path)
        assert "<html" in response.text
        assert 'role="alert"' in response.text
    # A wrong method, sent the way pages send forms (with the CSRF token).
    token = (await browser.get("/auth/session", headers=JSON)).json()["csrf_token"]
    wrong = await browser.delete("/", headers={**HTML, "x-csrf-token": token})
    assert wrong.status_code == 405
    assert wrong.headers["content-type"].startswith("text/html")
    assert_problem(await browser.get("/nope", headers=JSON), 404)


async def test_an_error_pages_back_link_is_a_page_of_this_site_or_home(stack):
    """The error page's Back goes to the page the request came from (its Referer) only when
    that is a page of this very site; any other Referer, one that is not a URL at all among
    them, is Home, and the page is the 404 it was."""
    browser = stack.browser("market")
    host = browser.base_url.netloc.decode()
    cases = {
        f"http://{host}/product/x/?page=2": ("Back", "/product/x/?page=2"),
        "http://evil.example/product/x/": ("Home", "/"),
        f"http://{host}//evil.example/": ("Home", "/"),
        f"http://{host}/nope": ("Home", "/"),  # the page itself: no way back
        "http://[not-a-url/": ("Home", "/"),
        "": ("Home", "/"),
    }
    for referer, (words, href) in cases.items():
        page = await browser.get("/nope", headers={**HTML, "referer": referer})
        assert page.status_code == 404, referer
        assert f'<a href="{href}" id="back">{words}</a>' in page.text, referer


async def test_a_wrong_method_names_the_method_and_what_the_address_takes(stack):
    """Probe: a buyer who reloads or bookmarks a form's address (cart's /checkout/, a booking,
    pay again) sends it a GET, and was told only "Method Not Allowed". The problem says which
    method the address does not take and which it does; Allow is kept."""
    for service, path in (("cart", "/checkout/"), ("events", "/entries/1/book/")):
        browser = stack.browser(service)
        refused = await browser.get(path, headers=JSON)
        problem = assert_problem(refused, 405)
        assert problem["detail"] == (
            f"{path} does not take GET: it takes POST, the button of the form that sends it"
        ), problem
        assert refused.headers["allow"] == "POST, OPTIONS"
        page = await browser.get(path, headers=HTML)
        assert page.status_code == 405
        assert f"{path} does not take GET: it takes POST" in page.text
    blog = stack.browser("blog")
    token = (await blog.get("/auth/session", headers=JSON)).json()["csrf_token"]
    deleted = await blog.delete("/", headers={**JSON, "x-csrf-token": token})
    assert assert_problem(deleted, 405)["detail"] == "/ does not take DELETE: it takes GET"
    # Review-2: a service's address has no form to speak of.
    internal = await stack.browser("events").get("/internal/actions/hold-for-order", headers=JSON)
    assert assert_problem(internal, 405)["detail"] == (
        "/internal/actions/hold-for-order does not take GET: it takes POST"
    )


async def test_paths_that_only_start_like_internal_are_public_paths(stack):
    blog = stack.browser("blog")
    # A post slug that happens to start with "internal" (none exists: 404), and the admin page
    # of such a slug (editors only: 403 before anything is looked up).
    for path, status in (("/internal-memo/", 404), ("/internals/admin/page-config/", 403)):
        response = await blog.get(path, headers=HTML)
        assert response.status_code == status, (path, response.text[:300])
        assert response.headers["content-type"].startswith("text/html")
    internal = await blog.get("/internal/data/page-config")
    assert_problem(internal, 401, "signature")


async def test_nul_characters_are_refused_naming_the_field(stack, shop):
    events = await browser_of(stack, "events", user_id=1)
    calendars = await events.post(
        "/admin/calendars/",
        data={"name": "Tours\x00", "slug": "tours", "page_id": "1"},
        headers={"accept": "application/json"},
    )
    assert_problem(calendars, 422, "name")
    webhook = await stack.client("orders").post(
        "/checkout/webhook/1/",
        content=json.dumps({"event_type": "CHECKOUT_STATUS_CHANGED", "id": "a\u0000b"}),
        headers={"content-type": "application/json"},
    )
    assert_problem(webhook, 422, "id")
    summary = await internal_get(stack.client("cart"), "cart-summary", {"session_id": "a\x00b"})
    assert_problem(summary, 422, "session_id")


async def test_what_the_edge_refuses_is_the_same_problem_as_a_handlers(stack, shop):
    """A CSRF refusal, a NUL in the query and an unsigned internal call are answered before any
    handler: the same problem as a handler's (the request's id in it, as in the header and the
    log line, and the same compact JSON)."""
    market = stack.browser("market")
    refusals = [
        await market.post("/product/x/like/", headers={"accept": "application/json"}),
        await market.get("/api/products?q=%00", headers={"accept": "application/json"}),
        await stack.client("blog").get("/internal/data/page-config"),
    ]
    handler = await market.get("/api/products/no-such-thing")
    for answer in (*refusals, handler):
        assert answer.headers["content-type"].startswith("application/problem+json"), answer.text
        assert answer.json()["request_id"] == answer.headers["x-request-id"], answer.text
        assert ", " not in answer.text.split('"detail"')[0], answer.text  # compact, as msgspec's


async def test_integers_beyond_bigint_are_refused(stack):
    huge = "9223372036854775808"
    children = await internal_get(
        stack.client("relations"), "get-children", {"parent_type": "page", "parent_id": huge}
    )
    assert_problem(children, 422, "parent_id")
    order = await internal_get(stack.client("orders"), "order", {"order_id": huge})
    assert_problem(order, 422, "order_id")
    nav = await internal_get(
        stack.client("orders"), "account-nav-item", {"user_id": huge}, kind="fragments"
    )
    assert_problem(nav, 422, "user_id")


async def test_broken_and_deeply_nested_json_is_a_client_error(stack, shop):
    cart = await browser_of(stack, "cart", user_id=4)
    product = shop.product_ids[0]
    headers = {"content-type": "application/json"}
    for body in (b'{"quantity": ', b'{"quantity": "\xff\xfe"}', b"[" * 30_000 + b"]" * 30_000):
        answer = await cart.post(f"/add/{product}/", content=body, headers=headers)
        assert 400 <= answer.status_code < 500, (body[:20], answer.text[:200])
        assert answer.headers["content-type"].startswith("application/problem+json")
    deep = b'{"event_type": "CHECKOUT_STATUS_CHANGED", "id": ' + b"[" * 30_000 + b"]" * 30_000
    webhook = await stack.client("orders").post(
        "/checkout/webhook/1/", content=deep + b"}", headers=headers
    )
    assert 400 <= webhook.status_code < 500


async def test_non_ascii_csrf_tokens_and_signatures_are_refused_not_crashed(stack, shop):
    cart = await browser_of(stack, "cart", user_id=4)
    header = await cart.post(
        f"/add/{shop.product_ids[0]}/", headers={"x-csrf-token": "\u00e9\u00e9".encode()}
    )
    assert_problem(header, 403, "CSRF")
    cart.headers.pop("x-csrf-token")
    form = await cart.post(
        f"/add/{shop.product_ids[0]}/",
        content=b"_csrf_token=%C3%A9%C3%A9",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert_problem(form, 403, "CSRF")
    path = "/internal/data/get-children?parent_type=page&parent_id=1"
    headers = sign_headers(INTERNAL_SECRET, "GET", path, b"", caller="tests")
    headers["X-Rose-Signature"] = "\u00e9".encode()
    signed = await stack.client("relations").get(path, headers=headers)
    assert_problem(signed, 401, "signature")


async def test_a_signature_timestamp_is_ascii_digits_or_refused_not_crashed(stack):
    """Probe (2026-12-06): a signature timestamp of 400 digits was a 500 (OverflowError: int
    too large to convert to float, a traceback in the log), for a malformed header. Any
    timestamp that is not plain ASCII digits is now "malformed", a 401 like the others."""
    path = "/internal/data/get-children?parent_type=page&parent_id=1"
    for given in ("9" * 400, "1" * 19 + "0" * 11, "\uff11\uff12\uff13", "+1", "1_000", " 1 "):
        headers = sign_headers(INTERNAL_SECRET, "GET", path, b"", caller="tests")
        headers["X-Rose-Timestamp"] = given.encode()
        answer = await stack.client("relations").get(path, headers=headers)
        assert_problem(answer, 401, "malformed signature timestamp")


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=b"],
)
async def test_an_internal_action_reads_only_a_body_typed_as_json(stack, content_type):
    """Probe (2026-12-06): an action's body sent untyped (or typed as text or a form) was read
    as JSON all the same, past the edge, which checks only a body typed as JSON: a key given
    twice was read (the last ``user_id``: user 2's like toggled), and JSON nested deeper than
    the edge allows was a 500 (RecursionError). Such a body is a 415 naming the type, and
    nothing is done; typed as JSON, the same body is read as before."""
    likes = stack.client("likes")
    path = "/internal/actions/toggle"
    repeated = b'{"user_id":1,"target_type":"post","target_id":42,"user_id":2}'
    deep = b'{"user_id":1,"target_type":"post","target_id":42,"x":' + b"[" * 50_000
    for body in (repeated, deep + b"]" * 50_000 + b"}"):
        headers = sign_headers(INTERNAL_SECRET, "POST", path, body, caller="tests")
        if content_type is not None:
            headers["content-type"] = content_type
        answer = await likes.post(path, content=body, headers=headers)
        assert_problem(answer, 415, "application/json")
    for user_id in (1, 2):
        state = await internal_get(
            likes, "is-liked", {"user_id": user_id, "target_type": "post", "target_id": 42}
        )
        assert state.json() == {"liked": False}, user_id
    typed = await internal_post(
        likes, "toggle", {"user_id": 2, "target_type": "post", "target_id": 42}
    )
    assert typed.json() == {"liked": True}, typed.text


async def test_a_signed_action_cannot_be_replayed(stack):
    likes = stack.client("likes")
    payload = {"user_id": 3, "target_type": "product", "target_slug": "jam"}
    body = json.dumps(payload).encode()
    path = "/internal/actions/toggle"
    headers = sign_headers(INTERNAL_SECRET, "POST", path, body, caller="tests")
    headers["content-type"] = "application/json"
    first = await likes.post(path, content=body, headers=headers)
    assert first.json() == {"liked": True}
    for _ in range(4):
        again = await likes.post(path, content=body, headers=headers)
        assert_problem(again, 409, "replayed")
    state = await internal_get(
        likes, "is-liked", {"user_id": 3, "target_type": "product", "target_slug": "jam"}
    )
    assert state.json() == {"liked": True}


async def test_keyed_actions_sweep_the_nonces_no_longer_presentable(stack, clean_db, monkeypatch):
    """Review F1: a keyed action records its nonce with its key's claim (one round trip), and
    that path never deleted the expired nonces (only a nonce recorded on its own connection
    swept them, one in SWEEP_ONE_IN). Likes and relations take keyed actions only: their
    request_nonces grew without end. Every committed keyed action now sweeps, one in
    SWEEP_ONE_IN (made 1 here), after its answer, on a connection of its own."""
    monkeypatch.setattr("apps.common.nonces.SWEEP_ONE_IN", 1)
    with admin_connect(clean_db, "likes") as connection:
        connection.execute(
            "INSERT INTO likes.request_nonces (nonce, expires_at) "
            "VALUES ('stale', now() - interval '1 day')"
        )
        connection.commit()
    likes = stack.client("likes")
    path = "/internal/actions/toggle"
    body = json.dumps({"user_id": 3, "target_type": "product", "target_slug": "jam"}).encode()
    headers = sign_headers(
        INTERNAL_SECRET, "POST", path, body, caller="tests", idempotency_key="toggle-1"
    )
    headers["content-type"] = "application/json"
    headers["Idempotency-Key"] = "toggle-1"
    toggled = await likes.post(path, content=body, headers=headers)
    assert toggled.json() == {"liked": True}
    nonces = rows(clean_db, "likes", "SELECT nonce FROM likes.request_nonces ORDER BY nonce")
    assert nonces == [(headers["X-Rose-Nonce"],)]  # its own recorded, the stale one gone


async def test_a_failed_nonce_sweep_does_not_fail_the_action(stack, clean_db, monkeypatch):
    """Review LOW-B: the sweep that one nonce recorded first (an action without a key) sends
    ran before the action, and its failure (a lock conflict with another sweep, say) failed
    the request after the nonce was recorded: the action never ran, its delivery used up.
    Shown with orders' nonces refusing every DELETE: the action is answered as without it
    (422, its body), and the failed sweep is only logged."""
    monkeypatch.setattr("apps.common.nonces.SWEEP_ONE_IN", 1)
    with admin_connect(clean_db, "orders") as connection:
        connection.execute(
            """
            CREATE FUNCTION orders.test_refuse_sweeps() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION 'injected: nonces cannot be deleted now'; END $$
            """
        )
        connection.execute(
            "CREATE TRIGGER test_refuse_sweeps BEFORE DELETE ON orders.request_nonces "
            "FOR EACH ROW EXECUTE FUNCTION orders.test_refuse_sweeps()"
        )
        connection.execute(
            "INSERT INTO orders.request_nonces (nonce, expires_at) "
            "VALUES ('stale', now() - interval '1 day')"
        )
        connection.commit()
    try:
        path = "/internal/actions/create-order"
        body = json.dumps({"product_total": "0"}).encode()
        headers = sign_headers(INTERNAL_SECRET, "POST", path, body, caller="tests")
        headers["content-type"] = "application/json"
        answer = await stack.client("orders").post(path, content=body, headers=headers)
        assert answer.status_code == 422, answer.text
    finally:
        with admin_connect(clean_db, "orders") as connection:
            connection.execute("DROP TRIGGER test_refuse_sweeps ON orders.request_nonces")
            connection.execute("DROP FUNCTION orders.test_refuse_sweeps()")
            connection.commit()


async def test_a_signed_action_that_fails_still_uses_up_its_nonce(stack, shop, clean_db):
    """A refused action's nonce is used up: recorded first for an action without a key, after
    the request for a keyed one whose transaction did not commit it (its claim would have
    recorded it). A replay is refused, never run: as a replay at once without a key; with its
    key, by its body again (refused before anything runs) or at its key's claim
    (tests/integration/test_orders_round_trips.py)."""

    def recorded(nonce: str) -> bool:
        with admin_connect(clean_db, "orders") as connection:
            return bool(
                connection.execute(
                    "SELECT 1 FROM orders.request_nonces WHERE nonce = %s", (nonce,)
                ).fetchone()
            )

    orders = stack.client("orders")
    path = "/internal/actions/create-order"
    body = json.dumps({"product_total": "0"}).encode()
    for key in (None, "k"):
        headers = sign_headers(
            INTERNAL_SECRET, "POST", path, body, caller="tests", idempotency_key=key
        )
        headers["content-type"] = "application/json"
        if key is not None:
            headers["Idempotency-Key"] = key
        refused = await orders.post(path, content=body, headers=headers)
        assert refused.status_code == 422, refused.text
        assert recorded(headers["X-Rose-Nonce"])
        again = await orders.post(path, content=body, headers=headers)
        if key is None:
            assert_problem(again, 409, "replayed")
        else:
            assert_problem(again, 422, "calendar_total")
    assert not rows(clean_db, "orders", "SELECT id FROM orders.orders")


async def test_the_idempotency_key_is_part_of_the_signature(stack, shop):
    orders = stack.client("orders")
    response = await internal_post(
        orders, "create-order", {"product_total": "0"}, idempotency_key="key-1"
    )
    assert response.status_code == 422  # signed with its key: accepted for validation
    path = "/internal/actions/create-order"
    body = json.dumps({"product_total": "0"}).encode()
    headers = sign_headers(
        INTERNAL_SECRET, "POST", path, body, caller="tests", idempotency_key="key-1"
    )
    headers.update({"content-type": "application/json", "Idempotency-Key": "key-2"})
    swapped = await orders.post(path, content=body, headers=headers)
    assert_problem(swapped, 401, "signature")


async def test_validation_errors_leave_no_unretrieved_task_errors(stack, caplog):
    market = stack.browser("market")
    for _ in range(20):
        assert (await market.get("/api/products?page=0", headers=JSON)).status_code == 422
    import gc

    gc.collect()
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


async def test_openapi_documents_problem_responses(stack):
    for service in ("cart", "orders", "relations"):
        schema = (await stack.client(service).get("/schema/openapi.json")).json()
        for path, operations in schema["paths"].items():
            for method, operation in operations.items():
                responses = operation["responses"]
                errors = {code for code in responses if code.startswith(("4", "5"))}
                assert errors, (service, method, path)
                for code in errors:
                    content = responses[code]["content"]
                    assert "application/problem+json" in content, (service, method, path, code)


FORM_TYPE = "application/x-www-form-urlencoded"
MULTIPART_TYPE = "multipart/form-data"


async def test_openapi_lists_both_encodings_of_every_form_taken_as_a_struct(stack):
    """A form a handler takes as a struct is read URL-encoded or multipart
    (read_form_body_first), but the schema listed only application/x-www-form-urlencoded for
    its body (events' calendar form: no multipart/form-data in its requestBody): a client
    generated from it could not know multipart is read too. Both are listed, same schema."""
    forms = 0
    for service in ("events", "market"):
        schema = (await stack.client(service).get("/schema/openapi.json")).json()
        for path, operations in schema["paths"].items():
            for method, operation in operations.items():
                content = operation.get("requestBody", {}).get("content", {})
                if FORM_TYPE not in content and MULTIPART_TYPE not in content:
                    continue
                forms += 1
                assert content.get(MULTIPART_TYPE) == content.get(FORM_TYPE), (
                    service,
                    method,
                    path,
                    sorted(content),
                )
    calendars = (await stack.client("events").get("/schema/openapi.json")).json()
    body = calendars["paths"]["/admin/calendars"]["post"]["requestBody"]["content"]
    assert set(body) == {FORM_TYPE, MULTIPART_TYPE}, body
    assert forms >= 5, forms  # events' four forms and market's places: the scan saw them


async def test_database_down_under_load_answers_503_and_recovers_by_itself(credentials):
    """PostgreSQL stopped while requests keep coming: only 503s with Retry-After; started
    again: answers again, without restarting any service."""
    from tests.integration.db_fixtures import start_cluster
    from tests.pg import TestServer

    cluster_gen = start_cluster()
    cluster = next(cluster_gen)
    try:
        server = TestServer(cluster.admin_url, cluster.topology, "embedded")
        async with in_process_stack(server, cluster.credentials, ["relations", "blog"]) as running:
            relations = running.client("relations")
            blog = running.browser("blog")
            query = {"parent_type": "page", "parent_id": 1}
            assert (await internal_get(relations, "get-children", query)).status_code == 200
            cluster.server.stop()
            statuses = set()
            for _ in range(40):
                down = await internal_get(relations, "get-children", query)
                statuses.add(down.status_code)
                assert down.status_code == 503, down.text[:300]
                assert "retry-after" in {key.lower() for key in down.headers}
                page = await blog.get("/", headers=HTML)
                statuses.add(page.status_code)
                assert page.status_code == 503
            cluster.server.start()
            back = await internal_get(relations, "get-children", query)
            assert back.status_code == 200, back.text[:300]
            assert (await blog.get("/", headers=HTML)).status_code == 200
    finally:
        cluster_gen.close()


async def test_a_restart_while_idle_costs_no_request(credentials):
    """PostgreSQL restarted while nobody asked anything: the pool's connections are dead, and
    the first request after it still answers (a connection idle for a while is pinged before
    use and replaced if dead; connections in steady use are not pinged at all)."""
    from tests.integration.db_fixtures import start_cluster
    from tests.pg import TestServer

    cluster_gen = start_cluster()
    cluster = next(cluster_gen)
    try:
        server = TestServer(cluster.admin_url, cluster.topology, "embedded")
        async with in_process_stack(server, cluster.credentials, ["relations"]) as running:
            relations = running.client("relations")
            query = {"parent_type": "page", "parent_id": 1}
            for _ in range(3):  # several pooled connections in use, then idle
                assert (await internal_get(relations, "get-children", query)).status_code == 200
            cluster.server.stop()
            cluster.server.start()
            first = await internal_get(relations, "get-children", query)
            assert first.status_code == 200, first.text[:300]
    finally:
        cluster_gen.close()


@pytest.mark.parametrize("service", PUBLIC)
async def test_what_the_edge_refuses_is_a_themed_page_for_browsers(stack, service):
    """The refusals made before any route runs (a form without its CSRF token, a NUL in the
    query, a body over the limit) are pages for a browser, like every other problem, and
    stay problem+json for API clients."""
    browser = stack.browser(service)
    form = {**HTML, "content-type": "application/x-www-form-urlencoded"}
    too_large = b"a" * (1024 * 1024 + 1)
    refusals = [
        (403, "reload the page", lambda: browser.post("/", content=b"quantity=1", headers=form)),
        (422, "page", lambda: browser.get("/?page=%00", headers=HTML)),
        (413, "larger than", lambda: browser.post("/", content=too_large, headers=form)),
    ]
    for status, words, request in refusals:
        response = await request()
        assert response.status_code == status, (service, response.text[:300])
        assert response.headers["content-type"].startswith("text/html"), (service, status)
        assert 'role="alert"' in response.text
        assert words in response.text, (service, status)
        # Like every answer of a public service, with its security headers.
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
        assert response.headers["x-content-type-options"] == "nosniff", (service, status)
    assert_problem(await browser.post("/", content=b"quantity=1", headers=JSON), 403, "CSRF")
    assert_problem(await browser.get("/?page=%00", headers=JSON), 422, "page")


async def test_an_edge_refusal_whose_page_cannot_be_made_is_still_its_problem(
    stack, monkeypatch, caplog
):
    """Fault injection: the page renderer fails; the refusal goes out as problem+json with
    its own status, never as a 500."""

    def broken(*_args: object) -> None:
        raise RuntimeError("template store unreadable")

    monkeypatch.setattr(Problem, "render_page", broken)
    cart = stack.browser("cart")
    form = {**HTML, "content-type": "application/x-www-form-urlencoded"}
    response = await cart.post("/", content=b"quantity=1", headers=form)
    assert_problem(response, 403, "CSRF")
    assert "could not render the page of a 403 problem" in caplog.text


async def test_a_redirect_promises_no_json_body(stack, shop):
    """A 303 has an empty body: it is typed as text, not as the handler's JSON."""
    cart = await browser_of(stack, "cart")
    redirects = [
        await cart.post(f"/add/{shop.product_ids[0]}/", headers=HTML),  # back to the cart
        await cart.post("/checkout/", headers=HTML),  # to SumUp's page
    ]
    blog = await browser_of(stack, "blog", user_id=1)
    redirects.append(
        await blog.post("/farm-shop/admin/page-config/", data={"features": ""}, headers=HTML)
    )
    for response in redirects:
        assert response.status_code == 303, response.text[:300]
        assert response.content == b""
        assert response.headers["content-type"].startswith("text/plain"), response.headers


async def raw_get(app: Any, query: bytes, accept: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
    """A GET whose query string is ``query`` byte for byte, straight to the app's ASGI entry:
    HTTP clients percent-encode what is not ASCII, and a raw byte is what is tested here."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "root_path": "",
        "query_string": query,
        "headers": [(b"host", b"service.test"), (b"accept", accept)],
        "client": ("127.0.0.1", 50000),
        "server": ("service.test", 80),
        "state": {},
    }
    await app(scope, receive, send)
    start = next(message for message in sent if message["type"] == "http.response.start")
    body = b"".join(message.get("body", b"") for message in sent[1:])
    return start["status"], dict(start["headers"]), body


@pytest.mark.parametrize("service", ALL_SERVICES)
async def test_a_query_parameter_that_is_not_utf8_is_refused_naming_it(stack, service):
    """Audit: ``?page=%FF%FE`` was read as two U+FFFD (and looked up or stored as that). Every
    service's edge answers 400 naming the parameter, as it does for a form field; a browser
    gets the themed page."""
    client = stack.browser(service) if service in PUBLIC else stack.client(service)
    for query in ("page=%FF%FE", "page=2%C3", "a=1&page=%E9t%E9"):
        problem = assert_problem(await client.get(f"/?{query}", headers=JSON), 400, "UTF-8")
        assert problem["detail"].startswith("page:"), problem
        assert problem["errors"][0]["field"] == "page", problem
    status, headers, body = await raw_get(stack.apps[service], b"page=\xff", b"application/json")
    assert status == 400, body[:300]
    assert headers[b"content-type"].startswith(b"application/problem+json")
    assert json.loads(body)["errors"][0]["field"] == "page"
    if service in PUBLIC:
        page = await client.get("/?page=%FF", headers=HTML)
        assert page.status_code == 400
        assert page.headers["content-type"].startswith("text/html")
        assert 'role="alert"' in page.text
        assert "Page is not valid UTF-8" in page.text


async def test_a_slug_or_type_ending_in_a_newline_is_malformed(stack):
    """Audit: the patterns ended in ``$``, which in Python also matches before a final newline,
    so ``/api/products/x%0A`` or ``?market=x%0A`` passed as well-formed. A malformed slug in a
    query is a 422 naming it, before anything is looked up; in a path, the URL names nothing
    (a 404, test_a_url_whose_path_parameter_is_malformed_names_nothing)."""
    for service, path, field in [
        ("blog", "/farm-shop%0A/", "slug"),
        ("blog", "/api/posts/farm-shop%0A", "slug"),
        ("market", "/product/carrots%0A/", "slug"),
        ("market", "/api/products/carrots%0A", "slug"),
        ("cart", "/api/page/farm-shop%0A", "page_slug"),
    ]:
        answer = await stack.browser(service).get(path, headers=JSON)
        assert_problem(answer, 404, f"{path.rstrip('/')}: its {field} is not in the expected form")
    market = await stack.browser("market").get("/api/products?market=greens%0A", headers=JSON)
    assert names_field(assert_problem(market, 422, "market"), "market")
    children = await internal_get(
        stack.client("relations"), "get-children", {"parent_type": "page\n", "parent_id": "1"}
    )
    assert names_field(assert_problem(children, 422, "parent_type"), "parent_type")
    config = await internal_get(
        stack.client("blog"), "page-config", {"container_type": "page\n", "container_id": "1"}
    )
    assert names_field(assert_problem(config, 422, "container_type"), "container_type")


# Each public service's GET routes whose path names a thing, with a value of the path parameter
# that fails its type or pattern (the field it names; None: Litestar's own path type refuses it
# while routing).
MALFORMED_PATHS = [
    ("market", "/product/Not_A_Slug/", "slug"),
    ("market", "/api/products/carrots%0A", "slug"),
    ("blog", "/Not_A_Slug/", "slug"),
    ("blog", "/api/posts/-farm", "slug"),
    ("cart", "/page/Not_A_Slug/", "page_slug"),
    ("cart", "/api/page/farm_shop", "page_slug"),
    ("orders", "/order/0/", "order_id"),
    ("orders", "/order/9223372036854775808/", "order_id"),
    ("orders", "/api/orders/-1", "order_id"),
    ("orders", "/checkout/return/0/", "order_id"),
    ("orders", "/order/abc/", None),
    # Probe (2026-12-06): other scripts' digits, a sign, a space or an underscore were read as
    # the number (int() takes them): /order/%D9%A3/ was order 3's page.
    ("orders", "/order/%D9%A3/", "order_id"),
    ("orders", "/api/orders/%EF%BC%91", "order_id"),
    ("orders", "/order/+1/", "order_id"),
    ("orders", "/order/%201/", "order_id"),
    ("orders", "/checkout/return/1_0/", "order_id"),
]


@pytest.mark.parametrize(("service", "path", "field"), MALFORMED_PATHS)
async def test_a_url_whose_path_parameter_is_malformed_names_nothing(stack, service, path, field):
    """A path parameter that fails its type or pattern (a product or post slug that no slug can
    be, an order id below 1 or beyond bigint) was a 422, as if the visitor had typed a form
    wrong: the URL names nothing, so it is a 404 like any unknown thing, naming the path (and
    the parameter), a themed page for a browser."""
    browser = stack.browser(service)
    said = f"Nothing is found at {path.rstrip('/')}"
    problem = assert_problem(await browser.get(path, headers=JSON), 404, said)
    if field is not None:
        assert field in problem["detail"], problem
    page = await browser.get(path, headers=HTML)
    assert page.status_code == 404, (service, path, page.text[:300])
    assert page.headers["content-type"].startswith("text/html")
    assert 'role="alert"' in page.text
    assert said in page.text
    head = await browser.head(path, headers=HTML)
    assert head.status_code == 404, (service, path)


async def test_a_path_word_that_is_none_of_its_values_is_said_in_words(stack):
    """Probe: removing a booking of a kind there is none of (``/booking/foo/1/delete/``) named
    nothing, in msgspec's words after the parameter: "its kind Invalid enum value 'foo'"."""
    cart = await browser_of(stack, "cart", user_id=4)
    problem = assert_problem(await cart.post("/booking/foo/1/delete/"), 404)
    assert problem["detail"] == (
        "Nothing is found at /booking/foo/1/delete: its kind is not one of the values it takes"
    ), problem


async def test_a_post_to_a_malformed_path_is_404_and_a_bad_body_stays_422(stack, shop):
    """Only the path's parameters make a 404: a body (or a query) that breaks a rule is still
    the 422 naming the field, on the same routes."""
    cart = await browser_of(stack, "cart", user_id=4)
    product = shop.product_ids[0]
    assert_problem(await cart.post("/add/0/", json={"quantity": 1}), 404, "/add/0", "product_id")
    # The URL names nothing, whatever the body: nothing to correct in it.
    assert_problem(await cart.post("/add/0/", json={"quantity": 0}), 404, "/add/0")
    refused = assert_problem(await cart.post(f"/add/{product}/", json={"quantity": 0}), 422)
    assert names_field(refused, "quantity"), refused
    events = await browser_of(stack, "events")
    assert_problem(await events.post("/entries/0/book/"), 404, "/entries/0/book", "entry_id")
    refused = assert_problem(
        await events.post(
            f"/entries/{shop.entry_id}/tickets/", data={"ticket_type": "adult", "quantity": "0"}
        ),
        422,
    )
    assert names_field(refused, "quantity"), refused
    # A number not written in digits 0-9 names nothing either (it was read as the number:
    # product and entry 1 went into the cart).
    for written in ("%D9%A1", "+1", "%EF%BC%91"):
        product_path = f"/add/{written}/"
        assert_problem(await cart.post(product_path, json={"quantity": 1}), 404, "product_id")
        entry_path = f"/entries/{written}/book/"
        assert_problem(await events.post(entry_path), 404, "entry_id")
    query = assert_problem(await stack.browser("orders").get("/api/orders?page=0"), 422)
    assert names_field(query, "page"), query
    assert (await cart.get("/api/cart")).json()["count"] == 0


def names_field(problem: dict, field: str) -> bool:
    return [error["field"] for error in problem.get("errors", [])] == [field]


async def assert_not_found(browser: httpx.AsyncClient, service: str, path: str) -> None:
    """A 404 problem, and for a public service's browser the themed page."""
    assert_problem(await browser.get(path, headers=JSON), 404)
    if service in PUBLIC:
        page = await browser.get(path, headers=HTML)
        assert page.status_code == 404, (service, path)
        assert page.headers["content-type"].startswith("text/html"), (service, path)
        assert 'role="alert"' in page.text


@pytest.mark.parametrize("service", ALL_SERVICES)
async def test_the_internal_prefix_itself_is_not_found_on_every_service(stack, service):
    """Audit O5: blog's ``GET /{slug}/`` caught ``/internal`` (an internal path, so no identity
    was resolved) and answered 500. No public route serves an internal path: every service
    answers ``/internal`` and whatever under it its contract does not declare with a 404."""
    browser = stack.browser(service)
    for path in ("/internal", "/internal/", "/internal%2f", "/%69nternal/", "/internal/nope"):
        await assert_not_found(browser, service, path)
    if service == "blog":
        # Its other public routes under ``/{slug}/``, with their methods.
        for method, path in (
            ("GET", "/internal/admin/page-config/"),
            ("POST", "/internal/admin/page-config/"),
            ("POST", "/internal/like/"),
        ):
            assert_problem(await browser.request(method, path, headers=JSON), 404)


@pytest.mark.parametrize("service", ALL_SERVICES)
async def test_an_unknown_schema_page_is_the_projects_not_found(stack, service):
    """Audit O6: ``/schema/<unknown>`` was Litestar's own bare HTML 404, whatever the Accept."""
    browser = stack.browser(service)
    for path in ("/schema/nope", "/schema/redoc", "/schema/rapidoc", "/schema/nope.json"):
        await assert_not_found(browser, service, path)
    # What the schema does serve, still served.
    assert (await browser.get("/schema", headers=HTML)).status_code == 200
    assert (await browser.get("/schema/openapi.json")).status_code == 200


@pytest.mark.parametrize(
    ("headers", "said"),
    [
        ({"content-encoding": "gzip", "content-type": "application/json"}, "gzip"),
        ({"content-encoding": "br", "content-type": "application/x-www-form-urlencoded"}, "br"),
        ({"content-type": "application/json; charset=utf-16"}, "utf-16"),
        ({"content-type": "application/x-www-form-urlencoded; charset=latin-1"}, "latin-1"),
    ],
)
async def test_a_body_in_an_encoding_the_edge_does_not_read_is_415(stack, shop, headers, said):
    """Audit O12: a body declared gzip, or in a charset other than UTF-8, was read as plain
    UTF-8 whatever it said (a gzip body that was not gzip added 1 to the cart). Now it is a
    415 naming the encoding, and nothing changes."""
    cart = await browser_of(stack, "cart", user_id=9)
    body = b'{"quantity": 1}' if "json" in headers["content-type"] else b"quantity=1"
    answer = await cart.post(f"/add/{shop.product_ids[0]}/", content=body, headers=headers)
    problem = assert_problem(answer, 415, said)
    assert problem["detail"], problem
    assert (await cart.get("/api/cart")).json()["count"] == 0
    # As declared by most clients, it is read as before.
    for fine in ("application/json; charset=utf-8", "application/json; charset=UTF-8"):
        added = await cart.post(
            f"/add/{shop.product_ids[0]}/",
            content=b'{"quantity": 1}',
            headers={"content-type": fine},
        )
        assert added.status_code == 200, added.text
    identity = await cart.post(
        f"/add/{shop.product_ids[0]}/",
        content=b"quantity=1",
        headers={
            "content-type": "application/x-www-form-urlencoded",
            "content-encoding": "identity",
        },
    )
    assert identity.status_code == 200, identity.text


FORM = {"content-type": "application/x-www-form-urlencoded"}
MULTIPART = {"content-type": "multipart/form-data; boundary=b0undary"}


def multipart(*fields: tuple[str, str]) -> bytes:
    parts = [
        f'--b0undary\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        for name, value in fields
    ]
    return ("".join(parts) + "--b0undary--\r\n").encode()


async def test_a_field_given_twice_is_refused_wherever_it_comes_from(stack, shop):
    """Audit O12: a repeated field was read by where it came from: a form's first value (added
    1), a JSON object's last duplicate key (added 2), a query string's last (page 2). One rule
    now, at every service's edge: a field given more than once is a 422 naming it, and nothing
    is done. The same fields given once are read as before."""
    cart = await browser_of(stack, "cart", user_id=9)
    add = f"/add/{shop.product_ids[0]}/"
    for body, headers in (
        (b"quantity=1&quantity=2", FORM),
        (b"quantity=1&quantit%79=2", FORM),  # the same name, spelt differently
        (b'{"quantity":1,"quantity":2}', {"content-type": "application/json"}),
        (b'{"quantity":1,"\\u0071uantity":2}', {"content-type": "application/json"}),
        (multipart(("quantity", "1"), ("quantity", "2")), MULTIPART),
    ):
        problem = assert_problem(await cart.post(add, content=body, headers=headers), 422)
        assert problem["detail"] == "quantity: given more than once", (body, problem)
        assert names_field(problem, "quantity"), problem
    assert (await cart.get("/api/cart")).json()["count"] == 0
    products = await stack.browser("market").get(
        "/api/products?page=1&page=2&per_page=1", headers=JSON
    )
    assert names_field(assert_problem(products, 422, "page: given more than once"), "page")
    # Inside a JSON body too (an internal action's): not "whichever user_id came last".
    toggle = await internal_post(
        stack.client("likes"),
        "toggle",
        None,
        raw=b'{"user_id":1,"target_type":"post","target_id":42,"user_id":2}',
    )
    assert names_field(assert_problem(toggle, 422, "user_id"), "user_id")
    # Given once, each is read as before.
    assert (await cart.post(add, content=b"quantity=2", headers=FORM)).status_code == 200
    added = await cart.post(
        add, content=b'{"quantity":1}', headers={"content-type": "application/json"}
    )
    assert added.status_code == 200, added.text
    assert (await cart.get("/api/cart")).json()["count"] == 3
    page = await stack.browser("market").get("/api/products?page=1&per_page=1", headers=JSON)
    assert page.status_code == 200, page.text


async def test_a_multipart_form_that_is_not_utf8_reads_as_one_sentence(stack, shop):
    """Probe: a multipart field that is not UTF-8 was refused (400) with the message "the form
    is not valid UTF-8", which the error page put after the field's name: "Body the form is
    not valid UTF-8". It reads as a URL-encoded body's does."""
    cart = await browser_of(stack, "cart", user_id=9)
    body = b'--b0undary\r\nContent-Disposition: form-data; name="quantity"\r\n\r\n\xff\r\n'
    body += b"--b0undary--\r\n"
    add = f"/add/{shop.product_ids[0]}/"
    problem = assert_problem(await cart.post(add, content=body, headers=MULTIPART), 400)
    assert problem["detail"] == "body: is not valid UTF-8", problem
    page = await cart.post(add, content=body, headers={**MULTIPART, **HTML})
    assert page.status_code == 400
    assert "<li>Body is not valid UTF-8</li>" in page.text
    assert (await cart.get("/api/cart")).json()["count"] == 0


async def test_fields_that_are_lists_may_still_be_repeated(stack, shop):
    """What is a list stays one: a query parameter typed as a list (a contract's ``ids``), and
    the page admin's feature checkboxes (a browser sends one ``features`` per ticked box, after
    the form's empty hidden one)."""
    batch = await internal_get(stack.client("blog"), "page-configs-batch", {"ids": [1, 2, 3]})
    assert batch.status_code == 200, batch.text
    editor = await browser_of(stack, "blog", user_id=1)
    # The same id twice is a list with a repeat in it, not an ambiguity.
    pages = await internal_get(stack.client("blog"), "page-configs-batch", {"ids": [1, 1]})
    assert pages.status_code == 200, pages.text
    slug = "farm-shop"
    saved = await editor.post(
        f"/{slug}/admin/page-config/",
        content=b"features=&features=cart&features=market",
        headers=FORM,
    )
    assert saved.status_code == 200, saved.text
    assert saved.json()["features"]["cart"] is True, saved.json()
    assert saved.json()["features"]["market"] is True, saved.json()
    sent_as_multipart = await editor.post(
        f"/{slug}/admin/page-config/",
        content=multipart(("features", ""), ("features", "calendar")),
        headers=MULTIPART,
    )
    assert sent_as_multipart.status_code == 200, sent_as_multipart.text
    assert sent_as_multipart.json()["features"]["calendar"] is True
    # A scalar field of the same form is still refused when repeated.
    twice = await editor.post(
        f"/{slug}/admin/page-config/",
        content=b"features=&sumup_checkout_prefix=a-&sumup_checkout_prefix=b-",
        headers=FORM,
    )
    assert names_field(assert_problem(twice, 422, "sumup_checkout_prefix"), "sumup_checkout_prefix")


# A query parameter each service reads as one value (a page's or its contract's).
READ_ONCE_BY = {
    "cart": "page_post_id",
    "orders": "page",
    "market": "page",
    "blog": "page",
    "events": "page_id",
    "likes": "user_id",
    "relations": "parent_id",
}


@pytest.mark.parametrize("service", ALL_SERVICES)
async def test_a_query_parameter_given_twice_is_refused_by_every_service(stack, service):
    client = stack.browser(service) if service in PUBLIC else stack.client(service)
    name = READ_ONCE_BY[service]
    problem = assert_problem(await client.get(f"/?{name}=1&{name}=2", headers=JSON), 422)
    assert problem["detail"] == f"{name}: given more than once", problem
    assert names_field(problem, name), problem
    # Blank values count (``?page=&page=2`` is as ambiguous); distinct names do not.
    assert_problem(await client.get(f"/?{name}=&{name}=2", headers=JSON), 422, name)
    assert (await client.get(f"/?{name}=1&per_page=2", headers=JSON)).status_code != 422
    # The trace context a link may carry never fails a request (W3C Trace Context: an
    # ambiguous or invalid one is ignored, and a new trace starts): it answers as without it
    # (this was a 422, "traceparent: given more than once").
    plain = await client.get("/", headers=JSON)
    trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    for query in (f"traceparent={trace}&traceparent={trace}", "traceparent=a&traceparent=b"):
        traced = await client.get(f"/?{query}", headers=JSON)
        assert traced.status_code == plain.status_code != 422, (query, traced.text[:300])
    # A parameter no handler reads (a tracking link's) is ignored, repeated or not.
    unread = await client.get("/?utm_source=a&utm_source=b", headers=JSON)
    assert unread.status_code != 422, unread.text


async def test_a_repeated_parameter_nothing_reads_is_ignored(stack, shop):
    """Audit s20 A1: ``?utm=a&utm=b`` was a 422, though no handler reads ``utm`` (tracking
    links add such parameters). Only a parameter a handler reads as one value is ambiguous
    when repeated; one nothing reads is ignored, as any site does."""
    market = stack.browser("market")
    products = await market.get("/api/products?utm=a&utm=b&page=1&per_page=1&utm=c", headers=JSON)
    assert products.status_code == 200, products.text
    assert len(products.json()["items"]) == 1, products.json()
    page = await stack.browser("blog").get("/?utm_source=mail&utm_source=feed", headers=HTML)
    assert page.status_code == 200, page.text[:300]
    # A parameter the page reads stays refused when repeated, next to unread ones.
    refused = await market.get("/api/products?utm=a&utm=b&page=1&page=2", headers=JSON)
    problem = assert_problem(refused, 422)
    assert problem["detail"] == "page: given more than once", problem
    assert names_field(problem, "page"), problem


def names_a_form_repeats(template: str) -> set[str]:
    """The names one ``<form>`` of ``template`` may send more than once: a name given to more
    than one of its fields (or to one inside a loop), or a ``<select multiple>``'s."""
    repeated: set[str] = set()
    for form in re.findall(r"<form\b.*?</form>", template, re.DOTALL):
        fields = re.findall(r"<(?:input|select|textarea|button)\b[^>]*>", form)
        names = [re.search(r'\bname="([^"]+)"', field) for field in fields]
        given = [match.group(1) for match in names if match]
        repeated |= {name for name in given if given.count(name) > 1}
        for loop in re.findall(r"{%-? *for\b.*?{%-? *endfor", form, re.DOTALL):
            repeated |= set(re.findall(r'<(?:input|select)\b[^>]*\bname="([^"]+)"', loop))
        repeated |= {
            match.group(1)
            for field in fields
            if field.startswith("<select") and re.search(r"\bmultiple\b", field)
            if (match := re.search(r'\bname="([^"]+)"', field))
        }
    return repeated


def names_the_pages_repeat(service: str) -> set[str]:
    apps = Path(__file__).resolve().parents[2] / "apps"
    templates = [*(apps / service / "templates").rglob("*.html")]
    templates += (apps / "common" / "templates").rglob("*.html")
    return set().union(*(names_a_form_repeats(path.read_text()) for path in templates))


@pytest.mark.parametrize("service", PUBLIC)
async def test_no_form_of_a_service_trips_its_edge(stack, service):
    """A browser sends a name once per field that carries it: every name a service's pages
    (its own templates and the shared ones) may send more than once is one its edge reads as a
    list, so no form a person fills in is refused as ambiguous."""
    repeated = names_the_pages_repeat(service)
    assert repeated <= list_fields(stack.apps[service]), (service, repeated)
    if service == "blog":
        assert repeated == {"features"}  # the page admin's checkboxes: the scan sees them


def rows(server, service: str, sql: str) -> list[tuple]:
    with admin_connect(server, service) as connection:
        return connection.execute(sql).fetchall()


async def test_every_form_route_reads_a_multipart_form_as_it_reads_a_url_encoded_one(
    stack, clean_db
):
    """Audit s20 A2: the admin forms Litestar decodes into a struct (events' calendars,
    market's places) read a multipart body as no fields at all and named a field as missing,
    though it was sent; the forms read by ``read_form`` read it. One rule now for every form
    route: either encoding is read, field for field, and any other body is a 415 naming them."""
    events = await browser_of(stack, "events", user_id=1)
    created = await events.post(
        "/admin/calendars/",
        content=multipart(("name", "Cider tours"), ("slug", "cider-tours"), ("page_id", "5")),
        headers=MULTIPART,
    )
    assert created.status_code == 201, created.text
    assert (created.json()["slug"], created.json()["container_id"]) == ("cider-tours", 5)
    calendars = "SELECT slug, name FROM events.calendars ORDER BY id"
    made = rows(clean_db, "events", calendars)
    assert made[-1] == ("cider-tours", "Cider tours"), made
    market = await browser_of(stack, "market", user_id=1)
    place = await market.post(
        "/admin/market-places/",
        content=multipart(("name", "Veg stall"), ("slug", "veg-stall"), ("page_id", "1")),
        headers=MULTIPART,
    )
    assert place.status_code == 201, place.text
    renamed = await market.post(
        f"/admin/market-places/{place.json()['id']}/rename/",
        content=multipart(("name", "Vegetables")),
        headers=MULTIPART,
    )
    assert renamed.status_code == 200, renamed.text
    assert ("veg-stall", "Vegetables") in rows(
        clean_db, "market", "SELECT slug, name FROM market.market_places"
    )
    # A field given twice is refused as in a URL-encoded form, and nothing is made.
    twice = await events.post(
        "/admin/calendars/",
        content=multipart(("name", "A"), ("name", "B"), ("slug", "ab"), ("page_id", "5")),
        headers=MULTIPART,
    )
    assert names_field(assert_problem(twice, 422, "name: given more than once"), "name")
    # A body of another type is no form: refused naming the types a form is sent as.
    as_json = await events.post(
        "/admin/calendars/",
        json={"name": "Tastings", "slug": "tastings", "page_id": 5},
    )
    assert_problem(as_json, 415, "application/x-www-form-urlencoded", "multipart/form-data")
    assert rows(clean_db, "events", calendars) == made
    # CSRF protects a multipart form too: without the token, nothing is made.
    del events.headers["x-csrf-token"]
    forged = await events.post(
        "/admin/calendars/",
        content=multipart(("name", "Forged"), ("slug", "forged"), ("page_id", "5")),
        headers=MULTIPART,
    )
    assert_problem(forged, 403, "CSRF")
    assert rows(clean_db, "events", calendars) == made


async def test_a_csrf_token_sent_as_a_multipart_field_is_read_as_a_url_encoded_ones(
    stack, clean_db
):
    """A browser form with ``enctype="multipart/form-data"`` sends ``{{ csrf_input }}``'s
    hidden field as a part of its body, no header: it was refused (403, "Missing or out-of-date
    CSRF token"), as the identity middleware read the token from the header or a URL-encoded
    body only. It passes now as the URL-encoded form does; a wrong or absent token is still
    refused, and nothing is made."""
    events = await browser_of(stack, "events", user_id=1)
    token = events.headers.pop("x-csrf-token")
    calendars = "SELECT slug FROM events.calendars ORDER BY id"
    before = rows(clean_db, "events", calendars)
    # As a browser sends it: a quoted boundary, a file input's (empty) part before the token.
    browser_form = (
        b"--b0undary\r\n"
        b'Content-Disposition: form-data; name="picture"; filename=""\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n\r\n"
    ) + multipart((CSRF, token), ("name", "Cider tours"), ("slug", "cider-tours"), ("page_id", "5"))
    created = await events.post(
        "/admin/calendars/",
        content=browser_form,
        headers={"content-type": 'multipart/form-data; boundary="b0undary"'},
    )
    assert created.status_code == 201, created.text
    assert rows(clean_db, "events", calendars) == [*before, ("cider-tours",)]
    # The token last, as a template that writes it at the form's end sends it.
    last = await events.post(
        "/admin/calendars/",
        content=multipart(
            ("name", "Tastings"), ("slug", "tastings"), ("page_id", "5"), (CSRF, token)
        ),
        headers=MULTIPART,
    )
    assert last.status_code == 201, last.text
    made = rows(clean_db, "events", calendars)
    for fields in (
        [(CSRF, token[:-1] + ("0" if token[-1] != "0" else "1"))],  # wrong
        [(CSRF, "")],  # blank
        [],  # absent
        [(f"{CSRF}x", token)],  # under another name
    ):
        forged = await events.post(
            "/admin/calendars/",
            content=multipart(*fields, ("name", "Forged"), ("slug", "forged"), ("page_id", "5")),
            headers=MULTIPART,
        )
        assert_problem(forged, 403, "CSRF")
    # The token as a file part (a file input's, even with no file chosen) is not the field.
    as_file = (
        b"--b0undary\r\n"
        + f'Content-Disposition: form-data; name="{CSRF}"; filename=""\r\n'.encode()
        + b"Content-Type: application/octet-stream\r\n\r\n"
        + token.encode()
        + b"\r\n"
    ) + multipart(("name", "Forged"), ("slug", "forged"), ("page_id", "5"))
    forged = await events.post(
        "/admin/calendars/",
        content=as_file,
        headers={"content-type": 'multipart/form-data; boundary="b0undary"'},
    )
    assert_problem(forged, 403, "CSRF")
    # A body that is not multipart at all, though it says so, is refused the same way.
    broken = await events.post(
        "/admin/calendars/", content=f"{CSRF}={token}".encode(), headers=MULTIPART
    )
    assert_problem(broken, 403, "CSRF")
    assert rows(clean_db, "events", calendars) == made

"""market's public pages and API, with like states read through postgres_fdw from db_likes."""

from __future__ import annotations

import asyncio
import re
from contextlib import contextmanager

import psycopg
import pytest
from sqlalchemy.dialects import postgresql

from apps.common.app_factory import platform_of
from apps.market.service import liked_products_query, liked_slugs_query
from tests.conftest import admin_connect, in_process_stack
from tests.fdw_plans import explain_as_app
from tests.integration.commerce_fixtures import AnswerReplaced, AnswersLost, ServiceDown
from tests.integration.market_fixtures import seed_products
from tests.signed import internal_post

JSON = {"accept": "application/json"}
HTML = {"accept": "text/html"}


@pytest.fixture
async def market_stack(clean_db, credentials):
    async with in_process_stack(clean_db, credentials, ["market", "likes"]) as running:
        yield running


async def sign_in(client, user_id: int = 1) -> dict[str, str]:
    response = await client.get(f"/auth/dev-login?user_id={user_id}", headers=JSON)
    assert response.status_code == 200
    return {"x-csrf-token": response.json()["csrf_token"], **JSON}


async def like(likes_client, user_id: int, slug: str) -> None:
    payload = {"user_id": user_id, "target_type": "product", "target_slug": slug}
    assert (await internal_post(likes_client, "toggle", payload)).json() == {"liked": True}


@contextmanager
def likes_unreachable(server, consumer: str = "market"):
    """Point the consumer's FDW server at a closed port: the likes database is unreachable."""
    with admin_connect(server, consumer) as connection:
        connection.execute("ALTER SERVER likes_server OPTIONS (SET port '1')")
    try:
        yield
    finally:
        port = str(server.topology.fdw_address("likes")[1])
        with admin_connect(server, consumer) as connection:
            connection.execute(f"ALTER SERVER likes_server OPTIONS (SET port '{port}')")


async def test_product_list_json_is_paginated(market_stack, clean_db):
    slugs = seed_products(clean_db, 30)
    async with market_stack.browser("market") as browser:
        first = await browser.get("/api/products?per_page=12")
        third = await browser.get("/api/products?per_page=12&page=3")
    assert first.status_code == 200
    body = first.json()
    assert body["total"] == 30
    assert [item["slug"] for item in body["items"]] == slugs[:12]
    assert body["items"][0]["is_liked"] is None  # nobody signed in
    assert body["items"][0]["regular_price"] == "1.50"
    assert body["items"][0]["special_price"] == "1.00"
    assert body["items"][0]["market_place"]["container_id"] == 1
    assert [item["slug"] for item in third.json()["items"]] == slugs[24:]


async def test_the_product_pages_links_keep_the_page_size(market_stack, clean_db):
    seed_products(clean_db, 30)
    async with market_stack.browser("market") as browser:
        sized = await browser.get("/?per_page=12", headers={"accept": "text/html"})
        default = await browser.get("/", headers={"accept": "text/html"})
    assert sized.status_code == 200
    assert 'href="?page=3&amp;per_page=12"' in sized.text
    # The default size is not written out: page 2 of 24 is the last.
    assert 'href="?page=2"' in default.text
    assert "per_page" not in default.text


async def test_a_page_past_the_last_says_so_not_that_there_are_no_products(market_stack, clean_db):
    """?page=999 of 30 products said "30 products" and "No products." on one page (a link kept
    from when there were more, or typed): now it says which pages there are, and links the
    first."""
    seed_products(clean_db, 30)
    async with market_stack.browser("market") as browser:
        past = await browser.get("/?page=9&per_page=12", headers={"accept": "text/html"})
        empty_market = await browser.get("/?page=1&liked=false", headers={"accept": "text/html"})
    assert past.status_code == 200
    assert "No products." not in past.text
    assert (
        '<p class="muted" id="empty">There is no page 9: the products are on pages 1 to 3. '
        '<a href="?page=1&amp;per_page=12">Go to page 1</a>.</p>' in past.text
    )
    assert 'id="empty"' not in empty_market.text


async def test_like_states_follow_the_signed_in_user(market_stack, clean_db):
    slugs = seed_products(clean_db, 5)
    await like(market_stack.client("likes"), 1, slugs[1])
    await like(market_stack.client("likes"), 2, slugs[2])
    async with market_stack.browser("market") as browser:
        await sign_in(browser, 1)
        items = (await browser.get("/api/products")).json()["items"]
        product = (await browser.get(f"/api/products/{slugs[1]}")).json()
    assert [item["is_liked"] for item in items] == [False, True, False, False, False]
    assert product["is_liked"] is True


async def test_like_route_toggles_through_the_likes_service(market_stack, clean_db):
    slugs = seed_products(clean_db, 6)
    async with market_stack.browser("market") as browser:
        headers = await sign_in(browser, 7)
        for slug in (slugs[4], slugs[2]):
            response = await browser.post(f"/product/{slug}/like/", headers=headers)
            assert response.status_code == 200
            assert response.json() == {"liked": True}
        liked = (await browser.get("/api/products?liked=true")).json()
        unliked = await browser.post(f"/product/{slugs[4]}/like/", headers=headers)
        after = (await browser.get("/api/products?liked=true")).json()
    assert [item["slug"] for item in liked["items"]] == [slugs[2], slugs[4]]
    assert liked["total"] == 2
    assert all(item["is_liked"] for item in liked["items"])
    assert unliked.json() == {"liked": False}
    assert [item["slug"] for item in after["items"]] == [slugs[2]]
    with admin_connect(clean_db, "likes") as connection:
        rows = connection.execute(
            "SELECT user_id, target_slug, deleted_at IS NULL FROM likes.likes ORDER BY id"
        ).fetchall()
    assert rows == [(7, slugs[4], False), (7, slugs[2], True)]


async def test_like_form_redirects_back_and_needs_csrf(market_stack, clean_db):
    slugs = seed_products(clean_db, 3)
    async with market_stack.browser("market") as browser:
        token = (await sign_in(browser, 3))["x-csrf-token"]
        no_token = await browser.post(f"/product/{slugs[0]}/like/", data={"next": "/"})
        form = await browser.post(
            f"/product/{slugs[0]}/like/",
            data={"_csrf_token": token, "next": "/?page=1"},
            headers=HTML,
        )
        page = await browser.get("/", headers=HTML)
    assert no_token.status_code == 403
    assert form.status_code == 303
    assert form.headers["location"] == "/?page=1"
    assert f'data-slug="{slugs[0]}" data-liked="true"' in page.text


async def test_a_double_submitted_like_form_stays_liked(market_stack, clean_db):
    """The form says what the buyer wants (``liked``), so a double click, a retry or a resubmit
    after the back button leaves the product liked, never unliked again."""
    slugs = seed_products(clean_db, 2)
    async with market_stack.browser("market") as browser:
        token = (await sign_in(browser, 3))["x-csrf-token"]
        page = await browser.get("/", headers=HTML)
        assert 'name="liked" value="true"' in page.text
        posts = [
            browser.post(
                f"/product/{slugs[0]}/like/",
                data={"_csrf_token": token, "liked": "true", "next": "/"},
                headers=HTML,
            )
            for _ in range(3)
        ]
        answers = await asyncio.gather(*posts)
        assert {answer.status_code for answer in answers} == {303}
        again = await browser.post(
            f"/product/{slugs[0]}/like/",
            data={"_csrf_token": token, "liked": "true"},
            headers=JSON,
        )
        assert again.json() == {"liked": True}
        page = await browser.get("/", headers=HTML)
        assert 'name="liked" value="false"' in page.text  # the button now unlikes
        for _ in range(2):
            unliked = await browser.post(
                f"/product/{slugs[0]}/like/",
                data={"_csrf_token": token, "liked": "false"},
                headers=JSON,
            )
            assert unliked.json() == {"liked": False}
        bad = await browser.post(
            f"/product/{slugs[0]}/like/",
            data={"_csrf_token": token, "liked": "maybe"},
            headers=JSON,
        )
        assert bad.status_code == 422
        assert "liked" in bad.json()["detail"]
    with admin_connect(clean_db, "likes") as connection:
        active = connection.execute(
            "SELECT count(*) FROM likes.likes WHERE deleted_at IS NULL"
        ).fetchone()[0]
    assert active == 0


async def test_liking_needs_a_user_and_an_existing_product(market_stack, clean_db):
    seed_products(clean_db, 1)
    async with market_stack.browser("market") as browser:
        session = (await browser.get("/auth/session")).json()
        anonymous = await browser.post(
            "/product/item-000/like/", headers={"x-csrf-token": session["csrf_token"], **JSON}
        )
        headers = await sign_in(browser, 1)
        unknown = await browser.post("/product/no-such-thing/like/", headers=headers)
        liked_anonymous = await market_stack.browser("market").get("/api/products?liked=true")
    assert anonymous.status_code == 403
    assert anonymous.json()["detail"] == "Sign in to like products"
    assert unknown.status_code == 404
    assert unknown.headers["content-type"].startswith("application/problem+json")
    assert liked_anonymous.status_code == 403


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("page=0", "page"),
        ("per_page=1000", "per_page"),
        ("liked=maybe", "liked"),
        ("page=x", "page"),
    ],
)
async def test_bad_list_parameters_are_422_naming_them(market_stack, query, field):
    async with market_stack.browser("market") as browser:
        response = await browser.get(f"/api/products?{query}")
    assert response.status_code == 422
    assert field in response.json()["detail"]


async def test_a_liked_filter_that_is_not_true_or_false_is_said_in_words(market_stack):
    """Probe: ``?liked=maybe`` was refused with msgspec's words, "Expected `bool`, got `str`",
    which the error page showed alone (a message in capitals is shown as it is): the buyer was
    not told which field, nor what it takes."""
    async with market_stack.browser("market") as browser:
        response = await browser.get("/api/products?liked=maybe")
        page = await browser.get("/?liked=maybe", headers={"accept": "text/html"})
    assert response.status_code == 422
    assert response.json()["errors"] == [{"field": "liked", "message": "must be true or false"}]
    assert page.status_code == 422
    assert "<li>Liked must be true or false</li>" in page.text


async def test_a_market_place_that_does_not_exist_is_a_404_not_an_empty_listing(
    market_stack, clean_db
):
    """Probe (buyer): ``?market=`` naming no market place (a typo, one deleted since) was a
    200 "No products.", as for a market place with nothing for sale: the buyer could not tell
    which. It is a 404 naming it; an existing one with nothing (liked) is still an empty page."""
    seed_products(clean_db, 2)
    async with market_stack.browser("market") as browser:
        missing = await browser.get("/api/products?market=no-such-place")
        page = await browser.get("/?market=no-such-place", headers=HTML)
        known = await browser.get("/api/products?market=item-place-1")
    assert missing.status_code == 404, missing.text
    assert "no-such-place" in missing.json()["detail"]
    assert page.status_code == 404
    assert known.status_code == 200
    assert [item["slug"] for item in known.json()["items"]] == ["item-000"]


async def test_product_pages_render_and_unknown_is_404(market_stack, clean_db):
    slugs = seed_products(clean_db, 2)
    async with market_stack.browser("market") as browser:
        page = await browser.get(f"/product/{slugs[1]}/", headers=HTML)
        missing = await browser.get("/product/nope/", headers=HTML)
        missing_json = await browser.get("/api/products/nope")
    assert page.status_code == 200
    assert "Item 001" in page.text
    assert missing.status_code == 404
    assert "does not exist" in missing.text
    assert missing_json.headers["content-type"].startswith("application/problem+json")


async def test_likes_unreachable_degrades_lists_and_refuses_liked_filter(market_stack, clean_db):
    slugs = seed_products(clean_db, 4)
    await like(market_stack.client("likes"), 1, slugs[0])
    async with market_stack.browser("market") as browser:
        await sign_in(browser, 1)
        before = degraded_reads((await browser.get("/metrics")).text)
        with likes_unreachable(clean_db):
            listing = await browser.get("/api/products")
            html = await browser.get("/", headers=HTML)
            product = await browser.get(f"/product/{slugs[0]}/", headers=HTML)
            liked = await browser.get("/api/products?liked=true")
        healed = await browser.get("/api/products")
        after = degraded_reads((await browser.get("/metrics")).text)
    # /metrics counts the degraded reads (one per request that read likes while unreachable).
    assert after - before >= 4
    assert listing.status_code == 200
    assert listing.headers["x-rose-degraded"] == "likes"
    assert [item["is_liked"] for item in listing.json()["items"]] == [None] * 4
    assert listing.json()["degraded"] == ["likes"]
    assert html.status_code == 200
    assert html.headers["x-rose-degraded"] == "likes"
    assert 'id="degraded-notice"' in html.text
    assert product.status_code == 200
    assert 'id="degraded-notice"' in product.text
    assert liked.status_code == 503
    assert liked.headers["content-type"].startswith("application/problem+json")
    assert "likes" in liked.json()["detail"]
    assert "x-rose-degraded" not in healed.headers
    assert healed.json()["items"][0]["is_liked"] is True


def degraded_reads(metrics: str) -> float:
    found = re.findall(
        r'^rose_fdw_degraded_reads_total\{provider="likes",reason="[^"]+"\} (\S+)$',
        metrics,
        re.MULTILINE,
    )
    return sum(float(value) for value in found)


async def test_liked_listing_pushes_the_user_filter_down_in_one_remote_scan(
    market_stack, clean_db, credentials
):
    slugs = seed_products(clean_db, 40)
    for slug in slugs[::3]:
        await like(market_stack.client("likes"), 5, slug)
    await like(market_stack.client("likes"), 6, slugs[1])
    query = liked_products_query(5, market_slug=None, limit=24, offset=0)
    sql = str(query.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))
    nodes = explain_as_app(clean_db, credentials, "market", sql)
    remote = [node for node in nodes if node["Node Type"] == "Foreign Scan"]
    assert len(remote) == 1
    remote_sql = remote[0]["Remote SQL"]
    assert "user_id = 5" in remote_sql
    assert "target_type = 'product'" in remote_sql
    # One remote scan in all, not one per product.
    assert remote[0]["Actual Loops"] == 1
    assert remote[0]["Actual Rows"] == len(slugs[::3])


async def test_like_annotation_is_one_remote_query_with_an_array(clean_db, credentials):
    slugs = seed_products(clean_db, 30)

    query = liked_slugs_query(5, slugs[:24])
    sql = str(query.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))
    nodes = explain_as_app(clean_db, credentials, "market", sql)
    remote = [node for node in nodes if node["Node Type"] == "Foreign Scan"]
    assert len(remote) == 1
    assert remote[0]["Actual Loops"] == 1
    assert "target_slug = ANY (" in remote[0]["Remote SQL"]
    assert "user_id = 5" in remote[0]["Remote SQL"]


def test_market_cannot_write_likes_and_its_reader_sees_only_the_export_view(
    provisioned, credentials
):
    market_url = provisioned.topology.app_url("market", credentials)
    with (
        psycopg.connect(market_url) as market,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        market.execute(
            "INSERT INTO likes.likes (id, user_id, target_type, target_slug) "
            "VALUES (1, 1, 'product', 'x')"
        )
    reader_password = credentials.role_password("likes_ro_market")
    likes_url = provisioned.topology.app_url("likes", credentials)
    user_info = likes_url.split("//")[1].split("@")[0]
    reader_url = likes_url.replace(user_info, f"likes_ro_market:{reader_password}")
    with psycopg.connect(reader_url) as reader:
        assert reader.execute("SELECT count(*) FROM export.likes").fetchone() is not None
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            reader.execute("SELECT * FROM likes.likes")
    with (
        psycopg.connect(reader_url) as reader,
        pytest.raises(psycopg.errors.ReadOnlySqlTransaction),
    ):
        reader.execute("CREATE TEMP TABLE x (id int)")


async def test_a_like_likes_did_not_answer_says_what_the_buyer_can_do(market_stack, clean_db):
    """Probe (API, December 2026): liking while likes stalled told the buyer "likes toggle:
    timed out" (an internal call's name, nothing of their like), though likes had saved it.
    Now a lost answer is "Like not confirmed" (it may have been saved; the page shows whether
    it is), and likes down is "Like not saved" (try again in a minute); a browser gets the same
    as a themed page. The same words come from blog's like of a post (one contract)."""
    slug = seed_products(clean_db, 1)[0]
    client = platform_of(market_stack.apps["market"]).client
    async with market_stack.browser("market") as browser:
        headers = await sign_in(browser, 7)
        client.route("likes", AnswersLost(market_stack.apps["likes"], "toggle", lost=3))
        try:
            lost = await browser.post(f"/product/{slug}/like/", headers=headers)
        finally:
            client.route("likes", market_stack.apps["likes"])
        assert lost.status_code == 503, lost.text
        assert lost.json()["title"] == "Like not confirmed", lost.json()
        assert "toggle" not in lost.json()["detail"], lost.json()
        product = (await browser.get(f"/api/products/{slug}")).json()
        assert product["is_liked"] is True  # it was saved: the page says so

        client.route("likes", ServiceDown("likes"))
        try:
            down = await browser.post(f"/product/{slug}/like/", headers=headers)
            page = await browser.post(
                f"/product/{slug}/like/",
                headers={"x-csrf-token": headers["x-csrf-token"], "accept": "text/html"},
            )
        finally:
            client.route("likes", market_stack.apps["likes"])
        assert down.status_code == 503, down.text
        assert down.json()["title"] == "Like not saved", down.json()
        assert "cannot be reached" in down.json()["detail"], down.json()
        assert page.status_code == 503
        assert page.headers["content-type"].startswith("text/html")
        assert "Like not saved" in page.text
        assert (await browser.get(f"/api/products/{slug}")).json()["is_liked"] is True


async def test_a_like_answered_by_a_500_a_504_or_an_unreadable_body_is_not_confirmed(
    market_stack, clean_db
):
    """Probe (2026-12-06): likes saved the like, then answered a 500 (its answer lost after
    the commit), a gateway's 504, or a 2xx whose body is not its contract's: the buyer read
    "likes toggle: answered 500: ...", or for the 504 "Like not saved ... nothing was
    changed", though the like was saved each time. Now each is "Like not confirmed" (it may
    have been saved; the page shows), in the buyer's words."""
    slug = seed_products(clean_db, 1)[0]
    client = platform_of(market_stack.apps["market"]).client
    likes = market_stack.apps["likes"]
    answers = [(500, None), (504, None), (200, {"liked": "perhaps"})]
    async with market_stack.browser("market") as browser:
        headers = await sign_in(browser, 7)
        for turn, (status, body) in enumerate(answers):
            client.route("likes", AnswerReplaced(likes, "toggle", status, body))
            try:
                answer = await browser.post(f"/product/{slug}/like/", headers=headers)
            finally:
                client.route("likes", likes)
            assert answer.status_code == 503, (status, answer.text)
            problem = answer.json()
            assert problem["title"] == "Like not confirmed", (status, problem)
            assert "toggle" not in problem["detail"], (status, problem)
            assert "nothing was changed" not in problem["detail"], (status, problem)
            # Each was saved (likes flipped it): the page says so.
            product = (await browser.get(f"/api/products/{slug}")).json()
            assert product["is_liked"] is (turn % 2 == 0), (status, product)

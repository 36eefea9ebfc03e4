"""blog's public routes with likes and relations running in process: post lists and pages,
like toggles through likes, like states and attachments read through FDW, degradation, and
the page admin (page config form, market places attached through relations)."""

from __future__ import annotations

import asyncio
import re

import psycopg
import pytest

from tests.conftest import admin_connect, in_process_stack, lock_waiters
from tests.integration.blog_fixtures import (
    HTML,
    JSON,
    SANDBOX_KEY,
    anonymous_csrf,
    config_rows,
    insert_post,
    like_rows,
    provider_unreachable,
    recorded_statements,
    relation_rows,
    sign_in,
)
from tests.waiting import eventually


@pytest.fixture
async def running(clean_db, credentials):
    async with in_process_stack(clean_db, credentials, ["blog", "likes", "relations"]) as stack:
        yield stack


@pytest.fixture
async def browser(running):
    async with running.browser("blog") as client:
        yield client


def seed_posts(server, count: int) -> list[int]:
    """``count`` published posts, post-0 the newest; returns their ids, newest first."""
    return [insert_post(server, f"post-{n}", age_days=n + 1) for n in range(count)]


# -- reading ----------------------------------------------------------------------------------
async def test_post_list_shows_published_posts_newest_first_20_a_page(browser, clean_db):
    ids = seed_posts(clean_db, 23)
    insert_post(clean_db, "a-draft", status="draft")
    insert_post(clean_db, "farm-shop", title="Farm shop", is_page=True)

    first = await browser.get("/api/posts")
    assert first.status_code == 200
    body = first.json()
    assert (body["total"], body["pages"], body["page"], body["per_page"]) == (23, 2, 1, 20)
    assert [post["id"] for post in body["posts"]] == ids[:20]
    # Nobody is signed in: no like states, and no remote query was needed for them.
    assert {post["is_liked"] for post in body["posts"]} == {None}
    assert "X-Rose-Degraded" not in first.headers

    second = (await browser.get("/api/posts", params={"page": 2})).json()
    assert [post["slug"] for post in second["posts"]] == ["post-20", "post-21", "post-22"]
    beyond = (await browser.get("/api/posts", params={"page": 5})).json()
    assert beyond["posts"] == []

    html = await browser.get("/", headers=HTML)
    assert html.status_code == 200
    assert html.headers["content-type"].startswith("text/html")
    assert "post-0" in html.text
    assert "a-draft" not in html.text
    assert 'href="/farm-shop/"' in html.text  # pages are linked, not listed as posts
    assert 'href="/?page=2"' in html.text


async def test_a_page_past_the_last_says_so_not_that_there_are_no_posts(browser, clean_db):
    """?page=9 of 23 posts said "23 posts" and "No posts here." (a link kept from when there
    were more, or typed): it says which pages there are and links the first, as market's list
    does (probe a11y)."""
    seed_posts(clean_db, 23)
    past = await browser.get("/?page=9", headers=HTML)
    assert past.status_code == 200
    assert "No posts here." not in past.text
    assert (
        '<p class="muted" id="empty">There is no page 9: the posts are on pages 1 to 2. '
        '<a href="/?page=1">Go to page 1</a>.</p>' in past.text
    )


async def test_a_blog_without_posts_says_so(browser, clean_db):
    html = await browser.get("/", headers=HTML)
    assert '<p class="muted" id="empty">No posts here.</p>' in html.text


@pytest.mark.parametrize("page", ["0", "-1", "two"])
async def test_bad_page_number_is_422_naming_page(browser, page):
    for path in ("/api/posts", "/"):
        response = await browser.get(path, params={"page": page}, headers=JSON)
        assert response.status_code == 422
        assert response.headers["content-type"].startswith("application/problem+json")
        assert "page" in response.json()["detail"]


async def test_a_malformed_slug_names_nothing_a_404_naming_slug(browser):
    token = await sign_in(browser)
    for method, path in [
        ("GET", "/Not_A_Slug/"),
        ("GET", "/api/posts/Not_A_Slug"),
        ("POST", "/Not_A_Slug/like/"),
        ("GET", "/Not_A_Slug/admin/page-config/"),
    ]:
        response = await browser.request(method, path, headers={**JSON, "X-CSRF-Token": token})
        assert response.status_code == 404, (method, path)
        assert response.headers["content-type"].startswith("application/problem+json")
        assert "its slug is not in the expected form" in response.json()["detail"]


async def test_a_post_or_page_is_shown_unknown_and_draft_are_404(browser, clean_db):
    post_id = insert_post(clean_db, "jam-day", title="Jam day", body="Forty jars.\n\nSticky.")
    insert_post(clean_db, "secret-plans", status="draft")

    api = await browser.get("/api/posts/jam-day")
    assert api.status_code == 200
    assert api.json()["id"] == post_id
    assert api.json()["body"] == "Forty jars.\n\nSticky."
    html = await browser.get("/jam-day/", headers=HTML)
    assert html.status_code == 200
    assert "<h1>Jam day</h1>" in html.text

    for slug in ("secret-plans", "no-such-post"):
        for path in (f"/{slug}/", f"/api/posts/{slug}"):
            response = await browser.get(path, headers=JSON)
            assert response.status_code == 404
            assert response.headers["content-type"].startswith("application/problem+json")
        page = await browser.get(f"/{slug}/", headers=HTML)
        assert page.status_code == 404
        assert page.headers["content-type"].startswith("text/html")


# -- likes ------------------------------------------------------------------------------------
async def test_like_toggle_reaches_likes_and_shows_in_the_list(browser, clean_db):
    ids = seed_posts(clean_db, 3)
    token = await sign_in(browser, user_id=7)
    headers = {**JSON, "X-CSRF-Token": token}

    liked = await browser.post("/post-1/like/", headers=headers)
    assert liked.status_code == 200
    assert liked.json() == {"liked": True}
    assert like_rows(clean_db) == [(7, "post", ids[1], True)]

    listed = (await browser.get("/api/posts")).json()["posts"]
    assert [(post["slug"], post["is_liked"]) for post in listed] == [
        ("post-0", False),
        ("post-1", True),
        ("post-2", False),
    ]
    assert (await browser.get("/api/posts/post-1")).json()["is_liked"] is True
    html = await browser.get("/", headers=HTML)
    assert 'data-slug="post-1" data-liked="true"' in html.text

    unliked = await browser.post("/post-1/like/", headers=headers)
    assert unliked.json() == {"liked": False}
    assert like_rows(clean_db) == [(7, "post", ids[1], False)]
    assert (await browser.get("/api/posts/post-1")).json()["is_liked"] is False


async def test_a_double_submitted_post_like_stays_liked(browser, clean_db):
    """As for products: the form sends the state it wants, so sending it twice changes
    nothing the second time."""
    ids = seed_posts(clean_db, 1)
    token = await sign_in(browser, user_id=7)
    page = await browser.get("/post-0/", headers=HTML)
    assert 'name="liked" value="true"' in page.text
    for _ in range(2):
        form = await browser.post(
            "/post-0/like/", data={"liked": "true"}, headers={**HTML, "X-CSRF-Token": token}
        )
        assert form.status_code == 303
    assert like_rows(clean_db) == [(7, "post", ids[0], True)]
    page = await browser.get("/post-0/", headers=HTML)
    assert 'name="liked" value="false"' in page.text


async def test_like_form_post_redirects_back(browser, clean_db):
    seed_posts(clean_db, 1)
    token = await sign_in(browser)
    form = await browser.post("/post-0/like/", headers={**HTML, "X-CSRF-Token": token})
    assert form.status_code == 303
    assert form.headers["location"] == "/post-0/"
    back_to_list = await browser.post(
        "/post-0/like/",
        data={"next": "/?page=1"},
        headers={**HTML, "X-CSRF-Token": token},
    )
    assert back_to_list.status_code == 303
    assert back_to_list.headers["location"] == "/?page=1"
    offsite = await browser.post(
        "/post-0/like/",
        data={"next": "https://evil.example/"},
        headers={**HTML, "X-CSRF-Token": token},
    )
    assert offsite.headers["location"] == "/post-0/"
    # Probe (buyer): a way back of 200 KB was sent as the 303's Location, which a browser
    # does not follow (the like done, the buyer left on a blank answer): no page of ours has
    # an address that long.
    endless = await browser.post(
        "/post-0/like/",
        data={"next": "/?q=" + "x" * 200_000},
        headers={**HTML, "X-CSRF-Token": token},
    )
    assert endless.status_code == 303
    assert endless.headers["location"] == "/post-0/"


async def test_a_client_that_prefers_nothing_gets_json_as_from_market(browser, clean_db):
    """One rule for every service (apps.common.web.wants_html): a page only for a client that
    asks for HTML. curl's Accept: */* got blog's 303 and market's JSON for the same toggle."""
    [post_id] = seed_posts(clean_db, 1)
    token = await sign_in(browser, 7)
    for accept in ({"Accept": "*/*"}, {}):
        liked = await browser.post("/post-0/like/", headers={**accept, "X-CSRF-Token": token})
        assert liked.status_code == 200, accept
        assert liked.headers["content-type"].startswith("application/json")
        assert "liked" in liked.json()
    assert like_rows(clean_db) == [(7, "post", post_id, False)]


async def test_liking_needs_a_signed_in_user_a_csrf_token_and_a_published_post(browser, clean_db):
    seed_posts(clean_db, 1)
    insert_post(clean_db, "a-draft", status="draft")
    anonymous = await browser.post(
        "/post-0/like/", headers={**JSON, "X-CSRF-Token": await anonymous_csrf(browser)}
    )
    assert anonymous.status_code == 403
    assert "Sign in" in anonymous.json()["detail"]

    token = await sign_in(browser)
    without_token = await browser.post("/post-0/like/", headers=JSON)
    assert without_token.status_code == 403
    assert "CSRF" in without_token.json()["detail"]
    for slug in ("a-draft", "no-such-post"):
        missing = await browser.post(f"/{slug}/like/", headers={**JSON, "X-CSRF-Token": token})
        assert missing.status_code == 404
    assert like_rows(clean_db) == []


async def test_like_states_of_a_page_come_from_one_remote_query_with_an_array(
    running, browser, clean_db, credentials
):
    ids = seed_posts(clean_db, 25)
    token = await sign_in(browser, user_id=3)
    for slug in ("post-2", "post-7"):
        await browser.post(f"/{slug}/like/", headers={**JSON, "X-CSRF-Token": token})

    with recorded_statements(running.apps["blog"]) as statements:
        listed = (await browser.get("/api/posts")).json()["posts"]
    assert [post["id"] for post in listed if post["is_liked"]] == [ids[2], ids[7]]
    remote = [(sql, params) for sql, params in statements if "likes.likes" in sql]
    assert len(remote) == 1, remote

    # The statement exactly as the app ran it: one foreign scan, the page's ids as one array.
    sql, params = remote[0]
    with psycopg.connect(clean_db.topology.app_url("blog", credentials)) as connection:
        plan = connection.execute(
            f"EXPLAIN (ANALYZE, VERBOSE, FORMAT JSON) {sql}", params
        ).fetchone()[0]
    nodes, pending = [], [plan[0]["Plan"]]
    while pending:
        node = pending.pop()
        nodes.append(node)
        pending.extend(node.get("Plans", []))
    scans = [node for node in nodes if node["Node Type"] == "Foreign Scan"]
    assert len(scans) == 1
    assert scans[0]["Actual Loops"] == 1
    assert "target_id = ANY (" in scans[0]["Remote SQL"]
    assert "user_id = 3" in scans[0]["Remote SQL"]


async def test_likes_unreachable_degrades_to_200_with_header_and_notice(browser, clean_db):
    seed_posts(clean_db, 2)
    insert_post(clean_db, "farm-shop", is_page=True)
    await sign_in(browser)
    with provider_unreachable(clean_db, "blog", "likes_server"):
        api = await browser.get("/api/posts")
        html = await browser.get("/", headers=HTML)
        post = await browser.get("/post-0/", headers=HTML)
        api_post = await browser.get("/api/posts/post-0")
    for response in (api, html, post, api_post):
        assert response.status_code == 200
        assert response.headers["X-Rose-Degraded"] == "likes"
    assert {item["is_liked"] for item in api.json()["posts"]} == {None}
    assert api.json()["degraded"] == ["likes"]
    assert api_post.json()["is_liked"] is None
    for page in (html, post):
        assert 'id="degraded-likes"' in page.text
        assert "Likes are unavailable right now" in page.text
        assert 'class="like"' not in page.text  # no like button without a known state

    healthy = await browser.get("/api/posts")
    assert "X-Rose-Degraded" not in healthy.headers
    assert {item["is_liked"] for item in healthy.json()["posts"]} == {False}


# -- page admin -------------------------------------------------------------------------------
async def test_editor_updates_the_page_config_through_the_admin_form(browser, clean_db):
    page_id = insert_post(clean_db, "farm-shop", title="Farm shop", is_page=True)
    token = await sign_in(browser, user_id=1)

    form = await browser.get("/farm-shop/admin/page-config/", headers=HTML)
    assert form.status_code == 200
    assert 'id="page-config-form"' in form.text
    assert config_rows(clean_db) == []  # looking does not create

    saved = await browser.post(
        "/farm-shop/admin/page-config/",
        data={
            "features": ["cart", "market"],
            "sumup_merchant_code": "MSANDBOX1",
            "sumup_checkout_prefix": "rose-farm-",
            "sumup_api_key": SANDBOX_KEY,
        },
        headers={**HTML, "X-CSRF-Token": token},
    )
    assert saved.status_code == 303
    assert saved.headers["location"] == "/farm-shop/admin/page-config/?saved=1"
    assert config_rows(clean_db) == [
        (
            "page",
            page_id,
            {"cart": True, "market": True, "calendar": False},
            "MSANDBOX1",
            SANDBOX_KEY,
            "rose-farm-",
            True,
        )
    ]

    shown = await browser.get(saved.headers["location"], headers=HTML)
    assert 'id="saved"' in shown.text
    assert "SumUp is configured for this page." in shown.text
    assert 'value="MSANDBOX1"' in shown.text
    assert SANDBOX_KEY not in shown.text

    # A blank key keeps the stored one; a blank prefix clears it; unticking turns features off.
    await browser.post(
        "/farm-shop/admin/page-config/",
        data={
            "features": ["", "calendar"],
            "sumup_merchant_code": "MSANDBOX1",
            "sumup_checkout_prefix": "",
        },
        headers={**HTML, "X-CSRF-Token": token},
    )
    assert config_rows(clean_db)[0][2:6] == (
        {"cart": False, "market": False, "calendar": True},
        "MSANDBOX1",
        SANDBOX_KEY,
        None,
    )
    as_json = await browser.post(
        "/farm-shop/admin/page-config/",
        data={"clear_sumup_api_key": "1", "sumup_merchant_code": "MSANDBOX1"},
        headers={**JSON, "X-CSRF-Token": token},
    )
    assert as_json.status_code == 200
    assert as_json.json()["sumup_configured"] is False
    assert "sumup_api_key" not in as_json.text
    assert config_rows(clean_db)[0][4] is None


async def test_a_page_config_post_that_is_not_the_form_changes_nothing(browser, clean_db):
    """Only the admin form's own fields change a config: a body that is not a form is refused
    (415, naming its type), and a field the request does not carry is left as it is (a JSON
    body read as an empty form used to turn every feature off and clear the merchant)."""
    insert_post(clean_db, "farm-shop", title="Farm shop", is_page=True)
    token = await sign_in(browser, user_id=1)
    saved = await browser.post(
        "/farm-shop/admin/page-config/",
        data={
            "features": ["", "cart"],
            "sumup_merchant_code": "MSANDBOX1",
            "sumup_checkout_prefix": "rose-farm-",
            "sumup_api_key": SANDBOX_KEY,
        },
        headers={**HTML, "X-CSRF-Token": token},
    )
    assert saved.status_code == 303
    before = config_rows(clean_db)

    for accept in (JSON, HTML):
        refused = await browser.post(
            "/farm-shop/admin/page-config/",
            json={"features": ["market"]},
            headers={**accept, "X-CSRF-Token": token},
        )
        assert refused.status_code == 415
        assert "application/json" in refused.text
    assert refused.headers["content-type"].startswith("text/html")
    bare = await browser.post(
        "/farm-shop/admin/page-config/",
        data={"unrelated": "x"},
        headers={**JSON, "X-CSRF-Token": token},
    )
    assert bare.status_code == 200
    assert config_rows(clean_db) == before


def retired_keys(server) -> list[tuple]:
    with admin_connect(server, "blog") as connection:
        return connection.execute(
            "SELECT sumup_merchant_code, sumup_api_key FROM blog.retired_sumup_keys "
            "ORDER BY sumup_merchant_code"
        ).fetchall()


async def test_a_new_merchant_needs_its_own_key_so_a_stale_form_loses_no_key(browser, clean_db):
    """The stored key is the stored merchant's: a form naming another merchant without a key
    is refused, nothing changed. Before, the key stayed under the new merchant's code, so an
    editor saving a form opened before another one switched merchants paired the old merchant
    with the new one's key and the trigger dropped the old merchant's kept key: the only copy
    its orders are settled and refunded with."""
    insert_post(clean_db, "farm-shop", title="Farm shop", is_page=True)
    token = await sign_in(browser, user_id=1)
    headers = {**HTML, "X-CSRF-Token": token}

    async def save(code: str, key: str = "") -> object:
        return await browser.post(
            "/farm-shop/admin/page-config/",
            data={"features": [""], "sumup_merchant_code": code, "sumup_api_key": key},
            headers=headers,
        )

    assert (await save("MONE111", "sup_sk_one_key")).status_code == 303
    stale = await browser.get("/farm-shop/admin/page-config/", headers=HTML)  # editor B opens it
    assert 'value="MONE111"' in stale.text
    assert (await save("MTWO222", "sup_sk_two_key")).status_code == 303  # editor A switches
    assert retired_keys(clean_db) == [("MONE111", "sup_sk_one_key")]

    for code in ("MONE111", "MTHREE33"):  # B's stale form; a new merchant without its key
        refused = await save(code)
        assert refused.status_code == 422
        message = refused.text.split('id="error-sumup_api_key">')[1].split("</span>")[0]
        assert f"merchant {code}" in message
        assert "MTWO222" in message
        assert "sup_sk_" not in refused.text
    assert config_rows(clean_db)[0][3:5] == ("MTWO222", "sup_sk_two_key")
    assert retired_keys(clean_db) == [("MONE111", "sup_sk_one_key")]

    api = await browser.post(
        "/farm-shop/admin/page-config/",
        data={"sumup_merchant_code": "MONE111"},
        headers={**JSON, "X-CSRF-Token": token},
    )
    assert api.status_code == 422
    assert api.json()["errors"][0]["field"] == "sumup_api_key"
    # Naming the merchant with its key, or without any key, is fine.
    assert (await save("MONE111", "sup_sk_one_key")).status_code == 303
    assert retired_keys(clean_db) == [("MTWO222", "sup_sk_two_key")]
    # Removing the merchant removes its key (kept for its orders): none is left over for the
    # next merchant named.
    assert (await save("")).status_code == 303
    assert config_rows(clean_db)[0][3:5] == (None, None)
    assert retired_keys(clean_db) == [("MONE111", "sup_sk_one_key"), ("MTWO222", "sup_sk_two_key")]
    cleared = await browser.post(
        "/farm-shop/admin/page-config/",
        data={"sumup_merchant_code": "MTWO222", "clear_sumup_api_key": "1"},
        headers=headers,
    )
    assert cleared.status_code == 303
    assert config_rows(clean_db)[0][3:5] == ("MTWO222", None)


async def test_a_key_given_before_its_merchant_survives_a_save_naming_none(browser, clean_db):
    """Review 6 L4: "removing the merchant removes its key" also took a key an editor gave
    before naming any merchant (the form's blank merchant reads as "none"), on any later save
    of the form (a feature ticked), in silence. Only a merchant that goes takes its key."""
    insert_post(clean_db, "farm-shop", title="Farm shop", is_page=True)
    token = await sign_in(browser, user_id=1)
    headers = {**HTML, "X-CSRF-Token": token}

    async def save(code: str, key: str = "") -> object:
        return await browser.post(
            "/farm-shop/admin/page-config/",
            data={"features": ["cart"], "sumup_merchant_code": code, "sumup_api_key": key},
            headers=headers,
        )

    assert (await save("", "sup_sk_first_key")).status_code == 303
    assert config_rows(clean_db)[0][3:5] == (None, "sup_sk_first_key")
    assert (await save("")).status_code == 303  # a feature ticked, the rest as shown
    assert config_rows(clean_db)[0][3:5] == (None, "sup_sk_first_key")
    assert (await save("MONE111")).status_code == 303  # the merchant it was given for
    assert config_rows(clean_db)[0][3:5] == ("MONE111", "sup_sk_first_key")
    assert (await save("")).status_code == 303  # that merchant goes, and its key
    assert config_rows(clean_db)[0][3:5] == (None, None)


def form_fields(page_html: str) -> dict[str, list[str]]:
    """What a browser sends for the page's config form as it is shown: every input's value,
    a checkbox's only when ticked (the key input is empty: the key is never shown)."""
    form = page_html.split('id="page-config-form"')[1].split("</form>")[0]
    fields: dict[str, list[str]] = {}
    for tag in re.findall(r"<input[^>]*>", form):
        name = re.search(r'name="([^"]*)"', tag)
        value = re.search(r'value="([^"]*)"', tag)
        if name is None or ('type="checkbox"' in tag and "checked" not in tag):
            continue
        fields.setdefault(name.group(1), []).append(value.group(1) if value else "")
    return fields


async def test_a_form_opened_before_another_editor_saved_changes_nothing(browser, clean_db):
    """Two editors with the page's settings open: the second to save is told the settings
    changed since they opened them (409, the form showing what is stored now), instead of
    silently putting back every field the first one changed."""
    insert_post(clean_db, "farm-shop", title="Farm shop", is_page=True)
    token = await sign_in(browser, user_id=1)
    headers = {**HTML, "X-CSRF-Token": token}
    first = await browser.post(
        "/farm-shop/admin/page-config/",
        data={
            "features": ["", "cart", "market", "calendar"],
            "sumup_merchant_code": "MSANDBOX1",
            "sumup_checkout_prefix": "farm-",
            "sumup_api_key": SANDBOX_KEY,
        },
        headers=headers,
    )
    assert first.status_code == 303
    shown = (await browser.get("/farm-shop/admin/page-config/", headers=HTML)).text
    editor_a, editor_b = form_fields(shown), form_fields(shown)

    editor_a["features"] = ["", "market", "calendar"]  # A switches the page cart off
    assert (
        await browser.post("/farm-shop/admin/page-config/", data=editor_a, headers=headers)
    ).status_code == 303
    assert config_rows(clean_db)[0][2]["cart"] is False

    editor_b["sumup_checkout_prefix"] = ["shop-"]  # B, from the form opened before, the prefix
    stale = await browser.post("/farm-shop/admin/page-config/", data=editor_b, headers=headers)
    assert stale.status_code == 409
    assert "changed since you opened" in stale.text
    assert config_rows(clean_db)[0][2]["cart"] is False
    assert config_rows(clean_db)[0][5] == "farm-"
    # The page B gets back shows what is stored now: saved from it, B's change goes through.
    again = form_fields(stale.text)
    assert "cart" not in again["features"]
    again["sumup_checkout_prefix"] = ["shop-"]
    assert (
        await browser.post("/farm-shop/admin/page-config/", data=again, headers=headers)
    ).status_code == 303
    assert config_rows(clean_db)[0][2]["cart"] is False
    assert config_rows(clean_db)[0][5] == "shop-"

    api = await browser.post(
        "/farm-shop/admin/page-config/",
        data=editor_b,
        headers={**JSON, "X-CSRF-Token": token},
    )
    assert api.status_code == 409
    assert api.headers["content-type"].startswith("application/problem+json")


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"sumup_merchant_code": "not valid"}, "sumup_merchant_code"),
        ({"sumup_checkout_prefix": "x" * 41}, "sumup_checkout_prefix"),
        ({"sumup_api_key": "tiny"}, "sumup_api_key"),
        # A new key and the box that removes it: neither is guessed (the key was dropped).
        ({"sumup_api_key": "sup_sk_new_key_1", "clear_sumup_api_key": "1"}, "sumup_api_key"),
        ({"features": "colour"}, "features.colour"),
    ],
)
async def test_bad_admin_form_input_is_422_naming_the_field(browser, clean_db, data, field):
    insert_post(clean_db, "farm-shop", is_page=True)
    token = await sign_in(browser)
    page = await browser.post(
        "/farm-shop/admin/page-config/", data=data, headers={**HTML, "X-CSRF-Token": token}
    )
    assert page.status_code == 422
    # One message, beside the field, in words (not the field's programmatic name).
    name = field.split(".")[0]
    assert page.text.count('class="field-error"') == 1
    message = page.text.split(f'id="error-{name}">')[1].split("</span>")[0]
    assert field not in message
    api = await browser.post(
        "/farm-shop/admin/page-config/", data=data, headers={**JSON, "X-CSRF-Token": token}
    )
    assert api.status_code == 422
    assert api.headers["content-type"].startswith("application/problem+json")
    assert field in api.json()["detail"]
    assert config_rows(clean_db) == []


async def test_the_admin_is_for_editors_only(browser, clean_db):
    insert_post(clean_db, "farm-shop", is_page=True)
    anonymous_token = await anonymous_csrf(browser)
    paths = [
        "/farm-shop/admin/page-config/",
        "/farm-shop/admin/menu-items/attach/",
        "/farm-shop/admin/menu-items/detach/",
    ]
    anonymous = await browser.get(paths[0], headers=JSON)
    assert anonymous.status_code == 403
    for path in paths:
        posted = await browser.post(
            path,
            data={"market_place_id": "3", "sumup_merchant_code": "MSANDBOX1"},
            headers={**JSON, "X-CSRF-Token": anonymous_token},
        )
        assert posted.status_code == 403

    token = await sign_in(browser, user_id=2)  # signed in, not an editor
    assert (await browser.get(paths[0], headers=JSON)).status_code == 403
    html = await browser.get(paths[0], headers=HTML)
    assert html.status_code == 403
    assert "Only editors" in html.text
    for path in paths:
        posted = await browser.post(
            path,
            data={"market_place_id": "3", "sumup_merchant_code": "MSANDBOX1"},
            headers={**JSON, "X-CSRF-Token": token},
        )
        assert posted.status_code == 403
        assert "Only editors" in posted.json()["detail"]
    assert config_rows(clean_db) == []


async def test_admin_of_a_post_that_is_not_a_page_is_404(browser, clean_db):
    insert_post(clean_db, "jam-day")
    await sign_in(browser)
    response = await browser.get("/jam-day/admin/page-config/", headers=JSON)
    assert response.status_code == 404
    assert "no page" in response.json()["detail"]


async def test_attach_and_detach_market_places_from_the_admin(browser, clean_db):
    page_id = insert_post(clean_db, "market-hall", title="Market hall", is_page=True)
    # Market places 4 and 9 exist in market (blog attaches only those, read through FDW).
    with admin_connect(clean_db, "market") as connection:
        connection.execute(
            "INSERT INTO market.market_places (id, slug, name, container_type, container_id) "
            "VALUES (4, 'stalls', 'Stalls', 'page', %s), (9, 'cheese', 'Cheese', 'page', %s)",
            (page_id, page_id),
        )
    token = await sign_in(browser)
    form_headers = {**HTML, "X-CSRF-Token": token}

    attached = await browser.post(
        "/market-hall/admin/menu-items/attach/",
        data={"market_place_id": "4", "label": "Saturday stalls"},
        headers=form_headers,
    )
    assert attached.status_code == 303
    assert attached.headers["location"] == "/market-hall/admin/page-config/"
    assert relation_rows(clean_db) == [("page", page_id, "market", 4, "Saturday stalls", True)]
    await browser.post(
        "/market-hall/admin/menu-items/attach/", data={"market_place_id": "9"}, headers=form_headers
    )
    # Attaching again is a no-op in relations.
    await browser.post(
        "/market-hall/admin/menu-items/attach/", data={"market_place_id": "4"}, headers=form_headers
    )
    assert relation_rows(clean_db) == [
        ("page", page_id, "market", 4, "Saturday stalls", True),
        ("page", page_id, "market", 9, "Cheese", True),  # no label given: market's name
    ]

    shown = await browser.get("/market-hall/", headers=HTML)
    assert shown.status_code == 200
    assert 'data-market-place-id="4"' in shown.text
    assert "Stalls" in shown.text  # market's name of it
    assert 'data-market-place-id="9"' in shown.text
    api = (await browser.get("/api/posts/market-hall")).json()
    assert [(item["child_id"], item["label"], item["name"]) for item in api["markets"]] == [
        (4, "Saturday stalls", "Stalls"),
        (9, "Cheese", "Cheese"),
    ]
    admin = await browser.get("/market-hall/admin/page-config/", headers=HTML)
    assert 'data-market-place-id="4"' in admin.text

    detached = await browser.post(
        "/market-hall/admin/menu-items/detach/",
        data={"market_place_id": "4", "label": "Saturday stalls"},
        headers=form_headers,
    )
    assert detached.status_code == 303
    assert relation_rows(clean_db) == [
        ("page", page_id, "market", 4, "Saturday stalls", False),
        ("page", page_id, "market", 9, "Cheese", True),
    ]
    as_json = await browser.post(
        "/market-hall/admin/menu-items/detach/",
        data={"market_place_id": "9"},
        headers={**JSON, "X-CSRF-Token": token},
    )
    assert as_json.json() == {"detached": True}
    assert [row[-1] for row in relation_rows(clean_db)] == [False, False]
    shown = await browser.get("/market-hall/", headers=HTML)
    assert "data-market-place-id" not in shown.text


async def test_a_page_shows_only_the_attachments_its_features_switch_on(browser, clean_db):
    """Probe: the admin's "Market: show attached market places" and "Calendars: show attached
    calendars" were saved and then read by nothing: a page whose editor unticked them showed
    its market places and calendars to every buyer all the same. A page without a config, or
    whose config never said, shows them as before."""
    page_id = insert_post(clean_db, "market-hall", title="Market hall", is_page=True)
    with admin_connect(clean_db, "market") as connection:
        connection.execute(
            "INSERT INTO market.market_places (id, slug, name, container_type, container_id) "
            "VALUES (4, 'stalls', 'Stalls', 'page', %s)",
            (page_id,),
        )
    with admin_connect(clean_db, "relations") as connection:
        connection.execute(
            "INSERT INTO relations.container_relations "
            "(parent_type, parent_id, child_type, child_id, label, sort_order) "
            "VALUES ('page', %s, 'market', 4, 'Stalls', 0), "
            "('page', %s, 'calendar', 7, 'Farm tours', 1)",
            (page_id, page_id),
        )

    async def shown() -> tuple[list[int], list[int], str]:
        api = (await browser.get("/api/posts/market-hall")).json()
        page = await browser.get("/market-hall/", headers=HTML)
        assert page.status_code == 200
        return (
            [item["child_id"] for item in api["markets"]],
            [item["child_id"] for item in api["calendars"]],
            page.text,
        )

    markets, calendars, _ = await shown()
    assert (markets, calendars) == ([4], [7])  # no config: as before

    token = await sign_in(browser, user_id=1)
    # Review-2 M2: the admin page showed a page without a config (or whose config never said)
    # with its boxes unticked, though the page showed them; saving the form as shown, for a
    # checkout prefix, switched them off. Its boxes are ticked unless the config says off.
    admin = await browser.get("/market-hall/admin/page-config/", headers=HTML)
    ticked = re.findall(r'name="features" value="(\w+)" checked', admin.text)
    assert sorted(ticked) == ["calendar", "cart", "market"], ticked
    as_shown = await browser.post(
        "/market-hall/admin/page-config/",
        data={"features": ["", *ticked], "sumup_checkout_prefix": "HALL"},
        headers={**HTML, "X-CSRF-Token": token},
    )
    assert as_shown.status_code == 303, as_shown.text
    markets, calendars, _ = await shown()
    assert (markets, calendars) == ([4], [7])

    saved = await browser.post(
        "/market-hall/admin/page-config/",
        data={"features": ["", "calendar"]},
        headers={**HTML, "X-CSRF-Token": token},
    )
    assert saved.status_code == 303
    markets, calendars, html = await shown()
    assert (markets, calendars) == ([], [7])
    assert 'id="markets"' not in html
    assert 'id="calendars"' in html

    await browser.post(
        "/market-hall/admin/page-config/",
        data={"features": ["", "market"]},
        headers={**HTML, "X-CSRF-Token": token},
    )
    markets, calendars, html = await shown()
    assert (markets, calendars) == ([4], [])
    assert 'id="calendars"' not in html
    # The editor's admin page still lists what is attached, switched off or not.
    admin = await browser.get("/market-hall/admin/page-config/", headers=HTML)
    assert 'data-market-place-id="4"' in admin.text


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({}, "market_place_id"),
        ({"market_place_id": "four"}, "market_place_id"),
        ({"market_place_id": "0"}, "market_place_id"),
        ({"market_place_id": "3", "label": "x" * 256}, "label"),
    ],
)
async def test_bad_menu_item_input_is_422_naming_the_field(browser, clean_db, data, field):
    insert_post(clean_db, "market-hall", is_page=True)
    token = await sign_in(browser)
    for action in ("attach", "detach"):
        response = await browser.post(
            f"/market-hall/admin/menu-items/{action}/",
            data=data,
            headers={**JSON, "X-CSRF-Token": token},
        )
        assert response.status_code == 422
        assert response.headers["content-type"].startswith("application/problem+json")
        assert field in response.json()["detail"]
    assert relation_rows(clean_db) == []


async def test_relations_unreachable_degrades_the_page(browser, clean_db):
    insert_post(clean_db, "market-hall", is_page=True)
    with provider_unreachable(clean_db, "blog", "relations_server"):
        page = await browser.get("/market-hall/", headers=HTML)
        api = await browser.get("/api/posts/market-hall")
    assert page.status_code == 200
    assert page.headers["X-Rose-Degraded"] == "relations"
    assert 'id="degraded-relations"' in page.text
    assert api.json()["degraded"] == ["relations"]
    assert api.json()["markets"] == []


async def test_two_first_saves_of_a_page_config_at_once_do_not_overwrite_each_other(
    browser, clean_db
):
    """probe: the form of a page with no config yet says so (an empty config_version), but two
    editors saving it at once were both accepted, the second silently putting back every field
    the first had set. The first save is checked too: the second is told the settings changed
    since it opened them (409), the form showing what is stored now."""
    insert_post(clean_db, "farm-shop", title="Farm shop", is_page=True)
    token = await sign_in(browser, user_id=1)
    headers = {**HTML, "X-CSRF-Token": token}
    shown = (await browser.get("/farm-shop/admin/page-config/", headers=HTML)).text
    assert config_rows(clean_db) == []
    editor_a, editor_b = form_fields(shown), form_fields(shown)
    assert editor_a["config_version"] == [""]
    editor_a["sumup_checkout_prefix"] = ["aaa-"]
    editor_b["sumup_checkout_prefix"] = ["bbb-"]

    def save(form: dict[str, list[str]]) -> asyncio.Task:
        return asyncio.ensure_future(
            browser.post("/farm-shop/admin/page-config/", data=form, headers=headers)
        )

    # Both pass their check before either writes: the configs table is held (SHARE: reads and
    # row locks go on, writes wait) until both wait to write.
    with admin_connect(clean_db, "blog") as holder, holder.transaction():
        holder.execute("LOCK TABLE blog.page_configs IN SHARE MODE")
        saves = [save(editor_a), save(editor_b)]
        assert await eventually(
            lambda: any(task.done() for task in saves) or lock_waiters(clean_db, "blog") >= 2
        )
    answers = await asyncio.gather(*saves)
    assert sorted(answer.status_code for answer in answers) == [303, 409], [
        answer.text for answer in answers
    ]
    saved, refused = sorted(answers, key=lambda answer: answer.status_code)
    stored = config_rows(clean_db)
    assert len(stored) == 1
    winner = "aaa-" if saved is answers[0] else "bbb-"
    assert stored[0][5] == winner
    assert "changed since you opened" in refused.text
    assert form_fields(refused.text)["sumup_checkout_prefix"] == [winner]

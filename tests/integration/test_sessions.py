"""Sessions and secrets fit for production: a new session id at sign-in and sign-out, CSRF tokens
bound to the whole identity, a signed expiry, secure cookies by default, secrets that rotate
without signing anyone out or dropping an internal call, and security headers on every page.

The session cookie is minted here by an independent implementation of the contract written in
docs/sign-in.md (what the account side of rose-ash does in production)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from http.cookies import SimpleCookie

import pytest

from apps.common.app_factory import platform_of
from apps.common.settings import Settings
from tests.conftest import SESSION_SECRET, admin_connect, in_process_stack
from tests.integration.commerce_fixtures import cart_rows, entry_state, shop_stack

JSON = {"accept": "application/json"}
HTML = {"accept": "text/html"}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def mint_cookie(secret: str, session_id: str, user_id: int | None, expires_at: int) -> str:
    """docs/sign-in.md: base64url(JSON) "." base64url(HMAC-SHA256(SHA-256("rose-session:" +
    SESSION_SECRET), the first part)), no padding."""
    claims: dict[str, object] = {"sid": session_id, "exp": expires_at}
    if user_id is not None:
        claims["uid"] = user_id
    payload = b64(json.dumps(claims).encode())
    key = hashlib.sha256(b"rose-session:" + secret.encode()).digest()
    mac = b64(hmac.new(key, payload.encode(), hashlib.sha256).digest())
    return f"{payload}.{mac}"


def claims_of(client) -> dict:
    value = client.cookies.get("rose_session", domain=client.base_url.host)
    payload = value.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


@pytest.fixture
async def stack(clean_db, credentials, sandbox, shop):
    async with shop_stack(clean_db, credentials, sandbox.server) as running:
        yield running


async def test_sign_in_and_out_issue_a_new_session_and_keep_what_was_gathered(
    stack, clean_db, shop
):
    market = stack.browser("market")
    token = (await market.get("/auth/session")).json()["csrf_token"]
    anonymous = claims_of(market)
    cart, events = stack.browser("cart"), stack.browser("events")
    for client in (cart, events):
        cookie = market.cookies["rose_session"]
        client.cookies.set("rose_session", cookie, domain=client.base_url.host)
        client.headers.update({"x-csrf-token": token, "accept": "application/json"})
    assert (await cart.post(f"/add/{shop.product_ids[0]}/")).status_code == 200
    assert (await events.post(f"/entries/{shop.entry_id}/book/")).status_code == 200

    signed = await market.get("/auth/dev-login?user_id=31", headers=JSON)
    assert signed.status_code == 200
    after = claims_of(market)
    assert after["uid"] == 31
    assert after["sid"] != anonymous["sid"]  # whoever knew the anonymous id knows nothing now
    assert {row[0] for row in cart_rows(clean_db) if row[6]} == {31}
    assert entry_state(clean_db, shop.entry_id)[0] == "pending"
    with admin_connect(clean_db, "events") as connection:
        owner = connection.execute(
            "SELECT user_id FROM events.calendar_entries WHERE id = %s", (shop.entry_id,)
        ).fetchone()
    assert owner == (31,)

    market.headers["x-csrf-token"] = signed.json()["csrf_token"]
    out = await market.post("/auth/logout")
    assert out.status_code == 303
    final = claims_of(market)
    assert "uid" not in final
    assert final["sid"] not in (anonymous["sid"], after["sid"])


async def test_a_csrf_token_read_before_sign_in_is_refused_after_it(stack, shop):
    cart = stack.browser("cart")
    before = (await cart.get("/auth/session")).json()["csrf_token"]
    signed = await cart.get("/auth/dev-login?user_id=32", headers=JSON)
    refused = await cart.post(
        f"/add/{shop.product_ids[0]}/", headers={"x-csrf-token": before, **JSON}
    )
    assert refused.status_code == 403
    accepted = await cart.post(
        f"/add/{shop.product_ids[0]}/",
        headers={"x-csrf-token": signed.json()["csrf_token"], **JSON},
    )
    assert accepted.status_code == 200


def form_token(page: str) -> str:
    """The CSRF field of the page's "Sign out and start afresh" form."""
    form = re.search(r'<form method="post" action="/auth/logout">(.*?)</form>', page, re.S)
    assert form is not None, page
    found = re.search(r'name="_csrf_token" value="([^"]*)"', form.group(1))
    assert found is not None, form.group(1)
    return found.group(1)


async def test_start_afresh_signs_out_after_a_sign_in_in_another_tab(stack, shop):
    """The add of tab A left with the anonymous session as sign-in (tab B) adopted it: its
    error page offers "Sign out and start afresh", a form whose token is the anonymous
    session's. The browser's cookie is the signed-in session's by the time it is pressed, so
    the token did not fit and signing out was a 403. Logout now also takes a post whose Origin
    is one of the services' own (what a browser sends with a form of our page, and no other
    site can send); without one, the token must fit as before."""
    browser = stack.browser("cart")
    token = (await browser.get("/auth/session")).json()["csrf_token"]
    anonymous = claims_of(browser)
    tab_a = stack.browser("cart")  # the add in flight still carries the anonymous cookie
    tab_a.cookies.set("rose_session", browser.cookies.get("rose_session"), domain="cart.test")
    assert (await browser.get("/auth/dev-login?user_id=41", headers=JSON)).status_code == 200
    signed_in = claims_of(browser)
    assert signed_in["uid"] == 41

    late = await tab_a.post(
        f"/add/{shop.product_ids[0]}/", data={"quantity": "1", "_csrf_token": token}, headers=HTML
    )
    assert late.status_code == 409, late.text
    assert "Sign out and start afresh" in late.text
    stale = form_token(late.text)
    assert stale == token  # the anonymous session's

    # The page's origin: the service's public URL, where the browser was shown it.
    origin = platform_of(stack.apps["cart"]).settings.public_urls["cart"].rstrip("/")
    pressed = {"_csrf_token": stale}
    forged = [
        ({**HTML, "origin": "https://evil.example"}, pressed),  # another site, the stale token
        ({**HTML, "origin": "https://evil.example"}, {}),  # another site, no token
        ({**HTML, "origin": "null"}, pressed),  # a sandboxed or opaque page
        ({**HTML, "origin": f"{origin}.evil.example"}, pressed),
        (HTML, pressed),  # no Origin at all: the token must fit, as before
        (HTML, {"_csrf_token": "0" * 40}),
    ]
    for headers, form in forged:
        refused = await browser.post("/auth/logout", data=form, headers=headers)
        assert refused.status_code == 403, (headers, form, refused.text)
        assert claims_of(browser) == signed_in, (headers, form)

    out = await browser.post("/auth/logout", data=pressed, headers={**HTML, "origin": origin})
    assert out.status_code == 303, out.text
    assert out.headers["location"] == "/"
    after = claims_of(browser)
    assert "uid" not in after
    assert after["sid"] not in (anonymous["sid"], signed_in["sid"])
    assert (await browser.get("/auth/session")).json()["signed_in"] is False


async def test_a_sign_out_from_our_page_is_taken_at_either_spelling_of_its_path(stack):
    """Litestar answers /auth/logout/ as /auth/logout (as every route, with or without the
    final slash), but only the bare path was let through on its Origin: the same post from a
    page of ours with the token of another session (the "start afresh" form) was a 403 at
    /auth/logout/. Another site's post stays refused there."""
    origin = platform_of(stack.apps["cart"]).settings.public_urls["cart"].rstrip("/")
    for path in ("/auth/logout", "/auth/logout/"):
        browser = stack.browser("cart")
        assert (await browser.get("/auth/dev-login?user_id=41", headers=JSON)).status_code == 200
        signed_in = claims_of(browser)
        stale = {"_csrf_token": "0" * 40}
        refused = await browser.post(
            path, data=stale, headers={**HTML, "origin": "https://evil.example"}
        )
        assert refused.status_code == 403, (path, refused.text)
        assert claims_of(browser) == signed_in
        out = await browser.post(path, data=stale, headers={**HTML, "origin": origin})
        assert out.status_code == 303, (path, out.text)
        assert "uid" not in claims_of(browser)


async def test_the_signed_expiry_is_checked_on_every_request(stack):
    market = stack.browser("market")
    now = int(time.time())
    market.cookies.set(
        "rose_session", mint_cookie(SESSION_SECRET, "s-old", 7, now - 1), domain="market.test"
    )
    assert (await market.get("/auth/session")).json()["signed_in"] is False

    fresh = stack.browser("market")
    fresh.cookies.set(
        "rose_session", mint_cookie(SESSION_SECRET, "s-new", 7, now + 3600), domain="market.test"
    )
    session = (await fresh.get("/auth/session")).json()
    assert (session["signed_in"], session["user_id"]) == (True, 7)
    # A cookie of the contract without an expiry is not one: anonymous.
    legacy = stack.browser("market")
    payload = b64(json.dumps({"sid": "s", "uid": 7}).encode())
    key = hashlib.sha256(b"rose-session:" + SESSION_SECRET.encode()).digest()
    mac = b64(hmac.new(key, payload.encode(), hashlib.sha256).digest())
    legacy.cookies.set("rose_session", f"{payload}.{mac}", domain="market.test")
    assert (await legacy.get("/auth/session")).json()["signed_in"] is False


@pytest.mark.parametrize(
    ("session_id", "user_id"),
    [
        ("abc\u0000defghijklmnop", None),  # a NUL: PostgreSQL stores no such text (a 500)
        ("s" * 65, None),  # longer than any service stores (a 422 naming varchar(64))
        ("with space/and+slash", None),  # not URL-safe
        ("s-fine", 0),  # user 0: likes and orders refuse it (502, 422), cart kept lines for it
        ("s-fine", -1),
        ("s-fine", 2**31),  # past the contract's 2^31-1 (dev-login's bound)
        ("s-fine", 2**63),  # past bigint: every page a 422
    ],
)
async def test_a_signed_cookie_outside_the_contract_is_no_session(stack, session_id, user_id):
    """Probe docs: docs/sign-in.md gives the cookie's `sid` as URL-safe characters and its
    `uid` as 1 to 2^31-1, but the services took any string and any integer a cookie signed with
    SESSION_SECRET carried (an account side's bug away). A NUL in the `sid` made every page of
    cart, events and orders a bare 500 ("an unexpected error"), a `sid` longer than 64 a 422
    naming a column type, user 0 or -1 a cart line nobody could check out (likes 502, orders
    422) and a `uid` past bigint a 422 on every page. Such a cookie is ignored, as one whose
    MAC or expiry fails: the visitor is anonymous, with a new session."""
    cookie = mint_cookie(SESSION_SECRET, session_id, user_id, int(time.time()) + 3600)
    for service in ("cart", "market", "orders", "events"):
        browser = stack.browser(service)
        browser.cookies.set("rose_session", cookie, domain=f"{service}.test")
        session = await browser.get("/auth/session")
        assert session.status_code == 200
        assert (session.json()["signed_in"], session.json()["user_id"]) == (False, None)
        assert claims_of(browser)["sid"] != session_id  # a new anonymous session
        page = await browser.get("/", headers=HTML)
        assert page.status_code == 200, (service, page.status_code, page.text[:300])


@pytest.mark.parametrize(
    "other",
    [
        'prefs={"theme":"dark"}',  # a consent or preference cookie holding JSON
        "a=b c",
        "a=b\\c",
        "x=\u00e9",
        "novalue",
        "=orphan",
    ],
)
async def test_another_sites_odd_cookie_hides_no_session(stack, other):
    """Any site on the cookie's domain can set a cookie that is not a token of RFC 6265 (JSON,
    spaces, non-ASCII): it comes first in the header when it is older, and the session after it
    is still read."""
    session = mint_cookie(SESSION_SECRET, "s-odd", 7, int(time.time()) + 3600)
    for header in (f"{other}; rose_session={session}", f"rose_session={session}; {other}"):
        answer = await stack.browser("market").get(
            "/auth/session", headers={"cookie": header.encode("utf-8")}
        )
        assert answer.status_code == 200
        assert (answer.json()["signed_in"], answer.json()["user_id"]) == (True, 7), header


async def test_a_secure_setting_makes_a_secure_cookie(clean_db, credentials):
    for secure in (True, False):
        production = {"market": {"session_cookie_secure": secure}}
        async with in_process_stack(
            clean_db, credentials, ["market"], env="prod", settings_overrides=production
        ) as running:
            answer = await running.client("market").get("/auth/session")
        cookie = answer.headers["set-cookie"]
        assert ("Secure" in cookie) is secure, cookie
        parsed = SimpleCookie()
        parsed.load(cookie)
        assert parsed["rose_session"]["httponly"]


def test_production_settings_default_to_secure_cookies():
    base = {
        "DATABASE_URL": "postgresql://x",
        "INTERNAL_SECRET": "s" * 20,
        "SESSION_SECRET": "t" * 20,
    }
    assert Settings.from_env("market", base, public=True).session_cookie_secure is True
    insecure = {**base, "SESSION_COOKIE_INSECURE": "1"}
    assert Settings.from_env("market", insecure, public=True).session_cookie_secure is False
    dev = {**base, "ROSE_ENV": "dev"}
    assert Settings.from_env("market", dev, public=True).session_cookie_secure is False


async def test_a_rolling_rotation_of_both_secrets_drops_no_call_and_signs_nobody_out(
    clean_db, credentials
):
    """Mid-rotation, one service has the new secrets (and accepts the old ones), another still
    the old ones (and already accepts the new): calls both ways succeed and a cookie of either
    is accepted by both."""
    old_internal, new_internal = "old-internal-secret-0123", "new-internal-secret-0123"
    old_session, new_session = "old-session-secret-01234", "new-session-secret-01234"
    rotated = {
        "internal_secret": new_internal,
        "internal_secrets_accepted": (old_internal,),
        "session_secret": new_session,
        "session_secrets_accepted": (old_session,),
    }
    not_yet = {
        "internal_secret": old_internal,
        "internal_secrets_accepted": (new_internal,),
        "session_secret": old_session,
        "session_secrets_accepted": (new_session,),
    }
    overrides = {"blog": rotated, "likes": not_yet, "market": not_yet}
    async with in_process_stack(
        clean_db, credentials, ["blog", "likes", "market"], settings_overrides=overrides
    ) as running:
        from tests.integration.blog_fixtures import insert_post

        insert_post(clean_db, "rotation", title="Rotation")
        blog = running.browser("blog")
        signed = await blog.get("/auth/dev-login?user_id=33", headers=JSON)
        blog.headers.update({"x-csrf-token": signed.json()["csrf_token"], **JSON})
        # blog (new secret) calls likes (old secret, accepting the new): accepted.
        liked = await blog.post("/rotation/like/")
        assert liked.json() == {"liked": True}
        # The cookie blog (new secret) signed is accepted by market (old, accepting the new).
        market = running.browser("market")
        market.cookies.set("rose_session", blog.cookies["rose_session"], domain="market.test")
        assert (await market.get("/auth/session")).json()["user_id"] == 33
        # And the other way round: market's cookie (old secret) on blog (new, accepting old).
        other = running.browser("market")
        theirs = await other.get("/auth/dev-login?user_id=34", headers=JSON)
        assert theirs.status_code == 200
        back = running.browser("blog")
        back.cookies.set("rose_session", other.cookies["rose_session"], domain="blog.test")
        assert (await back.get("/auth/session")).json()["user_id"] == 34


async def test_a_cookie_copied_before_sign_out_is_ended_only_by_a_new_secret(clean_db, credentials):
    """docs/sign-in.md, "What sign-out does not do" (probe attacker): a session is its signed
    cookie, so sign-out replaces it in the browser and a copy kept from before still signs its
    holder in. Replacing SESSION_SECRET, the old one not kept as previous, ends every copy."""
    async with in_process_stack(clean_db, credentials, ["market"]) as running:
        market = running.browser("market")
        signed = await market.get("/auth/dev-login?user_id=35", headers=JSON)
        copy = market.cookies["rose_session"]
        market.headers["x-csrf-token"] = signed.json()["csrf_token"]
        assert (await market.post("/auth/logout", headers=JSON)).status_code == 303
        assert (await market.get("/auth/session")).json()["signed_in"] is False
        thief = running.browser("market")
        thief.cookies.set("rose_session", copy, domain="market.test")
        assert (await thief.get("/auth/session")).json()["user_id"] == 35
    replaced = {"market": {"session_secret": "a-new-session-secret-0123"}}
    async with in_process_stack(
        clean_db, credentials, ["market"], settings_overrides=replaced
    ) as running:
        thief = running.browser("market")
        thief.cookies.set("rose_session", copy, domain="market.test")
        assert (await thief.get("/auth/session")).json()["signed_in"] is False


@pytest.mark.parametrize("service", ["blog", "market", "cart", "events", "orders"])
async def test_security_headers_on_every_public_page(stack, service):
    for path in ("/", "/no-such-page"):
        answer = await stack.browser(service).get(path, headers=HTML)
        headers = answer.headers
        csp = headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp
        assert "script-src 'self'" in csp
        assert "'unsafe-inline'" not in csp.split("script-src", 1)[1].split(";")[0]
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "strict-origin-when-cross-origin"
        assert headers["x-frame-options"] == "DENY"


async def test_schema_page_keeps_the_strict_policy_of_every_page(stack):
    """The /schema viewer is served from the service's own files and runs no inline script, so
    it needs nothing the other pages do not: one policy for all, and that one strict."""
    browser = stack.browser("orders")
    policies = {}
    for path in ("/", "/api/orders", "/no-such-page", "/schema", "/schema/swagger"):
        answer = await browser.get(path, headers=HTML)
        policies[path] = answer.headers["content-security-policy"]
    viewer = await browser.get("/schema", headers=HTML)
    assert viewer.status_code == 200
    assert viewer.headers["content-type"].startswith("text/html")
    directives = dict(
        part.strip().split(" ", 1) for part in policies["/"].split(";") if part.strip()
    )
    assert directives["script-src"] == "'self'"
    assert directives["default-src"] == "'self'"
    assert "unsafe-eval" not in policies["/"]
    assert set(policies.values()) == {policies["/"]}, policies
    # Every script is a file of its own, and nothing comes from another host.
    scripts = re.findall(r"<script([^>]*)>", viewer.text)
    assert scripts
    assert all('src="/schema/static/' in attributes for attributes in scripts), scripts
    assert "//" not in re.sub(r"<!DOCTYPE[^>]*>", "", viewer.text), viewer.text
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "schema-viewer.js"):
        served = await browser.get(f"/schema/static/{asset}")
        assert served.status_code == 200, asset
        assert served.headers["content-security-policy"] == policies["/"]
    assert (await browser.get("/schema/openapi.json")).json()["info"]["title"] == "rose-ash orders"
    # Litestar's CDN pages are not served any more.
    for gone in ("/schema/redoc", "/schema/elements", "/schema/rapidoc"):
        assert (await browser.get(gone, headers=JSON)).status_code == 404, gone


@pytest.mark.parametrize("service", ["blog", "market", "cart", "events", "orders"])
async def test_no_shared_cache_keeps_what_a_session_was_answered(stack, service):
    """Pages carry the visitor's name, cart and CSRF token: a proxy or CDN in front must not
    keep them for the next visitor, and the browser asks again (what the handler does not say
    otherwise: market's static images keep their own day in any cache)."""
    browser = stack.browser(service)
    assert (await browser.get("/auth/dev-login?user_id=7", headers=JSON)).status_code == 200
    for path, accept in (("/", HTML), ("/auth/session", JSON), ("/no-such-page", HTML)):
        answer = await browser.get(path, headers=accept)
        assert answer.headers["cache-control"] == "private, no-cache", (service, path)
    if service == "market":
        image = await browser.get("/static/products/apple.svg")
        assert image.status_code == 200
        assert image.headers["cache-control"] == "max-age=86400, public"

"""The plan's verification 3 end to end: a page config updated through blog's admin form is seen
by cart (through its foreign table: what cart reads, none of the merchant's columns) and by
orders (the merchant, with the key)."""

from __future__ import annotations

import psycopg

from tests.conftest import in_process_stack
from tests.integration.blog_fixtures import insert_post

HTML = {"accept": "text/html"}


async def test_admin_form_update_reaches_cart_without_key_and_orders_with_key(
    clean_db, credentials
):
    page_id = insert_post(clean_db, "farm-shop", is_page=True)
    async with in_process_stack(clean_db, credentials, ["blog"]) as stack:
        browser = stack.browser("blog")
        signed = await browser.get(
            "/auth/dev-login?user_id=1", headers={"accept": "application/json"}
        )
        token = signed.json()["csrf_token"]
        saved = await browser.post(
            "/farm-shop/admin/page-config/",
            data={
                "features": ["", "calendar"],
                "sumup_merchant_code": "MNEWCODE9",
                "sumup_api_key": "sup_sk_new_secret_key",
                "sumup_checkout_prefix": "farm-",
            },
            headers={**HTML, "X-CSRF-Token": token},
        )
        assert saved.status_code == 303

    topology = clean_db.topology
    with psycopg.connect(topology.app_url("cart", credentials)) as cart:
        row = cart.execute(
            "SELECT * FROM blog.page_configs WHERE container_type = 'page' AND container_id = %s",
            (page_id,),
        )
        columns = [column.name for column in row.description]
        values = dict(zip(columns, row.fetchone(), strict=True))
    assert values["features"] == {"calendar": True, "market": False, "cart": False}
    # Cart reads none of the merchant's columns, so its edge has none (probe attacker).
    assert not any("key" in column or "sumup" in column for column in columns), columns
    assert "sup_sk_new_secret_key" not in repr(values)
    assert "MNEWCODE9" not in repr(values)

    with psycopg.connect(topology.app_url("orders", credentials)) as orders:
        key = orders.execute(
            "SELECT sumup_merchant_code, sumup_api_key FROM blog.page_payment_configs "
            "WHERE container_type = 'page' AND container_id = %s",
            (page_id,),
        ).fetchone()
    assert key == ("MNEWCODE9", "sup_sk_new_secret_key")


async def test_one_likes_table_serves_market_and_blog(clean_db, credentials):
    """Plan verification 2: likes toggled through market's and blog's own routes land in the one
    likes table, and each service sees both kinds through its foreign table."""
    from tests.integration.market_fixtures import seed_products

    slugs = seed_products(clean_db, 3)
    insert_post(clean_db, "jam-day")
    async with in_process_stack(clean_db, credentials, ["market", "blog", "likes"]) as stack:
        market = stack.browser("market")
        blog = stack.browser("blog")
        headers = {"accept": "application/json"}
        token = (await market.get("/auth/dev-login?user_id=21", headers=headers)).json()
        await blog.get("/auth/dev-login?user_id=21", headers=headers)
        blog_token = (await blog.get("/auth/session")).json()["csrf_token"]
        liked_product = await market.post(
            f"/product/{slugs[1]}/like/", headers={**headers, "x-csrf-token": token["csrf_token"]}
        )
        liked_post = await blog.post(
            "/jam-day/like/", headers={**headers, "x-csrf-token": blog_token}
        )
        products = (await market.get("/api/products?liked=true")).json()
        posts = (await blog.get("/api/posts")).json()
    assert liked_product.json() == {"liked": True}
    assert liked_post.json() == {"liked": True}
    assert [item["slug"] for item in products["items"]] == [slugs[1]]
    assert [post["is_liked"] for post in posts["posts"] if post["slug"] == "jam-day"] == [True]

    expected = [(21, "post"), (21, "product")]
    for consumer in ("market", "blog"):
        with psycopg.connect(clean_db.topology.app_url(consumer, credentials)) as connection:
            rows = connection.execute(
                "SELECT user_id, target_type FROM likes.likes ORDER BY target_type"
            ).fetchall()
        assert rows == expected, consumer

"""The plan's verification 3 end to end: a page config updated through blog's admin form is seen
by cart (through its foreign table, without the key) and by orders (with the key)."""

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
    assert values["sumup_merchant_code"] == "MNEWCODE9"
    assert values["sumup_configured"] is True
    assert not any("key" in column for column in columns)
    assert "sup_sk_new_secret_key" not in repr(values)

    with psycopg.connect(topology.app_url("orders", credentials)) as orders:
        key = orders.execute(
            "SELECT sumup_merchant_code, sumup_api_key FROM blog.page_payment_configs "
            "WHERE container_type = 'page' AND container_id = %s",
            (page_id,),
        ).fetchone()
    assert key == ("MNEWCODE9", "sup_sk_new_secret_key")

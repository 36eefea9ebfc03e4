"""blog's internal page-config endpoints (plan 3.1, 3.2) over real HTTP, against db_blog."""

from __future__ import annotations

import asyncio
import json

import psycopg
import pytest

from tests.conftest import admin_connect, in_process_stack
from tests.integration.blog_fixtures import (
    SANDBOX_KEY,
    config_rows,
    insert_post,
    recorded_statements,
)
from tests.signed import internal_get, internal_post

CONFIG_KEYS = {
    "id",
    "container_type",
    "container_id",
    "page_slug",
    "page_title",
    "features",
    "sumup_merchant_code",
    "sumup_checkout_prefix",
    "sumup_configured",
    "created_at",
    "updated_at",
}


@pytest.fixture
async def running(clean_db, credentials):
    async with in_process_stack(clean_db, credentials, ["blog"]) as stack:
        yield stack


@pytest.fixture
def blog(running):
    return running.client("blog")


@pytest.fixture
def farm_shop(clean_db) -> int:
    return insert_post(clean_db, "farm-shop", title="Farm shop", is_page=True)


def page(page_id: int, **fields) -> dict:
    return {"container_type": "page", "container_id": page_id, **fields}


async def test_page_config_is_404_until_it_exists_then_the_dict_without_the_key(blog, farm_shop):
    missing = await internal_get(
        blog, "page-config", {"container_type": "page", "container_id": farm_shop}
    )
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("application/problem+json")
    assert "no page config" in missing.json()["detail"]

    updated = await internal_post(
        blog,
        "update-page-config",
        page(
            farm_shop,
            features={"cart": True},
            sumup_merchant_code="MSANDBOX1",
            sumup_api_key=SANDBOX_KEY,
            sumup_checkout_prefix="rose-farm-",
        ),
    )
    assert updated.status_code == 200
    config = updated.json()
    assert set(config) == CONFIG_KEYS
    assert config["container_type"] == "page"
    assert config["container_id"] == farm_shop
    assert config["page_slug"] == "farm-shop"
    assert config["page_title"] == "Farm shop"
    assert config["features"] == {"cart": True}
    assert config["sumup_merchant_code"] == "MSANDBOX1"
    assert config["sumup_checkout_prefix"] == "rose-farm-"
    assert config["sumup_configured"] is True

    found = await internal_get(
        blog, "page-config", {"container_type": "page", "container_id": farm_shop}
    )
    assert found.status_code == 200
    assert found.json() == config
    by_id = await internal_get(blog, "page-config-by-id", {"id": config["id"]})
    assert by_id.json() == config
    assert (await internal_get(blog, "page-config-by-id", {"id": 999})).status_code == 404


async def test_update_creates_merges_features_and_clears_with_null(blog, farm_shop, clean_db):
    first = await internal_post(
        blog, "update-page-config", page(farm_shop, features={"cart": True, "market": True})
    )
    assert first.json()["sumup_configured"] is False
    second = await internal_post(
        blog,
        "update-page-config",
        page(farm_shop, features={"market": False, "calendar": True}, sumup_api_key=SANDBOX_KEY),
    )
    config = second.json()
    assert config["id"] == first.json()["id"]
    assert config["features"] == {"cart": True, "market": False, "calendar": True}
    # A key without a merchant code is not a usable SumUp setup.
    assert config["sumup_configured"] is False

    await internal_post(blog, "update-page-config", page(farm_shop, sumup_merchant_code="ABC123"))
    assert config_rows(clean_db) == [
        (
            "page",
            farm_shop,
            {"cart": True, "market": False, "calendar": True},
            "ABC123",
            SANDBOX_KEY,
            None,
            True,
        )
    ]
    cleared = await internal_post(
        blog, "update-page-config", page(farm_shop, sumup_api_key=None, sumup_merchant_code=None)
    )
    assert cleared.json()["sumup_configured"] is False
    assert config_rows(clean_db)[0][3:5] == (None, None)


async def test_the_site_default_config_is_container_site_0(blog, clean_db):
    response = await internal_post(
        blog,
        "update-page-config",
        {"container_type": "site", "container_id": 0, "sumup_merchant_code": "MSANDBOX1"},
    )
    assert response.status_code == 200
    assert response.json()["page_slug"] is None
    ensured = await internal_get(
        blog, "page-config-ensure", {"container_type": "site", "container_id": 0}
    )
    assert ensured.json()["id"] == response.json()["id"]
    assert len(config_rows(clean_db)) == 1


async def test_longest_allowed_prefix_keeps_every_sumup_reference_within_64(blog, farm_shop):
    prefix = "p" * 40
    response = await internal_post(
        blog, "update-page-config", page(farm_shop, sumup_checkout_prefix=prefix)
    )
    assert response.status_code == 200
    longest_reference = f"{prefix}{2**63 - 1}-9999"
    assert len(longest_reference) == 64


async def test_ensure_creates_an_empty_config_once(blog, farm_shop, clean_db):
    first = await internal_get(
        blog, "page-config-ensure", {"container_type": "page", "container_id": farm_shop}
    )
    assert first.status_code == 200
    assert first.json()["features"] == {}
    assert first.json()["sumup_configured"] is False
    again = await internal_get(
        blog, "page-config-ensure", {"container_type": "page", "container_id": farm_shop}
    )
    assert again.json() == first.json()
    assert config_rows(clean_db) == [("page", farm_shop, {}, None, None, None, True)]


async def test_twenty_concurrent_ensures_of_a_new_container_create_one_row(
    blog, farm_shop, clean_db
):
    params = {"container_type": "page", "container_id": farm_shop}
    responses = await asyncio.gather(
        *(internal_get(blog, "page-config-ensure", params) for _ in range(20))
    )
    assert [response.status_code for response in responses] == [200] * 20
    assert len({response.json()["id"] for response in responses}) == 1
    assert len(config_rows(clean_db)) == 1


async def test_ensure_and_update_of_a_missing_page_are_404(blog, clean_db):
    post_id = insert_post(clean_db, "just-a-post")
    for container_id in (post_id, 4242):
        ensured = await internal_get(
            blog, "page-config-ensure", {"container_type": "page", "container_id": container_id}
        )
        assert ensured.status_code == 404
        assert "no page" in ensured.json()["detail"]
        updated = await internal_post(
            blog, "update-page-config", page(container_id, features={"cart": True})
        )
        assert updated.status_code == 404
    assert config_rows(clean_db) == []


async def test_batch_by_ids_and_by_container_ids_in_one_query(running, blog, clean_db):
    page_ids = [insert_post(clean_db, f"page-{n}", is_page=True) for n in range(3)]
    configs = [
        (
            await internal_post(blog, "update-page-config", page(page_id, features={"cart": True}))
        ).json()
        for page_id in page_ids
    ]
    wanted_ids = [configs[2]["id"], configs[0]["id"], 999]
    with recorded_statements(running.apps["blog"]) as statements:
        by_ids = await internal_get(blog, "page-configs-batch", {"ids": wanted_ids})
    assert by_ids.status_code == 200
    assert [config["id"] for config in by_ids.json()] == sorted(wanted_ids[:2])
    assert all("sumup_api_key" not in config for config in by_ids.json())
    selects = [sql for sql, _ in statements if "page_configs" in sql]
    assert len(selects) == 1, selects

    by_container = await internal_get(
        blog,
        "page-configs-batch",
        {"container_type": "page", "container_ids": [page_ids[1], page_ids[2], 777]},
    )
    assert [config["container_id"] for config in by_container.json()] == page_ids[1:]
    assert [config["page_slug"] for config in by_container.json()] == ["page-1", "page-2"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({}, "ids"),
        ({"ids": [1], "container_ids": [1], "container_type": "page"}, "container_ids"),
        ({"container_ids": [1]}, "container_type"),
        ({"container_ids": [1], "container_type": "blogpost"}, "container_type"),
        ({"container_ids": [5], "container_type": "site"}, "container_id"),
        ({"ids": ["x"]}, "ids"),
        ({"ids": list(range(1, 502))}, "ids"),
    ],
)
async def test_bad_batch_input_is_422_naming_the_field(blog, params, field):
    response = await internal_get(blog, "page-configs-batch", params)
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")
    assert field in response.json()["detail"]


@pytest.mark.parametrize(
    ("name", "params", "field"),
    [
        ("page-config", {"container_type": "page"}, "container_id"),
        ("page-config", {"container_id": 1}, "container_type"),
        ("page-config", {"container_type": "page", "container_id": "one"}, "container_id"),
        ("page-config", {"container_type": "page", "container_id": -1}, "container_id"),
        ("page-config", {"container_type": "market", "container_id": 1}, "container_type"),
        ("page-config", {"container_type": "page", "container_id": 0}, "container_id"),
        ("page-config", {"container_type": "site", "container_id": 3}, "container_id"),
        ("page-config-by-id", {}, "id"),
        ("page-config-by-id", {"id": "x"}, "id"),
        ("page-config-by-id", {"id": 0}, "id"),
        ("page-config-ensure", {"container_type": "Page", "container_id": 1}, "container_type"),
        ("page-config-ensure", {"container_type": "page"}, "container_id"),
        ("page-config-ensure", {"container_type": "site", "container_id": 1}, "container_id"),
    ],
)
async def test_bad_data_input_is_422_naming_the_field(blog, clean_db, name, params, field):
    response = await internal_get(blog, name, params)
    assert response.status_code == 422, response.json()
    assert response.headers["content-type"].startswith("application/problem+json")
    assert field in response.json()["detail"]
    assert config_rows(clean_db) == []


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"features": {"colour": True}}, "features.colour"),
        ({"features": {"cart": "yes"}}, "features.cart"),
        ({"features": {"market": 1}}, "features.market"),
        ({"features": ["cart"]}, "features"),
        ({"sumup_merchant_code": "msandbox1"}, "sumup_merchant_code"),
        ({"sumup_merchant_code": "M1"}, "sumup_merchant_code"),
        ({"sumup_merchant_code": "MERCHANT-CODE"}, "sumup_merchant_code"),
        ({"sumup_merchant_code": 12345678}, "sumup_merchant_code"),
        # Audit: a pattern ending in $ also matched before a final newline, and it was stored.
        ({"sumup_merchant_code": "MSANDBOX1\n"}, "sumup_merchant_code"),
        ({"sumup_checkout_prefix": "rose\n"}, "sumup_checkout_prefix"),
        ({"sumup_api_key": "k" * 12 + "\n"}, "sumup_api_key"),
        ({"container_type": "page\n"}, "container_type"),
        ({"sumup_checkout_prefix": "p" * 41}, "sumup_checkout_prefix"),
        ({"sumup_checkout_prefix": "rose farm"}, "sumup_checkout_prefix"),
        ({"sumup_checkout_prefix": ""}, "sumup_checkout_prefix"),
        ({"sumup_api_key": ""}, "sumup_api_key"),
        ({"sumup_api_key": "short"}, "sumup_api_key"),
        ({"sumup_api_key": "has a space in it"}, "sumup_api_key"),
        ({"sumup_api_key": "k" * 256}, "sumup_api_key"),
        ({"colour": "red"}, "colour"),
        ({"container_type": "shop"}, "container_type"),
        ({"container_id": -3}, "container_id"),
        ({"container_id": "one"}, "container_id"),
    ],
)
async def test_bad_update_input_is_422_naming_the_field(blog, farm_shop, clean_db, fields, field):
    response = await internal_post(blog, "update-page-config", page(farm_shop, **fields))
    assert response.status_code == 422, response.json()
    assert response.headers["content-type"].startswith("application/problem+json")
    assert field in response.json()["detail"]
    assert config_rows(clean_db) == []


async def test_missing_container_fields_are_422(blog):
    response = await internal_post(blog, "update-page-config", {"container_type": "page"})
    assert response.status_code == 422
    assert "container_id" in response.json()["detail"]


async def test_update_with_an_idempotency_key_replays(blog, farm_shop, clean_db):
    payload = page(farm_shop, features={"cart": True})
    first = await internal_post(blog, "update-page-config", payload, idempotency_key="cfg-1")
    # Changed in between: a replay answers the stored response and does not apply again.
    await internal_post(blog, "update-page-config", page(farm_shop, features={"cart": False}))
    replay = await internal_post(blog, "update-page-config", payload, idempotency_key="cfg-1")
    assert replay.status_code == 200
    assert replay.json() == first.json()
    assert config_rows(clean_db)[0][2] == {"cart": False}
    other = await internal_post(
        blog,
        "update-page-config",
        page(farm_shop, features={"market": True}),
        idempotency_key="cfg-1",
    )
    assert other.status_code == 422
    assert "Idempotency-Key" in other.json()["detail"]


async def test_the_api_key_is_in_no_response_and_no_stored_replay(blog, farm_shop, clean_db):
    update = await internal_post(
        blog,
        "update-page-config",
        page(farm_shop, sumup_merchant_code="MSANDBOX1", sumup_api_key=SANDBOX_KEY),
        idempotency_key="with-key",
    )
    config_id = update.json()["id"]
    responses = [
        update,
        await internal_get(
            blog, "page-config", {"container_type": "page", "container_id": farm_shop}
        ),
        await internal_get(blog, "page-config-by-id", {"id": config_id}),
        await internal_get(blog, "page-configs-batch", {"ids": [config_id]}),
        await internal_get(
            blog, "page-configs-batch", {"container_type": "page", "container_ids": [farm_shop]}
        ),
        await internal_get(
            blog, "page-config-ensure", {"container_type": "page", "container_id": farm_shop}
        ),
    ]
    for response in responses:
        assert response.status_code == 200
        assert SANDBOX_KEY not in response.text
        assert "sumup_api_key" not in response.text
    with admin_connect(clean_db, "blog") as connection:
        stored = connection.execute("SELECT response FROM blog.idempotency_keys").fetchall()
    assert stored
    assert SANDBOX_KEY not in json.dumps([row[0] for row in stored])
    schema = await blog.get("/schema/openapi.json")
    assert "/internal/data/page-configs-batch" in schema.json()["paths"]


def retired_keys(server) -> list[tuple]:
    with admin_connect(server, "blog") as connection:
        return connection.execute(
            "SELECT page_config_id, sumup_merchant_code, sumup_api_key "
            "FROM blog.retired_sumup_keys ORDER BY sumup_merchant_code"
        ).fetchall()


async def test_a_key_the_config_stops_using_is_kept_for_orders_and_a_rotation_keeps_none(
    blog, farm_shop, clean_db
):
    """What the config stops using because its merchant changed or its key was removed is
    kept (orders settles and refunds that merchant's checkouts with it); a rotation of the
    same merchant's key keeps nothing; naming a merchant with a key again drops its entry."""

    async def update(**fields) -> int:
        answer = await internal_post(blog, "update-page-config", page(farm_shop, **fields))
        assert answer.status_code == 200, answer.text
        assert "sumup_api_key" not in answer.text
        return int(answer.json()["id"])

    config_id = await update(sumup_merchant_code="MONE111", sumup_api_key="sup_sk_one_first")
    await update(sumup_api_key="sup_sk_one_second")  # rotation: the new key sees the checkouts
    assert retired_keys(clean_db) == []
    await update(sumup_merchant_code="MTWO222", sumup_api_key="sup_sk_two_first")
    assert retired_keys(clean_db) == [(config_id, "MONE111", "sup_sk_one_second")]
    await update(sumup_api_key=None)
    assert retired_keys(clean_db) == [
        (config_id, "MONE111", "sup_sk_one_second"),
        (config_id, "MTWO222", "sup_sk_two_first"),
    ]
    await update(sumup_api_key="sup_sk_two_second")
    assert retired_keys(clean_db) == [(config_id, "MONE111", "sup_sk_one_second")]
    await update(sumup_merchant_code=None)  # the merchant removed, key and all
    assert retired_keys(clean_db) == [
        (config_id, "MONE111", "sup_sk_one_second"),
        (config_id, "MTWO222", "sup_sk_two_second"),
    ]
    await update(sumup_merchant_code="MONE111", sumup_api_key="sup_sk_one_third")
    assert retired_keys(clean_db) == [(config_id, "MTWO222", "sup_sk_two_second")]


async def test_retired_keys_are_pruned_past_their_time_on_the_next_write(
    clean_db, credentials, farm_shop
):
    """Kept BLOG_RETIRED_SUMUP_KEY_DAYS (90 by default, 30 here): an entry older than that is
    deleted by the next config write, of any config; a younger one stays."""
    overrides = {"blog": {"extra": {"BLOG_RETIRED_SUMUP_KEY_DAYS": "30"}}}
    async with in_process_stack(
        clean_db, credentials, ["blog"], settings_overrides=overrides
    ) as stack:
        blog = stack.client("blog")
        other_page = insert_post(clean_db, "other-page", is_page=True)
        for page_id in (farm_shop, other_page):
            for fields in (
                {"sumup_merchant_code": "MONE111", "sumup_api_key": "sup_sk_one_first"},
                {"sumup_merchant_code": "MTWO222", "sumup_api_key": "sup_sk_two_first"},
            ):
                answer = await internal_post(blog, "update-page-config", page(page_id, **fields))
                assert answer.status_code == 200, answer.text
        with admin_connect(clean_db, "blog") as connection:
            connection.execute(
                "UPDATE blog.retired_sumup_keys SET retired_at = now() - interval '31 days' "
                "WHERE page_config_id = (SELECT id FROM blog.page_configs "
                "WHERE container_type = 'page' AND container_id = %s)",
                (farm_shop,),
            )
        assert len(retired_keys(clean_db)) == 2
        answer = await internal_post(
            blog, "update-page-config", page(other_page, features={"cart": True})
        )
        assert answer.status_code == 200, answer.text
        assert [row[1:] for row in retired_keys(clean_db)] == [("MONE111", "sup_sk_one_first")]


def keys_orders_reads(server, credentials) -> list[tuple]:
    """The retired keys as orders reads them: its foreign table, through postgres_fdw."""
    with psycopg.connect(server.topology.app_url("orders", credentials)) as orders:
        return orders.execute(
            "SELECT sumup_merchant_code, sumup_api_key FROM blog.retired_sumup_keys "
            "ORDER BY sumup_merchant_code"
        ).fetchall()


async def test_a_retired_key_past_its_days_is_not_readable_and_not_kept_without_a_config_write(
    clean_db, credentials, farm_shop
):
    """Task s21 retired keys 2: an entry older than BLOG_RETIRED_SUMUP_KEY_DAYS was deleted
    only by the next page-config write: while nobody edited a config, orders could read the
    key for ever. Now orders' read (export.retired_sumup_keys) returns only entries younger
    than blog's setting, as blog last started with it, and blog deletes the older ones when it
    starts (it has no background job)."""

    def blog_with_days(days: int):
        overrides = {"blog": {"extra": {"BLOG_RETIRED_SUMUP_KEY_DAYS": str(days)}}}
        return in_process_stack(clean_db, credentials, ["blog"], settings_overrides=overrides)

    async with blog_with_days(60) as stack:
        for fields in (
            {"sumup_merchant_code": "MONE111", "sumup_api_key": "sup_sk_one_first"},
            {"sumup_merchant_code": "MTWO222", "sumup_api_key": "sup_sk_two_first"},
            {"sumup_merchant_code": "MTHREE3", "sumup_api_key": "sup_sk_three_first"},
        ):
            answer = await internal_post(
                stack.client("blog"), "update-page-config", page(farm_shop, **fields)
            )
            assert answer.status_code == 200, answer.text
        with admin_connect(clean_db, "blog") as connection:
            connection.execute(
                "UPDATE blog.retired_sumup_keys SET retired_at = now() - interval '31 days' "
                "WHERE sumup_merchant_code = 'MONE111'"
            )
        # Younger than blog's 60 days: both readable.
        assert keys_orders_reads(clean_db, credentials) == [
            ("MONE111", "sup_sk_one_first"),
            ("MTWO222", "sup_sk_two_first"),
        ]
    async with blog_with_days(30):
        # No config written: the entry past 30 days is neither readable nor kept.
        assert keys_orders_reads(clean_db, credentials) == [("MTWO222", "sup_sk_two_first")]
        assert [row[1:] for row in retired_keys(clean_db)] == [("MTWO222", "sup_sk_two_first")]


async def test_a_deleted_config_keeps_its_key_and_one_back_with_it_keeps_none(
    blog, farm_shop, clean_db
):
    """Blog 0005's trigger, each way a config is deleted and comes back: marked deleted, its
    merchant's key is kept; unmarked, it names that merchant with a key again and the entry
    goes; its row removed, the key is kept (the entry outlives the row); the row inserted again
    with its id and key (the split's sync does so), the entry goes."""
    answer = await internal_post(
        blog,
        "update-page-config",
        page(farm_shop, sumup_merchant_code="MONE111", sumup_api_key="sup_sk_one_first"),
    )
    assert answer.status_code == 200, answer.text
    config_id = int(answer.json()["id"])
    kept = [(config_id, "MONE111", "sup_sk_one_first")]
    with admin_connect(clean_db, "blog") as connection:
        connection.execute(
            "UPDATE blog.page_configs SET deleted_at = now() WHERE id = %s", (config_id,)
        )
        assert retired_keys(clean_db) == kept
        connection.execute(
            "UPDATE blog.page_configs SET deleted_at = NULL WHERE id = %s", (config_id,)
        )
        assert retired_keys(clean_db) == []
        connection.execute("DELETE FROM blog.page_configs WHERE id = %s", (config_id,))
        assert retired_keys(clean_db) == kept
        connection.execute(
            "INSERT INTO blog.page_configs (id, container_type, container_id, "
            "sumup_merchant_code, sumup_api_key) VALUES (%s, 'page', %s, %s, %s)",
            (config_id, farm_shop, "MONE111", "sup_sk_one_first"),
        )
        assert retired_keys(clean_db) == []


async def test_blog_starts_while_its_database_is_unreachable(clean_db, credentials):
    """Carried LOW-7: blog recorded its retired-key days and pruned as it started, in its
    start-up hook, so it did not start at all while its database was unreachable (every
    other service starts, its /readyz a 503 until the database answers). The first pass is
    still tried at start-up; failing, it is retried in the background."""
    unreachable = "postgresql://blog_app:x@127.0.0.1:1/db_blog"
    overrides = {"blog": {"database_url": unreachable}}
    async with in_process_stack(
        clean_db, credentials, ["blog"], settings_overrides=overrides
    ) as running:
        ready = await running.client("blog").get("/readyz")
    assert ready.status_code == 503
    assert "database unreachable" in ready.json()["detail"]


async def test_a_running_blog_deletes_retired_keys_past_their_days(
    clean_db, credentials, farm_shop
):
    """Carried: a retired key past its days was deleted only when blog started or a config
    was written (unreadable meanwhile, but a kept secret is a liability). A running blog now
    prunes every BLOG_RETIRED_SUMUP_KEY_PRUNE_SECONDS (an hour by default; 0.2 s here)."""
    overrides = {
        "blog": {
            "extra": {
                "BLOG_RETIRED_SUMUP_KEY_DAYS": "30",
                "BLOG_RETIRED_SUMUP_KEY_PRUNE_SECONDS": "0.2",
            }
        }
    }
    async with in_process_stack(
        clean_db, credentials, ["blog"], settings_overrides=overrides
    ) as stack:
        for fields in (
            {"sumup_merchant_code": "MONE111", "sumup_api_key": "sup_sk_one_first"},
            {"sumup_merchant_code": "MTWO222", "sumup_api_key": "sup_sk_two_first"},
        ):
            answer = await internal_post(
                stack.client("blog"), "update-page-config", page(farm_shop, **fields)
            )
            assert answer.status_code == 200, answer.text
        with admin_connect(clean_db, "blog") as connection:
            connection.execute(
                "UPDATE blog.retired_sumup_keys SET retired_at = now() - interval '31 days'"
            )
        for _ in range(250):  # a hang guard, not a measure
            if not retired_keys(clean_db):
                break
            await asyncio.sleep(0.02)
        assert retired_keys(clean_db) == []


async def test_blog_starts_while_its_retired_key_days_are_locked(clean_db, credentials):
    """Review LOW-A: the first pass ran unbounded before blog served, so a transaction holding
    the days row (a DBA's, another blog's) kept blog from serving for the role's statement
    timeout (30 s). The first pass now gives up after a few seconds (the background retries);
    once the row is free, the days are recorded."""
    overrides = {"blog": {"extra": {"BLOG_RETIRED_SUMUP_KEY_DAYS": "45"}}}
    with admin_connect(clean_db, "blog") as holder:
        holder.execute(
            "INSERT INTO blog.retired_sumup_key_days (one, days) VALUES (true, 90) "
            "ON CONFLICT (one) DO UPDATE SET days = 90"
        )
        holder.execute("BEGIN")
        holder.execute("SELECT 1 FROM blog.retired_sumup_key_days FOR UPDATE")
        starting = in_process_stack(clean_db, credentials, ["blog"], settings_overrides=overrides)
        # A hang guard, not a measure: well under the 30 s the first pass could wait before.
        running = await asyncio.wait_for(starting.__aenter__(), timeout=20)
        try:
            ready = await running.client("blog").get("/readyz")
            assert ready.status_code == 200
            holder.execute("ROLLBACK")
            for _ in range(500):  # the background's retry, within RETRY_SECONDS
                with admin_connect(clean_db, "blog") as connection:
                    days = connection.execute(
                        "SELECT days FROM blog.retired_sumup_key_days"
                    ).fetchone()
                if days == (45,):
                    break
                await asyncio.sleep(0.02)
            assert days == (45,)
        finally:
            await starting.__aexit__(None, None, None)

"""likes: contracts of every endpoint over real HTTP, atomic toggles under concurrency."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import admin_connect, in_process_stack
from tests.signed import internal_get, internal_post

PRODUCT = {"user_id": 1, "target_type": "product", "target_slug": "rose-jam"}
POST = {"user_id": 1, "target_type": "post", "target_id": 42}


@pytest.fixture
async def likes(clean_db, credentials):
    async with in_process_stack(clean_db, credentials, ["likes"]) as running:
        yield running.client("likes")


def like_rows(server) -> list[tuple]:
    with admin_connect(server, "likes") as connection:
        return connection.execute(
            """
            SELECT user_id, target_type, target_slug, target_id, deleted_at IS NULL
            FROM likes.likes ORDER BY id
            """
        ).fetchall()


async def test_toggle_likes_unlikes_and_restores_one_row(likes, clean_db):
    assert (await internal_post(likes, "toggle", PRODUCT)).json() == {"liked": True}
    assert (await internal_get(likes, "is-liked", PRODUCT)).json() == {"liked": True}
    assert (await internal_post(likes, "toggle", PRODUCT)).json() == {"liked": False}
    assert (await internal_get(likes, "is-liked", PRODUCT)).json() == {"liked": False}
    assert like_rows(clean_db) == [(1, "product", "rose-jam", None, False)]
    assert (await internal_post(likes, "toggle", PRODUCT)).json() == {"liked": True}
    assert like_rows(clean_db) == [(1, "product", "rose-jam", None, True)]


async def test_posts_are_liked_by_id(likes, clean_db):
    assert (await internal_post(likes, "toggle", POST)).json() == {"liked": True}
    assert (await internal_get(likes, "is-liked", POST)).json() == {"liked": True}
    other_post = {**POST, "target_id": 43}
    assert (await internal_get(likes, "is-liked", other_post)).json() == {"liked": False}
    assert like_rows(clean_db) == [(1, "post", None, 42, True)]


async def test_liked_slugs_and_ids_list_active_likes_of_one_user(likes):
    for slug in ["b-pear", "a-apple", "c-cherry"]:
        await internal_post(likes, "toggle", {**PRODUCT, "target_slug": slug})
    await internal_post(likes, "toggle", {**PRODUCT, "target_slug": "c-cherry"})  # unliked
    await internal_post(likes, "toggle", {**PRODUCT, "user_id": 2, "target_slug": "d-date"})
    for post_id in [7, 3]:
        await internal_post(likes, "toggle", {**POST, "target_id": post_id})

    slugs = await internal_get(likes, "liked-slugs", {"user_id": 1, "target_type": "product"})
    assert slugs.json() == ["a-apple", "b-pear"]
    ids = await internal_get(likes, "liked-ids", {"user_id": 1, "target_type": "post"})
    assert ids.json() == [3, 7]
    nobody = await internal_get(likes, "liked-ids", {"user_id": 99, "target_type": "post"})
    assert nobody.json() == []


async def test_set_is_idempotent_and_writes_nothing_when_unchanged(likes, clean_db):
    assert (await internal_post(likes, "set", {**PRODUCT, "liked": True})).json() == {"liked": True}
    with admin_connect(clean_db, "likes") as connection:
        before = connection.execute("SELECT xmin::text, updated_at FROM likes.likes").fetchall()
    for _ in range(3):
        repeated = await internal_post(likes, "set", {**PRODUCT, "liked": True})
        assert repeated.json() == {"liked": True}
    with admin_connect(clean_db, "likes") as connection:
        after = connection.execute("SELECT xmin::text, updated_at FROM likes.likes").fetchall()
    assert after == before

    assert (await internal_post(likes, "set", {**PRODUCT, "liked": False})).json() == {
        "liked": False
    }
    assert (await internal_post(likes, "set", {**PRODUCT, "liked": False})).json() == {
        "liked": False
    }
    assert like_rows(clean_db) == [(1, "product", "rose-jam", None, False)]
    # Unliking what was never liked writes no row.
    await internal_post(likes, "set", {**POST, "liked": False})
    assert len(like_rows(clean_db)) == 1


async def test_fifty_concurrent_toggles_end_in_the_state_their_parity_says(likes, clean_db):
    responses = await asyncio.gather(*(internal_post(likes, "toggle", PRODUCT) for _ in range(50)))
    assert [response.status_code for response in responses] == [200] * 50
    states = [response.json()["liked"] for response in responses]
    # Serialised toggles alternate: 25 saw "liked", 25 saw "unliked"; 50 is even, so unliked.
    assert states.count(True) == 25
    assert like_rows(clean_db) == [(1, "product", "rose-jam", None, False)]

    odd = await asyncio.gather(*(internal_post(likes, "toggle", POST) for _ in range(51)))
    assert all(response.status_code == 200 for response in odd)
    assert (await internal_get(likes, "is-liked", POST)).json() == {"liked": True}


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"user_id": 1, "target_type": "comment", "target_id": 1}, "target_type"),
        ({"user_id": 1, "target_type": "product"}, "target_slug"),
        ({"user_id": 1, "target_type": "post"}, "target_id"),
        ({"user_id": 1, "target_type": "product", "target_slug": "x", "target_id": 3}, "target_id"),
        ({"user_id": 1, "target_type": "post", "target_id": 3, "target_slug": "x"}, "target_slug"),
        ({"user_id": -1, "target_type": "post", "target_id": 3}, "user_id"),
        ({"user_id": "me", "target_type": "post", "target_id": 3}, "user_id"),
        ({"target_type": "post", "target_id": 3}, "user_id"),
        ({"user_id": 1, "target_type": "post", "target_id": 0}, "target_id"),
        ({"user_id": 1, "target_type": "product", "target_slug": ""}, "target_slug"),
    ],
)
async def test_bad_toggle_input_is_422_naming_the_field(likes, clean_db, payload, field):
    response = await internal_post(likes, "toggle", payload)
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")
    assert field in response.json()["detail"]
    assert like_rows(clean_db) == []


async def test_bad_set_and_data_input_is_422_naming_the_field(likes):
    missing_liked = await internal_post(likes, "set", PRODUCT)
    assert missing_liked.status_code == 422
    assert "liked" in missing_liked.json()["detail"]
    wrong_liked = await internal_post(likes, "set", {**PRODUCT, "liked": "yes"})
    assert wrong_liked.status_code == 422
    assert "liked" in wrong_liked.json()["detail"]

    for name, params, field in [
        ("is-liked", {"user_id": 1, "target_type": "product"}, "target_slug"),
        ("is-liked", {"user_id": "x", "target_type": "post", "target_id": 1}, "user_id"),
        ("is-liked", {"user_id": 1, "target_type": "video", "target_id": 1}, "target_type"),
        ("liked-slugs", {"user_id": 1, "target_type": "post"}, "target_type"),
        ("liked-ids", {"user_id": 1, "target_type": "product"}, "target_type"),
        ("liked-ids", {"target_type": "post"}, "user_id"),
    ]:
        response = await internal_get(likes, name, params)
        assert response.status_code == 422, (name, params)
        assert field in response.json()["detail"], (name, params, response.json())


async def test_toggle_with_an_idempotency_key_is_applied_once(likes, clean_db):
    first = await internal_post(likes, "toggle", PRODUCT, idempotency_key="like-once")
    second = await internal_post(likes, "toggle", PRODUCT, idempotency_key="like-once")
    assert first.json() == second.json() == {"liked": True}
    assert like_rows(clean_db) == [(1, "product", "rose-jam", None, True)]


async def test_export_view_shows_active_likes_without_the_soft_delete_column(likes, clean_db):
    await internal_post(likes, "toggle", PRODUCT)
    await internal_post(likes, "toggle", POST)
    await internal_post(likes, "toggle", POST)
    with admin_connect(clean_db, "likes") as connection:
        columns = [
            row[0]
            for row in connection.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = 'export' AND table_name = 'likes' ORDER BY ordinal_position"
            )
        ]
        rows = connection.execute(
            "SELECT user_id, target_type, target_slug, target_id FROM export.likes"
        ).fetchall()
    assert "deleted_at" not in columns
    assert rows == [(1, "product", "rose-jam", None)]

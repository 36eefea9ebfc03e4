"""Cart's inbox (the plan's post-split cart, issue 15): ActivityStreams Add / Remove / Update of
rose:CartItem objects, signed, validated, idempotent by activity id."""

from __future__ import annotations

import json

import pytest

from tests.conftest import admin_connect, in_process_stack
from tests.integration.market_fixtures import seed_products
from tests.signed import internal_post

AS = "https://www.w3.org/ns/activitystreams"


def activity(kind: str, activity_id: str, product_id: int, quantity: int | None = None, **target):
    item: dict = {"type": "rose:CartItem", "productId": product_id}
    if quantity is not None:
        item["quantity"] = quantity
    return {
        "@context": AS,
        "id": activity_id,
        "type": kind,
        "actor": "https://market.rose-ash.com/",
        "object": item,
        "target": {"type": "rose:Cart", **(target or {"userId": 7})},
    }


def lines(server) -> list[tuple]:
    with admin_connect(server, "cart") as connection:
        return connection.execute(
            "SELECT user_id, session_id, product_id, quantity, deleted_at IS NULL "
            "FROM cart.cart_items ORDER BY id"
        ).fetchall()


def received(server) -> list[tuple]:
    with admin_connect(server, "cart") as connection:
        return connection.execute(
            "SELECT id, type FROM cart.inbox_activities ORDER BY received_at, id"
        ).fetchall()


@pytest.fixture
async def cart(clean_db, credentials):
    seed_products(clean_db, 3, prefix="inbox")
    async with in_process_stack(clean_db, credentials, ["cart"]) as running:
        yield running.client("cart")


async def test_add_update_remove_each_change_cart_items(cart, clean_db):
    added = await internal_post(cart, "inbox", activity("Add", "urn:a:1", 1, 2))
    assert added.status_code == 200, added.text
    assert added.json() == {
        "activity_id": "urn:a:1",
        "type": "Add",
        "product_id": 1,
        "quantity": 2,
        "replayed": False,
    }
    assert lines(clean_db) == [(7, None, 1, 2, True)]
    more = await internal_post(cart, "inbox", activity("Add", "urn:a:2", 1))  # 1 by default
    assert more.json()["quantity"] == 3
    anonymous = await internal_post(
        cart, "inbox", activity("Add", "urn:a:3", 2, 1, sessionId="anon-1")
    )
    assert anonymous.status_code == 200, anonymous.text

    updated = await internal_post(cart, "inbox", activity("Update", "urn:a:4", 1, 5))
    assert updated.json()["quantity"] == 5
    assert lines(clean_db)[0] == (7, None, 1, 5, True)

    removed = await internal_post(cart, "inbox", activity("Remove", "urn:a:5", 1))
    assert removed.json()["quantity"] == 0
    assert lines(clean_db) == [(7, None, 1, 5, False), (None, "anon-1", 2, 1, True)]
    # Removing what is not there is no error: the line is not in the cart, as asked.
    again = await internal_post(cart, "inbox", activity("Remove", "urn:a:6", 1))
    assert again.json()["quantity"] == 0
    assert [row[1] for row in received(clean_db)] == [
        "Add",
        "Add",
        "Add",
        "Update",
        "Remove",
        "Remove",
    ]


async def test_a_replayed_activity_id_has_no_second_effect(cart, clean_db):
    first = await internal_post(cart, "inbox", activity("Add", "urn:replay", 1, 2))
    # Signed anew (a fresh nonce): the signature layer lets it in, the activity id does not.
    second = await internal_post(cart, "inbox", activity("Add", "urn:replay", 1, 2))
    assert second.status_code == 200, second.text
    assert second.json() == {**first.json(), "replayed": True}
    assert lines(clean_db) == [(7, None, 1, 2, True)]
    # The same id with other content is refused, and changes nothing.
    other = await internal_post(cart, "inbox", activity("Add", "urn:replay", 1, 9))
    assert other.status_code == 409
    assert other.json()["errors"][0]["field"] == "id"
    assert lines(clean_db) == [(7, None, 1, 2, True)]


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({**activity("Add", "urn:m:1", 1), "type": "Like"}, "type"),
        ({**activity("Add", "urn:m:2", 1), "object": {"type": "Note", "productId": 1}}, "type"),
        (activity("Add", "urn:m:3", 1, 0), "quantity"),
        (activity("Update", "urn:m:4", 1, 100), "quantity"),
        (activity("Update", "urn:m:5", 1), "object"),  # an Update says how many
        ({**activity("Add", "urn:m:6", 1), "id": ""}, "id"),
        (activity("Add", "urn:m:7", 1, userId=1, sessionId="s"), "target"),
        ({**activity("Add", "urn:m:8", 1), "extra": True}, "extra"),
        ({k: v for k, v in activity("Add", "urn:m:9", 1).items() if k != "object"}, "object"),
        # Audit: the id (kept, and answered back) and the actor are one line, as names are.
        (activity("Add", "urn:m:10\n", 1), "id"),
        (activity("Add", "urn:m:\u202e11", 1), "id"),
        (activity("Add", " urn:m:12", 1), "id"),
        ({**activity("Add", "urn:m:13", 1), "actor": "https://market\x1b[2J/"}, "actor"),
    ],
)
async def test_a_malformed_activity_is_422_and_changes_nothing(cart, clean_db, payload, field):
    answer = await internal_post(cart, "inbox", payload)
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert field in answer.json()["detail"].lower()
    assert lines(clean_db) == []
    assert received(clean_db) == []


async def test_a_remove_that_says_how_many_is_422_and_keeps_the_line(cart, clean_db):
    """Probe (2026-12-06): a Remove carrying a quantity ("take 1 of the 3 away", as a careless
    sender may mean it) took the whole line out, its quantity silently ignored, though an
    unknown member is refused rather than ignored. A Remove names the product only: one that
    says how many is a 422 naming object.quantity, the line kept, nothing recorded (an Update
    sets how many are left)."""
    await internal_post(cart, "inbox", activity("Add", "urn:r:1", 1, 3))
    answer = await internal_post(cart, "inbox", activity("Remove", "urn:r:2", 1, 1))
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert answer.json()["errors"][0]["field"] == "object.quantity", answer.text
    assert lines(clean_db) == [(7, None, 1, 3, True)]
    assert received(clean_db) == [("urn:r:1", "Add")]


async def test_a_product_market_does_not_sell_is_404_and_not_recorded(cart, clean_db):
    answer = await internal_post(cart, "inbox", activity("Add", "urn:n:1", 999))
    assert answer.status_code == 404
    assert received(clean_db) == []
    # Recorded nothing: once the product exists, the same activity id applies.
    missing_line = await internal_post(cart, "inbox", activity("Update", "urn:n:2", 1, 3))
    assert missing_line.status_code == 404
    assert received(clean_db) == []


async def test_an_add_keeps_a_line_past_99_and_is_409_not_recorded(cart, clean_db):
    """Audit s20 M4: an Add to a line sign-in took past 99 lowered it to 99."""
    assert (
        await internal_post(cart, "inbox", activity("Add", "urn:m:1", 1, 90))
    ).status_code == 200
    with admin_connect(clean_db, "cart") as connection:
        connection.execute("UPDATE cart.cart_items SET quantity = 150")
    refused = await internal_post(cart, "inbox", activity("Add", "urn:m:2", 1, 1))
    assert refused.status_code == 409, refused.text
    assert "already holds 150" in refused.json()["detail"]
    assert lines(clean_db) == [(7, None, 1, 150, True)]
    assert received(clean_db) == [("urn:m:1", "Add")]


async def test_an_unsigned_or_wrongly_signed_activity_is_401(cart, clean_db):
    body = json.dumps(activity("Add", "urn:u:1", 1)).encode()
    unsigned = await cart.post(
        "/internal/actions/inbox", content=body, headers={"Content-Type": "application/json"}
    )
    assert unsigned.status_code == 401
    assert unsigned.headers["content-type"].startswith("application/problem+json")
    tampered = await internal_post(
        cart, "inbox", None, raw=body.replace(b'"urn:u:1"', b'"urn:u:2"')
    )
    assert tampered.status_code == 200  # signed as sent: fine
    forged = await cart.post(
        "/internal/actions/inbox",
        content=body,
        headers={
            "Content-Type": "application/json",
            "X-Rose-Signature": "0" * 64,
            "X-Rose-Timestamp": "1",
        },
    )
    assert forged.status_code == 401
    assert [row[0] for row in received(clean_db)] == ["urn:u:2"]

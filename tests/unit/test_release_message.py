"""events' release-for-order on the wire: what an older events reads, what the idempotency
hash of a message sent again says."""

from __future__ import annotations

import msgspec

from apps.common.idempotency import payload_hash
from apps.events.contract import ReleaseForOrder


def test_a_release_without_paid_back_is_the_message_an_older_events_reads():
    """`paid_back` came with the review of a paid order SumUp gave back whole. An events that
    predates it refuses unknown fields; with every default left out instead (review L1,
    December 2026), `rolled_back: false` went missing too, and a release applied by the older
    events whose answer was lost, sent again to the newer one, hashed differently: 422 "key
    already used with another payload", the message dead."""
    wire = msgspec.json.decode(msgspec.json.encode(ReleaseForOrder(order_id=5)))
    assert wire == {"order_id": 5, "rolled_back": False}
    as_sent_before = msgspec.json.decode(
        b'{"order_id": 5, "rolled_back": false}', type=ReleaseForOrder
    )
    assert payload_hash(as_sent_before) == payload_hash(ReleaseForOrder(order_id=5))


def test_a_paid_back_release_says_so():
    wire = msgspec.json.decode(msgspec.json.encode(ReleaseForOrder(order_id=5, paid_back=True)))
    assert wire == {"order_id": 5, "rolled_back": False, "paid_back": True}
    assert msgspec.json.decode(msgspec.json.encode(wire), type=ReleaseForOrder).paid_back is True

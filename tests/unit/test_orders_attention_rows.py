"""`rose orders attention` shows why each order is listed: a flag, and (audit s20 H1) its SumUp
merchant having no key any more, with what to do."""

from __future__ import annotations

from ops.cli.calls import attention_hints, attention_rows, flagged_lines, unread_parts

NOTE = (
    "order 4: its SumUp merchant M1 has no key in page config 2 any more; a payment may be "
    "waiting on SumUp: restore the key (blog page settings) to settle it"
)


def row(**changes: object) -> dict[str, object]:
    base: dict[str, object] = {
        "order_id": 4,
        "status": "pending",
        "flagged": False,
        "flag_reason": None,
        "total": "9.00",
        "currency": "EUR",
        "refunds": [],
        "merchant_key_missing": None,
    }
    return {**base, **changes}


def test_an_order_without_its_merchant_key_says_what_to_do() -> None:
    assert attention_rows([row(merchant_key_missing=NOTE)]) == [
        ("4", "pending", "9.00 EUR", NOTE, "")
    ]


def test_a_flagged_order_without_its_key_gives_both_reasons() -> None:
    [(_, status, _, why, _)] = attention_rows(
        [row(flagged=True, flag_reason="amount differs", merchant_key_missing=NOTE)]
    )
    assert status == "flagged"
    assert why == f"amount differs; {NOTE}"


def test_an_answer_without_the_key_field_still_shows() -> None:
    answer = row()
    del answer["merchant_key_missing"]
    assert attention_rows([answer]) == [("4", "pending", "9.00 EUR", "", "")]


def test_blog_not_read_is_said_with_what_is_missing() -> None:
    """While blog is down, the list says which part is missing, and from whom."""
    assert unread_parts(["blog"]) == [
        "blog could not be read: not listed is which orders' SumUp merchant has no key any more "
        "(a payment may be waiting on SumUp); ask again once it answers"
    ]
    assert unread_parts([]) == []


def test_flagged_orders_are_told_how_their_review_ends() -> None:
    listed = [row(order_id=4, flagged=True, flag_reason="amount differs"), row(order_id=5)]
    assert attention_hints(listed) == [
        "flagged: 4. Once you have looked at one (SumUp's dashboard, the buyer), "
        "`rose orders end-review ORDER` settles it from what SumUp says now"
    ]
    assert attention_hints([row(order_id=5)]) == []


def test_a_flag_says_its_reason_and_how_the_review_ends() -> None:
    """`rose orders flag`: the order's status and reason, the first one when it was flagged
    already, and the command that settles it."""
    answer = {"order_id": 9, "status": "paid", "flag_reason": "charged back", "flagged_now": True}
    assert flagged_lines(answer) == [
        "order 9 (paid) flagged for review: charged back",
        "  once you have looked at it, `rose orders end-review 9` settles it from what SumUp "
        "says now",
    ]
    again = flagged_lines({**answer, "flagged_now": False})
    assert again[0] == "order 9 (paid) was flagged already: charged back"


def test_a_refund_sumup_refused_is_told_what_a_person_does() -> None:
    """Probe (money): a refund SumUp refused (failed) is never asked again; the list showed it
    with SumUp's answer and nothing of what a person does. It says so now: give the money
    back in SumUp's dashboard, flag the order and end its review (which settles the refund
    done once SumUp shows it given back)."""
    failed = {
        "id": 2,
        "amount": "1.00",
        "currency": "EUR",
        "status": "failed",
        "reason": "paid after order 5 replaced it",
        "last_error": "SumUp refused the refund (409)",
    }
    waiting = {**failed, "id": 3, "status": "due", "last_error": None}
    listed = [
        row(order_id=4, status="refund_due", refunds=[failed]),
        row(order_id=6, status="refund_due", refunds=[waiting]),
    ]
    # Review M3: a failed refund may be a request whose answer was lost and whose transaction
    # SumUp would not show: its money may have gone back already. The hint has the person look
    # before giving anything back by hand, not give it back twice.
    assert attention_hints(listed) == [
        "refunds that failed: order 4. orders does not ask for them again: look in SumUp's "
        "dashboard whether the money went back (a request whose answer was lost may have gone "
        "through), and only if it did not, give it back there; then `rose orders flag ORDER "
        "REASON` and `rose orders end-review ORDER` settle each once SumUp shows it given back"
    ]
    flagged = row(order_id=4, status="refund_due", refunds=[failed], flagged=True)
    assert len(attention_hints([flagged])) == 2  # flagged already: its review settles it too


def test_an_order_being_refunded_says_why_it_is_listed() -> None:
    """probe_load: an order listed for money going back (refund_due, or a refund of it not
    done) had an empty "why"; the reasons were only in the refunds column."""
    refund = {
        "amount": "7.50",
        "currency": "EUR",
        "status": "due",
        "reason": "bookings that could not be confirmed: Morning tour",
        "last_error": None,
    }
    [(_, status, _, why, _)] = attention_rows([row(status="refund_due", refunds=[refund])])
    assert (status, why) == ("refund_due", "money goes back: 1 refund not done yet")
    [(_, _, _, why, _)] = attention_rows([row(status="paid", refunds=[refund, refund])])
    assert why == "money goes back: 2 refunds not done yet"
    done = {**refund, "status": "done"}
    [(_, _, _, why, _)] = attention_rows([row(status="refund_due", refunds=[done])])
    assert why == ""

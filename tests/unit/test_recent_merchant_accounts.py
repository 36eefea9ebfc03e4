"""RecentMerchantAccounts: an account is recalled only within its time, never with 0 seconds,
and forgetting or pruning never drops an account still within its time."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from apps.orders.payments import MerchantAccount
from apps.orders.settlement import RecentMerchantAccounts


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_account_is_recalled_within_its_time_and_not_after() -> None:
    clock = Clock()
    recent = RecentMerchantAccounts(60, clock)
    account = MerchantAccount("M1", "key-1")
    recent.learn(7, account)
    clock.now += 59.9
    assert recent.recall(7) == account
    assert recent.recall(8) is None
    clock.now += 0.1
    assert recent.recall(7) is None


def test_zero_seconds_remembers_nothing() -> None:
    recent = RecentMerchantAccounts(0, Clock())
    recent.learn(7, MerchantAccount("M1", "key-1"))
    assert recent.recall(7) is None


def test_a_forgotten_account_is_read_again_and_a_newer_one_replaces_it() -> None:
    recent = RecentMerchantAccounts(60, Clock())
    recent.learn(7, MerchantAccount("M1", "old"))
    recent.forget(7)
    assert recent.recall(7) is None
    recent.learn(7, MerchantAccount("M1", "old"))
    recent.learn(7, MerchantAccount("M1", "new"))
    assert recent.recall(7) == MerchantAccount("M1", "new")


@given(
    st.lists(
        st.tuples(st.integers(0, 400), st.floats(0, 30, allow_nan=False)), min_size=1, max_size=900
    )
)
def test_pruning_keeps_every_account_within_its_time(learned: list[tuple[int, float]]) -> None:
    """Learn many configs with time passing in between: whatever pruning dropped, every config
    learned within the last 60 seconds is recalled with its latest account."""
    clock = Clock()
    recent = RecentMerchantAccounts(60, clock)
    latest: dict[int, tuple[float, MerchantAccount]] = {}
    for number, (config_id, pause) in enumerate(learned):
        clock.now += pause
        account = MerchantAccount("M", f"key-{number}")
        recent.learn(config_id, account)
        latest[config_id] = (clock.now, account)
    for config_id, (when, account) in latest.items():
        expected = account if when + 60 > clock.now else None
        assert recent.recall(config_id) == expected


def test_an_opened_checkout_is_given_once_for_its_own_order_with_the_account_still_known() -> None:
    """The webhook's early read (EarlyCheckoutRead): a checkout create-order opened is given
    with its config's account to the first webhook naming it and its order, never to one naming
    another order (a forged pairing), never twice, and never once the account is not recalled."""
    clock = Clock()
    recent = RecentMerchantAccounts(60, clock)
    account = MerchantAccount("M1", "key-1")
    recent.learn(7, account)
    recent.opened("chk-a", 41, 7, account)
    recent.opened("chk-b", 42, 7, account)
    recent.opened("chk-c", 43, 7, account)
    assert recent.take_opened(99, "chk-a") is None  # another order's id: dropped, not given
    assert recent.take_opened(41, "chk-a") is None
    assert recent.take_opened(42, "chk-b") == (7, account)
    assert recent.take_opened(42, "chk-b") is None
    clock.now += 60
    assert recent.take_opened(43, "chk-c") is None  # the account's time is over
    assert recent.take_opened(44, "chk-unknown") is None


def test_opened_checkouts_are_bounded_and_none_kept_with_zero_seconds() -> None:
    recent = RecentMerchantAccounts(60, Clock())
    account = MerchantAccount("M1", "key-1")
    recent.learn(7, account)
    for number in range(RecentMerchantAccounts.MOST_OPENED + 10):
        recent.opened(f"chk-{number}", number, 7, account)
    assert recent.take_opened(0, "chk-0") is None  # the oldest went first
    last = RecentMerchantAccounts.MOST_OPENED + 9
    assert recent.take_opened(last, f"chk-{last}") is not None
    nothing = RecentMerchantAccounts(0, Clock())
    nothing.opened("chk-a", 1, 7, account)
    assert nothing.take_opened(1, "chk-a") is None


def test_an_opened_checkout_is_not_given_once_its_page_names_another_account() -> None:
    """Review F6: the early read took whatever account was remembered for the page config when
    the webhook came; a page that switched merchant (or key) since the checkout was opened had
    the other merchant's key sent with this merchant's checkout (the answer then dropped). The
    checkout is given only with the account it was opened with, while still the one recalled."""
    recent = RecentMerchantAccounts(60, Clock())
    opened_with = MerchantAccount("M1", "key-1")
    recent.learn(7, opened_with)
    recent.opened("chk-a", 41, 7, opened_with)
    recent.opened("chk-b", 42, 7, opened_with)
    recent.learn(7, MerchantAccount("M2", "key-2"))  # the page now takes payments elsewhere
    assert recent.take_opened(41, "chk-a") is None
    recent.learn(7, MerchantAccount("M1", "key-1b"))  # the same merchant, its key rotated
    assert recent.take_opened(42, "chk-b") is None

"""bench.checkout's breakdown counts waits that ran at the same time once (SumUp asked while a
statement runs): the time they cover is the length of their union, clipped to the section."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bench.checkout_profile import _covered


def test_overlapping_waits_count_once_and_gaps_not_at_all() -> None:
    assert _covered([(0, 2), (1, 3)], 0, 10) == 3
    assert _covered([(1, 3), (0, 2)], 0, 10) == 3  # in any order
    assert _covered([(0, 1), (2, 3)], 0.5, 2.5) == 1.0  # clipped to the section
    assert _covered([(0, 5), (1, 2)], 0, 10) == 5  # one inside another
    assert _covered([], 0, 1) == 0


@given(
    st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40)), max_size=12),
    st.integers(0, 40),
    st.integers(0, 40),
)
def test_the_time_covered_is_the_union_of_the_waits(
    pairs: list[tuple[int, int]], start: int, end: int
) -> None:
    """Against counting unit steps: a step is covered when some wait spans it."""
    intervals = [(min(a, b), max(a, b)) for a, b in pairs]
    start, end = min(start, end), max(start, end)
    steps = sum(1 for t in range(start, end) if any(a <= t and t + 1 <= b for a, b in intervals))
    assert _covered([(float(a), float(b)) for a, b in intervals], start, end) == steps

"""orders' bound on reports of one checkout handled at once (apps.orders.runtime.AtATime): one
beyond the bound waits for a turn, holding nothing, and only those beyond it are told at once
(review L4)."""

from __future__ import annotations

import asyncio
import contextlib

from apps.orders.runtime import AtATime

KEY = ("checkout", "c-1")


async def test_one_beyond_the_bound_waits_for_a_turn_and_those_beyond_it_are_told_at_once():
    reports = AtATime(2, waiting=1)
    gate = asyncio.Event()
    went_on: list[str] = []

    async def report(name: str) -> bool:
        async with reports.turn(KEY) as handling:
            if handling:
                went_on.append(name)
                await gate.wait()
            return handling

    first, second = asyncio.create_task(report("1")), asyncio.create_task(report("2"))
    await asyncio.sleep(0)
    third = asyncio.create_task(report("3"))
    await asyncio.sleep(0)
    assert reports.waiting(KEY) == 1
    assert await report("4") is False  # told at once: the third's read comes after it
    gate.set()
    assert await asyncio.gather(first, second, third) == [True, True, True]
    assert went_on == ["1", "2", "3"]
    assert reports.waiting(KEY) == 0
    # The key is forgotten: its next reports go on at once.
    with reports.taken(KEY) as handling:
        assert handling


async def test_a_waiting_report_that_ends_leaves_its_place_to_another():
    reports = AtATime(1, waiting=1)
    gate = asyncio.Event()

    async def report() -> bool:
        async with reports.turn(KEY) as handling:
            if handling:
                await gate.wait()
            return handling

    first = asyncio.create_task(report())
    await asyncio.sleep(0)
    waiting = asyncio.create_task(report())
    await asyncio.sleep(0)
    assert reports.waiting(KEY) == 1
    waiting.cancel()  # its request ended (the client gone, the server stopping)
    with contextlib.suppress(asyncio.CancelledError):
        await waiting
    assert reports.waiting(KEY) == 0
    again = asyncio.create_task(report())
    await asyncio.sleep(0)
    assert reports.waiting(KEY) == 1
    gate.set()
    assert await asyncio.gather(first, again) == [True, True]


async def test_one_whose_turn_does_not_come_within_its_wait_is_told_so_and_leaves_its_place():
    """Create-order's bound (ORDERS_CHECKOUTS_AT_ONCE): a checkout waits for a turn at most as
    long as a request waits for a connection, then is told orders is busy."""
    checkouts = AtATime(1, waiting=1)
    gate = asyncio.Event()

    async def checkout(within: float) -> bool:
        async with checkouts.turn(KEY, within=within) as handling:
            if handling:
                await gate.wait()
            return handling

    first = asyncio.create_task(checkout(60))
    await asyncio.sleep(0)
    assert await checkout(0.05) is False
    assert checkouts.waiting(KEY) == 0  # its place is free for the next
    late = asyncio.create_task(checkout(60))
    await asyncio.sleep(0)
    assert checkouts.waiting(KEY) == 1
    gate.set()
    assert await asyncio.gather(first, late) == [True, True]

"""Waiting for something another process or task does (a relay, a reconciler, a webhook).

A deadline bounds the wait so a broken behaviour fails the test; it is not a timing assertion.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(check: Callable[[], T], *, timeout: float = 20.0, interval: float = 0.1) -> T:
    """Poll ``check`` until it returns something truthy; return it (or its last value)."""
    deadline = time.monotonic() + timeout
    value = check()
    # Polling: the state lives in a database or another process, there is no event to await.
    while not value and time.monotonic() < deadline:
        await asyncio.sleep(interval)
        value = check()
    return value


def eventually_sync(check: Callable[[], T], *, timeout: float = 20.0, interval: float = 0.1) -> T:
    deadline = time.monotonic() + timeout
    value = check()
    while not value and time.monotonic() < deadline:
        time.sleep(interval)
        value = check()
    return value

"""Fixtures shared by the integration tests of commerce: the SumUp sandbox and a small shop."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from apps.sumup_sandbox.server import BackgroundSandbox
from tests.integration.commerce_fixtures import Shop, open_shop
from tests.integration.orders_fixtures import Sandbox, sandbox_state


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    """A real SumUp sandbox over HTTP on a free port; webhooks are the test's to deliver."""
    with BackgroundSandbox(state=sandbox_state()) as server:
        yield Sandbox(server)


@pytest.fixture
def shop(clean_db) -> Shop:
    return open_shop(clean_db)

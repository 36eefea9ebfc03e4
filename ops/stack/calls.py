"""Signed internal calls from the operator's terminal (``rose data``, ``rose action``, ``rose
orders attention``), made the way services call each other: to the running stack's services, or
to ``INTERNAL_URL_<SVC>``, signed with ``INTERNAL_SECRET`` or the local credentials' secret."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import TypeVar

from apps.common.internal_client import InternalClient
from apps.common.settings import url_settings
from apps.registry import SERVICES
from ops.db.credentials import Credentials
from ops.stack.state import read_state

T = TypeVar("T")


def operator_urls() -> dict[str, str]:
    """Where each service answers: the running stack's address, or ``INTERNAL_URL_<SVC>``."""
    state = read_state()
    urls = dict(state["services"]) if state else {}
    # Read as the services read them (ConfigError naming one that is not an http(s) URL).
    deployment = url_settings(os.environ, "INTERNAL_URL_")
    urls.update({name: url for name, url in deployment.items() if name in SERVICES})
    return urls


def operator_client() -> InternalClient:
    # The running stack's secret, never one generated here: a call is no reason to make a
    # home's credentials (and a made-up secret signs nothing any service accepts).
    secret = (
        os.environ.get("INTERNAL_SECRET")
        or Credentials.for_environment(generate=False).internal_secret()
    )
    return InternalClient(caller="rose-cli", secret=secret, base_urls=operator_urls())


def call_services(call: Callable[[InternalClient], Awaitable[T]]) -> T:
    """Run one call (or several) with a client of its own, closed afterwards."""

    async def run() -> T:
        client = operator_client()
        try:
            return await call(client)
        finally:
            await client.aclose()

    return asyncio.run(run())

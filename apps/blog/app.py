"""blog: public. Posts and pages, their likes, each page's config (features, SumUp merchant)
and the market places and calendars attached to a page."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from litestar import Litestar
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from apps.blog import internal, public, service
from apps.blog.contract import CONTRACT
from apps.blog.models import request_nonces
from apps.blog.settings import BlogSettings
from apps.common.app_factory import platform_of
from apps.common.internal_client import InternalClient
from apps.common.settings import Settings
from apps.common.streaks import FailureStreak
from apps.registry import create_service_app, settings_for

logger = logging.getLogger("rose.blog")


def create_app(
    settings: Settings | None = None, internal_client: InternalClient | None = None
) -> Litestar:
    settings = settings or settings_for(CONTRACT)
    own = BlogSettings.from_settings(settings)  # a wrong BLOG_* value stops start-up, naming it

    async def start(app: Litestar) -> None:
        # The first pass before blog serves, when its database answers (orders' read of the
        # retired keys then goes by this process's days); the next ones in the background.
        maker = platform_of(app).sessionmaker
        failures = FailureStreak(logger, "recording and pruning retired SumUp keys")
        first = await _keep_retired_keys_once(maker, own, failures, within=FIRST_PASS_SECONDS)
        app.state.retired_keys = asyncio.create_task(
            _keep_retired_keys(maker, own, failures, first), name="blog-retired-keys"
        )

    async def stop(app: Litestar) -> None:
        task = getattr(app.state, "retired_keys", None)  # none if start-up did not finish
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    return create_service_app(
        CONTRACT,
        settings,
        internal_client,
        nonce_table=request_nonces,
        internal_handlers=internal.handlers,
        public_handlers=public.handlers,
        templates=Path(__file__).parent / "templates",
        on_startup=[start],
        on_shutdown=[stop],
    )


# After a failed pass (the database unreachable, say), the next comes this soon: the days are
# recorded soon after the database answers.
RETRY_SECONDS = 5.0
# The first pass, before blog serves, gives up after this long (a host that does not answer);
# a pass waits this long at most for the days row another transaction holds.
FIRST_PASS_SECONDS = 8.0
LOCK_TIMEOUT = "2s"


async def _keep_retired_keys_once(
    maker: async_sessionmaker[AsyncSession],
    own: BlogSettings,
    failures: FailureStreak,
    *,
    within: float | None = None,
) -> float:
    """Record the retired keys' days (orders' read filters by them) and delete the keys past
    them, giving up after ``within`` seconds (None: no bound but the lock's); how long until
    the next pass (sooner after a failure, logged once per streak)."""
    try:
        async with asyncio.timeout(within), maker.begin() as session:
            await session.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
            await service.record_retired_key_days(session, own.retired_sumup_key_days)
            await service.prune_retired_keys(session, own.retired_sumup_key_days)
    except Exception as exc:
        failures.failed(exc)
        return min(RETRY_SECONDS, own.retired_sumup_key_prune_seconds)
    failures.succeeded()
    return own.retired_sumup_key_prune_seconds


async def _keep_retired_keys(
    maker: async_sessionmaker[AsyncSession],
    own: BlogSettings,
    failures: FailureStreak,
    wait: float,
) -> None:
    """Every ``retired_sumup_key_prune_seconds`` (and with each config write): blog starts and
    serves while its database is unreachable, and a failed pass is tried again after
    RETRY_SECONDS, so the days are recorded soon after the database answers."""
    while True:
        await asyncio.sleep(wait)
        wait = await _keep_retired_keys_once(maker, own, failures)

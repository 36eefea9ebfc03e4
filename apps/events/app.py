"""events: public. Calendars attached to pages, bookable entries and tickets that go into a cart
(held for a while, then free for others), confirmed when their order is paid; the outbox relay
of undos for relations."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from litestar import Litestar
from litestar.di import Provide
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from apps.common.app_factory import platform_of
from apps.common.internal_client import InternalClient
from apps.common.settings import Settings
from apps.common.streaks import FailureStreak
from apps.events import internal, public, service
from apps.events.contract import CONTRACT
from apps.events.models import outbox, request_nonces
from apps.events.settings import EventsSettings
from apps.registry import create_service_app, settings_for
from apps.relations.contract import relations_link_wiring

logger = logging.getLogger("rose.events")
SWEEP_LOCK = "events-hold-sweep"


def create_app(
    settings: Settings | None = None, internal_client: InternalClient | None = None
) -> Litestar:
    settings = settings or settings_for(CONTRACT)
    own = EventsSettings.from_settings(settings)

    async def start(app: Litestar) -> None:
        app.state.sweeper = asyncio.create_task(
            _sweep_forever(platform_of(app).sessionmaker, own.sweep_seconds), name="events-sweep"
        )

    async def stop(app: Litestar) -> None:
        app.state.sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await app.state.sweeper

    # Calendars are attached to pages in relations; an undo it missed is queued (its relay).
    link = relations_link_wiring(outbox)
    return create_service_app(
        CONTRACT,
        settings,
        internal_client,
        nonce_table=request_nonces,
        internal_handlers=internal.handlers,
        public_handlers=public.handlers,
        templates=Path(__file__).parent / "templates",
        on_startup=[start, *link["on_startup"]],
        on_shutdown=[*link["on_shutdown"], stop],
        dependencies={
            "own_settings": Provide(lambda: own, use_cache=True, sync_to_thread=False),
            **link["dependencies"],
        },
        scrape_hooks=link["scrape_hooks"],
    )


async def _sweep_forever(maker: async_sessionmaker[AsyncSession], every: float) -> None:
    failures = FailureStreak(logger, "sweeping ended holds")
    while True:
        await asyncio.sleep(every)
        try:
            async with maker() as session:
                # One sweep at a time across every events process; the others skip this turn.
                mine = await session.scalar(
                    text("SELECT pg_try_advisory_xact_lock(hashtextextended(:key, 0))"),
                    {"key": SWEEP_LOCK},
                )
                swept = await service.sweep_ended_holds(session) if mine else 0
                await session.commit()
            if swept:
                logger.info("released %d booking(s) whose hold ended", swept)
            failures.succeeded()
        except Exception as exc:
            failures.failed(exc)

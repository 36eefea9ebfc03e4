"""events: public. Calendars attached to pages, bookable entries and tickets that go into a cart,
confirmed when their order is paid."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path

from litestar import Litestar
from litestar.datastructures import State
from litestar.di import Provide
from sqlalchemy.ext.asyncio import AsyncSession

from apps.common.app_factory import create_base_app
from apps.common.db import session_scope
from apps.common.settings import Settings
from apps.events import internal, public


async def provide_db_session(state: State) -> AsyncIterator[AsyncSession]:
    """The platform's request session (``session_scope``), closed as soon as the request ends,
    errors included. Iterated without ``aclosing``, a handler's exception leaves the scope
    suspended, and its rollback waits for the garbage collector while the connection stays
    idle in transaction, holding its locks (the calendar row lock of a failed attach, say)."""
    async with aclosing(session_scope(state.sessionmaker)) as sessions:
        async for session in sessions:
            yield session


def create_app(settings: Settings | None = None) -> Litestar:
    return create_base_app(
        "events",
        settings=settings,
        internal_handlers=internal.handlers,
        public_handlers=public.handlers,
        templates=Path(__file__).parent / "templates",
        dependencies={"db_session": Provide(provide_db_session)},
    )

"""events: public. Calendars attached to pages, bookable entries and tickets that go into a cart,
confirmed when their order is paid."""

from __future__ import annotations

from pathlib import Path

from litestar import Litestar

from apps.common.app_factory import create_base_app
from apps.common.settings import Settings
from apps.events import internal, public


def create_app(settings: Settings | None = None) -> Litestar:
    return create_base_app(
        "events",
        settings=settings,
        internal_handlers=internal.handlers,
        public_handlers=public.handlers,
        templates=Path(__file__).parent / "templates",
    )

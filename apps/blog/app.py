"""blog: public. Posts and pages, their likes, each page's config (features, SumUp merchant)
and the market places and calendars attached to a page."""

from __future__ import annotations

from pathlib import Path

from litestar import Litestar

from apps.blog import internal, public
from apps.common.app_factory import create_base_app
from apps.common.settings import Settings


def create_app(settings: Settings | None = None) -> Litestar:
    return create_base_app(
        "blog",
        settings=settings,
        internal_handlers=internal.handlers,
        public_handlers=public.handlers,
        templates=Path(__file__).parent / "templates",
    )

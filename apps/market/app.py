"""market: public. Product browse (with ?liked=true), product pages, like toggle."""

from __future__ import annotations

from pathlib import Path

from litestar import Litestar

from apps.common.app_factory import create_base_app
from apps.common.settings import Settings
from apps.market import public


def create_app(settings: Settings | None = None) -> Litestar:
    return create_base_app(
        "market",
        settings=settings,
        public_handlers=public.handlers,
        templates=Path(__file__).parent / "templates",
    )

"""market: public. Product browse (with ?liked=true), product pages, like toggle."""

from __future__ import annotations

from pathlib import Path

from litestar import Litestar

from apps.common.internal_client import InternalClient
from apps.common.settings import Settings
from apps.market import public
from apps.market.contract import CONTRACT
from apps.registry import create_service_app


def create_app(
    settings: Settings | None = None, internal_client: InternalClient | None = None
) -> Litestar:
    return create_service_app(
        CONTRACT,
        settings,
        internal_client,
        public_handlers=public.handlers,
        templates=Path(__file__).parent / "templates",
    )

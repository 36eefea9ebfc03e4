"""market: public. Product browse (with ?liked=true), product pages, like toggle, market places
(editors), product images as static files, the outbox relay of undos for relations."""

from __future__ import annotations

from pathlib import Path

from litestar import Litestar
from litestar.datastructures import CacheControlHeader

from apps.common.internal_client import InternalClient
from apps.common.settings import Settings
from apps.common.static import static_files_router
from apps.market import public
from apps.market.contract import CONTRACT
from apps.market.models import outbox
from apps.registry import create_service_app
from apps.relations.contract import relations_link_wiring

STATIC = Path(__file__).parent / "static"


def create_app(
    settings: Settings | None = None, internal_client: InternalClient | None = None
) -> Litestar:
    return create_service_app(
        CONTRACT,
        settings,
        internal_client,
        public_handlers=[
            *public.handlers,
            # Product images (the demo's, and any an editor puts there), cached by browsers.
            static_files_router(
                "/static", [STATIC], CacheControlHeader(max_age=86_400, public=True)
            ),
        ],
        templates=Path(__file__).parent / "templates",
        # Market places are attached to pages in relations; an undo it missed is queued.
        **relations_link_wiring(outbox),
    )

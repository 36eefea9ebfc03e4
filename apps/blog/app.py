"""blog: public. Posts and pages, their likes, each page's config (features, SumUp merchant)
and the market places and calendars attached to a page."""

from __future__ import annotations

from pathlib import Path

from litestar import Litestar

from apps.blog import internal, public, service
from apps.blog.contract import CONTRACT
from apps.blog.models import request_nonces
from apps.blog.settings import BlogSettings
from apps.common.app_factory import platform_of
from apps.common.internal_client import InternalClient
from apps.common.settings import Settings
from apps.registry import create_service_app, settings_for


def create_app(
    settings: Settings | None = None, internal_client: InternalClient | None = None
) -> Litestar:
    settings = settings or settings_for(CONTRACT)
    own = BlogSettings.from_settings(settings)  # a wrong BLOG_* value stops start-up, naming it

    async def start(app: Litestar) -> None:
        # Blog has no background job: the retired keys' days are recorded (orders' read
        # filters by them) and the keys past them deleted now (and with each config write).
        async with platform_of(app).sessionmaker.begin() as session:
            await service.record_retired_key_days(session, own.retired_sumup_key_days)
            await service.prune_retired_keys(session, own.retired_sumup_key_days)

    return create_service_app(
        CONTRACT,
        settings,
        internal_client,
        nonce_table=request_nonces,
        internal_handlers=internal.handlers,
        public_handlers=public.handlers,
        templates=Path(__file__).parent / "templates",
        on_startup=[start],
    )

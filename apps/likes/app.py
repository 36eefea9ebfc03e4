"""likes: internal only. Likes of products and posts, in one table."""

from __future__ import annotations

from litestar import Litestar

from apps.common.app_factory import create_base_app
from apps.common.settings import Settings
from apps.likes import internal


def create_app(settings: Settings | None = None) -> Litestar:
    return create_base_app("likes", settings=settings, internal_handlers=internal.handlers)

"""relations: internal only. Which child is attached to which parent."""

from __future__ import annotations

from litestar import Litestar

from apps.common.app_factory import create_base_app
from apps.common.settings import Settings
from apps.relations import internal


def create_app(settings: Settings | None = None) -> Litestar:
    return create_base_app("relations", settings=settings, internal_handlers=internal.handlers)

"""likes: internal only. Likes of products and posts, in one table."""

from __future__ import annotations

from litestar import Litestar

from apps.common.internal_client import InternalClient
from apps.common.settings import Settings
from apps.likes import internal
from apps.likes.contract import CONTRACT
from apps.likes.models import request_nonces
from apps.registry import create_service_app


def create_app(
    settings: Settings | None = None, internal_client: InternalClient | None = None
) -> Litestar:
    return create_service_app(
        CONTRACT,
        settings,
        internal_client,
        nonce_table=request_nonces,
        internal_handlers=internal.handlers,
    )

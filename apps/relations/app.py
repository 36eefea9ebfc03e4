"""relations: internal only. Which child is attached to which parent."""

from __future__ import annotations

from litestar import Litestar

from apps.common.internal_client import InternalClient
from apps.common.settings import Settings
from apps.registry import create_service_app
from apps.relations import internal
from apps.relations.contract import CONTRACT
from apps.relations.models import request_nonces


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

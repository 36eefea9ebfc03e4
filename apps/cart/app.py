"""cart: public. Cart lines only (after the split), carts per page, checkout hand-off to orders."""

from __future__ import annotations

from pathlib import Path

from litestar import Litestar
from litestar.di import Provide

from apps.cart import internal, public
from apps.cart.contract import CONTRACT
from apps.cart.models import request_nonces
from apps.cart.settings import CartSettings
from apps.common.internal_client import InternalClient
from apps.common.settings import Settings
from apps.registry import create_service_app, settings_for


def create_app(
    settings: Settings | None = None, internal_client: InternalClient | None = None
) -> Litestar:
    settings = settings or settings_for(CONTRACT)
    own = CartSettings.from_settings(settings)
    return create_service_app(
        CONTRACT,
        settings,
        internal_client,
        nonce_table=request_nonces,
        internal_handlers=internal.handlers,
        public_handlers=public.handlers,
        templates=Path(__file__).parent / "templates",
        dependencies={"own_settings": Provide(lambda: own, use_cache=True, sync_to_thread=False)},
    )

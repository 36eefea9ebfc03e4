"""cart: public. Cart lines only (after the split), carts per page, checkout hand-off to orders."""

from __future__ import annotations

from pathlib import Path

from litestar import Litestar

from apps.cart import internal, public
from apps.common.app_factory import create_base_app
from apps.common.settings import Settings


def create_app(settings: Settings | None = None) -> Litestar:
    return create_base_app(
        "cart",
        settings=settings,
        internal_handlers=internal.handlers,
        public_handlers=public.handlers,
        templates=Path(__file__).parent / "templates",
    )

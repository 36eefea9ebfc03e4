"""Every service of the system, in one place: their contracts (who they are, what they offer),
and what follows from the list as a whole (the adopt actions of sign-in, the development URLs of
the public services, each service's settings). The platform (apps/common) knows no service;
this module is where the services meet.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from litestar import Litestar

from apps.blog.contract import CONTRACT as BLOG
from apps.cart.contract import CONTRACT as CART
from apps.common.app_factory import create_base_app
from apps.common.contracts import Action, Contract, Fragment, IdentityParams, SignIn
from apps.common.internal_client import InternalClient
from apps.common.services import ServiceSpec
from apps.common.settings import Settings
from apps.events.contract import CONTRACT as EVENTS
from apps.likes.contract import CONTRACT as LIKES
from apps.market.contract import CONTRACT as MARKET
from apps.orders.contract import CONTRACT as ORDERS
from apps.relations.contract import CONTRACT as RELATIONS

# In the order the navigation shows the public ones.
CONTRACTS: dict[str, Contract] = {
    contract.service: contract
    for contract in (BLOG, MARKET, CART, EVENTS, RELATIONS, LIKES, ORDERS)
}

# What operations (provisioning, the local stack, the split, the tests) know of each service.
SERVICES: dict[str, ServiceSpec] = {
    name: ServiceSpec(name, contract.dev_port, public=contract.public)
    for name, contract in CONTRACTS.items()
}


def service_spec(name: str) -> ServiceSpec:
    try:
        return SERVICES[name]
    except KeyError:
        known = ", ".join(sorted(SERVICES))
        raise ValueError(f"unknown service {name!r}; known services: {known}") from None


# At sign-in, what the visitor gathered anonymously joins the user: cart lines, bookings and
# orders (each service that keeps any declares its adopt action in its contract).
SIGN_IN: tuple[Action[SignIn, Any], ...] = tuple(
    contract.on_sign_in for contract in CONTRACTS.values() if contract.on_sign_in is not None
)


# What every public page's navigation embeds: the cart count, the orders link.
NAV: tuple[Fragment[IdentityParams], ...] = tuple(
    contract.nav for contract in CONTRACTS.values() if contract.nav is not None
)


def dev_app_urls() -> dict[str, str]:
    """Where the public services answer in development (APP_URL_<SERVICE> overrides)."""
    return {
        name: f"http://localhost:{contract.dev_port}"
        for name, contract in CONTRACTS.items()
        if contract.public
    }


def settings_for(contract: Contract, environ: Mapping[str, str] | None = None) -> Settings:
    return Settings.from_env(
        contract.service,
        environ,
        public=contract.public,
        dev_app_urls=dev_app_urls(),
        peers=tuple(CONTRACTS),
    )


def sign_in_for(contract: Contract) -> tuple[Action[SignIn, Any], ...]:
    """Public services run the adopt actions when someone signs in on them."""
    return SIGN_IN if contract.public else ()


def create_service_app(
    contract: Contract,
    settings: Settings | None = None,
    internal_client: InternalClient | None = None,
    **wiring: Any,
) -> Litestar:
    """A service's app: the platform (``create_base_app``) with its settings from the
    environment unless given, and, for a public service, the sign-in of every service and the
    navigation's fragments."""
    return create_base_app(
        contract,
        settings=settings or settings_for(contract),
        internal_client=internal_client,
        sign_in=sign_in_for(contract),
        nav=NAV if contract.public else (),
        **wiring,
    )

"""What market offers other services: its products and market places, read through postgres_fdw
(cart shows titles and prices; blog attaches market places to pages). Imports nothing else of
market."""

from __future__ import annotations

from apps.common.contracts import Contract, ExportView

SERVICE = "market"

# Products as cart lines show them, with the page each is sold through.
PRODUCTS = ExportView.of(
    SERVICE,
    "products",
    "id bigint",
    "slug character varying(255)",
    "title character varying(255)",
    "image character varying(512)",
    "regular_price numeric(10,2)",
    "special_price numeric(10,2)",
    "price_currency character varying(3)",
    "market_place_id bigint",
    "market_place_slug character varying(255)",
    "container_type character varying(32)",
    "container_id bigint",
)

# Market places that exist, with their names and pages: blog attaches only these.
MARKET_PLACES = ExportView.of(
    SERVICE,
    "market_places",
    "id bigint",
    "slug character varying(255)",
    "name character varying(255)",
    "container_type character varying(32)",
    "container_id bigint",
)

CONTRACT = Contract(SERVICE, dev_port=8002, public=True, calls=[], views=[PRODUCTS, MARKET_PLACES])

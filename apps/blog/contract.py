"""What blog offers other services: page configs (features and the SumUp merchant of a page or
of the site), never the SumUp API key except through the one view orders may read. Imports
nothing else of blog."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec

from apps.common.contracts import Action, Contract, ExportView, Query
from apps.common.inputs import CONTAINER_TYPE

SERVICE = "blog"
MAX_ID = 2**63 - 1
MAX_BATCH = 500

ContainerType = Annotated[str, msgspec.Meta(pattern=CONTAINER_TYPE)]
ContainerId = Annotated[int, msgspec.Meta(ge=0, le=MAX_ID)]
UNSET = msgspec.UNSET


class PageConfigData(msgspec.Struct):
    """A page config as every call answers it (and as export.page_configs shows it)."""

    id: int
    container_type: str
    container_id: int
    page_slug: str | None
    page_title: str | None
    features: dict[str, Any]
    sumup_merchant_code: str | None
    sumup_checkout_prefix: str | None
    sumup_configured: bool
    created_at: datetime
    updated_at: datetime


class Container(msgspec.Struct, forbid_unknown_fields=True):
    container_type: ContainerType
    container_id: ContainerId


class ConfigId(msgspec.Struct, forbid_unknown_fields=True):
    id: Annotated[int, msgspec.Meta(ge=1, le=MAX_ID)]


class ConfigsBatch(msgspec.Struct, forbid_unknown_fields=True):
    ids: Annotated[list[int], msgspec.Meta(max_length=MAX_BATCH)] | None = None
    container_ids: Annotated[list[int], msgspec.Meta(max_length=MAX_BATCH)] | None = None
    container_type: str | None = None


class UpdatePageConfig(msgspec.Struct, forbid_unknown_fields=True):
    """Absent fields stay as they are; ``null`` clears a SumUp field; ``features`` sets the
    flags it names and leaves the others."""

    container_type: ContainerType
    container_id: ContainerId
    features: dict[str, Any] | msgspec.UnsetType = UNSET
    sumup_merchant_code: str | msgspec.UnsetType | None = UNSET
    sumup_api_key: str | msgspec.UnsetType | None = UNSET
    sumup_checkout_prefix: str | msgspec.UnsetType | None = UNSET


page_config = Query(SERVICE, "page-config", Container, PageConfigData)
page_config_by_id = Query(SERVICE, "page-config-by-id", ConfigId, PageConfigData)
page_configs_batch = Query(SERVICE, "page-configs-batch", ConfigsBatch, list[PageConfigData])
# A read that may write (it creates the config when missing): safe to repeat.
page_config_ensure = Query(SERVICE, "page-config-ensure", Container, PageConfigData)
update_page_config = Action(SERVICE, "update-page-config", UpdatePageConfig, PageConfigData)

# Page configs without secrets (cart: page carts; orders: checkout).
PAGE_CONFIGS = ExportView.of(
    SERVICE,
    "page_configs",
    "id bigint",
    "container_type character varying(32)",
    "container_id bigint",
    "page_slug character varying",
    "page_title character varying",
    "features jsonb",
    "sumup_merchant_code character varying(32)",
    "sumup_checkout_prefix character varying(40)",
    "sumup_configured boolean",
    "created_at timestamp with time zone",
    "updated_at timestamp with time zone",
)
# With the SumUp API key: only the orders edge may read it (db/fdw/manifest.toml's [[secret]]).
PAGE_PAYMENT_CONFIGS = ExportView.of(
    SERVICE,
    "page_payment_configs",
    "id bigint",
    "container_type character varying(32)",
    "container_id bigint",
    "sumup_merchant_code character varying(32)",
    "sumup_api_key character varying(255)",
    "sumup_checkout_prefix character varying(40)",
)

# The SumUp keys page configs stopped using (merchant changed, key removed), kept for a while:
# orders settles and refunds the old merchant's checkouts with them. Orders' edge only (a
# [[secret]] in db/fdw/manifest.toml). One row per config and merchant.
RETIRED_SUMUP_KEYS = ExportView.of(
    SERVICE,
    "retired_sumup_keys",
    "page_config_id bigint",
    "sumup_merchant_code character varying(32)",
    "sumup_api_key character varying(255)",
    "retired_at timestamp with time zone",
    primary_key=None,
)

# Pages by id: market's admin offers them, events names a calendar's page.
# Every page, drafts included (market's admin may attach one); ``published`` says which the
# public may see (events names the others by their number only).
PAGES = ExportView.of(
    SERVICE,
    "pages",
    "id bigint",
    "slug character varying(255)",
    "title character varying(255)",
    "published boolean",
)

CONTRACT = Contract(
    SERVICE,
    dev_port=8001,
    public=True,
    calls=[page_config, page_config_by_id, page_configs_batch, page_config_ensure,
           update_page_config],
    views=[PAGE_CONFIGS, PAGE_PAYMENT_CONFIGS, RETIRED_SUMUP_KEYS, PAGES],
)  # fmt: skip

"""Internal routes of blog (DESIGN.md section 4, plan 3.1 and 3.2): data page-config,
page-config-by-id, page-configs-batch, page-config-ensure; action update-page-config.
Every answer is a page config dict without the SumUp API key."""

from __future__ import annotations

from typing import Annotated

from litestar import Request
from litestar.params import FromQuery, JSONBody, Parameter, QueryParameter

from apps.blog import contract, service
from apps.blog.models import idempotency_keys
from apps.blog.settings import BlogSettings
from apps.common.deps import AppSettings, DbSession
from apps.common.idempotency import run_idempotent
from apps.common.inputs import CONTAINER_TYPE
from apps.common.internal import action_route, data_route, deferred_nonce
from apps.common.internal_client import IDEMPOTENCY_HEADER

ContainerTypeParam = Annotated[str, Parameter(pattern=CONTAINER_TYPE)]
ContainerIdParam = Annotated[int, Parameter(ge=0, le=contract.MAX_ID)]
Ids = Annotated[list[int] | None, Parameter(max_items=contract.MAX_BATCH)]


@data_route(contract.page_config)
async def page_config(
    db_session: DbSession, container_type: ContainerTypeParam, container_id: ContainerIdParam
) -> contract.PageConfigData:
    return await service.get_page_config(db_session, container_type, container_id)


@data_route(contract.page_config_by_id)
async def page_config_by_id(
    db_session: DbSession,
    config_id: Annotated[int, QueryParameter(name="id", ge=1, le=contract.MAX_ID)],
) -> contract.PageConfigData:
    return await service.get_page_config_by_id(db_session, config_id)


@data_route(contract.page_configs_batch)
async def page_configs_batch(
    db_session: DbSession,
    ids: Ids = None,
    container_ids: Ids = None,
    container_type: FromQuery[str | None] = None,
) -> list[contract.PageConfigData]:
    return await service.page_configs_batch(
        db_session, ids=ids, container_type=container_type, container_ids=container_ids
    )


@data_route(contract.page_config_ensure)
async def page_config_ensure(
    db_session: DbSession, container_type: ContainerTypeParam, container_id: ContainerIdParam
) -> contract.PageConfigData:
    # A read that may write: safe to repeat (GETs are retried), committed before answering.
    config = await service.ensure_page_config(db_session, container_type, container_id)
    await db_session.commit()
    return config


@action_route(contract.update_page_config, claims_nonce=True)
async def update_page_config(
    db_session: DbSession,
    request: Request,
    settings: AppSettings,
    data: JSONBody[contract.UpdatePageConfig],
) -> contract.PageConfigData:
    """The change and the idempotency key in one transaction (as keyed_action does), with the
    retired keys' time to keep (a write prunes those past it)."""
    keep_days = BlogSettings.from_settings(settings).retired_sumup_key_days
    answer: contract.PageConfigData = await run_idempotent(
        db_session,
        idempotency_keys,
        action=contract.update_page_config.name,
        key=request.headers.get(IDEMPOTENCY_HEADER),
        payload=data,
        effect=lambda: service.update_page_config(db_session, data, keep_days),
        nonce=deferred_nonce(request),
    )
    return answer


handlers = [
    page_config,
    page_config_by_id,
    page_configs_batch,
    page_config_ensure,
    update_page_config,
]

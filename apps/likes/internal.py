"""Internal routes of likes (its contract): data is-liked, liked-slugs, liked-ids; actions
toggle and set."""

from __future__ import annotations

from typing import Annotated

from litestar.params import FromQuery, Parameter

from apps.common.deps import DbSession
from apps.common.internal import data_route, keyed_action
from apps.likes import contract, service
from apps.likes.models import idempotency_keys

PositiveId = Annotated[int, Parameter(ge=1, le=2**63 - 1)]


@data_route(contract.is_liked)
async def is_liked(
    db_session: DbSession,
    user_id: PositiveId,
    target_type: FromQuery[str],
    target_slug: Annotated[str | None, Parameter(min_length=1, max_length=255)] = None,
    target_id: Annotated[int | None, Parameter(ge=1, le=2**63 - 1)] = None,
) -> contract.LikeState:
    target = contract.LikeTarget(user_id, target_type, target_slug, target_id)
    return await service.is_liked(db_session, target)


@data_route(contract.liked_slugs)
async def liked_slugs(
    db_session: DbSession, user_id: PositiveId, target_type: FromQuery[str]
) -> list[str]:
    return await service.liked_slugs(db_session, user_id, target_type)


@data_route(contract.liked_ids)
async def liked_ids(
    db_session: DbSession, user_id: PositiveId, target_type: FromQuery[str]
) -> list[int]:
    return await service.liked_ids(db_session, user_id, target_type)


toggle = keyed_action(contract.toggle, idempotency_keys, service.toggle)
set_like = keyed_action(contract.set_like, idempotency_keys, service.set_liked)


handlers = [is_liked, liked_slugs, liked_ids, toggle, set_like]

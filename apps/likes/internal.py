"""Internal routes of likes: data is-liked, liked-slugs, liked-ids; actions toggle and set."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request
from litestar.params import FromQuery, JSONBody, Parameter

from apps.common.deps import DbSession
from apps.common.idempotency import run_idempotent
from apps.common.internal import action_route, data_route
from apps.common.internal_client import IDEMPOTENCY_HEADER
from apps.likes import service
from apps.likes.models import idempotency_keys

PositiveId = Annotated[int, Parameter(ge=1, le=2**63 - 1)]


@data_route("is-liked")
async def is_liked(
    db_session: DbSession,
    user_id: PositiveId,
    target_type: FromQuery[str],
    target_slug: Annotated[str | None, Parameter(min_length=1, max_length=255)] = None,
    target_id: Annotated[int | None, Parameter(ge=1, le=2**63 - 1)] = None,
) -> service.LikeState:
    target = service.LikeTarget(user_id, target_type, target_slug, target_id)
    return await service.is_liked(db_session, target)


@data_route("liked-slugs")
async def liked_slugs(
    db_session: DbSession, user_id: PositiveId, target_type: FromQuery[str]
) -> list[str]:
    return await service.liked_slugs(db_session, user_id, target_type)


@data_route("liked-ids")
async def liked_ids(
    db_session: DbSession, user_id: PositiveId, target_type: FromQuery[str]
) -> list[int]:
    return await service.liked_ids(db_session, user_id, target_type)


@action_route("toggle")
async def toggle(
    db_session: DbSession, request: Request, data: JSONBody[service.LikeTarget]
) -> dict[str, Any]:
    return await run_idempotent(
        db_session,
        idempotency_keys,
        action="toggle",
        key=request.headers.get(IDEMPOTENCY_HEADER),
        payload=data,
        effect=lambda: service.toggle(db_session, data),
    )


@action_route("set")
async def set_like(
    db_session: DbSession, request: Request, data: JSONBody[service.SetLike]
) -> dict[str, Any]:
    return await run_idempotent(
        db_session,
        idempotency_keys,
        action="set",
        key=request.headers.get(IDEMPOTENCY_HEADER),
        payload=data,
        effect=lambda: service.set_liked(db_session, data),
    )


handlers = [is_liked, liked_slugs, liked_ids, toggle, set_like]

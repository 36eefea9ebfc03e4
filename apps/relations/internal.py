"""Internal routes of relations: data get-children; actions attach-child and detach-child."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request
from litestar.params import JSONBody, Parameter

from apps.common.deps import DbSession
from apps.common.idempotency import run_idempotent
from apps.common.internal import action_route, data_route
from apps.common.internal_client import IDEMPOTENCY_HEADER
from apps.relations import service
from apps.relations.models import idempotency_keys

TypeParam = Parameter(pattern=r"^[a-z][a-z0-9_]{0,31}$")


@data_route("get-children")
async def get_children(
    db_session: DbSession,
    parent_type: Annotated[str, TypeParam],
    parent_id: Annotated[int, Parameter(ge=1)],
    child_type: Annotated[str | None, TypeParam] = None,
) -> list[service.Relation]:
    return await service.get_children(db_session, parent_type, parent_id, child_type)


@action_route("attach-child")
async def attach_child(
    db_session: DbSession, request: Request, data: JSONBody[service.AttachChild]
) -> dict[str, Any]:
    return await run_idempotent(
        db_session,
        idempotency_keys,
        action="attach-child",
        key=request.headers.get(IDEMPOTENCY_HEADER),
        payload=data,
        effect=lambda: service.attach_child(db_session, data),
    )


@action_route("detach-child")
async def detach_child(
    db_session: DbSession, request: Request, data: JSONBody[service.DetachChild]
) -> dict[str, Any]:
    return await run_idempotent(
        db_session,
        idempotency_keys,
        action="detach-child",
        key=request.headers.get(IDEMPOTENCY_HEADER),
        payload=data,
        effect=lambda: service.detach_child(db_session, data),
    )


handlers = [get_children, attach_child, detach_child]

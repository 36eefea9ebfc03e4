"""Internal routes of relations: data get-children; actions attach-child and detach-child."""

from __future__ import annotations

from typing import Annotated

from litestar.params import Parameter

from apps.common.deps import DbSession
from apps.common.internal import data_route, keyed_action
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


attach_child = keyed_action(
    "attach-child", service.AttachChild, idempotency_keys, service.attach_child
)
detach_child = keyed_action(
    "detach-child", service.DetachChild, idempotency_keys, service.detach_child
)


handlers = [get_children, attach_child, detach_child]

"""Internal routes of relations (its contract): data get-children and get-parents; actions
attach-child and detach-child."""

from __future__ import annotations

from typing import Annotated

from litestar.params import Parameter

from apps.common.deps import DbSession
from apps.common.inputs import CONTAINER_TYPE
from apps.common.internal import data_route, keyed_action
from apps.relations import contract, service
from apps.relations.models import idempotency_keys

TypeParam = Parameter(pattern=CONTAINER_TYPE)


@data_route(contract.get_children)
async def get_children(
    db_session: DbSession,
    parent_type: Annotated[str, TypeParam],
    parent_id: Annotated[int, Parameter(ge=1, le=2**63 - 1)],
    child_type: Annotated[str | None, TypeParam] = None,
) -> list[contract.Relation]:
    return await service.get_children(db_session, parent_type, parent_id, child_type)


@data_route(contract.get_parents)
async def get_parents(
    db_session: DbSession,
    child_type: Annotated[str, TypeParam],
    child_id: Annotated[int, Parameter(ge=1, le=2**63 - 1)],
) -> list[contract.Relation]:
    return await service.get_parents(db_session, child_type, child_id)


attach_child = keyed_action(contract.attach_child, idempotency_keys, service.attach_child)
detach_child = keyed_action(contract.detach_child, idempotency_keys, service.detach_child)


handlers = [get_children, get_parents, attach_child, detach_child]

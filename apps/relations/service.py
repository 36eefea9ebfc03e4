"""Domain logic of relations: attach, detach and list the children of a parent."""

from __future__ import annotations

from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from apps.common.inputs import one_line_name
from apps.relations.contract import AttachChild, DetachChild, Detached, Relation
from apps.relations.models import ContainerRelation


def to_relation(row: ContainerRelation) -> Relation:
    return Relation(
        id=row.id,
        parent_type=row.parent_type,
        parent_id=row.parent_id,
        child_type=row.child_type,
        child_id=row.child_id,
        sort_order=row.sort_order,
        label=row.label,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _pair(parent_type: str, parent_id: int, child_type: str, child_id: int) -> list:
    return [
        ContainerRelation.parent_type == parent_type,
        ContainerRelation.parent_id == parent_id,
        ContainerRelation.child_type == child_type,
        ContainerRelation.child_id == child_id,
    ]


async def get_children(
    session: AsyncSession, parent_type: str, parent_id: int, child_type: str | None = None
) -> list[Relation]:
    query = select(ContainerRelation).where(
        ContainerRelation.parent_type == parent_type,
        ContainerRelation.parent_id == parent_id,
        ContainerRelation.deleted_at.is_(None),
    )
    if child_type is not None:
        query = query.where(ContainerRelation.child_type == child_type)
    rows = await session.scalars(query.order_by(ContainerRelation.sort_order, ContainerRelation.id))
    return [to_relation(row) for row in rows]


async def get_parents(session: AsyncSession, child_type: str, child_id: int) -> list[Relation]:
    """Every active attachment of one child."""
    rows = await session.scalars(
        select(ContainerRelation)
        .where(
            ContainerRelation.child_type == child_type,
            ContainerRelation.child_id == child_id,
            ContainerRelation.deleted_at.is_(None),
        )
        .order_by(ContainerRelation.id)
    )
    return [to_relation(row) for row in rows]


async def attach_child(session: AsyncSession, request: AttachChild) -> Relation:
    """Attach ``child`` to ``parent``. Already attached: returned unchanged. Detached before:
    that row is restored. Otherwise a new row at the end of the parent's children. A label is
    one readable line (checked here too: the action is a contract, whoever calls it)."""
    label = None if request.label is None else one_line_name(request.label, "label")
    # Attaches to one parent are serialised, so "already attached?" and "next sort order" are
    # decided on a stable view of the parent's children. Lock is released at commit.
    await session.execute(
        text("SELECT pg_advisory_xact_lock(hashtext('relations:' || :parent_type), :parent_id)"),
        {"parent_type": request.parent_type, "parent_id": request.parent_id % 2**31},
    )
    pair = _pair(request.parent_type, request.parent_id, request.child_type, request.child_id)
    active = await session.scalar(
        select(ContainerRelation).where(*pair, ContainerRelation.deleted_at.is_(None))
    )
    if active is not None:
        return to_relation(active)

    sort_order = request.sort_order
    if sort_order is None:
        last = await session.scalar(
            select(func.max(ContainerRelation.sort_order)).where(
                ContainerRelation.parent_type == request.parent_type,
                ContainerRelation.parent_id == request.parent_id,
                ContainerRelation.deleted_at.is_(None),
            )
        )
        sort_order = 0 if last is None else last + 1

    detached_id = await session.scalar(
        select(ContainerRelation.id)
        .where(*pair, ContainerRelation.deleted_at.is_not(None))
        .order_by(ContainerRelation.deleted_at.desc(), ContainerRelation.id.desc())
        .limit(1)
    )
    if detached_id is not None:
        restored = await session.scalar(
            update(ContainerRelation)
            .where(ContainerRelation.id == detached_id)
            .values(
                deleted_at=None,
                updated_at=func.now(),
                sort_order=sort_order,
                label=label if label is not None else ContainerRelation.label,
            )
            .returning(ContainerRelation)
        )
        assert restored is not None
        return to_relation(restored)

    relation = ContainerRelation(
        parent_type=request.parent_type,
        parent_id=request.parent_id,
        child_type=request.child_type,
        child_id=request.child_id,
        sort_order=sort_order,
        label=label,
    )
    session.add(relation)
    await session.flush()
    await session.refresh(relation)
    return to_relation(relation)


async def detach_child(session: AsyncSession, request: DetachChild) -> Detached:
    """Soft-delete the active relation, answered as it was (its caller's undo re-attaches it
    exactly); ``{"detached": false}`` when there was none."""
    detached = await session.scalar(
        update(ContainerRelation)
        .where(
            *_pair(request.parent_type, request.parent_id, request.child_type, request.child_id),
            ContainerRelation.deleted_at.is_(None),
        )
        .values(deleted_at=func.now(), updated_at=func.now())
        .returning(ContainerRelation)
    )
    if detached is None:
        return Detached(detached=False)
    return Detached(detached=True, relation=to_relation(detached))

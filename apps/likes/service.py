"""Domain logic of likes. Toggle and set are each one atomic statement
(``INSERT ... ON CONFLICT ... DO UPDATE``), so concurrent calls never surface a unique violation
and never lose an update."""

from __future__ import annotations

from sqlalchemy import and_, func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from apps.common.db import table_of
from apps.common.problems import InvalidInput
from apps.likes.contract import LikeState, LikeTarget, SetLike
from apps.likes.models import TARGET_TYPES, Like


def check_target_type(target_type: str) -> str:
    if target_type not in TARGET_TYPES:
        raise InvalidInput(
            f"target_type must be one of {', '.join(TARGET_TYPES)}, not {target_type!r}",
            field="target_type",
        )
    return target_type


def check_target(target: LikeTarget) -> None:
    """A product is named by target_slug, a post by target_id; exactly one of them."""
    check_target_type(target.target_type)
    if target.target_type == "product":
        if target.target_slug is None:
            raise InvalidInput("target_slug is required for a product", field="target_slug")
        if target.target_id is not None:
            raise InvalidInput("target_id is not used for a product", field="target_id")
    else:
        if target.target_id is None:
            raise InvalidInput("target_id is required for a post", field="target_id")
        if target.target_slug is not None:
            raise InvalidInput("target_slug is not used for a post", field="target_slug")


def _target_columns(target: LikeTarget) -> tuple[list[str], dict[str, object]]:
    """The ON CONFLICT arbiter and the row values of one target."""
    if target.target_type == "product":
        return ["user_id", "target_type", "target_slug"], {"target_slug": target.target_slug}
    return ["user_id", "target_type", "target_id"], {"target_id": target.target_id}


def _matches(target: LikeTarget) -> ColumnElement[bool]:
    key = Like.target_slug if target.target_type == "product" else Like.target_id
    value = target.target_slug if target.target_type == "product" else target.target_id
    return and_(
        Like.user_id == target.user_id, Like.target_type == target.target_type, key == value
    )


async def is_liked(session: AsyncSession, target: LikeTarget) -> LikeState:
    check_target(target)
    found = await session.scalar(
        select(Like.id).where(_matches(target), Like.deleted_at.is_(None)).limit(1)
    )
    return LikeState(liked=found is not None)


async def liked_slugs(session: AsyncSession, user_id: int, target_type: str) -> list[str]:
    if check_target_type(target_type) != "product":
        raise InvalidInput(
            "target_type must be product for liked-slugs (posts: liked-ids)", field="target_type"
        )
    rows = await session.scalars(
        select(Like.target_slug)
        .where(Like.user_id == user_id, Like.target_type == target_type, Like.deleted_at.is_(None))
        .order_by(Like.target_slug)
    )
    return [slug for slug in rows if slug is not None]


async def liked_ids(session: AsyncSession, user_id: int, target_type: str) -> list[int]:
    if check_target_type(target_type) != "post":
        raise InvalidInput(
            "target_type must be post for liked-ids (products: liked-slugs)", field="target_type"
        )
    rows = await session.scalars(
        select(Like.target_id)
        .where(Like.user_id == user_id, Like.target_type == target_type, Like.deleted_at.is_(None))
        .order_by(Like.target_id)
    )
    return [target_id for target_id in rows if target_id is not None]


async def toggle(session: AsyncSession, target: LikeTarget) -> LikeState:
    """Like if not liked, unlike if liked, in one statement; returns the new state."""
    check_target(target)
    arbiter, values = _target_columns(target)
    table = table_of(Like)
    statement = (
        insert(table)
        .values(user_id=target.user_id, target_type=target.target_type, **values)
        .on_conflict_do_update(
            index_elements=arbiter,
            set_={
                "deleted_at": text(
                    "CASE WHEN likes.likes.deleted_at IS NULL THEN now() ELSE NULL END"
                ),
                "updated_at": func.now(),
            },
        )
        .returning(table.c.deleted_at.is_(None))
    )
    liked = (await session.execute(statement)).scalar_one()
    return LikeState(liked=bool(liked))


async def set_liked(session: AsyncSession, request: SetLike) -> LikeState:
    """Bring the like to ``liked``; a no-op (no row written) when it already is."""
    check_target(request)
    if request.liked:
        arbiter, values = _target_columns(request)
        table = table_of(Like)
        # Insert, or restore a soft-deleted row; an active row is left untouched.
        await session.execute(
            insert(table)
            .values(user_id=request.user_id, target_type=request.target_type, **values)
            .on_conflict_do_update(
                index_elements=arbiter,
                set_={"deleted_at": None, "updated_at": func.now()},
                where=table.c.deleted_at.is_not(None),
            )
        )
    else:
        await session.execute(
            update(Like)
            .where(_matches(request), Like.deleted_at.is_(None))
            .values(deleted_at=func.now(), updated_at=func.now())
        )
    return LikeState(liked=request.liked)

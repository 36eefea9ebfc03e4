"""What likes offers other services: likes of products (by slug) and posts (by id), one table.
Imports nothing else of likes."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import msgspec

from apps.common.contracts import Action, Contract, ExportView, Query
from apps.common.internal_client import InternalCallError, InternalClient
from apps.common.problems import DependencyUnavailable

SERVICE = "likes"

UserId = Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]
TargetId = Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]
TargetSlug = Annotated[str, msgspec.Meta(min_length=1, max_length=255)]


class LikeTarget(msgspec.Struct, forbid_unknown_fields=True):
    """A product is named by ``target_slug``, a post by ``target_id``."""

    user_id: UserId
    target_type: str
    target_slug: TargetSlug | None = None
    target_id: TargetId | None = None


class SetLike(LikeTarget, kw_only=True, forbid_unknown_fields=True):
    liked: bool


class LikeState(msgspec.Struct):
    liked: bool


class LikedBy(msgspec.Struct, forbid_unknown_fields=True):
    user_id: UserId
    target_type: str


is_liked = Query(SERVICE, "is-liked", LikeTarget, LikeState)
liked_slugs = Query(SERVICE, "liked-slugs", LikedBy, list[str])
liked_ids = Query(SERVICE, "liked-ids", LikedBy, list[int])
toggle = Action(SERVICE, "toggle", LikeTarget, LikeState)
# Beyond the plan: idempotent by nature (it sets, it does not flip).
set_like = Action(SERVICE, "set", SetLike, LikeState)


def _like_change(
    target: LikeTarget, liked: bool | None
) -> tuple[Action[Any, LikeState], LikeTarget]:
    """The call that makes ``target`` liked or not (``liked``), or flips it (None: the plan's
    toggle, for callers that do not say what they want)."""
    if liked is None:
        return toggle, target
    return set_like, SetLike(**msgspec.structs.asdict(target), liked=liked)


async def change_like(
    internal: InternalClient, target: LikeTarget, liked: bool | None, *, caller: str
) -> bool:
    """Like or unlike ``target`` (``liked``; None flips it); whether it is liked now. Likes
    knows no products nor posts: the caller checks that the target exists."""
    action, request = _like_change(target, liked)
    try:
        # A fresh key per call, so the internal client may retry it safely.
        answer = await internal.call(
            action, request, idempotency_key=f"{caller}:{action.name}:{uuid.uuid4()}"
        )
    except InternalCallError as exc:
        told = _in_the_buyers_words(exc)
        if told is None:
            raise
        raise told from exc
    return answer.liked


def _in_the_buyers_words(exc: InternalCallError) -> DependencyUnavailable | None:
    """What a buyer reads when likes did not answer a like: whether it may have been saved (its
    answer lost or unreadable, a 500 or a gateway's 504) or not (likes not reached, or it said
    it is unavailable), and what to do; not the internal call's name."""
    if exc.may_have_happened:
        return DependencyUnavailable(
            "Likes did not confirm in time that your change was saved; it may have been. The "
            "page shows whether it is liked now.",
            title="Like not confirmed",
            service=SERVICE,
        )
    if exc.http_status == 503:
        return DependencyUnavailable(
            "Likes, which keeps your likes, cannot be reached right now, so nothing was "
            "changed. Please try again in a minute.",
            title="Like not saved",
            service=SERVICE,
        )
    return None  # likes refused it (a 4xx): its own problem says why


# Active likes only (market and blog: the liked-only filter and the "liked" annotation).
LIKES = ExportView.of(
    SERVICE,
    "likes",
    "id bigint",
    "user_id bigint",
    "target_type character varying(32)",
    "target_slug character varying(255)",
    "target_id bigint",
    "created_at timestamp with time zone",
)

CONTRACT = Contract(
    SERVICE,
    dev_port=8009,
    public=False,
    calls=[is_liked, liked_slugs, liked_ids, toggle, set_like],
    views=[LIKES],
)

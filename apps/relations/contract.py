"""What relations offers other services: which child (market place, calendar) is attached to
which parent (page). Imports nothing else of relations.

For the owners of children (events' calendars, market's market places), the one way to keep
relations in step with their own rows: call relations inside the open local transaction, after
the local rows are flushed, and commit only once it answered (:func:`call_relations`, which
undoes a call relations may have applied without answering in time); should the commit then
fail, undo what relations did (:func:`commit_or_revert_relations`)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

import msgspec
from sqlalchemy.ext.asyncio import AsyncSession

from apps.common.contracts import Action, Contract, ExportView, Query
from apps.common.inputs import CONTAINER_TYPE
from apps.common.internal_client import InternalCallError, InternalClient
from apps.common.problems import Problem

logger = logging.getLogger("rose.relations.calls")

SERVICE = "relations"

# Types are short lowercase words ("page", "market", "calendar").
ContainerType = Annotated[str, msgspec.Meta(pattern=CONTAINER_TYPE)]
ContainerId = Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]


class Relation(msgspec.Struct):
    id: int
    parent_type: str
    parent_id: int
    child_type: str
    child_id: int
    sort_order: int
    label: str | None
    created_at: datetime
    updated_at: datetime


class Children(msgspec.Struct, forbid_unknown_fields=True):
    parent_type: ContainerType
    parent_id: ContainerId
    child_type: ContainerType | None = None


class AttachChild(msgspec.Struct, forbid_unknown_fields=True):
    parent_type: ContainerType
    parent_id: ContainerId
    child_type: ContainerType
    child_id: ContainerId
    sort_order: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] | None = None
    # One readable line (apps.common.inputs.one_line_name, checked by relations): a 422 otherwise.
    label: Annotated[str, msgspec.Meta(max_length=255)] | None = None


class DetachChild(msgspec.Struct, forbid_unknown_fields=True):
    parent_type: ContainerType
    parent_id: ContainerId
    child_type: ContainerType
    child_id: ContainerId


class Detached(msgspec.Struct):
    detached: bool


get_children = Query(SERVICE, "get-children", Children, list[Relation])
# Re-attaching is a no-op that answers the relation.
attach_child = Action(SERVICE, "attach-child", AttachChild, Relation)
detach_child = Action(SERVICE, "detach-child", DetachChild, Detached)

# Active attachments only (blog reads a page's markets and calendars).
CONTAINER_RELATIONS = ExportView.of(
    SERVICE,
    "container_relations",
    "id bigint",
    "parent_type character varying(32)",
    "parent_id bigint",
    "child_type character varying(32)",
    "child_id bigint",
    "sort_order integer",
    "label character varying(255)",
    "created_at timestamp with time zone",
    "updated_at timestamp with time zone",
)

CONTRACT = Contract(
    SERVICE,
    dev_port=8008,
    public=False,
    calls=[get_children, attach_child, detach_child],
    views=[CONTAINER_RELATIONS],
)


# -- keeping relations in step (the owners of children call these) ----------------------------
@dataclass(frozen=True)
class RelationsCall:
    """One attach-child or detach-child of a child on a parent; :meth:`undo` reverses it."""

    attach: bool
    relation: DetachChild  # which parent and child
    label: str | None = None

    def undo(self) -> RelationsCall:
        return RelationsCall(not self.attach, self.relation, self.label)

    async def send(self, internal: InternalClient, idempotency_key: str | None = None) -> None:
        if self.attach:
            attach = AttachChild(**msgspec.structs.asdict(self.relation), label=self.label)
            await internal.call(attach_child, attach, idempotency_key=idempotency_key)
        else:
            await internal.call(detach_child, self.relation, idempotency_key=idempotency_key)


async def call_relations(
    internal: InternalClient,
    call: RelationsCall,
    doing: str,
    *,
    caller: str,
    undo_if_unknown: bool = True,
) -> None:
    """Send ``call``; a failure is a problem (the caller's open transaction then rolls back)
    saying what is true: nothing was changed, or, when relations may have applied it and could
    not be made to undo it, that it may show the change.

    A call that timed out (or lost its connection after sending) may still be applied by
    relations once it answers (audit s20 M1 a: an attachment of a market place that never
    existed). It is sent again with its key, which relations applies at most once and answers
    only once applied, then undone, while the caller still holds its locks, so that no later
    change of the same child comes in between. ``undo_if_unknown=False``: the call only
    repeats what the caller already stores (attaching a calendar to its own page), so it is
    left as it may be."""
    # A fresh key per call: the client may then retry a timeout or a 503 safely, and relations
    # applies the call once. (attach/detach are no-ops when repeated, but a key makes it exact.)
    key = f"{caller}-{uuid.uuid4()}"
    try:
        await call.send(internal, idempotency_key=key)
    except InternalCallError as exc:
        if exc.outcome_unknown and not (
            undo_if_unknown and await _settle_and_undo(internal, call, key)
        ):
            raise Problem(
                f"Not saved: {doing} needs the relations service, which did not answer in time "
                f"({exc}). Relations may have recorded it all the same, and could not be asked "
                "to undo it: try again once it answers.",
                status_code=exc.http_status,
                service=SERVICE,
            ) from exc
        raise Problem(
            f"Nothing was changed: {doing} needs the relations service, which failed ({exc})",
            status_code=exc.http_status,
            service=SERVICE,
        ) from exc


async def _settle_and_undo(internal: InternalClient, call: RelationsCall, key: str) -> bool:
    """Whether a call of unknown outcome is now known to be undone: sent again under its key
    (so it is applied, once, and the original can no longer be applied after the undo), then
    reversed. False when relations did not answer either."""
    try:
        await call.send(internal, idempotency_key=key)
        await call.undo().send(internal, idempotency_key=f"{key}-undo")
    except InternalCallError:
        logger.exception(
            "relations may have applied %s %s, and it could not be undone",
            "attach" if call.attach else "detach",
            call.relation,
        )
        return False
    return True


async def revert_relations(internal: InternalClient, calls: Sequence[RelationsCall]) -> None:
    """Undo relations calls, newest first. Best effort: a failure is logged, not raised, because
    the caller is already reporting the error that made it revert."""
    for call in reversed(calls):
        try:
            await call.undo().send(internal)
        except InternalCallError:
            logger.exception(
                "could not revert relations (%s %s); relations and its caller disagree until "
                "the child is attached again",
                "attach" if call.attach else "detach",
                call.relation,
            )


async def commit_or_revert_relations(
    session: AsyncSession, internal: InternalClient, calls: Sequence[RelationsCall]
) -> None:
    """Commit a local change whose relations calls already succeeded. Should the commit fail,
    reverse those calls, so relations does not keep an attachment its owner never stored."""
    try:
        await session.commit()
    except Exception:
        await revert_relations(internal, calls)
        raise

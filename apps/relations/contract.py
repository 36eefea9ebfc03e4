"""What relations offers other services: which child (market place, calendar) is attached to
which parent (page). Imports nothing else of relations.

For the owners of children (events' calendars, market's market places), the one way to keep
relations in step with their own rows: call relations inside the open local transaction, after
the local rows are flushed, and commit only once it answered (:func:`call_relations`, which
has the owner's outbox undo a call relations may have applied without answering in time);
should the commit then fail, undo what relations did (:func:`commit_or_revert_relations`)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Litestar
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from sqlalchemy import BigInteger, Table, event, select
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from apps.common.app_factory import platform_of
from apps.common.contracts import Action, Contract, ExportView, Query
from apps.common.inputs import CONTAINER_TYPE
from apps.common.internal_client import InternalCallError, InternalClient
from apps.common.outbox import OutboxRelay, backlog_metrics, enqueue
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


class Parents(msgspec.Struct, forbid_unknown_fields=True):
    child_type: ContainerType
    child_id: ContainerId


class AttachChild(msgspec.Struct, forbid_unknown_fields=True):
    parent_type: ContainerType
    parent_id: ContainerId
    child_type: ContainerType
    child_id: ContainerId
    # Any the column holds: only the undo of a detach sends one, what relations stored (the
    # split moves the monolith's as they were, negative ones included).
    sort_order: Annotated[int, msgspec.Meta(ge=-(2**31), le=2**31 - 1)] | None = None
    # One readable line (apps.common.inputs.one_line_name, checked by relations): a 422 otherwise.
    label: Annotated[str, msgspec.Meta(max_length=255)] | None = None


class DetachChild(msgspec.Struct, forbid_unknown_fields=True):
    parent_type: ContainerType
    parent_id: ContainerId
    child_type: ContainerType
    child_id: ContainerId


class Detached(msgspec.Struct, omit_defaults=True):
    detached: bool
    # The attachment detached (None when there was none): what its undo re-attaches, exactly.
    relation: Relation | None = None


get_children = Query(SERVICE, "get-children", Children, list[Relation])
# Where one child is attached (its owner removing it detaches it from every parent).
get_parents = Query(SERVICE, "get-parents", Parents, list[Relation])
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
    calls=[get_children, get_parents, attach_child, detach_child],
    views=[CONTAINER_RELATIONS],
)


# -- keeping relations in step (the owners of children call these) ----------------------------
# The key of an undo queued in the owner's outbox ends so (the relay's acknowledgement of any
# other relations message there is a settled call whose undo it then queues).
UNDO = "-undo"
# The key of a detach queued after a removal committed (:func:`detach_left_behind`) ends so:
# final, like an undo (nothing is undone after it: its child is gone for good).
LEFT_BEHIND = "-left-behind"


@dataclass(frozen=True)
class RelationsCall:
    """One attach-child or detach-child of a child on a parent; :meth:`undo` reverses it."""

    attach: bool
    relation: DetachChild  # which parent and child
    label: str | None = None
    # Where among the parent's children an attach puts it (None: at the end); the undo of a
    # detach that knew it puts the child back where it was.
    sort_order: int | None = None

    @classmethod
    def of(cls, action: str, payload: Mapping[str, Any]) -> RelationsCall:
        """The call an outbox message of ``action`` with ``payload`` makes."""
        relation = msgspec.convert(
            {name: payload[name] for name in DetachChild.__struct_fields__}, DetachChild
        )
        return cls(
            action == attach_child.name, relation, payload.get("label"), payload.get("sort_order")
        )

    @classmethod
    def detach_of(cls, relation: Relation) -> RelationsCall:
        """The detach of an attachment relations answered: its undo re-attaches it exactly
        (same place among the parent's children; no label, so relations restores the detached
        row with the label it stored, which it might refuse as a new one: the split moves the
        monolith's labels unchecked, a blank one included)."""
        pair = DetachChild(
            parent_type=relation.parent_type,
            parent_id=relation.parent_id,
            child_type=relation.child_type,
            child_id=relation.child_id,
        )
        return cls(False, pair, None, relation.sort_order)

    def undo(self) -> RelationsCall:
        return RelationsCall(not self.attach, self.relation, self.label, self.sort_order)

    @property
    def action(self) -> Action[Any, Any]:
        return attach_child if self.attach else detach_child

    @property
    def request(self) -> AttachChild | DetachChild:
        if self.attach:
            return AttachChild(
                **msgspec.structs.asdict(self.relation),
                label=self.label,
                sort_order=self.sort_order,
            )
        return self.relation

    async def send(self, internal: InternalClient, idempotency_key: str | None = None) -> None:
        await internal.call(self.action, self.request, idempotency_key=idempotency_key)

    def __str__(self) -> str:
        return f"{'attach' if self.attach else 'detach'} {self.relation}"


class RelationsLink:
    """How an owner of children keeps relations in step: its client of relations, and its own
    outbox (:mod:`apps.common.outbox`) for the undos relations could not be given when they
    were due. Those are queued in a transaction of their own (the caller's is failing or rolled
    back by then) and delivered by the outbox's relay, under their keys, until relations
    answers, across restarts: a ghost attachment (relations showing a child its owner never
    stored) lasts only as long as relations is unreachable."""

    def __init__(
        self,
        caller: str,
        client: InternalClient,
        maker: async_sessionmaker[AsyncSession],
        outbox: Table,
        *,
        poll_seconds: float = 2.0,
    ) -> None:
        self.caller = caller
        self.client = client
        self._maker = maker
        self._outbox = outbox
        self.relay = OutboxRelay(
            maker, outbox, poll_seconds=poll_seconds, client=client, acknowledged=self._settled
        )

    async def _pending(self, session: AsyncSession, relation: DetachChild) -> list[str]:
        """The keys of the messages still queued about ``relation``'s child (not those relations
        refused for good: dead, they are never delivered, and nothing waits for them).

        Read in the request's own transaction (``session``), with no lock and no write: the
        request needs no second connection of the pool for it (audit LOW-3: each of a few
        concurrent changes held one and waited for another until the pool's timeout), and its
        rollback has nothing to undo here. Its isolation is READ COMMITTED, so each look sees
        what the deliveries committed before it (:meth:`deliver_pending` looks again)."""
        outbox = self._outbox
        about_child = (
            outbox.c.delivered_at.is_(None)
            & outbox.c.dead_at.is_(None)
            & (outbox.c.service == SERVICE)
            & (outbox.c.payload["child_type"].astext == relation.child_type)
            & (outbox.c.payload["child_id"].astext.cast(BigInteger) == relation.child_id)
        )
        return list(await session.scalars(select(outbox.c.idempotency_key).where(about_child)))

    async def deliver_pending(
        self, session: AsyncSession, relation: DetachChild, doing: str
    ) -> None:
        """Deliver now what the outbox still holds about this child (an earlier change's undo):
        delivered after this change, it would undo it. A problem, nothing changed, while
        relations does not take them.

        Only then is a second connection used: a delivery is recorded in a transaction of its
        own, whatever becomes of the request's (relations took it; the undo of a repeat is
        queued there, :meth:`_settled`), and it holds the message's row lock, which the request
        must not (the delivery would wait for the request that waits for it). The wait for it,
        that connection included, is bounded (``PENDING_WAIT_SECONDS`` each time)."""
        # Twice: a repeat of unknown outcome, then the undo its delivery queues.
        for _ in range(2):
            keys = await self._pending(session, relation)
            if not keys:
                return
            # Due now, whatever their backoff: a change of the child waits for them.
            await self.relay.deliver_now(keys, within=PENDING_WAIT_SECONDS, whatever_backoff=True)
        if await self._pending(session, relation):
            raise Problem(
                f"Nothing was changed: {doing} waits for relations to undo an earlier change of "
                f"this {relation.child_type}, and it has not answered yet: try again shortly.",
                status_code=503,
                service=SERVICE,
            )

    async def undo_later(self, calls: Sequence[tuple[RelationsCall, str]]) -> bool:
        """Queue each ``(call, key)``, in order, in one transaction of its own; False (logged)
        when even that failed."""
        try:
            async with self._maker() as session, session.begin():
                for call, key in calls:
                    await enqueue(
                        session, self._outbox, call.action, call.request, idempotency_key=key
                    )
        except Exception:  # the owner's database: nothing more can be done here
            logger.exception(
                "could not queue %s for relations", ", ".join(str(call) for call, _key in calls)
            )
            return False
        self.relay.wake()
        return True

    async def _settled(self, session: AsyncSession, message: Row[Any], answer: Any) -> None:
        """The relay's acknowledgement of a queued message. One that is not an undo repeated a
        call of unknown outcome under its key (relations applied it, once, and the original can
        no longer be applied): its undo is queued now, in the delivery's transaction, so it is
        never delivered before it. A detach's undo re-attaches what relations says it detached
        (its label and place among the parent's children)."""
        if message.service != SERVICE or message.idempotency_key.endswith((UNDO, LEFT_BEHIND)):
            return
        call = RelationsCall.of(message.action, message.payload).undo()
        if message.action == detach_child.name:
            detached = msgspec.convert(answer, Detached)
            if not detached.detached:
                return  # nothing was attached (an editor detached it meanwhile): nothing to undo
            if detached.relation is not None:  # None: an older relations' answer
                call = RelationsCall.detach_of(detached.relation).undo()
        await enqueue(
            session,
            self._outbox,
            call.action,
            call.request,
            idempotency_key=message.idempotency_key + UNDO,
        )
        relay = self.relay
        event.listen(session.sync_session, "after_commit", lambda _s: relay.wake(), once=True)


def relations_link_wiring(outbox: Table) -> dict[str, Any]:
    """What an owner's app adds to its wiring (``create_service_app(**...)``): its
    :class:`RelationsLink` made at start-up (its relay started, stopped at shut-down), given
    to handlers as ``relations: Relations``, and its outbox's backlog in /metrics."""

    async def start(app: Litestar) -> None:
        platform = platform_of(app)
        link = RelationsLink(
            platform.settings.service, platform.client, platform.sessionmaker, outbox
        )
        app.state.relations_link = link
        link.relay.start()

    async def stop(app: Litestar) -> None:
        await app.state.relations_link.relay.stop()

    def provide(state: State) -> RelationsLink:
        return state.relations_link

    return {
        "on_startup": [start],
        "on_shutdown": [stop],
        "dependencies": {"relations": Provide(provide, sync_to_thread=False)},
        "scrape_hooks": [backlog_metrics(outbox)],
    }


# How long a change waits for the undos still queued about its child to be delivered.
PENDING_WAIT_SECONDS = 5.0

# Handlers receive it as ``relations: Relations``.
Relations = NamedDependency[RelationsLink]


async def call_relations(
    session: AsyncSession,
    link: RelationsLink,
    call: RelationsCall,
    doing: str,
    *,
    undo_if_unknown: bool = True,
) -> None:
    """Send ``call`` for the change in ``session``'s open transaction; a failure is a problem
    (the caller's open transaction then rolls back) saying what is true: nothing was changed,
    or, when relations may have applied it, that the outbox undoes it once relations answers.

    A call that timed out (or lost its connection after sending) may still be applied by
    relations once it answers (audit s20 M1 a: an attachment of a market place that never
    existed). Its repeat under its key (relations applies a key at most once and answers only
    once applied) is queued in the owner's outbox at once, committed while the caller still
    holds its locks, and its undo is queued once that is acknowledged; a later change of the
    same child first delivers what the outbox holds about it
    (:meth:`RelationsLink.deliver_pending`), so that undo never lands after it. Nothing more is
    tried here: a relations that does not answer made the call wait its tries already, and
    trying the repeat and the undo now, each with its own tries, doubled that wait (audit s21b
    B3: 31 s before the 503, longer than many clients and proxies wait). ``undo_if_unknown=
    False``: the call only repeats what the caller already stores (attaching a calendar to its
    own page), so it is left as it may be."""
    # A fresh key per call: the client may then retry a timeout or a 503 safely, and relations
    # applies the call once. (attach/detach are no-ops when repeated, but a key makes it exact.)
    await link.deliver_pending(session, call.relation, doing)
    key = f"{link.caller}-{uuid.uuid4()}"
    try:
        await call.send(link.client, idempotency_key=key)
    except InternalCallError as exc:
        if not exc.outcome_unknown:
            raise Problem(
                f"Nothing was changed: {doing} needs the relations service, which failed ({exc})",
                status_code=exc.http_status,
                service=SERVICE,
            ) from exc
        not_saved = (
            f"Not saved: {doing} needs the relations service, which did not answer in time "
            f"({exc}). Relations may have recorded it all the same"
        )
        # The repeat under its key first, its undo queued once that is acknowledged.
        if undo_if_unknown and await link.undo_later([(call, key)]):
            raise Problem(
                f"{not_saved}: that will be undone when relations answers again.",
                status_code=exc.http_status,
                service=SERVICE,
            ) from exc
        raise Problem(
            f"{not_saved}, and could not be asked to undo it: try again once it answers.",
            status_code=exc.http_status,
            service=SERVICE,
        ) from exc


async def detach_everywhere(
    session: AsyncSession, link: RelationsLink, own: DetachChild, doing: str
) -> list[RelationsCall]:
    """Detach a child being removed from every parent relations has it on (``own``, its owner's
    parent, names the child): other services may have attached it elsewhere (blog's page admin
    attaches a market place to any page), and a removed child left there is live in relations
    with no editor to see or detach it. Each detach goes through :func:`call_relations`; should
    one fail, those done are undone (re-attached exactly: label and sort order) and the problem
    raised. Returns the calls made, for :func:`commit_or_revert_relations`."""
    # An earlier change's undo still queued would otherwise re-attach after this read.
    await link.deliver_pending(session, own, doing)
    try:
        attached = await link.client.query(
            get_parents, Parents(child_type=own.child_type, child_id=own.child_id)
        )
    except InternalCallError as exc:
        raise Problem(
            f"Nothing was changed: {doing} needs the relations service, which failed ({exc})",
            status_code=exc.http_status,
            service=SERVICE,
        ) from exc
    done: list[RelationsCall] = []
    for relation in attached:
        detach = RelationsCall.detach_of(relation)
        try:
            await call_relations(session, link, detach, doing)
        except Problem as exc:
            if done and not await revert_relations(link, done, now=not unanswered(exc)):
                raise Problem(
                    f"Not saved: {doing} needs the relations service, which failed. Relations "
                    "shows it detached from some of its pages until it answers again, when "
                    "that is undone.",
                    status_code=exc.status_code,
                    service=SERVICE,
                ) from exc
            raise
        done.append(detach)
    return done


async def detach_left_behind(link: RelationsLink, own: DetachChild, doing: str) -> None:
    """Once the removal of a child committed, detach it from the parents relations has it on
    now: another service may have attached it after :func:`detach_everywhere` read them, having
    checked (through its own read of the owner) that the child was live, the removal not yet
    committed. No lock spans the two services; this second look, after the commit, sees every
    attach such a check let through (an attacher that checks again after attaching undoes its
    own when it sees the child gone: the two looks between them leave nothing). A detach
    relations does not take now is queued in the outbox; never raises (the removal stands)."""
    try:
        attached = await link.client.query(
            get_parents, Parents(child_type=own.child_type, child_id=own.child_id)
        )
    except InternalCallError as exc:
        logger.error(
            "%s: could not look again for attachments made meanwhile (%s); relations may keep "
            "one of %s %s until it is detached",
            doing,
            exc,
            own.child_type,
            own.child_id,
        )
        return
    later: list[tuple[RelationsCall, str]] = []
    for relation in attached:
        detach = RelationsCall.detach_of(relation)
        key = f"{link.caller}-{uuid.uuid4()}{LEFT_BEHIND}"
        if later:
            later.append((detach, key))
            continue
        try:
            await detach.send(link.client, idempotency_key=key)
        except InternalCallError as exc:
            logger.warning("%s: could not %s now, queued: %s", doing, detach, exc)
            later.append((detach, key))
    if later and not await link.undo_later(later):
        logger.error(
            "%s: relations keeps what should be detached: %s",
            doing,
            ", ".join(str(call) for call, _key in later),
        )


def unanswered(problem: Problem) -> bool:
    """Whether ``problem`` (of :func:`call_relations`) is relations not answering in time: an
    undo sent now would wait as long again."""
    cause = problem.__cause__
    return isinstance(cause, InternalCallError) and cause.outcome_unknown


async def revert_relations(
    link: RelationsLink, calls: Sequence[RelationsCall], *, now: bool = True
) -> bool:
    """Undo relations calls, newest first: True when relations took every undo now; otherwise
    those it did not take are queued in the outbox, delivered once it answers (False).
    ``now=False``: all are queued at once (relations just did not answer: audit s21b B3). Never
    raises: the caller is already reporting the error that made it revert."""
    later: list[tuple[RelationsCall, str]] = []
    for call in reversed(calls):
        undo = call.undo()
        # Under a key: the same undo, repeated by the outbox after a lost answer, applies once.
        key = f"{link.caller}-{uuid.uuid4()}{UNDO}"
        if later or not now:
            later.append((undo, key))  # after the one queued before it, never ahead of it
            continue
        try:
            await undo.send(link.client, idempotency_key=key)
        except InternalCallError as exc:
            logger.warning("could not %s now, queued: %s", undo, exc)
            later.append((undo, key))
    if later and not await link.undo_later(later):
        logger.error(
            "relations and its caller disagree until the child is attached again: %s",
            ", ".join(str(undo) for undo, _key in later),
        )
    return not later


async def commit_or_revert_relations(
    session: AsyncSession,
    link: RelationsLink,
    calls: Sequence[RelationsCall],
    doing: str = "the change",
) -> None:
    """Commit a local change whose relations calls already succeeded. Should the commit fail,
    reverse those calls, so relations does not keep an attachment its owner never stored; a
    reversal relations cannot take now is made by the outbox once it answers, and the problem
    says so."""
    try:
        await session.commit()
    except Exception as exc:
        if not await revert_relations(link, calls):
            # Answered as a problem, not the unexpected error (which is logged with its cause).
            logger.exception("storing failed after relations recorded it: %s", doing)
            raise Problem(
                f"Not saved: {doing} could not be stored. Relations recorded it already, and "
                "will be brought back in step when it answers again.",
                status_code=500,
            ) from exc
        raise

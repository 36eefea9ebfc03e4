"""What relations offers other services: which child (market place, calendar) is attached to
which parent (page). Imports nothing else of relations."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec

from apps.common.contracts import Action, Contract, ExportView, Query

SERVICE = "relations"

# Types are short lowercase words ("page", "market", "calendar").
ContainerType = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
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

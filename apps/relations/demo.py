"""Demo data: the demo pages' market places and calendars, attached as market's and events' demo
data create them (market places 1 and 2 and calendars 1 and 2 on pages 1 and 2, on a fresh
stack). The ids are written as they are, with nothing looked up in another database, like the
other services' demo data; market's and events' admins keep these rows in step from then on."""

from __future__ import annotations

from sqlalchemy import Connection, func, insert, select

from apps.relations.models import ContainerRelation

# (page id, child type, child id, label, sort order)
ATTACHED = [
    (1, "market", 1, "Farm Shop Market", 0),
    (1, "calendar", 1, "Farm tours", 1),
    (2, "market", 2, "Market Hall Stalls", 0),
    (2, "calendar", 2, "Tastings", 1),
]


# The tables seed fills: rose up adds none of it while any of them holds a row.
FILLS = ("relations.container_relations",)
# The services whose demo rows its rows name by id (pages, market places, calendars).
ATTACHES_TO = ("blog", "market", "events")


def seed(connection: Connection) -> str | None:
    if connection.scalar(select(func.count()).select_from(ContainerRelation)):
        return None
    connection.execute(
        insert(ContainerRelation),
        [
            {
                "parent_type": "page",
                "parent_id": page_id,
                "child_type": child_type,
                "child_id": child_id,
                "label": label,
                "sort_order": sort_order,
            }
            for page_id, child_type, child_id, label, sort_order in ATTACHED
        ],
    )
    return f"{len(ATTACHED)} attachments (a market place and a calendar on each demo page)"

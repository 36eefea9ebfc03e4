"""Demo data: two calendars with a dozen open entries over the coming weeks, no bookings.

The calendars belong to the demo pages 1 ("Farm tours") and 2 ("Tastings"): blog's demo creates
its two pages first, so they get post ids 1 and 2 on a fresh stack. The ids are written as they
are, with nothing looked up in another database. relations' own demo data attaches them to their
pages (apps/relations/demo.py).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from sqlalchemy import Connection, insert, select

from apps.events.models import Calendar, CalendarEntry

CALENDARS = [("farm-tours", "Farm tours", 1), ("tastings", "Tastings", 2)]

# (calendar slug, entry name, days from today, hour (UTC), cost)
ENTRIES = [
    ("farm-tours", "Orchard walk", 2, 10, Decimal("0")),
    ("farm-tours", "Milking at dawn", 4, 6, Decimal("8.50")),
    ("farm-tours", "Beehive visit", 6, 14, Decimal("12.00")),
    ("farm-tours", "Orchard walk", 9, 10, Decimal("0")),
    ("farm-tours", "Tractor ride for children", 13, 11, Decimal("5.00")),
    ("farm-tours", "Hedgerow foraging", 20, 9, Decimal("15.00")),
    ("tastings", "Cider tasting", 3, 18, Decimal("18.00")),
    ("tastings", "Cheese and chutney", 5, 19, Decimal("22.50")),
    ("tastings", "Honey flight", 8, 17, Decimal("0")),
    ("tastings", "Jam makers' evening", 12, 18, Decimal("14.00")),
    ("tastings", "Perry and pear tart", 16, 19, Decimal("19.50")),
    ("tastings", "Open kitchen", 27, 12, Decimal("0")),
]


# The tables seed fills: rose up adds none of it while any of them holds a row.
FILLS = ("events.calendars", "events.calendar_entries")
# The services whose demo rows its rows name by id (pages, market places, calendars).
ATTACHES_TO = ("blog",)


def holds_demo(connection: Connection) -> bool:
    """Calendars 1 and 2 are the demo's, which relations' demo rows name by id."""
    found = connection.execute(
        select(Calendar.id, Calendar.slug).where(Calendar.id.in_([1, 2])).order_by(Calendar.id)
    ).all()
    return [tuple(row) for row in found] == [
        (index, slug) for index, (slug, _name, _page) in enumerate(CALENDARS, start=1)
    ]


def seed(connection: Connection) -> str | None:
    if connection.execute(select(select(Calendar.id).exists())).scalar():
        return None
    calendar_ids: dict[str, int] = {}
    for slug, name, page_id in CALENDARS:
        calendar_ids[slug] = connection.execute(
            insert(Calendar)
            .values(slug=slug, name=name, container_type="page", container_id=page_id)
            .returning(Calendar.id)
        ).scalar_one()
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    connection.execute(
        insert(CalendarEntry),
        [
            {
                "calendar_id": calendar_ids[slug],
                "name": name,
                "starts_at": today + timedelta(days=days, hours=hour),
                "cost": cost,
                "currency": "EUR",
                "state": "open",
            }
            for slug, name, days, hour, cost in ENTRIES
        ],
    )
    return f"{len(CALENDARS)} calendars (pages 1 and 2), {len(ENTRIES)} open entries"

"""Demo data for ``rose up``: the pages ``farm-shop`` and ``market-hall`` (posts 1 and 2 on a fresh
stack, which market's and events' demo data refer to), a dozen published posts, and page configs
for both pages and for the site default, all paying into the local SumUp sandbox merchant."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import func, insert, select
from sqlalchemy.engine import Connection

from apps.blog.models import SITE_CONTAINER, SITE_CONTAINER_ID, PageConfig, Post
from apps.common.db import table_of

SANDBOX_MERCHANT_CODE = "MSANDBOX1"
SANDBOX_API_KEY = "sup_sk_sandbox_rose"

POSTS = [
    ("first-roses-of-the-season", "First roses of the season", "The hedge by the lane is out."),
    ("making-rose-hip-syrup", "Making rose hip syrup", "Pick after the first frost, then simmer."),
    ("our-bees-in-winter", "Our bees in winter", "The hives are wrapped and quiet."),
    ("the-new-polytunnel", "The new polytunnel", "Tomatoes in April, if the weather holds."),
    ("saturday-market-notes", "Saturday market notes", "Queues for the sourdough by nine."),
    ("pruning-old-apple-trees", "Pruning old apple trees", "Less is more, and never in frost."),
    ("a-visit-from-the-school", "A visit from the school", "Thirty children and one goat."),
    ("seed-swap-this-spring", "Seed swap this spring", "Bring what you saved, take what you need."),
    ("jam-day", "Jam day", "Forty jars of damson, and a sticky kitchen."),
    ("hedgerow-walk", "Hedgerow walk", "Elderflower, hawthorn and a lot of nettles."),
    ("compost-matters", "Compost matters", "Three bays, turned every fortnight."),
    ("harvest-supper", "Harvest supper", "Long tables in the barn, everyone welcome."),
]

PAGES = [
    ("farm-shop", "Farm shop", "Fresh from the farm: vegetables, eggs, honey and preserves."),
    ("market-hall", "Market hall", "Stalls from local growers and makers, every Saturday."),
]


# The tables seed fills: rose up adds none of it while any of them holds a row.
FILLS = ("blog.posts", "blog.page_configs")


def holds_demo(connection: Connection) -> bool:
    """Posts 1 and 2 are the demo's pages, which market's, events' and relations' demo rows
    name by id (an earlier start's demo data, not the home's own pages)."""
    found = connection.execute(
        select(Post.id, Post.slug).where(Post.id.in_([1, 2]), Post.is_page.is_(True))
    ).all()
    return sorted((row.id, row.slug) for row in found) == [
        (index, slug) for index, (slug, _title, _body) in enumerate(PAGES, start=1)
    ]


def seed(connection: Connection) -> str | None:
    """Fill blog's tables when they are empty; otherwise leave everything as it is."""
    if connection.scalar(select(func.count()).select_from(Post)):
        return None
    now = datetime.now(UTC)
    posts = table_of(Post)
    # Pages first: on a fresh stack they are posts 1 and 2, the pages market's and events'
    # demo data attach their market places and calendars to.
    page_ids = {
        slug: connection.scalar(
            insert(posts)
            .values(
                slug=slug,
                title=title,
                body=body,
                is_page=True,
                status="published",
                published_at=now - timedelta(days=60),
            )
            .returning(posts.c.id)
        )
        for slug, title, body in PAGES
    }
    connection.execute(
        insert(posts),
        [
            {
                "slug": slug,
                "title": title,
                "body": f"{summary}\n\nMore news from the farm next week.",
                "is_page": False,
                "status": "published",
                "published_at": now - timedelta(days=3 * number + 1),
            }
            for number, (slug, title, summary) in enumerate(POSTS)
        ],
    )
    sandbox = {"sumup_merchant_code": SANDBOX_MERCHANT_CODE, "sumup_api_key": SANDBOX_API_KEY}
    connection.execute(
        insert(table_of(PageConfig)),
        [
            {
                "container_type": "page",
                "container_id": page_ids["farm-shop"],
                "features": {"cart": True, "market": True, "calendar": True},
                "sumup_checkout_prefix": "rose-farm-",
                **sandbox,
            },
            {
                "container_type": "page",
                "container_id": page_ids["market-hall"],
                "features": {"cart": True, "market": True, "calendar": True},
                "sumup_checkout_prefix": "rose-hall-",
                **sandbox,
            },
            {
                "container_type": SITE_CONTAINER,
                "container_id": SITE_CONTAINER_ID,
                "features": {"cart": True},
                "sumup_checkout_prefix": "rose-",
                **sandbox,
            },
        ],
    )
    return (
        f"{len(POSTS)} posts, pages {', '.join(page_ids)}, "
        "3 page configs (both pages and the site default) on SumUp sandbox merchant "
        f"{SANDBOX_MERCHANT_CODE}"
    )

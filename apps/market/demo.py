"""Demo data: two market places (selling through the demo pages 1 and 2) and 300 products."""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import Connection, text

PRODUCE = [
    "apple", "pear", "plum", "cherry", "quince", "rhubarb", "damson", "gooseberry", "blackcurrant",
    "raspberry", "strawberry", "elderflower", "rosehip", "honey", "walnut", "hazelnut",
    "cider", "chutney", "marmalade", "cordial",
]  # fmt: skip
KINDS = ["jam", "jelly", "juice", "crumble", "tart", "vinegar", "syrup", "preserve", "cake",
         "compote", "sauce", "pickle", "loaf", "wedge", "box"]  # fmt: skip
MARKET_PLACES = [
    ("farm-shop-market", "Farm Shop Market", 1),
    ("hall-market", "Market Hall Stalls", 2),
]


# The tables seed fills: rose up adds none of it while any of them holds a row.
FILLS = ("market.market_places", "market.products")
# The services whose demo rows its rows name by id (pages, market places, calendars).
ATTACHES_TO = ("blog",)


def holds_demo(connection: Connection) -> bool:
    """Market places 1 and 2 are the demo's, which relations' demo rows name by id."""
    found = connection.execute(
        text("SELECT id, slug FROM market.market_places WHERE id IN (1, 2) ORDER BY id")
    ).all()
    return [tuple(row) for row in found] == [
        (index, slug) for index, (slug, _name, _page) in enumerate(MARKET_PLACES, start=1)
    ]


def seed(connection: Connection) -> str | None:
    if connection.execute(text("SELECT EXISTS (SELECT FROM market.products)")).scalar():
        return None
    place_ids = []
    for slug, name, page_id in MARKET_PLACES:
        place_ids.append(
            connection.execute(
                text(
                    "INSERT INTO market.market_places (slug, name, container_type, container_id)"
                    " VALUES (:slug, :name, 'page', :page_id) RETURNING id"
                ),
                {"slug": slug, "name": name, "page_id": page_id},
            ).scalar_one()
        )
    rows = []
    for index in range(300):
        produce = PRODUCE[index % len(PRODUCE)]
        kind = KINDS[(index // len(PRODUCE)) % len(KINDS)]
        price = Decimal(250 + (index * 37) % 1750) / 100
        rows.append(
            {
                "slug": f"{produce}-{kind}",
                "title": f"{produce.capitalize()} {kind}",
                # Served by market itself (apps/market/static/products, at /static/).
                "image": f"/static/products/{produce}.svg",
                "regular_price": price,
                "special_price": (price * Decimal("0.8")).quantize(Decimal("0.01"))
                if index % 7 == 0
                else None,
                "market_place_id": place_ids[index % 2],
            }
        )
    connection.execute(
        text(
            "INSERT INTO market.products"
            " (slug, title, image, regular_price, special_price, price_currency, market_place_id)"
            " VALUES (:slug, :title, :image, :regular_price, :special_price, 'EUR',"
            " :market_place_id)"
        ),
        rows,
    )
    return f"{len(place_ids)} market places, {len(rows)} products"

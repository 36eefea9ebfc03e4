"""Products in db_market for tests, written as the market owner (like demo data)."""

from __future__ import annotations

from tests.conftest import admin_connect


def seed_products(server, count: int = 30, *, prefix: str = "item") -> list[str]:
    """Two market places (pages 1 and 2) and ``count`` products; returns the slugs in list order."""
    with admin_connect(server, "market") as connection:
        connection.execute("SET ROLE market_owner")
        place_ids = [
            connection.execute(
                "INSERT INTO market.market_places (slug, name, container_type, container_id) "
                "VALUES (%s, %s, 'page', %s) RETURNING id",
                (f"{prefix}-place-{page}", f"Place {page}", page),
            ).fetchone()[0]
            for page in (1, 2)
        ]
        slugs = [f"{prefix}-{index:03d}" for index in range(count)]
        with connection.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO market.products (slug, title, regular_price, special_price, "
                "price_currency, market_place_id) VALUES (%s, %s, %s, %s, 'EUR', %s)",
                [
                    (
                        slug,
                        f"Item {index:03d}",
                        f"{index + 1}.50",
                        "1.00" if index % 5 == 0 else None,
                        place_ids[index % 2],
                    )
                    for index, slug in enumerate(slugs)
                ],
            )
    return slugs

"""Every service database can live on its own PostgreSQL server: likes on one server, the rest
on another, FDW reads crossing between them, provisioning and drift checks per server."""

from __future__ import annotations

import psycopg
import pytest

from ops.db.check import check
from ops.db.credentials import Credentials
from ops.db.lifecycle import converge_databases
from ops.db.topology import Topology
from tests.conftest import in_process_stack
from tests.integration.market_fixtures import seed_products
from tests.pg import TestServer, embedded_server
from tests.signed import internal_post


@pytest.fixture(scope="module")
def two_servers(tmp_path_factory):
    with embedded_server() as main, embedded_server() as likes_server:
        topology = Topology(
            default_admin_url=main.admin_url, admin_urls={"likes": likes_server.admin_url}
        )
        credentials = Credentials(
            tmp_path_factory.mktemp("two-servers") / "credentials.json", environ={}
        )
        converge_databases(topology, credentials, say=lambda _: None)
        yield TestServer(main.admin_url, topology, "two servers"), likes_server, credentials


def databases(url: str) -> set[str]:
    with psycopg.connect(url) as connection:
        rows = connection.execute("SELECT datname FROM pg_database WHERE datname LIKE 'db\\_%'")
        return {row[0] for row in rows}


def test_databases_are_where_the_topology_says_and_nothing_drifts(two_servers):
    server, likes_server, _ = two_servers
    assert databases(likes_server.admin_url) == {"db_likes"}
    assert "db_likes" not in databases(server.admin_url)
    assert "db_market" in databases(server.admin_url)
    differences, _ = check(server.topology)
    assert differences == []
    with psycopg.connect(server.topology.admin_url("market")) as market:
        options = market.execute(
            "SELECT srvoptions FROM pg_foreign_server WHERE srvname = 'likes_server'"
        ).fetchone()[0]
    _, port = server.topology.fdw_address("likes")
    assert f"port={port}" in options
    assert port == likes_server.embedded.port


async def test_market_reads_likes_from_the_other_server(two_servers):
    server, _, credentials = two_servers
    slugs = seed_products(server, 5)
    async with in_process_stack(server, credentials, ["likes", "market"]) as stack:
        liked = await internal_post(
            stack.client("likes"),
            "toggle",
            {"user_id": 3, "target_type": "product", "target_slug": slugs[2]},
        )
        assert liked.json() == {"liked": True}
        browser = stack.browser("market")
        await browser.get("/auth/dev-login?user_id=3", headers={"accept": "application/json"})
        listing = (await browser.get("/api/products?liked=true")).json()
    assert [item["slug"] for item in listing["items"]] == [slugs[2]]

"""Where the time of one "liked products" request goes (``bench.liked_listing --breakdown``).

Run after the measurement, against the same cluster and processes. For each variant it prints
the plans (EXPLAIN ANALYZE, VERBOSE), the statements the FDW sends to db_likes for one request,
the cost of a new connection (FDW connection setup), and a table of layers, each timed over the
same users, interleaved across variants:

- PostgreSQL: planning + execution of the query (EXPLAIN ANALYZE);
- the SQL statements of one request as the app sends them, from raw psycopg (round trips);
- the service function in-process (SQLAlchemy ORM, the pool's pre-ping, no HTTP);
- a request to the variant's running process: its server time (the access log) and the client's.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import psycopg
from sqlalchemy import Select, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from apps.common.db import create_engine, sessionmaker_for
from apps.common.internal_client import InternalClient
from apps.likes.models import Like
from apps.market import service
from bench.plan_market import liked_in_list_query, liked_products_over_http

PAGE = 24
VARIANT_KEYS = ("a", "b", "c")
# (b)'s statements around each of its queries (its SQL is not logged; the pool pings a
# connection only after it idled, so a request sends no ping).
PLAN_OPEN = ("BEGIN",)
PLAN_CLOSE = ("ROLLBACK",)


def around_the_query(logged: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The statements an (a) request sends before and after its one query, from the server
    log's lines (``statement: BEGIN``, ``execute <unnamed>: WITH ...``): the raw replay sends
    exactly these, so that it measures the round trips the app makes, not an old list."""
    queries = [index for index, line in enumerate(logged) if line.startswith("execute ")]
    if len(queries) != 1 or not all(
        line.startswith("statement: ") for i, line in enumerate(logged) if i != queries[0]
    ):
        raise RuntimeError(f"expected one query among simple statements, the log has {logged}")
    simple = [line.removeprefix("statement: ") for line in logged]
    return tuple(simple[: queries[0]]), tuple(simple[queries[0] + 1 :])


@dataclass(frozen=True)
class Targets:
    market_dsn: str  # market_app on db_market: (a) and (b)'s product query
    monolith_dsn: str  # the monolith's login role on its database: (c)
    likes_dsn: str  # likes_app on db_likes: (b)'s liked-slugs query
    admin_dsn: str  # superuser, to switch statement logging of roles on and off
    likes_base_url: str  # the running likes service, for (b) in-process
    internal_secret: str
    pg_log: Path


def likes_query(user_id: int) -> Select[str | None]:
    """The query of likes' ``liked-slugs`` (apps.likes.service.liked_slugs)."""
    return (
        select(Like.target_slug)
        .where(Like.user_id == user_id, Like.target_type == "product", Like.deleted_at.is_(None))
        .order_by(Like.target_slug)
    )


def as_psycopg(query: Select[Any]) -> tuple[str, dict[str, Any]]:
    """The SQL and parameters SQLAlchemy sends through psycopg for ``query``."""
    compiled = query.compile(
        dialect=postgresql.psycopg.dialect(), compile_kwargs={"render_postcompile": True}
    )
    return str(compiled), dict(compiled.params)


def as_literal(query: Select[Any]) -> str:
    return str(query.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))


def fdw_query(user_id: int) -> Select[Any]:
    return service.liked_products_query(user_id, market_slug=None, limit=PAGE, offset=0)


@asynccontextmanager
async def request_session(maker: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """A session as a request gets it (apps.common.db.request_session): rolled back at the end."""
    async with maker() as session:
        try:
            yield session
        finally:
            if session.in_transaction():
                await session.rollback()


def ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000


# -- plans and remote statements -------------------------------------------------------------
def print_plans(targets: Targets, user_id: int) -> None:
    with (
        psycopg.connect(targets.market_dsn, autocommit=True) as market,
        psycopg.connect(targets.monolith_dsn, autocommit=True) as monolith,
        psycopg.connect(targets.likes_dsn, autocommit=True) as likes,
    ):
        slugs = [row[0] for row in likes.execute(*as_psycopg(likes_query(user_id))).fetchall()]
        plans = (
            ("(a) FDW join, in db_market", market, as_literal(fdw_query(user_id))),
            ("(c) monolith join, in db_bench_monolith", monolith, as_literal(fdw_query(user_id))),
            ("(b) step 1: liked-slugs, in db_likes", likes, as_literal(likes_query(user_id))),
            (
                "(b) step 2: IN list, in db_market",
                market,
                as_literal(liked_in_list_query(slugs, market_slug=None, limit=PAGE, offset=0)),
            ),
        )
        for label, connection, sql in plans:
            for _ in range(3):  # warm: caches, the FDW connection
                connection.execute(sql).fetchall()
            rows = connection.execute(f"EXPLAIN (ANALYZE, VERBOSE, BUFFERS) {sql}").fetchall()
            print(f"\n--- EXPLAIN (ANALYZE, VERBOSE, BUFFERS) {label}, user {user_id}")
            for (line,) in rows:
                # The projection lists are long and say nothing about where time goes.
                if not line.strip().startswith("Output:"):
                    # (b)'s IN list is printed in full by PostgreSQL: a hundred slugs.
                    print(f"  {line[:200]} ..." if len(line) > 200 else f"  {line}")


def print_remote_statements(targets: Targets, user_id: int) -> list[str]:
    """The statements one (a) request sends, locally and to db_likes through the FDW: statement
    logging is switched on for the roles of a fresh engine's sessions only. Returns the local
    ones."""
    roles = ("market_app", "likes_ro_market")
    with psycopg.connect(targets.admin_dsn, autocommit=True) as admin:
        for role in roles:
            admin.execute(f"ALTER ROLE {role} SET log_statement = 'all'")
    try:
        lines = asyncio.run(_one_logged_request(targets, user_id))
    finally:
        with psycopg.connect(targets.admin_dsn, autocommit=True) as admin:
            for role in roles:
                admin.execute(f"ALTER ROLE {role} RESET log_statement")
    print("\n--- statements of one (a) request (service.list_products), from the server log")
    local = [line for role, line in lines if role == "market_app"]
    remote = [line for role, line in lines if role == "likes_ro_market"]
    print(f"  in db_market as market_app: {len(local)}")
    for line in local:
        print(f"    {line[:110]}")
    print(f"  sent by postgres_fdw to db_likes as likes_ro_market: {len(remote)}")
    for line in remote:
        print(f"    {line[:110]}")
    return local


async def _one_logged_request(targets: Targets, user_id: int) -> list[tuple[str, str]]:
    engine = create_engine(targets.market_dsn, application_name="bench-breakdown", pool_size=1)
    maker = sessionmaker_for(engine)
    try:
        for _ in range(2):  # a new session and its FDW connection first
            async with request_session(maker) as session:
                await service.list_products(session, user_id=user_id, liked_only=True)
        await asyncio.sleep(0.3)
        offset = targets.pg_log.stat().st_size
        async with request_session(maker) as session:
            await service.list_products(session, user_id=user_id, liked_only=True)
        await asyncio.sleep(0.5)  # the logger process writes asynchronously
    finally:
        await engine.dispose()
    with targets.pg_log.open("rb") as log:
        log.seek(offset)
        text = log.read().decode("utf-8", "replace")
    statements = []
    for line in text.splitlines():
        for role in ("market_app", "likes_ro_market"):
            marker = f" {role}@"
            if marker in line and ("statement: " in line or "execute " in line):
                statement = line.split("LOG:", 1)[1].strip()
                statements.append((role, statement))
    return statements


# -- connection setup ------------------------------------------------------------------------
def print_connection_setup(targets: Targets, users: Sequence[int], rounds: int = 20) -> None:
    """A new connection: SCRAM login, then the first query, which for (a) also opens the FDW's
    connection to db_likes (another SCRAM login), then a second query on the same session."""
    timings: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for user_id in users[:rounds]:
        sql, params = as_psycopg(fdw_query(user_id))
        for key, dsn in (("a", targets.market_dsn), ("c", targets.monolith_dsn)):
            started = time.perf_counter()
            connection = psycopg.connect(dsn, autocommit=True)
            timings[key]["connect"].append(ms_since(started))
            with connection:
                for step in ("first query", "second query"):
                    started = time.perf_counter()
                    connection.execute(sql, params).fetchall()
                    timings[key][step].append(ms_since(started))
    print(f"\n--- a new connection (median of {rounds}, ms)")
    for key, label in (("a", "(a) FDW"), ("c", "(c) monolith")):
        steps = "  ".join(
            f"{step} {statistics.median(values):6.2f}" for step, values in timings[key].items()
        )
        print(f"  {label:<14}{steps}")


# -- layers ----------------------------------------------------------------------------------
Layers = dict[str, dict[str, list[float]]]


async def _explain_ms(connection: psycopg.AsyncConnection, sql: str) -> float:
    cursor = await connection.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}")
    row = await cursor.fetchone()
    assert row is not None
    plan = row[0][0]
    return float(plan["Planning Time"]) + float(plan["Execution Time"])


async def _statements(
    connection: psycopg.AsyncConnection,
    opening: Sequence[str],
    query: tuple[str, dict[str, Any]],
    closing: Sequence[str],
) -> list[Any]:
    """One request's statements, each a round trip, as SQLAlchemy sends them."""
    for statement in opening:
        await connection.execute(statement)
    rows = await (await connection.execute(*query)).fetchall()
    for statement in closing:
        await connection.execute(statement)
    return rows


async def measure_layers(
    targets: Targets,
    users: Sequence[int],
    http_urls: Mapping[str, str],
    cookies: Mapping[int, str],
    around: tuple[Sequence[str], Sequence[str]],
) -> Layers:
    """Every layer of every variant for each user, steps in a rotating order. ``http_urls``:
    the listing URL of each variant's running process (their access log gives the server time
    meanwhile); ``cookies``: a session cookie per user; ``around``: the statements an (a)
    request sends before and after its query (:func:`around_the_query`)."""
    layers: Layers = defaultdict(lambda: defaultdict(list))
    opening, closing = around

    def around_query(query: tuple[str, dict[str, Any]]) -> tuple[Any, ...]:
        return opening, query, closing

    http = httpx.AsyncClient(timeout=30.0)
    connect = psycopg.AsyncConnection.connect
    market = await connect(targets.market_dsn, autocommit=True)
    monolith = await connect(targets.monolith_dsn, autocommit=True)
    likes = await connect(targets.likes_dsn, autocommit=True)
    engines = {
        key: create_engine(dsn, application_name="bench-breakdown")
        for key, dsn in (("market", targets.market_dsn), ("monolith", targets.monolith_dsn))
    }
    makers = {key: sessionmaker_for(engine) for key, engine in engines.items()}
    internal = InternalClient(
        caller="market", secret=targets.internal_secret, base_urls={"likes": targets.likes_base_url}
    )

    async def fdw_like(maker_key: str, user_id: int) -> None:
        async with request_session(makers[maker_key]) as session:
            await service.list_products(session, user_id=user_id, liked_only=True)

    async def plan_like(user_id: int) -> None:
        async with request_session(makers["market"]) as session:
            await liked_products_over_http(
                session, internal, user_id=user_id, page=1, per_page=PAGE, market_slug=None
            )

    async def timed(layer: str, key: str, work: Awaitable[Any]) -> Any:
        started = time.perf_counter()
        result = await work
        layers[layer][key].append(ms_since(started))
        return result

    try:
        for index, user_id in enumerate(users):
            slug_rows = await (await likes.execute(*as_psycopg(likes_query(user_id)))).fetchall()
            slugs = [row[0] for row in slug_rows]
            in_list = liked_in_list_query(slugs, market_slug=None, limit=PAGE, offset=0)
            # Compiled before the clock starts: SQLAlchemy's statement cache spares the app this.
            fdw_sql, likes_sql, in_sql = (
                as_literal(fdw_query(user_id)),
                as_literal(likes_query(user_id)),
                as_literal(in_list),
            )
            fdw_raw, likes_raw, in_raw = (
                as_psycopg(fdw_query(user_id)),
                as_psycopg(likes_query(user_id)),
                as_psycopg(in_list),
            )
            # partial, not lambda: each step binds this round's user and queries.
            steps: list[tuple[str, str, Callable[[], Awaitable[Any]]]] = [
                ("db", "a", partial(_explain_ms, market, fdw_sql)),
                ("db", "c", partial(_explain_ms, monolith, fdw_sql)),
                ("db", "b", partial(_sum_explain, likes, market, likes_sql, in_sql)),
                ("sql", "a", partial(_statements, market, *around_query(fdw_raw))),
                ("sql", "c", partial(_statements, monolith, *around_query(fdw_raw))),
                ("sql", "b", partial(_plan_statements, likes, market, likes_raw, in_raw)),
                ("inproc", "a", partial(fdw_like, "market", user_id)),
                ("inproc", "c", partial(fdw_like, "monolith", user_id)),
                ("inproc", "b", partial(plan_like, user_id)),
                # The floor under every statement on this machine right now.
                ("rtt", "a", partial(_select_one, market)),
            ]
            steps += [
                ("http", key, partial(_http_get, http, url, cookies[user_id]))
                for key, url in http_urls.items()
            ]
            # Rotate so that no variant always runs first (or right after another).
            shift = index % len(steps)
            for layer, key, step in steps[shift:] + steps[:shift]:
                if layer == "db":
                    layers[layer][key].append(await step())
                else:
                    await timed(layer, key, step())
    finally:
        await http.aclose()
        await internal.aclose()
        for engine in engines.values():
            await engine.dispose()
        for connection in (market, monolith, likes):
            await connection.close()
    return layers


async def _select_one(connection: psycopg.AsyncConnection) -> None:
    await (await connection.execute("SELECT 1")).fetchall()


async def _http_get(client: httpx.AsyncClient, url: str, cookie: str) -> None:
    response = await client.get(url, headers={"Cookie": cookie})
    if response.status_code != 200:
        raise RuntimeError(f"GET {url}: {response.status_code} {response.text[:200]}")


async def _sum_explain(
    likes: psycopg.AsyncConnection, market: psycopg.AsyncConnection, likes_sql: str, in_sql: str
) -> float:
    return await _explain_ms(likes, likes_sql) + await _explain_ms(market, in_sql)


async def _plan_statements(
    likes: psycopg.AsyncConnection,
    market: psycopg.AsyncConnection,
    likes_sql: tuple[str, dict[str, Any]],
    in_sql: tuple[str, dict[str, Any]],
) -> None:
    await _statements(likes, PLAN_OPEN, likes_sql, PLAN_CLOSE)
    await _statements(market, PLAN_OPEN, in_sql, PLAN_CLOSE)


def print_layers(layers: Layers, server_ms: Mapping[str, Sequence[float]]) -> float:
    """Print the layers; returns (a)'s server p50 over the raw SQL of the same request."""

    def median(values: Sequence[float]) -> float:
        return statistics.median(values) if values else float("nan")

    def row(values: Mapping[str, Sequence[float]]) -> dict[str, float]:
        return {key: median(values.get(key, [])) for key in VARIANT_KEYS}

    db, sql, inproc = row(layers["db"]), row(layers["sql"]), row(layers["inproc"])
    server, client = row(server_ms), row(layers["http"])
    rows = [
        ("PostgreSQL: planning + execution", db),
        ("SQL statements of 1 request (raw)", sql),
        ("service fn in-process (ORM)", inproc),
        ("HTTP: server time (access log)", server),
        ("HTTP: client time", client),
        ("  statements around the query", {k: sql[k] - db[k] for k in VARIANT_KEYS}),
        ("  ORM + pool over raw SQL", {k: inproc[k] - sql[k] for k in VARIANT_KEYS}),
        ("  web framework (server - service)", {k: server[k] - inproc[k] for k in VARIANT_KEYS}),
        ("  uvicorn + client (client - server)", {k: client[k] - server[k] for k in VARIANT_KEYS}),
    ]
    count = len(layers["db"]["a"])
    print(f"\n--- where the time goes: median ms over {count} users, all layers interleaved")
    print(f"  one round trip (SELECT 1) right now: {median(layers['rtt']['a']):.2f} ms")
    likes_ms = median(server_ms.get("likes", []))
    print("  (b): PostgreSQL and SQL = the likes query + the IN-list query; from the service fn on")
    print(f"  it includes the HTTP call to likes (likes' server time: {likes_ms:.2f})")
    print(f"  {'layer':<38}{'(a)':>8}{'(b)':>8}{'(c)':>8}{'(a)-(c)':>9}")
    for label, values in rows:
        cells = "".join(f"{values[k]:>8.2f}" for k in VARIANT_KEYS)
        print(f"  {label:<38}{cells}{values['a'] - values['c']:>9.2f}")
    return server["a"] / sql["a"]

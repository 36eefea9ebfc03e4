"""orders served exactly as ``python -m ops.stack.serve orders`` serves it, plus timings around the
parts of every request: ``python -m bench.checkout_profile --port P`` (used by ``bench.checkout``'s
breakdown; nothing in ``apps/`` changes).

Per request it writes one ``BREAKDOWN {json}`` line to its log: the request's total time in the
ASGI app, the time of every SQL statement as the app sees it (round trip included: the time from
SQLAlchemy's before- to after-cursor-execute), commits, rollbacks, the pool's pre-ping, and the
SumUp SDK calls (a wait that runs while another does, SumUp asked while a statement runs, is
counted once in time). What is left is Python: Litestar, signature check, validation, the ORM,
the SDK's models, logging, and the event loop. Statements of the outbox relay (its own task) are not
attributed to any request; how long a relay pass overlapped the request, and the process's CPU
time during the request, are in the line too.
"""

from __future__ import annotations

import argparse
import contextvars
import json
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from apps.common import app_factory, direct, outbox
from apps.common.direct import DirectStatement
from apps.common.observability import configure_logging
from apps.orders import internal, payments, service, settlement
from ops.stack.serve import serve

logger = logging.getLogger("rose.bench.breakdown")
MARK = "BREAKDOWN "


@dataclass
class Section:
    """An open call of a wrapped function: what it has spent so far outside SQL and SumUp is
    its Python, less that of the wrapped functions it called."""

    name: str
    started: float
    children_python: float = 0.0


def _covered(intervals: list[tuple[float, float]], start: float, end: float) -> float:
    """Seconds of [start, end] inside at least one of ``intervals``: waits that overlap (SumUp
    asked while a statement runs) count once."""
    clipped = sorted((max(a, start), min(b, end)) for a, b in intervals if b > start and a < end)
    covered, reach = 0.0, start
    for a, b in clipped:
        if b > reach:
            covered += b - max(a, reach)
            reach = b
    return covered


@dataclass
class RequestTimings:
    method: str
    path: str
    statements: list[tuple[str, float]] = field(default_factory=list)
    waits: dict[str, float] = field(default_factory=dict)  # commit, rollback, ping, sumup
    counts: dict[str, int] = field(default_factory=dict)
    # When each statement or wait ran (perf_counter): the request's Python is what none covers.
    intervals: list[tuple[float, float]] = field(default_factory=list)
    open_sections: list[Section] = field(default_factory=list)
    python: dict[str, float] = field(default_factory=dict)  # own Python time per section
    top_python: float = 0.0  # Python inside the outermost sections

    def add_statement(self, kind: str, started: float, ended: float) -> None:
        self.statements.append((kind, (ended - started) * 1000))
        self.intervals.append((started, ended))

    def add_wait(self, name: str, started: float, ended: float) -> None:
        self.waits[name] = self.waits.get(name, 0.0) + (ended - started) * 1000
        self.counts[name] = self.counts.get(name, 0) + 1
        self.intervals.append((started, ended))

    def waiting_ms(self, start: float, end: float) -> float:
        return _covered(self.intervals, start, end) * 1000

    def overlapped_ms(self) -> float:
        """How much of the waits ran at the same time as others (counted once above)."""
        waited = sum(b - a for a, b in self.intervals)
        return (waited - _covered(self.intervals, -math.inf, math.inf)) * 1000

    def close(self, section: Section) -> None:
        ended = time.perf_counter()
        elapsed = (ended - section.started) * 1000
        python = elapsed - self.waiting_ms(section.started, ended)
        own = python - section.children_python
        self.python[section.name] = self.python.get(section.name, 0.0) + own
        if self.open_sections:
            self.open_sections[-1].children_python += python
        else:
            self.top_python += python


# Start and end (perf_counter) of every outbox relay pass: it runs in the same event loop, so a
# pass that overlaps a request takes turns with it.
relay_passes: list[tuple[float, float | None]] = []

current: contextvars.ContextVar[RequestTimings | None] = contextvars.ContextVar(
    "bench_request_timings", default=None
)


def statement_kind(sql: str) -> str:
    """A short label of what a statement is for."""
    text = " ".join(sql.split())
    upper = text.upper()
    if upper.startswith(("SAVEPOINT", "RELEASE SAVEPOINT", "ROLLBACK TO")):
        return "savepoint"
    if upper.startswith("SET LOCAL STATEMENT_TIMEOUT"):
        return "set statement_timeout"
    if "idempotency_keys" in text:
        return "idempotency key " + upper.split()[0].lower()
    if "page_payment_configs" in text:
        return "FDW page_payment_configs"
    if "orders.outbox" in text:
        return "outbox insert"
    for table in ("payment_attempts", "order_items", "orders"):
        if f"orders.{table}" in text:
            return f"{upper.split()[0].lower()} {table}"
    return upper.split()[0].lower() if upper else "?"


def instrument_engine(engine: AsyncEngine) -> None:
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "before_cursor_execute")
    def _before(conn: Any, cursor: Any, statement: str, *_args: Any) -> None:
        conn.info.setdefault("bench_started", []).append(time.perf_counter())

    @event.listens_for(sync_engine, "after_cursor_execute")
    def _after(conn: Any, cursor: Any, statement: str, *_args: Any) -> None:
        started = conn.info["bench_started"].pop()
        timings = current.get()
        if timings is not None:
            timings.add_statement(statement_kind(statement), started, time.perf_counter())

    dialect = sync_engine.dialect
    for name, label in (("do_commit", "commit"), ("do_rollback", "rollback"), ("do_ping", "ping")):
        setattr(dialect, name, _timed_sync(getattr(dialect, name), label))


def instrument_direct_statements() -> None:
    """Statements run directly on the driver (apps.common.direct) pass no engine event: their
    execution is timed as a statement the same way."""
    original = DirectStatement._execute

    async def timed(self: DirectStatement, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await original(self, *args, **kwargs)
        finally:
            timings = current.get()
            if timings is not None:
                timings.add_statement(statement_kind(self.sql), started, time.perf_counter())

    DirectStatement._execute = timed  # type: ignore[method-assign]

    # Statements sent together in one round trip (run_together, and the writes a commit sends
    # with its COMMIT): one part, named by its statements in order.
    original_send = direct._send_together

    async def send_together(
        driver: Any, bound: Any, cursors: Any, *, then_commit: bool = False
    ) -> None:
        started = time.perf_counter()
        try:
            await original_send(driver, bound, cursors, then_commit=then_commit)
        finally:
            timings = current.get()
            if timings is not None:
                names = [statement_kind(statement.sql) for statement, _ in bound]
                label = " + ".join([*names, *(["commit"] if then_commit else [])])
                timings.add_statement(f"[{label}]", started, time.perf_counter())

    direct._send_together = send_together


def _timed_sync(function: Callable[..., Any], label: str) -> Callable[..., Any]:
    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            timings = current.get()
            if timings is not None:
                timings.add_wait(label, started, time.perf_counter())

    return timed


def _timed_async(function: Callable[..., Any], label: str) -> Callable[..., Any]:
    async def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await function(*args, **kwargs)
        finally:
            timings = current.get()
            if timings is not None:
                timings.add_wait(label, started, time.perf_counter())

    return timed


def _section(function: Callable[..., Any], name: str) -> Callable[..., Any]:
    async def wrapped(*args: Any, **kwargs: Any) -> Any:
        timings = current.get()
        if timings is None:
            return await function(*args, **kwargs)
        section = Section(name, time.perf_counter())
        timings.open_sections.append(section)
        try:
            return await function(*args, **kwargs)
        finally:
            timings.open_sections.pop()
            timings.close(section)

    return wrapped


# Functions of orders whose own Python time is reported. Each is looked up through its module
# at call time (``service.create_order(...)``, or a module global), so replacing it here works.
SECTIONS = {
    internal: ["run_idempotent"],
    service: [
        "create_order",
        "reserve_order_slot",
        "place_order",
        "_new_attempt",
        "handle_webhook",
        "attempt_for_checkout",
        "refresh_attempt",
        "refresh_reported_attempt",
    ],
    settlement: ["merchant_account", "apply_checkout", "_enqueue_after_payment"],
}


def install() -> None:
    """Wrap what the orders app will use, before it is created."""
    original_create_engine = app_factory.create_engine

    def create_engine(url: str, **kwargs: Any) -> AsyncEngine:
        engine = original_create_engine(url, **kwargs)
        instrument_engine(engine)
        return engine

    app_factory.create_engine = create_engine
    relay = outbox.OutboxRelay
    original_deliver_due = relay.deliver_due

    async def deliver_due(self: outbox.OutboxRelay) -> int:
        index = len(relay_passes)
        relay_passes.append((time.perf_counter(), None))
        try:
            return await original_deliver_due(self)
        finally:
            relay_passes[index] = (relay_passes[index][0], time.perf_counter())

    relay.deliver_due = deliver_due  # type: ignore[method-assign]
    instrument_direct_statements()
    for module, names in SECTIONS.items():
        for name in names:
            setattr(module, name, _section(getattr(module, name), name))
    gateway = payments.SumUpGateway
    gateway.create_checkout = _timed_async(gateway.create_checkout, "sumup create")  # type: ignore[method-assign]
    gateway.get_checkout = _timed_async(gateway.get_checkout, "sumup get")  # type: ignore[method-assign]


def timing_middleware(app: Any) -> Any:
    """Outermost ASGI layer: the request's whole time in the app, then one BREAKDOWN line."""

    async def asgi(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in ("/healthz", "/readyz"):
            await app(scope, receive, send)
            return
        timings = RequestTimings(scope["method"], scope["path"])
        token = current.set(timings)
        started = time.perf_counter()
        cpu_started = time.thread_time()
        try:
            await app(scope, receive, send)
        finally:
            ended = time.perf_counter()
            total = (ended - started) * 1000
            # The process's CPU during the request: the request's own, and whatever else the
            # event loop ran meanwhile (the relay).
            cpu = (time.thread_time() - cpu_started) * 1000
            current.reset(token)
            record = {
                "method": timings.method,
                "path": timings.path,
                "total_ms": round(total, 3),
                "statements": [[kind, round(ms, 3)] for kind, ms in timings.statements],
                "waits": {name: round(ms, 3) for name, ms in timings.waits.items()},
                "counts": timings.counts,
                "cpu_ms": round(cpu, 3),
                "relay_overlap_ms": round(_relay_overlap(started, ended) * 1000, 3),
                # Python outside every wrapped function: uvicorn's ASGI handoff, middlewares,
                # the signature check, routing, msgspec, serialising, the session's lifecycle.
                "overlapped_ms": round(timings.overlapped_ms(), 3),
                "python": {
                    "framework": round(
                        total - timings.waiting_ms(started, ended) - timings.top_python, 3
                    ),
                    **{name: round(ms, 3) for name, ms in timings.python.items()},
                },
            }
            logger.info("%s%s", MARK, json.dumps(record, separators=(",", ":")))

    return asgi


def _relay_overlap(started: float, ended: float) -> float:
    overlap = 0.0
    for begin, end in relay_passes[-20:]:  # the recent passes are enough: requests are short
        overlap += max(0.0, min(ended, end if end is not None else ended) - max(started, begin))
    return overlap


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    configure_logging()
    install()
    from apps.orders.app import create_app

    app = create_app()
    serve(timing_middleware(app), args.host, args.port, lifespan="on")
    return 0


if __name__ == "__main__":
    sys.exit(main())

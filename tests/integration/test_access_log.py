"""The access log line in the text format (development and ``rose up``: rose.log and the
terminal). Audit s20 L2: a percent-encoded newline in a request's path was written raw, so a
request could write a line of its own ("06:30:00 orders | ERROR ..."), an ESC sequence reached
the terminal, and a NUL made ``grep`` call rose.log a binary file. Real HTTP (uvicorn) into the
market app, logged by a real handler in the text format."""

from __future__ import annotations

import asyncio
import io
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import uvicorn

from apps.common.observability import TextFormatter, TraceIdFilter, configure_logging
from apps.sumup_sandbox.app import create_app as create_sandbox
from tests.conftest import in_process_stack


@pytest.fixture
async def market_url(clean_db, credentials) -> AsyncIterator[str]:
    async with in_process_stack(clean_db, credentials, ["market"]) as stack:
        listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listening.bind(("127.0.0.1", 0))
        config = uvicorn.Config(stack.apps["market"], lifespan="off", log_level="warning")
        server = uvicorn.Server(config)
        serving = asyncio.create_task(server.serve(sockets=[listening]))
        while not server.started:
            assert not serving.done(), "uvicorn did not start"
            await asyncio.sleep(0.01)
        try:
            yield f"http://127.0.0.1:{listening.getsockname()[1]}"
        finally:
            server.should_exit = True
            await serving
            listening.close()


@pytest.fixture
def text_log() -> Iterator[io.StringIO]:
    """What the access logger writes, as configure_logging's text format writes it."""
    written = io.StringIO()
    handler = logging.StreamHandler(written)
    handler.addFilter(TraceIdFilter())
    handler.setFormatter(TextFormatter())
    logger = logging.getLogger("rose.market.access")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield written
    finally:
        logger.setLevel(level)
        logger.removeHandler(handler)


async def test_a_path_cannot_write_a_log_line_or_a_terminal_escape(market_url, text_log):
    forged = "/x%0A06:30:00%20orders%20%20|%20ERROR%20forged%20line%1b[31mred%0D%00%E2%80%AEend"
    async with httpx.AsyncClient(base_url=market_url) as client:
        answer = await client.get(forged, headers={"accept": "application/json"})
    assert answer.status_code in (400, 404, 422), answer.text
    lines = text_log.getvalue().splitlines()
    assert len(lines) == 1, lines
    [line] = lines
    assert line.startswith(
        "INFO    rose.market.access: GET "
        "/x%0A06:30:00%20orders%20%20|%20ERROR%20forged%20line%1B[31mred%0D%00%E2%80%AEend "
        f"{answer.status_code} "
    ), line
    assert line.isprintable()


async def test_a_plain_path_is_logged_as_it_reads(market_url, text_log):
    async with httpx.AsyncClient(base_url=market_url) as client:
        answer = await client.get(
            "/api/products/caf%C3%A9-au-lait", headers={"accept": "application/json"}
        )
    [line] = text_log.getvalue().splitlines()
    assert line.startswith(
        f"INFO    rose.market.access: GET /api/products/café-au-lait {answer.status_code} "
    ), line


@pytest.fixture
def process_log() -> Iterator[io.StringIO]:
    """What a process writes with configure_logging's text format (``rose up``, the sandbox):
    the root logger's handler, as that installs it; pytest's handlers put back after."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    written = io.StringIO()
    configure_logging("sumup-sandbox", json_lines=False, stream=written)
    try:
        yield written
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


@asynccontextmanager
async def served(app: Any) -> AsyncIterator[str]:
    listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listening.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning"))
    serving = asyncio.create_task(server.serve(sockets=[listening]))
    while not server.started:
        assert not serving.done(), "uvicorn did not start"
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{listening.getsockname()[1]}"
    finally:
        server.should_exit = True
        await serving
        listening.close()


async def test_a_value_a_request_chose_cannot_write_a_line_of_its_own(process_log):
    """The SumUp sandbox logs each request's path in its own words ("GET <path> 404"), written
    raw: a CR/LF in the path wrote a line that reads as an ERROR record of orders. The text
    format escapes what a message quotes, whichever logger writes it: one line per record."""
    forged = "/v0.1/checkouts/x%0D%0AERROR   rose.orders: forged%20line%20trace=-"
    async with served(create_sandbox()) as url, httpx.AsyncClient(base_url=url) as client:
        answer = await client.get(forged)
    assert answer.status_code in (401, 404), answer.text
    lines = process_log.getvalue().splitlines()
    assert not [line for line in lines if line.startswith("ERROR")], lines
    [line] = [line for line in lines if "/v0.1/checkouts/" in line]
    assert line.startswith(
        "INFO    sumup-sandbox: GET /v0.1/checkouts/x%0D%0AERROR   rose.orders: forged line "
    ), line
    assert line.isprintable(), line

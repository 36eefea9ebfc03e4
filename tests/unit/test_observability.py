"""Log lines of a service process: the trace id on every line, JSON lines in production."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from apps.common.observability import configure_logging, continued_trace

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"


@pytest.fixture
def root_logging() -> Iterator[None]:
    """configure_logging replaces the root logger's handlers: put pytest's back after."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def log_both() -> None:
    logger = logging.getLogger("rose.test")
    with continued_trace(TRACEPARENT, "test work"):
        logger.info("inside %s", "a trace")
    logger.info("outside")


@pytest.mark.usefixtures("root_logging")
def test_production_logs_are_json_lines_with_the_trace_id(monkeypatch):
    monkeypatch.setenv("ROSE_ENV", "prod")
    stream = io.StringIO()
    configure_logging("orders", stream=stream)
    log_both()
    inside, outside = (json.loads(line) for line in stream.getvalue().splitlines())
    assert inside["message"] == "inside a trace"
    assert inside["trace_id"] == TRACE_ID
    assert (inside["service"], inside["level"], inside["logger"]) == ("orders", "INFO", "rose.test")
    assert outside["trace_id"] == "-"


@pytest.mark.usefixtures("root_logging")
def test_development_logs_are_text_with_the_trace_id(monkeypatch):
    monkeypatch.setenv("ROSE_ENV", "dev")
    stream = io.StringIO()
    configure_logging("orders", stream=stream)
    log_both()
    assert stream.getvalue().splitlines() == [
        f"INFO    rose.test: inside a trace trace={TRACE_ID}",
        "INFO    rose.test: outside trace=-",
    ]

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


FORGED = "06:30:00 orders | ERROR forged line trace=-"


@pytest.mark.usefixtures("root_logging")
def test_a_text_log_line_cannot_be_split_by_what_it_quotes(monkeypatch):
    """The text format wrote a message as it was: a value a request chose (a path, a field, a
    remote's problem quoting one) with CR/LF in it wrote a line of its own that reads as
    another record, and an exception's message did in its traceback. Now every record is one
    line starting with its level: control characters (and line separators, text-direction
    overrides) in the message are percent-encoded as log_safe does, and an exception's or
    stack's text is indented under its record, so no line of it can pass for one."""
    monkeypatch.setenv("ROSE_ENV", "dev")
    stream = io.StringIO()
    configure_logging("orders", stream=stream)
    logger = logging.getLogger("rose.test")
    logger.warning("sign-in: %s failed: %s", "cart", f"x\r\n{FORGED}\x1b[31m\u2028\u202e!")
    try:
        raise ValueError(f"no such slug 'a\n{FORGED}\r{FORGED}'")
    except ValueError:
        logger.exception("could not read %s", "the form")
    logger.info("a plain café line, its spaces as they are")
    lines = stream.getvalue().splitlines()
    records = [line for line in lines if not line.startswith(" ")]
    assert [line.split(":")[0] for line in records] == [
        "WARNING rose.test",
        "ERROR   rose.test",
        "INFO    rose.test",
    ], lines
    assert records[0] == (
        "WARNING rose.test: sign-in: cart failed: x%0D%0A06:30:00 orders | ERROR forged line "
        "trace=-%1B[31m%E2%80%A8%E2%80%AE! trace=-"
    ), records[0]
    assert records[2] == "INFO    rose.test: a plain café line, its spaces as they are trace=-"
    assert all(line.isprintable() for line in lines), lines
    traceback = lines[lines.index(records[1]) + 1 : lines.index(records[2])]
    assert traceback[0].strip() == "Traceback (most recent call last):", traceback
    assert any(FORGED in line for line in traceback), traceback  # quoted, indented
    assert not any(line.startswith(FORGED) for line in lines), lines

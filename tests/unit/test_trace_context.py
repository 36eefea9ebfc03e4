"""With no span exporter, requests still carry the trace context (what log lines and onward
calls use), through the light middleware that stands in for OpenTelemetry's."""

from __future__ import annotations

import httpx
import pytest

from apps.common.observability import (
    configure_tracing,
    current_traceparent,
    opentelemetry_middleware,
    trace_id,
)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def recording_app(seen: list[tuple[str, str | None]]):
    async def app(scope, receive, send):
        seen.append((trace_id(), current_traceparent()))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    return app


@pytest.fixture
def no_exporter(monkeypatch):
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("ROSE_TRACE_FILE", raising=False)
    # The process's tracer provider, as every service installs it (kept if one exists).
    configure_tracing("unit", environ={})


async def _get(app, url: str, headers: dict[str, str] | None = None) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.get(url, headers=headers or {})).status_code == 204


async def test_a_callers_trace_is_continued_without_an_exporter(no_exporter):
    seen: list[tuple[str, str | None]] = []
    app = opentelemetry_middleware(recording_app(seen))
    await _get(app, "/x", {"traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"})
    await _get(app, f"/x?traceparent=00-{TRACE}-00f067aa0ba902b7-01")
    await _get(app, "/x")
    (first, onward), (from_query, _), (new, new_onward) = seen
    assert first == TRACE
    assert onward is not None
    assert TRACE in onward
    assert from_query == TRACE
    assert new not in ("-", TRACE)
    assert len(new) == 32
    assert new_onward is not None
    assert new in new_onward

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


OTHER = "0af7651916cd43dd8448eb211c80319c"


async def test_an_ambiguous_or_invalid_traceparent_is_ignored_and_a_new_trace_starts(
    no_exporter,
):
    """W3C Trace Context: a traceparent that cannot be parsed as one is ignored, and the
    request starts a new trace. One given twice (in the query, or as two header lines) has no
    one reading: the first of a repeated query parameter was continued, and the first header
    line."""
    seen: list[tuple[str, str | None]] = []
    app = opentelemetry_middleware(recording_app(seen))
    one, other = f"00-{TRACE}-00f067aa0ba902b7-01", f"00-{OTHER}-00f067aa0ba902b7-01"
    await _get(app, f"/x?traceparent={one}&traceparent={other}")
    await _get(app, f"/x?traceparent={one}&traceparent={one}")
    await _get(app, f"/x?traceparent={one}&traceparent=")
    await _get(app, "/x?traceparent=nonsense")
    await _get(app, f"/x?traceparent=00-{'0' * 32}-00f067aa0ba902b7-01")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        twice = await client.get("/x", headers=[("traceparent", one), ("traceparent", other)])
        assert twice.status_code == 204
    ids = [trace for trace, _ in seen]
    assert len(ids) == 6
    assert not {TRACE, OTHER, "0" * 32} & set(ids), ids
    assert all(len(new) == 32 for new in ids), ids
    assert len(set(ids)) == 6, ids  # each a trace of its own

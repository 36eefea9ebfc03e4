"""Logs, traces and metrics of one service process.

Traces: OpenTelemetry. Each process has one tracer provider named after its service; Litestar's
OpenTelemetry plugin makes a server span per request (from the caller's W3C ``traceparent``
header, or the query string's for callers that send no headers: SumUp's webhooks), and the
platform carries the context on: internal calls (:mod:`apps.common.internal_client`), outbox
messages (the row keeps the ``traceparent`` of the transaction that queued it) and SumUp calls
(headers; the webhook URL given to SumUp carries it too). Where spans go is chosen by the
environment:

- ``OTEL_EXPORTER_OTLP_ENDPOINT`` set: OTLP over HTTP, batched (production);
- ``ROSE_TRACE_FILE`` set: one JSON span per line appended to that file (tests, local runs);
- neither: no span is recorded (ids are still made and carried, so log lines have them).

Logs: every line carries the trace id (``trace=-`` outside a request or job); JSON lines when
``ROSE_ENV=prod``.

Metrics: Prometheus, on ``/metrics`` (Litestar's Prometheus plugin: requests by route and
status) plus the platform's own below. With several worker processes on one port (``--workers``)
prometheus_client's multiprocess mode is used (``PROMETHEUS_MULTIPROC_DIR``, set by
``ops.stack.serve``), so any worker's ``/metrics`` answers for all of them. Gauges that describe
the database (outbox backlog, pending orders, reconciliation lag) are computed when scraped,
never per request.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import unicodedata
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import IO, Any, cast
from urllib.parse import parse_qs

from litestar import Response, get
from litestar.datastructures import State
from litestar.plugins.opentelemetry import OpenTelemetryConfig, OpenTelemetryPlugin
from litestar.plugins.prometheus import PrometheusConfig, PrometheusController
from litestar.types import ASGIApp, Receive, Scope, Send
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from sqlalchemy import Executable
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

TRACE_FILE_ENV = "ROSE_TRACE_FILE"
OTLP_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
METRICS_PATH = "/metrics"
TRACEPARENT = "traceparent"
# Not measured, not traced: probes and the scrape itself.
UNOBSERVED_PATHS = ("/healthz", "/readyz", METRICS_PATH)
_QUERY_MARK = TRACEPARENT.encode() + b"="
_TRACEPARENT_FORMAT = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
TEXT_FORMAT = "%(levelname)-7s %(name)s: %(message)s trace=%(trace_id)s"

tracer = trace.get_tracer("rose")
_configured_lock = threading.Lock()
_configured: str | None = None

# -- metrics of the platform (request counts come from Litestar's Prometheus plugin) -----------
INTERNAL_CALL_SECONDS = Histogram(
    "rose_internal_call_seconds",
    "Latency of calls to other services' internal routes, by target service and call",
    ["target", "call"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
INTERNAL_CALL_ERRORS = Counter(
    "rose_internal_call_errors_total",
    "Internal calls that failed, by target service, call and HTTP status given to our caller",
    ["target", "call", "status"],
)
FDW_DEGRADED_READS = Counter(
    "rose_fdw_degraded_reads_total",
    "Reads through postgres_fdw that found their provider unavailable (answered degraded)",
    ["provider", "reason"],
)
OUTBOX_DELIVERIES = Counter(
    "rose_outbox_deliveries_total",
    "Outbox messages delivered (acknowledged), failed or dead (refused for good), by target "
    "service and outcome",
    ["target", "outcome"],
)


def scrape_gauge(name: str, documentation: str, labels: Sequence[str] = ()) -> Gauge:
    """A gauge set when ``/metrics`` is scraped (from the database); with several workers the
    value of the most recent scrape wins."""
    return Gauge(name, documentation, list(labels), multiprocess_mode="mostrecent")


ScrapeHook = Callable[[State], Awaitable[None]]


async def scrape_row(state: State, statement: Executable) -> Sequence[Any]:
    """The one row of a scrape hook's query, in a session of its own."""
    maker: async_sessionmaker[AsyncSession] = state.platform.sessionmaker
    async with maker() as session:
        return (await session.execute(statement)).one()


def metrics_registry() -> CollectorRegistry:
    if MULTIPROC_ENV in os.environ:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return REGISTRY


def metrics_controller(hooks: Sequence[ScrapeHook]) -> type[PrometheusController]:
    """Litestar's Prometheus controller, running the service's scrape hooks first."""

    class Metrics(PrometheusController):
        path = METRICS_PATH
        include_in_schema = False

        @get(include_in_schema=False)
        async def get(self, state: State) -> Response[bytes]:
            for hook in hooks:
                try:
                    await hook(state)
                except Exception:  # a scrape answers with what it has
                    logging.getLogger("rose.metrics").warning("scrape hook failed", exc_info=True)
            return Response(
                generate_latest(metrics_registry()), headers={"Content-Type": CONTENT_TYPE_LATEST}
            )

    return Metrics


def prometheus_config(service: str) -> PrometheusConfig:
    return PrometheusConfig(
        app_name=service,
        prefix="rose",
        group_path=True,
        exclude=[f"^{path}$" for path in UNOBSERVED_PATHS],
    )


# -- traces ------------------------------------------------------------------------------------
class JsonLinesSpanExporter(SpanExporter):
    """One JSON object per finished span, appended to a file (several processes may share it:
    each line is written with one ``write`` on a file opened for appending)."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(json.dumps(_span_record(span)) + "\n" for span in spans)
        with self._lock, open(self._path, "a", encoding="utf-8") as out:
            out.write(lines)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


def _span_record(span: ReadableSpan) -> dict[str, Any]:
    context = span.get_span_context()
    parent = span.parent
    resource = span.resource.attributes if span.resource else {}
    return {
        "service": resource.get("service.name"),
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": f"{context.trace_id:032x}" if context else None,
        "span_id": f"{context.span_id:016x}" if context else None,
        "parent_id": f"{parent.span_id:016x}" if parent else None,
        "attributes": dict(span.attributes or {}),
        "pid": os.getpid(),
    }


def configure_tracing(service: str, environ: Mapping[str, str] | None = None) -> None:
    """Install this process's tracer provider (once; later calls for another service in the
    same process, as tests make, keep the first)."""
    global _configured
    env = os.environ if environ is None else environ
    with _configured_lock:
        if _configured is not None:
            return
        exported = spans_exported(env)
        provider = TracerProvider(
            resource=Resource.create({"service.name": f"rose-{service}"}),
            # Nowhere to send spans: none is recorded (ids are still made and carried, so log
            # lines keep their trace id), which spares most of the tracing cost. Otherwise the
            # SDK's default, or OTEL_TRACES_SAMPLER (e.g. parentbased_traceidratio).
            sampler=None if exported else ALWAYS_OFF,
        )
        if env.get(OTLP_ENV):
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        if env.get(TRACE_FILE_ENV):
            provider.add_span_processor(
                SimpleSpanProcessor(JsonLinesSpanExporter(env[TRACE_FILE_ENV]))
            )
        trace.set_tracer_provider(provider)
        _configured = service


def spans_exported(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process sends its spans anywhere (OTLP or a trace file)."""
    env = os.environ if environ is None else environ
    return bool(env.get(OTLP_ENV) or env.get(TRACE_FILE_ENV))


def opentelemetry_middleware(app: ASGIApp) -> ASGIApp:
    """Litestar's OpenTelemetry middleware around the whole app (outside the edge, so the
    request's span is current in the access log line too). When no span is exported, a
    middleware that only carries the trace context (the caller's ``traceparent``, or a new
    trace) stands in for it: the log lines and the calls onward keep their trace id, and the
    request does not pay for spans nobody records (measured: 2 ms of orders' CPU per
    checkout, bench/README.md)."""
    if not spans_exported():
        return trace_context_from_query(trace_context_only(app))
    config = OpenTelemetryConfig(
        exclude=[f"^{path}$" for path in UNOBSERVED_PATHS],
        exclude_spans=["receive", "send"],
        scope_span_details_extractor=_span_details,
    )
    return trace_context_from_query(OpenTelemetryPlugin(config).middleware(app=app))


def trace_context_only(app: ASGIApp) -> ASGIApp:
    """Each HTTP request runs in a (non-recording) server span continuing the caller's
    ``traceparent`` header, or a new trace."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNOBSERVED_PATHS:
            await app(scope, receive, send)
            return
        given = next((value for name, value in scope["headers"] if name == b"traceparent"), None)
        token = otel_context.attach(_carried(given.decode("latin-1") if given else None))
        try:
            await app(scope, receive, send)
        finally:
            otel_context.detach(token)

    return middleware


_ids = RandomIdGenerator()


def _carried(traceparent: str | None) -> otel_context.Context:
    """The context of a request's span when no span is recorded: a non-recording span of the
    caller's trace (a new one without it), made directly. What the tracer would make with its
    ALWAYS_OFF sampler, the same ids and flags, at a fraction of the cost of its sampler and
    span machinery on every request (bench.edge_overhead)."""
    parent = (
        propagate.extract({TRACEPARENT: traceparent}) if traceparent else otel_context.Context()
    )
    caller = trace.get_current_span(parent).get_span_context()
    trace_id = caller.trace_id if caller.is_valid else _ids.generate_trace_id()
    span = trace.NonRecordingSpan(
        trace.SpanContext(
            trace_id,
            _ids.generate_span_id(),
            is_remote=False,
            trace_flags=trace.TraceFlags(trace.TraceFlags.DEFAULT),
            trace_state=caller.trace_state if caller.is_valid else None,
        )
    )
    return trace.set_span_in_context(span, parent)


def _span_details(scope: Scope) -> tuple[str, dict[str, Any]]:
    method = scope.get("method", "")
    return f"{method} {scope.get('path', '')}".strip(), {}


def current_traceparent() -> str | None:
    """The W3C ``traceparent`` of the current span (None outside any)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get(TRACEPARENT)


def inject_trace(headers: dict[str, str]) -> None:
    propagate.inject(headers)


def with_trace_context(url: str) -> str:
    """``url`` with the current ``traceparent`` as a query parameter: for callers that call a
    URL as given and send no trace headers (SumUp's webhooks); see
    :func:`trace_context_from_query`."""
    traceparent = current_traceparent()
    if traceparent is None:
        return url
    return f"{url}{'&' if '?' in url else '?'}{TRACEPARENT}={traceparent}"


def trace_context_from_query(app: ASGIApp) -> ASGIApp:
    """A request without a ``traceparent`` header but with a well-formed one in its query
    string (a URL made by :func:`with_trace_context`) continues that trace.

    Trace context never fails a request (W3C Trace Context): a ``traceparent`` that is not
    one, or that is ambiguous (the query parameter, or the header, given more than once: no
    one reading), is ignored, and the request starts a new trace."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = scope["headers"]
            given = [value for name, value in headers if name == b"traceparent"]
            if len(given) > 1:
                headers = [(name, value) for name, value in headers if name != b"traceparent"]
                scope = cast(Scope, {**scope, "headers": headers})
            elif not given and _QUERY_MARK in scope.get("query_string", b""):
                values = parse_qs(
                    scope["query_string"].decode("latin-1"), keep_blank_values=True
                ).get(TRACEPARENT, [])
                if len(values) == 1 and _TRACEPARENT_FORMAT.fullmatch(values[0]):
                    headers = [*headers, (b"traceparent", values[0].encode())]
                    scope = cast(Scope, {**scope, "headers": headers})
        await app(scope, receive, send)

    return middleware


@contextmanager
def continued_trace(
    traceparent: str | None,
    name: str,
    *,
    kind: trace.SpanKind = trace.SpanKind.INTERNAL,
    **attributes: Any,
) -> Iterator[None]:
    """A span continuing the trace a ``traceparent`` names (a new trace when there is none)."""
    parent = (
        propagate.extract({TRACEPARENT: traceparent}) if traceparent else otel_context.Context()
    )
    with tracer.start_as_current_span(name, context=parent, kind=kind, attributes=attributes):
        yield


def trace_id() -> str:
    context = trace.get_current_span().get_span_context()
    return f"{context.trace_id:032x}" if context.is_valid else "-"


# -- logs --------------------------------------------------------------------------------------
# What a request sends that a log line must not write as it is: control characters (a newline
# starts a line of the sender's choosing, ESC drives the terminal, NUL makes the file
# "binary"), invisible format characters (text-direction overrides), line and paragraph
# separators, and the space that separates the access line's fields.
_UNSAFE_IN_A_LOG_LINE = {"Cc", "Cf", "Cs", "Zl", "Zp"}


def _percent_encoded(char: str) -> str:
    return "".join(f"%{byte:02X}" for byte in char.encode("utf-8", "surrogatepass"))


def log_safe(text: str) -> str:
    """``text`` (a request's path, say) for one field of one log line: each character that
    could break the line or the terminal percent-encoded as UTF-8, as in a URL (``%0A``,
    ``%1B``, ``%E2%80%AE``), and the space that separates the access line's fields; the rest as
    it reads. (The text format escapes every message's such characters but the space itself:
    :class:`TextFormatter`.)"""
    if text.isprintable() and " " not in text:
        return text
    return "".join(
        _percent_encoded(char)
        if char == " " or unicodedata.category(char) in _UNSAFE_IN_A_LOG_LINE
        else char
        for char in text
    )


def one_line(text: str) -> str:
    """``text`` as one line of a log: what :func:`log_safe` encodes, spaces apart."""
    if text.isprintable():
        return text
    return "".join(
        _percent_encoded(char) if unicodedata.category(char) in _UNSAFE_IN_A_LOG_LINE else char
        for char in text
    )


class TextFormatter(logging.Formatter):
    """The text format (development, ``rose up``, the SumUp sandbox): one record, one line
    that starts with its level. A message quotes what requests chose (a path, a form field,
    another service's problem naming one, an exception's message), and a CR/LF in it wrote a
    line that read as a record of its own; so each message is made :func:`one_line` here,
    once for every logger (ours, Litestar's, uvicorn's), as the JSON lines escape theirs. An
    exception's or stack's text, many lines by nature, is written indented under its record,
    each line made one line too, so none of it starts a line as a record does."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        record.message = one_line(record.getMessage())
        text = self.formatMessage(record)
        if record.exc_info:
            # Not cached on the record (record.exc_text): another handler formats its own.
            text += _indented(self.formatException(record.exc_info))
        elif record.exc_text:
            text += _indented(record.exc_text)
        if record.stack_info:
            text += _indented(self.formatStack(record.stack_info))
        return text


def _indented(block: str) -> str:
    return "".join(f"\n    {one_line(line)}" for line in block.splitlines())


class TraceIdFilter(logging.Filter):
    """Puts the current trace id on every record (``trace_id``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.trace_id = trace_id()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line (production)."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self._service,
            "logger": record.name,
            "message": record.getMessage(),
            "trace_id": getattr(record, "trace_id", "-"),
            "pid": record.process,
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(
    service: str = "rose",
    *,
    json_lines: bool | None = None,
    level: int = logging.INFO,
    stream: IO[str] = sys.stdout,
) -> None:
    """Our log format for a service process: the trace id on every line; JSON lines in
    production (``ROSE_ENV=prod``, the default) unless ``json_lines`` says otherwise."""
    if json_lines is None:
        json_lines = os.environ.get("ROSE_ENV", "prod").strip() in ("", "prod")
    handler = logging.StreamHandler(stream)
    handler.addFilter(TraceIdFilter())
    handler.setFormatter(JsonFormatter(service) if json_lines else TextFormatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # Our access log (rose.<svc>.access) replaces uvicorn's.
    logging.getLogger("uvicorn.access").disabled = True
    logging.getLogger("httpx").setLevel(logging.WARNING)

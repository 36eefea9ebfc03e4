"""Where the time of create-order and of the webhook goes (``bench.checkout``'s breakdown).

A second orders process, ``python -m bench.checkout_profile`` (orders as ``ops.stack.serve`` runs
it, plus timings around its parts), serves a few sequential checkouts; its per-request lines are
summed up here, part by part, next to the parts of the baselines.
"""

from __future__ import annotations

import statistics
import sys
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.checkout_stack import Stack, TimingSink
from ops.stack.pgserver import free_port
from ops.stack.processes import HOST, ProcessGroup

REPO_ROOT = Path(__file__).resolve().parent.parent
PROFILED = "orders-profiled"
KINDS = {
    "create": ("POST", "/internal/actions/create-order"),
    "webhook": ("POST", "/checkout/webhook/"),
}


@contextmanager
def profiled_orders(stack: Stack, sink: TimingSink) -> Iterator[str]:
    """A second orders process on the same database and sandbox; yields its URL."""
    port = free_port()
    # bench/ is not an installed package: let `python -m bench.checkout_profile` find it.
    group = ProcessGroup(sink, {**stack.group.environment, "PYTHONPATH": str(REPO_ROOT)})
    command = [sys.executable, "-m", "bench.checkout_profile", "--host", HOST, "--port", str(port)]
    try:
        group.start(PROFILED, port, command)
        if group.wait_ready([PROFILED], timeout=60):
            for line in sink.tails[PROFILED][-15:]:
                print(f"  {PROFILED} | {line}", file=sys.stderr)
            raise RuntimeError(f"{PROFILED} did not become ready")
        yield f"http://{HOST}:{port}"
    finally:
        group.stop()


def _kind(record: dict[str, Any]) -> str | None:
    for kind, (method, prefix) in KINDS.items():
        if record["method"] == method and record["path"].startswith(prefix):
            return kind
    return None


def _parts(record: dict[str, Any]) -> tuple[dict[str, float], dict[str, int]]:
    parts: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for label, elapsed in record["statements"]:
        parts[f"SQL {label}"] += elapsed
        counts[f"SQL {label}"] += 1
    for name, elapsed in record["waits"].items():
        parts[name] += elapsed
        counts[name] += record["counts"].get(name, 1)
    for name, elapsed in record["python"].items():
        parts[f"Python in {name}"] += elapsed
    return parts, counts


def print_breakdown(
    records: list[dict[str, Any]],
    baseline_parts: dict[str, dict[str, list[float]]],
    client_p50: dict[str, float],
    server_p50: dict[str, float],
) -> None:
    """Per kind: the parts of the profiled requests (count per request, median and mean ms),
    the statements' sum, the Python left over, then the baseline's parts."""
    by_kind: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        kind = _kind(record)
        if kind is not None:
            by_kind[kind].append(record)
    for kind in KINDS:
        requests = by_kind.get(kind, [])
        if not requests:
            print(f"\nno profiled {kind} requests")
            continue
        values: dict[str, list[float]] = defaultdict(list)
        counts: dict[str, list[int]] = defaultdict(list)
        for record in requests:
            parts, part_counts = _parts(record)
            labels = set(parts)
            for label in labels:
                values[label].append(parts[label])
                if label in part_counts:  # Python has no count
                    counts[label].append(part_counts[label])
            sql = sum(v for label, v in parts.items() if label.startswith("SQL "))
            values["= SQL statements, all"].append(sql)
            counts["= SQL statements, all"].append(len(record["statements"]))
            python = sum(v for label, v in parts.items() if label.startswith("Python "))
            values["= Python, all"].append(python)
            values["= total in the app"].append(record["total_ms"])
            values["~ process CPU during the request"].append(record["cpu_ms"])
            values["~ outbox relay pass overlapping it"].append(record["relay_overlap_ms"])
            # SumUp asked while a statement runs: both parts above, the overlap once in time.
            values["~ waits that ran during others"].append(record.get("overlapped_ms", 0.0))
        title = "create-order" if kind == "create" else "webhook"
        print()
        print(
            f"{title}: {len(requests)} profiled requests (sequential); ms inside the app "
            "(instrumented process: a little slower than the measured one)"
        )
        print(f"{'part':<46}{'n/req':>7}{'p50':>9}{'mean':>9}")
        ordered = sorted(
            (label for label in values if not label.startswith(("=", "~"))),
            key=lambda label: -statistics.fmean(values[label]),
        )
        summary = sorted(label for label in values if label.startswith(("=", "~")))
        for label in [*ordered, *summary]:
            per_request = counts.get(label)
            count = f"{statistics.median(per_request):.0f}" if per_request else ""
            print(
                f"{label:<46}{count:>7}{statistics.median(values[label]):>9.2f}"
                f"{statistics.fmean(values[label]):>9.2f}"
            )
        if kind in client_p50 and kind in server_p50:
            print(
                f"{'outside the app (client, HTTP, uvicorn), p50':<46}{'':>7}"
                f"{client_p50[kind] - server_p50[kind]:>9.2f}   (measured run: client p50 "
                f"{client_p50[kind]:.2f} - server p50 {server_p50[kind]:.2f})"
            )
        base = baseline_parts.get(kind, {})
        if base:
            print(
                f"baseline {title}, same machine, measured run ({len(next(iter(base.values())))} x)"
            )
            for label, durations in base.items():
                print(
                    f"  {label:<44}{1:>7}{statistics.median(durations):>9.2f}"
                    f"{statistics.fmean(durations):>9.2f}"
                )
            totals = [sum(parts) for parts in zip(*base.values(), strict=True)]
            print(
                f"  {'= total':<44}{len(base) - 1:>7}{statistics.median(totals):>9.2f}"
                f"{statistics.fmean(totals):>9.2f}   (n/req: SQL statements + commit)"
            )

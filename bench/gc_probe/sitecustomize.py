"""What the cyclic garbage collector costs each process of a benchmark (bench/README.md, #14
seventh pass). Not imported by anything: Python loads it at start-up when this folder is on
``PYTHONPATH``, in every process the benchmark starts, for instance

    PYTHONPATH=bench/gc_probe python -m bench.checkout --checkouts 100 --clients 16 \\
        --concurrent 600 --breakdown-checkouts 0 --history 5000

Each process sums its collections' count and thread CPU time per generation, from
``GC_PROBE_AFTER`` seconds after it started (default 8: imports and start-up left out), and
rewrites ``$GC_PROBE_DIR/gc-<pid>.txt`` (default the system's temp folder) every 2 s with those
figures, its CPU time over the same span, and its collector settings."""

from __future__ import annotations

import gc
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

_AFTER = float(os.environ.get("GC_PROBE_AFTER", "8"))
_OUT = Path(os.environ.get("GC_PROBE_DIR", tempfile.gettempdir())) / f"gc-{os.getpid()}.txt"

_started: dict[int, float] = {}
# generation -> [collections, CPU seconds]
_totals: dict[int, list[float]] = {0: [0, 0.0], 1: [0, 0.0], 2: [0, 0.0]}
_baseline: dict[int, tuple[float, float]] = {}
_cpu_baseline = 0.0


def _on_collection(phase: str, info: dict[str, Any]) -> None:
    generation = info["generation"]
    if phase == "start":
        _started[generation] = time.thread_time()
        return
    _totals[generation][0] += 1
    _totals[generation][1] += time.thread_time() - _started.get(generation, time.thread_time())


def _write() -> None:
    lines = [" ".join(sys.argv[:3])]
    for generation, (count, seconds) in _totals.items():
        base_count, base_seconds = _baseline.get(generation, (0, 0.0))
        lines.append(
            f"gen{generation}: {int(count - base_count)} collections, "
            f"{(seconds - base_seconds) * 1000:.1f} ms CPU"
        )
    lines.append(
        f"process CPU: {(time.process_time() - _cpu_baseline) * 1000:.0f} ms; "
        f"threshold {gc.get_threshold()}, frozen objects {gc.get_freeze_count()}"
    )
    _OUT.write_text("\n".join(lines) + "\n")


def _report() -> None:
    global _cpu_baseline
    time.sleep(_AFTER)
    for generation, (count, seconds) in _totals.items():
        _baseline[generation] = (count, seconds)
    _cpu_baseline = time.process_time()
    while True:
        time.sleep(2)
        _write()


gc.callbacks.append(_on_collection)
threading.Thread(target=_report, name="gc-probe", daemon=True).start()

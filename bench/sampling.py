"""A sampling profile of a running service process with py-spy: where its CPU goes, by layer
(our code, SQLAlchemy, psycopg, Litestar, uvicorn, httpx, the SumUp SDK, ...) and by function.

py-spy samples the process from outside (no change to the code under test); idle samples
(the event loop waiting) are left out, so the samples are the process's CPU time.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

RATE = 250  # samples per second

# The first matching layer names a frame; the order matters (apps before site-packages).
LAYERS: tuple[tuple[str, str], ...] = (
    ("our code (apps/)", r"^apps/"),
    ("SQLAlchemy", r"^sqlalchemy/"),
    ("psycopg", r"^psycopg"),
    ("Litestar", r"^litestar/"),
    ("uvicorn / httptools", r"^uvicorn/|^httptools/"),
    ("httpx / httpcore / anyio / h11", r"^(httpx|httpcore|anyio|h11)/"),
    ("SumUp SDK", r"^sumup/"),
    ("msgspec / json", r"^(msgspec|json)/"),
    ("logging", r"^logging/"),
    ("asyncio / selectors / ssl / socket", r"^asyncio/|^(selectors|ssl|socket)\.py"),
    ("greenlet (SQLAlchemy's async bridge)", r"^greenlet/"),
)
FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def py_spy() -> str | None:
    found = shutil.which("py-spy") or shutil.which("py-spy", path=os.path.dirname(sys.executable))
    return found


@dataclass
class Profile:
    samples: int = 0
    rate: int = RATE
    by_layer: Counter[str] = field(default_factory=Counter)
    by_function: Counter[str] = field(default_factory=Counter)  # self samples
    inclusive: Counter[str] = field(default_factory=Counter)  # our functions, inclusive

    def ms(self, samples: int, per: int) -> float:
        return samples * 1000 / self.rate / max(per, 1)


def layer_of(path: str) -> str:
    for name, pattern in LAYERS:
        if re.search(pattern, path):
            return name
    return "other"


def short(function: str, path: str) -> str:
    # py-spy names files relative to their sys.path entry: "apps/orders/service.py".
    return f"{function} ({path})"


def parse(raw: Path, rate: int = RATE) -> Profile:
    """py-spy's raw output: one line per distinct stack, frames root first, then a count."""
    profile = Profile(rate=rate)
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = []
        for frame in stack.split(";"):
            matched = FRAME.match(frame)
            if matched:
                frames.append((matched["function"], matched["file"]))
        if not frames:
            continue
        profile.samples += count
        function, path = frames[-1]
        profile.by_layer[layer_of(path)] += count
        profile.by_function[short(function, path)] += count
        ours = {short(f, p) for f, p in frames if p.startswith("apps/")}
        for name in ours:
            profile.inclusive[name] += count
    return profile


@contextmanager
def sampled(pid: int, output: Path, rate: int = RATE) -> Iterator[Path | None]:
    """Sample ``pid`` while the block runs; yields the raw output's path (None without py-spy
    or when the system refuses to let it attach)."""
    binary = py_spy()
    if binary is None:
        print("py-spy is not installed: no profile (pip install py-spy)", file=sys.stderr)
        yield None
        return
    recorder = subprocess.Popen(
        [
            binary,
            "record",
            "--pid",
            str(pid),
            "--rate",
            str(rate),
            "--format",
            "raw",
            "--output",
            str(output),
            "--nonblocking",
            # uvicorn's workers are children of the process named
            "--subprocesses",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.5)  # attached before the measured work starts
    try:
        yield output
    finally:
        recorder.send_signal(signal.SIGINT)
        try:
            _, errors = recorder.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            recorder.kill()
            errors = "py-spy did not stop"
        if not output.exists():
            print(f"py-spy wrote no profile: {errors.strip()[-300:]}", file=sys.stderr)


def report(profile: Profile, per: int, unit: str, top: int = 25) -> list[str]:
    lines = [
        f"{profile.samples} samples at {profile.rate}/s = "
        f"{profile.ms(profile.samples, per):.2f} ms of CPU per {unit} ({per} {unit}s)",
        "",
        f"  {'layer (where the CPU was, innermost frame)':<46}{'ms/' + unit:>12}{'share':>8}",
    ]
    for name, count in profile.by_layer.most_common():
        share = 100 * count / max(profile.samples, 1)
        lines.append(f"  {name:<46}{profile.ms(count, per):>12.2f}{share:>7.1f}%")
    lines += ["", f"  our functions, inclusive (top {top})"]
    for name, count in profile.inclusive.most_common(top):
        lines.append(f"  {profile.ms(count, per):>8.2f}  {name}")
    lines += ["", f"  functions by their own time (top {top})"]
    for name, count in profile.by_function.most_common(top):
        lines.append(f"  {profile.ms(count, per):>8.2f}  {name}")
    return lines

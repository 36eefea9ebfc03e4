"""Workers that start slowly are waited for, not killed (probe money, `rose up --workers 2`).

uvicorn's supervisor pings each worker and kills one that does not answer within
``timeout_worker_healthcheck`` (5 s by default). A spawned worker answers only once it has
imported the service's main module; with a whole stack's workers starting at once on two
cores that took longer, and every worker was killed and started again ("Child process ...
died") in a loop for as long as the machine stayed busy."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow

PROGRAM = Path(__file__).with_name("slow_worker_main.py")


def test_workers_slower_to_start_than_uvicorns_default_ping_are_not_killed(tmp_path) -> None:
    listening = socket.create_server(("127.0.0.1", 0))
    port = listening.getsockname()[1]
    output = tmp_path / "serve.out"
    with output.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, str(PROGRAM), str(listening.fileno())],
            cwd=PROGRAM.parent,
            env={**os.environ, "SLOW_WORKER_SECONDS": "7"},
            pass_fds=[listening.fileno()],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    listening.close()
    try:
        answered: set[int] = set()
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and len(answered) < 2:
            try:
                answered.add(httpx.get(f"http://127.0.0.1:{port}/", timeout=2).json()["pid"])
            except httpx.HTTPError:
                time.sleep(0.5)
        said = output.read_text()
        assert "died" not in said, said
        assert answered, said
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_stop_during_a_slow_worker_start_leaves_no_worker_behind(tmp_path) -> None:
    """Review (the 60 s ping): a supervisor pinging a worker still importing handles SIGTERM
    only once the ping ends; `rose up`'s stop killed the supervisor alone after its wait, and
    the workers it had started went on serving the port. The stop kills the process's whole
    group (a supervisor's workers are in it) when it has to kill."""
    from ops.stack.processes import LogSink, ProcessGroup

    group = ProcessGroup(
        LogSink(None, echo=None), {"SLOW_WORKER_SECONDS": "30"}, cwd=PROGRAM.parent
    )
    listening = socket.create_server(("127.0.0.1", 0))
    port = listening.getsockname()[1]
    listening.close()
    entry = group.start("slow", port, [sys.executable, str(PROGRAM), "--bind", str(port)])
    assert entry.process is not None
    pgid = entry.process.pid
    time.sleep(3)  # its workers are importing: the supervisor is in its first ping
    group.stop(timeout=2)
    assert entry.process.poll() is not None
    deadline = time.monotonic() + 10
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _group_alive(pgid), "a worker of the stopped supervisor is still running"

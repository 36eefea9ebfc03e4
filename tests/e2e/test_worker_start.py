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

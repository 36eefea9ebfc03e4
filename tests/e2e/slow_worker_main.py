"""A program for test_worker_start: ops.stack.serve's ``serve`` with two workers on an
inherited socket (as ``rose up --workers 2`` runs a service), whose workers take
``SLOW_WORKER_SECONDS`` to import their main module, as every worker of a busy machine does
when a whole stack's workers start at once: the spawned child imports the parent's main module
before uvicorn's health-check thread runs. Usage: python slow_worker_main.py FD, or
--bind PORT."""

from __future__ import annotations

import os
import sys
import time

if __name__ == "__mp_main__":  # a spawned worker importing this program
    time.sleep(float(os.environ["SLOW_WORKER_SECONDS"]))

from litestar import Litestar, get


@get("/")
async def answer() -> dict[str, int]:
    return {"pid": os.getpid()}


def app_factory() -> Litestar:
    return Litestar([answer])


if __name__ == "__main__":
    import logging

    # The supervisor's own lines ("Child process [...] died") are what the test reads.
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    from ops.stack.serve import serve

    if sys.argv[1] == "--bind":  # a port to bind, as a service started without --fd
        serve("slow_worker_main:app_factory", "127.0.0.1", int(sys.argv[2]), workers=2)
    else:
        serve("slow_worker_main:app_factory", "127.0.0.1", 0, workers=2, fd=int(sys.argv[1]))

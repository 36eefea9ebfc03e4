"""Run one service with uvicorn: ``python -m ops.stack.serve <service> [--host H] [--port P]
[--workers N]``.

Used by ``rose up`` for every service and by the container entrypoint. Settings come from the
environment (see :mod:`apps.common.settings`).

``--workers N`` (default: ``WEB_CONCURRENCY``, else 1) runs N processes of the service on one
port with uvicorn's own worker supervisor: one listening socket shared by the workers, a worker
that dies is replaced, SIGTERM stops them all gracefully. Each worker builds its app from the
environment (:func:`worker_app`). With more than one worker, Prometheus metrics use
prometheus_client's multiprocess mode (a fresh ``PROMETHEUS_MULTIPROC_DIR`` per run), so any
worker's ``/metrics`` answers for all of them.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import logging
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE, LifespanType
from uvicorn.supervisors import Multiprocess

from apps.common.observability import MULTIPROC_ENV, configure_logging
from apps.common.settings import ConfigError, Settings
from apps.registry import CONTRACTS, service_spec, settings_for

# The service a worker process builds (set by ``main`` for uvicorn's workers).
SERVICE_ENV = "ROSE_SERVICE"
WORKERS_ENV = "WEB_CONCURRENCY"
# How long uvicorn's supervisor waits for a worker to answer its ping before it kills it and
# starts another (uvicorn's default: 5 s). A spawned worker answers only once it has imported
# the service; a whole stack's workers starting at once on two cores took longer, and were
# killed and started again in a loop while the machine stayed busy. A worker that hangs for
# good is replaced this much later.
WORKER_PING_SECONDS = 60


def serve(
    app: Callable[..., Any] | str,
    host: str,
    port: int,
    lifespan: LifespanType = "auto",
    *,
    workers: int = 1,
    fd: int | None = None,
) -> None:
    """Serve one app as every service process is served: our logging and access log (not
    uvicorn's), a graceful shutdown, the client address from the proxy's headers. With
    ``workers`` > 1, ``app`` is the import string of an app factory. With ``fd``, the
    listening socket is that inherited descriptor (``rose up`` keeps every service's port
    reserved from its check on, no connection's ephemeral port, and hands each start a
    listening socket on it); without, uvicorn binds ``host``:``port`` after the app's start-up."""
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_config": None,
        "access_log": False,
        "timeout_graceful_shutdown": 10,
        "proxy_headers": True,
        "lifespan": lifespan,
        "workers": workers if workers > 1 else None,
        "factory": workers > 1,
        "timeout_worker_healthcheck": WORKER_PING_SECONDS,
    }
    if fd is None:
        uvicorn.run(app, **options)
        return
    # A TCP socket of its own family (uvicorn's own ``fd`` option takes every descriptor for a
    # Unix socket, which leaves a TCP connection without TCP_NODELAY).
    sock = socket.socket(fileno=fd)
    config = uvicorn.Config(app, **options)
    bound_host, bound_port = sock.getsockname()[:2]
    logging.getLogger("uvicorn.error").info(
        "Uvicorn running on http://%s:%d (Press CTRL+C to quit)", bound_host, bound_port
    )
    # As uvicorn.run ends: Ctrl-C is a clean stop, a start-up that failed exit code 3.
    if workers > 1:
        sock.set_inheritable(True)
        with contextlib.suppress(KeyboardInterrupt):
            Multiprocess(config, sockets=[sock]).run()
        return
    config.load_app()
    server = uvicorn.Server(config)
    with contextlib.suppress(KeyboardInterrupt):
        server.run(sockets=[sock])
    if not server.started:
        sys.exit(STARTUP_FAILURE)


def settle_heap() -> None:
    """Once the app is built: what start-up made (modules, the app, its routes, schemas and
    table metadata) lives as long as the process, so it is moved out of the cyclic collector's
    sight (``gc.freeze``) and a full collection scans only what requests left behind; and the
    young generation is collected every 10,000 net allocations instead of 700, as a request
    makes thousands of short-lived objects that are mostly gone by then. Reference counting
    still frees everything at once; this only makes the cycle collector run less, and on less."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


def build_app(name: str, settings: Settings | None = None) -> Any:
    """The service's app (settings from the environment unless given), its heap settled."""
    spec = service_spec(name)
    module = importlib.import_module(spec.app_module)
    app = module.create_app(settings or settings_for(CONTRACTS[spec.name]))
    settle_heap()
    return app


def worker_app() -> Any:
    """The app factory each of uvicorn's workers calls (a process of its own)."""
    name = os.environ[SERVICE_ENV]
    configure_logging(name)
    return build_app(name)


def default_workers() -> int:
    value = os.environ.get(WORKERS_ENV, "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("service")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument(
        "--fd", type=int, default=None, help="an inherited listening socket (rose up's)"
    )
    args = parser.parse_args(argv)
    try:
        spec = service_spec(args.service)
    except ValueError as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        return 2
    configure_logging(spec.name)
    workers = args.workers or default_workers()
    try:
        settings = settings_for(CONTRACTS[spec.name])
    except ConfigError as exc:
        print(f"cannot start {spec.name}: {exc}", file=sys.stderr)
        return 2
    port = args.port or spec.dev_port
    if workers == 1:
        serve(build_app(spec.name, settings), args.host, port, fd=args.fd)
        return 0
    os.environ[SERVICE_ENV] = spec.name
    metrics_dir = tempfile.mkdtemp(prefix=f"rose-metrics-{spec.name}-")
    os.environ[MULTIPROC_ENV] = metrics_dir
    try:
        serve("ops.stack.serve:worker_app", args.host, port, workers=workers, fd=args.fd)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

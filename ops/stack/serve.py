"""Run one service with uvicorn: ``python -m ops.stack.serve <service> [--host H] [--port P]``.

Used by ``rose up`` for every service process and by the container entrypoint. Settings come
from the environment (see :mod:`apps.common.settings`).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable
from typing import Any

import uvicorn
from uvicorn.config import LifespanType

from apps.common.settings import ConfigError
from apps.registry import CONTRACTS, service_spec, settings_for

LOG_FORMAT = "%(levelname)-7s %(name)s: %(message)s"


def configure_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stdout, force=True)
    # Our access log (rose.<svc>.access) replaces uvicorn's.
    logging.getLogger("uvicorn.access").disabled = True
    logging.getLogger("httpx").setLevel(logging.WARNING)


def serve(app: Callable[..., Any], host: str, port: int, lifespan: LifespanType = "auto") -> None:
    """Serve one app as every service process is served: our logging and access log (not
    uvicorn's), a graceful shutdown, the client address from the proxy's headers."""
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
        proxy_headers=True,
        lifespan=lifespan,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("service")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args(argv)
    spec = service_spec(args.service)
    configure_logging()
    try:
        settings = settings_for(CONTRACTS[spec.name])
    except ConfigError as exc:
        print(f"cannot start {spec.name}: {exc}", file=sys.stderr)
        return 2
    module = importlib.import_module(spec.app_module)
    serve(module.create_app(settings), args.host, args.port or spec.dev_port)
    return 0


if __name__ == "__main__":
    sys.exit(main())

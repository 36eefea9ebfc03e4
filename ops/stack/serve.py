"""Run one service with uvicorn: ``python -m ops.stack.serve <service> [--host H] [--port P]``.

Used by ``rose up`` for every service process and by the container entrypoint. Settings come
from the environment (see :mod:`apps.common.settings`).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

import uvicorn

from apps.common.services import service_spec
from apps.common.settings import ConfigError, Settings

LOG_FORMAT = "%(levelname)-7s %(name)s: %(message)s"


def configure_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stdout, force=True)
    # Our access log (rose.<svc>.access) replaces uvicorn's.
    logging.getLogger("uvicorn.access").disabled = True
    logging.getLogger("httpx").setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("service")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args(argv)
    spec = service_spec(args.service)
    configure_logging()
    try:
        settings = Settings.from_env(spec.name)
    except ConfigError as exc:
        print(f"cannot start {spec.name}: {exc}", file=sys.stderr)
        return 2
    module = importlib.import_module(spec.app_module)
    app = module.create_app(settings)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port or spec.dev_port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
        proxy_headers=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

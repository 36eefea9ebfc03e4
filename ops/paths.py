"""Where things are: what ships in the package (the DBA's ``db/`` folder with its migrations and
``alembic.ini``, the apps' templates) and the operator's home, ``.rose/`` (credentials, the
running stack's state and log, split backups).

Everything is found through the code's own location, never the working directory: a checkout
uses its own ``db/``; installed, ``db/`` is the package ``rose_ash_db`` in the wheel (``setup.py``
maps it), so an installed ``rose`` provisions and migrates as a checkout does.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

import apps

# The package data of the ``db/`` folder (its import name in a wheel and an editable install).
DB_PACKAGE = "rose_ash_db"
APPS_DIR = Path(apps.__file__).resolve().parent
# The checkout this code runs from, if it runs from one (None in an installed wheel).
_ROOT = APPS_DIR.parent
REPO_ROOT: Path | None = _ROOT if (_ROOT / "pyproject.toml").exists() else None


def _db_dir() -> Path:
    # A checkout's code migrates with its own db/: an importable rose_ash_db may be another
    # checkout's (a second worktree's editable install, an earlier release run with
    # PYTHONPATH), whose migrations would take the database past the heads this code knows.
    if REPO_ROOT is not None and (REPO_ROOT / "db" / "alembic.ini").exists():
        return (REPO_ROOT / "db").resolve()
    spec = importlib.util.find_spec(DB_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations))).resolve()
    return _ROOT / "db"


DB_DIR = _db_dir()
ALEMBIC_INI = DB_DIR / "alembic.ini"


def rose_home() -> Path:
    """Where the operator's state lives: ``ROSE_HOME``, else ``.rose`` in the checkout, else
    (an installed package) ``~/.rose``."""
    default = (REPO_ROOT or Path.home()) / ".rose"
    return Path(os.environ.get("ROSE_HOME", default)).resolve()


def stack_state_path() -> Path:
    """The running stack's state (its database and services), written by ``rose up``."""
    return rose_home() / "stack.json"


def sha256_of(path: Path) -> str:
    """The file's sha256, read in blocks (backups are large)."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def private_file(path: Path) -> Path:
    """``path`` made empty, readable and writable by its owner only, before anything is written
    into it (backups hold merchants' SumUp keys and buyers' rows; the umask is not ours)."""
    handle = os.open(path, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600)
    os.close(handle)
    path.chmod(0o600)
    return path


def private_directory(path: Path) -> Path:
    """``path`` (made with its parents if missing) open to its owner only."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def sync_directory(directory: Path) -> None:
    """A file created or renamed in ``directory`` survives a crash once this returns."""
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)

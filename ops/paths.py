"""Where things are: the repository's own folders (``db/``, ``apps/``, ``alembic.ini``) and the
operator's home, ``.rose/`` (credentials, the running stack's state and log, split backups)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DB_DIR = REPO_ROOT / "db"
APPS_DIR = REPO_ROOT / "apps"


def rose_home() -> Path:
    """Where the local stack keeps its state: ``ROSE_HOME`` or ``.rose`` in the repository."""
    return Path(os.environ.get("ROSE_HOME", REPO_ROOT / ".rose")).resolve()


def stack_state_path() -> Path:
    """The running stack's state (its database and services), written by ``rose up``."""
    return rose_home() / "stack.json"

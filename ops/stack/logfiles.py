"""The bound every log of the local stack keeps (rose.log, the embedded PostgreSQL's log): past
``LOG_MAX_BYTES`` a log is rotated (``x.log`` -> ``x.log.1`` -> ``x.log.2`` ...) and ``LOG_KEPT``
earlier files are kept, so it takes at most (1 + LOG_KEPT) * LOG_MAX_BYTES."""

from __future__ import annotations

import os
from pathlib import Path

LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_KEPT = 3


def earlier_file(path: Path, number: int) -> Path:
    """``path``'s ``number``-th earlier file (1 the most recent)."""
    return path.with_name(f"{path.name}.{number}")


def shift_to_earlier(path: Path, kept: int) -> None:
    """``path`` becomes ``path.1``, ``.1`` becomes ``.2`` ..., the oldest beyond ``kept`` goes.
    Renames only: each file keeps its owner and mode (a writer holding one writes on to it)."""
    for number in range(kept - 1, 0, -1):
        older = earlier_file(path, number)
        if older.exists():
            os.replace(older, earlier_file(path, number + 1))
    if kept > 0 and path.exists():  # (unless someone removed it meanwhile)
        os.replace(path, earlier_file(path, 1))
    else:
        path.unlink(missing_ok=True)

"""Where internal routes live: ``/internal/`` and below, with its slash (``/internal-memo/``
is a public path)."""

from __future__ import annotations

INTERNAL_PREFIX = "/internal"


def is_internal_path(path: str) -> bool:
    return path == INTERNAL_PREFIX or path.startswith(INTERNAL_PREFIX + "/")

"""Static files (market's product images, the schema viewer's files) through Litestar's static
files router, with its misses answered as every other 404 is. Its own message named the file
system path it looked at, absolute for a directory ("no file or directory match the path
/srv/.../static/products was found", audit s20 L3): the problem names the request's path only."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from litestar import Request, Response, Router
from litestar.datastructures import CacheControlHeader
from litestar.exceptions import NotFoundException
from litestar.static_files import create_static_files_router

from apps.common.problems import NotFound


def _not_found(request: Request[Any, Any, Any], _: NotFoundException) -> Response[Any]:
    return NotFound(f"Nothing is served at {request.url.path}").to_response(request)


def static_files_router(
    path: str, directories: Sequence[Path], cache_control: CacheControlHeader
) -> Router:
    """Files of ``directories`` under ``path`` (GET and HEAD), left out of the schema; a path
    that is no file there is a 404 problem (a page for browsers) naming the request's path."""
    return create_static_files_router(
        path=path,
        directories=list(directories),
        cache_control=cache_control,
        include_in_schema=False,
        exception_handlers={NotFoundException: _not_found},
    )

"""Static files (market's product images, the schema viewer's files) through Litestar's static
files router, with its misses answered as every other 404 is. Its own message named the file
system path it looked at, absolute for a directory ("no file or directory match the path
/srv/.../static/products was found", audit s20 L3): the problem names the request's path only.
A path no file can have (a NUL, a name too long for the file system, a file taken for a
directory) is such a miss too: Litestar turned them into 500s."""

from __future__ import annotations

import errno
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from litestar import Request, Response, Router
from litestar.datastructures import CacheControlHeader
from litestar.exceptions import NotFoundException
from litestar.file_system import BaseLocalFileSystem
from litestar.static_files import create_static_files_router
from litestar.types import PathType
from litestar.types.file_types import FileInfo

from apps.common.problems import NotFound

# What looking up a path a client chose can fail with that only says no such file is there.
_NO_SUCH_FILE = (errno.ENAMETOOLONG, errno.ENOTDIR)


class _Files(BaseLocalFileSystem):
    """The local file system, where a path no file can have is one no file is at: Litestar
    answers FileNotFoundError with its 404, but a NUL in the path (``ValueError``), a name too
    long (ENAMETOOLONG) or a file taken for a directory (ENOTDIR) with a 500."""

    async def info(self, path: PathType, **kwargs: Any) -> FileInfo:
        try:
            return await super().info(path, **kwargs)
        except ValueError:  # "embedded null byte"
            raise FileNotFoundError(errno.ENOENT, "no such file") from None
        except OSError as exc:
            if exc.errno in _NO_SUCH_FILE:
                raise FileNotFoundError(errno.ENOENT, "no such file") from None
            raise


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
        file_system=_Files(),
        exception_handlers={NotFoundException: _not_found},
    )

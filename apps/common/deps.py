"""Names of the dependencies ``create_base_app`` provides, for handler signatures.

``db_session: DbSession`` (a request-scoped AsyncSession; handlers commit explicitly),
``settings: AppSettings``, ``internal: Internal`` (the client of other services' contracts),
and for public services ``identity: CurrentIdentity``.
"""

from __future__ import annotations

from litestar.di import NamedDependency

from apps.common.db import DbSession
from apps.common.identity import Identity
from apps.common.internal_client import InternalClient
from apps.common.settings import Settings

AppSettings = NamedDependency[Settings]
CurrentIdentity = NamedDependency[Identity]
Internal = NamedDependency[InternalClient]

__all__ = ["AppSettings", "CurrentIdentity", "DbSession", "Internal"]

"""Names of the dependencies ``create_base_app`` provides, for handler signatures.

``db_session: DbSession`` (a request-scoped AsyncSession; handlers commit explicitly),
``settings: AppSettings``, and for public services ``identity: CurrentIdentity``.
"""

from __future__ import annotations

from litestar.di import NamedDependency
from sqlalchemy.ext.asyncio import AsyncSession

from apps.common.identity import Identity
from apps.common.settings import Settings

DbSession = NamedDependency[AsyncSession]
AppSettings = NamedDependency[Settings]
CurrentIdentity = NamedDependency[Identity]

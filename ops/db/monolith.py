"""What the monolith's own login roles may hold until the split is finalized: the one place that
says it, for every SQL file of ``db/schemas`` that would otherwise revoke it.

Until ``rose split finalize`` the legacy app keeps writing schema ``legacy`` of the databases
the split moves rows out of, as ordinary login roles the DBA made and granted (CONNECT on those
databases, USAGE on ``legacy``, DML on its tables, USAGE on its sequences). Rose does not
declare them, so provisioning (``rose up``, ``rose db migrate``, the deploy's migrate job) would
revoke their grants as a stranger's and cut the monolith off. The operator declares them in
``ROSE_MONOLITH_ROLES`` (:attr:`ops.db.topology.Topology.monolith_roles`); for a declared role
the files accept exactly :data:`CONNECT_PRIVILEGES` on :func:`legacy_databases` and the
privileges below in schema ``legacy``, and nothing else: any other privilege of the role is
reported and revoked as anyone's. Rose never creates, changes, grants or drops these roles.

The files receive :func:`monolith_declaration` as the psql variable ``monolith`` (JSON)::

    {"roles": ["monolith_app"], "databases": ["db_blog", "db_cart", "db_market"],
     "schema": "legacy", "connect": ["CONNECT"], "schema_privileges": ["USAGE"],
     "table_privileges": ["SELECT", "INSERT", "UPDATE", "DELETE"],
     "sequence_privileges": ["USAGE", "SELECT"]}
"""

from __future__ import annotations

from collections.abc import Sequence

from apps.registry import service_spec
from ops.split.moves import LEGACY_SERVICES

LEGACY_SCHEMA = "legacy"
CONNECT_PRIVILEGES = ("CONNECT",)
SCHEMA_PRIVILEGES = ("USAGE",)
TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")
SEQUENCE_PRIVILEGES = ("USAGE", "SELECT")


def legacy_databases() -> list[str]:
    """The databases that hold schema ``legacy`` until finalize (the split's sources)."""
    return sorted(service_spec(name).database for name in LEGACY_SERVICES)


def monolith_declaration(roles: Sequence[str]) -> dict[str, object]:
    """The declared monolith roles and what each may hold (the SQL variable ``monolith``)."""
    return {
        "roles": list(roles),
        "databases": legacy_databases(),
        "schema": LEGACY_SCHEMA,
        "connect": list(CONNECT_PRIVILEGES),
        "schema_privileges": list(SCHEMA_PRIVILEGES),
        "table_privileges": list(TABLE_PRIVILEGES),
        "sequence_privileges": list(SEQUENCE_PRIVILEGES),
    }

"""The one way the databases are brought to the state ``db/`` declares, for ``rose up``, ``rose db
migrate``, the tests and the benchmarks:

    provision   every service's roles, database, schemas and privileges (views come later);
    migrate     Alembic, each service to its head, as its owner;
    edges       provision again: the FDW edges, now that the export views exist, and whatever
                the migrations changed.

A second run changes nothing and runs no DDL or GRANT."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from apps.registry import service_spec
from ops.db.connections import Connections, scalar
from ops.db.credentials import Credentials
from ops.db.exclusive import converging_alone
from ops.db.manifest import Edge, load_edges
from ops.db.migrate import Step, migrate_steps, services_with_migrations, steps_line
from ops.db.provision import (
    ProvisionReport,
    Say,
    database_exists,
    provision,
    refuse_missing_monolith_roles,
)
from ops.db.topology import Topology

logger = logging.getLogger("rose.lifecycle")


@dataclass
class Converged:
    migrated: list[str]
    # What each of them went through (steps_line says it in one line).
    steps: list[Step]
    # The last provisioning pass (on a cluster that was already as declared: no statements).
    edges_pass: ProvisionReport
    created_edges: list[str] = field(default_factory=list)
    # Edges whose provider's database does not exist yet (only in a dry run), with the reason.
    pending_edges: list[str] = field(default_factory=list)


def converge_databases(
    topology: Topology,
    credentials: Credentials,
    services: Iterable[str] | None = None,
    *,
    edges: Iterable[Edge] | None = None,
    provision_first: bool | Iterable[str] = True,
    say: Say = logger.info,
) -> Converged:
    """Provision every service, migrate ``services`` (default: every service with migrations),
    then converge the databases at both ends of ``edges`` (default: every edge).

    ``provision_first`` names the services provisioned before the migrations (True: every
    service; False: none). ``rose db migrate`` passes those :func:`missing_for_migrations` finds
    (none on a cluster that has every database and role its migrations need): nothing of
    another service changes before the migrations."""
    with converging_alone(topology, say):
        return _converge(topology, credentials, services, edges, provision_first, say)


def _converge(
    topology: Topology,
    credentials: Credentials,
    services: Iterable[str] | None,
    edges: Iterable[Edge] | None,
    provision_first: bool | Iterable[str],
    say: Say,
) -> Converged:
    # Before the migrations too: the last pass would refuse only after them.
    refuse_missing_monolith_roles(topology)
    if provision_first is True:
        _said_done(provision(topology, credentials, say=say, before_migrations=True), say)
    elif provision_first is not False:
        first = list(provision_first)
        if first:
            _said_done(provision(topology, credentials, first, say, before_migrations=True), say)
    names = list(services) if services is not None else services_with_migrations()
    steps = migrate_steps({name: topology.admin_url(name) for name in names}, names, say)
    say(steps_line(steps))
    migrated = [step.service for step in steps]
    chosen = load_edges() if edges is None else list(edges)
    ends = {edge.consumer for edge in chosen} | {edge.provider for edge in chosen}
    report = _said_done(provision(topology, credentials, ends, say), say)
    waiting = {change.where: change.line for change in report.pending}
    converged = Converged(migrated, steps, report)
    for edge in chosen:
        database = service_spec(edge.provider).database
        if database in waiting:
            converged.pending_edges.append(f"{edge}: {waiting[database]}")
        else:
            converged.created_edges.append(str(edge))
    return converged


def _said_done(report: ProvisionReport, say: Say) -> ProvisionReport:
    """After a pass's lines (each a difference it found), what it did with them: a first start
    prints hundreds of "missing ..." lines, which read as faults unless something says they were
    made. A pass with nothing to do says nothing."""
    if report.changes:
        say(report.summary())
    return report


def missing_for_migrations(topology: Topology, services: Iterable[str]) -> dict[str, list[str]]:
    """The services whose database, owner or app role the cluster lacks, or whose database
    lacks its schemas (the service's and ``export``), each with what it lacks: their
    migrations cannot run until provisioning creates them (a new server, a dropped database,
    a provisioning cut off after CREATE DATABASE, which commits on its own). The others are
    left out."""
    missing: dict[str, list[str]] = {}
    with Connections() as connections:
        for name in services:
            spec = service_spec(name)
            connection = connections.get(topology.maintenance_url(name))
            lacks = [
                role
                for role in (spec.owner_role, spec.app_role)
                if not scalar(
                    connection, "SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = %s)", (role,)
                )
            ]
            if not database_exists(connection, spec.database):
                lacks.append(spec.database)
            else:
                inside = connections.get(topology.admin_url(name))
                lacks += [
                    f"schema {schema} of {spec.database}"
                    for schema in (spec.name, "export")
                    if not scalar(
                        inside,
                        "SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = %s)",
                        (schema,),
                    )
                ]
            if lacks:
                missing[name] = lacks
    return missing

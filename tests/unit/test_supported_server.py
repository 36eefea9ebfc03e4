"""Provisioning refuses, in one line naming the version, a PostgreSQL older than the service
databases can be made on (their builtin C.UTF-8 locale came with 17). On PostgreSQL 15 it made
the roles, then failed at the first database: "unrecognized locale provider: builtin"."""

from __future__ import annotations

import pytest

from ops.db.provision import require_supported_server
from ops.db.sqlfiles import ConvergeError


@pytest.mark.parametrize("version_num", [150018, 160004, 169999])
def test_an_older_server_is_refused_naming_its_version(version_num: int) -> None:
    with pytest.raises(ConvergeError) as refused:
        require_supported_server(version_num, "postgresql://postgres@db:5432/postgres")
    major, minor = divmod(version_num, 10000)
    assert str(refused.value) == (
        f"postgresql://postgres@db:5432/postgres: PostgreSQL {major}.{minor} is too old: "
        "rose-ash needs PostgreSQL 17 or later (the service databases use its builtin C.UTF-8 "
        "locale); it is tested on 18"
    )


@pytest.mark.parametrize("version_num", [170000, 170006, 180001, 190000])
def test_seventeen_and_later_are_accepted(version_num: int) -> None:
    require_supported_server(version_num, "postgresql://postgres@db:5432/postgres")

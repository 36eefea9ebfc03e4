"""`rose up` as a user runs it: real processes, the embedded PostgreSQL, signed CLI calls."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import httpx
import pytest

from ops.stack.pgserver import free_port, port_is_free
from tests.e2e.conftest import rose_cli as rose
from tests.e2e.conftest import rose_up

PORT_OFFSET = 20000


@pytest.fixture
def running_stack(tmp_path: Path):
    home = tmp_path / "rose-home"
    pg_port = free_port()
    args = ["--fresh", "--pg-port", str(pg_port), "--port-offset", str(PORT_OFFSET)]
    with rose_up(home, *args, "--only", "relations", timeout=60) as running:
        yield home, running.process, running.state, pg_port


def test_rose_up_runs_relations_and_cli_calls_reach_it(running_stack):
    home, process, state, pg_port = running_stack
    relations_url = state["services"]["relations"]
    assert relations_url.endswith(str(8008 + PORT_OFFSET))
    assert httpx.get(relations_url + "/readyz").status_code == 200
    assert state["database_url"].startswith("postgresql://postgres:")

    attached = rose(
        home,
        "action",
        "relations",
        "attach-child",
        # Page 3: relations' demo data attaches the demo pages' (1 and 2) markets and calendars.
        '{"parent_type":"page","parent_id":3,"child_type":"market","child_id":7}',
    )
    relation = json.loads(attached.stdout)
    children = rose(home, "data", "relations", "get-children", "parent_type=page", "parent_id=3")
    assert [child["child_id"] for child in json.loads(children.stdout)] == [7]
    assert [child["id"] for child in json.loads(children.stdout)] == [relation["id"]]

    bad = rose(home, "action", "relations", "attach-child", '{"parent_type":"page"}', check=False)
    assert bad.returncode == 1
    assert "422" in bad.stderr

    check = rose(home, "db", "check")
    assert check.returncode == 0, check.stdout

    # Ctrl-C / SIGTERM stops everything: services, database, state file.
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    assert not (home / "stack.json").exists()
    assert port_is_free(8008 + PORT_OFFSET)
    assert port_is_free(pg_port)
    log = (home / "rose.log").read_text()
    assert "relations  http://127.0.0.1:28008  ready" in log
    assert "embedded PostgreSQL stopped" in log

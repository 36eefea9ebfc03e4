"""The split's practice stack as the runbook and the README show it: started as written, it runs
no service the split reads or writes beside (`rose split run`, `cutover` and `abort` refuse
while a target's service is connected: ops.split.common.refuse_while_services_run)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ops.split.moves import MOVES

REPO = Path(__file__).resolve().parents[2]
PRACTICE = re.compile(r"rose up --fresh --no-demo --only ([a-z_,]+)")


@pytest.mark.parametrize("document", ["docs/runbook-split.md", "README.md"])
def test_the_practice_stack_runs_no_service_of_a_database_the_split_touches(document: str):
    text = " ".join((REPO / document).read_text().split())
    shown = PRACTICE.findall(text)
    assert shown, f"{document} shows no practice stack"
    touched = {name for move in MOVES for name in (move.target, *move.source_services)}
    for services in shown:
        assert not set(services.split(",")) & touched, (document, services)

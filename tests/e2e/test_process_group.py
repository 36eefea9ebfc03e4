"""The process group that starts a stack (``rose up``, the e2e tests, the benchmarks): a port
answering is not enough to call a process ready; the answer must come from the service that
process runs. Found when CI's browser test reached relations on the port chosen for events."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

from ops.stack.pgserver import LocalPostgres, free_ports, port_is_free
from ops.stack.processes import LogSink, ProcessGroup
from ops.stack.up import Supervisor
from tests.conftest import truncate_all
from tests.e2e.conftest import live_stack
from tests.waiting import eventually_sync


def test_ports_chosen_together_are_distinct_and_free():
    ports = free_ports(200)
    assert len(set(ports)) == 200
    assert all(port_is_free(port) for port in ports)


def test_a_process_is_not_ready_while_another_service_answers_on_its_port(provisioned, credentials):
    truncate_all(provisioned)
    with live_stack(provisioned, credentials, ["relations", "events"]) as stack:
        group = stack.group
        events = group.processes["events"].process
        assert events is not None
        events.send_signal(signal.SIGTERM)
        events.wait(15)

        # events again, on the port relations holds: relations answers /readyz there at once.
        taken = group.processes["relations"].port
        group.start_service("events", taken)
        assert group.wait_ready(["events"], timeout=30) == ["events"]
        duplicate = group.processes["events"].process
        assert duplicate is not None
        assert duplicate.wait(15) != 0  # it could not bind the port
        assert "address already in use" in "\n".join(group.processes["events"].last_lines).lower()


# A process that starts one long-sleeping child through a ProcessGroup, says its pid, and waits.
PARENT = """
import sys, time
from ops.stack.processes import LogSink, ProcessGroup
group = ProcessGroup(LogSink(None, echo=None), {})
child = group.start("sleeper", 1, [sys.executable, "-c", "import time; time.sleep(600)"])
print(child.process.pid, flush=True)
time.sleep(600)
"""


def alive(pid: int) -> bool:
    """A process that exists and is not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_processes_of_a_group_die_with_the_process_that_started_them():
    """Audit O7: a ``rose up`` killed by SIGKILL (or the OOM killer) left every service running,
    orphaned; they now get SIGTERM from the kernel when it dies."""
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    try:
        assert alive(child)
        parent.kill()
        parent.wait(15)
        assert eventually_sync(lambda: not alive(child), timeout=30)
    finally:
        if alive(child):
            os.kill(child, signal.SIGKILL)


def test_the_log_is_for_its_owner_only(tmp_path: Path):
    """Audit O15: rose.log (every request line of the stack) was created 0644; an existing one
    an earlier release made readable by all is made owner-only too."""
    fresh, earlier = tmp_path / "fresh.log", tmp_path / "earlier.log"
    earlier.write_text("old line\n")
    earlier.chmod(0o644)
    for path in (fresh, earlier):
        sink = LogSink(path, echo=None)
        sink.write("rose", "a line")
        sink.close()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert earlier.read_text().startswith("old line\n")


def test_the_supervisor_does_not_make_a_new_cluster_where_the_data_directory_was_deleted(
    tmp_path: Path,
):
    """Restarting a dead postmaster must not initdb an empty cluster in its place."""
    said: list[str] = []
    database = LocalPostgres(tmp_path / "pgdata", free_ports(1)[0], "unused")
    supervisor = Supervisor(ProcessGroup(LogSink(None, echo=None), {}), said.append, database)

    def gave_up() -> bool:
        supervisor.tick()
        return any("is gone; not restarting" in line for line in said)

    try:
        assert eventually_sync(gave_up, timeout=30)
        assert said[0].startswith(f"PostgreSQL exited ({tmp_path / 'pgdata'}); restarting in 1s")
        assert not (tmp_path / "pgdata").exists()
        supervisor.tick()
        assert len(said) == 2  # and it stops watching
    finally:
        database.stop()  # (what a broken supervisor would have started)

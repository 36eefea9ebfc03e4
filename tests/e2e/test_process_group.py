"""The process group that starts a stack (``rose up``, the e2e tests, the benchmarks): a port
answering is not enough to call a process ready; the answer must come from the service that
process runs. Found when CI's browser test reached relations on the port chosen for events."""

from __future__ import annotations

import os
import pwd
import signal
import stat
import subprocess
import sys
from pathlib import Path

import psycopg

from ops.stack.pgserver import SYSTEM_USER, LocalPostgres, free_ports, port_is_free
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


def test_the_log_is_bounded_and_every_file_of_it_is_for_its_owner_only(tmp_path: Path):
    """Audit O13: rose.log grew without limit (every request line of a stack left running).
    It is rotated: past ``max_bytes`` it becomes rose.log.1 (and .1 becomes .2...), ``kept``
    of them are kept, and each, created or renamed, is owner-only. Lines are whole, the newest
    in rose.log."""
    path = tmp_path / "rose.log"
    umask = os.umask(0o022)  # what a shell usually has: a plain open() would make 0644 files
    try:
        sink = LogSink(path, echo=None, max_bytes=1000, kept=2)
        for number in range(200):  # about 9 KB of lines: rotated several times
            sink.write("cart", f"line {number:03d} " + "x" * 20)
        sink.close()
    finally:
        os.umask(umask)
    files = sorted(tmp_path.iterdir())
    assert [file.name for file in files] == ["rose.log", "rose.log.1", "rose.log.2"]
    for file in files:
        assert 0 < file.stat().st_size <= 1000, file
        assert stat.S_IMODE(file.stat().st_mode) == 0o600, file
        assert all(line.endswith("x" * 20) for line in file.read_text().splitlines()), file
    newest = path.read_text().splitlines()[-1]
    assert "line 199 " in newest
    # Oldest to newest across the files, with no line lost between the kept ones.
    numbers = [
        int(line.split("line ")[1][:3])
        for file in (files[2], files[1], files[0])
        for line in file.read_text().splitlines()
    ]
    assert numbers == list(range(numbers[0], 200))
    # A line longer than the bound is cut to it, so no file ever exceeds it.
    sink = LogSink(path, echo=None, max_bytes=1000, kept=2)
    sink.write("cart", "y" * 5000)
    sink.close()
    assert all(file.stat().st_size <= 1000 for file in tmp_path.iterdir())
    assert len(list(tmp_path.iterdir())) == 3


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


def test_the_embedded_servers_log_is_bounded_and_every_file_of_it_is_for_its_owner_only(
    tmp_path: Path,
):
    """`rose up` runs for weeks: PostgreSQL's own log (``<data dir>.log``) must not grow
    without bound any more than rose.log does. A small bound here; the supervisor keeps it."""
    tmp_path.chmod(0o755)  # the server runs as its own system user when we are root
    bound, kept = 64 * 1024, 2
    database = LocalPostgres(
        tmp_path / "pgdata",
        free_ports(1)[0],
        "a-password",
        fast_unsafe=True,
        log_max_bytes=bound,
        log_kept=kept,
    )
    supervisor = Supervisor(ProcessGroup(LogSink(None, echo=None), {}), lambda _: None, database)
    # About 16 KiB of log lines a round: twenty rounds are five times what may be kept.
    burst = (
        "DO $$ BEGIN FOR i IN 1..30 LOOP "
        "RAISE LOG 'round % line % %', {0}, i, repeat('x', 160); END LOOP; END $$"
    )
    try:
        database.start()

        def logged(line: str) -> bool:
            return any(line in file.read_text(errors="replace") for file in database.log_files())

        for round_number in range(20):
            with psycopg.connect(database.superuser_url(), autocommit=True) as connection:
                connection.execute(burst.format(round_number).encode())
            # The collector writes a moment later: a check comes after each round is written,
            # as the supervisor's come several times a second, whatever the machine's load.
            last_line = f"round {round_number} line 30 "
            assert eventually_sync(lambda line=last_line: logged(line), timeout=10)
            supervisor.tick()

        files = sorted(tmp_path.glob("pgdata.log*"))
        assert [file.name for file in files] == ["pgdata.log", "pgdata.log.1", "pgdata.log.2"]
        # Rotated once past the bound: by at most the round that took it there (and what the
        # collector wrote to it before it opened the fresh file).
        assert all(file.stat().st_size <= bound + 2 * 16 * 1024 for file in files), files
        for file in files:
            assert stat.S_IMODE(file.stat().st_mode) == 0o600, file
            if os.geteuid() == 0:
                assert file.stat().st_uid == pwd.getpwnam(SYSTEM_USER).pw_uid, file
        # Moved aside, not lost: every line of the last rounds is kept, once.
        kept_text = "".join(file.read_text(errors="replace") for file in files)
        for round_number in range(16, 20):
            for line in range(1, 31):
                assert kept_text.count(f"round {round_number} line {line} ") == 1
    finally:
        database.destroy()
    assert not list(tmp_path.glob("pgdata.log*"))

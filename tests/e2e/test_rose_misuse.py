"""`rose` used wrongly (audit D: O1, O2, O9, O14): one clear line on stderr and a non-zero exit,
never a traceback, and nothing deleted or started on the way to the refusal."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops.stack.pgserver import free_port
from tests.e2e.conftest import rose_cli as rose

# Far from every other test's ports (test_rose_up uses 20000).
PORT_OFFSET = 21000


def refused(result, *words: str) -> str:
    """The refusal's text (stderr), checked: non-zero exit, no traceback, the words in it."""
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output, output
    for word in words:
        assert word in result.stderr, result.stderr
    return result.stderr


def one_line(result, *words: str) -> None:
    text = refused(result, *words)
    assert len(text.strip().splitlines()) == 1, text
    assert text.startswith("error: "), text


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


def test_rose_up_refuses_a_taken_postgres_port_before_fresh_deletes_anything(
    tmp_path: Path, taken_port: int
):
    """O1: the port was checked only by ``LocalPostgres.start``, after ``--fresh`` had removed
    the data directory, and its refusal came under a 40-line traceback."""
    home = tmp_path / "home"
    kept = home / "pgdata" / "PG_VERSION"
    kept.parent.mkdir(parents=True)
    kept.write_text("18\n")
    args = ["up", "--fresh", "--only", "relations", "--port-offset", str(PORT_OFFSET)]
    result = rose(home, *args, "--pg-port", str(taken_port), check=False)
    one_line(result, f"PostgreSQL ({taken_port})", "--pg-port")
    assert kept.exists()


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--only", "nope"], "nope"),
        (["--only", ""], "--only"),
        (["--only", " , "], "--only"),
        (["--pg-port", "99999"], "--pg-port"),
        (["--pg-port", "0"], "--pg-port"),
        (["--pg-port", "80"], "--pg-port"),
        (["--proxy", "--proxy-port", "70000"], "--proxy-port"),
        (["--port-offset", "99999"], "--port-offset"),
        (["--port-offset", "-8000"], "--port-offset"),
        (["--database-url", "notadsn"], "--database-url"),
        (["--database-url", "mysql://root@127.0.0.1/x"], "--database-url"),
    ],
)
def test_rose_up_checks_its_option_values_before_doing_anything(tmp_path: Path, args, named):
    """O9, O2: tracebacks (ValueError, OverflowError, a failed pg_ctl), or worse, services on
    ports 1-99 (a negative offset) and every service for ``--only ''``."""
    home = tmp_path / "home"
    base = ["up", "--only", "relations", "--port-offset", str(PORT_OFFSET)]
    result = rose(home, *base, "--pg-port", str(free_port()), *args, check=False)
    assert named in refused(result)
    assert not (home / "pgdata").exists()


@pytest.mark.parametrize("command", [["db", "check"], ["db", "migrate"], ["db", "provision"]])
def test_db_commands_refuse_a_malformed_dsn_in_one_line(tmp_path: Path, command, monkeypatch):
    """O2: a DSN SQLAlchemy cannot parse was a 116-line traceback, from the option or the
    environment (ROSE_ADMIN_URL). The line must not echo the DSN (it may hold a password)."""
    one_line(rose(tmp_path, *command, "--database-url", "notadsn:secret", check=False), "DSN")
    monkeypatch.setenv("ROSE_ADMIN_URL", "notadsn:secret")
    result = rose(tmp_path, *command, check=False)
    one_line(result, "ROSE_ADMIN_URL")
    assert "secret" not in result.stderr


def test_db_migrate_names_an_unknown_service_in_one_line(tmp_path: Path):
    unused = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    result = rose(
        tmp_path, "db", "migrate", "--service", "nope", "--database-url", unused, check=False
    )
    one_line(result, "nope", "relations")


@pytest.mark.parametrize("command", [["status"], ["db", "check"], ["data", "relations", "x"]])
def test_a_truncated_stack_state_is_one_line_naming_the_file(tmp_path: Path, command):
    """O14: a crash or a full disk while writing leaves exactly this."""
    tmp_path.joinpath("stack.json").write_text('{"pid": ')
    one_line(rose(tmp_path, *command, check=False), "stack.json")


def test_a_truncated_credentials_file_is_refused_not_regenerated(tmp_path: Path):
    """O14: the cluster's passwords are in it: never replaced silently."""
    credentials = tmp_path / "credentials.json"
    credentials.write_text('{"internal_secret": ')
    args = ["up", "--only", "relations", "--port-offset", str(PORT_OFFSET)]
    one_line(rose(tmp_path, *args, "--pg-port", str(free_port()), check=False), "credentials.json")
    assert credentials.read_text() == '{"internal_secret": '
    assert not (tmp_path / "pgdata").exists()


def test_serving_an_unknown_service_is_one_line(tmp_path: Path):
    """O13: ``python -m ops.stack.serve nope`` was a traceback (ValueError)."""
    result = subprocess.run(
        [sys.executable, "-m", "ops.stack.serve", "nope"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "nope" in result.stderr
    assert "relations" in result.stderr


@pytest.mark.parametrize("key", ["é✓", "a\nb", "tab\there", " padded "])
def test_an_idempotency_key_that_cannot_be_a_header_is_one_line(tmp_path: Path, monkeypatch, key):
    """O13: a non-ASCII key was a UnicodeEncodeError traceback, a control character httpx's
    ValueError; refused before anything is sent (nothing listens at the URL)."""
    monkeypatch.setenv("INTERNAL_URL_RELATIONS", f"http://127.0.0.1:{free_port()}")
    args = ["action", "relations", "attach-child", "{}", "--idempotency-key", key]
    one_line(rose(tmp_path, *args, check=False), "--idempotency-key")


def test_a_call_to_a_deployment_without_its_internal_secret_is_one_line(
    tmp_path: Path, monkeypatch
):
    """Probe newuser: with INTERNAL_URL_<SVC> set and no INTERNAL_SECRET (a deployment's host,
    ROSE_ENV unset), the call was signed with a secret made up on the spot, written into a new
    credentials.json of the home, and the operator read "401 wrong request signature"."""
    monkeypatch.setenv("INTERNAL_URL_ORDERS", f"http://127.0.0.1:{free_port()}")
    monkeypatch.delenv("INTERNAL_SECRET", raising=False)
    monkeypatch.delenv("ROSE_ENV", raising=False)
    home = tmp_path / "home"
    one_line(
        rose(home, "orders", "attention", check=False), "INTERNAL_SECRET", "INTERNAL_URL_ORDERS"
    )
    assert not (home / "credentials.json").exists()


def test_an_internal_url_without_its_scheme_is_one_line_naming_it(tmp_path: Path, monkeypatch):
    """Probe newuser: ``INTERNAL_URL_ORDERS=127.0.0.1:8010`` was "connection lost
    (TransportError)", though nothing had connected."""
    monkeypatch.setenv("INTERNAL_URL_ORDERS", f"127.0.0.1:{free_port()}")
    monkeypatch.setenv("INTERNAL_SECRET", "a-secret-long-enough-0123")
    one_line(rose(tmp_path, "orders", "attention", check=False), "INTERNAL_URL_ORDERS", "http://")


def test_an_internal_secret_the_services_would_refuse_is_one_line(tmp_path: Path, monkeypatch):
    """Probe newuser: a secret shorter than the services take was sent, and refused as a 401."""
    monkeypatch.setenv("INTERNAL_URL_RELATIONS", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("INTERNAL_SECRET", "short")
    args = ["data", "relations", "get-children", "parent_type=page", "parent_id=1"]
    one_line(rose(tmp_path, *args, check=False), "INTERNAL_SECRET", "16")


@pytest.mark.parametrize("value", ["production", "Prod", "staging"])
def test_a_rose_env_that_is_no_environment_is_refused_before_any_password_is_made(
    tmp_path: Path, monkeypatch, value: str
):
    """Probe newuser: ``ROSE_ENV=production`` was read as development by rose (the services
    refuse it): provision generated a new credentials.json and set every role's password on the
    server it was given to those, and the production services could no longer log in."""
    monkeypatch.setenv("ROSE_ENV", value)
    dsn = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    home = tmp_path / "home"
    for command in (["db", "provision", "--dry-run"], ["db", "migrate"]):
        result = rose(home, *command, "--database-url", dsn, check=False)
        one_line(result, "ROSE_ENV", repr(value))
    assert not (home / "credentials.json").exists()


def test_rose_up_names_a_data_directory_initdb_did_not_finish(tmp_path: Path):
    """Probe B: an initdb killed after it wrote PG_VERSION (SIGKILL, the OOM killer, a full disk)
    leaves a data directory `rose up` took for a made one; as root it ended in a traceback
    (``FileNotFoundError: .../pgdata/pg_hba.conf``). It is now named in one line, with the way
    out, and left as it is."""
    home = tmp_path / "home"
    version = home / "pgdata" / "PG_VERSION"
    version.parent.mkdir(parents=True)
    version.write_text("18\n")
    args = ["up", "--only", "relations", "--port-offset", str(PORT_OFFSET)]
    result = rose(home, *args, "--pg-port", str(free_port()), check=False)
    # (As root, the lines before it say which folders the server's system user may traverse.)
    error = refused(result, str(home / "pgdata"), "pg_hba.conf", "--fresh").strip()
    assert error.splitlines()[-1].startswith("error: "), error
    assert error.count("error: ") == 1, error
    assert sorted(path.name for path in version.parent.iterdir()) == ["PG_VERSION"]


def test_a_taken_port_in_the_ephemeral_range_is_named_as_such(tmp_path: Path, taken_port: int):
    """Probe B: with --port-offset 33000 (the brief's, and any offset past 24000) the ports lie
    in the kernel's ephemeral range, where any client connection of the machine takes a local
    port for a moment (and leaves it in TIME_WAIT for a minute): `rose up` refused now one port,
    now another ("ports in use: orders (41010)"), with nothing listening there. The refusal
    now says why, and what to choose instead."""
    home = tmp_path / "home"
    # A port the kernel handed out is one of its ephemeral ones.
    offset = taken_port - 8008
    args = ["up", "--only", "relations", "--port-offset", str(offset)]
    result = rose(home, *args, "--pg-port", str(free_port()), check=False)
    one_line(result, f"relations ({taken_port})", "ephemeral", "--port-offset")


def test_the_sandbox_refuses_a_taken_port_in_one_line(tmp_path: Path, taken_port: int):
    """`rose sumup-sandbox` on a port something listens on ended in uvicorn's own log lines and
    exit 3; it took port 1 as well, which `rose up` refuses for every port it uses."""
    result = rose(tmp_path / "home", "sumup-sandbox", "--port", str(taken_port), check=False)
    one_line(result, f"127.0.0.1:{taken_port}", "--port")
    low = rose(tmp_path / "home", "sumup-sandbox", "--port", "1", check=False)
    assert low.returncode == 2, low.stdout + low.stderr
    assert "Traceback" not in low.stdout + low.stderr


def test_the_sandbox_on_every_address_takes_ipv4_and_stops_cleanly_on_ctrl_c(tmp_path: Path):
    """`rose sumup-sandbox --host ::` binds its port itself now (above): it takes IPv4 clients
    too where the system has dual-stack sockets (uvicorn's own bind was IPv6 only), and Ctrl-C
    stops it with exit 0, not typer's "Aborted!" and 1."""
    port = free_port()
    sandbox = subprocess.Popen(
        [sys.executable, "-m", "ops.cli", "sumup-sandbox", "--host", "::", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        answered = None
        for _ in range(300):  # a hang guard: its start is a second or two
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as connection:
                    connection.sendall(b"GET /_sandbox/controls HTTP/1.0\r\n\r\n")
                    answered = connection.recv(64)
                    break
            except OSError:
                if sandbox.poll() is not None:
                    break
                time.sleep(0.1)
        assert answered is not None
        assert answered.startswith(b"HTTP/1.1 200"), answered
    finally:
        sandbox.send_signal(signal.SIGINT)
        output, _ = sandbox.communicate(timeout=30)
    assert sandbox.returncode == 0, output
    assert "Aborted" not in output, output
    assert "Traceback" not in output, output


def test_a_second_rose_up_in_a_home_whose_stack_is_starting_is_refused(tmp_path: Path):
    """Review M1: the stack's state (what refuses a second `rose up`) is written once the stack
    is ready; until then a second `rose up --fresh` in the same home passed every check (its
    services' ports were free, PostgreSQL's was its own), then stopped the first stack's
    PostgreSQL and deleted its data directory. The home is locked for the stack's whole life."""
    home = tmp_path / "home"
    args = ["--only", "relations", "--port-offset", str(PORT_OFFSET), "--pg-port"]
    pg_port = str(free_port())
    output = (tmp_path / "first.out").open("w")
    first = subprocess.Popen(
        [sys.executable, "-m", "ops.cli", "up", "--fresh", *args, pg_port],
        env={**os.environ, "ROSE_HOME": str(home)},
        stdout=output,
        stderr=subprocess.STDOUT,
    )
    try:
        data = home / "pgdata" / "PG_VERSION"
        for _ in range(600):  # a hang guard: initdb takes a few seconds
            if data.exists() or first.poll() is not None:
                break
            time.sleep(0.1)
        assert data.exists(), (tmp_path / "first.out").read_text()
        assert not (home / "stack.json").exists()  # still starting

        second = rose(home, "up", "--fresh", *args, pg_port, check=False)

        one_line(second, "another `rose up`", str(first.pid))
        assert data.exists()
        for _ in range(1200):  # the first goes on to be ready
            if rose(home, "status", "--json", check=False).returncode == 0:
                break
            assert first.poll() is None, (tmp_path / "first.out").read_text()
            time.sleep(0.2)
        assert rose(home, "status", "--json", check=False).returncode == 0
    finally:
        first.send_signal(signal.SIGINT)
        first.wait(timeout=60)
        output.close()


def test_fresh_with_a_dsn_whose_server_holds_orders_is_refused_keeping_the_sandbox(
    tmp_path: Path,
):
    """Probe (upgrade): `rose up --fresh --database-url DSN` kept every database of that server
    (--fresh empties the embedded one only) but deleted the SumUp sandbox's checkouts, which
    the kept orders name: a pending order's payment page was a 404 and orders flagged it
    (SumUp does not know its checkout). Refused in one line, nothing changed."""
    from tests.integration.db_fixtures import start_cluster

    clusters = start_cluster()
    cluster = next(clusters)
    try:
        with cluster.admin("blog") as blog:
            config_id = blog.execute("SELECT id FROM blog.page_configs").fetchone()[0]
        with cluster.admin("orders") as orders:
            orders.execute(
                "INSERT INTO orders.orders (user_id, status, currency, product_total, "
                "calendar_total, ticket_total, total, description, page_config_id, "
                "merchant_code, checkout_prefix, paid_at, payable_until) VALUES (6, 'paid', "
                "'EUR', 3, 0, 0, 3, 'paid before', %s, 'MSANDBOX1', 'rose-farm-', now(), now())",
                (config_id,),
            )
        home = tmp_path / "home"
        home.mkdir()
        sandbox = home / "sumup-sandbox.json"
        sandbox.write_text('{"kept": true}\n')
        args = ["up", "--fresh", "--database-url", cluster.admin_url, "--no-demo"]
        result = rose(home, *args, "--only", "relations", "--port-offset", str(PORT_OFFSET),
                      check=False)  # fmt: skip
        one_line(result, "--fresh", "--database-url", "1 order")
        assert sandbox.read_text() == '{"kept": true}\n'
        # A restore keeps the sandbox's checkouts, and one cut off is run again just so
        # (review 4): not refused for the orders (here, for a folder that is no backup).
        (tmp_path / "no-backup").mkdir()
        restoring = rose(home, *args, "--restore", str(tmp_path / "no-backup"), "--only",
                         "relations", "--port-offset", str(PORT_OFFSET), check=False)  # fmt: skip
        one_line(restoring, "--restore")
        assert "1 order" not in restoring.stderr
        with cluster.admin("orders") as orders:
            assert orders.execute("SELECT count(*) FROM orders.orders").fetchone() == (1,)
    finally:
        clusters.close()


@pytest.mark.parametrize(
    "command",
    [
        ["db", "provision"],
        ["db", "provision", "--dry-run"],
        ["db", "migrate"],
        ["db", "restore", "backup"],
        ["up", "--only", "relations", "--port-offset", str(PORT_OFFSET)],
    ],
)
@pytest.mark.parametrize("host", ["db.example.com", "192.0.2.10", "[2001:db8::1]"])
def test_rose_env_unset_is_refused_for_a_server_elsewhere_before_any_password_is_made(
    tmp_path: Path, monkeypatch, command: list[str], host: str
):
    """Probe fix_ops: with ROSE_ENV unset rose is in development, where provisioning generates
    every login role's password and sets it on the server: given a production server's
    superuser DSN, the running services' passwords changed under them. A server that is not
    this machine's is refused now, before anything is read or made, naming both ways on."""
    monkeypatch.delenv("ROSE_ENV", raising=False)
    dsn = f"postgresql://postgres:secret@{host}:{free_port()}/postgres?connect_timeout=2"
    home = tmp_path / "home"
    result = rose(home, *command, "--database-url", dsn, check=False)
    one_line(result, "ROSE_ENV=prod", "ROSE_ENV=dev", host.strip("[]"))
    assert not (home / "credentials.json").exists()


@pytest.mark.parametrize("environment", ["dev", "prod"])
def test_rose_env_set_reaches_a_server_elsewhere(tmp_path: Path, monkeypatch, environment: str):
    """An explicit ROSE_ENV (dev for a development server elsewhere) is not refused: the command
    goes on to connect (nothing listens there: libpq's own words)."""
    monkeypatch.setenv("ROSE_ENV", environment)
    dsn = f"postgresql://postgres:secret@192.0.2.10:{free_port()}/postgres?connect_timeout=1"
    result = rose(tmp_path / "home", "db", "provision", "--database-url", dsn, check=False)
    assert "ROSE_ENV" not in result.stderr, result.stderr

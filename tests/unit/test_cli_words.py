"""Issue 15: the rose CLI says what was wrong in one line, and its help reads cleanly."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from ops.cli import app as rose_cli
from ops.stack.pgserver import free_port

runner = CliRunner()


def every_command_path() -> list[list[str]]:
    root = typer.main.get_command(rose_cli)
    paths: list[list[str]] = []

    def walk(command: object, path: list[str]) -> None:
        paths.append(path)
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*path, name])

    walk(root, [])
    return paths


def test_help_of_every_command_has_no_markup_left_in_it():
    paths = every_command_path()
    assert len(paths) > 20
    for path in paths:
        result = runner.invoke(rose_cli, [*path, "--help"], terminal_width=100)
        assert result.exit_code == 0, (path, result.output)
        assert "`" not in result.output, (path, result.output)
        assert "<bool>" not in result.output, (path, result.output)
        # An option's value is named for what it is (DSN, SECONDS, MOVE), not by its Python type.
        assert not re.search(r"--[a-z-]+ +<(str|int|float|list|path)", result.output), (
            path,
            result.output,
        )
        assert "Show this message and exit." in result.output


def test_an_unknown_service_is_one_line_naming_it():
    for command in (["data", "nosuchsvc", "get-children"], ["action", "nosuchsvc", "x", "{}"]):
        result = runner.invoke(rose_cli, command)
        assert result.exit_code == 1
        assert "Traceback" not in result.output
        lines = result.stderr.strip().splitlines()
        assert lines == [
            "error: unknown service 'nosuchsvc'; known services: blog, cart, events, likes, "
            "market, orders, relations"
        ]


def test_a_call_with_nowhere_to_go_says_how_to_give_it_one(tmp_path, monkeypatch):
    """No stack running and no INTERNAL_URL_<SVC>: the error names both ways out, not only
    the variable (a new user's first `rose data` before `rose up`)."""
    monkeypatch.setenv("ROSE_HOME", str(tmp_path))
    monkeypatch.setenv("INTERNAL_SECRET", "x" * 32)
    for service, command in (
        ("relations", ["data", "relations", "get-children", "parent_type=page", "parent_id=1"]),
        ("relations", ["action", "relations", "attach-child", "{}"]),
        ("orders", ["orders", "attention"]),
    ):
        monkeypatch.delenv(f"INTERNAL_URL_{service.upper()}", raising=False)
        result = runner.invoke(rose_cli, command)
        assert result.exit_code == 1, result.output
        assert result.stderr.strip().splitlines() == [
            f"error: {service}: no stack is running (start one with `rose up`) and "
            f"INTERNAL_URL_{service.upper()} is not set"
        ]


@pytest.mark.parametrize(
    "command",
    [
        ["db", "check"],
        ["db", "backup", "{tmp}/backup"],
        ["db", "provision", "--dry-run"],
        ["split", "status"],
        ["split", "verify"],
    ],
)
def test_a_database_that_does_not_answer_is_one_line_not_a_traceback(command, tmp_path) -> None:
    port = free_port()  # nothing listens there
    arguments = [part.replace("{tmp}", str(tmp_path)) for part in command]
    done = subprocess.run(
        [sys.executable, "-m", "ops.cli", *arguments],
        env={**os.environ, "ROSE_ADMIN_URL": f"postgresql://postgres:x@127.0.0.1:{port}/postgres"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    said = done.stdout + done.stderr
    assert done.returncode == 1, said
    assert "Traceback" not in said
    lines = said.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    assert f"127.0.0.1:{port}" in lines[0] or f"port {port}" in lines[0]


def test_a_service_that_does_not_answer_is_one_line(tmp_path) -> None:
    """probe_oncall: `rose data`/`rose orders attention` with the service down printed the
    client's retry warning ("internal call failed after 3 attempt(s): ...") and then the
    error: two lines where the README promises one."""
    port = free_port()  # nothing listens there
    for command in (
        ["data", "relations", "get-children", "parent_type=page", "parent_id=1"],
        ["orders", "attention"],
    ):
        service = command[1] if command[0] == "data" else "orders"
        done = subprocess.run(
            [sys.executable, "-m", "ops.cli", *command],
            env={
                **os.environ,
                "ROSE_HOME": str(tmp_path),
                "INTERNAL_SECRET": "x" * 32,
                f"INTERNAL_URL_{service.upper()}": f"http://127.0.0.1:{port}",
            },
            capture_output=True,
            text=True,
            timeout=60,
        )
        said = done.stdout + done.stderr
        assert done.returncode == 1, said
        lines = said.strip().splitlines()
        assert len(lines) == 1, lines
        assert lines[0].startswith(f"error: {service} "), lines
        assert "unreachable" in lines[0], lines


def test_rose_up_help_names_the_proxied_sites_where_the_proxy_serves_them():
    """Probe newuser: the help sent every public site to http://<svc>.rose.localhost:PORT, but
    blog is on the bare domain (http://rose.localhost:PORT, as the README says)."""
    from ops.stack.proxy import LOCAL_DOMAIN, host_of

    result = runner.invoke(rose_cli, ["up", "--help"], terminal_width=200)
    words = " ".join(result.output.split())
    assert f"http://{host_of('blog', LOCAL_DOMAIN)}:PORT (blog)" in words, words
    assert f"http://{host_of('market', LOCAL_DOMAIN)}:PORT" in words, words


@pytest.mark.parametrize(
    "domain", ["https://rose-ash.com", "rose-ash.com {", "a.com\nreverse_proxy /x attacker:80", ""]
)
def test_caddyfile_refuses_a_domain_that_is_no_host_name(domain):
    """Probe newuser: any text went into every site's address as it was (a URL, a brace, a line
    of Caddyfile of its own), a Caddyfile Caddy refuses or that routes elsewhere."""
    result = runner.invoke(rose_cli, ["caddyfile", "--domain", domain])
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    assert result.stderr.startswith("error: --domain"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_caddyfile_takes_a_host_name():
    result = runner.invoke(rose_cli, ["caddyfile", "--domain", "Shop.Example.org"])
    assert result.exit_code == 0, result.output
    assert "\nmarket.shop.example.org {" in result.stdout

"""``rose outbox``: outbox messages their receiver refused for good, listed and sent again
(ops.db.outbox)."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from ops.cli.common import DatabaseUrlOption, console, fail, topology_of

outbox_app = typer.Typer(
    help="Outbox messages their receiver refused for good (dead): list them, send them again.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

# How much of a payload the table shows (--json gives all of it).
PAYLOAD_SHOWN = 60


def _short(payload: object) -> str:
    text = json.dumps(payload, separators=(",", ":"))
    return text if len(text) <= PAYLOAD_SHOWN else text[: PAYLOAD_SHOWN - 3] + "..."


@outbox_app.command("dead")
def outbox_dead(
    service: Annotated[
        str | None,
        typer.Option(metavar="SERVICE", help="Only this service's outbox."),
    ] = None,
    database_url: DatabaseUrlOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines.")] = False,
) -> None:
    """The dead messages of every outbox: never sent again until a person resends them
    (rose outbox resend) once what they were refused for is put right."""
    from ops.db.outbox import OutboxError, dead, outbox_tables

    try:
        services = [service] if service is not None else list(outbox_tables())
        messages = dead(topology_of(database_url), services)
    except (OutboxError, ValueError) as exc:
        raise fail(str(exc)) from None
    if as_json:
        shown = [{**asdict(m), "dead_at": m.dead_at.isoformat()} for m in messages]
        print(json.dumps(shown, indent=2))
        return
    if not messages:
        console.print(f"no dead outbox messages{f' in {service}' if service else ''}")
        return
    table = Table("service", "id", "call", "dead since (UTC)", "last error", "payload")
    for m in messages:
        table.add_row(
            m.service,
            str(m.id),
            f"{m.target}.{m.action}",
            m.dead_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
            # Text: what the receiver answered is no markup of ours.
            Text(m.last_error or ""),
            Text(_short(m.payload)),
        )
    console.print(table)


@outbox_app.command("resend")
def outbox_resend(
    service: Annotated[
        str, typer.Argument(metavar="SERVICE", help="Whose outbox (a service that has one).")
    ],
    ids: Annotated[
        list[int] | None, typer.Argument(metavar="ID", help="The dead messages' ids.")
    ] = None,
    every: Annotated[
        bool, typer.Option("--all", help="Every dead message of the service's outbox.")
    ] = False,
    database_url: DatabaseUrlOption = None,
) -> None:
    """Make dead messages due again (the relay sends them at its next pass), in one
    transaction: an id that is no message, or no dead one, refuses them all."""
    from ops.db.outbox import OutboxError, resend

    if bool(ids) == every:
        raise fail("name the messages to resend, or --all (not both)")
    try:
        resent = resend(topology_of(database_url), service, None if every else ids)
    except (OutboxError, ValueError) as exc:
        raise fail(str(exc)) from None
    if not resent:
        console.print(f"no dead messages in the outbox of {service}: nothing resent")
        return
    console.print(
        f"resent {len(resent)} of the outbox of {service}, due now: {', '.join(map(str, resent))}"
    )

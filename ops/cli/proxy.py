"""``rose caddyfile``: the production Caddyfile, rendered from ops/deploy/Caddyfile.j2."""

from __future__ import annotations

import re
from typing import Annotated

import typer

from ops.cli.common import fail

# A DNS host name (lower case once read): it becomes every site's address as it is, so a URL,
# a brace or a line of its own made a Caddyfile Caddy refuses, or one that routes elsewhere.
HOST_NAME = re.compile(
    r"(?=.{1,253}\Z)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*\Z"
)


def caddyfile(
    domain: Annotated[
        str,
        typer.Option(metavar="DOMAIN", help="The public domain (blog on it, the rest under it)."),
    ] = ("rose-ash.com"),
) -> None:
    """Print the production Caddyfile (ops/deploy/Caddyfile is this, for compose.yaml)."""
    from ops.stack.proxy import production_caddyfile

    name = domain.lower()
    if not HOST_NAME.match(name):
        raise fail(f"--domain {domain!r} is no host name: give one such as rose-ash.com")
    print(production_caddyfile(name), end="")

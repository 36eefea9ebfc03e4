"""``rose caddyfile``: the production Caddyfile, rendered from ops/deploy/Caddyfile.j2."""

from __future__ import annotations

from typing import Annotated

import typer


def caddyfile(
    domain: Annotated[
        str,
        typer.Option(metavar="DOMAIN", help="The public domain (blog on it, the rest under it)."),
    ] = ("rose-ash.com"),
) -> None:
    """Print the production Caddyfile (ops/deploy/Caddyfile is this, for compose.yaml)."""
    from ops.stack.proxy import production_caddyfile

    print(production_caddyfile(domain), end="")

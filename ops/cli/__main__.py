"""``python -m ops.cli``: the same as the ``rose`` console script."""

from ops.cli.main import main

main()

"""Operating rose-ash, in rooms by concern:

- ``ops.db``: the database tooling (credentials, topology, provisioning, checks, migrations,
  the DBA's sessions) and the one lifecycle that brings the databases to the declared state;
- ``ops.split``: the one-time data migration of the split;
- ``ops.stack``: the local stack (the embedded PostgreSQL, one process per service, ``rose up``,
  Caddy in front with ``--proxy``);
- ``ops.deploy``: the container image, its entrypoint, compose's deploy script, the Caddyfile
  template (package data);
- ``ops.cli``: ``rose``, a thin command-line layer over the rooms.

``ops.paths`` says where things are (``db/`` through the installed package, the operator's
``.rose`` home).
"""

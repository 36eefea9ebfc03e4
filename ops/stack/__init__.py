"""The local stack: the embedded PostgreSQL, one process per service with one readable log,
demo data, and ``rose up``, which puts them together."""

"""The database tooling: who may read and write what (``rose db provision``, ``rose db check``),
migrations, FDW edges, a DBA's sessions, and the lifecycle that brings every database to the
state ``db/`` declares (provision, migrate, provision edges)."""

"""The split: the one-time data migration of the monolith's tables into the new services
(plan, run, verify, finalize, abort, restore; ``rose split``). Its SQL is in ``db/split`` and
``db/legacy``; the night step by step is docs/runbook-split.md."""

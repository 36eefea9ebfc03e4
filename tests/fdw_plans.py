"""Plans of FDW queries as a service's app role runs them: the "Remote SQL" line is the truth."""

from __future__ import annotations

import psycopg


def explain_as_app(server, credentials, service: str, sql: str, params: tuple = ()) -> list[dict]:
    """EXPLAIN (ANALYZE, VERBOSE) as ``<service>_app``: every plan node, flattened."""
    with psycopg.connect(server.topology.app_url(service, credentials)) as connection:
        plan = connection.execute(
            f"EXPLAIN (ANALYZE, VERBOSE, FORMAT JSON) {sql}", params
        ).fetchone()[0]
    nodes = []

    def walk(node: dict) -> None:
        nodes.append(node)
        for child in node.get("Plans", []):
            walk(child)

    walk(plan[0]["Plan"])
    return nodes


def foreign_scans(nodes: list[dict]) -> list[dict]:
    return [node for node in nodes if node["Node Type"] == "Foreign Scan"]

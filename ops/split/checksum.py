"""Order-independent checksums of the split's check views, and the per-range buckets that locate
a difference.

Each check view (``db/split/checksums``) is ``(bucket bigint, row_text text, row_hash bigint)``:
the row the target must hold, as text and as a 64-bit hash of its values (PostgreSQL's
``hash_record_extended``, the hash functions hash partitioning relies on, so stable across servers
and versions, mixed once more by ``hashint8extended``). A side's checksum is the row count, the
``bit_xor`` and the sum of the row hashes: independent of row order, cheap to combine across source
databases (likes come from two), and the sum catches what xor cannot (two equal rows cancel in an
xor). When two sides differ, the bucket range is cut in ``FAN_OUT`` equal parts, the differing
parts are cut again, down to single bucket values or ``MAX_LOCATED`` ranges.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from ops.db.checksums import CURRENT_HASH, ROW_HASHES, Checksum

FAN_OUT = 16
MAX_LOCATED = 10
# Bisection rounds per check at most (each is one query per side).
MAX_QUERIES = 200


@dataclass(frozen=True)
class Located:
    """A range of bucket values whose rows differ between source and target."""

    low: int
    high: int
    source: Checksum
    target: Checksum

    def describe(self, bucket: str) -> str:
        where = (
            f"{bucket} {self.low}" if self.low == self.high else f"{bucket} {self.low}..{self.high}"
        )
        return f"{where} (source {self.source.rows} rows, target {self.target.rows} rows)"


Connections = Sequence[psycopg.Connection[Any]]


def checksum(
    connections: Connections, view: str, method: str = CURRENT_HASH
) -> tuple[Checksum, int | None, int | None]:
    """The checksum of ``view`` over all ``connections`` (the parts of one side), with the
    smallest and largest bucket value; ``method`` names the row hash (a recorded checksum's, to
    compare with it)."""
    query = sql.SQL(
        "SELECT count(*), coalesce(bit_xor(h), 0), coalesce(sum(h), 0), min(bucket), max(bucket) "
        "FROM (SELECT bucket, {hash} AS h FROM {view}) AS hashed"
    ).format(hash=ROW_HASHES[method], view=sql.Identifier(view))
    total = Checksum(method=method)
    low: int | None = None
    high: int | None = None
    # The parts (one per source database) at the same time.
    with ThreadPoolExecutor(max_workers=max(1, len(connections))) as parts:
        results = list(
            parts.map(lambda connection: connection.execute(query).fetchone(), connections)
        )
    for rows, xor, hash_sum, part_low, part_high in results:
        total += Checksum(int(rows), int(xor), int(hash_sum), method)
        if part_low is not None:
            low = part_low if low is None else min(low, part_low)
            high = part_high if high is None else max(high, part_high)
    return total, low, high


def _bucket_checksums(
    connections: Connections, view: str, low: int, high: int, width: int
) -> dict[int, Checksum]:
    query = sql.SQL(
        "SELECT (bucket - %(low)s) / %(width)s AS part, count(*), bit_xor(h), sum(h) "
        "FROM (SELECT bucket, {hash} AS h FROM {view} "
        "      WHERE bucket BETWEEN %(low)s AND %(high)s) AS hashed "
        "GROUP BY 1"
    ).format(hash=ROW_HASHES[CURRENT_HASH], view=sql.Identifier(view))
    parts: dict[int, Checksum] = {}
    for connection in connections:
        for part, rows, xor, hash_sum in connection.execute(
            query, {"low": low, "high": high, "width": width}
        ):
            parts[int(part)] = parts.get(int(part), Checksum()) + Checksum(
                int(rows), int(xor), int(hash_sum)
            )
    return parts


def locate(
    sources: Connections, targets: Connections, view: str, low: int, high: int
) -> list[Located]:
    """Narrow the difference between the two sides down to ranges of bucket values, depth first
    (lowest ranges first), so the first differences are found in a few queries per level."""
    located: list[Located] = []
    pending = [(low, high)]
    queries = 0
    while pending and len(located) < MAX_LOCATED and queries < MAX_QUERIES:
        range_low, range_high = pending.pop()
        width = max(1, -(-(range_high - range_low + 1) // FAN_OUT))
        source_parts = _bucket_checksums(sources, view, range_low, range_high, width)
        target_parts = _bucket_checksums(targets, view, range_low, range_high, width)
        queries += 1
        narrower: list[tuple[int, int]] = []
        for part in sorted(set(source_parts) | set(target_parts)):
            source = source_parts.get(part, Checksum())
            target = target_parts.get(part, Checksum())
            if source == target:
                continue
            part_low = range_low + part * width
            part_high = min(range_high, part_low + width - 1)
            if width == 1:
                located.append(Located(part_low, part_high, source, target))
            else:
                narrower.append((part_low, part_high))
        pending.extend(reversed(narrower))
    return located[:MAX_LOCATED]

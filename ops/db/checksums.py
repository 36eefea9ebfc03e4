"""Order-independent checksums of a table's rows: a row count, the ``bit_xor`` and the sum of
64-bit row hashes. Independent of row order and cheap to combine across databases; the sum catches
what xor cannot (two equal rows cancel in an xor). ``rose split`` compares its check views with
them (ops.split.checksum) and keeps them with finalize's backups; ``rose db backup`` records one
per table, for ``rose db restore`` to verify the rows it put back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from ops.db.connections import one_row

# How a row's hash is computed, by the name a ledger records with each checksum. "record" hashes
# the values without printing them (printing timestamps and numbers was most of the cost of a
# checksum); "md5" (the first 64 bits of the md5 of the row's text) is what ledgers written before
# December 2026 recorded (their entries name no method), still used to compare with them, and
# what finalize's table checksums of whole rows use.
CURRENT_HASH = "record"
MD5_HASH = "md5"
ROW_HASHES = {
    CURRENT_HASH: sql.SQL("row_hash"),
    MD5_HASH: sql.SQL("('x' || left(md5(row_text), 16))::bit(64)::bigint"),
}
UNSIGNED_64 = (1 << 64) - 1


@dataclass(frozen=True)
class Checksum:
    rows: int = 0
    xor: int = 0
    total: int = 0
    # The row hash (a key of ROW_HASHES): checksums of different methods never compare equal.
    method: str = CURRENT_HASH

    def __add__(self, other: Checksum) -> Checksum:
        if self.method != other.method:
            raise ValueError(f"cannot add a {self.method} checksum to a {other.method} one")
        return Checksum(
            self.rows + other.rows, self.xor ^ other.xor, self.total + other.total, self.method
        )

    def __str__(self) -> str:
        return f"{self.rows} rows, xor {self.xor & UNSIGNED_64:016x}, sum {self.total}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "xor": f"{self.xor & UNSIGNED_64:016x}",
            "sum": str(self.total),
            "hash": self.method,
        }

    @classmethod
    def from_dict(cls, entry: dict[str, Any]) -> Checksum:
        """The inverse of :meth:`as_dict` (the xor is a signed bigint in PostgreSQL)."""
        xor = int(entry["xor"], 16)
        if xor >= 1 << 63:
            xor -= 1 << 64
        method = entry.get("hash", MD5_HASH)
        if method not in ROW_HASHES:
            raise ValueError(f"a checksum recorded with an unknown row hash {method!r}")
        return cls(int(entry["rows"]), xor, int(entry["sum"]), method)


# A table's row hash from the row itself (``t`` is the table's row): its text's md5, or its
# values hashed as hash partitioning hashes them (no printing; every column type needs a hash).
TABLE_ROW_HASHES = {
    MD5_HASH: sql.SQL("('x' || left(md5(t::text), 16))::bit(64)::bigint"),
    CURRENT_HASH: sql.SQL("hashint8extended(hash_record_extended(t, 0), 0)"),
}


def table_checksum(
    connection: psycopg.Connection[Any], qualified_name: str, method: str = MD5_HASH
) -> Checksum:
    """The checksum of every row of a table (all columns): what finalize compares between a
    backup's snapshot and the rows it drops (the text's md5), and what ``rose db backup``
    records for ``rose db restore`` to compare (the values' hash where the types allow it)."""
    query = sql.SQL(
        "SELECT count(*), coalesce(bit_xor(h), 0), coalesce(sum(h), 0) "
        "FROM (SELECT {hash} AS h FROM {table} AS t) AS x"
    ).format(hash=TABLE_ROW_HASHES[method], table=sql.Identifier(*qualified_name.split(".")))
    rows, xor, total = one_row(connection, query)
    return Checksum(int(rows), int(xor), int(total), method)

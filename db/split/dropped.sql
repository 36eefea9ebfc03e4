-- Where `rose split finalize` records each legacy table it drops, in the table's own database
-- (db_cart, db_market, db_blog), in the same transaction as the DROP: the record exists if and
-- only if the drop committed. The target ledgers (ledger.sql) are confirmed from these records.
--
-- Run as a superuser connected to a source database (idempotent):
--   psql -d db_market -v owner=market_owner -f db/split/dropped.sql

-- Owned by the database's owner, granted to nobody (as the ledger; `rose db check` reports a
-- grant here as drift).
-- Two `rose split` at once would both try to create what is missing (a duplicate key in the
-- catalog): one at a time.
SELECT pg_advisory_lock(hashtext('rose split schema'));
CREATE SCHEMA IF NOT EXISTS split AUTHORIZATION :"owner";
REVOKE ALL ON SCHEMA split FROM PUBLIC;
SET ROLE :"owner";

CREATE TABLE IF NOT EXISTS split.dropped (
    source_table text PRIMARY KEY,
    -- The move that moved its rows.
    move         text NOT NULL,
    dropped_at   timestamptz NOT NULL,
    dropped_by   text NOT NULL,
    -- What was dropped, and where its rows are: the row count and checksum under finalize's
    -- locks (equal to those of the backup's snapshot), the pg_dump archive and its sha256.
    rows         bigint NOT NULL,
    checksum     text NOT NULL,
    backup_file  text NOT NULL,
    backup_sha256 text NOT NULL
);

RESET ROLE;
SELECT pg_advisory_unlock(hashtext('rose split schema'));

-- The split's ledger in one target database (db_relations, db_likes, db_blog, db_orders): one
-- row per move that writes into this database. `rose split finalize` keeps it.
--
-- Run as a superuser connected to the target database (idempotent):
--   psql -d db_likes -v owner=likes_owner -v version=by-hand -f db/split/ledger.sql
-- `version` is stored as the ledger's comment: `rose split` passes a hash of this file and skips
-- the file while the comment matches it (its ~20 statements took locks on every run).

-- Owned by the database's owner; no privileges for anyone else (`rose db check` reports any
-- grant here as drift). Only a superuser running `rose split` reads or writes it.
-- Two `rose split` at once would both try to create what is missing (a duplicate key in the
-- catalog): one at a time.
SELECT pg_advisory_lock(hashtext('rose split schema'));
CREATE SCHEMA IF NOT EXISTS split AUTHORIZATION :"owner";
REVOKE ALL ON SCHEMA split FROM PUBLIC;
SET ROLE :"owner";

CREATE TABLE IF NOT EXISTS split.ledger (
    move           text PRIMARY KEY,
    -- How many runs started the move, and when the last one started. A row with started_at and
    -- no finished_at is a run that did not finish (crashed or failed): nothing of it is in the
    -- target, and the next run starts the move again.
    runs           integer NOT NULL DEFAULT 0,
    started_at     timestamptz,
    -- Set in the move's own transaction, with the moved rows: the move is done.
    finished_at    timestamptz,
    seconds        numeric(10, 3),
    -- Accounting of the source rows: source_rows = moved_rows + collapsed_rows + skipped_rows.
    source_rows    bigint,
    moved_rows     bigint,
    collapsed_rows bigint,
    skipped_rows   bigint,
    -- Every source row not moved as it was, by outcome and reason, with its id:
    -- {"skipped": {"<reason>": {"count": n, "rows": {"<legacy table>": [id, ...]}}},
    --  "collapsed": {...}, "moved": {...notes on rows moved with a change...}}
    reasons        jsonb,
    -- Rows inserted per target table: {"orders.orders": n, ...}.
    inserted       jsonb,
    -- Checksums of the target tables right after the move (count, bit_xor and sum of per-row
    -- hashes, under fixed session settings).
    checksum       text,
    -- The last `rose split verify`: verified_at is set only when it found no difference.
    verified_at    timestamptz,
    verification   jsonb,
    -- Set when `rose split finalize` has dropped every source table the move owns (confirmed
    -- from the records split.dropped in the source databases; see drop_sources.sql).
    finalized_at   timestamptz
);

-- Added after the first nights (a ledger made by an earlier version gets them here).
-- Who did what, as "<os user>@<host>".
ALTER TABLE split.ledger ADD COLUMN IF NOT EXISTS run_by text;
ALTER TABLE split.ledger ADD COLUMN IF NOT EXISTS verified_by text;
ALTER TABLE split.ledger ADD COLUMN IF NOT EXISTS finalized_by text;
-- The checksums of the target when the move committed, per check view:
-- {"<check>": {"target_table": ..., "rows": n, "xor": "<hex>", "sum": "<n>"}}; `verify` after
-- finalize compares the targets with them.
ALTER TABLE split.ledger ADD COLUMN IF NOT EXISTS checksums jsonb;
-- The ids the move inserted, per target table, as a multirange: {"likes.likes": "{[1,86749)}"}.
-- `abort` deletes exactly these rows; `verify` after finalize checks each is still there.
ALTER TABLE split.ledger ADD COLUMN IF NOT EXISTS inserted_ids jsonb;
-- Finalize's intent, committed before it drops anything: when, by whom, and the backups it
-- took ({"<database>": {"file": ..., "bytes": n, "sha256": ..., "tables": {...}}}). A ledger
-- with finalizing_at and no finalized_at is a finalize that did not confirm: the records in the
-- source databases (split.dropped) say what was dropped; the next finalize completes it.
ALTER TABLE split.ledger ADD COLUMN IF NOT EXISTS finalizing_at timestamptz;
ALTER TABLE split.ledger ADD COLUMN IF NOT EXISTS backups jsonb;
-- `rose split abort`: the move's target rows were deleted and its freeze lifted; `run` moves
-- it again from scratch.
ALTER TABLE split.ledger ADD COLUMN IF NOT EXISTS aborted_at timestamptz;
ALTER TABLE split.ledger ADD COLUMN IF NOT EXISTS aborted_by text;

-- `rose split sync` (the online split): when the sync of the move started (its capture was
-- installed), when its snapshot committed, and the write pause its cutover caused (seconds from
-- the freeze to the verified end of the cutover).
ALTER TABLE split.ledger ADD COLUMN IF NOT EXISTS sync_started_at timestamptz;
ALTER TABLE split.ledger ADD COLUMN IF NOT EXISTS snapshot_at timestamptz;
ALTER TABLE split.ledger ADD COLUMN IF NOT EXISTS write_pause numeric(10, 3);
-- The check definitions of the release that took the sync's snapshot, per check view:
-- {"<check>": n}. Its cutover refuses, before it freezes anything, a snapshot taken with other
-- definitions (or none recorded: a release before this column), which moved rows otherwise.
ALTER TABLE split.ledger ADD COLUMN IF NOT EXISTS sync_definitions jsonb;

-- What the sync has applied, committed with the applied rows: every synced source row's group
-- key and outcome (the cutover's accounting; which target rows a key moved) ...
CREATE TABLE IF NOT EXISTS split.sync_outcome (
    move         text NOT NULL,
    source_table text NOT NULL,
    source_id    bigint NOT NULL,
    key          jsonb NOT NULL,
    outcome      text NOT NULL,
    reason       text,
    PRIMARY KEY (move, source_table, source_id)
);
CREATE INDEX IF NOT EXISTS sync_outcome_key ON split.sync_outcome (move, source_table, key);
-- ... and, per source database, the last change applied (for the lag; the change rows
-- themselves are deleted from the source once applied, and applying one again is harmless).
CREATE TABLE IF NOT EXISTS split.sync_position (
    move            text NOT NULL,
    source_database text NOT NULL,
    applied_through bigint NOT NULL DEFAULT 0,
    applied_changes bigint NOT NULL DEFAULT 0,
    rounds          bigint NOT NULL DEFAULT 0,
    applied_at      timestamptz,
    PRIMARY KEY (move, source_database)
);

COMMENT ON TABLE split.ledger IS :'version';

RESET ROLE;
SELECT pg_advisory_unlock(hashtext('rose split schema'));

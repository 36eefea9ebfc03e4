-- Freeze the legacy tables a move reads, in their source database: any INSERT, UPDATE, DELETE or
-- TRUNCATE fails with SQLSTATE 25006 (read_only_sql_transaction) naming the move. The monolith
-- must not write while its rows are copied; after the split the tables are only history.
--
-- Run as a superuser connected to the source database (idempotent; in ONE transaction, so the
-- tables are all frozen or none is):
--   psql -1 -d db_cart -v owner=cart_owner -v move=orders -v tables=orders,order_items \
--        -v lock_timeout=10s -f db/split/freeze.sql
-- `rose split run` runs it (in one transaction per source database) before copying; `rose split
-- abort` lifts it (unfreeze.sql); `rose split finalize` drops the moved tables and these
-- triggers with them, and lifts it from the tables it keeps.

-- Wait at most this long for writers that hold a table (creating a trigger waits for them);
-- queueing every other query behind a long wait would stall the monolith instead.
SELECT set_config('lock_timeout', :'lock_timeout', true);
-- One freeze or unfreeze at a time per database: two runs at once would otherwise replace the
-- freeze function concurrently ("tuple concurrently updated").
SELECT pg_advisory_xact_lock(hashtext('rose split freeze'));
SET LOCAL ROLE :"owner";

CREATE OR REPLACE FUNCTION legacy.split_refuse_write() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '%.% is frozen by the rose-ash split (move %)',
        TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_ARGV[0]
        USING ERRCODE = 'read_only_sql_transaction',
              HINT = 'Its rows are moving to their new service, which takes the writes now.';
END
$$;

-- One statement-level trigger per table and move (a table read by two moves has two).
SELECT format(
    'CREATE OR REPLACE TRIGGER %I BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON legacy.%I '
    'FOR EACH STATEMENT EXECUTE FUNCTION legacy.split_refuse_write(%L)',
    'split_freeze_' || :'move', source_table, :'move')
FROM unnest(string_to_array(:'tables', ',')) AS source_table \gexec

RESET ROLE;

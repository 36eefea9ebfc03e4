-- Change capture of one legacy table for one move (`rose split sync`), in its source database:
-- every INSERT, UPDATE and DELETE of the table writes the GROUP KEY of the changed row (the
-- key the move's transform groups rows by: likes by user and product, relations by parent and
-- child, orders by order id...) into the move's change table, in the writer's own transaction:
-- a change is captured exactly when it commits, and a crash loses neither. The sync re-runs
-- the move's transform for every captured key from the source rows as they are then, so a key
-- captured twice (or a change already in the snapshot) is applied twice harmlessly.
--
-- Run as a superuser connected to the source database (idempotent; one transaction):
--   psql -1 -d db_market -v owner=market_owner -v move=likes -v table=product_likes \
--        -v key_new='jsonb_build_array(NEW.user_id, NEW.product_id)' \
--        -v key_old='jsonb_build_array(OLD.user_id, OLD.product_id)' \
--        -v update_when='to_jsonb(OLD) IS DISTINCT FROM to_jsonb(NEW)' \
--        -v lock_timeout=10s -f db/split/capture.sql
-- `rose split sync` runs it for every source table of the move (lookups the transform reads
-- included, when their changes change the move's result); `rose split cutover`, `abort` and
-- `finalize` remove it (uncapture.sql). `rose db check` names a leftover one as drift.
--
-- Who writes: the monolith's app is an ordinary login role (DML grants on the legacy tables,
-- neither a superuser nor their owner), and schema split_capture stays closed to it and to
-- PUBLIC. So the trigger functions are SECURITY DEFINER, owned by :owner (the owner of the
-- legacy tables and of the change tables): the change row is written with the owner's rights,
-- whoever wrote the source row. A fixed search_path (pg_catalog only; every name of ours is
-- schema-qualified) keeps a writer's objects out of them, and EXECUTE is revoked from PUBLIC:
-- PostgreSQL checks EXECUTE on a trigger function only when a trigger is created, not when it
-- fires, so no writer needs it.

SELECT set_config('lock_timeout', :'lock_timeout', true);
SELECT pg_advisory_xact_lock(hashtext('rose split freeze'));
CREATE SCHEMA IF NOT EXISTS split_capture AUTHORIZATION :"owner";
REVOKE ALL ON SCHEMA split_capture FROM PUBLIC;
SET LOCAL ROLE :"owner";

-- One change table per move: which table changed, the group key, when (for the lag).
SELECT format(
    'CREATE TABLE IF NOT EXISTS split_capture.%I ('
    ' id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,'
    ' source_table text NOT NULL,'
    ' key jsonb NOT NULL,'
    ' captured_at timestamptz NOT NULL DEFAULT clock_timestamp())', :'move') \gexec

-- The row trigger's function: the key of the new row, of the old one, or both when an update
-- moved the row to another group.
SELECT format($fn$
CREATE OR REPLACE FUNCTION split_capture.%1$I() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $body$
DECLARE
    new_key jsonb;
    old_key jsonb;
BEGIN
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        new_key := %3$s;
        INSERT INTO split_capture.%2$I (source_table, key) VALUES (TG_TABLE_NAME, new_key);
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        old_key := %4$s;
        IF new_key IS DISTINCT FROM old_key THEN
            INSERT INTO split_capture.%2$I (source_table, key) VALUES (TG_TABLE_NAME, old_key);
        END IF;
    END IF;
    RETURN NULL;
END
$body$
$fn$, :'move' || '__' || :'table', :'move', :'key_new', :'key_old') \gexec

SELECT format('REVOKE ALL ON FUNCTION split_capture.%I() FROM PUBLIC',
              :'move' || '__' || :'table') \gexec

SELECT format(
    'CREATE OR REPLACE TRIGGER %I AFTER INSERT OR DELETE ON legacy.%I '
    'FOR EACH ROW EXECUTE FUNCTION split_capture.%I()',
    'split_capture_' || :'move', :'table', :'move' || '__' || :'table') \gexec

-- An update only when it changes what the move reads (:update_when, over OLD and NEW: the
-- columns that matter for a lookup, the whole row otherwise): an update that changes nothing
-- the move uses is not captured.
SELECT format(
    'CREATE OR REPLACE TRIGGER %I AFTER UPDATE ON legacy.%I '
    'FOR EACH ROW WHEN (%s) EXECUTE FUNCTION split_capture.%I()',
    'split_capture_update_' || :'move', :'table', :'update_when',
    :'move' || '__' || :'table') \gexec

-- TRUNCATE writes no row changes: refused while the move syncs.
CREATE OR REPLACE FUNCTION split_capture.refuse_truncate() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    RAISE EXCEPTION '%.% is being synced by the rose-ash split (move %): TRUNCATE is refused',
        TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_ARGV[0]
        USING ERRCODE = 'read_only_sql_transaction';
END
$$;
REVOKE ALL ON FUNCTION split_capture.refuse_truncate() FROM PUBLIC;

SELECT format(
    'CREATE OR REPLACE TRIGGER %I BEFORE TRUNCATE ON legacy.%I '
    'FOR EACH STATEMENT EXECUTE FUNCTION split_capture.refuse_truncate(%L)',
    'split_capture_truncate_' || :'move', :'table', :'move') \gexec

RESET ROLE;

-- The temporary tables every move writes what it decided into, in the move's transaction in the
-- target database (`rose split run` and `rose split plan` create them before the move's file).
-- Dropped at the end of the transaction.

-- One row per staged source row of a moved table (lookup tables such as legacy.products have
-- none): moved, collapsed into another row, or skipped, with the reason. `rose split` checks
-- that every staged row has exactly one (no row left out, none classified twice: counted, which
-- is cheaper than a primary key on 100,000 rows).
CREATE TEMP TABLE split_outcome (
    source_table text NOT NULL,
    source_id    bigint NOT NULL,
    outcome      text NOT NULL CHECK (outcome IN ('moved', 'collapsed', 'skipped')),
    -- Required unless moved unchanged; on a moved row it notes what changed on the way.
    reason       text,
    CHECK (outcome = 'moved' OR reason IS NOT NULL)
) ON COMMIT DROP;

-- Every staged row's outcome, as `rose split` reads them: split_outcome, unless the move's file
-- replaces this view to add rows it moved unchanged without writing an outcome row for each
-- (likes: its keepers, ~87,000 rows at scale 10). Dropped with split_outcome at the commit.
CREATE TEMP VIEW split_outcomes AS
SELECT source_table, source_id, outcome, reason FROM split_outcome;

-- What the classification plans to insert into each target table ...
CREATE TEMP TABLE split_planned (
    target_table text PRIMARY KEY,
    planned      bigint NOT NULL
) ON COMMIT DROP;

-- ... and what the apply part wanted to insert and did insert, with the ids of the inserted rows
-- (as ranges: `abort` deletes exactly these rows, and `verify` after finalize checks that every
-- one of them is still there). `rose split run` refuses to commit unless planned = wanted =
-- inserted for every target table. The inserts have no ON CONFLICT: a row the target already
-- holds under a unique key the classification did not look at fails the insert, and the move
-- is refused with the key named (nothing committed).
CREATE TEMP TABLE split_inserted (
    target_table text PRIMARY KEY,
    wanted       bigint NOT NULL,
    inserted     bigint NOT NULL,
    ids          int8multirange
) ON COMMIT DROP;

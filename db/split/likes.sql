-- Move `likes`: db_market legacy.product_likes + db_blog legacy.post_likes -> db_likes likes.likes
--
-- Runs in db_likes, in the move's one transaction, as likes_owner, after `rose split run` has
-- copied into temporary tables (legacy columns and types, unchanged):
--   stage_product_likes, stage_products   from db_market
--   stage_post_likes, stage_posts         from db_blog
-- Parts: setup, `-- split:classify` (temporary tables only; `rose split plan` runs it read-only),
-- `-- split:apply` (writes the target). See relations.sql for the conventions.
--
-- The unified table names a product by slug (target_type 'product', target_slug) and a post by
-- id (target_type 'post', target_id), and holds one row per user and target. The monolith kept
-- several rows for one user and target (liking again inserted a new row); they collapse into one:
--   active if any of them is active (deleted_at NULL), else deleted at the latest deleted_at;
--   created_at the earliest, updated_at the latest.
-- The collapsed rows are listed in the ledger; the earliest row (by created_at, then id) is the
-- one counted as moved. Ids are new (two source tables, overlapping ids).
-- Orphans: a like of a product or post that no longer exists has no slug or target to point at:
-- skipped, and listed in the ledger with its id and reason.

-- Every staged like, classified: the first row of each user and target (by created_at, then
-- id) with the collapsed values of its rows, the others with their ids only. Their outcomes
-- are derived from it by split_outcomes: one pass over the likes writes one table (writing the
-- collapsed and skipped rows to split_outcome too cost a second pass and a second insert).
CREATE TEMP TABLE split_like_targets (
    source_table text NOT NULL,
    source_id    bigint NOT NULL,
    -- The first row of its user and target, which is inserted unless it is skipped.
    moved        boolean NOT NULL,
    user_id      bigint NOT NULL,
    target_type  text NOT NULL,
    -- The product's or post's legacy id; NULL when it is gone.
    target_key   bigint,
    in_target    boolean NOT NULL,
    -- Of a moved row only: the collapsed values likes.likes gets.
    target_slug  text,
    target_id    bigint,
    created_at   timestamptz,
    updated_at   timestamptz,
    deleted_at   timestamptz
) ON COMMIT DROP;

CREATE OR REPLACE TEMP VIEW split_outcomes AS
SELECT source_table, source_id, outcome, reason FROM split_outcome
UNION ALL
SELECT source_table, source_id,
       CASE WHEN moved THEN 'moved'
            WHEN target_key IS NULL OR in_target THEN 'skipped'
            ELSE 'collapsed' END,
       CASE
           WHEN moved THEN NULL
           WHEN target_key IS NULL AND target_type = 'product' THEN 'the product no longer exists'
           WHEN target_key IS NULL THEN 'the post no longer exists'
           WHEN in_target THEN 'already in the target'
           ELSE 'a duplicate like of the same target by the same user (merged into one)'
       END
FROM split_like_targets;

-- split:classify

-- One pass over the staged likes: each row with its target (NULL when the product or post is
-- gone), whether it is the first of its user and target (by created_at, then id), and for that
-- one the collapsed values of those rows, into split_like_targets; the planned count into
-- split_planned, from the same scan.
WITH unified AS (
    SELECT 'product_likes' AS source_table, l.id, l.user_id, 'product' AS target_type,
           p.slug::text AS target_slug, NULL::bigint AS target_id, p.id::bigint AS target_key,
           l.created_at, l.updated_at, l.deleted_at
    FROM stage_product_likes AS l
    LEFT JOIN stage_products AS p ON p.id = l.product_id
    UNION ALL
    SELECT 'post_likes', l.id, l.user_id, 'post', NULL, l.post_id, p.id::bigint,
           l.created_at, l.updated_at, l.deleted_at
    FROM stage_post_likes AS l
    LEFT JOIN stage_posts AS p ON p.id = l.post_id
),
ranked AS (
    SELECT u.*,
           row_number() OVER same_target AS rank,
           min(u.created_at) OVER same_target AS first_created_at,
           max(u.updated_at) OVER same_target AS last_updated_at,
           CASE WHEN bool_or(u.deleted_at IS NULL) OVER same_target THEN NULL
                ELSE max(u.deleted_at) OVER same_target END AS collapsed_deleted_at,
           -- A user and target the target table already holds (its unique keys); not looked for
           -- row by row when the table is empty (the usual case).
           (SELECT EXISTS (SELECT FROM likes.likes)) AND EXISTS (
               SELECT FROM likes.likes AS existing
               WHERE existing.user_id = u.user_id AND existing.target_type = u.target_type
                 AND (existing.target_slug = u.target_slug OR existing.target_id = u.target_id)
           ) AS in_target
    FROM unified AS u
    -- One window for the rank and the collapsed values (row_number ignores the frame; the
    -- aggregates see the whole partition): one WindowAgg over one sort. Partitioned by the
    -- target's own key (a product's slug is unique among the legacy products; a post's id),
    -- the order of likes.likes' unique indexes: the rows are inserted in it, and the index
    -- builds after the insert find them nearly sorted (a user's likes of products that are
    -- gone share one partition: they are skipped whatever their rank).
    WINDOW same_target AS (
               PARTITION BY u.user_id, u.target_type, u.target_slug, u.target_id
               ORDER BY u.created_at, u.id
               ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
),
decided AS (
    SELECT *, rank = 1 AND target_key IS NOT NULL AND NOT in_target AS moved FROM ranked
),
classified AS (
    INSERT INTO split_like_targets
    SELECT source_table, id, moved, user_id, target_type, target_key, in_target,
           CASE WHEN moved THEN target_slug END, CASE WHEN moved THEN target_id END,
           CASE WHEN moved THEN first_created_at AT TIME ZONE 'UTC' END,
           CASE WHEN moved THEN last_updated_at AT TIME ZONE 'UTC' END,
           CASE WHEN moved THEN collapsed_deleted_at AT TIME ZONE 'UTC' END
    FROM decided
    RETURNING moved
)
INSERT INTO split_planned (target_table, planned)
SELECT 'likes.likes', count(*) FILTER (WHERE moved) FROM classified;

-- split:apply

-- In the order split_like_targets was filled (user, target: the window's order), without
-- sorting again; `rose split run` builds the indexes of an empty likes.likes afterwards. No
-- ON CONFLICT: a row the target holds under one of its unique keys fails the move, which
-- `rose split run` reports with the key (speculative insertion would cost twice the insert).
-- The new ids come from the identity in one statement: a single range unless someone else
-- inserted meanwhile, when they are listed one by one.
WITH inserted AS (
    INSERT INTO likes.likes
        (user_id, target_type, target_slug, target_id, created_at, updated_at, deleted_at)
    SELECT user_id, target_type, target_slug, target_id, created_at, updated_at, deleted_at
    FROM split_like_targets
    WHERE moved
    RETURNING id
),
span AS (
    SELECT count(*) AS rows, min(id) AS low, max(id) AS high FROM inserted
)
INSERT INTO split_inserted (target_table, wanted, inserted, ids)
SELECT 'likes.likes', (SELECT count(*) FROM split_like_targets WHERE moved), span.rows,
       CASE
           WHEN span.rows = 0 THEN '{}'::int8multirange
           WHEN span.high - span.low + 1 = span.rows
               THEN int8multirange(int8range(span.low, span.high, '[]'))
           ELSE (SELECT range_agg(int8range(id, id, '[]')) FROM inserted)
       END
FROM span;

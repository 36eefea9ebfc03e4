-- Move `cart`: db_cart legacy.cart_items -> db_cart cart.cart_items (the new cart's one table)
--
-- Runs in db_cart, in the move's one transaction, as cart_owner, after `rose split run` has
-- copied into temporary tables (legacy columns and types, unchanged):
--   stage_cart_items   from db_cart
--   stage_products     from db_market (looked up: does the product exist, is it withdrawn)
-- Parts: setup, `-- split:classify` (temporary tables only; `rose split plan` runs it read-only),
-- `-- split:apply` (writes the target). See relations.sql for the conventions.
--
-- Lines keep their ids, removed lines (deleted_at) included as history. The target allows one
-- live line per user and product (user_id set) and per anonymous session and product (user_id
-- NULL), quantities 1 or more, and needs an owner and a page. What each quirk becomes:
--   already in the target (same id)         skipped, listed
--   neither user nor session                skipped: nobody could ever see the line
--   the product no longer exists            skipped: nothing to show or sell (a withdrawn
--                                           product is another case, below)
--   no page recorded                        skipped: the new cart groups and checks out by page
--   quantity 0 (or less)                    skipped: the shopper emptied it; the target wants > 0
--   a second live line of one product in    collapsed into the earliest live line (by created_at,
--   one cart (user, or anonymous session)   then id), which gets the quantities added up and the
--                                           latest updated_at, as the cart's own add does
--   quantity above 99 (the cart's maximum)  moved as 99 (also after adding duplicates), noted
--   the product is withdrawn                moved, noted: the cart shows it as no longer sold
--   anonymous lines                         moved with their session: sign-in adopts them
-- Every skipped or collapsed line is listed in the ledger with its id and reason.
--
-- The insert names its columns: columns the cart adds later (nullable) are left to their default.

CREATE TEMP TABLE split_cart_lines (
    id          bigint PRIMARY KEY,
    skip_reason text,
    -- The live line this one collapses into (itself for the kept line); NULL when skipped or
    -- removed (removed lines move as they are).
    keeper_id   bigint,
    quantity    integer,
    updated_at  timestamp,
    note        text
) ON COMMIT DROP;

-- split:classify

WITH judged AS (
    SELECT c.id, c.user_id, c.session_id, c.product_id, c.quantity, c.created_at,
           c.updated_at, c.deleted_at,
           CASE
               WHEN EXISTS (SELECT FROM cart.cart_items AS existing WHERE existing.id = c.id)
                   THEN 'already in the target'
               WHEN c.user_id IS NULL AND nullif(c.session_id, '') IS NULL
                   THEN 'neither user nor session: nobody owns the line'
               WHEN p.id IS NULL THEN 'the product no longer exists'
               WHEN c.market_place_container_id IS NULL
                   THEN 'no page recorded: the cart groups lines by the page they were added on'
               WHEN c.quantity <= 0
                   THEN 'quantity 0: the shopper emptied the line (the cart wants 1 or more)'
           END AS skip_reason,
           p.deleted_at IS NOT NULL AS withdrawn
    FROM stage_cart_items AS c
    LEFT JOIN stage_products AS p ON p.id = c.product_id
),
grouped AS (
    SELECT judged.*,
           CASE WHEN skip_reason IS NULL AND deleted_at IS NULL THEN
               first_value(id) OVER owner_product
           END AS keeper_id,
           CASE WHEN skip_reason IS NULL AND deleted_at IS NULL THEN
               sum(quantity) OVER owner_product
           END AS live_quantity,
           CASE WHEN skip_reason IS NULL AND deleted_at IS NULL THEN
               max(updated_at) OVER owner_product
           END AS live_updated_at
    FROM judged
    WINDOW owner_product AS (
        PARTITION BY skip_reason IS NULL AND deleted_at IS NULL,
                     user_id, CASE WHEN user_id IS NULL THEN session_id END, product_id
        ORDER BY created_at, id
        ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING
    )
)
INSERT INTO split_cart_lines (id, skip_reason, keeper_id, quantity, updated_at, note)
SELECT id, skip_reason, keeper_id,
       least(coalesce(live_quantity, quantity), 99),
       coalesce(live_updated_at, updated_at),
       nullif(concat_ws('; ',
           CASE WHEN keeper_id = id AND live_quantity > quantity
                THEN 'a second live line of the product: quantities added up' END,
           CASE WHEN coalesce(live_quantity, quantity) > 99
                THEN 'quantity above 99 (the cart''s maximum): moved as 99' END,
           CASE WHEN withdrawn THEN 'the product is withdrawn: the cart shows it as no longer sold'
           END
       ), '')
FROM grouped;

INSERT INTO split_outcome (source_table, source_id, outcome, reason)
SELECT 'cart_items', id,
       CASE
           WHEN skip_reason IS NOT NULL THEN 'skipped'
           WHEN keeper_id IS NOT NULL AND keeper_id <> id THEN 'collapsed'
           ELSE 'moved'
       END,
       CASE
           WHEN skip_reason IS NOT NULL THEN skip_reason
           WHEN keeper_id IS NOT NULL AND keeper_id <> id
               THEN 'a second live line of the same product in one cart (added to the earliest)'
           ELSE note
       END
FROM split_cart_lines;

INSERT INTO split_planned (target_table, planned)
SELECT 'cart.cart_items', count(*)
FROM split_cart_lines
WHERE skip_reason IS NULL AND (keeper_id IS NULL OR keeper_id = id);

-- split:apply

WITH wanted AS (
    SELECT c.id, c.user_id, c.session_id, c.product_id, lines.quantity,
           c.market_place_container_id, c.created_at, lines.updated_at, c.deleted_at
    FROM stage_cart_items AS c
    JOIN split_cart_lines AS lines ON lines.id = c.id
    WHERE lines.skip_reason IS NULL AND (lines.keeper_id IS NULL OR lines.keeper_id = lines.id)
),
inserted AS (
    INSERT INTO cart.cart_items
        (id, user_id, session_id, product_id, quantity, market_place_container_id,
         created_at, updated_at, deleted_at)
    SELECT id, user_id, nullif(session_id, ''), product_id, quantity,
           market_place_container_id, created_at AT TIME ZONE 'UTC',
           updated_at AT TIME ZONE 'UTC', deleted_at AT TIME ZONE 'UTC'
    FROM wanted
    ORDER BY id
    RETURNING id
)
INSERT INTO split_inserted (target_table, wanted, inserted, ids)
SELECT 'cart.cart_items', (SELECT count(*) FROM wanted),
       (SELECT count(*) FROM inserted),
       (SELECT range_agg(int8range(id, id, '[]')) FROM inserted);

-- Past the largest id, never backwards (see relations.sql).
SELECT setval(
    pg_get_serial_sequence('cart.cart_items', 'id'),
    greatest(
        max(id) + 1,
        coalesce(pg_sequence_last_value(
            pg_get_serial_sequence('cart.cart_items', 'id')::regclass) + 1, 1)),
    false)
FROM cart.cart_items
HAVING max(id) IS NOT NULL;

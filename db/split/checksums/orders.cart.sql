-- Checksum views of move `orders`, source side (db_cart). Conventions in relations.cart.sql.
-- Re-derived from the legacy rows, by the rules in db/split/orders.sql (statuses,
-- descriptions, the merchant snapshot, the payment attempt), so a wrong transform shows up as a
-- difference. Rows the ledger lists as skipped are left out (those the target already held are
-- kept: they must match).

CREATE TEMP TABLE IF NOT EXISTS split_listed (
    source_table text NOT NULL,
    source_id    bigint NOT NULL,
    outcome      text NOT NULL,
    reason       text NOT NULL
);

-- Each moved order with its target status and merchant snapshot.
CREATE OR REPLACE TEMP VIEW split_moved_orders AS
SELECT o.*,
       CASE
           WHEN o.status IN ('paid', 'cancelled') THEN o.status
           -- Nothing to pay, no checkout, never paid: cancelled (see orders.sql).
           WHEN o.total_amount = 0 AND o.sumup_checkout_id IS NULL THEN 'cancelled'
           ELSE 'pending'
       END AS target_status,
       -- Expired and cancelled: open, so orders asks SumUp (see orders.sql).
       CASE o.status
           WHEN 'paid' THEN 'PAID'
           WHEN 'failed' THEN 'FAILED'
           ELSE 'PENDING'
       END AS attempt_status,
       -- Definitions 1 and 2 of the attempts' view: expired and cancelled were EXPIRED.
       CASE o.status
           WHEN 'pending' THEN 'PENDING'
           WHEN 'paid' THEN 'PAID'
           WHEN 'failed' THEN 'FAILED'
           ELSE 'EXPIRED'
       END AS attempt_status_v2,
       chosen.id AS target_page_config_id,
       chosen.sumup_merchant_code AS target_merchant_code,
       -- (No merchant: a free order's three are NULL; orders.sql skips any other.)
       CASE WHEN chosen.id IS NOT NULL THEN coalesce(chosen.sumup_checkout_prefix, 'rose-') END
           AS target_checkout_prefix
FROM legacy.orders AS o
LEFT JOIN LATERAL (
    SELECT c.id, c.sumup_merchant_code, c.sumup_checkout_prefix
    FROM legacy.page_configs AS c
    WHERE c.sumup_merchant_code IS NOT NULL
      AND (c.id = o.page_config_id
           OR (c.deleted_at IS NULL AND c.container_type = 'page'
               AND c.container_id = o.page_post_id)
           OR (c.deleted_at IS NULL AND c.container_type = 'site' AND c.container_id = 0))
    ORDER BY CASE
                 WHEN c.id = o.page_config_id THEN 1
                 WHEN c.container_type = 'page' THEN 2
                 ELSE 3
             END
    LIMIT 1
) AS chosen ON true
WHERE NOT EXISTS (
    SELECT FROM split_listed AS listed
    WHERE listed.source_table = 'orders' AND listed.source_id = o.id
      AND listed.outcome <> 'moved' AND listed.reason <> 'already in the target'
);

-- Definition 2 (ops/split/moves.py `Check.definition`): with payable_until, a pending
-- order's deadline: its legacy updated_at + the orders service's default window (1800 s).
CREATE OR REPLACE TEMP VIEW split_check_orders AS
SELECT bucket, row_value::text AS row_text,
       hashint8extended(hash_record_extended(row_value, 0), 0) AS row_hash
FROM (
    SELECT o.id::bigint AS bucket,
           row(o.id, o.user_id, o.session_id, o.page_post_id, o.target_status, o.currency,
               o.product_total, o.calendar_total, o.ticket_total, o.total_amount,
               left(coalesce(nullif(o.description, ''), 'rose-ash order #' || o.id), 255),
               o.target_page_config_id, o.target_merchant_code, o.target_checkout_prefix,
               false, NULL::text,
               CASE WHEN o.status = 'paid' THEN o.updated_at AT TIME ZONE 'UTC' END,
               CASE WHEN o.target_status = 'pending'
                    THEN o.updated_at AT TIME ZONE 'UTC' + interval '1800 seconds' END,
               o.created_at AT TIME ZONE 'UTC', o.updated_at AT TIME ZONE 'UTC') AS row_value
    FROM split_moved_orders AS o
) AS checked;

-- Definition 1, without payable_until (see orders.target.sql). Keep it as it is.
CREATE OR REPLACE TEMP VIEW split_check_orders_v1 AS
SELECT bucket, row_value::text AS row_text,
       hashint8extended(hash_record_extended(row_value, 0), 0) AS row_hash
FROM (
    SELECT o.id::bigint AS bucket,
           row(o.id, o.user_id, o.session_id, o.page_post_id, o.target_status, o.currency,
               o.product_total, o.calendar_total, o.ticket_total, o.total_amount,
               coalesce(nullif(o.description, ''), 'rose-ash order #' || o.id),
               o.target_page_config_id, o.target_merchant_code, o.target_checkout_prefix,
               false, NULL::text,
               CASE WHEN o.status = 'paid' THEN o.updated_at AT TIME ZONE 'UTC' END,
               o.created_at AT TIME ZONE 'UTC', o.updated_at AT TIME ZONE 'UTC') AS row_value
    FROM split_moved_orders AS o
) AS checked;

CREATE OR REPLACE TEMP VIEW split_check_order_items AS
SELECT bucket, row_value::text AS row_text,
       hashint8extended(hash_record_extended(row_value, 0), 0) AS row_hash
FROM (
    SELECT i.id::bigint AS bucket,
           row(i.id, i.order_id, 'product'::text, i.product_id, i.product_title, i.product_slug,
               i.product_image, i.unit_price, o.currency, i.quantity,
               i.market_place_container_id) AS row_value
    FROM legacy.order_items AS i
    JOIN legacy.orders AS o ON o.id = i.order_id
    WHERE NOT EXISTS (
        SELECT FROM split_listed AS listed
        WHERE listed.source_table = 'order_items' AND listed.source_id = i.id
          AND listed.outcome <> 'moved' AND listed.reason <> 'already in the target'
    )
) AS checked;

-- One attempt per moved order that had a checkout; bucketed by order id (attempt ids are new).
-- Definition 3: the attempt of an expired or cancelled legacy order is open (PENDING).
CREATE OR REPLACE TEMP VIEW split_check_payment_attempts AS
SELECT bucket, row_value::text AS row_text,
       hashint8extended(hash_record_extended(row_value, 0), 0) AS row_hash
FROM (
    SELECT o.id::bigint AS bucket,
           row(o.id, 1,
               coalesce(o.sumup_reference, o.target_checkout_prefix || o.id || '-1'),
               o.sumup_checkout_id, o.sumup_hosted_url, o.attempt_status, o.total_amount,
               o.currency, o.created_at AT TIME ZONE 'UTC', o.updated_at AT TIME ZONE 'UTC',
               o.status = 'paid') AS row_value
    FROM split_moved_orders AS o
    WHERE o.sumup_checkout_id IS NOT NULL
) AS checked;

-- Definition 2: a paid order's one attempt is the one it was paid with (see orders.target.sql),
-- expired and cancelled ones EXPIRED. Keep it as it is.
CREATE OR REPLACE TEMP VIEW split_check_payment_attempts_v2 AS
SELECT bucket, row_value::text AS row_text,
       hashint8extended(hash_record_extended(row_value, 0), 0) AS row_hash
FROM (
    SELECT o.id::bigint AS bucket,
           row(o.id, 1,
               coalesce(o.sumup_reference, o.target_checkout_prefix || o.id || '-1'),
               o.sumup_checkout_id, o.sumup_hosted_url, o.attempt_status_v2, o.total_amount,
               o.currency, o.created_at AT TIME ZONE 'UTC', o.updated_at AT TIME ZONE 'UTC',
               o.status = 'paid') AS row_value
    FROM split_moved_orders AS o
    WHERE o.sumup_checkout_id IS NOT NULL
) AS checked;

-- Definition 1, without it (see orders.target.sql). Keep it as it is.
CREATE OR REPLACE TEMP VIEW split_check_payment_attempts_v1 AS
SELECT bucket, row_value::text AS row_text,
       hashint8extended(hash_record_extended(row_value, 0), 0) AS row_hash
FROM (
    SELECT o.id::bigint AS bucket,
           row(o.id, 1,
               coalesce(o.sumup_reference, o.target_checkout_prefix || o.id || '-1'),
               o.sumup_checkout_id, o.sumup_hosted_url, o.attempt_status_v2, o.total_amount,
               o.currency, o.created_at AT TIME ZONE 'UTC', o.updated_at AT TIME ZONE 'UTC')
               AS row_value
    FROM split_moved_orders AS o
    WHERE o.sumup_checkout_id IS NOT NULL
) AS checked;
